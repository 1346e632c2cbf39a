"""RQ job functions, one per model, run by the prediction workers.

Workers import these by the dotted path the job manager enqueued (the
``models`` setting), so each is a top-level function taking only JSON-able
keyword arguments and returning a JSON-able summary: the queue uses RQ's JSON
serializer, never pickle. A job is idempotent: its forecast is stored under its
job id at most once (HSETNX), and a re-run (a retry, or a job whose worker died
mid-fit) finds it and skips the fit.

Bad input (see ``pipeline.prediction.models.base.BadInput``) is raised with its
reason; the worker fails such a job at once instead of retrying it. Anything
else raised here (Redis unreachable, a timeout) is retried with backoff.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rq import get_current_job

from pipeline.connections import redis_client
from pipeline.prediction.model_store import ModelStore
from pipeline.prediction.models import ets as ets_model
from pipeline.prediction.models import prophet as prophet_model
from pipeline.prediction.models import seasonal_naive
from pipeline.prediction.models.base import (
    INTERVAL_WIDTH,
    BadInput,
    ForecastResult,
    Series,
    clean_series,
    future_times,
)
from pipeline.queue import job_id_for
from pipeline.settings import Settings, load_settings
from pipeline.storage import Store

log = logging.getLogger(__name__)

# Forecasts per (device, model) the accuracy tracker can still look up.
FORECAST_INDEX_LENGTH = 64


@dataclass(frozen=True)
class ModelSpec:
    """How the job runner drives one model implementation."""

    version: str
    fit: Callable[[Series, list[float], Settings, dict[str, Any] | None], ForecastResult]
    keeps_state: bool  # whether a fitted model is saved and handed to the next fit


PROPHET = ModelSpec(
    version=prophet_model.VERSION,
    fit=lambda series, future, settings, previous: prophet_model.fit_and_forecast(
        series, future, previous["model"] if previous else None
    ),
    keeps_state=True,
)
SEASONAL_NAIVE = ModelSpec(
    version=seasonal_naive.VERSION,
    fit=lambda series, future, settings, previous: seasonal_naive.fit_and_forecast(
        series, future, settings.seasonal_period_seconds
    ),
    keeps_state=False,
)
ETS = ModelSpec(
    version=ets_model.VERSION,
    fit=lambda series, future, settings, previous: ets_model.fit_and_forecast(
        series, future, settings.seasonal_period_seconds
    ),
    keeps_state=False,
)


def prophet_forecast(
    device_id: str, window_start: float, window_end: float, model: str = "prophet"
) -> dict[str, Any]:
    """Fit Prophet (warm-started from the device's last fit) and store the forecast."""
    return run_forecast(PROPHET, device_id, window_start, window_end, model)


def seasonal_naive_forecast(
    device_id: str, window_start: float, window_end: float, model: str = "seasonal_naive"
) -> dict[str, Any]:
    """Forecast each time by the same time one season earlier, and store it."""
    return run_forecast(SEASONAL_NAIVE, device_id, window_start, window_end, model)


def ets_forecast(
    device_id: str, window_start: float, window_end: float, model: str = "ets"
) -> dict[str, Any]:
    """Fit exponential smoothing with a damped trend and a daily season, and store it."""
    return run_forecast(ETS, device_id, window_start, window_end, model)


# Job function (its dotted path in the ``models`` setting) -> the model it runs:
# how ``pipeline backtest`` and the served forecast reach a registered model's code.
JOB_SPECS = {
    f"{__name__}.prophet_forecast": PROPHET,
    f"{__name__}.seasonal_naive_forecast": SEASONAL_NAIVE,
    f"{__name__}.ets_forecast": ETS,
}


def registered_specs(settings: Settings, names: list[str] | None = None) -> dict[str, ModelSpec]:
    """The registered models (or those ``names``) whose job runs a single model."""
    wanted = list(settings.models) if names is None else names
    return {
        name: JOB_SPECS[settings.model_path(name)]
        for name in wanted
        if settings.model_path(name) in JOB_SPECS
    }


def _job_id(device_id: str, window_end: float) -> str:
    """The running RQ job's id, or the id the job manager would give this window."""
    job = get_current_job()
    return job.id if job is not None else job_id_for(device_id, window_end)


def run_forecast(
    spec: ModelSpec, device_id: str, window_start: float, window_end: float, model: str
) -> dict[str, Any]:
    """Fit ``spec`` on the device's readings up to ``window_end`` and store the forecast.

    Trains on readings with time in [window_end - training_seconds, window_end]
    and forecasts ``horizon_seconds`` past the last of them, every
    ``forecast_step_seconds``. Raises ``BadInput`` when the readings cannot be
    fitted (the reason is in the exception).
    """
    settings = load_settings()
    window_start, window_end = float(window_start), float(window_end)
    job_id = _job_id(device_id, window_end)
    summary: dict[str, Any] = {
        "job_id": job_id,
        "device_id": device_id,
        "model": model,
        "window_end": window_end,
        "skipped": False,
    }
    client = redis_client(settings, socket_timeout=10)
    store = Store(client)
    try:
        stored_doc = client.hget(store.keys.forecasts(device_id), job_id)
        if stored_doc is not None:
            doc = json.loads(stored_doc)
            _index_forecast(store, device_id, doc["model"], job_id, doc["trained_until"])
            log.info(
                "forecast already stored, skipping fit device_id=%s job_id=%s", device_id, job_id
            )
            return {**summary, "skipped": True}

        readings = store.readings_between(
            device_id, window_end - settings.training_seconds, window_end
        )
        try:
            series = clean_series(readings)
            future = future_times(
                series.times[-1], settings.horizon_seconds, settings.forecast_step_seconds
            )
            models = ModelStore(client)
            previous = models.load(device_id, model, spec.version) if spec.keeps_state else None
            result = spec.fit(series, future, settings, previous)
        except BadInput as exc:
            log.warning(
                "forecast not possible reason=%s device_id=%s job_id=%s: %s",
                exc.reason,
                device_id,
                job_id,
                exc,
            )
            raise

        revision = (
            models.save(device_id, model, result.state, result.trained_until, job_id)
            if result.state is not None
            else None
        )
        stored = store.put_forecast(
            device_id,
            job_id,
            {
                "job_id": job_id,
                "device_id": device_id,
                "model": model,
                "model_version": result.model_version,
                "model_revision": revision,
                "warm_started": result.warm_started,
                "fallback": result.fallback,
                "interval_width": INTERVAL_WIDTH,
                "window_start": window_start,
                "window_end": window_end,
                "trained_from": result.trained_from,
                "trained_until": result.trained_until,
                "training_points": result.training_points,
                "dropped_points": series.dropped,
                "fit_seconds": result.fit_seconds,
                "created_at": time.time(),
                "points": result.points,
            },
        )
        _index_forecast(store, device_id, model, job_id, result.trained_until)
    finally:
        client.close()

    log.info(
        "forecast %s device_id=%s job_id=%s model=%s readings=%d fit_seconds=%.3f warm=%s",
        "stored" if stored else "already stored by another run",
        device_id,
        job_id,
        model,
        result.training_points,
        result.fit_seconds,
        result.warm_started,
    )
    return {
        **summary,
        "stored": stored,
        "trained_until": result.trained_until,
        "points": len(result.points),
        "fit_seconds": result.fit_seconds,
        "warm_started": result.warm_started,
        "fallback": result.fallback,
    }


def _index_forecast(
    store: Store, device_id: str, model: str, job_id: str, trained_until: float
) -> None:
    """List the forecast among the model's recent ones, for the accuracy tracker."""
    key = store.keys.forecast_index(device_id, model)
    pipe = store.client.pipeline()
    pipe.zadd(key, {job_id: trained_until})
    pipe.zremrangebyrank(key, 0, -FORECAST_INDEX_LENGTH - 1)
    pipe.execute()
