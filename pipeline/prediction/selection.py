"""Which forecast a device is served, and how wide its interval must be.

Every window, the candidate models are fitted on the same readings and forecast
the same instants. Their earlier forecasts (the last ``selection_windows``
windows) are scored against the readings that have arrived since, with the
accuracy tracker's rule (``pipeline.accuracy.forecast_at``: linear between
forecast points, strictly after the training data, up to the last point). The
tracker's own figures are running totals since the first reading and say
nothing per horizon; choosing and calibrating need the recent residuals
themselves, so they are recomputed here from the same stored forecasts.

Selection: models are compared on the windows where all of them forecast
(their MAE over the same readings). ``best`` serves the model with the lowest
recent MAE; ``weighted`` serves the average of all candidates weighted by
1 / MAE^2 (an error-weighted combination). With fewer than ``MIN_WINDOWS``
scored windows the first candidate that fitted is served, and the reason says
so.

Calibration (split-conformal, "conformalized quantile regression"): for the
served combination applied to the same past windows, each reading's score is
how far it lay outside the raw band (negative inside). Per horizon bucket
(quarters of the horizon), the band is widened by the
ceil((n + 1) * nominal)-th smallest of the n scores (or narrowed, when the
quantile is negative), which covers the nominal share of new readings when
scores are exchangeable. A bucket with fewer than ``MIN_SCORES`` scores uses the
pooled scores of all buckets; with fewer than that in total, the band stays raw.

Everything here is pure (no Redis): the prediction job and ``pipeline
backtest`` call the same functions, so a backtest measures what is deployed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

MIN_WINDOWS = 3  # scored past windows before recent errors are trusted
MIN_SCORES = 20  # readings per horizon bucket before it is calibrated on its own
CALIBRATION_BUCKETS = 4
POLICIES = ("best", "weighted")

Points = list[dict[str, float]]


@dataclass(frozen=True)
class Window:
    """One past window: the forecast of each candidate that fitted in it."""

    trained_until: float
    points: dict[str, Points]  # model name -> forecast points


@dataclass(frozen=True)
class Scored:
    """A forecast read at the readings it covered, with their errors."""

    horizon: np.ndarray  # seconds after trained_until
    error: np.ndarray  # reading - yhat
    outside: np.ndarray  # how far outside the band (negative inside)


@dataclass(frozen=True)
class Served:
    """The forecast a device is served, with why and how it was calibrated."""

    points: Points  # calibrated band
    raw_points: Points  # the combination's own band
    weights: dict[str, float]
    reason: str
    errors: dict[str, dict[str, float]]  # model -> recent mae, coverage, readings, windows
    calibration: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """What the forecast document and the device view show about the choice."""
        return {
            "weights": self.weights,
            "reason": self.reason,
            "recent_errors": self.errors,
            "calibration": self.calibration,
        }


def score(points: Points, trained_until: float, times: np.ndarray, values: np.ndarray) -> Scored:
    """The forecast at each reading it covers out of sample (the tracker's rule)."""
    ds = np.array([p["ds"] for p in points])
    covered = (times > trained_until) & (times <= ds[-1])
    at, seen = times[covered], values[covered]
    yhat = np.interp(at, ds, [p["yhat"] for p in points])
    lower = np.interp(at, ds, [p["yhat_lower"] for p in points])
    upper = np.interp(at, ds, [p["yhat_upper"] for p in points])
    return Scored(
        horizon=at - trained_until,
        error=seen - yhat,
        outside=np.maximum(lower - seen, seen - upper),
    )


def combine(points: dict[str, Points], weights: dict[str, float]) -> Points:
    """The weighted average of forecasts of the same instants, band included."""
    used = [(points[m], w) for m, w in weights.items() if w > 0]
    first = used[0][0]
    return [
        {
            "ds": first[k]["ds"],
            **{
                name: sum(w * forecast[k][name] for forecast, w in used)
                for name in ("yhat", "yhat_lower", "yhat_upper")
            },
        }
        for k in range(len(first))
    ]


def _weights(errors: dict[str, float], policy: str) -> dict[str, float]:
    if policy == "best":
        best = min(errors, key=lambda m: errors[m])
        return {m: float(m == best) for m in errors}
    inverse = {m: 1.0 / max(e, 1e-9) ** 2 for m, e in errors.items()}
    total = sum(inverse.values())
    return {m: v / total for m, v in inverse.items()}


def _bucket(horizon: np.ndarray, horizon_seconds: float) -> np.ndarray:
    """Bucket b holds horizons in (b * size, (b + 1) * size]."""
    size = horizon_seconds / CALIBRATION_BUCKETS
    index = np.ceil(np.asarray(horizon) / size - 1e-9).astype(int) - 1
    return np.clip(index, 0, CALIBRATION_BUCKETS - 1)


def conformal_quantile(scores: np.ndarray, nominal: float) -> float:
    """The split-conformal quantile: covers ``nominal`` of exchangeable new scores."""
    n = len(scores)
    rank = min(n, math.ceil((n + 1) * nominal - 1e-9))  # the rank-th smallest score
    return float(np.partition(scores, rank - 1)[rank - 1])


def calibrate(scored: Sequence[Scored], horizon_seconds: float, nominal: float) -> dict[str, Any]:
    """Per horizon bucket, how much to widen the band (negative: narrow)."""
    if not scored:
        return {"applied": False, "scores": 0}
    horizon = np.concatenate([s.horizon for s in scored])
    outside = np.concatenate([s.outside for s in scored])
    if len(outside) < MIN_SCORES:
        return {"applied": False, "scores": len(outside)}
    pooled = conformal_quantile(outside, nominal)
    buckets = _bucket(horizon, horizon_seconds)
    widen = []
    for b in range(CALIBRATION_BUCKETS):
        mine = outside[buckets == b]
        widen.append(conformal_quantile(mine, nominal) if len(mine) >= MIN_SCORES else pooled)
    return {
        "applied": True,
        "scores": len(outside),
        "bucket_seconds": horizon_seconds / CALIBRATION_BUCKETS,
        "widen": widen,
        "raw_coverage": float(np.mean(outside <= 0)),
        "nominal_coverage": nominal,
    }


def apply_calibration(
    points: Points, trained_until: float, calibration: dict[str, Any], horizon_seconds: float
) -> Points:
    """The band widened per horizon bucket; it always contains the forecast."""
    if not calibration.get("applied"):
        return points
    horizon = np.array([p["ds"] - trained_until for p in points])
    buckets = _bucket(horizon, horizon_seconds)
    out = []
    for point, b in zip(points, buckets, strict=True):
        q = calibration["widen"][b]
        out.append(
            {
                **point,
                "yhat_lower": min(point["yhat_lower"] - q, point["yhat"]),
                "yhat_upper": max(point["yhat_upper"] + q, point["yhat"]),
            }
        )
    return out


def serve(
    current: dict[str, Points],
    trained_until: float,
    history: Sequence[Window],
    times: np.ndarray,
    values: np.ndarray,
    *,
    policy: str,
    horizon_seconds: float,
    nominal: float,
) -> Served:
    """Choose weights from the recent windows, combine, and calibrate the band.

    ``current`` holds this window's forecasts of the candidates that fitted, in
    preference order (the first one is served while evidence is missing);
    ``history`` the earlier windows, ``times``/``values`` the readings known now.
    """
    if policy not in POLICIES:
        raise ValueError(f"unknown selection policy {policy!r}; expected one of {POLICIES}")
    models = list(current)
    common = [
        w for w in history if w.trained_until < trained_until and set(models) <= set(w.points)
    ]
    scored = {
        m: [score(w.points[m], w.trained_until, times, values) for w in common] for m in models
    }
    windows = sum(1 for k in range(len(common)) if len(scored[models[0]][k].error))
    errors: dict[str, dict[str, float]] = {}
    for m in models:
        error = np.concatenate([s.error for s in scored[m]]) if common else np.array([])
        outside = np.concatenate([s.outside for s in scored[m]]) if common else np.array([])
        if len(error):
            errors[m] = {
                "mae": float(np.mean(np.abs(error))),
                "coverage": float(np.mean(outside <= 0)),
                "readings": len(error),
                "windows": windows,
            }
    if windows < MIN_WINDOWS or len(errors) < len(models):
        weights = {m: float(m == models[0]) for m in models}
        reason = (
            f"collecting evidence ({windows} of {MIN_WINDOWS} past windows scored "
            f"for all of {', '.join(models)}): serving {models[0]}"
        )
    else:
        weights = _weights({m: e["mae"] for m, e in errors.items()}, policy)
        ranked = ", ".join(
            f"{m} {errors[m]['mae']:.3g}" for m in sorted(errors, key=lambda m: errors[m]["mae"])
        )
        if policy == "best":
            chosen = max(weights, key=lambda m: weights[m])
            reason = f"lowest recent MAE over {windows} windows: {chosen} (MAE {ranked})"
        else:
            reason = f"weighted by 1/MAE^2 over {windows} windows (MAE {ranked})"
    raw = combine(current, weights)
    past = [score(combine(w.points, weights), w.trained_until, times, values) for w in common]
    calibration = calibrate(past, horizon_seconds, nominal)
    points = apply_calibration(raw, trained_until, calibration, horizon_seconds)
    return Served(
        points=points,
        raw_points=raw,
        weights={m: w for m, w in weights.items() if w > 0},
        reason=reason,
        errors=errors,
        calibration=calibration,
    )


def selection_status(model: str, pinned: bool, latest: dict[str, Any] | None) -> dict[str, Any]:
    """Which model serves a device and why, for ``/devices/{id}/`` and the dashboard.

    ``model`` is the device's model setting (``auto`` or a pinned model),
    ``pinned`` whether ``device_models`` names it, ``latest`` its newest forecast.
    """
    status: dict[str, Any] = {"model": model, "pinned": pinned}
    served = (latest or {}).get("served")
    if served is not None:
        status.update(served)
    elif latest is not None:
        status["weights"] = {latest["model"]: 1.0}
        status["reason"] = (
            f"pinned to {model} by device_models" if pinned else f"default_model is {model}"
        )
    else:
        status["reason"] = "no forecast yet"
    return status
