"""Data access for the dashboard: every blocking read, none of it on the Bokeh event loop.

Sessions never talk to Redis, Kafka or the Faust web view themselves: they ask
this module from a worker thread (see ``dashboard.document``) and apply the
plain, immutable results on the event loop. Fleet-wide figures come from one
``Poller`` per server process, shared by every open page: with ten operators
watching, the fleet is still read once per refresh, and rates and "silent"
tracking have one memory. Per-device detail is read per session, and only what
is newer than what that session already shows.

Cost per poll with N devices: one pipelined round trip of 4 N O(1)/O(log n)
commands and one HMGET, a GET of the latest forecast only for devices whose forecast count
changed, RQ registry counts and capped id listings, one HTTP GET of the Faust
web view and two small Kafka requests.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from dashboard import quality
from dashboard.faust_view import Pointers, fetch_pointers
from dashboard.kafka_offsets import KafkaProbe, KafkaUnavailable
from dashboard.queue_state import JobsState, parse_job_id, read_jobs
from pipeline.connections import bootstrap_servers, kafka_client_kwargs, redis_client
from pipeline.settings import Settings
from pipeline.storage import Store

log = logging.getLogger(__name__)

REDIS_TIMEOUT_SECONDS = 1.0
MAX_READINGS = 5000  # per device on screen; older readings roll off
MAX_ANOMALIES = 500  # per device on screen
PAST_FORECASTS = 4  # earlier forecasts drawn against what happened


def connect(settings: Settings) -> Store:
    """A Store that fails fast: an outage shows as a status, the next refresh is the retry."""
    client = redis_client(
        settings,
        socket_connect_timeout=REDIS_TIMEOUT_SECONDS,
        socket_timeout=REDIS_TIMEOUT_SECONDS,
        retry=Retry(NoBackoff(), 0),
    )
    return Store(client)


def redis_address(store: Store) -> str:
    """Host, port and database of the Redis used, without any credentials."""
    kwargs = store.client.connection_pool.connection_kwargs
    return "{}:{}/{}".format(kwargs.get("host"), kwargs.get("port"), kwargs.get("db", 0))


@dataclass(frozen=True)
class DeviceRow:
    """One device's line in the fleet table (times in epoch seconds; None: unknown)."""

    device_id: str
    status: str  # live, silent, failing
    newest_time: float | None
    temperature: float | None
    humidity: float | None
    event_time_lag: float | None  # seconds, from the Faust web view
    jobs_emitted: int | None
    last_job_state: str | None  # queued, started, finished, failed
    last_job_end: float | None  # window end of that job
    forecast_until: float | None
    forecast_error: float | None  # MAE, °C, of the latest forecast's model
    anomalies: int | None


@dataclass(frozen=True)
class Health:
    """Pipeline-wide figures; None where not (yet) measurable."""

    readings_in_per_second: float | None  # offsets appended to readings-raw
    readings_out_per_second: float | None  # distinct readings stored in Redis
    consumer_lag: int | None  # records the stream workers have not committed, all topics
    jobs: JobsState | None
    max_event_time_lag: float | None


@dataclass(frozen=True)
class Outages:
    """What could not be read in the last poll, as text for the page (None: fine)."""

    redis: str | None = None
    faust_web: str | None = None
    kafka: str | None = None


@dataclass(frozen=True)
class FleetSnapshot:
    taken_at: float
    rows: tuple[DeviceRow, ...] | None  # None when Redis was unreachable
    health: Health
    outages: Outages


@dataclass(frozen=True)
class DeviceCursor:
    """What a session shows of one device; an update applies only to the cursor it was read for."""

    device_id: str
    generation: int  # bumped on every device switch
    last_time: float | None = None  # newest reading shown
    forecast_id: str | None = None  # job id of the forecast shown
    last_anomaly: float | None = None


@dataclass(frozen=True)
class DeviceUpdate:
    cursor: DeviceCursor
    readings: list[dict[str, float]] = field(default_factory=list)  # new since the cursor
    forecast: dict[str, Any] | None = None  # only when it differs from the one shown
    past_forecasts: list[dict[str, Any]] | None = None  # with a new forecast
    anomalies: list[dict[str, float]] = field(default_factory=list)
    accuracy: dict[str, quality.Accuracy] = field(default_factory=dict)
    error: str | None = None


def _decode(member: bytes) -> dict[str, float]:
    return json.loads(member)


@dataclass
class _Tracked:
    """Per-device memory of the poller across polls."""

    forecast_count: int = -1
    forecast: dict[str, Any] | None = None  # model, trained_until, window_end of the latest
    newest_time: float | None = None
    advanced_at: float = 0.0  # wall time the newest reading last moved


