"""Split-conformal calibration of the served band, on forecasts with known errors."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.prediction.selection import (
    CALIBRATION_BUCKETS,
    MIN_SCORES,
    Window,
    apply_calibration,
    calibrate,
    conformal_quantile,
    score,
    serve,
)

HORIZON = 4 * 3600.0


def flat(trained_until: float, level: float, half_width: float) -> list[dict[str, float]]:
    """A forecast of ``level`` every hour over the horizon, band +- half_width."""
    return [
        {
            "ds": trained_until + 3600.0 * k,
            "yhat": level,
            "yhat_lower": level - half_width,
            "yhat_upper": level + half_width,
        }
        for k in range(1, 5)
    ]


def test_the_conformal_quantile_is_the_finite_sample_one():
    scores = np.arange(1.0, 10.0)  # n = 9: ceil(10 * 0.8) / 9 -> the 8th smallest
    assert conformal_quantile(scores, 0.8) == 8.0
    assert conformal_quantile(np.array([1.0, 2.0]), 0.8) == 2.0  # capped at the largest


def test_a_band_too_narrow_is_widened_per_horizon_to_the_nominal_coverage():
    """Errors grow with the horizon (sd 1, 2, 3, 4 at 1..4 h) while the raw band is
    +-0.5 throughout: raw coverage is poor, and after calibration on 200 past windows
    new windows are covered at 80% within 5 points in every horizon bucket."""
    rng = np.random.default_rng(3)
    sd = np.array([1.0, 2.0, 3.0, 4.0])

    def windows(count: int, start: float) -> tuple[list[Window], np.ndarray, np.ndarray]:
        history, times, values = [], [], []
        for k in range(count):
            t0 = start + k * 4 * 3600.0
            history.append(Window(trained_until=t0, points={"m": flat(t0, 0.0, 0.5)}))
            times += [t0 + 3600.0 * h for h in range(1, 5)]
            values += list(rng.normal(0.0, sd))
        return history, np.array(times), np.array(values)

    past, times, values = windows(200, 0.0)
    calibration = calibrate(
        [score(w.points["m"], w.trained_until, times, values) for w in past], HORIZON, 0.8
    )
    assert calibration["applied"] and calibration["raw_coverage"] < 0.4
    widen = calibration["widen"]
    assert len(widen) == CALIBRATION_BUCKETS and widen == sorted(widen)
    future, times, values = windows(500, 1e7)
    inside = np.zeros(4)
    for w in future:
        points = apply_calibration(w.points["m"], w.trained_until, calibration, HORIZON)
        scored = score(points, w.trained_until, times, values)
        inside += scored.outside <= 0
    assert inside / len(future) == pytest.approx([0.8] * 4, abs=0.05)


def test_a_band_too_wide_is_narrowed_but_always_holds_the_forecast():
    past = [Window(trained_until=0.0, points={"m": flat(0.0, 0.0, 10.0)})]
    times = np.array([3600.0 * h for h in range(1, 5)] * 1)
    values = np.array([0.1, -0.1, 0.2, -0.2])
    scored = [score(past[0].points["m"], 0.0, times, values)] * (MIN_SCORES // 4 + 1)
    calibration = calibrate(scored, HORIZON, 0.8)
    assert all(q < 0 for q in calibration["widen"])
    narrowed = apply_calibration(flat(0.0, 0.0, 10.0), 0.0, calibration, HORIZON)
    assert all(p["yhat_lower"] <= p["yhat"] <= p["yhat_upper"] for p in narrowed)
    assert all(p["yhat_upper"] - p["yhat_lower"] < 1.0 for p in narrowed)


def test_too_few_scores_leave_the_band_raw_and_say_so():
    served = serve(
        {"m": flat(0.0, 0.0, 1.0)},
        0.0,
        [],
        np.array([]),
        np.array([]),
        policy="best",
        horizon_seconds=HORIZON,
        nominal=0.8,
    )
    assert served.calibration == {"applied": False, "scores": 0}
    assert served.points == served.raw_points
