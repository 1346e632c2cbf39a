"""Prediction workers: the models, their bad-input reasons, model state, the job."""

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

import numpy as np
import pandas as pd
import pytest
import redis
from prophet.serialize import model_from_json
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from pipeline.prediction import jobs
from pipeline.prediction.model_store import ModelStore
from pipeline.prediction.models import prophet as prophet_model
from pipeline.prediction.models import seasonal_naive
from pipeline.prediction.models.base import (
    MIN_POINTS,
    BadInput,
    Series,
    TooFewPoints,
    TooShortForSeason,
    clean_series,
    future_times,
)
from pipeline.prediction.worker import run as run_worker
from pipeline.queue import enqueue_prediction, job_id_for, make_queue
from pipeline.records import PredictionJob
from pipeline.settings import Settings, load_settings
from pipeline.storage import Keys, Store

DAY = 86400.0
STEP = 600.0
HORIZON = 6 * 3600.0
T0 = 1_700_006_400.0  # a UTC midnight
AMPLITUDE = 3.0

# Prophet 1.5 calls DataFrame.drop(inplace=True), deprecated in pandas 3.1; not ours to fix.
pytestmark = [
    pytest.mark.filterwarnings("ignore:The inplace keyword:DeprecationWarning"),
    # Prophet's model_from_json passes read_json(convert_dates=...), deprecated in pandas 3.
    pytest.mark.filterwarnings("ignore:The 'convert_dates' keyword:DeprecationWarning"),
]


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


def series_of(readings: list[dict[str, float]]) -> Series:
    return clean_series(readings)


def future_after(series: Series) -> list[float]:
    return future_times(series.times[-1], HORIZON, STEP)


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


# --- models ---------------------------------------------------------------------------


def test_prophet_forecast_follows_daily_cycle() -> None:
    series = series_of(synthetic_readings(T0, days=2))
    result = prophet_model.fit_and_forecast(series, future_after(series))

    times = [p["ds"] for p in result.points]
    assert len(times) == HORIZON / STEP
    assert times[0] == pytest.approx(series.times[-1] + STEP)
    assert all(b - a == pytest.approx(STEP) for a, b in pairwise(times))
    for point in result.points:
        assert set(point) == {"ds", "yhat", "yhat_lower", "yhat_upper"}
        assert all(type(v) is float for v in point.values())
        assert point["yhat_lower"] <= point["yhat"] <= point["yhat_upper"]
    errors = [abs(p["yhat"] - true_temperature(p["ds"])) for p in result.points]
    assert max(errors) < AMPLITUDE / 3
    assert sum(errors) / len(errors) < AMPLITUDE / 10
    assert (result.trained_from, result.trained_until) == (series.times[0], series.times[-1])
    assert result.training_points == len(series.times)
    assert result.model_version == f"prophet-{prophet_model.prophet.__version__}"
    assert result.warm_started is False and result.fallback is None
    assert result.state["version"] == result.model_version


def test_seasonal_naive_repeats_the_last_day_within_its_own_error_band() -> None:
    readings = synthetic_readings(T0, days=2)
    series = series_of(readings)
    result = seasonal_naive.fit_and_forecast(series, future_after(series), DAY)

    by_time = dict(zip(series.times, series.values, strict=True))
    for point in result.points:
        assert point["yhat"] == pytest.approx(by_time[point["ds"] - DAY])
        assert point["yhat_lower"] < point["yhat"] < point["yhat_upper"]
    width = result.points[0]["yhat_upper"] - result.points[0]["yhat_lower"]
    # In-sample errors are differences of two N(0, 0.2) noises: 80% band ~ 2 * 1.28 * 0.28.
    assert 0.5 < width < 1.0
    assert result.model_version == seasonal_naive.VERSION and result.state is None


def test_seasonal_naive_bridges_gaps_with_an_earlier_season_or_the_last_value() -> None:
    readings = synthetic_readings(T0, days=3)
    last = readings[-1]["time"]
    # A hole one day before the first forecast hour: that hour comes from two days back.
    holed = [r for r in readings if not last - DAY < r["time"] < last - DAY + 3600.0]
    series = series_of(holed)
    result = seasonal_naive.fit_and_forecast(series, future_after(series), DAY)
    by_time = dict(zip(series.times, series.values, strict=True))
    first = result.points[0]
    assert first["yhat"] == pytest.approx(by_time[first["ds"] - 2 * DAY])
    assert result.fallback is None

    # Nothing at that hour on any day: plain naive, said so.
    no_hour = [r for r in readings if not 0 < (r["time"] - last) % DAY < 3600.0]
    series = series_of(no_hour)
    result = seasonal_naive.fit_and_forecast(series, future_after(series), DAY)
    assert result.points[0]["yhat"] == series.values[-1]
    assert result.fallback == "naive_in_gaps"


