"""Ingest agent: readings-raw -> readings (+ Redis), each distinct reading once.

The ``last-ingested`` table holds, per device, the event time of the newest
reading forwarded. A reading at or before it is a duplicate (overlapping
polls) or late, and is not forwarded again; an invalid one goes to the
dead-letter topic with its reason and raw bytes. Under ``exactly_once`` the
forward, the table update and the input offset commit in one Kafka
transaction; the Redis write before them is idempotent, so a redelivery after a
crash stores nothing twice.
"""

from __future__ import annotations

import logging

from pipeline.app import app, settings
from pipeline.records import RejectedReading
from pipeline.retry import retry_until_done
from pipeline.storage import AsyncStore
from pipeline.topics import deadletter_topic, raw_readings_topic, readings_topic
from pipeline.validation import InvalidReading, parse_reading
from tables.pointers import last_ingested

log = logging.getLogger(__name__)

store = AsyncStore.from_url(settings.redis_url)


@app.agent(raw_readings_topic)
async def ingest(stream) -> None:
    """Validate raw readings; forward only new ones to `readings` and Redis."""
    async for event in stream.events():
        key, raw = event.key, event.value
        try:
            reading = parse_reading(key, raw)
        except InvalidReading as exc:
            log.warning("rejected reading from %s: %s", key, exc)
            payload = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
            await deadletter_topic.send(
                key=key, value=RejectedReading(reason=str(exc), payload=payload)
            )
            continue
        newest = last_ingested.get(reading.device_id)
        if newest is not None and reading.time <= newest:
            continue
        await retry_until_done(
            lambda r=reading: store.add_reading(r.device_id, r.asdict()),
            f"storing reading of {reading.device_id} in Redis",
            log,
        )
        await readings_topic.send(key=reading.device_id, value=reading)
        last_ingested[reading.device_id] = reading.time