class Poller:
    """Fleet and health snapshot, read at most once per refresh interval per process."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        kafka: KafkaProbe | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.store = store
        self.kafka = kafka
        self.clock = clock
        self.min_interval = settings.dashboard_refresh_seconds * 0.9
        self._lock = threading.Lock()
        self._snapshot: FleetSnapshot | None = None
        self._polled_at = float("-inf")  # monotonic
        self._tracked: dict[str, _Tracked] = {}
        self._rate_base: dict[str, tuple[float, int]] = {}  # figure -> (time, count)

    def snapshot(self) -> FleetSnapshot:
        """The latest snapshot, polled anew if older than most of a refresh interval."""
        with self._lock:
            now = time.monotonic()
            if self._snapshot is None or now - self._polled_at >= self.min_interval:
                self._snapshot = self._poll()
                self._polled_at = now
            return self._snapshot

    def close(self) -> None:
        if self.kafka is not None:
            self.kafka.close()
        self.store.client.close()

    def _poll(self) -> FleetSnapshot:
        now = self.clock()
        outages: dict[str, str] = {}
        pointers: dict[str, Pointers] = {}
        try:
            view = fetch_pointers(self.settings.faust_web_url)
        except (OSError, ValueError) as exc:
            outages["faust_web"] = (
                f"Faust web view unreachable at {self.settings.faust_web_url} "
                f"({getattr(exc, 'reason', exc)})"
            )
        else:
            pointers = view.pointers
            if view.missing_workers:
                outages["faust_web"] = (
                    f"Faust web view incomplete: no answer from {view.missing_workers}"
                )
        consumer_lag, readings_in = None, None
        if self.kafka is not None:
            try:
                topics = self.kafka.offsets()
            except KafkaUnavailable as exc:
                outages["kafka"] = f"Kafka unreachable ({exc})"
            else:
                consumer_lag = sum(t.lag for t in topics)
                raw = next(t for t in topics if t.topic == self.settings.topic("readings-raw"))
                readings_in = self._rate("in", now, raw.end)
        rows, jobs, readings_out = None, None, None
        try:
            rows, stored, jobs = self._read_redis(now, pointers)
            readings_out = self._rate("out", now, stored)
        except redis.RedisError as exc:
            outages["redis"] = f"Redis unreachable at {redis_address(self.store)} ({exc})"
        lags = [r.event_time_lag for r in rows or () if r.event_time_lag is not None]
        health = Health(
            readings_in_per_second=readings_in,
            readings_out_per_second=readings_out,
            consumer_lag=consumer_lag,
            jobs=jobs,
            max_event_time_lag=max(lags) if lags else None,
        )
        return FleetSnapshot(
            now, tuple(rows) if rows is not None else None, health, Outages(**outages)
        )

    def _rate(self, name: str, now: float, count: int) -> float | None:
        """Per-second change of a monotonic count since the previous poll."""
        previous = self._rate_base.get(name)
        self._rate_base[name] = (now, count)
        if previous is None or now <= previous[0] or count < previous[1]:
            return None
        return (count - previous[1]) / (now - previous[0])

    def _read_redis(
        self, now: float, pointers: dict[str, Pointers]
    ) -> tuple[list[DeviceRow], int, JobsState]:
        store, keys = self.store, self.store.keys
        devices = store.devices()
        pipe = store.client.pipeline(transaction=False)
        for device in devices:
            pipe.zrange(keys.readings(device), -1, -1)
            pipe.zcard(keys.readings(device))
            pipe.hlen(keys.forecasts(device))
            pipe.hgetall(keys.accuracy(device))
        if devices:
            pipe.hmget(keys.anomaly_counts, devices)
        replies = pipe.execute()
        anomaly_counts = replies.pop() if devices else []
        self._tracked = {d: self._tracked.get(d, _Tracked()) for d in devices}
        self._refresh_forecasts(
            [
                (d, replies[4 * i + 2])
                for i, d in enumerate(devices)
                if replies[4 * i + 2] != self._tracked[d].forecast_count
            ]
        )
        jobs = read_jobs(store.client, self.settings.queues(), devices)

        rows, stored = [], 0
        for i, device in enumerate(devices):
            newest_raw, count, _, accuracy_raw = replies[4 * i : 4 * i + 4]
            anomalies = int(anomaly_counts[i]) if anomaly_counts[i] is not None else None
            stored += count
            newest = _decode(newest_raw[0]) if newest_raw else None
            tracked = self._track(device, newest, now)
            latest = tracked.forecast
            state, end = jobs.last_jobs.get(device, (None, None))
            if latest is not None and (end is None or latest["window_end"] >= end):
                state, end = "finished", latest["window_end"]
            pointer = pointers.get(device)
            # The stream worker knows when each reading arrived; without its view, the
            # poller's own memory of when the newest reading last moved stands in.
            silent = pointer.silent if pointer and pointer.silent is not None else None
            if silent is None:
                silent = now - tracked.advanced_at > self.settings.silent_after_seconds
            status = "failing" if state == "failed" else "silent" if silent else "live"
            figures = quality.parse_accuracy(accuracy_raw)
            rows.append(
                DeviceRow(
                    device_id=device,
                    status=status,
                    newest_time=newest["time"] if newest else None,
                    temperature=newest["temperature"] if newest else None,
                    humidity=newest["humidity"] if newest else None,
                    event_time_lag=pointer.event_time_lag if pointer else None,
                    jobs_emitted=pointer.jobs_emitted if pointer else None,
                    last_job_state=state,
                    last_job_end=end,
                    forecast_until=latest["trained_until"] if latest else None,
                    forecast_error=quality.forecast_error(
                        figures, latest["model"] if latest else None
                    ),
                    # No count yet is 0 once the tracker scores the device, else unknown.
                    anomalies=anomalies if anomalies is not None or not figures else 0,
                )
            )
        return rows, stored, jobs

    def _refresh_forecasts(self, changed: list[tuple[str, int]]) -> None:
        """Fetch the latest forecast only of devices whose forecast count moved.

        ``put_forecast`` is the only writer of the latest pointer and always adds
        to the device's forecast hash first, so an unchanged count means an
        unchanged latest forecast.
        """
        if not changed:
            return
        pipe = self.store.client.pipeline(transaction=False)
        for device, _ in changed:
            pipe.get(self.store.keys.latest_forecast(device))
        for (device, count), raw in zip(changed, pipe.execute(), strict=True):
            tracked = self._tracked[device]
            tracked.forecast_count = count
            if raw:
                doc = json.loads(raw)
                window_end = doc.get("window_end", doc["trained_until"])
                tracked.forecast = {
                    "model": doc.get("model"),
                    "trained_until": float(doc["trained_until"]),
                    "window_end": float(window_end),
                }

    def _track(self, device: str, newest: dict[str, float] | None, now: float) -> _Tracked:
        """Remember when a device's newest reading last moved, in wall time."""
        tracked = self._tracked[device]
        newest_time = newest["time"] if newest else None
        if newest_time != tracked.newest_time:
            first_sight = tracked.newest_time is None
            tracked.newest_time = newest_time
            # At first sight the reading's event time is the best guess of its arrival.
            tracked.advanced_at = min(now, newest_time) if first_sight and newest_time else now
        return tracked


