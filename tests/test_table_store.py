"""The table stores keep no write the changelog may not hold.

The RocksDB store reuses a partition only if its writes were committed; the
memory store forgets a partition once it is no longer active on the worker.

Each test builds a Faust app on a scratch data directory with one table on
``committed-rocksdb://`` and writes to it as an agent would (inside an event of
a partition). A "restart" is a second app on the same directory.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import faust
import pytest
from faust.streams import _current_event
from faust.types import TP

from pipeline.table_store import (
    MEMORY_SCHEME,
    SCHEME,
    CommittedRocksDBStore,
    PartitionedMemoryStore,
)

CHANGELOG = "store-test-counts-changelog"


def table_on(datadir: Path) -> faust.Table:
    app = faust.App("store-test", store=f"{SCHEME}://", datadir=str(datadir))
    table = app.Table("counts", default=int, partitions=2)
    app.conf.tabledir.mkdir(parents=True, exist_ok=True)
    return table


class Event:
    """What a store reads of the event being processed: its message's partition."""

    def __init__(self, partition: int) -> None:
        self.message = SimpleNamespace(partition=partition)


@contextmanager
def event_on(partition: int) -> Iterator[None]:
    """Run the body as the processing of an event from this source partition."""
    event = Event(partition)
    token = _current_event.set(weakref.ref(event))
    try:
        yield
    finally:
        _current_event.reset(token)


def close(store: CommittedRocksDBStore) -> None:
    """Release the databases, as the worker's process exit does."""
    for db in store._dbs.values():
        db.close()
    store._dbs.clear()


def keys(store: CommittedRocksDBStore, partition: int) -> set[bytes]:
    return set(store._visible_keys(store._db_for_partition(partition)))


@pytest.fixture
def store(tmp_path: Path) -> CommittedRocksDBStore:
    store = table_on(tmp_path).data
    assert isinstance(store, CommittedRocksDBStore)
    return store


def test_a_write_marks_its_partition_uncommitted_until_a_commit(store) -> None:
    with event_on(1):
        store[b"dev-a"] = b"1"
    assert store.uncommitted_marker(1).exists()
    assert not store.uncommitted_marker(0).exists()

    store.on_committed({1}, {TP(CHANGELOG, 1): 7})
    assert not store.uncommitted_marker(1).exists()
    assert store.persisted_offset(TP(CHANGELOG, 1)) == 7


def test_a_commit_of_other_partitions_leaves_the_mark(store) -> None:
    with event_on(0):
        store[b"dev-a"] = b"1"
    store.on_committed({1}, {})
    assert store.uncommitted_marker(0).exists()


def test_uncommitted_writes_are_discarded_at_the_next_open(store, tmp_path: Path) -> None:
    with event_on(0):
        store[b"committed"] = b"1"
    store.on_committed({0}, {TP(CHANGELOG, 0): 3})
    with event_on(0):
        store[b"never-committed"] = b"2"  # then the worker dies
    close(store)

    restarted = table_on(tmp_path).data
    assert keys(restarted, 0) == set()
    assert restarted.persisted_offset(TP(CHANGELOG, 0)) is None  # recover from the start
    assert not restarted.uncommitted_marker(0).exists()


def test_committed_partitions_are_reused_from_their_offset(store, tmp_path: Path) -> None:
    with event_on(0):
        store[b"dev-a"] = b"1"
        store[b"dev-b"] = b"2"
    with event_on(1):
        store[b"dev-c"] = b"3"
    store.on_committed({0}, {TP(CHANGELOG, 0): 41})
    close(store)

    restarted = table_on(tmp_path).data
    assert keys(restarted, 0) == {b"dev-a", b"dev-b"}
    assert restarted.persisted_offset(TP(CHANGELOG, 0)) == 41
    assert keys(restarted, 1) == set(), "partition 1 never committed"


def test_a_delete_marks_the_partition_that_held_the_key(store) -> None:
    with event_on(1):
        store[b"dev-a"] = b"1"
    store.on_committed({1}, {})
    del store[b"dev-a"]
    assert store.uncommitted_marker(1).exists()


def test_a_revoked_partition_keeps_its_mark(store) -> None:
    with event_on(0):
        store[b"dev-a"] = b"1"
    store.revoke_partitions(store.table, {TP(CHANGELOG, 0)})
    store.on_committed({0}, {})  # a later commit no longer covers the abandoned transaction
    assert store.uncommitted_marker(0).exists()


def test_the_memory_store_forgets_a_partition_that_is_no_longer_active_here(tmp_path) -> None:
    app = faust.App("store-test", store=f"{MEMORY_SCHEME}://", datadir=str(tmp_path))
    table = app.Table("counts", default=int, partitions=2)
    store = table.data
    assert isinstance(store, PartitionedMemoryStore)
    actives = {TP(CHANGELOG, 0), TP(CHANGELOG, 1)}
    app.assignor.assigned_actives = lambda: actives  # what the group assigned this worker
    asyncio.run(store.on_rebalance(actives, set(), actives))
    with event_on(0):
        store["written-live"] = 1  # its transaction is abandoned when partition 0 moves
    with event_on(1):
        store["stays"] = 2

    actives = {TP(CHANGELOG, 1)}  # partition 0 moved to another worker
    asyncio.run(store.on_rebalance(actives, {TP(CHANGELOG, 0)}, set()))
    assert dict(store.data) == {"stays": 2}
