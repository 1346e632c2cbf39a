"""Online forecast accuracy and anomalies: each reading scored against the
forecasts that covered its time.

For every registered model (and ``auto``, the served forecast), a reading at
time t is compared with that model's newest forecast trained on data before t
(``forecast-index:{d}:{m}``, written by the prediction jobs) if that forecast
reaches t: the expected value and band are interpolated linearly between
forecast points (a reading before the first point takes the first point). Per
device and model, Redis keeps the running sums behind MAE, MAPE and the share
of readings inside the interval, beside the nominal share they should reach.
MAPE skips readings closer to zero than ``MAPE_FLOOR`` (Celsius readings cross
zero, and an error relative to 0.01 is meaningless).

A reading outside the band of the newest covering forecast (of any model; the
served one when several are equally new) by more than the ``anomaly_margin``
setting is an anomaly: returned as an ``Anomaly`` record (the agent publishes
it), kept in ``anomalies:{d}`` and counted in ``anomaly-counts``.

Updates are idempotent: the event times of the newest ``SCORED_KEPT`` readings
scored per device are remembered (``accuracy-scored:{d}``), so a redelivered
reading changes nothing, while a late one (ingest forwards readings that arrive
out of order) is scored once like any other; one older than everything
remembered is taken as seen. An anomaly is one sorted-set member (same reading,
same JSON), counted when first added.
"""

from __future__ import annotations

import bisect
import json
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import faust
import redis.asyncio as aioredis

from pipeline.settings import SERVED_MODEL
from pipeline.storage import Keys

MAPE_FLOOR = 1.0
ANOMALIES_KEPT = 1000
SCORED_KEPT = 5000  # about three and a half days of readings a minute
PARSED_FORECASTS_CACHED = 512


class Anomaly(faust.Record, include_metadata=False, serializer="json"):
    """A reading far outside its forecast's band; topic ``anomalies``, key = device id."""

    device_id: str
    time: float  # event time of the reading, epoch seconds
    value: float  # the reading's temperature
    expected: float  # the forecast's yhat at that time
    lower: float  # the forecast's band at that time
    upper: float
    margin: float  # how far outside the band counts as an anomaly
    model: str  # the forecast's model and job
    job_id: str


@dataclass(frozen=True)
class Score:
    """How one model's forecast did on one reading."""

    abs_error: float
    inside: bool


@dataclass(frozen=True)
class Outcome:
    """What scoring a reading found and what it newly counted (none on a redelivery)."""

    scores: dict[str, Score]  # per model whose forecast covered the reading
    counted: list[str]  # models whose statistics this reading was added to now
    anomaly: Anomaly | None  # published for every delivery; counted once
    anomaly_counted: bool


@dataclass(frozen=True)
class Expected:
    """A forecast's value and band at one instant."""

    yhat: float
    lower: float
    upper: float


def forecast_at(forecast: dict[str, Any], when: float) -> Expected | None:
    """The forecast at ``when``, or None if it does not cover that time out of sample."""
    points = forecast["points"]
    if not points or when <= forecast["trained_until"] or when > points[-1]["ds"]:
        return None
    times = [p["ds"] for p in points]
    right = bisect.bisect_left(times, when)
    if right == 0 or times[right] == when:
        point = points[right]
        return Expected(point["yhat"], point["yhat_lower"], point["yhat_upper"])
    a, b = points[right - 1], points[right]
    share = (when - a["ds"]) / (b["ds"] - a["ds"])

    def between(name: str) -> float:
        return a[name] + share * (b[name] - a[name])

    return Expected(between("yhat"), between("yhat_lower"), between("yhat_upper"))


def outside_by(value: float, expected: Expected) -> float:
    """How far the value lies outside the band (0 inside it)."""
    return max(expected.lower - value, value - expected.upper, 0.0)


