"""The exactly_once fixes of ``pipeline.commit_gate`` and ``pipeline.transport``.

The gate's rules are checked on their own; the last stable offset is checked
against the real broker, with a transaction committed and one left open; the
fault-injection test (tests/test_faults_e2e.py) shows what both mean end to end.
"""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from pipeline.commit_gate import CommitGate
from pipeline.transport import (
    CheckedProducer,
    GatedConsumer,
    StableOffsetsConsumerThread,
    TransactionWriteFailed,
    Transport,
)
from tests.kafka_util import bootstrap_of, committed_offsets, delete_topics


@pytest.mark.asyncio
async def test_a_commit_waits_for_the_event_in_progress():
    gate, order = CommitGate(), []
    event_may_end = asyncio.Event()

    async def event() -> None:
        async with gate.event():
            order.append("event starts")
            await event_may_end.wait()
            order.append("event ends")

    async def commit() -> None:
        async with gate.closed():
            order.append("commit")

    processing = asyncio.create_task(event())
    await asyncio.sleep(0.01)
    committing = asyncio.create_task(commit())
    await asyncio.sleep(0.05)
    assert order == ["event starts"], "the commit ran inside the event"
    event_may_end.set()
    await asyncio.gather(processing, committing)
    assert order == ["event starts", "event ends", "commit"]


@pytest.mark.asyncio
async def test_no_event_starts_while_a_commit_runs():
    gate, order = CommitGate(), []
    commit_may_end = asyncio.Event()

    async def commit() -> None:
        async with gate.closed():
            order.append("commit starts")
            await commit_may_end.wait()
            order.append("commit ends")

    async def event() -> None:
        async with gate.event():
            order.append("event")

    committing = asyncio.create_task(commit())
    await asyncio.sleep(0.01)
    processing = asyncio.create_task(event())
    await asyncio.sleep(0.05)
    assert order == ["commit starts"]
    commit_may_end.set()
    await asyncio.gather(committing, processing)
    assert order == ["commit starts", "commit ends", "event"]


@pytest.mark.asyncio
async def test_an_event_that_fails_does_not_hold_commits_off():
    gate = CommitGate()
    with pytest.raises(RuntimeError):
        async with gate.event():
            raise RuntimeError("the agent crashed mid-event")
    assert gate.in_progress == 0
    async with asyncio.timeout(1):
        async with gate.closed():
            pass


@pytest.mark.asyncio
async def test_events_run_side_by_side():
    gate = CommitGate()
    both_inside = asyncio.Barrier(2)

    async def event() -> None:
        async with gate.event():
            await both_inside.wait()

    async with asyncio.timeout(1):
        await asyncio.gather(event(), event())


@pytest.mark.asyncio
async def test_a_sealed_gate_lets_the_last_commit_run_and_no_event_after():
    gate, order = CommitGate(), []

    async def event() -> None:
        async with gate.event():
            order.append("event")

    gate.seal()
    async with asyncio.timeout(1):
        async with gate.closed():
            order.append("last commit")
    late = asyncio.create_task(event())
    await asyncio.sleep(0.05)
    assert order == ["last commit"] and not late.done(), "an event started after the last commit"
    late.cancel()


def test_the_app_runs_on_the_fixed_transport():
    from pipeline.app import app

    assert isinstance(app.transport, Transport)
    assert app.transport.Consumer is GatedConsumer


def test_every_topic_ingest_writes_is_consumed_so_its_sends_are_transactional():
    """faust-streaming puts a send in the source partition's transaction only for
    topics the app consumes; anything else goes out beside the transaction."""
    from pipeline.app import app
    from pipeline.topics import deadletter_topic, readings_topic

    consumed = {name for agent in app.agents.values() for name in agent.channel.topics}
    assert {readings_topic.get_topic_name(), deadletter_topic.get_topic_name()} <= consumed


@pytest.fixture
def topic(base_settings, topic_prefix):
    yield f"{topic_prefix}stable-offsets"
    delete_topics(base_settings.broker, topic_prefix)


