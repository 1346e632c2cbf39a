"""Connector: polls the device API on a schedule and produces raw readings.

Runs as a service inside every Faust worker, but only the leader polls, so
each device is polled once per interval across the cluster. Per device it
keeps a cursor (event time of the newest reading produced; on start, the
newest reading already in Redis) and produces only readings past it; the
ingest agent's table is the final word on duplicates, so a lost cursor costs
a re-send, never a double count.

Raw readings go out through the app's plain producer rather than an agent's
transactional one: they are the pipeline's input, not a result of processing.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time

import aiohttp
import mode

from pipeline.app import app, settings
from pipeline.retry import TRANSIENT
from pipeline.source.sensibo import RawReading, SensiboClient, SourceError
from pipeline.storage import AsyncStore
from pipeline.topics import raw_readings_topic

log = logging.getLogger(__name__)

MAX_CONCURRENT_DEVICE_POLLS = 16


def encode_raw(reading: RawReading) -> bytes:
    """The raw message: the API's values as received, nulls included."""
    return json.dumps(dataclasses.asdict(reading), allow_nan=True).encode()


@app.service
class DevicePoller(mode.Service):
    """Owns the HTTP session and the per-device cursors of the connector."""

    def __post_init__(self) -> None:
        self._cursors: dict[str, float] = {}
        self._session: aiohttp.ClientSession | None = None
        self._client: SensiboClient | None = None
        self._store = AsyncStore.from_url(settings.redis_url)
        self._limit = asyncio.Semaphore(MAX_CONCURRENT_DEVICE_POLLS)

    async def on_start(self) -> None:
        settings.require("source_api_key")
        self._session = aiohttp.ClientSession()
        self._client = SensiboClient(settings.source_url, settings.source_api_key, self._session)

    async def on_stop(self) -> None:
        if self._session is not None:
            await self._session.close()

    @mode.Service.timer(settings.poll_seconds)
    async def _poll_on_schedule(self) -> None:
        if app.is_leader():
            await self.poll_once()

    async def poll_once(self) -> int:
        """Poll every device once; returns how many new readings were produced."""
        started = time.monotonic()
        try:
            devices = await self._client.list_devices()
        except SourceError as exc:
            log.warning("device list unavailable: %s", exc)
            return 0
        counts = await asyncio.gather(*(self._poll_device(d) for d in devices))
        log.info(
            "polled %d devices: %d new readings in %.2fs",
            len(devices),
            sum(counts),
            time.monotonic() - started,
        )
        return sum(counts)

    async def _poll_device(self, device_id: str) -> int:
        async with self._limit:
            cursor = await self._cursor(device_id)
            days = 1 if cursor is not None else settings.backfill_days
            try:
                readings = await self._client.historical_measurements(device_id, days)
            except SourceError as exc:
                log.warning("device %s skipped this poll: %s", device_id, exc)
                return 0
            new = sorted(
                (r for r in readings if cursor is None or r.time > cursor), key=lambda r: r.time
            )
            if not new:
                return 0
            topic = raw_readings_topic.get_topic_name()
            key = device_id.encode()
            deliveries = [
                await app.producer.send(topic, key, encode_raw(r), None, None, None) for r in new
            ]
            await asyncio.gather(*deliveries)
            self._cursors[device_id] = new[-1].time
            return len(new)

    async def _cursor(self, device_id: str) -> float | None:
        if device_id not in self._cursors:
            try:
                newest = await self._store.newest_time(device_id)
            except TRANSIENT as exc:
                log.warning("cursor of %s unknown (Redis: %s); re-sending history", device_id, exc)
                return None
            if newest is not None:
                self._cursors[device_id] = newest
        return self._cursors.get(device_id)
