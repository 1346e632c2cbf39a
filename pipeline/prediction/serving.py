"""The ``auto`` model: every candidate fitted in one job, the device served the best.

One job per (device, window), as for any model (same job id, same idempotent
enqueue): it fits each of ``selection_candidates`` on the same readings, keeps
each candidate's forecast (``candidates:{d}``, indexed per model in
``forecast-index:{d}:{m}`` so that the accuracy tracker scores every candidate
online), then serves the forecast that ``pipeline.prediction.selection`` picks
from the candidates' recent windows, with its band calibrated on their recent
residuals. The served forecast is stored like any model's forecast (under the
job id, model ``auto``), with the weights, the reason and the competing recent
errors in its ``served`` field.

A re-run (retry, lost worker) reuses the candidate forecasts already stored for
the job, so a fit that succeeded is never repeated. A candidate that cannot fit
the readings (too short for its season, say) is left out of this window and
listed under ``skipped``; only when none fits is the job's input bad.

One job instead of one job per model keeps job ids, the job manager and the
queue as they are, and costs one read of the readings instead of one per model.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import numpy as np
from rq import get_current_job

from pipeline.connections import redis_client
from pipeline.prediction.jobs import ModelSpec, _index_forecast, registered_specs
from pipeline.prediction.model_store import ModelStore
from pipeline.prediction.models.base import (
    INTERVAL_WIDTH,
    BadInput,
    Series,
    clean_series,
    future_times,
)
from pipeline.prediction.selection import Window, serve
from pipeline.queue import job_id_for
from pipeline.settings import SERVED_MODEL, Settings, SettingsError, load_settings
from pipeline.storage import Store

log = logging.getLogger(__name__)


def candidate_id(job_id: str, model: str) -> str:
    """Where candidate ``model`` of job ``job_id`` is kept (``candidates:{d}``)."""
    return f"{job_id}:{model}"


def served_forecast(
    device_id: str, window_start: float, window_end: float, model: str = SERVED_MODEL
) -> dict[str, Any]:
    """Fit every candidate, store each forecast, and serve the best recent one."""
    settings = load_settings()
    window_start, window_end = float(window_start), float(window_end)
    job = get_current_job()
    job_id = job.id if job is not None else job_id_for(device_id, window_end)
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
            _index_forecast(store, device_id, model, job_id, doc["trained_until"])
            log.info(
                "forecast already stored, skipping fit device_id=%s job_id=%s", device_id, job_id
            )
            return {**summary, "skipped": True}
        specs = registered_specs(
            settings, [m for m in settings.selection_candidates if m in settings.models]
        )
        if not specs:
            raise SettingsError(
                "model auto: none of selection_candidates "
                f"({', '.join(settings.selection_candidates)}) is a registered model"
            )
        history = _history(store, device_id, list(specs), window_end, settings.selection_windows)
        oldest = min([w.trained_until for w in history], default=window_end)
        training_start = window_end - settings.training_seconds
        readings = store.readings_between(device_id, min(oldest, training_start), window_end)
        known = clean_series(readings)
        series = clean_series(r for r in readings if r["time"] >= training_start)
        future = future_times(
            series.times[-1], settings.horizon_seconds, settings.forecast_step_seconds
        )
        current, skipped, versions, fits, refusals = {}, {}, {}, {}, []
        for name, spec in specs.items():
            try:
                doc, fitted = _candidate(
                    store, settings, device_id, job_id, name, spec, series, future
                )
            except BadInput as exc:
                skipped[name] = exc.reason
                refusals.append(exc)
                continue
            current[name] = doc["points"]
            versions[name] = doc["model_version"]
            if fitted:
                fits[name] = doc["fit_seconds"]
        if not current:  # the first refusal's kind is the job's failure reason
            raise type(refusals[0])(f"no candidate model could fit the readings: {skipped}")
        served = serve(
            current,
            series.times[-1],
            history,
            np.asarray(known.times),
            np.asarray(known.values),
            policy=settings.selection_policy,
            horizon_seconds=settings.horizon_seconds,
            nominal=INTERVAL_WIDTH,
        )
        stored = store.put_forecast(
            device_id,
            job_id,
            {
                "job_id": job_id,
                "device_id": device_id,
                "model": model,
                "model_version": "+".join(versions[m] for m in served.weights),
                "model_revision": None,
                "warm_started": False,
                "fallback": None,
                "interval_width": INTERVAL_WIDTH,
                "window_start": window_start,
                "window_end": window_end,
                "trained_from": series.times[0],
                "trained_until": series.times[-1],
                "training_points": len(series.times),
                "dropped_points": series.dropped,
                "fit_seconds": sum(fits.values()),
                "created_at": time.time(),
                "served": {**served.summary(), "skipped": skipped},
                "points": served.points,
            },
        )
        _index_forecast(store, device_id, model, job_id, series.times[-1])
    finally:
        client.close()
    log.info(
        "served forecast %s device_id=%s job_id=%s weights=%s reason=%s",
        "stored" if stored else "already stored by another run",
        device_id,
        job_id,
        served.weights,
        served.reason,
    )
    return {
        **summary,
        "stored": stored,
        "weights": served.weights,
        "skipped_models": skipped,
        "fits": fits,  # model -> fit seconds, for the worker's metrics (re-used ones left out)
    }


def _candidate(
    store: Store,
    settings: Settings,
    device_id: str,
    job_id: str,
    model: str,
    spec: ModelSpec,
    series: Series,
    future: list[float],
) -> tuple[dict[str, Any], bool]:
    """The candidate's forecast of this job and whether it was fitted now (else re-used)."""
    key = store.keys.candidate_forecasts(device_id)
    member = candidate_id(job_id, model)
    earlier = store.client.hget(key, member)
    if earlier is not None:
        return json.loads(earlier), False
    models = ModelStore(store.client)
    previous = models.load(device_id, model, spec.version) if spec.keeps_state else None
    result = spec.fit(series, future, settings, previous)
    if result.state is not None:
        models.save(device_id, model, result.state, result.trained_until, member)
    doc = {
        "job_id": member,
        "model": model,
        "model_version": result.model_version,
        "warm_started": result.warm_started,
        "fallback": result.fallback,
        "interval_width": INTERVAL_WIDTH,
        "trained_until": result.trained_until,
        "fit_seconds": result.fit_seconds,
        "points": result.points,
    }
    store.client.hsetnx(key, member, json.dumps(doc, separators=(",", ":")))
    _index_forecast(store, device_id, model, member, result.trained_until)
    return doc, True


def _history(
    store: Store, device_id: str, models: list[str], window_end: float, windows: int
) -> list[Window]:
    """The candidates' forecasts of the device's last ``windows`` auto jobs before this one."""
    pipe = store.client.pipeline(transaction=False)
    for model in models:
        pipe.zrevrangebyscore(
            store.keys.forecast_index(device_id, model), f"({window_end!r}", "-inf", 0, windows
        )
    members = [m.decode() for ids in pipe.execute() for m in ids]
    if not members:
        return []
    docs = store.client.hmget(store.keys.candidate_forecasts(device_id), members)
    by_window: dict[float, dict[str, Any]] = {}
    for raw in docs:
        if raw is None:  # a forecast of the model's own job, not of an auto job
            continue
        doc = json.loads(raw)
        by_window.setdefault(doc["trained_until"], {})[doc["model"]] = doc["points"]
    newest = sorted(by_window)[-windows:]
    return [Window(trained_until=t, points=by_window[t]) for t in newest]
