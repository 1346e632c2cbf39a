"""Online accuracy and anomalies: the scoring rules, their Redis statistics, the
agent, and the models measured on a series whose truth is known."""

from __future__ import annotations

import asyncio
import json
import math
import random
from unittest.mock import AsyncMock, patch

import numpy as np
import pytest
import pytest_asyncio
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry

from pipeline.accuracy import AccuracyTracker, Expected, device_accuracy, forecast_at
from pipeline.prediction import jobs
from pipeline.records import Reading
from pipeline.settings import load_settings
from pipeline.storage import Keys, Store

DAY = 86400.0
STEP = 600.0
T0 = 1_700_006_400.0

pytestmark = [
    pytest.mark.filterwarnings("ignore:The inplace keyword:DeprecationWarning"),
    # Prophet's model_from_json passes read_json(convert_dates=...), deprecated in pandas 3.
    pytest.mark.filterwarnings("ignore:The 'convert_dates' keyword:DeprecationWarning"),
]


async def settle(condition, timeout: float = 10.0) -> None:
    """test_context's put() returns once the previous event is done; wait for the last."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition() and loop.time() < deadline:
        await asyncio.sleep(0.01)


def forecast(job_id: str, model: str, trained_until: float, values: list[float]) -> dict:
    """A stored forecast: points every STEP after trained_until, band yhat +- 1."""
    return {
        "job_id": job_id,
        "model": model,
        "trained_until": trained_until,
        "interval_width": 0.8,
        "points": [
            {
                "ds": trained_until + (k + 1) * STEP,
                "yhat": v,
                "yhat_lower": v - 1,
                "yhat_upper": v + 1,
            }
            for k, v in enumerate(values)
        ],
    }


def put(client, device: str, doc: dict) -> None:
    """Store a forecast as the prediction job does: by job id, indexed per model."""
    keys = Keys()
    client.hset(keys.forecasts(device), doc["job_id"], json.dumps(doc))
    client.zadd(keys.forecast_index(device, doc["model"]), {doc["job_id"]: doc["trained_until"]})


def test_forecast_at_interpolates_inside_its_horizon_only() -> None:
    doc = forecast("j", "m", 1000.0, [10.0, 20.0, 30.0])
    assert forecast_at(doc, 1000.0) is None, "a reading it was trained on is not out of sample"
    assert forecast_at(doc, 1000.0 + 3 * STEP + 1) is None, "past its horizon"
    assert forecast_at(doc, 1000.0 + 100.0) == Expected(10.0, 9.0, 11.0), "before the first point"
    assert forecast_at(doc, 1000.0 + 1.5 * STEP) == Expected(15.0, 14.0, 16.0)
    assert forecast_at(doc, 1000.0 + 3 * STEP) == Expected(30.0, 29.0, 31.0)


@pytest_asyncio.fixture
async def tracker(redis_url, redis_client):
    client = aioredis.Redis.from_url(redis_url)
    yield AccuracyTracker(client, models=["prophet", "seasonal_naive"], margin=0.5)
    await client.aclose()


@pytest.mark.asyncio
async def test_statistics_per_model_counted_once_per_reading(tracker, redis_client) -> None:
    put(redis_client, "dev-1", forecast("p1", "prophet", T0, [20.0, 20.0, 20.0]))
    put(redis_client, "dev-1", forecast("s1", "seasonal_naive", T0, [22.0, 22.0, 22.0]))
    put(redis_client, "dev-1", forecast("p0", "prophet", T0 - 4 * STEP, [0.0, 0.0, 0.0]))

    # p0 ends before T0 and p1 was trained on T0 itself: nothing scores this reading.
    assert (await tracker.score("dev-1", T0, 20.0)).scores == {}
    # The second reading arrives late (ingest forwards late readings), the third twice.
    deliveries = [
        (T0 + 2 * STEP, 18.0),
        (T0 + STEP, 20.5),
        (T0 + 2 * STEP, 18.0),
        (T0 + STEP, 20.5),
    ]
    counted = [(await tracker.score("dev-1", when, value)).counted for when, value in deliveries]
    assert sorted(counted[0]) == sorted(counted[1]) == ["prophet", "seasonal_naive"]
    assert counted[2] == counted[3] == [], "a redelivered reading counts nothing"

    accuracy = await device_accuracy(tracker.client, "dev-1")
    prophet, naive = accuracy["by_model"]["prophet"], accuracy["by_model"]["seasonal_naive"]
    assert prophet["readings_scored"] == naive["readings_scored"] == 2
    assert prophet["mae"] == pytest.approx((0.5 + 2.0) / 2)
    assert naive["mae"] == pytest.approx((1.5 + 4.0) / 2)
    assert prophet["mape"] == pytest.approx(100 * (0.5 / 20.5 + 2.0 / 18.0) / 2)
    assert prophet["coverage"] == 0.5 and naive["coverage"] == 0.0
    assert prophet["nominal_coverage"] == 0.8
    assert accuracy["anomalies"] == 1  # 18.0 vs 21..23 is 3 below the newest band


@pytest.mark.asyncio
async def test_anomaly_beyond_the_margin_is_returned_kept_and_counted_once(
    tracker, redis_client
) -> None:
    put(redis_client, "dev-1", forecast("p1", "prophet", T0, [20.0, 20.0]))
    assert (await tracker.score("dev-1", T0 + 100.0, 21.4)).anomaly is None, "within margin"
    outcome = await tracker.score("dev-1", T0 + STEP, 21.6)
    anomaly = outcome.anomaly
    assert outcome.anomaly_counted and outcome.scores["prophet"].abs_error == pytest.approx(1.6)
    assert anomaly.asdict() == {
        "device_id": "dev-1",
        "time": T0 + STEP,
        "value": 21.6,
        "expected": 20.0,
        "lower": 19.0,
        "upper": 21.0,
        "margin": 0.5,
        "model": "prophet",
        "job_id": "p1",
    }
    again = await tracker.score("dev-1", T0 + STEP, 21.6)  # redelivered
    assert again.anomaly == anomaly, "the same reading is still an anomaly for the topic"
    assert not again.anomaly_counted
    keys = Keys()
    assert redis_client.hget(keys.anomaly_counts, "dev-1") == b"1"
    (member,) = redis_client.zrange(keys.anomalies("dev-1"), 0, -1)
    assert json.loads(member)["value"] == 21.6


@pytest.mark.asyncio
async def test_the_agent_publishes_anomalies_and_keeps_statistics(
    redis_url, redis_client, monkeypatch
) -> None:
    from agents import accuracy as agent_module
    from pipeline.app import app
    from pipeline.topics import anomalies_topic

    app.finalize()
    app.flow_control.resume()
    client = aioredis.Redis.from_url(redis_url)
    monkeypatch.setattr(agent_module, "tracker", AccuracyTracker(client, ["prophet"], margin=1.0))
    registry = CollectorRegistry()
    monkeypatch.setattr(agent_module, "metrics", agent_module.AccuracyMetrics(registry))
    put(redis_client, "dev-1", forecast("p1", "prophet", T0, [20.0] * 6))
    published = AsyncMock()
    with patch.object(anomalies_topic, "send", published):
        async with agent_module.track_accuracy.test_context() as agent:
            for k, value in enumerate([20.2, 25.0, 19.5, 14.0]):
                reading = Reading(
                    device_id="dev-1", time=T0 + (k + 1) * STEP, temperature=value, humidity=40.0
                )
                await agent.put(reading, key="dev-1")
            await settle(lambda: published.call_count == 2)
    await client.aclose()

    assert [c.kwargs["value"].value for c in published.call_args_list] == [25.0, 14.0]
    assert {c.kwargs["key"] for c in published.call_args_list} == {"dev-1"}
    stats = json.loads(redis_client.hget(Keys().accuracy("dev-1"), "prophet"))
    assert stats["count"] == 4 and stats["inside"] == 2
    labels = {"device": "dev-1", "model": "prophet"}

    def sample(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, labels)

    assert sample("forecast_readings_scored_total", **labels) == 4
    assert sample("forecast_readings_inside_interval_total", **labels) == 2
    assert sample("forecast_absolute_error_celsius_total", **labels) == pytest.approx(11.7)
    assert sample("anomalies_total", device="dev-1") == 2


def known_series(days: float, seed: int = 3) -> list[dict[str, float]]:
    """A daily cycle of 3 C, a trend of 0.5 C a day and sensor noise of 0.3 C."""
    noise = random.Random(seed)
    out = []
    for i in range(int(days * DAY / STEP)):
        t = T0 + i * STEP
        cycle = 3.0 * math.sin(2 * math.pi * (t - 9 * 3600.0) / DAY)
        value = 21.0 + cycle + 0.5 * (t - T0) / DAY + noise.gauss(0.0, 0.3)
        out.append({"time": t, "temperature": value, "humidity": 40.0})
    return out


@pytest.mark.asyncio
async def test_prophet_beats_seasonal_naive_on_cycle_and_trend_with_near_nominal_coverage(
    redis_url, redis_client, monkeypatch, tracker
) -> None:
    """Eight 6-hour forecasts from rolling origins, both models through the real
    jobs (Prophet warm-started after the first), scored online reading by reading."""
    environ = {
        "PIPELINE_REDIS_URL": redis_url,
        "PIPELINE_TRAINING_SECONDS": str(2 * DAY),
        "PIPELINE_HORIZON_SECONDS": str(6 * 3600),
        "PIPELINE_FORECAST_STEP_SECONDS": str(STEP),
    }
    monkeypatch.delenv("PIPELINE_CONFIG", raising=False)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    load_settings(environ=environ)
    np.random.seed(7)  # Prophet samples its intervals from numpy's global generator
    series = known_series(days=4.1)
    store = Store(redis_client)
    # One device per model: a window's job id names the device and window, not the model.
    runs = {"dev-p": jobs.prophet_forecast, "dev-s": jobs.seasonal_naive_forecast}
    summaries = []
    for origin in range(8):
        end = T0 + 2 * DAY + origin * 6 * 3600.0
        for device, job in runs.items():
            store.add_readings(device, [r for r in series if r["time"] <= end])
            summaries.append(job(device, end - 6 * 3600.0, end))
            for reading in series:
                if end < reading["time"] <= end + 6 * 3600.0:
                    await tracker.score(device, reading["time"], reading["temperature"])

    prophet = (await device_accuracy(tracker.client, "dev-p"))["by_model"]["prophet"]
    naive = (await device_accuracy(tracker.client, "dev-s"))["by_model"]["seasonal_naive"]
    assert prophet["readings_scored"] == naive["readings_scored"] == 8 * 36
    print(
        f"\nMAE prophet {prophet['mae']:.3f} seasonal-naive {naive['mae']:.3f}; coverage "
        f"prophet {prophet['coverage']:.3f} seasonal-naive {naive['coverage']:.3f} (nominal 0.8)"
    )
    assert prophet["mae"] < 0.75 * naive["mae"]
    assert abs(prophet["coverage"] - 0.8) <= 0.10
    warm = [s["warm_started"] for s in summaries if s["model"] == "prophet"]
    assert warm == [False] + [True] * 7
