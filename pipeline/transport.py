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
   (``wait_empty``), and the last commit at stop happens once (``commit_and_end_transactions``).
4. A message a stream only skipped is never counted as done (``ack``).
5. After each commit the consumer tells the RocksDB table stores which
   partitions' writes it made durable (``pipeline.table_store``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from faust.transport.drivers import aiokafka as aiokafka_driver
from faust.types import TP, Message

from pipeline.commit_gate import commit_gate
from pipeline.table_store import record_commit


class StableOffsetsConsumerThread(aiokafka_driver.AIOKafkaConsumerThread):
    """The consumer thread, asking the broker for end offsets rather than its cache."""

    async def _highwaters(self, partitions: list[TP]) -> Mapping[TP, int]:
        # The consumer is read_committed under exactly_once, so these are the
        # last stable offsets: a transaction still open is not counted as written.
        return await self._ensure_consumer().end_offsets(partitions)


class GatedConsumer(aiokafka_driver.Consumer):
    """Faust's Kafka consumer, committing only while no event is half done."""

    _transactions_ended = False

    def _new_consumer_thread(self) -> StableOffsetsConsumerThread:
        return StableOffsetsConsumerThread(self, loop=self.loop, beacon=self.beacon)

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
        if self._transactions_ended:
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
        did_commit = await super()._commit_offsets(offsets, start_new_transaction)
        if did_commit and not self.app.crashed:
            record_commit(self.app, committing)
        return did_commit


class Transport(aiokafka_driver.Transport):
    """The aiokafka transport with the consumer above."""

    Consumer = GatedConsumer
