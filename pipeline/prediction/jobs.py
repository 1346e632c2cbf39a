"""RQ job functions, one per model, run by the prediction workers.

Workers import these by the dotted path the job manager enqueued (the
``models`` setting), so each is a top-level function taking only JSON-able
keyword arguments and returning a JSON-able summary: the queue uses RQ's JSON
serializer, never pickle. A job is idempotent: its forecast is stored under its
job id at most once, and a re-run (a retried or re-enqueued job) skips the fit.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from rq import get_current_job

from pipeline.prediction.prophet_model import fit_and_forecast
from pipeline.queue import job_id_for
from pipeline.settings import load_settings
from pipeline.storage import Store

log = logging.getLogger(__name__)


def _job_id(device_id: str, window_end: float) -> str:
    """The running RQ job's id, or the id the job manager would give this window."""
    job = get_current_job()
    return job.id if job is not None else job_id_for(device_id, window_end)


def prophet_forecast(
    device_id: str, window_start: float, window_end: float, model: str = "prophet"
) -> dict[str, Any]:
    """Fit Prophet on the device's readings up to ``window_end`` and store the forecast.

    Trains on readings with time in [window_end - training_seconds, window_end],
    forecasts ``horizon_seconds`` past the last of them and stores the forecast
    under the job id. Raises ``InsufficientData`` (the job fails, visibly, in
    RQ's failed registry) when the window holds too few readings to fit.
    """
    settings = load_settings()
    job_id = _job_id(device_id, window_end)
    context = {"device_id": device_id, "job_id": job_id}
    summary: dict[str, Any] = {
        "job_id": job_id,
        "device_id": device_id,
        "model": model,
        "window_end": float(window_end),
        "skipped": False,
    }
    store = Store.from_url(settings.redis_url)
    try:
        if store.has_forecast(device_id, job_id):
            log.info(
                "forecast already stored, skipping fit device_id=%s job_id=%s",
                device_id,
                job_id,
                extra=context,
            )
            return {**summary, "skipped": True}

        readings = store.readings_between(
            device_id, float(window_end) - settings.training_seconds, float(window_end)
        )
        result = fit_and_forecast(
            readings, settings.horizon_seconds, settings.forecast_step_seconds
        )
        stored = store.put_forecast(
            device_id,
            job_id,
            {
                "job_id": job_id,
                "device_id": device_id,
                "model": model,
                "model_version": f"prophet-{result.prophet_version}",
                "window_start": float(window_start),
                "window_end": float(window_end),
                "trained_from": result.trained_from,
                "trained_until": result.trained_until,
                "training_points": result.training_points,
                "fit_seconds": result.fit_seconds,
                "created_at": time.time(),
                "points": result.points,
            },
        )
    finally:
        store.client.close()

    log.info(
        "forecast %s device_id=%s job_id=%s readings=%d fit_seconds=%.3f trained_until=%.0f",
        "stored" if stored else "already stored by another run",
        device_id,
        job_id,
        result.training_points,
        result.fit_seconds,
        result.trained_until,
        extra=context,
    )
    return {
        **summary,
        "stored": stored,
        "trained_until": result.trained_until,
        "points": len(result.points),
        "fit_seconds": result.fit_seconds,
    }
