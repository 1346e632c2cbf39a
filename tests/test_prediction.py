"""Prediction workers: the Prophet fit, the RQ job and a real worker round trip."""

from __future__ import annotations

import argparse
import json
import math
import pickle
import random
import signal
import socket
import zlib
from collections.abc import Iterator
from itertools import pairwise

import pytest
import redis
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from pipeline.prediction import jobs
from pipeline.prediction.prophet_model import MIN_POINTS, InsufficientData, fit_and_forecast
from pipeline.prediction.worker import run as run_worker
from pipeline.queue import enqueue_prediction, job_id_for, make_queue
from pipeline.records import PredictionJob
from pipeline.settings import Settings, load_settings
from pipeline.storage import Store

DAY = 86400.0
STEP = 600.0
HORIZON = 6 * 3600.0
T0 = 1_700_006_400.0  # a UTC midnight
AMPLITUDE = 3.0

# Prophet 1.5 calls DataFrame.drop(inplace=True), deprecated in pandas 3.1; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:The inplace keyword:DeprecationWarning")


def true_temperature(t: float) -> float:
    """The synthetic device: a daily cycle around 21 C, warmest mid-afternoon."""
    return 21.0 + AMPLITUDE * math.sin(2 * math.pi * (t - 9 * 3600.0) / DAY)


def synthetic_readings(start: float, days: float, seed: int = 0) -> list[dict[str, float]]:
    noise = random.Random(seed)
    return [
        {
            "time": start + i * STEP,
            "temperature": true_temperature(start + i * STEP) + noise.gauss(0.0, 0.2),
            "humidity": 45.0 + noise.gauss(0.0, 1.0),
        }
        for i in range(int(days * DAY / STEP))
    ]


