"""Faust's Kafka transport with the fixes its ``exactly_once`` needs here.

1. Commits never split an event (``pipeline.commit_gate``): the consumer
   closes the gate, hands Faust's buffered changelog writes to their
   transactional producers and only then commits the transactions.
2. Table recovery reads the changelogs up to the broker's last stable offset.
   faust-streaming 0.15 takes that offset from
   ``AIOKafkaConsumer.last_stable_offset``, which is only known once a fetch
   response for the partition has arrived; right after a worker starts it is
   not, Faust reads it as "empty changelog", skips recovery and starts with
   empty tables. Ingest then forwards every redelivered reading a second time.
   Here the offset comes from a ListOffsets request, which under
   ``read_committed`` answers with the last stable offset itself.
3. Before a rebalance or the stop the consumer waits for the events in
   progress only, not for every message Faust handed to a stream
   (``wait_empty``), and the last commit at stop happens once
   (``commit_and_end_transactions``).
4. A message a stream only skipped is never counted as done (``ack``).
5. After each commit the consumer tells the RocksDB table stores which
   partitions' writes it made durable (``pipeline.table_store``).
6. Streams start at the committed offsets after a recovery, not where the
   consumer stood before (``perform_seek``), and messages fetched but never
   handed to a stream are fetched again (``getmany``). Faust drops the rest
   of a fetched batch when the flow stops, the generation changes or the
   partition is paused in the middle of it, without moving the consumer
   back; the next message read then looks to Faust like one after a gap in
   the log (as after a transaction marker), and the commit moves the offset
   past the dropped ones: they are never processed.
7. A transaction one of whose messages the broker refused is never committed
   (``CheckedProducer``). aiokafka commits it anyway, without the refused
   batch: the input offsets and table updates become durable while the output
   is lost (Kafka's Java producer fails such a commit). Here the commit is
   refused and the worker crashes, so the transaction aborts and its events are
   processed again from the last commit.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Mapping
from typing import Any

from faust.exceptions import ProducerSendError
from faust.transport.drivers import aiokafka as aiokafka_driver
from faust.types import TP, Message

from pipeline.commit_gate import commit_gate
from pipeline.table_store import record_commit

log = logging.getLogger(__name__)


class TransactionWriteFailed(ProducerSendError):
    """A message of an open transaction was refused; the transaction must not commit."""


class CheckedProducer(aiokafka_driver.Producer):
    """Faust's producer, committing a transaction only if every message in it was written."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self._in_flight: dict[str, list[asyncio.Future]] = {}
        self._failed: dict[str, BaseException] = {}

    async def send(
        self, *args: Any, transactional_id: str | None = None, **kwargs: Any
    ) -> Awaitable:
        future = await super().send(*args, transactional_id=transactional_id, **kwargs)
        if transactional_id:
            self._in_flight.setdefault(transactional_id, []).append(future)
        return future

    async def stop_transaction(self, transactional_id: str) -> None:
        """The partition moved away: its open transaction is abandoned, and with it
        whatever its messages did."""
        self._in_flight.pop(transactional_id, None)
        self._failed.pop(transactional_id, None)
        await super().stop_transaction(transactional_id)

    async def commit_transactions(
        self,
        tid_to_offset_map: Mapping[str, Mapping[TP, int]],
        group_id: str,
        start_new_transaction: bool = True,
    ) -> None:
        """Commit, unless a message of one of these transactions failed (then nothing)."""
        for transactional_id in tid_to_offset_map:
            await self._check_written(transactional_id)
        await super().commit_transactions(tid_to_offset_map, group_id, start_new_transaction)

    async def _check_written(self, transactional_id: str) -> None:
        producer = self._transaction_producers.get(transactional_id)
        if producer is not None:
            await producer.flush()
        pending = []
        for future in self._in_flight.pop(transactional_id, []):
            if not future.done():
                pending.append(future)
            elif not future.cancelled() and future.exception() is not None:
                self._failed.setdefault(transactional_id, future.exception())
        if pending:
            self._in_flight[transactional_id] = pending
        failure = self._failed.get(transactional_id)
        if failure is not None:
            raise TransactionWriteFailed(
                f"transaction {transactional_id} is not committed: the broker refused "
                f"a message of it ({type(failure).__name__}: {failure})"
            ) from failure


class StableOffsetsConsumerThread(aiokafka_driver.AIOKafkaConsumerThread):
    """The consumer thread, asking the broker for end offsets rather than its cache."""

    async def _highwaters(self, partitions: list[TP]) -> Mapping[TP, int]:
        # The consumer is read_committed under exactly_once, so these are the
        # last stable offsets: a transaction still open is not counted as written.
        return await self._ensure_consumer().end_offsets(partitions)


