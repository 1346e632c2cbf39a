"""Job-manager agent: readings -> prediction jobs on the RQ queue.

Per device, the ``last-processed`` table holds the event time where the last
window closed (``pipeline.windowing`` has the rule). When a reading closes a
window, the job is enqueued by dotted path with a deterministic id, so a
reading redelivered after a crash finds the job already there and enqueues
nothing; the audit copy goes to the ``jobs`` topic in the same Kafka
transaction as the pointer update.
"""

from __future__ import annotations

import asyncio
import logging

import redis

from pipeline.app import app, settings
from pipeline.queue import enqueue_prediction, job_id_for, make_queue
from pipeline.records import PredictionJob, Reading
from pipeline.retry import retry_until_done
from pipeline.topics import jobs_topic, readings_topic
from pipeline.windowing import decide
from tables.pointers import jobs_emitted, last_processed

log = logging.getLogger(__name__)

queue = make_queue(settings, redis.Redis.from_url(settings.redis_url, socket_timeout=10))


def _job_for(reading: Reading, window: tuple[float, float]) -> PredictionJob:
    start, end = window
    return PredictionJob(
        job_id=job_id_for(reading.device_id, end),
        device_id=reading.device_id,
        window_start=start,
        window_end=end,
        model=settings.default_model,
    )


@app.agent(readings_topic)
async def manage_jobs(stream) -> None:
    """Deploy a prediction job whenever a device's readings close a window."""
    async for reading in stream:
        decision = decide(
            last_processed.get(reading.device_id),
            reading.time,
            settings.job_window_seconds,
            settings.start_time,
        )
        if decision.late:
            log.info(
                "late reading of %s at %s ignored for windowing", reading.device_id, reading.time
            )
        if decision.window is not None:
            job = _job_for(reading, decision.window)
            enqueued = await retry_until_done(
                lambda j=job: asyncio.to_thread(enqueue_prediction, queue, settings, j),
                f"enqueueing {job.job_id}",
                log,
            )
            log.info(
                "job %s for %s window %.0f..%.0f %s",
                job.job_id,
                job.device_id,
                job.window_start,
                job.window_end,
                "enqueued" if enqueued else "already known",
            )
            await jobs_topic.send(key=job.device_id, value=job)
            jobs_emitted[reading.device_id] += 1
        if decision.pointer is not None:
            last_processed[reading.device_id] = decision.pointer