@pytest.mark.asyncio
async def test_recovery_offsets_are_the_brokers_last_stable_offset(base_settings, topic):
    """Three messages and their commit marker, then two in a transaction left open:
    recovery must read up to the open transaction (offset 4), not to the high
    watermark (6), and know it before any fetch (Faust's own answer is 'empty')."""
    bootstrap = bootstrap_of(base_settings.broker)
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    await admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
    await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, transactional_id=f"{topic}-tx")
    await producer.start()
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, isolation_level="read_committed")
    await consumer.start()
    uncommitted = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await uncommitted.start()
    tp = TopicPartition(topic, 0)
    try:
        async with producer.transaction():
            for i in range(3):
                await producer.send(topic, b"committed %d" % i, partition=0)
        await producer.begin_transaction()
        for i in range(2):
            await (await producer.send(topic, b"open %d" % i, partition=0))
        consumer.assign([tp])

        class Thread:  # what _highwaters needs of the consumer thread
            def _ensure_consumer(self) -> AIOKafkaConsumer:
                return consumer

        offsets = await StableOffsetsConsumerThread._highwaters(Thread(), [tp])
        assert consumer.last_stable_offset(tp) is None, "Faust's source: unknown before a fetch"
        assert offsets == {tp: 4}
        assert await uncommitted.end_offsets([tp]) == {tp: 6}
        await producer.abort_transaction()
    finally:
        await producer.stop()
        for client in (consumer, uncommitted):
            with contextlib.suppress(asyncio.CancelledError):
                await client.stop()


@pytest.mark.asyncio
async def test_only_messages_processed_in_the_current_generation_become_committable(monkeypatch):
    from faust.types.tuples import Message

    from agents.ingest import raw_readings_topic
    from pipeline.app import app

    topic = raw_readings_topic.get_topic_name()
    monkeypatch.setattr(app.topics, "_acking_topics", {topic})  # as Faust sets it at start
    monkeypatch.setattr(app, "consumer_generation_id", 3)
    consumer, tp = app.consumer, TopicPartition(topic, 0)

    def message(offset: int, generation: int) -> Message:
        return Message(topic, 0, offset, 0.0, 0, [], b"dev", b"{}", None, generation_id=generation)

    app.flow_control.resume()
    try:
        assert consumer.ack(message(5, generation=3))
        assert not consumer.ack(message(6, generation=2)), "fetched before the last rebalance"
        app.flow_control.suspend()
        assert not consumer.ack(message(7, generation=3)), "skipped while the flow is suspended"
    finally:
        app.flow_control.suspend()
    assert consumer._acked[tp] == [5]  # a commit can move the offset to 6, not past it
    consumer._acked.pop(tp)


@pytest.fixture
def guarded_topics(base_settings, topic_prefix):
    yield f"{topic_prefix}small-messages", f"{topic_prefix}source"
    delete_topics(base_settings.broker, topic_prefix)


@pytest.mark.asyncio
async def test_a_transaction_whose_message_the_broker_refused_is_not_committed(
    base_settings, guarded_topics, topic_prefix
):
    """The broker refuses a message too large for its topic. aiokafka would still
    commit the transaction, and with it the input offset: the output lost for good.
    The producer refuses the commit (the worker then crashes, and the transaction
    aborts); a transaction whose messages were all written commits as before,
    and so does the next transaction once the partition has moved away and back."""
    from pipeline.app import app

    bootstrap = bootstrap_of(base_settings.broker)
    small, source = guarded_topics
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    await admin.create_topics(
        [
            NewTopic(small, 1, 1, topic_configs={"max.message.bytes": "1024"}),
            NewTopic(source, 1, 1),
        ]
    )
    await admin.close()
    producer = app.transport.Producer(app.transport)
    assert isinstance(producer, CheckedProducer)
    await producer.start()
    group, src = f"{topic_prefix}group", TopicPartition(source, 0)
    refused, written = f"{topic_prefix}refused", f"{topic_prefix}written"
    try:
        for tid in (refused, written):
            await producer.begin_transaction(tid)
        await producer.send(small, b"k", b"x" * 4096, 0, None, None, transactional_id=refused)
        with pytest.raises(TransactionWriteFailed, match="MessageSizeTooLarge"):
            await producer.commit_transactions({refused: {src: 7}}, group)
        assert src not in await committed_offsets(bootstrap, group)

        await producer.send(small, b"k", b"fits", 0, None, None, transactional_id=written)
        await producer.commit_transactions({written: {src: 3}}, group, False)
        assert (await committed_offsets(bootstrap, group))[src] == 3

        # The partition moves away and comes back: the abandoned transaction's
        # refusal is not held against the next one.
        await producer.stop_transaction(refused)
        await producer.begin_transaction(refused)
        await producer.send(small, b"k", b"fits", 0, None, None, transactional_id=refused)
        await producer.commit_transactions({refused: {src: 5}}, group, False)
        assert (await committed_offsets(bootstrap, group))[src] == 5
    finally:
        await producer.stop()


