"""The ingest agent's memory of what it let through (see ``pipeline.dedup``).

Kept in memory and rebuilt from its changelog at start, never on local disk:
with ``exactly_once`` the changelog holds only committed updates (it is read
``read_committed``), whereas a local RocksDB store would also keep the writes
of a transaction that a ``kill -9`` aborted, and ingest would then take the
redelivered readings of that transaction for duplicates and lose them.
Keys are per device (``{d}|hwm``, ``{d}|ok|{bucket}``, ``{d}|bad``) and are
written while the device's raw message is processed, so they land in that
message's partition of the changelog, like a table keyed by device.
"""

from __future__ import annotations

from pipeline.app import app

ingest_seen = app.Table(
    "ingest-seen",
    key_type=str,
    store="memory://",
    help="Event times ingested per device and time bucket, within the dedup horizon.",
)