def test_prophet_fits_across_a_gap() -> None:
    readings = synthetic_readings(T0, days=2)
    gapped = readings[:100] + readings[160:]  # ten hours missing
    series = series_of(gapped)
    result = prophet_model.fit_and_forecast(series, future_after(series))
    errors = [abs(p["yhat"] - true_temperature(p["ds"])) for p in result.points]
    assert sum(errors) / len(errors) < AMPLITUDE / 5


def test_constant_series_gives_a_flat_forecast_with_a_zero_width_band() -> None:
    readings = [{"time": T0 + i * STEP, "temperature": 19.5} for i in range(300)]
    series = series_of(readings)
    assert series.constant
    for result in (
        prophet_model.fit_and_forecast(series, future_after(series)),
        seasonal_naive.fit_and_forecast(series, future_after(series), DAY),
    ):
        for point in result.points:
            assert point["yhat"] == pytest.approx(19.5)
            assert point["yhat_upper"] - point["yhat_lower"] == pytest.approx(0.0, abs=1e-6)
    assert prophet_model.fit_and_forecast(series, future_after(series)).fallback == (
        "constant_series"
    )


def test_non_finite_and_malformed_readings_are_dropped_and_counted() -> None:
    readings = synthetic_readings(T0, days=1)
    readings[0]["temperature"] = float("nan")
    readings[-1]["temperature"] = float("inf")
    readings[5]["time"] = None
    del readings[6]["temperature"]
    series = clean_series(readings)
    assert series.dropped == 4
    assert len(series.times) == len(readings) - 4
    assert series.times[0] == readings[1]["time"]
    assert series.times[-1] == readings[-2]["time"]


@pytest.mark.parametrize(
    ("readings", "message"),
    [
        (synthetic_readings(T0, days=1)[: MIN_POINTS - 1], f"got {MIN_POINTS - 1}"),
        (
            [{"time": T0 + i * STEP, "temperature": float("nan")} for i in range(50)],
            "got 0 (50 dropped",
        ),
        ([], "got 0"),
    ],
)
def test_too_few_points_is_bad_input_with_its_reason(readings, message) -> None:
    with pytest.raises(TooFewPoints, match=f"at least {MIN_POINTS}") as raised:
        clean_series(readings)
    assert message in str(raised.value)
    assert raised.value.reason == "too_few_points"
    assert isinstance(raised.value, BadInput)


def test_seasonal_naive_needs_one_season() -> None:
    series = series_of(synthetic_readings(T0, days=0.5))
    with pytest.raises(TooShortForSeason) as raised:
        seasonal_naive.fit_and_forecast(series, future_after(series), DAY)
    assert raised.value.reason == "shorter_than_one_season"


# --- warm start and model state ------------------------------------------------------------


def test_warm_start_uses_the_previous_parameters_and_lands_on_the_same_forecast() -> None:
    readings = synthetic_readings(T0, days=3)
    first = series_of(readings[: int(2 * DAY / STEP)])
    previous = prophet_model.fit_and_forecast(first, future_after(first))
    model = model_from_json(previous.state["model"])
    params = prophet_model.warm_start_params(model)
    assert params["k"] == model.params["k"][0][0]
    assert np.array_equal(params["beta"], model.params["beta"][0])

    shifted = series_of(readings[6 : int(2 * DAY / STEP) + 6])  # the next hour's window
    warm = prophet_model.fit_and_forecast(shifted, future_after(shifted), previous.state["model"])
    cold = prophet_model.fit_and_forecast(shifted, future_after(shifted))
    assert warm.warm_started is True and cold.warm_started is False
    gaps = [abs(w["yhat"] - c["yhat"]) for w, c in zip(warm.points, cold.points, strict=True)]
    assert max(gaps) < 0.05, "warm and cold fits should reach the same optimum"


def test_warm_start_falls_back_to_cold_when_the_model_shape_changed_or_is_damaged() -> None:
    two_weeks = series_of(synthetic_readings(T0, days=15))  # weekly seasonality switches on
    weekly = prophet_model.fit_and_forecast(two_weeks, future_after(two_weeks))
    short = series_of(synthetic_readings(T0 + 13 * DAY, days=2))
    assert not prophet_model.fit_and_forecast(
        short, future_after(short), weekly.state["model"]
    ).warm_started
    damaged = prophet_model.fit_and_forecast(short, future_after(short), '{"not": "a model"}')
    assert damaged.warm_started is False and len(damaged.points) == HORIZON / STEP


