"""Rolling-origin evaluation of the registered models and of the served forecast.

At each origin the models are fitted exactly as a prediction worker fits them
(each ``ModelSpec.fit`` from ``pipeline.prediction.jobs``, on the readings of
the training span before the origin, forecasting the horizon at the forecast
step, warm-starting from the previous origin's fit where the model keeps
state), and the served forecast is made exactly as the ``auto`` job makes it
(``pipeline.prediction.selection.serve`` over the previous origins' forecasts
and the readings known at the origin). The forecasts are then scored against
the readings that followed, with the accuracy tracker's rule.

Figures per model and horizon bucket:
  MAE       mean absolute error
  MASE      errors scaled by the seasonal-naive in-sample MAE of each origin's
            training span (Hyndman's MASE with a seasonal scale; 1.0 = as good
            as "same time one season back" was in-sample)
  rel_mae   MAE / MAE of the seasonal-naive model on the same readings
  coverage  share of readings inside the interval (nominal ``INTERVAL_WIDTH``);
            for the served forecast also ``raw_coverage``, before calibration

The first ``warmup`` origins only feed the served forecast's evidence and are
not scored, as a device that has been running for a while would have it.
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.prediction.jobs import ModelSpec
from pipeline.prediction.models.base import (
    INTERVAL_WIDTH,
    BadInput,
    Series,
    future_times,
)
from pipeline.prediction.selection import Scored, Window, score, serve
from pipeline.settings import Settings

SERVED = "served"


@dataclass(frozen=True)
class Plan:
    """Where the origins fall and what each forecast covers."""

    training_seconds: float
    horizon_seconds: float
    step_seconds: float
    every_seconds: float  # spacing of origins (the job window, online)
    origins: int  # scored origins, the newest ones the series allows
    warmup: int  # origins before them that only build up the served forecast's evidence
    buckets: int  # horizon buckets in the report


def origins_for(series: Series, plan: Plan) -> list[float]:
    """Origins every ``every_seconds``, newest last, each with a full horizon after it."""
    last = series.times[-1] - plan.horizon_seconds
    first = series.times[0] + plan.training_seconds
    wanted = plan.origins + plan.warmup
    count = min(wanted, math.floor((last - first) / plan.every_seconds) + 1)
    if count <= plan.warmup:
        raise ValueError(
            f"the series spans {series.span / 3600:.1f} h: too short for {plan.warmup} warm-up "
            f"and any scored origin with {plan.training_seconds / 3600:.0f} h of training "
            f"and a {plan.horizon_seconds / 3600:.0f} h horizon"
        )
    return [last - plan.every_seconds * k for k in range(count - 1, -1, -1)]


def seasonal_scale(times: np.ndarray, values: np.ndarray, season: float) -> float:
    """In-sample MAE of "same time one season back" over a training span."""
    later = times >= times[0] + season
    if not later.any():
        return float("nan")
    earlier = np.interp(times[later] - season, times, values)
    return float(np.mean(np.abs(values[later] - earlier)))


@dataclass
class _Tally:
    """Running sums per (model, bucket), plus per origin for the relative MAE."""

    abs_error: dict[tuple[str, int], float] = dataclasses.field(default_factory=dict)
    scaled: dict[tuple[str, int], float] = dataclasses.field(default_factory=dict)
    scaled_count: dict[tuple[str, int], int] = dataclasses.field(default_factory=dict)
    count: dict[tuple[str, int], int] = dataclasses.field(default_factory=dict)
    inside: dict[tuple[str, int], int] = dataclasses.field(default_factory=dict)
    raw_inside: dict[tuple[str, int], int] = dataclasses.field(default_factory=dict)
    by_origin: dict[tuple[str, float, int], float] = dataclasses.field(default_factory=dict)

    def add(
        self,
        model: str,
        origin: float,
        scored: Scored,
        buckets: np.ndarray,
        scale: float,
        raw: Scored | None = None,
    ) -> None:
        for b in np.unique(buckets):
            mine = buckets == b
            key = (model, int(b))
            errors = np.abs(scored.error[mine])
            self.abs_error[key] = self.abs_error.get(key, 0.0) + float(errors.sum())
            self.count[key] = self.count.get(key, 0) + int(mine.sum())
            self.inside[key] = self.inside.get(key, 0) + int((scored.outside[mine] <= 0).sum())
            if raw is not None:
                raw_in = int((raw.outside[mine] <= 0).sum())
                self.raw_inside[key] = self.raw_inside.get(key, 0) + raw_in
            if math.isfinite(scale) and scale > 0:
                self.scaled[key] = self.scaled.get(key, 0.0) + float(errors.sum()) / scale
                self.scaled_count[key] = self.scaled_count.get(key, 0) + int(mine.sum())
            self.by_origin[(model, origin, int(b))] = float(errors.sum())


def _figures(tally: _Tally, model: str, keys: list[int], baseline: str | None) -> dict[str, Any]:
    count = sum(tally.count.get((model, b), 0) for b in keys)
    if count == 0:
        return {"readings": 0}
    figures: dict[str, Any] = {
        "readings": count,
        "mae": sum(tally.abs_error.get((model, b), 0.0) for b in keys) / count,
        "coverage": sum(tally.inside.get((model, b), 0) for b in keys) / count,
    }
    scaled_count = sum(tally.scaled_count.get((model, b), 0) for b in keys)
    if scaled_count:
        figures["mase"] = sum(tally.scaled.get((model, b), 0.0) for b in keys) / scaled_count
    if model == SERVED:
        figures["raw_coverage"] = sum(tally.raw_inside.get((model, b), 0) for b in keys) / count
    if baseline is not None:
        mine, theirs = 0.0, 0.0
        for (m, origin, b), total in tally.by_origin.items():
            if m == model and b in keys and (baseline, origin, b) in tally.by_origin:
                mine += total
                theirs += tally.by_origin[(baseline, origin, b)]
        if theirs > 0:
            figures["rel_mae"] = mine / theirs
    return figures


def backtest(
    series: Series,
    specs: dict[str, ModelSpec],
    settings: Settings,
    plan: Plan,
    progress: Callable[[int], Any] | None = None,
) -> dict[str, Any]:
    """Fit every model at every origin, serve, score; the report as plain values.

    The served forecast chooses among the ``selection_candidates`` in ``specs``
    (all of ``specs`` if none is), in that order, as the ``auto`` job does.
    ``progress`` is called with 1 after each origin.
    """
    candidates = [m for m in settings.selection_candidates if m in specs] or list(specs)
    fit_settings = dataclasses.replace(
        settings,
        training_seconds=plan.training_seconds,
        horizon_seconds=plan.horizon_seconds,
        forecast_step_seconds=plan.step_seconds,
    )
    season = settings.seasonal_period_seconds
    times, values = np.asarray(series.times), np.asarray(series.values)
    origins = origins_for(series, plan)
    scored_from = max(plan.warmup, len(origins) - plan.origins)
    bucket_size = plan.horizon_seconds / plan.buckets
    tally = _Tally()
    history: list[Window] = []
    previous: dict[str, dict[str, Any] | None] = {}
    failures: Counter[str] = Counter()
    chosen: Counter[str] = Counter()
    for index, origin in enumerate(origins):
        start = np.searchsorted(times, origin - plan.training_seconds, side="left")
        end = np.searchsorted(times, origin, side="right")
        train = Series(
            times=times[start:end].tolist(), values=values[start:end].tolist(), dropped=0
        )
        future = future_times(train.times[-1], plan.horizon_seconds, plan.step_seconds)
        current = {}
        for name, spec in specs.items():
            try:
                result = spec.fit(train, future, fit_settings, previous.get(name))
            except BadInput as exc:
                failures[f"{name}: {exc.reason}"] += 1
                continue
            if spec.keeps_state:
                previous[name] = result.state
            current[name] = result.points
        offered = {m: current[m] for m in candidates if m in current}
        if not offered:
            history.append(Window(trained_until=train.times[-1], points=current))
            if progress:
                progress(1)
            continue
        served = serve(
            offered,
            train.times[-1],
            history[-settings.selection_windows :],
            times[:end],
            values[:end],
            policy=settings.selection_policy,
            horizon_seconds=plan.horizon_seconds,
            nominal=INTERVAL_WIDTH,
        )
        history.append(Window(trained_until=train.times[-1], points=current))
        if index >= scored_from:
            scale = seasonal_scale(times[start:end], values[start:end], season)
            for name, points in current.items():
                scored = score(points, train.times[-1], times, values)
                buckets = _buckets(scored, bucket_size, plan.buckets)
                tally.add(name, origin, scored, buckets, scale)
            scored = score(served.points, train.times[-1], times, values)
            raw = score(served.raw_points, train.times[-1], times, values)
            tally.add(
                SERVED, origin, scored, _buckets(scored, bucket_size, plan.buckets), scale, raw
            )
            chosen[max(served.weights, key=lambda m: served.weights[m])] += 1
        if progress:
            progress(1)
    return _report(tally, [SERVED, *specs], plan, series, origins[scored_from:], failures, chosen)


def _buckets(scored: Scored, size: float, count: int) -> np.ndarray:
    return np.minimum(count - 1, (np.maximum(scored.horizon - 1e-9, 0) / size).astype(int))


def _report(
    tally: _Tally,
    models: list[str],
    plan: Plan,
    series: Series,
    origins: list[float],  # the scored ones
    failures: Counter[str],
    chosen: Counter[str],
) -> dict[str, Any]:
    size = plan.horizon_seconds / plan.buckets
    labels = [f"{b * size / 3600:g}-{(b + 1) * size / 3600:g}h" for b in range(plan.buckets)]
    baseline = "seasonal_naive" if any(m == "seasonal_naive" for m, _ in tally.count) else None
    by_model: dict[str, Any] = defaultdict(dict)
    for model in models:
        by_model[model]["all"] = _figures(tally, model, list(range(plan.buckets)), baseline)
        for b, label in enumerate(labels):
            by_model[model][label] = _figures(tally, model, [b], baseline)
    return {
        "series": {
            "readings": len(series.times),
            "from": series.times[0],
            "until": series.times[-1],
        },
        "plan": dataclasses.asdict(plan),
        "origins_scored": len(origins),
        "first_origin": origins[0],
        "last_origin": origins[-1],
        "nominal_coverage": INTERVAL_WIDTH,
        "buckets": ["all", *labels],
        "models": dict(by_model),
        "served_choice": dict(chosen),
        "fit_failures": dict(failures),
    }