@pytest.fixture
def settings(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Test settings, also in the environment, where the job's load_settings() reads them."""
    environ = {
        "PIPELINE_REDIS_URL": redis_url,
        "PIPELINE_TRAINING_SECONDS": str(2 * DAY),
        "PIPELINE_HORIZON_SECONDS": str(HORIZON),
        "PIPELINE_FORECAST_STEP_SECONDS": str(STEP),
        "PIPELINE_QUEUE_NAME": "test-forecasts",
        "PIPELINE_JOB_TIMEOUT_SECONDS": "120",
    }
    monkeypatch.delenv("PIPELINE_CONFIG", raising=False)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    return load_settings(environ=environ)


@pytest.fixture
def store(redis_client: redis.Redis) -> Store:
    return Store(redis_client)


def test_forecast_follows_daily_cycle() -> None:
    readings = synthetic_readings(T0, days=2)
    result = fit_and_forecast(readings, HORIZON, STEP)

    last = readings[-1]["time"]
    times = [p["ds"] for p in result.points]
    assert len(times) == HORIZON / STEP
    assert times[0] == pytest.approx(last + STEP)
    assert times[-1] == pytest.approx(last + HORIZON)
    assert all(b - a == pytest.approx(STEP) for a, b in pairwise(times))
    for point in result.points:
        assert set(point) == {"ds", "yhat", "yhat_lower", "yhat_upper"}
        assert all(type(v) is float for v in point.values())
        assert point["yhat_lower"] <= point["yhat"] <= point["yhat_upper"]
    errors = [abs(p["yhat"] - true_temperature(p["ds"])) for p in result.points]
    assert max(errors) < AMPLITUDE / 3
    assert sum(errors) / len(errors) < AMPLITUDE / 10
    assert result.trained_from == readings[0]["time"]
    assert result.trained_until == last
    assert result.training_points == len(readings)
    assert result.prophet_version
    assert 0 < result.fit_seconds < 30


def test_nan_readings_are_dropped() -> None:
    readings = synthetic_readings(T0, days=1)
    readings[-1]["temperature"] = float("nan")
    readings[0]["temperature"] = float("nan")
    result = fit_and_forecast(readings, 3600.0, STEP)
    assert result.training_points == len(readings) - 2
    assert result.trained_from == readings[1]["time"]
    assert result.trained_until == readings[-2]["time"]


def test_too_few_points_is_insufficient_data() -> None:
    readings = synthetic_readings(T0, days=1)[: MIN_POINTS - 1]
    with pytest.raises(InsufficientData, match=f"at least {MIN_POINTS}"):
        fit_and_forecast(readings, HORIZON, STEP)


def test_all_nan_is_insufficient_data() -> None:
    readings = [
        {"time": T0 + i * STEP, "temperature": float("nan"), "humidity": 40.0} for i in range(50)
    ]
    with pytest.raises(InsufficientData):
        fit_and_forecast(readings, HORIZON, STEP)
    assert issubclass(InsufficientData, ValueError)


def test_job_stores_one_forecast_per_job_id_even_when_run_twice(
    settings: Settings, store: Store
) -> None:
    readings = synthetic_readings(T0, days=3)
    store.add_readings("dev-1", readings)
    window_end = T0 + 2.5 * DAY

    first = jobs.prophet_forecast("dev-1", window_end - 3600.0, window_end)
    second = jobs.prophet_forecast("dev-1", window_end - 3600.0, window_end)

    job_id = job_id_for("dev-1", window_end)
    assert first["job_id"] == second["job_id"] == job_id
    assert first["skipped"] is False and first["stored"] is True
    assert second["skipped"] is True
    assert json.loads(json.dumps([first, second])) == [first, second]  # no numpy types
    assert store.forecast_count("dev-1") == 1

    doc = store.latest_forecast("dev-1")
    assert doc is not None
    assert doc["job_id"] == job_id
    assert doc["model"] == "prophet"
    assert doc["model_version"].startswith("prophet-")
    assert doc["window_end"] == window_end
    assert doc["trained_until"] <= window_end
    assert doc["trained_until"] > window_end - STEP
    assert doc["trained_from"] >= window_end - settings.training_seconds
    assert doc["trained_from"] < window_end - settings.training_seconds + STEP
    assert len(doc["points"]) == HORIZON / STEP
    assert doc["points"][0]["ds"] == pytest.approx(doc["trained_until"] + STEP)


def test_older_window_finishing_later_does_not_move_latest_back(
    settings: Settings, store: Store
) -> None:
    store.add_readings("dev-1", synthetic_readings(T0, days=3))
    newer_end, older_end = T0 + 2.5 * DAY, T0 + 2.0 * DAY

    jobs.prophet_forecast("dev-1", newer_end - 3600.0, newer_end)
    jobs.prophet_forecast("dev-1", older_end - 3600.0, older_end)

    assert store.forecast_count("dev-1") == 2
    latest = store.latest_forecast("dev-1")
    assert latest is not None
    assert latest["window_end"] == newer_end


def test_job_without_enough_readings_fails_clearly(settings: Settings, store: Store) -> None:
    store.add_readings("dev-1", synthetic_readings(T0, days=1)[:3])
    with pytest.raises(InsufficientData):
        jobs.prophet_forecast("dev-1", T0, T0 + DAY)
    assert store.forecast_count("dev-1") == 0


@pytest.fixture
def restore_signals() -> Iterator[None]:
    """An RQ worker installs its own SIGINT/SIGTERM handlers; give pytest its own back."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


@pytest.mark.usefixtures("restore_signals")
def test_rq_round_trip_with_json_serializer(
    settings: Settings, store: Store, redis_client: redis.Redis
) -> None:
    store.add_readings("dev-1", synthetic_readings(T0, days=2))
    window_end = T0 + 2 * DAY
    job = PredictionJob(
        job_id=job_id_for("dev-1", window_end),
        device_id="dev-1",
        window_start=window_end - 3600.0,
        window_end=window_end,
        model="prophet",
    )
    queue = make_queue(settings, redis_client)
    assert enqueue_prediction(queue, settings, job) is True

    raw = redis_client.hget(f"rq:job:{job.job_id}", "data")
    payload = zlib.decompress(raw)
    assert payload[:1] != pickle.PROTO
    assert json.loads(payload)[3]["device_id"] == "dev-1"

    args = argparse.Namespace(config=None, burst=True, name="test-worker", log_level="WARNING")
    assert run_worker(args) == 0

    done = Job.fetch(job.job_id, connection=redis_client, serializer=JSONSerializer)
    assert done.get_status() == JobStatus.FINISHED, done.latest_result()
    assert done.return_value()["stored"] is True
    assert store.forecast_count("dev-1") == 1
    assert store.latest_forecast("dev-1")["job_id"] == job.job_id
    assert enqueue_prediction(queue, settings, job) is False


def test_worker_reports_unreachable_redis(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.delenv("PIPELINE_CONFIG", raising=False)
    monkeypatch.setenv("PIPELINE_REDIS_URL", f"redis://127.0.0.1:{port}/0")
    args = argparse.Namespace(config=None, burst=True, name=None, log_level="info")
    assert run_worker(args) == 1
    assert f"Redis unreachable at 127.0.0.1:{port}/0" in capsys.readouterr().err
