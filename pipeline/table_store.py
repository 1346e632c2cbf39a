"""Table stores that never keep a write the changelog may not hold.

``committed-memory``: Faust's memory store, which forgets a partition as soon
as it stops being active here. Faust's own store forgets only the keys it read
from the changelog; a key an agent wrote stays, even when the transaction that
carried it was abandoned because the partition moved to another worker. If the
partition comes back, recovery replays the committed changelog over it and
the stale key survives: ingest would then take the redelivered readings for
duplicates and lose them.

``committed-rocksdb``: RocksDB stores that a restart trusts only when their
writes were committed.

Faust writes a RocksDB table partition the moment an agent changes it, before
the Kafka transaction that carries the change to the changelog commits. After
a ``kill -9`` (or a rebalance, which abandons the open transaction) the local
store can hold writes of a transaction that aborted, and recovery, which reads
only the committed changelog records past the store's offset, never undoes
them: a pointer could stay ahead of every job actually enqueued. Kafka Streams
meets the same problem the same way this store does: a partition's local state
is reused only if nothing was written to it after its last commit; otherwise
it is wiped and rebuilt from the changelog.

So each partition gets a marker file beside its database, created before the
first write after a commit and removed once a commit has made those writes
durable (``on_committed``, called by the consumer in ``pipeline.transport``).
A partition opened with its marker present is emptied first and recovers from
the start of its changelog (compacted: one record per key).

The store also records the changelog offset a committed partition reflects.
faust-streaming 0.15 files that offset under the changelog partition and looks
it up under the source partition at commit, so under ``exactly_once`` it is
never written and every start replays the whole changelog. With it recorded,
a worker that stops cleanly and restarts with the same data directory reads
only what was written to its changelogs since.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import faust
from faust.stores import STORES
from faust.stores import memory as faust_memory
from faust.stores import rocksdb as faust_rocksdb
from faust.streams import current_event
from faust.types import TP

SCHEME = "committed-rocksdb"
"""The store URL scheme of ``CommittedRocksDBStore``."""
MEMORY_SCHEME = "committed-memory"
"""The store URL scheme of ``PartitionedMemoryStore``."""

log = logging.getLogger(__name__)


class PartitionedMemoryStore(faust_memory.Store):
    """Faust's memory store, which forgets a partition once it is no longer active here."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self._active: set[int] = set()

    def __setitem__(self, key: Any, value: Any) -> None:
        event = current_event()
        if event is not None:  # the changelog record goes to the event's partition
            self._key_partition[key] = event.message.partition
        super().__setitem__(key, value)

    def __delitem__(self, key: Any) -> None:
        self._key_partition.pop(key, None)
        super().__delitem__(key)

    async def on_rebalance(
        self, assigned: set[TP], revoked: set[TP], newly_assigned: set[TP], generation_id: int = 0
    ) -> None:
        topic = self.table.changelog_topic_name
        actives = {tp.partition for tp in self.app.assignor.assigned_actives() if tp.topic == topic}
        gone, self._active = self._active - actives, actives
        if gone:
            doomed = [key for key, partition in self._key_partition.items() if partition in gone]
            for key in doomed:
                self.data.pop(key, None)
                del self._key_partition[key]
            log.info(
                "table %s: partitions %s no longer active here, %d keys dropped",
                self.table.name,
                sorted(gone),
                len(doomed),
            )
        await super().on_rebalance(assigned, revoked, newly_assigned, generation_id)


class CommittedRocksDBStore(faust_rocksdb.Store):
    """Faust's RocksDB store, whose partitions are reused only if their writes committed."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._uncommitted: set[int] = set()

    def uncommitted_marker(self, partition: int) -> Path:
        """The file whose presence says the partition holds uncommitted writes."""
        path = self.partition_path(partition)
        return path.with_name(f"{path.name}.uncommitted")

    def _open_for_partition(self, partition: int) -> Any:
        db = super()._open_for_partition(partition)
        marker = self.uncommitted_marker(partition)
        if marker.exists():
            everything = list(db.keys())
            for key in everything:
                db.delete(key)
            keys = [key for key in everything if key != self.offset_key]
            for key in [k for k, p in self._key_index.items() if p == partition]:
                del self._key_index[key]
            marker.unlink()
            log.warning(
                "table %s partition %d held writes that were never committed; "
                "discarded %d local keys, rebuilding it from the changelog",
                self.table.name,
                partition,
                len(keys),
            )
        else:
            offset = db.get(self.offset_key)
            if offset is not None:
                log.info(
                    "table %s partition %d reused from its local store at changelog offset %s",
                    self.table.name,
                    partition,
                    offset.decode(),
                )
        return db

    def _mark_uncommitted(self, partition: int) -> None:
        if partition not in self._uncommitted:
            self._db_for_partition(partition)  # opened (and checked) before it is marked
            self.uncommitted_marker(partition).touch()
            self._uncommitted.add(partition)

    def _set(self, key: bytes, value: bytes | None) -> None:
        event = current_event()
        assert event is not None
        self._mark_uncommitted(event.message.partition)
        super()._set(key, value)

    def _del(self, key: bytes) -> None:
        holders = {id(db) for db in self._dbs_for_key(key)}
        for partition, db in list(self._dbs.items()):
            if id(db) in holders:
                self._mark_uncommitted(partition)
        super()._del(key)

    def revoke_partitions(self, table: Any, tps: set[TP]) -> None:
        # A revoked partition's open transaction is abandoned: its marker stays.
        for tp in tps:
            if tp.topic in table.changelog_topic.topics:
                self._uncommitted.discard(tp.partition)
        super().revoke_partitions(table, tps)

    def on_committed(self, partitions: set[int], offsets: dict[TP, int]) -> None:
        """A commit made these partitions' writes durable, up to these changelog offsets."""
        for tp, offset in offsets.items():
            self.set_persisted_offset(tp, offset)
        for partition in partitions & self._uncommitted:
            self.uncommitted_marker(partition).unlink(missing_ok=True)
            self._uncommitted.discard(partition)


def record_commit(app: faust.App, committed: Iterable[TP]) -> None:
    """Tell the tables' stores that these source partitions' transactions committed.

    A table partition's writes travel in the transaction of the source partition
    with the same number in the same partition group (Faust's transactional id).
    """
    groups = app.assignor._topic_groups  # Faust's group_for_topic raises on unknown topics
    done = {(groups.get(tp.topic), tp.partition) for tp in committed}
    pending = app.tables._pending_persisted_offsets  # filled by Faust under exactly_once
    for table in app.tables.values():
        store = table.data
        if not isinstance(store, CommittedRocksDBStore):
            continue
        group = groups.get(table.changelog_topic_name)
        partitions = {partition for g, partition in done if g == group}
        offsets = {
            tp: pending.pop(tp)[1]
            for tp, (owner, _) in list(pending.items())
            if owner is store and tp.partition in partitions
        }
        store.on_committed(partitions, offsets)


STORES.aliases[SCHEME] = f"{__name__}:{CommittedRocksDBStore.__name__}"
STORES.aliases[MEMORY_SCHEME] = f"{__name__}:{PartitionedMemoryStore.__name__}"
