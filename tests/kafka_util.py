"""Read and clean up real Kafka topics from tests (aiokafka is a test dependency)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient


def bootstrap_of(broker_url: str) -> str:
    return broker_url.removeprefix("kafka://")


async def _records(
    bootstrap: str, topic: str, security: dict[str, Any], isolation: str = "read_committed"
) -> list[Any]:
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        **security,
        isolation_level=isolation,
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
        records = []
        while any([await consumer.position(tp) < end[tp] for tp in partitions]):
            batch = await consumer.getmany(timeout_ms=1000)
            for part in batch.values():
                records.extend(part)
        return records
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
    records = asyncio.run(_records(bootstrap_of(broker_url), topic, security or {}))
    return [(r.key.decode(), json.loads(r.value)) for r in records]


def dump_topic(broker_url: str, topic: str, path: Path) -> None:
    """Write every record of a topic, committed or not, as JSON lines (for post-mortems).

    Each line has the partition, offset, timestamp, key and value, and whether a
    ``read_committed`` reader sees the record (false: its transaction aborted or
    is still open).
    """
    bootstrap = bootstrap_of(broker_url)
    every = asyncio.run(_records(bootstrap, topic, {}, isolation="read_uncommitted"))
    committed = {(r.partition, r.offset) for r in asyncio.run(_records(bootstrap, topic, {}))}
    with path.open("w") as out:
        for r in every:
            line = {
                "partition": r.partition,
                "offset": r.offset,
                "timestamp": r.timestamp,
                "committed": (r.partition, r.offset) in committed,
                "key": r.key.decode() if r.key is not None else None,
                "value": r.value.decode(errors="replace") if r.value is not None else None,
            }
            out.write(json.dumps(line) + "\n")


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


async def committed_offsets(bootstrap: str, group: str) -> dict[Any, int]:
    """A consumer group's committed offsets, as {TopicPartition: offset}."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    return {tp: meta.offset for tp, meta in offsets.items()}


def group_offsets(broker_url: str, group: str) -> dict[str, int]:
    """A consumer group's committed offsets, as {"topic:partition": offset}."""
    offsets = asyncio.run(committed_offsets(bootstrap_of(broker_url), group))
    return {f"{tp.topic}:{tp.partition}": offset for tp, offset in offsets.items()}
