"""Connector: polls the device API on a schedule and produces raw readings.

Runs as a service inside every Faust worker, but only the leader polls, so
each device is polled once per interval across the cluster (during a
leadership hand-over two workers may both poll once; ingest drops the
repeats). Devices are polled concurrently: requests share a client-side rate
limit and a bound on requests in flight, and each device's poll has a
deadline, so a device that times out or answers garbage costs itself a poll
and never holds up the others.

Per device a ``Cursor`` remembers what this leader produced: every reading
within ``dedup_horizon_seconds`` of the newest one is sent once, including one
that the API publishes late, behind newer ones. A reading is remembered only
after Kafka acknowledged it, and the cursor's floor never moves past a reading
that failed to produce, so a Kafka outage delays readings and loses none. A
new leader starts each device from the newest reading in Redis minus the
horizon (resending that much; ingest drops the repeats), or with
``backfill_days`` of history for a device never seen. A device that was away
has its gap refilled, up to the API's 7 days.

Raw readings go out through the app's plain producer rather than an agent's
transactional one: they are the pipeline's input, not a result of processing.
Each carries ``received_at``, the API's clock when it answered, against which
ingest judges "from the future".
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import math
import time

import aiohttp
import mode

from pipeline.app import app, settings
from pipeline.connections import ca_file
from pipeline.retry import TRANSIENT
from pipeline.source.backoff import Backoff
from pipeline.source.metrics import metrics
from pipeline.source.rate_limit import TokenBucket
from pipeline.source.sensibo import RawReading, SensiboClient, SourceError, open_session
from pipeline.storage import AsyncStore
from pipeline.topics import raw_readings_topic

log = logging.getLogger(__name__)

DAY = 86400.0
MAX_DAYS = 7  # the API's limit on historicalMeasurements


def encode_raw(reading: RawReading, received_at: float) -> bytes:
    """The raw message: the API's values as received, nulls and NaN included."""
    payload = {**dataclasses.asdict(reading), "received_at": received_at}
    return json.dumps(payload, allow_nan=True).encode()


def _content(reading: RawReading) -> str:
    return repr((reading.temperature, reading.humidity))


@dataclasses.dataclass
class Cursor:
    """What the connector produced for one device.

    Readings at or below ``floor`` are never sent; above it, a reading is sent
    unless the same content at the same time is in ``sent``. ``newest`` is the
    newest produced time that was not from the future.
    """

    floor: float = -math.inf
    newest: float | None = None
    sent: dict[float, str] = dataclasses.field(default_factory=dict)

    @classmethod
    def resuming_from(cls, newest_stored: float | None, horizon: float) -> Cursor:
        if newest_stored is None:
            return cls()
        return cls(floor=newest_stored - horizon, newest=newest_stored)

    def days_to_fetch(self, api_now: float | None, backfill_days: int) -> int:
        """Backfill for a new device; else enough days to cover the gap since the newest."""
        if self.newest is None:
            return backfill_days
        if api_now is None:
            return 1
        return max(1, min(MAX_DAYS, math.ceil((api_now - self.newest) / DAY)))

    def fresh(self, readings: list[RawReading]) -> list[RawReading]:
        """The readings not produced yet, oldest first."""
        return sorted(
            (r for r in readings if r.time > self.floor and self.sent.get(r.time) != _content(r)),
            key=lambda r: r.time,
        )

    def mark(
        self, produced: list[RawReading], future_after: float, horizon: float, advance: bool
    ) -> None:
        """Remember produced readings; move the floor only if nothing failed to produce."""
        for reading in produced:
            self.sent[reading.time] = _content(reading)
        current = [r.time for r in produced if r.time <= future_after]
        if current:
            self.newest = max(current) if self.newest is None else max(self.newest, *current)
        if advance and self.newest is not None and self.newest - horizon > self.floor:
            self.floor = self.newest - horizon
            self.sent = {t: c for t, c in self.sent.items() if t > self.floor}


