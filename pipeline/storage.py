"""Redis layout shared by the ingest agent, the prediction workers and the dashboard.

One module owns every key name and encoding so that the writer and the readers
cannot drift apart. Readings are kept per device in a sorted set scored by event
time; a member is the reading's canonical JSON, so writing the same reading
twice is a no-op (ZADD of an existing member), which makes the ingest write
idempotent under redelivery. Forecasts are stored per job id with HSETNX, so a
job that runs twice still leaves exactly one forecast.

Keys (``{d}`` is a device id, ``{p}`` the optional key prefix):
  {p}devices                 SET   of device ids ever ingested
  {p}readings:{d}            ZSET  score = event time, member = reading JSON
  {p}forecasts:{d}           HASH  job id -> forecast JSON (every forecast)
  {p}forecast:{d}:latest     STRING forecast JSON with the newest trained-until
  {p}candidates:{d}          HASH  "{job id}:{m}" -> forecast JSON of candidate m in an auto job
  {p}jobs:{d}                SET   of job ids ever enqueued (the enqueue's idempotency record)
  {p}job-windows:{d}         ZSET  score = window end, member = job id, for every id in jobs:{d}
  {p}jobs-audited:{d}        SET   of job ids whose audit copy reached the jobs topic
  {p}model:{d}:{m}           HASH  fitted model m of device d (model JSON, version, revision)
  {p}forecast-index:{d}:{m}  ZSET  score = trained-until, member = job id (recent forecasts of m)
  {p}accuracy:{d}            HASH  model name -> JSON online error statistics of its forecasts
  {p}accuracy-scored:{d}     ZSET  score = member = event time of a reading already scored
  {p}anomalies:{d}           ZSET  score = event time, member = anomaly JSON (the newest ones)
  {p}anomaly-counts          HASH  device id -> anomalies counted ever
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import redis
import redis.asyncio as aioredis

from pipeline.connections import redis_client
from pipeline.settings import Settings

READING_FIELDS = ("time", "temperature", "humidity")

# Replaces the latest-forecast pointer only when the new forecast is newer, so a
# slow worker finishing an old window never hides a fresher forecast.
_SET_LATEST_IF_NEWER = """
local current = redis.call('GET', KEYS[1])
if current then
  local ok, doc = pcall(cjson.decode, current)
  if ok and tonumber(doc['trained_until']) > tonumber(ARGV[2]) then
    return 0
  end
end
redis.call('SET', KEYS[1], ARGV[1])
return 1
"""


@dataclass(frozen=True)
class Keys:
    """Key names, optionally prefixed so that several deployments share a Redis."""

    prefix: str = ""

    @property
    def devices(self) -> str:
        return f"{self.prefix}devices"

    def readings(self, device_id: str) -> str:
        return f"{self.prefix}readings:{device_id}"

    def forecasts(self, device_id: str) -> str:
        return f"{self.prefix}forecasts:{device_id}"

    def latest_forecast(self, device_id: str) -> str:
        return f"{self.prefix}forecast:{device_id}:latest"

    def candidate_forecasts(self, device_id: str) -> str:
        return f"{self.prefix}candidates:{device_id}"

    def jobs(self, device_id: str) -> str:
        return f"{self.prefix}jobs:{device_id}"

    def job_windows(self, device_id: str) -> str:
        return f"{self.prefix}job-windows:{device_id}"

    def jobs_audited(self, device_id: str) -> str:
        return f"{self.prefix}jobs-audited:{device_id}"

    def fitted_model(self, device_id: str, model: str) -> str:
        return f"{self.prefix}model:{device_id}:{model}"

    def forecast_index(self, device_id: str, model: str) -> str:
        return f"{self.prefix}forecast-index:{device_id}:{model}"

    def accuracy(self, device_id: str) -> str:
        return f"{self.prefix}accuracy:{device_id}"

    def scored_readings(self, device_id: str) -> str:
        return f"{self.prefix}accuracy-scored:{device_id}"

    def anomalies(self, device_id: str) -> str:
        return f"{self.prefix}anomalies:{device_id}"

    @property
    def anomaly_counts(self) -> str:
        return f"{self.prefix}anomaly-counts"


def encode_reading(time: float, temperature: float, humidity: float) -> str:
    """Canonical JSON of a reading: same reading, same bytes."""
    return json.dumps(
        {"time": float(time), "temperature": float(temperature), "humidity": float(humidity)},
        sort_keys=True,
        separators=(",", ":"),
    )


def decode_reading(member: bytes | str) -> dict[str, float]:
    return json.loads(member)


def encode_forecast(forecast: dict[str, Any]) -> str:
    return json.dumps(forecast, sort_keys=True, separators=(",", ":"))


class Store:
    """Blocking access for the prediction workers, the dashboard and tests."""

    def __init__(self, client: redis.Redis, keys: Keys | None = None) -> None:
        self.client = client
        self.keys = keys or Keys()

    @classmethod
    def from_url(cls, url: str, prefix: str = "") -> Store:
        return cls(redis.Redis.from_url(url, socket_timeout=10), Keys(prefix))

    @classmethod
    def from_settings(cls, settings: Settings, prefix: str = "") -> Store:
        """The settings' Redis, with their login and TLS (see ``pipeline.connections``)."""
        return cls(redis_client(settings, socket_timeout=10), Keys(prefix))

    def devices(self) -> list[str]:
        return sorted(m.decode() for m in self.client.smembers(self.keys.devices))

    def add_readings(self, device_id: str, readings: Iterable[dict[str, float]]) -> int:
        """Store readings; returns how many were new (duplicates are no-ops)."""
        mapping = {
            encode_reading(r["time"], r["temperature"], r["humidity"]): float(r["time"])
            for r in readings
        }
        if not mapping:
            return 0
        pipe = self.client.pipeline()
        pipe.sadd(self.keys.devices, device_id)
        pipe.zadd(self.keys.readings(device_id), mapping)
        return int(pipe.execute()[1])

    def readings_between(
        self, device_id: str, start: float = float("-inf"), end: float = float("inf")
    ) -> list[dict[str, float]]:
        """Readings with start <= time <= end, oldest first."""
        members = self.client.zrangebyscore(self.keys.readings(device_id), start, end)
        return [decode_reading(m) for m in members]

    def times_between(self, device_id: str, after: float, until: float) -> list[float]:
        """Event times of the stored readings with after < time <= until, oldest first."""
        pairs = self.client.zrangebyscore(
            self.keys.readings(device_id), f"({after!r}", until, withscores=True
        )
        return [score for _, score in pairs]

    def first_time(self, device_id: str) -> float | None:
        """Event time of the device's oldest stored reading."""
        pairs = self.client.zrange(self.keys.readings(device_id), 0, 0, withscores=True)
        return pairs[0][1] if pairs else None

    def last_enqueued_window_end(self, device_id: str) -> float | None:
        """The latest window end of the device's enqueued jobs (``job-windows:{d}``)."""
        pairs = self.client.zrange(self.keys.job_windows(device_id), -1, -1, withscores=True)
        return pairs[0][1] if pairs else None

    def latest_readings(self, device_id: str, count: int) -> list[dict[str, float]]:
        members = self.client.zrange(self.keys.readings(device_id), -count, -1)
        return [decode_reading(m) for m in members]

    def put_forecast(self, device_id: str, job_id: str, forecast: dict[str, Any]) -> bool:
        """Store a job's forecast once; returns False if that job already stored one."""
        encoded = encode_forecast(forecast)
        stored = self.client.hsetnx(self.keys.forecasts(device_id), job_id, encoded)
        if stored:
            self.client.eval(
                _SET_LATEST_IF_NEWER,
                1,
                self.keys.latest_forecast(device_id),
                encoded,
                float(forecast["trained_until"]),
            )
        return bool(stored)

    def has_forecast(self, device_id: str, job_id: str) -> bool:
        return bool(self.client.hexists(self.keys.forecasts(device_id), job_id))

    def forecast_count(self, device_id: str) -> int:
        return int(self.client.hlen(self.keys.forecasts(device_id)))

    def latest_forecast(self, device_id: str) -> dict[str, Any] | None:
        raw = self.client.get(self.keys.latest_forecast(device_id))
        return json.loads(raw) if raw else None


