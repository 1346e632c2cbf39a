"""The prediction queue as operators need it: depth by state, failures, workers, jobs per device.

Everything here is read from RQ's own Redis structures without side effects:
registry counts and listings skip RQ's cleanup (which would move abandoned jobs
as a side effect of looking). Per-device job state comes from the job ids,
which encode (device, window end) (see ``pipeline.queue.job_id_for``), so no job
hash is fetched except for the few newest failures whose reasons are shown.
Listings are capped so that a large backlog costs a bounded read per refresh.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

import redis
from rq import Queue, Worker
from rq.job import Job
from rq.registry import FailedJobRegistry, FinishedJobRegistry, StartedJobRegistry
from rq.serializers import JSONSerializer

LISTED_JOBS = 5000  # per queue and state, for per-device job state
SHOWN_FAILURES = 5
_JOB_ID = re.compile(r"^forecast-(?P<device>.+)-(?P<whole>\d+)_(?P<frac>\d{3})$")
# On equal window ends the more advanced state wins.
STATE_RANK = {"failed": 0, "queued": 1, "started": 2, "finished": 3}


@dataclass(frozen=True)
class QueueDepth:
    name: str
    queued: int
    started: int
    finished: int
    failed: int
    workers: int


@dataclass(frozen=True)
class Failure:
    job_id: str
    device_id: str | None
    reason: str
    failed_at: float | None  # epoch seconds


@dataclass(frozen=True)
class JobsState:
    queues: tuple[QueueDepth, ...]
    failures: tuple[Failure, ...]  # newest first
    last_jobs: dict[str, tuple[str, float]]  # device -> (state, window end), unfinished only


def parse_job_id(job_id: str) -> tuple[str, float] | None:
    """(device as encoded in the id, window end) of a prediction job id, or None."""
    match = _JOB_ID.match(job_id)
    if match is None:
        return None
    return match["device"], float(f"{match['whole']}.{match['frac']}")


def device_lookup(devices: Iterable[str]) -> dict[str, str]:
    """Job ids encode a device id with dots as underscores: map that back."""
    return {device.replace(".", "_"): device for device in devices}


def _reason(job: Job) -> str:
    result = job.latest_result()
    text = (result.exc_string if result is not None else None) or "no reason recorded"
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no reason recorded"


def _failures(connection: redis.Redis, ids: list[str], lookup: dict[str, str]) -> list[Failure]:
    failures = []
    jobs = Job.fetch_many(ids, connection=connection, serializer=JSONSerializer)
    for job_id, job in zip(ids, jobs, strict=True):
        parsed = parse_job_id(job_id)
        device = lookup.get(parsed[0]) if parsed else None
        if job is None:
            failures.append(Failure(job_id, device, "job expired", None))
            continue
        ended = job.ended_at.timestamp() if job.ended_at else None
        failures.append(Failure(job_id, device, _reason(job), ended))
    return failures


def read_jobs(connection: redis.Redis, queue_names: list[str], devices: list[str]) -> JobsState:
    """Depth by state and workers per queue, newest failure reasons, unfinished jobs per device."""
    lookup = device_lookup(devices)
    depths, failed_ids = [], []
    last: dict[str, tuple[str, float]] = {}

    def note(state: str, job_ids: list[str]) -> None:
        for job_id in job_ids:
            parsed = parse_job_id(job_id)
            device = lookup.get(parsed[0]) if parsed else None
            if device is None:
                continue
            known = last.get(device)
            candidate = (state, parsed[1])
            if known is None or (parsed[1], STATE_RANK[state]) > (known[1], STATE_RANK[known[0]]):
                last[device] = candidate

    for name in queue_names:
        queue = Queue(name, connection=connection, serializer=JSONSerializer)
        started = StartedJobRegistry(queue=queue)
        failed = FailedJobRegistry(queue=queue)
        finished = FinishedJobRegistry(queue=queue)
        depths.append(
            QueueDepth(
                name=name,
                queued=queue.count,
                started=started.get_job_count(cleanup=False),
                finished=finished.get_job_count(cleanup=False),
                failed=failed.get_job_count(cleanup=False),
                workers=len(Worker.all(queue=queue)),
            )
        )
        newest_failed = failed.get_job_ids(0, LISTED_JOBS - 1, desc=True, cleanup=False)
        failed_ids.extend(newest_failed[:SHOWN_FAILURES])
        note("failed", newest_failed)
        note("queued", queue.get_job_ids(0, LISTED_JOBS - 1))
        note("started", started.get_job_ids(0, LISTED_JOBS - 1, cleanup=False))

    failures = _failures(connection, failed_ids, lookup) if failed_ids else []
    failures.sort(key=lambda f: f.failed_at or 0.0, reverse=True)
    return JobsState(tuple(depths), tuple(failures[:SHOWN_FAILURES]), last)
