"""The Redis job queue between the job manager and the prediction workers.

Jobs are enqueued by dotted path (the job manager never imports model code),
with JSON arguments (RQ's JSON serializer, never pickle) and a job id derived
from (device, window end), so the same window always maps to the same job and
enqueueing it twice is a no-op.
"""

from __future__ import annotations

import contextlib
import logging

import redis
from rq import Queue, Retry
from rq.exceptions import DuplicateJobError, NoSuchJobError
from rq.job import Job
from rq.serializers import JSONSerializer

from pipeline.records import PredictionJob
from pipeline.settings import Settings
from pipeline.storage import Keys

log = logging.getLogger(__name__)


def retry_policy(settings: Settings) -> Retry | None:
    """Re-runs of a job that failed transiently or whose worker died, waiting
    job_retry_seconds, then twice that, and so on (bad input is never re-run:
    see ``pipeline.prediction.failures``)."""
    if settings.job_retries == 0:
        return None
    first = max(1, round(settings.job_retry_seconds))
    waits = [first * 2**n for n in range(settings.job_retries)]
    return Retry(max=settings.job_retries, interval=waits)


def job_id_for(device_id: str, window_end: float) -> str:
    """Deterministic job id: one job per device and window end, ever."""
    return f"forecast-{device_id}-{window_end:.3f}".replace(".", "_")


def make_queue(settings: Settings, connection: redis.Redis, name: str | None = None) -> Queue:
    """A prediction queue, JSON-serialized, as both producer and workers see it."""
    return Queue(
        name or settings.queue_name,
        connection=connection,
        serializer=JSONSerializer,
        default_timeout=int(settings.job_timeout_seconds),
    )


def enqueue_prediction(queue: Queue, settings: Settings, job: PredictionJob) -> bool:
    """Put a prediction job on the queue unless it is already there or done.

    Returns True if the job was enqueued now, False if it was enqueued before
    (a reading redelivered after a crash or rebalance). The check is RQ's atomic
    unique enqueue, backed by a permanent per-device record of job ids, so a
    job is never enqueued twice even after RQ has expired its hash.
    """
    connection = queue.connection
    if connection.sismember(Keys().jobs(job.device_id), job.job_id):
        log.info("job %s already enqueued once, skipping", job.job_id)
        return False
    if queue.name != settings.queue_for(job.model):
        queue = make_queue(settings, connection, settings.queue_for(job.model))
    try:
        _enqueue_unique(queue, settings, job)
    except DuplicateJobError:
        log.info("job %s already on the queue, recording it", job.job_id)
        _record(connection, job)
        return False
    _record(connection, job)
    return True


def _record(connection: redis.Redis, job: PredictionJob) -> None:
    """Remember the job for good: its id, and its window end for the job manager's pointer."""
    keys = Keys()
    pipe = connection.pipeline()  # MULTI: both or neither
    pipe.sadd(keys.jobs(job.device_id), job.job_id)
    pipe.zadd(keys.job_windows(job.device_id), {job.job_id: job.window_end})
    pipe.execute()


def forget_job(connection: redis.Redis, device_id: str, job_id: str) -> None:
    """Drop every trace of a job so that a forced replay can run it again."""
    pipe = connection.pipeline()
    pipe.srem(Keys().jobs(device_id), job_id)
    pipe.zrem(Keys().job_windows(device_id), job_id)
    pipe.srem(Keys().jobs_audited(device_id), job_id)
    pipe.hdel(Keys().forecasts(device_id), job_id)
    pipe.execute()
    with contextlib.suppress(NoSuchJobError):
        Job.fetch(job_id, connection=connection, serializer=JSONSerializer).delete()


def _enqueue_unique(queue: Queue, settings: Settings, job: PredictionJob) -> None:
    """RQ's atomic unique enqueue: raises DuplicateJobError if the id exists."""
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
        retry=retry_policy(settings),
        description=f"{job.model} forecast for {job.device_id} up to {job.window_end:.0f}",
        unique=True,
    )
