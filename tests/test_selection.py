"""Per-device selection: the choice rule, and the ``auto`` job against real Redis.

The Redis tests use database 7 (flushed before and after, nothing else): the
job reads readings and earlier candidate forecasts from it and stores each
candidate's forecast, the served one and the indexes the accuracy tracker reads.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import numpy as np
import pytest
import redis
import redis.asyncio as aioredis

from pipeline.accuracy import AccuracyTracker, forecast_at
from pipeline.prediction.model_store import ModelStore
from pipeline.prediction.selection import MIN_WINDOWS, Window, score, selection_status, serve
from pipeline.prediction.serving import candidate_id, served_forecast
from pipeline.queue import job_id_for
from pipeline.settings import Settings
from pipeline.storage import Keys, Store
from tests.rq_workers import InProcessWorker

HOUR = 3600.0
STEP = 600.0
SELECTION_DB = 7


def forecast(trained_until: float, level: float) -> list[dict[str, float]]:
    return [
        {
            "ds": trained_until + STEP * k,
            "yhat": level,
            "yhat_lower": level - 1,
            "yhat_upper": level + 1,
        }
        for k in range(1, 7)
    ]


def evidence(errors: dict[str, float], windows: int) -> tuple[list[Window], np.ndarray, np.ndarray]:
    """Past windows where model m was always off by errors[m]; the readings are 0."""
    history = [
        Window(trained_until=HOUR * k, points={m: forecast(HOUR * k, e) for m, e in errors.items()})
        for k in range(windows)
    ]
    times = np.arange(0.0, HOUR * (windows + 1), 60.0)
    return history, times, np.zeros_like(times)


def test_the_model_with_the_lowest_recent_error_is_served_with_the_competing_errors():
    history, times, values = evidence({"a": 2.0, "b": 0.5, "c": 1.0}, 6)
    now = HOUR * 6
    current = {m: forecast(now, level) for m, level in (("a", 10.0), ("b", 20.0), ("c", 30.0))}
    served = serve(
        current, now, history, times, values, policy="best", horizon_seconds=HOUR, nominal=0.8
    )
    assert served.weights == {"b": 1.0}
    assert [p["yhat"] for p in served.raw_points] == [20.0] * 6
    assert {m: e["mae"] for m, e in served.errors.items()} == pytest.approx(
        {"a": 2.0, "b": 0.5, "c": 1.0}
    )
    assert "lowest recent MAE" in served.reason and "b 0.5, c 1, a 2" in served.reason


def test_the_weighted_policy_weights_by_inverse_squared_error():
    history, times, values = evidence({"a": 1.0, "b": 2.0}, 6)
    now = HOUR * 6
    current = {"a": forecast(now, 0.0), "b": forecast(now, 10.0)}
    served = serve(
        current, now, history, times, values, policy="weighted", horizon_seconds=HOUR, nominal=0.8
    )
    assert served.weights == pytest.approx({"a": 0.8, "b": 0.2})
    assert served.raw_points[0]["yhat"] == pytest.approx(2.0)


def test_without_enough_scored_windows_the_first_candidate_is_served():
    history, times, values = evidence({"a": 2.0, "b": 0.5}, MIN_WINDOWS - 1)
    now = HOUR * (MIN_WINDOWS - 1)
    current = {"a": forecast(now, 1.0), "b": forecast(now, 2.0)}
    served = serve(
        current, now, history, times, values, policy="best", horizon_seconds=HOUR, nominal=0.8
    )
    assert served.weights == {"a": 1.0}
    assert served.reason.startswith(f"collecting evidence ({MIN_WINDOWS - 1} of {MIN_WINDOWS}")


def test_scoring_reads_a_forecast_as_the_accuracy_tracker_does():
    points = [
        {"ds": 100.0 + 60 * k, "yhat": k * 1.5, "yhat_lower": k - 1.0, "yhat_upper": k * 2.0 + 1}
        for k in range(1, 5)
    ]
    doc = {"points": points, "trained_until": 100.0}
    times = np.array([90.0, 100.0, 130.0, 160.0, 200.0, 340.0, 341.0])
    values = np.array([0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    scored = score(points, 100.0, times, values)
    expected = [(t, forecast_at(doc, t)) for t in times if forecast_at(doc, t) is not None]
    assert scored.horizon.tolist() == [t - 100.0 for t, _ in expected]
    seen = dict(zip(times, values, strict=True))
    assert scored.error.tolist() == pytest.approx([seen[t] - e.yhat for t, e in expected])
    outside = [max(e.lower - seen[t], seen[t] - e.upper) for t, e in expected]
    assert scored.outside.tolist() == pytest.approx(outside)


def test_the_device_view_says_what_serves_and_why():
    served = {"weights": {"ets": 1.0}, "reason": "lowest recent MAE", "recent_errors": {}}
    status = selection_status("auto", False, {"model": "auto", "served": served})
    assert status["weights"] == {"ets": 1.0} and status["reason"] == "lowest recent MAE"
    pinned = selection_status("prophet", True, {"model": "prophet"})
    assert pinned["pinned"] and pinned["reason"] == "pinned to prophet by device_models"
    assert selection_status("auto", False, None)["reason"] == "no forecast yet"


@pytest.fixture
def selection_url(base_settings: Settings) -> str:
    return base_settings.redis_url.rsplit("/", 1)[0] + f"/{SELECTION_DB}"


@pytest.fixture
def selection_db(selection_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[redis.Redis]:
    """Redis database 7, empty, and the job's settings pointing at it."""
    url = selection_url
    client = redis.Redis.from_url(url)
    client.flushdb()
    monkeypatch.delenv("PIPELINE_CONFIG", raising=False)
    for name, value in {
        "PIPELINE_REDIS_URL": url,
        "PIPELINE_HORIZON_SECONDS": str(6 * HOUR),
        "PIPELINE_FORECAST_STEP_SECONDS": str(STEP),
        "PIPELINE_TRAINING_SECONDS": str(2 * 86400),
        "PIPELINE_SELECTION_CANDIDATES": "ets,seasonal_naive",
    }.items():
        monkeypatch.setenv(name, value)
    yield client
    client.flushdb()
    client.close()


