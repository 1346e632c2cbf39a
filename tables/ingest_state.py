"""The ingest agent's memory of what it let through (see ``pipeline.dedup``).

It must hold only committed updates: a write of a transaction that a
``kill -9`` aborted would make ingest take the redelivered readings of that
transaction for duplicates and lose them. The memory store is rebuilt from the
changelog, read ``read_committed``; the RocksDB store (``pipeline.table_store``)
discards a partition that holds uncommitted writes.
Keys are per device (``{d}|hwm``, ``{d}|ok|{bucket}``, ``{d}|bad``) and are
written while the device's raw message is processed, so they land in that
message's partition of the changelog, like a table keyed by device.
"""

from __future__ import annotations

from pipeline.app import app

ingest_seen = app.Table(
    "ingest-seen",
    key_type=str,
    help="Event times ingested per device and time bucket, within the dedup horizon.",
)
