"""Replay agent: reset a device's job pointer and re-deploy its jobs from there.

This is the seed design's start-time override, made safe for a running
cluster: a request travels on ``replay-requests`` keyed by device, so it is
handled by the worker that owns the device's pointer (the topic is
co-partitioned with ``readings``). The windows are recomputed over the readings
stored in Redis from the first one at or after ``from_time`` to the newest;
each window's job is enqueued idempotently, so jobs that already ran are not
repeated unless the request says ``force``. Readings that later arrive at or
before the new pointer count as late and deploy nothing.
"""

from __future__ import annotations

import asyncio
import logging

from agents import job_manager
from pipeline.app import app, settings
from pipeline.commit_gate import commit_gate
from pipeline.queue import forget_job
from pipeline.records import ReplayRequest
from pipeline.storage import Store
from pipeline.topics import replay_topic
from pipeline.windowing import expected_windows
from tables.pointers import jobs_emitted, last_processed

log = logging.getLogger(__name__)


def stored_times(device_id: str, from_time: float) -> list[float]:
    """Event times of the device's stored readings at or after ``from_time``."""
    readings = Store(job_manager.queue.connection).readings_between(device_id, from_time)
    return [r["time"] for r in readings]


async def replay_device(request: ReplayRequest) -> None:
    """Recompute one device's windows from the requested time and deploy their jobs."""
    device = request.device_id
    times = await asyncio.to_thread(stored_times, device, request.from_time)
    if not times:
        log.warning("replay of %s from %.0f: no stored readings", device, request.from_time)
        return
    windows = expected_windows(times, settings.window_for(device), settings.start_time)
    deployed = 0
    for window in windows:
        job = job_manager.job_for(device, window)
        if request.force:
            connection = job_manager.queue.connection
            await asyncio.to_thread(forget_job, connection, device, job.job_id)
        await job_manager.deploy(job)
        if await job_manager.audit(job):
            deployed += 1
    jobs_emitted[device] += deployed
    last_processed[device] = windows[-1][1] if windows else times[0]
    log.info(
        "replayed %s from %.0f: %d windows, %d jobs deployed, pointer now %.0f",
        device,
        request.from_time,
        len(windows),
        deployed,
        last_processed[device],
    )


@app.agent(replay_topic)
async def replay(stream) -> None:
    """Recompute one device's windows from a time and deploy their jobs."""
    request: ReplayRequest
    async for request in stream:
        async with commit_gate.event():
            await replay_device(request)
