"""Fit Prophet on one device's temperature series and forecast ahead.

A pure function of its inputs (no Redis, no settings) so that it can be tested
and benchmarked on synthetic series, and reused by any job that wants Prophet.

Prophet and cmdstanpy log every fit at INFO, and Prophet logs an ERROR on import
when plotly is missing (it is only needed for interactive plots, which workers
never draw). Those lines would bury the worker's own log, so the loggers are
quieted here, before Prophet is imported. cmdstanpy installs its own INFO
handler and level unless its logger already has a handler, hence the NullHandler.
"""

from __future__ import annotations

import logging

logging.getLogger("cmdstanpy").addHandler(logging.NullHandler())
logging.getLogger("cmdstanpy").setLevel(logging.WARNING)
logging.getLogger("prophet").setLevel(logging.WARNING)
logging.getLogger("prophet.plot").setLevel(logging.CRITICAL)

import math  # noqa: E402
import time  # noqa: E402
from collections.abc import Iterable  # noqa: E402
from dataclasses import dataclass  # noqa: E402

import pandas as pd  # noqa: E402
import prophet  # noqa: E402

MIN_POINTS = 10
INTERVAL_WIDTH = 0.8
# Prophet's own rule for "auto" seasonality: a cycle is only fitted when the
# training data spans at least two of its periods.
WEEKLY_MIN_SPAN_SECONDS = 2 * 7 * 86400.0
YEARLY_MIN_SPAN_SECONDS = 2 * 365 * 86400.0


class InsufficientData(ValueError):
    """Too few finite readings to fit a model on."""


@dataclass(frozen=True)
class ForecastResult:
    """A forecast plus what it was trained on; plain Python floats throughout."""

    points: list[dict[str, float]]  # {"ds" (epoch s), "yhat", "yhat_lower", "yhat_upper"}
    trained_from: float  # event time of the first reading used
    trained_until: float  # event time of the last reading used
    training_points: int
    fit_seconds: float
    prophet_version: str


def _finite_series(readings: Iterable[dict]) -> list[tuple[float, float]]:
    """(time, temperature) pairs with both values finite, oldest first."""
    series = []
    for reading in readings:
        try:
            when = float(reading["time"])
            value = float(reading["temperature"])
        except (KeyError, TypeError, ValueError):
            continue
        if math.isfinite(when) and math.isfinite(value):
            series.append((when, value))
    series.sort()
    return series


def _future_times(last: float, horizon_seconds: float, step_seconds: float) -> list[float]:
    """Epoch seconds last + step, last + 2 * step, ... up to last + horizon."""
    count = max(1, math.floor(horizon_seconds / step_seconds + 1e-9))
    return [last + step_seconds * k for k in range(1, count + 1)]


def fit_and_forecast(
    readings: list[dict], horizon_seconds: float, step_seconds: float
) -> ForecastResult:
    """Fit Prophet on the readings' temperatures and forecast beyond the last one.

    Readings are dicts with ``time`` (epoch seconds) and ``temperature``; other
    keys are ignored and readings with a missing or non-finite value are dropped.
    Raises ``InsufficientData`` if fewer than ``MIN_POINTS`` remain.
    """
    if horizon_seconds <= 0 or step_seconds <= 0:
        raise ValueError("horizon_seconds and step_seconds must be positive")
    series = _finite_series(readings)
    if len(series) < MIN_POINTS:
        raise InsufficientData(
            f"need at least {MIN_POINTS} finite temperature readings to fit, got {len(series)}"
        )
    times = [when for when, _ in series]
    span = times[-1] - times[0]
    history = pd.DataFrame(
        {"ds": pd.to_datetime(times, unit="s"), "y": [value for _, value in series]}
    )
    model = prophet.Prophet(
        daily_seasonality=True,
        weekly_seasonality=span >= WEEKLY_MIN_SPAN_SECONDS,
        yearly_seasonality=span >= YEARLY_MIN_SPAN_SECONDS,
        interval_width=INTERVAL_WIDTH,
    )
    started = time.perf_counter()
    model.fit(history)
    fit_seconds = time.perf_counter() - started

    future_times = _future_times(times[-1], horizon_seconds, step_seconds)
    predicted = model.predict(pd.DataFrame({"ds": pd.to_datetime(future_times, unit="s")}))
    points = [
        {"ds": when, "yhat": float(yhat), "yhat_lower": float(lower), "yhat_upper": float(upper)}
        for when, yhat, lower, upper in zip(
            future_times,
            predicted["yhat"],
            predicted["yhat_lower"],
            predicted["yhat_upper"],
            strict=True,
        )
    ]
    return ForecastResult(
        points=points,
        trained_from=times[0],
        trained_until=times[-1],
        training_points=len(series),
        fit_seconds=fit_seconds,
        prophet_version=prophet.__version__,
    )
