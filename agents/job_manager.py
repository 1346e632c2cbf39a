"""Job-manager agent: readings -> prediction jobs on the RQ queue.

Per device, the ``last-processed`` table holds the event time where the last
window closed (``pipeline.windowing`` has the rule; the window length and the
model may be set per device). When a reading may close a window, the stored
readings in Redis settle which windows close (``catch_up``): a pointer restored
behind the jobs already enqueued, or readings the stream skipped after a crash
or a takeover, change nothing. Each job is enqueued by dotted path with a
deterministic id and an idempotent enqueue, so a reading redelivered after a
crash or a rebalance enqueues nothing new. The
audit copy goes to the ``jobs`` topic once its delivery is acknowledged it is
recorded in Redis, so a redelivered reading does not audit the job again
(only a crash in the instant between the acknowledgement and the record can
repeat an audit message; consumers of ``jobs`` key on ``job_id``).
"""

from __future__ import annotations

import asyncio
import logging
import time

from pipeline.app import app, settings
from pipeline.commit_gate import commit_gate
from pipeline.connections import redis_client
from pipeline.queue import enqueue_prediction, job_id_for, make_queue
from pipeline.records import PredictionJob, Reading
from pipeline.retry import retry_until_done
from pipeline.source.metrics import metrics as served_metrics
from pipeline.storage import Keys, Store
from pipeline.stream_metrics import JobManagerMetrics
from pipeline.topics import jobs_topic, readings_topic
from pipeline.windowing import windows_through
from tables.pointers import jobs_emitted, last_processed, last_seen_wall, late_readings

log = logging.getLogger(__name__)

queue = make_queue(settings, redis_client(settings, socket_timeout=10))
metrics = JobManagerMetrics(served_metrics.registry)  # served at /metrics with the others


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
        "job %s window=%.0f..%.0f model=%s %s",
        job.job_id,
        job.window_start,
        job.window_end,
        job.model,
        "enqueued" if enqueued else "already enqueued",
        extra={"device_id": job.device_id, "job_id": job.job_id},
    )
    return enqueued


def catch_up(device_id: str, pointer: float | None, until: float) -> tuple[float | None, list]:
    """The pointer and the windows to deploy once the device's readings up to ``until``
    are applied, with Redis as the record of what happened.

    Called when a reading may close a window (or the device has no pointer). The
    table's pointer can be behind what was already done, or the stream can have
    skipped readings, after a crash or a takeover (a changelog write or a reading
    not committed in time). Redis knows both: the pointer is at least the latest
    window end ever enqueued (``job-windows:{d}``), a device without a pointer
    starts at its first stored reading, and windows close at the stored readings
    up to ``until`` (ingest stores each reading before forwarding it). So a worker
    deploys the windows the arithmetic over all readings gives, whichever readings
    its stream redelivered or missed.
    """
    store = Store(queue.connection)
    enqueued = store.last_enqueued_window_end(device_id)
    if enqueued is not None and (pointer is None or enqueued > pointer):
        pointer = enqueued
    if pointer is None:
        pointer = store.first_time(device_id)
    if pointer is None or until <= pointer:
        return (until if pointer is None else pointer), []
    times = [*store.times_between(device_id, pointer, until), until]
    return windows_through(pointer, times, settings.window_for(device_id), settings.start_time)


async def process(reading: Reading) -> None:
    """Apply one reading to its device's pointer, deploying the windows it closes."""
    device = reading.device_id
    pointer = last_processed.get(device)
    if pointer is not None and reading.time <= pointer:
        late_readings[device] += 1
        metrics.late_readings.labels(device=device).inc()
        return
    now = time.time()
    if now - last_seen_wall.get(device, 0.0) >= 1.0:  # one changelog write a second at most
        last_seen_wall[device] = now
    if pointer is not None and reading.time - pointer < settings.window_for(device):
        return  # no window can close: nothing to look up
    new_pointer, windows = await retry_until_done(
        lambda: asyncio.to_thread(catch_up, device, pointer, reading.time),
        f"reading the stored readings of {device}",
        log,
    )
    for window in windows:
        job = job_for(device, window)
        await deploy(job)
        if await audit(job):
            jobs_emitted[device] += 1
            metrics.jobs_emitted.labels(device=device, model=job.model).inc()
    if new_pointer is not None and new_pointer != pointer:
        last_processed[device] = new_pointer


@app.agent(readings_topic)
async def manage_jobs(stream) -> None:
    """Deploy a prediction job whenever a device's readings close a window."""
    reading: Reading
    async for reading in stream:
        async with commit_gate.event():
            await process(reading)
