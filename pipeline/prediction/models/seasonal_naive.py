"""Seasonal-naive baseline: tomorrow at 3 pm looks like today at 3 pm.

The forecast for time t is the series at the same phase of the most recent
season in the history (t - k * season, the smallest k that lands inside it),
read by linear interpolation between readings, so irregular spacing is fine.
Where that instant falls in a gap (wider than ``GAP_FACTOR`` times the median
spacing of the readings), the same phase one season earlier is used, and if no
season has data there, the last reading (plain naive). The interval comes from
the baseline's own in-sample errors y(u) - y(u - season): their empirical
quantiles around the forecast (widened to contain it), times sqrt(k) for
forecasts k seasons ahead, as for a seasonal random walk.

It is the yardstick Prophet must beat, and a dependable forecast where Prophet
is not worth its fit.
"""

from __future__ import annotations

import bisect
import math
import time

import numpy as np

from pipeline.prediction.models.base import (
    INTERVAL_WIDTH,
    ForecastResult,
    Series,
    TooShortForSeason,
)

VERSION = "seasonal-naive-1"
GAP_FACTOR = 5.0


def _value_at(series: Series, when: float, max_gap: float) -> float | None:
    """The series at ``when`` by interpolation, or None outside it or inside a wide gap."""
    times = series.times
    if when < times[0] or when > times[-1]:
        return None
    right = bisect.bisect_left(times, when)
    if times[right] == when:
        return series.values[right]
    left = right - 1
    if times[right] - times[left] > max_gap:
        return None
    share = (when - times[left]) / (times[right] - times[left])
    return series.values[left] + share * (series.values[right] - series.values[left])


def _seasonal_value(
    series: Series, when: float, season: float, max_gap: float
) -> tuple[float | None, int]:
    """The value one or more seasons before ``when`` and how many seasons back it is."""
    seasons = max(1, math.ceil((when - series.times[-1]) / season - 1e-9))
    while when - seasons * season >= series.times[0]:
        value = _value_at(series, when - seasons * season, max_gap)
        if value is not None:
            return value, seasons
        seasons += 1
    return None, seasons


def _error_quantiles(series: Series, season: float, max_gap: float) -> tuple[float, float]:
    """Lower and upper quantiles of the in-sample seasonal differences."""
    errors = []
    for when, value in zip(series.times, series.values, strict=True):
        if when - season < series.times[0]:
            continue
        earlier = _value_at(series, when - season, max_gap)
        if earlier is not None:
            errors.append(value - earlier)
    if not errors:
        return 0.0, 0.0
    tail = (1.0 - INTERVAL_WIDTH) / 2.0
    low, high = np.quantile(errors, [tail, 1.0 - tail])
    return min(float(low), 0.0), max(float(high), 0.0)


def fit_and_forecast(series: Series, future: list[float], season_seconds: float) -> ForecastResult:
    """Forecast at the ``future`` epoch seconds from the series' last season.

    Raises ``TooShortForSeason`` when the history spans less than one season.
    """
    if series.span < season_seconds:
        raise TooShortForSeason(
            f"need at least one season ({season_seconds:.0f} s) of readings, "
            f"got {series.span:.0f} s"
        )
    started = time.perf_counter()
    max_gap = GAP_FACTOR * float(np.median(np.diff(series.times)))
    low, high = _error_quantiles(series, season_seconds, max_gap)
    points = []
    used_naive = False
    for when in future:
        value, seasons = _seasonal_value(series, when, season_seconds, max_gap)
        if value is None:
            value, seasons, used_naive = series.values[-1], 1, True
        widen = math.sqrt(seasons)
        points.append(
            {
                "ds": when,
                "yhat": value,
                "yhat_lower": value + low * widen,
                "yhat_upper": value + high * widen,
            }
        )
    return ForecastResult(
        points=points,
        trained_from=series.times[0],
        trained_until=series.times[-1],
        training_points=len(series.times),
        fit_seconds=time.perf_counter() - started,
        model_version=VERSION,
        fallback="naive_in_gaps" if used_naive else None,
    )
