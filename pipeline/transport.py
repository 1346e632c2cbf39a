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
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from faust.transport.drivers import aiokafka as aiokafka_driver
from faust.types import TP

from pipeline.commit_gate import commit_gate


class StableOffsetsConsumerThread(aiokafka_driver.AIOKafkaConsumerThread):
    """The consumer thread, asking the broker for end offsets rather than its cache."""

    async def _highwaters(self, partitions: list[TP]) -> Mapping[TP, int]:
        # The consumer is read_committed under exactly_once, so these are the
        # last stable offsets: a transaction still open is not counted as written.
        return await self._ensure_consumer().end_offsets(partitions)


class GatedConsumer(aiokafka_driver.Consumer):
    """Faust's Kafka consumer, committing only while no event is half done."""

    def _new_consumer_thread(self) -> StableOffsetsConsumerThread:
        return StableOffsetsConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def force_commit(self, *args: Any, **kwargs: Any) -> bool:
        async with commit_gate.closed():
            if self.app.in_transaction:
                # Table changelog writes wait in Faust's producer buffer; hand them to
                # their transactional producers so that this commit includes them.
                await self.app.producer.buffer.flush()
            return await super().force_commit(*args, **kwargs)


class Transport(aiokafka_driver.Transport):
    """The aiokafka transport with the consumer above."""

    Consumer = GatedConsumer