def fetch_device(store: Store, cursor: DeviceCursor) -> DeviceUpdate:
    """What a session lacks of one device: newer readings, a new forecast, new anomalies."""
    device = cursor.device_id
    try:
        if cursor.last_time is None:
            readings = store.latest_readings(device, MAX_READINGS)
        else:
            since = store.readings_between(device, cursor.last_time)
            readings = [r for r in since if r["time"] > cursor.last_time]
        forecast = store.latest_forecast(device)
        past = None
        if forecast is not None and forecast.get("job_id") != cursor.forecast_id:
            past = _past_forecasts(store, device, forecast.get("job_id"))
        elif forecast is not None:
            forecast = None  # the session shows it already
        anomalies = quality.anomalies_since(store, device, cursor.last_anomaly, MAX_ANOMALIES)
        accuracy = quality.parse_accuracy(store.client.hgetall(store.keys.accuracy(device)))
    except redis.RedisError as exc:
        return DeviceUpdate(cursor, error=f"Redis unreachable at {redis_address(store)} ({exc})")
    return DeviceUpdate(cursor, readings, forecast, past, anomalies, accuracy)


def _past_forecasts(store: Store, device: str, latest_id: str | None) -> list[dict[str, Any]]:
    """The few forecasts made before the latest, oldest first, to set against the readings."""
    ids = [i.decode() for i in store.client.hkeys(store.keys.forecasts(device))]

    def window_end(job_id: str) -> float:
        parsed = parse_job_id(job_id)
        return parsed[1] if parsed else float("-inf")

    earlier = sorted((i for i in ids if i != latest_id), key=window_end)[-PAST_FORECASTS:]
    if not earlier:
        return []
    raw = store.client.hmget(store.keys.forecasts(device), earlier)
    return [json.loads(r) for r in raw if r]


_shared: dict[str, Poller] = {}
_shared_lock = threading.Lock()


def shared_poller(settings: Settings) -> Poller:
    """The process's poller for these settings, created on first use."""
    key = json.dumps(settings.as_dict(masked=False), sort_keys=True, default=str)
    with _shared_lock:
        poller = _shared.get(key)
        if poller is None:
            kafka = KafkaProbe(
                bootstrap_servers(settings),
                settings.app_id,
                [settings.topic("readings-raw"), settings.topic("readings")],
                security=kafka_client_kwargs(settings),
            )
            poller = _shared[key] = Poller(settings, connect(settings), kafka)
        return poller


def close_shared() -> None:
    """Release every shared poller's connections (the server is unloading the app)."""
    with _shared_lock:
        for poller in _shared.values():
            poller.close()
        _shared.clear()