def store_walk_with_cycle(store: Store, device: str, days: int) -> None:
    """Readings every 10 minutes: a daily cycle on a wandering level (ETS should lead)."""
    rng = np.random.default_rng(5)
    t = np.arange(0.0, days * 86400.0, STEP)
    level = np.cumsum(rng.normal(0, 0.15, len(t)))
    y = 20 + 4 * np.sin(2 * np.pi * t / 86400) + level + rng.normal(0, 0.1, len(t))
    store.add_readings(
        device, [{"time": a, "temperature": b, "humidity": 40.0} for a, b in zip(t, y, strict=True)]
    )


def test_the_auto_job_serves_the_best_candidate_and_keeps_every_candidate(selection_db):
    store, device = Store(selection_db), "dev-auto"
    store_walk_with_cycle(store, device, days=3)
    ends = [2 * 86400.0 + HOUR * k for k in range(1, 10)]
    summaries = [served_forecast(device, end - HOUR, end) for end in ends]
    assert all(s["stored"] and set(s["fits"]) == {"ets", "seasonal_naive"} for s in summaries)
    assert store.forecast_count(device) == len(ends), "one served forecast per job"
    keys = Keys()
    assert selection_db.hlen(keys.candidate_forecasts(device)) == 2 * len(ends)
    last_job = job_id_for(device, ends[-1])
    assert selection_db.zscore(keys.forecast_index(device, "auto"), last_job) is not None
    assert (
        selection_db.zscore(keys.forecast_index(device, "ets"), candidate_id(last_job, "ets"))
        is not None
    )

    latest = store.latest_forecast(device)
    assert latest["model"] == "auto" and latest["trained_until"] == ends[-1]
    served = latest["served"]
    assert served["weights"] == {"ets": 1.0}, served
    assert served["reason"].startswith("lowest recent MAE over 8 windows: ets")
    assert served["recent_errors"]["ets"]["mae"] < served["recent_errors"]["seasonal_naive"]["mae"]
    assert served["calibration"]["applied"]
    ets = json.loads(
        selection_db.hget(keys.candidate_forecasts(device), candidate_id(last_job, "ets"))
    )
    assert [p["yhat"] for p in latest["points"]] == [p["yhat"] for p in ets["points"]]
    widened = [
        (p["yhat_upper"] - p["yhat_lower"]) - (q["yhat_upper"] - q["yhat_lower"])
        for p, q in zip(latest["points"], ets["points"], strict=True)
    ]
    assert any(abs(w) > 1e-6 for w in widened), "the band is the calibrated one, not ETS's own"

    # A re-run stores nothing new; one that lost its served forecast reuses the candidates.
    assert served_forecast(device, ends[-1] - HOUR, ends[-1])["skipped"]
    selection_db.hdel(keys.forecasts(device), last_job)
    again = served_forecast(device, ends[-1] - HOUR, ends[-1])
    assert again["stored"] and again["fits"] == {}, "the stored candidates were re-used"
    assert selection_db.hlen(keys.candidate_forecasts(device)) == 2 * len(ends)


@pytest.mark.asyncio
async def test_the_accuracy_tracker_scores_the_candidates_and_the_served_forecast(
    selection_db, selection_url
):
    store, device = Store(selection_db), "dev-scored"
    store_walk_with_cycle(store, device, days=3)
    end = 2 * 86400.0 + HOUR
    served_forecast(device, end - HOUR, end)
    client = aioredis.Redis.from_url(selection_url)
    try:
        tracker = AccuracyTracker(client, ["prophet", "seasonal_naive", "ets", "auto"], margin=1.0)
        outcome = await tracker.score(device, end + 1800.0, 21.0)
    finally:
        await client.aclose()
    assert set(outcome.scores) == {"seasonal_naive", "ets", "auto"}
    assert outcome.scores["auto"].abs_error == pytest.approx(outcome.scores["ets"].abs_error)


