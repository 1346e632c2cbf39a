"""Ingest agent: readings-raw -> readings (+ Redis), each distinct reading once.

Per raw message: validate (``pipeline.validation``); an invalid one goes to
the dead-letter topic with its reason and raw payload, once per distinct
payload. A valid one is forwarded exactly when its (device, event time) has
not been forwarded before, which ``pipeline.dedup`` decides from the
``ingest-seen`` table: exactly within ``dedup_horizon_seconds`` behind the
device's newest reading, and for older ones by asking Redis, where every
forwarded reading is stored (not there: dead-lettered as older than the
horizon, never dropped in silence).

Under ``exactly_once`` the forward, the dead letters, the table updates and the
input offset commit in one Kafka transaction, never split between two
(``pipeline.commit_gate``); the Redis write before them is
idempotent (ZADD of the same member), so a redelivery after a crash stores
nothing twice. Redis outages are waited out (``pipeline.retry``), holding the
partition while Kafka keeps the backlog.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from pipeline.app import app, settings
from pipeline.commit_gate import commit_gate
from pipeline.dedup import DedupState, Verdict, fingerprint
from pipeline.records import Reading, RejectedReading
from pipeline.retry import retry_until_done
from pipeline.source.metrics import metrics
from pipeline.storage import AsyncStore
from pipeline.topics import deadletter_topic, raw_readings_topic, readings_topic
from pipeline.validation import InvalidReading, load_payload, parse_reading
from tables.ingest_state import ingest_seen
from tables.pointers import last_ingested

log = logging.getLogger(__name__)

store = AsyncStore.from_settings(settings)
dedup = DedupState(
    ingest_seen,
    settings.dedup_horizon_seconds,
    rejected_retention=max(2 * settings.dedup_horizon_seconds, settings.backfill_days * 86400.0),
)


def _text(raw: Any) -> str:
    return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)


def _identity(key: Any, raw: Any) -> tuple[str, float, str] | None:
    """(device, time, payload fingerprint) of a rejected message, when it names them."""
    try:
        payload = load_payload(raw)
    except InvalidReading:
        return None
    device_id, t = payload.get("device_id"), payload.get("time")
    key = key.decode("utf-8", "replace") if isinstance(key, bytes) else key
    if not isinstance(device_id, str) or device_id != key:
        return None
    if isinstance(t, bool) or not isinstance(t, int | float) or not math.isfinite(t):
        return None
    return device_id, float(t), fingerprint(payload)


async def _dead_letter(key: Any, raw: Any, reason: str, at: float | None = None) -> None:
    log.warning("rejected reading key=%s time=%s reason=%s", _text(key), at, reason)
    await deadletter_topic.send(key=key, value=RejectedReading(reason=reason, payload=_text(raw)))


async def _reject(key: Any, raw: Any, reason: str) -> str:
    identity = _identity(key, raw)
    if identity is not None and dedup.rejected_before(*identity):
        return "duplicate"
    await _dead_letter(key, raw, reason, identity[1] if identity else None)
    if identity is not None:
        dedup.record_rejected(*identity)
    return "rejected"


async def _accept(reading: Reading, raw: Any) -> str:
    device_id = reading.device_id
    verdict = dedup.check(device_id, reading.time)
    if verdict is Verdict.DUPLICATE:
        return "duplicate"
    if verdict is Verdict.BEYOND_HORIZON:
        stored = await retry_until_done(
            lambda: store.has_reading_at(device_id, reading.time),
            f"looking up an old reading of {device_id} in Redis",
            log,
        )
        if stored:
            return "duplicate"
        await _dead_letter(
            device_id,
            raw,
            f"older than the dedup horizon: {reading.time} is over "
            f"{settings.dedup_horizon_seconds:.0f} s behind the device's newest reading "
            f"{dedup.newest(device_id)} and is not stored",
            reading.time,
        )
        return "rejected"
    await retry_until_done(
        lambda: store.add_reading(device_id, reading.asdict()),
        f"storing reading of {device_id} in Redis",
        log,
    )
    await readings_topic.send(key=device_id, value=reading)
    if dedup.record(device_id, reading.time):
        last_ingested[device_id] = reading.time
    return "new"


async def handle(key: Any, raw: Any) -> str:
    """Process one raw message; returns the outcome: new, duplicate or rejected."""
    try:
        reading = parse_reading(key, raw, settings.future_tolerance_seconds)
    except InvalidReading as exc:
        return await _reject(key, raw, str(exc))
    return await _accept(reading, raw)


@app.agent(raw_readings_topic)
async def ingest(stream) -> None:
    """Validate raw readings; forward each distinct valid one once to `readings` and Redis."""
    async for event in stream.events():
        async with commit_gate.event():
            outcome = await handle(event.key, event.value)
        metrics.ingested.labels(device=str(event.key), outcome=outcome).inc()