def test_model_state_round_trips_through_redis_with_its_version(redis_client) -> None:
    series = series_of(synthetic_readings(T0, days=2))
    result = prophet_model.fit_and_forecast(series, future_after(series))
    models = ModelStore(redis_client)

    assert models.save("dev-1", "prophet", result.state, result.trained_until, "job-a") == 1
    raw = redis_client.hget(Keys().fitted_model("dev-1", "prophet"), "state")
    assert raw[:1] != pickle.PROTO and json.loads(zlib.decompress(raw)) == result.state

    loaded = models.load("dev-1", "prophet", result.model_version)
    assert loaded == result.state
    restored = model_from_json(loaded["model"])
    at = pd.DataFrame({"ds": pd.to_datetime([p["ds"] for p in result.points], unit="s")})
    expected = [p["yhat"] for p in result.points]
    assert restored.predict(at)["yhat"].tolist() == pytest.approx(expected, abs=1e-9)
    assert models.load("dev-1", "prophet", "prophet-0.0.1") is None, "other version: fit cold"
    assert models.load("dev-2", "prophet", result.model_version) is None

    older = models.save("dev-1", "prophet", {"version": "x"}, result.trained_until - 1, "job-b")
    assert older == 0, "an older model must not replace a newer one"
    assert models.save("dev-1", "prophet", result.state, result.trained_until, "job-c") == 2


# --- the job --------------------------------------------------------------------------


def test_job_stores_one_forecast_per_job_id_even_when_run_twice(
    settings: Settings, store: Store, redis_client: redis.Redis
) -> None:
    store.add_readings("dev-1", synthetic_readings(T0, days=3))
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
    assert doc["job_id"] == job_id
    assert doc["model"] == "prophet"
    assert doc["model_version"] == prophet_model.VERSION
    assert doc["model_revision"] == 1 and doc["warm_started"] is False
    assert doc["interval_width"] == 0.8 and doc["dropped_points"] == 0
    assert doc["window_end"] == window_end
    assert window_end - STEP < doc["trained_until"] <= window_end
    assert doc["trained_from"] >= window_end - settings.training_seconds
    assert doc["trained_from"] < window_end - settings.training_seconds + STEP
    assert len(doc["points"]) == HORIZON / STEP
    assert doc["points"][0]["ds"] == pytest.approx(doc["trained_until"] + STEP)
    index = redis_client.zrange(Keys().forecast_index("dev-1", "prophet"), 0, -1, withscores=True)
    assert index == [(job_id.encode(), doc["trained_until"])]


def test_next_job_is_warm_started_from_the_saved_model(settings: Settings, store: Store) -> None:
    store.add_readings("dev-1", synthetic_readings(T0, days=3))
    first_end, second_end = T0 + 2 * DAY, T0 + 2 * DAY + 3600.0
    assert jobs.prophet_forecast("dev-1", first_end - 3600, first_end)["warm_started"] is False
    assert jobs.prophet_forecast("dev-1", first_end, second_end)["warm_started"] is True
    latest = store.latest_forecast("dev-1")
    assert latest["window_end"] == second_end and latest["model_revision"] == 2


def test_older_window_finishing_later_does_not_move_latest_back(
    settings: Settings, store: Store
) -> None:
    store.add_readings("dev-1", synthetic_readings(T0, days=3))
    newer_end, older_end = T0 + 2.5 * DAY, T0 + 2.0 * DAY

    jobs.prophet_forecast("dev-1", newer_end - 3600.0, newer_end)
    jobs.prophet_forecast("dev-1", older_end - 3600.0, older_end)

    assert store.forecast_count("dev-1") == 2
    assert store.latest_forecast("dev-1")["window_end"] == newer_end


def test_seasonal_naive_job_is_registered_by_reference(settings: Settings, store: Store) -> None:
    store.add_readings("dev-1", synthetic_readings(T0, days=3))
    path = settings.model_path("seasonal_naive")
    assert path == "pipeline.prediction.jobs.seasonal_naive_forecast"
    window_end = T0 + 2.5 * DAY
    summary = jobs.seasonal_naive_forecast("dev-1", window_end - 3600, window_end)
    doc = store.latest_forecast("dev-1")
    assert summary["stored"] is True and doc["model"] == "seasonal_naive"
    assert doc["model_version"] == seasonal_naive.VERSION and doc["model_revision"] is None


def test_job_without_enough_readings_fails_with_its_reason(
    settings: Settings, store: Store
) -> None:
    store.add_readings("dev-1", synthetic_readings(T0, days=1)[:3])
    with pytest.raises(TooFewPoints, match="got 3"):
        jobs.prophet_forecast("dev-1", T0, T0 + DAY)
    store.add_readings("dev-2", synthetic_readings(T0, days=0.5))
    with pytest.raises(TooShortForSeason):
        jobs.seasonal_naive_forecast("dev-2", T0, T0 + 0.5 * DAY)
    assert store.forecast_count("dev-1") == store.forecast_count("dev-2") == 0


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

    args = argparse.Namespace(
        config=None, burst=True, name="test-worker", log_level="WARNING", metrics_port=0
    )
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
