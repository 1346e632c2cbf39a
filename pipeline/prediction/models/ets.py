"""Exponential smoothing (ETS) with a damped trend and an additive daily season.

ETS(A,Ad,A) from statsmodels (``ETSModel``): a level that follows the newest
readings, a trend that fades over the horizon, and a seasonal profile that is
updated every cycle. That is what a temperature sensor does from one day to the
next (the same shape, shifted by the weather), and it is the family that beats
"same hour yesterday" at short horizons, where the current level says more
than yesterday's.

ETS needs a regular grid with a small season, while devices report every
minute or so and the season is a day: the readings are averaged into
``BINS_PER_SEASON`` bins per season (hourly for a daily season; coarser data
keeps its own spacing), gaps are filled linearly, and each bin stands at the
mean phase of the readings inside bins (so hourly readings at :00 stay at :00).
The forecast is made per bin and read at the requested times by linear
interpolation.

The initial states come from statsmodels' heuristic (a decomposition of the
first cycles) instead of being optimised with the smoothing parameters: a
fit takes tens of milliseconds instead of a second, and the heuristic needs two
full seasons, hence ``TooShortForSeason`` below that. Intervals are the model's
analytic prediction intervals at ``INTERVAL_WIDTH``.
"""

from __future__ import annotations

import time
import warnings

import numpy as np
import pandas as pd
import statsmodels
from statsmodels.tools.sm_exceptions import ConvergenceWarning
from statsmodels.tsa.exponential_smoothing.ets import ETSModel

from pipeline.prediction.models.base import (
    INTERVAL_WIDTH,
    ForecastResult,
    Series,
    TooShortForSeason,
)

VERSION = f"ets-aada-statsmodels-{statsmodels.__version__}"
BINS_PER_SEASON = 24


def binned(series: Series, season_seconds: float) -> tuple[np.ndarray, np.ndarray, int]:
    """The series averaged on a regular grid: (bin times, bin means, bins per season)."""
    times = np.asarray(series.times)
    values = np.asarray(series.values)
    spacing = float(np.median(np.diff(times)))
    periods = max(2, min(BINS_PER_SEASON, round(season_seconds / spacing)))
    width = season_seconds / periods
    index = np.floor((times - times[0]) / width).astype(int)
    count = index[-1] + 1
    sums = np.bincount(index, weights=values, minlength=count)
    counts = np.bincount(index, minlength=count)
    phase = float(np.mean(times - times[0] - index * width))
    grid = times[0] + np.arange(count) * width + phase
    filled = counts > 0
    means = np.interp(grid, grid[filled], sums[filled] / counts[filled])
    return grid, means, periods


def fit_and_forecast(series: Series, future: list[float], season_seconds: float) -> ForecastResult:
    """Fit ETS(A,Ad,A) on the binned series and forecast at the ``future`` epoch seconds.

    Raises ``TooShortForSeason`` when the readings span less than two seasons.
    """
    started = time.perf_counter()
    grid, means, periods = binned(series, season_seconds)
    if len(means) < 2 * periods:
        raise TooShortForSeason(
            f"ETS needs two seasons ({2 * season_seconds:.0f} s) of readings, "
            f"got {series.span:.0f} s"
        )
    width = grid[1] - grid[0]
    steps = max(1, int(np.ceil((max(future) - grid[-1]) / width)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        model = ETSModel(
            pd.Series(means),
            error="add",
            trend="add",
            damped_trend=True,
            seasonal="add",
            seasonal_periods=periods,
            initialization_method="heuristic",
        )
        fitted = model.fit(disp=False)
        frame = fitted.get_prediction(len(means), len(means) + steps - 1).summary_frame(
            alpha=1.0 - INTERVAL_WIDTH
        )
    # The last bin's mean anchors the interpolation up to the first forecast step.
    ahead = np.concatenate(([grid[-1]], grid[-1] + width * np.arange(1, steps + 1)))
    last = float(means[-1])
    columns = {
        "yhat": np.concatenate(([last], frame["mean"].to_numpy())),
        "yhat_lower": np.concatenate(([last], frame["pi_lower"].to_numpy())),
        "yhat_upper": np.concatenate(([last], frame["pi_upper"].to_numpy())),
    }
    at = np.asarray(future, dtype=float)
    read = {name: np.interp(at, ahead, column) for name, column in columns.items()}
    points = [
        {
            "ds": float(when),
            "yhat": float(read["yhat"][k]),
            "yhat_lower": float(min(read["yhat_lower"][k], read["yhat"][k])),
            "yhat_upper": float(max(read["yhat_upper"][k], read["yhat"][k])),
        }
        for k, when in enumerate(future)
    ]
    return ForecastResult(
        points=points,
        trained_from=series.times[0],
        trained_until=series.times[-1],
        training_points=len(series.times),
        fit_seconds=time.perf_counter() - started,
        model_version=VERSION,
    )
