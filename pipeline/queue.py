"""The Redis job queue between the job manager and the prediction workers.

Jobs are enqueued by dotted path (the job manager never imports model code),
with JSON arguments (RQ's JSON serializer, never pickle) and a job id derived
from (device, window end), so the same window always maps to the same job and
enqueueing it twice is a no-op.
"""

from __future__ import annotations

import logging

import redis
from rq import Queue
from rq.job import Job
from rq.serializers import JSONSerializer

from pipeline.records import PredictionJob
from pipeline.settings import Settings
from pipeline.storage import Store

log = logging.getLogger(__name__)


def job_id_for(device_id: str, window_end: float) -> str:
    """Deterministic job id: one job per device and window end, ever."""
    return f"forecast-{device_id}-{window_end:.3f}".replace(".", "_")


def make_queue(settings: Settings, connection: redis.Redis) -> Queue:
    """The prediction queue, JSON-serialized, as both producer and workers see it."""
    return Queue(
        settings.queue_name,
        connection=connection,
        serializer=JSONSerializer,
        default_timeout=int(settings.job_timeout_seconds),
    )


def enqueue_prediction(queue: Queue, settings: Settings, job: PredictionJob) -> bool:
    """Put a prediction job on the queue unless it is already there or done.

    Returns True if the job was enqueued now, False if it already existed (a
    redelivered reading after a crash or rebalance) or its forecast is stored.
    """
    connection = queue.connection
    if Job.exists(job.job_id, connection=connection):
        log.info("job already enqueued, skipping", extra={"job_id": job.job_id})
        return False
    if Store(connection).has_forecast(job.device_id, job.job_id):
        log.info("forecast already stored, skipping", extra={"job_id": job.job_id})
        return False
    queue.enqueue_call(
        settings.model_path(job.model),
        kwargs={
            "device_id": job.device_id,
            "window_start": job.window_start,
            "window_end": job.window_end,
            "model": job.model,
        },
        job_id=job.job_id,
        timeout=int(settings.job_timeout_seconds),
        result_ttl=86400,
        failure_ttl=7 * 86400,
        description=f"{job.model} forecast for {job.device_id} up to {job.window_end:.0f}",
    )
    return True