class AsyncStore:
    """Non-blocking access for code on the Faust event loop."""

    def __init__(self, client: aioredis.Redis, keys: Keys | None = None) -> None:
        self.client = client
        self.keys = keys or Keys()

    @classmethod
    def from_url(cls, url: str, prefix: str = "") -> AsyncStore:
        return cls(aioredis.Redis.from_url(url, socket_timeout=10), Keys(prefix))

    @classmethod
    def from_settings(cls, settings: Settings, prefix: str = "") -> AsyncStore:
        """The settings' Redis, with their login and TLS (see ``pipeline.connections``)."""
        return cls(redis_client(settings, asyncio=True, socket_timeout=10), Keys(prefix))

    async def add_reading(self, device_id: str, reading: dict[str, float]) -> bool:
        """Store one reading; True if it was new, False if already stored."""
        member = encode_reading(reading["time"], reading["temperature"], reading["humidity"])
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.sadd(self.keys.devices, device_id)
            pipe.zadd(self.keys.readings(device_id), {member: float(reading["time"])})
            results = await pipe.execute()
        return bool(results[1])

    async def has_reading_at(self, device_id: str, time: float) -> bool:
        """Whether a reading of the device at exactly this event time is stored."""
        return bool(await self.client.zcount(self.keys.readings(device_id), time, time))

    async def newest_time(self, device_id: str) -> float | None:
        """Event time of the newest stored reading of a device, if any."""
        return (await self.newest_times([device_id]))[device_id]

    async def latest_forecast(self, device_id: str) -> dict[str, Any] | None:
        raw = await self.client.get(self.keys.latest_forecast(device_id))
        return json.loads(raw) if raw else None

    async def newest_times(self, device_ids: list[str]) -> dict[str, float | None]:
        """Newest stored event time per device, in one round trip."""
        async with self.client.pipeline(transaction=False) as pipe:
            for device_id in device_ids:
                pipe.zrange(self.keys.readings(device_id), -1, -1, withscores=True)
            results = await pipe.execute()
        pairs = zip(device_ids, results, strict=True)
        return {d: (float(r[0][1]) if r else None) for d, r in pairs}

    async def latest_forecasts(self, device_ids: list[str]) -> dict[str, dict[str, Any] | None]:
        """Latest forecast per device, in one round trip."""
        async with self.client.pipeline(transaction=False) as pipe:
            for device_id in device_ids:
                pipe.get(self.keys.latest_forecast(device_id))
            results = await pipe.execute()
        return {d: (json.loads(r) if r else None) for d, r in zip(device_ids, results, strict=True)}
