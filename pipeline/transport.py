"""Faust's Kafka transport with the two fixes its ``exactly_once`` needs here.

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

After each commit the consumer tells the RocksDB table stores which partitions'
writes it made durable (``pipeline.table_store``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from faust.transport.drivers import aiokafka as aiokafka_driver
from faust.types import TP

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
        """At stop: commit once the events in progress are done, then start no other.

        Faust waits here, at a rebalance and at stop, until every message fetched
        so far is acked. At a rebalance it first empties the streams' buffers; at
        stop it does not, and a message left in the buffer of a stream whose flow
        the stop has suspended is never processed: the wait lasts until the
        worker is killed. The commit gate makes waiting for the events in
        progress enough: the messages not yet processed are not committed, and
        are redelivered.
        """
        if not self.app.should_stop:
            await super().wait_empty()
            return
        await self.commit_and_end_transactions()

    async def commit_and_end_transactions(self) -> None:
        """The commit that begins no new transaction, before a rebalance or the stop.

        Faust calls it twice while a worker stops (the app, then the consumer).
        At stop the gate is sealed first, so no event starts after the last
        offsets are chosen and nothing is sent once the transactions are over;
        the second call returns at once (sending offsets to an ended transaction
        raises ``IllegalOperation`` and leaves the consumer's thread running).
        """
        if not self.app.should_stop:
            await super().commit_and_end_transactions()
            return
        if self._transactions_ended:
            return
        commit_gate.seal()
        await super().commit_and_end_transactions()
        self._transactions_ended = True

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