@app.service
class DevicePoller(mode.Service):
    """Owns the HTTP session and the per-device cursors of the connector."""

    def __post_init__(self) -> None:
        self._cursors: dict[str, Cursor] = {}
        self._session: aiohttp.ClientSession | None = None
        self._client: SensiboClient | None = None
        self._store = AsyncStore.from_settings(settings)
        self._api_now: float | None = None

    async def on_start(self) -> None:
        settings.require("source_api_key")
        self._session = open_session(ca_file(settings, "source_ca_file"))
        self._client = SensiboClient(
            settings.source_url,
            settings.source_api_key,
            self._session,
            settings.source_timeout_seconds,
            limiter=TokenBucket(settings.source_rate_limit_per_second),
            concurrency=asyncio.Semaphore(settings.poll_concurrency),
            backoff=Backoff(
                first=settings.source_backoff_seconds,
                cap=min(30.0, settings.poll_seconds),
                attempts=settings.source_attempts,
            ),
        )

    async def on_stop(self) -> None:
        if self._session is not None:
            await self._session.close()

    @mode.Service.task
    async def _poll_on_schedule(self) -> None:
        """One round per ``poll_seconds``, on the leader only; a late round starts at once."""
        next_round = time.monotonic()
        while not self.should_stop:
            if app.is_leader():
                await self.poll_once()
            elif self._cursors:
                log.info("connector is not the leader any more; forgetting its cursors")
                self._cursors.clear()
            next_round = max(next_round + settings.poll_seconds, time.monotonic())
            await self.sleep(next_round - time.monotonic())

    async def poll_once(self) -> int:
        """Poll every device once; returns how many readings were produced."""
        started = time.monotonic()
        try:
            listing = await self._client.devices()
        except SourceError as exc:
            metrics.api_errors.labels(device="", kind=exc.kind).inc()
            log.warning("device list unavailable kind=%s reason=%s", exc.kind, exc)
            return 0
        if listing.api_time is not None:
            self._api_now = listing.api_time
        await self._resume_cursors(listing.ids)
        counts = await asyncio.gather(*(self._poll_within_deadline(d) for d in listing.ids))
        log.info(
            "poll round devices=%d produced=%d seconds=%.2f",
            len(listing.ids),
            sum(counts),
            time.monotonic() - started,
        )
        return sum(counts)

    async def _poll_within_deadline(self, device_id: str) -> int:
        deadline = settings.poll_seconds + settings.source_timeout_seconds
        started = time.monotonic()
        try:
            async with asyncio.timeout(deadline):
                return await self._poll_device(device_id)
        except TimeoutError:
            metrics.api_errors.labels(device=device_id, kind="deadline").inc()
            log.warning("device %s: poll over its %.1f s deadline; next poll retries", device_id,
                        deadline)  # fmt: skip
            return 0
        finally:
            metrics.poll_seconds.observe(time.monotonic() - started)

    async def _resume_cursors(self, device_ids: list[str]) -> None:
        """Cursors for the devices this leader has not polled yet, from Redis at once.

        One pipelined lookup for all of them: a lookup per device, all at once,
        would ask the Redis client's pool (100 connections) for a connection per
        device, and most of a large fleet would wait a poll.
        """
        new = [d for d in device_ids if d not in self._cursors]
        if not new:
            return
        try:
            newest = await self._store.newest_times(new)
        except TRANSIENT as exc:
            log.warning("%d devices wait a poll: newest stored readings unknown (%s)",
                        len(new), exc)  # fmt: skip
            return
        for device_id in new:
            self._cursors[device_id] = Cursor.resuming_from(
                newest[device_id], settings.dedup_horizon_seconds
            )

    async def _poll_device(self, device_id: str) -> int:
        cursor = self._cursors.get(device_id)
        if cursor is None:  # Redis could not say where to resume: next poll
            return 0
        days = cursor.days_to_fetch(self._api_now, settings.backfill_days)
        try:
            history = await self._client.history(device_id, days)
        except SourceError as exc:
            metrics.api_errors.labels(device=device_id, kind=exc.kind).inc()
            log.warning("device %s skipped this poll kind=%s reason=%s", device_id, exc.kind, exc)
            return 0
        received_at = history.api_time if history.api_time is not None else time.time()
        metrics.fetched.labels(device=device_id).inc(len(history.readings))
        fresh = cursor.fresh(history.readings)
        if not fresh:
            return 0
        produced = await self._produce(device_id, fresh, received_at)
        cursor.mark(
            produced,
            received_at + settings.future_tolerance_seconds,
            settings.dedup_horizon_seconds,
            advance=len(produced) == len(fresh),
        )
        metrics.produced.labels(device=device_id).inc(len(produced))
        return len(produced)

    async def _produce(
        self, device_id: str, readings: list[RawReading], received_at: float
    ) -> list[RawReading]:
        """Send readings; return those Kafka acknowledged."""
        topic = raw_readings_topic.get_topic_name()
        key = device_id.encode()
        try:
            pending = [
                await app.producer.send(topic, key, encode_raw(r, received_at), None, None, None)
                for r in readings
            ]
        except Exception as exc:  # the producer refuses while Kafka is away
            log.warning("device %s: readings not produced (%s); next poll retries", device_id, exc)
            return []
        results = await asyncio.gather(*pending, return_exceptions=True)
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed:
            log.warning("device %s: %d of %d readings not produced (%s); next poll retries",
                        device_id, len(failed), len(readings), failed[0])  # fmt: skip
        return [
            r
            for r, res in zip(readings, results, strict=True)
            if not isinstance(res, BaseException)
        ]