def test_prophet_as_a_candidate_keeps_its_warm_start_state(selection_db, monkeypatch):
    monkeypatch.setenv("PIPELINE_SELECTION_CANDIDATES", "ets,seasonal_naive,prophet")
    store, device = Store(selection_db), "dev-prophet"
    store_walk_with_cycle(store, device, days=3)
    end = 2 * 86400.0 + HOUR
    summary = served_forecast(device, end - HOUR, end)
    assert summary["skipped_models"] == {}
    job = job_id_for(device, end)
    assert selection_db.hexists(Keys().candidate_forecasts(device), candidate_id(job, "prophet"))
    state = ModelStore(selection_db).load(device, "prophet", _prophet_version())
    assert state is not None and state["format"] == "prophet-json"


def _prophet_version() -> str:
    from pipeline.prediction.models.prophet import VERSION

    return VERSION


def test_the_dashboard_names_the_served_models_the_reason_and_the_calibration():
    from dashboard.device import selection_text

    forecast = {
        "served": {
            "weights": {"ets": 1.0},
            "reason": "lowest recent MAE over 8 windows: ets (MAE ets 0.2, prophet 0.5)",
            "calibration": {
                "applied": True,
                "scores": 240,
                "raw_coverage": 0.61,
                "nominal_coverage": 0.8,
            },
        }
    }
    text = selection_text(forecast)
    assert "served: ets 100%" in text and "prophet 0.5" in text
    assert "calibrated on 240 recent readings (raw coverage 61%, nominal 80%)" in text
    assert selection_text({"model": "prophet"}) == ""


def test_the_backtest_command_reads_a_devices_stored_readings(selection_db, capsys):
    from pipeline import cli

    store = Store(selection_db)
    rng = np.random.default_rng(2)
    t = np.arange(0.0, 10 * 86400.0, HOUR)
    y = 20 + 3 * np.sin(2 * np.pi * t / 86400) + np.cumsum(rng.normal(0, 0.3, len(t)))
    store.add_readings(
        "dev-bt",
        [{"time": a, "temperature": b, "humidity": 40.0} for a, b in zip(t, y, strict=True)],
    )
    argv = [
        "backtest", "--device", "dev-bt", "--model", "ets", "--model", "seasonal_naive",
        "--origins", "4", "--warmup", "3", "--every-seconds", str(3 * HOUR),
        "--step-seconds", str(HOUR), "--no-progress",
    ]  # fmt: skip
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert out.startswith("dev-bt: 240 readings, 4 origins")
    assert "\nets " in out and "\nserved " in out and "\nseasonal_naive " in out


def test_a_candidate_that_cannot_fit_sits_the_window_out(selection_db):
    from pipeline.prediction.models.base import TooShortForSeason

    store = Store(selection_db)
    store_walk_with_cycle(store, "dev-young", days=1.5)  # ETS needs two days, naive one
    end = 1.5 * 86400.0 - STEP
    summary = served_forecast("dev-young", end - HOUR, end)
    assert summary["skipped_models"] == {"ets": "shorter_than_one_season"}
    assert summary["weights"] == {"seasonal_naive": 1.0}
    assert store.latest_forecast("dev-young")["served"]["skipped"] == {
        "ets": "shorter_than_one_season"
    }
    store_walk_with_cycle(store, "dev-newborn", days=0.5)
    with pytest.raises(TooShortForSeason, match="no candidate model could fit"):
        served_forecast("dev-newborn", 0.5 * 86400.0 - HOUR - STEP, 0.5 * 86400.0 - STEP)


def test_the_job_manager_enqueues_auto_by_dotted_path_and_a_worker_runs_it(selection_db):
    from rq.job import Job
    from rq.serializers import JSONSerializer

    from pipeline.queue import enqueue_prediction, make_queue
    from pipeline.records import PredictionJob
    from pipeline.settings import load_settings

    settings = load_settings()
    assert settings.default_model == "auto"
    store = Store(selection_db)
    store_walk_with_cycle(store, "dev-rq", days=3)
    end = 2 * 86400.0 + HOUR
    job = PredictionJob(
        job_id=job_id_for("dev-rq", end),
        device_id="dev-rq",
        window_start=end - HOUR,
        window_end=end,
        model=settings.model_for("dev-rq"),
    )
    queue = make_queue(settings, selection_db)
    assert enqueue_prediction(queue, settings, job)
    worker = InProcessWorker([queue], connection=selection_db, serializer=JSONSerializer)
    assert worker.work(burst=True, logging_level="WARNING")
    done = Job.fetch(job.job_id, connection=selection_db, serializer=JSONSerializer)
    assert done.func_name == "pipeline.prediction.serving.served_forecast"
    assert done.get_status() == "finished", done.latest_result()
    assert set(done.return_value()["fits"]) == {"ets", "seasonal_naive"}
    assert store.latest_forecast("dev-rq")["model"] == "auto"
