"""Job-manager agent: readings -> prediction jobs on the RQ queue.

Per device, the ``last-processed`` table holds the event time where the last
window closed (``pipeline.windowing`` has the rule; the window length and the
model may be set per device). When a reading closes a window, the job is
enqueued by dotted path with a deterministic id and an idempotent enqueue, so
a reading redelivered after a crash or a rebalance enqueues nothing new. The
audit copy goes to the ``jobs`` topic once its delivery is acknowledged it is
recorded in Redis, so a redelivered reading does not audit the job again
(only a crash in the instant between the acknowledgement and the record can
repeat an audit message; consumers of ``jobs`` key on ``job_id``).
"""

from __future__ import annotations

import asyncio
import logging
import time

import redis

from pipeline.app import app, settings
from pipeline.queue import enqueue_prediction, job_id_for, make_queue
from pipeline.records import PredictionJob, Reading
from pipeline.retry import retry_until_done
from pipeline.storage import Keys
from pipeline.topics import jobs_topic, readings_topic
from pipeline.windowing import decide
from tables.pointers import jobs_emitted, last_processed, last_seen_wall, late_readings

log = logging.getLogger(__name__)

queue = make_queue(settings, redis.Redis.from_url(settings.redis_url, socket_timeout=10))


def job_for(device_id: str, window: tuple[float, float]) -> PredictionJob:
    """The prediction job of one device's window, with the device's model."""
    start, end = window
    return PredictionJob(
        job_id=job_id_for(device_id, end),
        device_id=device_id,
        window_start=start,
        window_end=end,
        model=settings.model_for(device_id),
    )


def _audited(job: PredictionJob) -> bool:
    return bool(queue.connection.sismember(Keys().jobs_audited(job.device_id), job.job_id))


def _record_audit(job: PredictionJob) -> None:
    queue.connection.sadd(Keys().jobs_audited(job.device_id), job.job_id)


async def audit(job: PredictionJob) -> bool:
    """Send the job's audit copy to the ``jobs`` topic unless it was sent before."""
    if await retry_until_done(lambda: asyncio.to_thread(_audited, job), "audit check", log):
        return False
    delivery = await jobs_topic.send(key=job.device_id, value=job)
    await delivery
    await retry_until_done(lambda: asyncio.to_thread(_record_audit, job), "audit record", log)
    return True


async def deploy(job: PredictionJob) -> bool:
    """Enqueue a job (waiting out a Redis outage); True if it was new."""
    enqueued = await retry_until_done(
        lambda: asyncio.to_thread(enqueue_prediction, queue, settings, job),
        f"enqueueing {job.job_id}",
        log,
    )
    log.info(
        "job %s device=%s window=%.0f..%.0f model=%s %s",
        job.job_id,
        job.device_id,
        job.window_start,
        job.window_end,
        job.model,
        "enqueued" if enqueued else "already enqueued",
    )
    return enqueued


@app.agent(readings_topic)
async def manage_jobs(stream) -> None:
    """Deploy a prediction job whenever a device's readings close a window."""
    reading: Reading
    async for reading in stream:
        device = reading.device_id
        decision = decide(
            last_processed.get(device),
            reading.time,
            settings.window_for(device),
            settings.start_time,
        )
        if decision.late:
            late_readings[device] += 1
            continue
        now = time.time()
        if now - last_seen_wall.get(device, 0.0) >= 1.0:  # one changelog write a second at most
            last_seen_wall[device] = now
        if decision.window is not None:
            job = job_for(device, decision.window)
            await deploy(job)
            if await audit(job):
                jobs_emitted[device] += 1
        if decision.pointer is not None:
            last_processed[device] = decision.pointer
