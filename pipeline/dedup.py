"""Exact deduplication of readings by (device, event time), within a bounded horizon.

A high-water mark alone (drop anything at or before the newest time seen)
loses readings that arrive out of order but were never seen. So ingest
remembers every event time it let through, per device, back to
``horizon`` seconds behind that device's newest one:

* a reading within the horizon is new exactly when its time is not remembered;
* a reading older than the horizon (newest - horizon) cannot be judged from
  memory: the caller asks Redis, where every forwarded reading is stored,
  and dead-letters it as "older than the dedup horizon" if it is not there.
  (Redis is written before the Kafka transaction commits, so it may hold
  readings of a transaction that then aborted; those are re-processed from
  the same committed state and so are never old by then.)

State lives in a changelogged Faust table (any ``MutableMapping`` here, so the
logic is testable and benchmarkable without Kafka), split so that one update
writes a small value: per device ``{d}|hwm`` (newest accepted time),
``{d}|ok|{b}`` (sorted accepted times of bucket b, ``BUCKET_SECONDS`` wide),
and ``{d}|bad`` (fingerprints of rejected payloads, so a payload the connector
sends again is dead-lettered once). Buckets that fall behind the horizon are
deleted as the mark advances, so memory is bounded by about
horizon / sampling interval times per device.

Rejected fingerprints are kept longer (``rejected_retention``, the ingest
agent passes the larger of twice the horizon and the backfill period): a new
connector leader resends from the newest reading *in Redis*, which may lag this
table's mark by the ingest backlog, or the whole backfill if Redis has nothing
of the device yet; rejected payloads have no Redis copy to fall back on.
"""

from __future__ import annotations

import bisect
import enum
import hashlib
import json
import math
from collections.abc import MutableMapping
from typing import Any

BUCKET_SECONDS = 600.0


class Verdict(enum.Enum):
    NEW = "new"
    DUPLICATE = "duplicate"
    BEYOND_HORIZON = "beyond_horizon"


def fingerprint(payload: dict[str, Any]) -> str:
    """Identity of a raw payload's content, ignoring when the connector fetched it."""
    content = {k: v for k, v in payload.items() if k != "received_at"}
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.blake2b(canonical.encode(), digest_size=8).hexdigest()


class DedupState:
    """What ingest already let through, per device, back to ``horizon`` seconds."""

    def __init__(
        self,
        table: MutableMapping[str, Any],
        horizon: float,
        rejected_retention: float | None = None,
        bucket: float = BUCKET_SECONDS,
    ) -> None:
        self.table = table
        self.horizon = horizon
        self.rejected_retention = 2 * horizon if rejected_retention is None else rejected_retention
        self.bucket = bucket

    def _bucket_key(self, device_id: str, index: int) -> str:
        return f"{device_id}|ok|{index}"

    def _index(self, t: float) -> int:
        return math.floor(t / self.bucket)

    def newest(self, device_id: str) -> float | None:
        return self.table.get(f"{device_id}|hwm")

    def check(self, device_id: str, t: float) -> Verdict:
        """Whether a valid reading at ``t`` is new, a duplicate, or too old to tell."""
        newest = self.newest(device_id)
        if newest is not None and t < newest - self.horizon:
            return Verdict.BEYOND_HORIZON
        seen = self.table.get(self._bucket_key(device_id, self._index(t))) or ()
        i = bisect.bisect_left(seen, t)
        return Verdict.DUPLICATE if i < len(seen) and seen[i] == t else Verdict.NEW

    def record(self, device_id: str, t: float) -> bool:
        """Remember an accepted reading (checked NEW); returns whether it is the newest."""
        key = self._bucket_key(device_id, self._index(t))
        seen = list(self.table.get(key) or ())
        bisect.insort(seen, t)
        self.table[key] = seen
        newest = self.newest(device_id)
        if newest is not None and t <= newest:
            return False
        self.table[f"{device_id}|hwm"] = t
        if newest is not None:
            self._expire(device_id, newest, t)
        return True

    def _expire(self, device_id: str, old: float, new: float) -> None:
        """Drop buckets that the horizon left behind when the mark moved from old to new."""
        first = self._index(old - self.horizon)
        stop = min(self._index(new - self.horizon), self._index(old) + 1)
        for index in range(first, stop):
            key = self._bucket_key(device_id, index)
            if key in self.table:
                del self.table[key]

    def rejected_before(self, device_id: str, t: float, print_: str) -> bool:
        """Whether this rejected payload was already dead-lettered (within the horizon)."""
        return [t, print_] in (self.table.get(f"{device_id}|bad") or ())

    def record_rejected(self, device_id: str, t: float, print_: str) -> None:
        """Remember a dead-lettered payload; entries past the retention are dropped."""
        newest = self.newest(device_id)
        floor = -math.inf if newest is None else newest - self.rejected_retention
        if t < floor:
            return  # older than that is not deduplicated: it may be dead-lettered again
        key = f"{device_id}|bad"
        kept = [entry for entry in self.table.get(key) or () if entry[0] >= floor]
        self.table[key] = [*kept, [t, print_]]
