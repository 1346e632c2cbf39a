"""Backtests on series whose structure says which model must win.

Hourly series of a few weeks, 12 h horizon, origins every 3 h (small, so that
the whole file runs in seconds): the served forecast must pick the model that
should win and never be worse than the best single model by more than 2%, and
its calibrated interval must cover within 5 points of the nominal 80%.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from pipeline import cli
from pipeline.prediction.backtesting import SERVED, Plan, backtest, origins_for
from pipeline.prediction.jobs import registered_specs
from pipeline.prediction.models.base import Series
from pipeline.settings import Settings

HOUR = 3600.0
DAY = 86400.0
PLAN = Plan(
    training_seconds=4 * DAY,
    horizon_seconds=12 * HOUR,
    step_seconds=HOUR,
    every_seconds=3 * HOUR,
    origins=100,  # 1,200 scored readings: a coverage estimate within a few points
    warmup=8,
    buckets=2,
)


def structured(kind: str, days: int = 20, seed: int = 1) -> Series:
    """Hourly readings: a pure daily cycle, a trend plus the cycle, or a random walk."""
    rng = np.random.default_rng(seed)
    t = np.arange(days * 24) * HOUR
    cycle = 5 * np.sin(2 * np.pi * t / DAY) + 2 * np.sin(4 * np.pi * t / DAY)
    if kind == "exact cycle":
        y = 20 + cycle
    elif kind == "cycle":
        y = 20 + cycle + rng.normal(0, 0.3, len(t))
    elif kind == "trend":
        y = 20 + cycle + 0.5 * t / DAY + rng.normal(0, 0.3, len(t))
    else:
        y = 20 + np.cumsum(rng.normal(0, 0.5, len(t)))
    return Series(times=t.tolist(), values=y.tolist(), dropped=0)


def run(kind: str, models: list[str], plan: Plan = PLAN) -> dict:
    settings = dataclasses.replace(Settings(), selection_candidates=models)
    return backtest(structured(kind), registered_specs(settings, models), settings, plan)


def leader(report: dict) -> str:
    choice = report["served_choice"]
    return max(choice, key=choice.get)


def mae(report: dict, model: str) -> float:
    return report["models"][model]["all"]["mae"]


def test_an_exact_daily_cycle_is_forecast_exactly():
    report = run("exact cycle", ["ets", "seasonal_naive"])
    assert max(mae(report, m) for m in (SERVED, "ets", "seasonal_naive")) < 1e-9


@pytest.mark.parametrize("kind", ["cycle", "trend", "walk"])
def test_ets_wins_on_noise_and_a_moving_level_and_the_served_band_is_calibrated(kind):
    """ETS averages the daily profile over days (seasonal-naive repeats yesterday's
    noise) and follows the level (seasonal-naive lags it by a day)."""
    report = run(kind, ["ets", "seasonal_naive"])
    assert leader(report) == "ets"
    served, best = mae(report, SERVED), min(mae(report, m) for m in ("ets", "seasonal_naive"))
    assert served <= 1.02 * best
    assert mae(report, "seasonal_naive") > 1.05 * mae(report, "ets")
    figures = report["models"][SERVED]["all"]
    assert figures["mase"] < 1.0 and figures["rel_mae"] < 1.0
    assert abs(figures["coverage"] - 0.8) <= 0.05, figures


def test_prophet_is_evaluated_with_the_workers_code_and_beaten_on_a_random_walk():
    plan = dataclasses.replace(PLAN, origins=16)  # Prophet fits take a tenth of a second
    report = run("walk", ["ets", "seasonal_naive", "prophet"], plan)
    assert set(report["models"]) == {SERVED, "ets", "seasonal_naive", "prophet"}
    assert report["models"]["prophet"]["all"]["readings"] == plan.origins * 12
    assert leader(report) == "ets"
    assert mae(report, SERVED) <= 1.02 * min(mae(report, m) for m in ("ets", "prophet"))


def test_seasonal_naive_scores_one_against_itself_and_buckets_add_up():
    report = run("trend", ["seasonal_naive"])
    naive = report["models"]["seasonal_naive"]
    assert naive["all"]["rel_mae"] == pytest.approx(1.0)
    assert naive["0-6h"]["readings"] + naive["6-12h"]["readings"] == naive["all"]["readings"]
    assert report["origins_scored"] == PLAN.origins


def test_a_series_too_short_for_any_origin_is_refused():
    with pytest.raises(ValueError, match="too short"):
        origins_for(structured("walk", days=4), PLAN)
    assert (
        len(origins_for(structured("walk", days=9), PLAN)) == (215 - 12 - 96) // 3 + 1
    )  # hours: last reading, horizon, training


def test_the_command_reads_a_csv_and_prints_json(tmp_path, capsys):
    series = structured("walk")
    path = tmp_path / "walk.csv"
    lines = ["when,value"] + [
        f"{np.datetime64(int(t), 's')},{v}"
        for t, v in zip(series.times, series.values, strict=True)
    ]
    path.write_text("\n".join(lines) + "\n")
    code = cli.main(
        [
            "backtest", "--csv", str(path), "--time-column", "when", "--value-column", "value",
            "--model", "ets", "--model", "seasonal_naive", "--origins", "5", "--warmup", "3",
            "--training-seconds", str(4 * DAY), "--horizon-seconds", str(12 * HOUR),
            "--step-seconds", str(HOUR), "--every-seconds", str(3 * HOUR), "--json",
            "--no-progress",
        ]
    )  # fmt: skip
    assert code == 0
    (report,) = json.loads(capsys.readouterr().out)
    assert report["name"] == str(path) and report["origins_scored"] == 5
    assert report["series"]["readings"] == len(series.times)
    assert set(report["models"]) == {SERVED, "ets", "seasonal_naive"}
