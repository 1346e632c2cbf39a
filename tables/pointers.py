"""Per-device event-time pointers, keyed by device id and co-partitioned with
the topic their agent consumes (same key, same partition count)."""

from __future__ import annotations

from pipeline.app import app

last_ingested = app.Table(
    "last-ingested",
    key_type=str,
    value_type=float,
    help="Event time (epoch s) of the newest reading ingested per device.",
)

last_processed = app.Table(
    "last-processed",
    key_type=str,
    value_type=float,
    help="Event time (epoch s) where the last prediction window closed, per device.",
)

jobs_emitted = app.Table(
    "jobs-emitted",
    key_type=str,
    value_type=int,
    default=int,
    help="Prediction jobs emitted per device.",
)

last_seen_wall = app.Table(
    "last-seen-wall",
    key_type=str,
    value_type=float,
    help="Wall-clock time (epoch s) the job manager last saw a new reading, per device.",
)

late_readings = app.Table(
    "late-readings",
    key_type=str,
    value_type=int,
    default=int,
    help="Readings at or before the pointer (late or replayed) per device; never windowed.",
)
