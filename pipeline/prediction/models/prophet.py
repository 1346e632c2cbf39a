"""Prophet on one device's series, warm-started from its previous fit.

Warm start follows Prophet's documented method ("Updating fitted models"): the
new fit's optimizer starts from the previous model's parameters (``k``, ``m``,
``sigma_obs``, ``delta``, ``beta``) instead of from Prophet's default guess.
Consecutive windows of a device share most of their readings, so the optimum
has barely moved and L-BFGS reaches it in fewer iterations. Prophet itself
falls back to its default for any parameter whose shape changed (e.g. weekly
seasonality switching on once two weeks of data exist); ``warm_started`` is
True only when every parameter carried over.

The fitted model is returned as Prophet's own JSON (``model_to_json``), never
a pickle, so that the job can keep it per device for the next warm start.

Prophet and cmdstanpy log every fit at INFO, and Prophet logs an ERROR on import
when plotly is missing (only needed for interactive plots, which workers never
draw). Those lines would bury the worker's own log, so the loggers are quieted
here, before Prophet is imported. cmdstanpy installs its own INFO handler and
level unless its logger already has a handler, hence the NullHandler.
"""

from __future__ import annotations

import logging

logging.getLogger("cmdstanpy").addHandler(logging.NullHandler())
logging.getLogger("cmdstanpy").setLevel(logging.WARNING)
logging.getLogger("prophet").setLevel(logging.WARNING)
logging.getLogger("prophet.plot").setLevel(logging.CRITICAL)

import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import prophet  # noqa: E402
from prophet.serialize import model_from_json, model_to_json  # noqa: E402

from pipeline.prediction.models.base import (  # noqa: E402
    INTERVAL_WIDTH,
    ForecastResult,
    Series,
)

log = logging.getLogger(__name__)

VERSION = f"prophet-{prophet.__version__}"
# Prophet's own rule for "auto" seasonality: a cycle is only fitted when the
# training data spans at least two of its periods.
WEEKLY_MIN_SPAN_SECONDS = 2 * 7 * 86400.0
YEARLY_MIN_SPAN_SECONDS = 2 * 365 * 86400.0
SCALAR_PARAMS = ("k", "m", "sigma_obs")
VECTOR_PARAMS = ("delta", "beta")


@dataclass(frozen=True)
class Options:
    """Prophet's settings for sensor readings, chosen by backtest and benchmark.

    On two real hourly temperature series (``bench/backtest_real_series.py``) a
    sharper daily profile (8 Fourier terms instead of Prophet's 4) lowers
    Prophet's MASE by up to a third. Ten trend changepoints instead of 25 cost
    nothing in accuracy there, and they pay for the extra terms: a fit on two
    days of minute readings is no slower than with Prophet's defaults
    (``bench/selection_benchmark.py``). Two further changes won on those
    weather series but not everywhere, so they are not made: a weekly cycle off
    (weather has none; rooms with office hours do), and a trend free to bend
    (changepoint prior 2.0), which loses to seasonal-naive on the simulator's
    rooms and makes warm- and cold-started fits land on different optima.
    """

    weekly: bool = True  # Prophet's own rule: once two weeks of data exist
    changepoint_prior_scale: float = 0.05
    changepoint_range: float = 0.8
    daily_fourier_order: int = 8
    n_changepoints: int = 10


TUNED = Options()
# Prophet as the package ships it, kept for the comparisons in the benchmarks.
PROPHET_DEFAULTS = Options(daily_fourier_order=4, n_changepoints=25)


def _new_model(span_seconds: float, options: Options) -> prophet.Prophet:
    model = prophet.Prophet(
        daily_seasonality=False,
        weekly_seasonality=options.weekly and span_seconds >= WEEKLY_MIN_SPAN_SECONDS,
        yearly_seasonality=span_seconds >= YEARLY_MIN_SPAN_SECONDS,
        changepoint_prior_scale=options.changepoint_prior_scale,
        changepoint_range=options.changepoint_range,
        n_changepoints=options.n_changepoints,
        interval_width=INTERVAL_WIDTH,
    )
    return model.add_seasonality("daily", period=1, fourier_order=options.daily_fourier_order)


def warm_start_params(model: prophet.Prophet) -> dict[str, Any]:
    """A fitted model's parameters as initial values for the next fit (Prophet's docs)."""
    params: dict[str, Any] = {}
    for name in SCALAR_PARAMS:
        values = model.params[name]
        params[name] = values[0][0] if model.mcmc_samples == 0 else np.mean(values)
    for name in VECTOR_PARAMS:
        values = model.params[name]
        params[name] = values[0] if model.mcmc_samples == 0 else np.mean(values, axis=0)
    return params


def _initial_params(previous: str | None) -> dict[str, Any] | None:
    """Warm-start values from a previous model's JSON, or None to start cold."""
    if previous is None:
        return None
    try:
        return warm_start_params(model_from_json(previous))
    except Exception as exc:  # a damaged or foreign document must only cost a cold start
        log.warning("previous model unusable for a warm start, fitting cold: %s", exc)
        return None


def _carried_over(init: dict[str, Any], fitted: prophet.Prophet) -> bool:
    """Whether Prophet used every warm-start value (it drops ones whose shape changed)."""
    return all(np.shape(init[name]) == np.shape(fitted.params[name][0]) for name in VECTOR_PARAMS)


def fit_and_forecast(
    series: Series, future: list[float], previous: str | None = None, options: Options = TUNED
) -> ForecastResult:
    """Fit Prophet on the series and forecast at the ``future`` epoch seconds.

    ``previous`` is the JSON of this device's last fitted model, if any: the
    fit is warm-started from its parameters. A constant series needs no
    optimizer: Prophet returns the constant with a zero-width interval, which
    is reported as ``fallback="constant_series"``.
    """
    history = pd.DataFrame({"ds": pd.to_datetime(series.times, unit="s"), "y": series.values})
    model = _new_model(series.span, options)
    init = None if series.constant else _initial_params(previous)
    started = time.perf_counter()
    if init is None:
        model.fit(history)
    else:
        model.fit(history, init=init)
    fit_seconds = time.perf_counter() - started

    predicted = model.predict(pd.DataFrame({"ds": pd.to_datetime(future, unit="s")}))
    points = [
        {"ds": when, "yhat": float(yhat), "yhat_lower": float(lower), "yhat_upper": float(upper)}
        for when, yhat, lower, upper in zip(
            future,
            predicted["yhat"],
            predicted["yhat_lower"],
            predicted["yhat_upper"],
            strict=True,
        )
    ]
    return ForecastResult(
        points=points,
        trained_from=series.times[0],
        trained_until=series.times[-1],
        training_points=len(series.times),
        fit_seconds=fit_seconds,
        model_version=VERSION,
        warm_started=init is not None and _carried_over(init, model),
        fallback="constant_series" if series.constant else None,
        state={"format": "prophet-json", "version": VERSION, "model": model_to_json(model)},
    )