class GatedConsumer(aiokafka_driver.Consumer):
    """Faust's Kafka consumer, committing only while no event is half done."""

    _transactions_ended = False
    _fetched: Mapping[TP, list[Any]] | None = None

    def _new_consumer_thread(self) -> StableOffsetsConsumerThread:
        return StableOffsetsConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def _wait_next_records(self, timeout: float) -> tuple[Any, Any]:
        records, active_partitions = await super()._wait_next_records(timeout)
        self._fetched = records
        return records, active_partitions

    async def getmany(self, timeout: float) -> AsyncIterator[tuple[TP, Message]]:
        """Faust's batch of messages; what it did not hand on is fetched again."""
        handed: dict[TP, int] = {}
        try:
            async for tp, message in super().getmany(timeout):
                handed[tp] = message.offset
                yield tp, message
        finally:
            fetched, self._fetched = self._fetched, None
            if fetched and not self.should_stop:
                await self._fetch_again(fetched, handed)

    async def _fetch_again(self, fetched: Mapping[TP, list[Any]], handed: dict[TP, int]) -> None:
        for tp, records in fetched.items():
            last = handed.get(tp)
            if not records or (last is not None and last >= records[-1].offset):
                continue  # the usual case: every message was handed on
            dropped = [r.offset for r in records if last is None or r.offset > last]
            if tp not in self.assignment():
                continue
            committed = self._committed_offset[tp]
            start = dropped[0] if committed is None else max(dropped[0], committed)
            position = await self.position(tp)
            if position is not None and position <= start:
                continue  # Faust moved back already (to the committed offset)
            log.info("%s: %d fetched messages from offset %d were not handed to a stream "
                     "(a rebalance, a recovery or a pause); fetching them again from %d",
                     tp, len(dropped), dropped[0], start)  # fmt: skip
            await self.seek(tp, start)

    async def perform_seek(self) -> None:
        """Move to the committed offsets, with the streams' partitions held meanwhile.

        At the end of a recovery Faust resumes the streams' partitions and then
        asks the broker for their committed offsets. Until the answer arrives
        (seconds, if Kafka is restarting) the streams process what the
        consumer had fetched from where it stood before: from an older offset,
        if the previous owner's last commit was still being completed when this
        worker joined. The seek then rewinds the partition, and Faust drops the
        messages it reads again as already read, while some of the first
        reading were never processed: lost. Holding the partitions until the
        seek is done means processing starts at the committed offset.
        """
        held = {tp for tp in self._get_active_partitions() if not self._is_changelog_tp(tp)}
        self.pause_partitions(held)
        try:
            await super().perform_seek()
        finally:
            self.resume_partitions(held)

    async def wait_empty(self) -> None:
        """Before a rebalance or the stop: commit once the events in progress are done.

        Faust waits here until every message it handed to a stream is acked. But
        it has already suspended the flow and emptied the streams' buffers, and a
        message caught on its way to a stream is never processed nor acked: the
        wait lasts until the broker drops the worker from the group (a rebalance
        that then aborts every transaction) or until the worker is killed (the
        stop). The commit gate makes waiting for the events in progress enough:
        each finished event is acked before the commit can run, and the messages
        not processed are not committed; they are fetched again.

        The gate is sealed before that last commit, so no event starts in a
        transaction that is over; ``on_partitions_assigned`` unseals it once the
        new assignment's transactions have begun.
        """
        commit_gate.seal()
        await self.commit_and_end_transactions()

    async def on_partitions_assigned(self, assigned: set[TP], generation_id: int = 0) -> None:
        await super().on_partitions_assigned(assigned, generation_id)
        if not self.app.should_stop:
            commit_gate.unseal()

    async def commit_and_end_transactions(self) -> None:
        """The commit that begins no new transaction (wait_empty, then Faust at stop).

        Faust calls it again as the consumer stops. By then the transactions are
        over: sending offsets to one raises ``IllegalOperation`` and leaves the
        consumer's thread running past SIGTERM, so the second call at stop
        returns at once.
        """
        if self._transactions_ended:
            return
        await super().commit_and_end_transactions()
        self._transactions_ended = self.app.should_stop

    def ack(self, message: Message) -> bool:
        """Count a message as done, unless a stream only skipped it.

        A stream skips, and acks, a message fetched before the last rebalance or
        delivered while the flow is suspended (a rebalance, a recovery, the stop).
        Such a message is fetched again from the committed offset; but its ack
        lets a commit move the offset past it first, and a crash before the
        second delivery is processed loses it. Ignoring the ack keeps the
        committed offset at the first message not yet processed.
        """
        stale = message.generation_id not in (None, self.app.consumer_generation_id)
        if stale or not self.app.flow_control.is_active():
            return False
        return super().ack(message)

    async def force_commit(self, *args: Any, **kwargs: Any) -> bool:
        if self._transactions_ended or self.app.crashed:
            return False
        async with commit_gate.closed():
            if self.app.in_transaction:
                # Table changelog writes wait in Faust's producer buffer; hand them to
                # their transactional producers so that this commit includes them.
                await self.app.producer.buffer.flush()
            return await super().force_commit(*args, **kwargs)

    async def _commit_offsets(
        self, offsets: Mapping[TP, int], start_new_transaction: bool = True
    ) -> bool:
        assignment = self.assignment()
        committing = [tp for tp in offsets if tp in assignment]
        if self.app.in_transaction:
            # Faust skips, with a warning, a partition whose transactional producer
            # is gone (revoked meanwhile): its writes are not committed.
            producers = self.app.producer._transaction_producers
            group_id, groups = self.app.conf.id, self.app.assignor._topic_groups
            committing = [
                tp
                for tp in committing
                if f"{group_id}-{groups.get(tp.topic)}-{tp.partition}" in producers
            ]
        try:
            did_commit = await super()._commit_offsets(offsets, start_new_transaction)
        except TransactionWriteFailed as exc:
            log.error("%s; stopping the worker so that the transaction aborts and its "
                      "events are processed again", exc)  # fmt: skip
            await self.app.crash(exc)
            return False
        if did_commit and not self.app.crashed:
            record_commit(self.app, committing)
        return did_commit


class Transport(aiokafka_driver.Transport):
    """The aiokafka transport with the consumer and producer above."""

    Consumer = GatedConsumer
    Producer = CheckedProducer
