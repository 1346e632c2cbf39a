"""Read and clean up real Kafka topics from tests (aiokafka is a test dependency)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient


def bootstrap_of(broker_url: str) -> str:
    return broker_url.removeprefix("kafka://")


async def _read_all(bootstrap: str, topic: str, security: dict[str, Any]) -> list[tuple[str, dict]]:
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        **security,
        isolation_level="read_committed",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while not consumer.assignment():  # group-less: all partitions, once metadata is in
            if loop.time() > deadline:
                raise AssertionError(f"topic {topic} has no partitions")
            await asyncio.sleep(0.1)
        partitions = sorted(consumer.assignment())
        end = await consumer.end_offsets(partitions)
        messages = []
        while any([await consumer.position(tp) < end[tp] for tp in partitions]):
            batch = await consumer.getmany(timeout_ms=1000)
            for records in batch.values():
                messages.extend((r.key.decode(), json.loads(r.value)) for r in records)
        return messages
    finally:
        # aiokafka's group-less coordinator re-raises its own cancelled task on close.
        with contextlib.suppress(asyncio.CancelledError):
            await consumer.stop()


def read_topic(
    broker_url: str, topic: str, security: dict[str, Any] | None = None
) -> list[tuple[str, dict]]:
    """Every committed message of a topic as (key, JSON value).

    ``security``: aiokafka's security arguments for a secured broker
    (``pipeline.connections.kafka_client_kwargs``).
    """
    return asyncio.run(_read_all(bootstrap_of(broker_url), topic, security or {}))


async def _delete_with_prefix(bootstrap: str, prefix: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        doomed = [t for t in await admin.list_topics() if t.startswith(prefix)]
        if doomed:
            await admin.delete_topics(doomed)
    finally:
        await admin.close()


def delete_topics(broker_url: str, prefix: str) -> None:
    """Remove a test's topics (its prefix covers data and changelog topics)."""
    asyncio.run(_delete_with_prefix(bootstrap_of(broker_url), prefix))
