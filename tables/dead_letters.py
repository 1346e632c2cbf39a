"""Dead letters per device, counted from the ``readings-deadletter`` topic."""

from __future__ import annotations

from pipeline.app import app

dead_letters = app.Table(
    "dead-letters",
    key_type=str,
    value_type=int,
    default=int,
    help="Raw readings rejected by ingest (dead-lettered) per device.",
)