# KEYS: accuracy hash, anomalies zset, anomaly-counts hash, scored-readings zset.
# ARGV: device, time, model count, then per model (name, abs error, ape or "",
# inside 0/1, nominal coverage), then the anomaly JSON or "", anomalies kept,
# scored times kept.
# Returns {models whose statistics changed, 1 if the anomaly was new else 0}.
_RECORD = """
local t = tonumber(ARGV[2])
local n = tonumber(ARGV[3])
local kept = tonumber(ARGV[6 + n * 5])
local changed = {}
local new = true
if redis.call('ZCARD', KEYS[4]) >= kept then
  local oldest = redis.call('ZRANGE', KEYS[4], 0, 0, 'WITHSCORES')
  new = t > tonumber(oldest[2])
end
if new then
  new = redis.call('ZADD', KEYS[4], 'NX', t, ARGV[2]) == 1
  redis.call('ZREMRANGEBYRANK', KEYS[4], 0, -kept - 1)
end
for i = 0, n - 1 do
  local base = 4 + i * 5
  local model = ARGV[base]
  local stats = {count = 0, abs_error_sum = 0, ape_sum = 0, mape_count = 0, inside = 0}
  local raw = redis.call('HGET', KEYS[1], model)
  if raw then stats = cjson.decode(raw) end
  if new then
    stats['last_time'] = math.max(t, tonumber(stats['last_time'] or t))
    stats['count'] = stats['count'] + 1
    stats['abs_error_sum'] = stats['abs_error_sum'] + tonumber(ARGV[base + 1])
    if ARGV[base + 2] ~= '' then
      stats['ape_sum'] = stats['ape_sum'] + tonumber(ARGV[base + 2])
      stats['mape_count'] = stats['mape_count'] + 1
    end
    stats['inside'] = stats['inside'] + tonumber(ARGV[base + 3])
    stats['nominal_coverage'] = tonumber(ARGV[base + 4])
    stats['mae'] = stats['abs_error_sum'] / stats['count']
    stats['coverage'] = stats['inside'] / stats['count']
    if stats['mape_count'] > 0 then
      stats['mape'] = stats['ape_sum'] / stats['mape_count']
    end
    redis.call('HSET', KEYS[1], model, cjson.encode(stats))
    table.insert(changed, model)
  end
end
local anomaly = ARGV[4 + n * 5]
local added = 0
if anomaly ~= '' and redis.call('ZADD', KEYS[2], 'NX', t, anomaly) == 1 then
  redis.call('HINCRBY', KEYS[3], ARGV[1], 1)
  redis.call('ZREMRANGEBYRANK', KEYS[2], 0, -tonumber(ARGV[5 + n * 5]) - 1)
  added = 1
end
return {changed, added}
"""


