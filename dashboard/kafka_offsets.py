"""End offsets of the pipeline's topics and the stream workers' consumer lag, from Kafka.

The Faust workers consume as the consumer group named by ``app_id``; their lag
is, per partition, the topic's end offset minus the group's committed offset.
Two small requests per poll (ListOffsets, OffsetFetch) answer it, on one
long-lived pair of aiokafka clients driven by a private event loop in a daemon
thread, so the Bokeh server's own loop never waits on Kafka.

Under ``exactly_once`` every committed transaction also writes a marker record
to each partition it touched: offsets then count markers too, so a caught-up
group shows a lag of about one per partition, and offset rates run slightly
above record rates.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Mapping
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

TIMEOUT_SECONDS = 3.0


class KafkaUnavailable(Exception):
    """Kafka did not answer the offset requests in time."""


@dataclass(frozen=True)
class TopicOffsets:
    topic: str
    end: int  # sum over partitions
    lag: int  # sum over partitions of end - committed (0 committed if none yet)


class KafkaProbe:
    """Reads end offsets and a consumer group's lag; safe to call from any thread.

    ``security`` holds aiokafka's security arguments for a secured broker (see
    ``pipeline.connections.kafka_client_kwargs``).
    """

    def __init__(
        self,
        bootstrap: str,
        group_id: str,
        topics: list[str],
        security: Mapping[str, Any] | None = None,
    ) -> None:
        self.bootstrap = bootstrap
        self.group_id = group_id
        self.topics = topics
        self.security = dict(security or {})
        self._loop: asyncio.AbstractEventLoop | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._admin: AIOKafkaAdminClient | None = None
        self._lock = threading.Lock()

    def offsets(self) -> list[TopicOffsets]:
        """One figure per topic; raises ``KafkaUnavailable`` when Kafka does not answer."""
        with self._lock:
            if self._loop is None:
                self._loop = asyncio.new_event_loop()
                threading.Thread(
                    target=self._loop.run_forever, name="dashboard-kafka", daemon=True
                ).start()
            future = asyncio.run_coroutine_threadsafe(self._offsets(), self._loop)
            try:
                return future.result(TIMEOUT_SECONDS * 2)
            except (FutureTimeout, KafkaError, OSError) as exc:
                future.cancel()
                asyncio.run_coroutine_threadsafe(self._reset(), self._loop).result(TIMEOUT_SECONDS)
                raise KafkaUnavailable(str(exc) or type(exc).__name__) from None

    def close(self) -> None:
        """Stop the clients and the loop thread."""
        with self._lock:
            if self._loop is None:
                return
            asyncio.run_coroutine_threadsafe(self._reset(), self._loop).result(TIMEOUT_SECONDS)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._loop = None

    async def _clients(self) -> tuple[AIOKafkaConsumer, AIOKafkaAdminClient]:
        if self._consumer is None or self._admin is None:
            timeout_ms = int(TIMEOUT_SECONDS * 1000)
            consumer = AIOKafkaConsumer(
                bootstrap_servers=self.bootstrap,
                enable_auto_commit=False,
                request_timeout_ms=timeout_ms,
                client_id="sensor-forecasts-dashboard",
                **self.security,
            )
            admin = AIOKafkaAdminClient(
                bootstrap_servers=self.bootstrap,
                request_timeout_ms=timeout_ms,
                client_id="sensor-forecasts-dashboard",
                **self.security,
            )
            try:
                await asyncio.wait_for(consumer.start(), TIMEOUT_SECONDS)
                await asyncio.wait_for(admin.start(), TIMEOUT_SECONDS)
            except BaseException:
                await _quietly_close(consumer, admin)
                raise
            self._consumer, self._admin = consumer, admin
        return self._consumer, self._admin

    async def _offsets(self) -> list[TopicOffsets]:
        consumer, admin = await self._clients()
        # All topics: a metadata request naming a missing topic could auto-create it.
        described = await asyncio.wait_for(admin.describe_topics(), TIMEOUT_SECONDS)
        partitions = [
            TopicPartition(t["topic"], p["partition"])
            for t in described
            if t["topic"] in self.topics
            for p in t["partitions"]
        ]
        ends = await asyncio.wait_for(consumer.end_offsets(partitions), TIMEOUT_SECONDS)
        committed = await asyncio.wait_for(
            admin.list_consumer_group_offsets(self.group_id, partitions=partitions),
            TIMEOUT_SECONDS,
        )
        figures = []
        for topic in self.topics:
            mine = [tp for tp in partitions if tp.topic == topic]
            end = sum(ends[tp] for tp in mine)
            done = {tp: max(0, committed[tp].offset) if tp in committed else 0 for tp in mine}
            figures.append(
                TopicOffsets(topic, end, sum(max(0, ends[tp] - done[tp]) for tp in mine))
            )
        return figures

    async def _reset(self) -> None:
        consumer, admin = self._consumer, self._admin
        self._consumer = self._admin = None
        await _quietly_close(consumer, admin)


async def _quietly_close(
    consumer: AIOKafkaConsumer | None, admin: AIOKafkaAdminClient | None
) -> None:
    """Close what was opened; a client that never connected may fail to close."""
    for client in (consumer, admin):
        if client is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.close() if client is admin else client.stop(), 2)