@pytest.mark.asyncio
@pytest.mark.parametrize("position, expected_seeks", [(5, [2]), (0, [])])
async def test_messages_fetched_but_not_handed_to_a_stream_are_fetched_again(
    monkeypatch, position, expected_seeks
):
    """The flow stops after two of a batch of five: the other three must be fetched
    again (seek to 2), or the next message read would look like one after a gap in
    the log and the commit would skip them. If Faust already moved back (to the
    committed offset, 0 here), the consumer stays there."""
    from aiokafka.structs import ConsumerRecord

    from pipeline.app import app

    consumer, tp = app.consumer, TopicPartition("readings-raw", 0)
    batch = {
        tp: [
            ConsumerRecord(tp.topic, 0, offset, 0, 0, b"dev", b"{}", None, 3, 2, [])
            for offset in range(5)
        ]
    }
    seeks = []

    async def fetch(active_partitions, timeout):
        return batch

    async def position_of(partition):
        return position

    async def seek(partition, offset):
        seeks.append(offset)

    monkeypatch.setattr(consumer, "_get_active_partitions", lambda: {tp})
    monkeypatch.setattr(consumer, "_getmany", fetch)
    monkeypatch.setattr(consumer, "assignment", lambda: {tp})
    monkeypatch.setattr(consumer, "highwater", lambda partition: 5)
    monkeypatch.setattr(consumer, "position", position_of)
    monkeypatch.setattr(consumer, "seek", seek)
    consumer.resume_flow()
    handed = []
    try:
        async for _, message in consumer.getmany(timeout=0.1):
            handed.append(message.offset)
            if len(handed) == 2:
                consumer.stop_flow()  # a rebalance begins
    finally:
        consumer.resume_flow()
    assert handed == [0, 1]
    assert seeks == expected_seeks


@pytest.mark.asyncio
async def test_streams_wait_for_the_seek_to_the_committed_offsets(monkeypatch):
    """While the committed offsets are being fetched (seconds, if Kafka is
    restarting) the streams' partitions are held, so nothing is processed from
    where the consumer stood before; changelogs keep flowing, and a partition
    that was paused stays paused."""
    from faust.types import TP

    from pipeline.app import app

    consumer = app.consumer
    stream, changelog, paused = (
        TP("readings-raw", 0),
        TP("app-ingest-seen-changelog", 0),
        TP("readings-raw", 1),
    )
    monkeypatch.setattr(consumer, "_active_partitions", {stream, changelog})
    monkeypatch.setattr(consumer, "_paused_partitions", {paused})
    monkeypatch.setattr(consumer, "_is_changelog_tp", lambda tp: tp == changelog)
    during = {}

    async def seek_to_committed():
        during["active"] = set(consumer._get_active_partitions())
        return {stream: 5}

    monkeypatch.setattr(consumer, "seek_to_committed", seek_to_committed)
    await consumer.perform_seek()
    assert during["active"] == {changelog}
    assert consumer._get_active_partitions() == {stream, changelog}
    assert consumer._paused_partitions == {paused}
    assert consumer._committed_offset[stream] == 5
    consumer._committed_offset.pop(stream)
    consumer._read_offset.pop(stream, None)