class AccuracyTracker:
    """Scores readings against forecasts in Redis; one per stream worker."""

    def __init__(
        self, client: aioredis.Redis, models: list[str], margin: float, keys: Keys | None = None
    ) -> None:
        self.client = client
        self.models = list(models)
        self.margin = margin
        self.keys = keys or Keys()
        self._record = client.register_script(_RECORD)
        self._parsed: OrderedDict[tuple[str, str], dict[str, Any]] = OrderedDict()

    async def score(self, device_id: str, when: float, value: float) -> Outcome:
        """Update the device's statistics with one reading; say if it is anomalous."""
        covering = await self._covering_forecasts(device_id, when)
        if not covering:
            return Outcome(scores={}, counted=[], anomaly=None, anomaly_counted=False)
        args: list[Any] = [device_id, repr(float(when)), len(covering)]
        scores = {}
        for model, (forecast, expected) in covering.items():
            error = abs(value - expected.yhat)
            ape = 100.0 * error / abs(value) if abs(value) >= MAPE_FLOOR else ""
            scores[model] = Score(error, expected.lower <= value <= expected.upper)
            inside = int(scores[model].inside)
            args += [model, error, ape, inside, forecast.get("interval_width", "")]
        model, (forecast, expected) = max(  # on a tie, the served (calibrated) forecast
            covering.items(),
            key=lambda item: (item[1][0]["trained_until"], item[0] == SERVED_MODEL),
        )
        anomaly = None
        if outside_by(value, expected) > self.margin:
            anomaly = Anomaly(
                device_id=device_id,
                time=when,
                value=value,
                expected=expected.yhat,
                lower=expected.lower,
                upper=expected.upper,
                margin=self.margin,
                model=model,
                job_id=forecast["job_id"],
            )
        anomaly_json = json.dumps(anomaly.asdict(), sort_keys=True) if anomaly else ""
        args += [anomaly_json, ANOMALIES_KEPT, SCORED_KEPT]
        keys = [
            self.keys.accuracy(device_id),
            self.keys.anomalies(device_id),
            self.keys.anomaly_counts,
            self.keys.scored_readings(device_id),
        ]
        counted, added = await self._record(keys=keys, args=args)
        return Outcome(
            scores=scores,
            counted=[model.decode() for model in counted],
            anomaly=anomaly,
            anomaly_counted=bool(added),
        )

    async def _covering_forecasts(
        self, device_id: str, when: float
    ) -> dict[str, tuple[dict[str, Any], Expected]]:
        """Per model, its newest forecast trained before ``when`` that reaches it."""
        async with self.client.pipeline(transaction=False) as pipe:
            for model in self.models:
                pipe.zrevrangebyscore(
                    self.keys.forecast_index(device_id, model), f"({when!r}", "-inf", 0, 1
                )
            newest = await pipe.execute()
        pairs = zip(self.models, newest, strict=True)
        job_ids = {model: ids[0].decode() for model, ids in pairs if ids}
        forecasts = await self._forecasts(device_id, set(job_ids.values()))
        covering = {}
        for model, job_id in job_ids.items():
            forecast = forecasts.get(job_id)
            expected = forecast_at(forecast, when) if forecast else None
            if expected is not None:
                covering[model] = (forecast, expected)
        return covering

    async def _forecasts(self, device_id: str, job_ids: set[str]) -> dict[str, dict[str, Any]]:
        """Parsed forecasts by job id, from a small cache or Redis."""
        found = {}
        missing = []
        for job_id in job_ids:
            cached = self._parsed.get((device_id, job_id))
            if cached is None:
                missing.append(job_id)
            else:
                self._parsed.move_to_end((device_id, job_id))
                found[job_id] = cached
        if missing:
            # A candidate of an auto job (pipeline.prediction.serving) is kept apart from
            # the served forecasts; a job id is in one hash or the other.
            async with self.client.pipeline(transaction=False) as pipe:
                pipe.hmget(self.keys.forecasts(device_id), missing)
                pipe.hmget(self.keys.candidate_forecasts(device_id), missing)
                served, candidates = await pipe.execute()
            raw = [s if s is not None else c for s, c in zip(served, candidates, strict=True)]
            for job_id, doc in zip(missing, raw, strict=True):
                if doc is None:
                    continue
                found[job_id] = self._parsed[(device_id, job_id)] = json.loads(doc)
            while len(self._parsed) > PARSED_FORECASTS_CACHED:
                self._parsed.popitem(last=False)
        return found


async def device_accuracy(
    client: aioredis.Redis, device_id: str, keys: Keys | None = None
) -> dict[str, Any]:
    """A device's accuracy per model and its anomaly count, for the web view."""
    keys = keys or Keys()
    async with client.pipeline(transaction=False) as pipe:
        pipe.hgetall(keys.accuracy(device_id))
        pipe.hget(keys.anomaly_counts, device_id)
        stats, anomalies = await pipe.execute()
    by_model = {}
    for model, raw in sorted(stats.items()):
        doc = json.loads(raw)
        by_model[model.decode()] = {
            "readings_scored": doc["count"],
            "mae": doc["mae"],
            "mape": doc.get("mape"),
            "coverage": doc["coverage"],
            "nominal_coverage": doc.get("nominal_coverage"),
        }
    return {"by_model": by_model, "anomalies": int(anomalies or 0)}
