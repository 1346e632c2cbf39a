"""Jobs whose worker died: detected promptly, run again, never lost.

When a worker is killed mid-fit (SIGKILL, OOM, a lost node), RQ notices in one
of two ways. If only the work horse died, its worker records "Work-horse
terminated unexpectedly" at once. If the whole worker died, the job stays in
the started registry until its heartbeat lease expires; the next registry sweep
then records an ``AbandonedJobError``. In both cases RQ 2 re-runs the job if it
has retries left (``pipeline.queue.retry_policy``), else it lands in the failed
registry.

``ForecastWorker`` makes both paths quick and complete: the lease is two missed
heartbeats instead of RQ's fixed minute, the registries are swept every two
heartbeats instead of every ten minutes, and each sweep requeues failed jobs
whose last failure was a lost worker, up to ``lost_job_reruns`` times per job,
so a job whose retries were spent on transient failures still comes back, while
a job that kills every worker it runs on (a poison job) stops eventually. A job
that runs again finds its forecast already stored if the dead run stored it
(``pipeline.prediction.jobs``), so no forecast is ever written twice.
"""

from __future__ import annotations

import logging

from rq import Queue, Worker
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Job
from rq.registry import FailedJobRegistry

from pipeline.prediction.command_channel import PromptExit

log = logging.getLogger(__name__)

LOST_WORKER_MARKERS = ("AbandonedJobError", "Work-horse terminated unexpectedly")
LOST_RERUNS_META = "lost_worker_reruns"
# Failed jobs inspected per sweep at most, newest first. Each worker remembers the
# newest failure it inspected and later looks only at failures added since.
NEWEST_FAILURES_CHECKED = 200


def lost_worker(job: Job) -> bool:
    """Whether the job's last failure was its worker dying rather than its own error."""
    result = job.latest_result()
    reason = result.exc_string if result is not None else None
    return bool(reason) and any(marker in reason for marker in LOST_WORKER_MARKERS)


def requeue_lost_jobs(
    queue: Queue, max_reruns: int, since: float | None = None
) -> tuple[list[str], float | None]:
    """Requeue failed jobs of ``queue`` that lost their worker.

    Only failures whose registry score (failure time plus its TTL, in whole
    seconds) is at least ``since`` are inspected. Returns the requeued job ids
    and the highest score inspected, to pass as ``since`` next time.
    """
    registry = FailedJobRegistry(queue=queue)
    entries = queue.connection.zrevrangebyscore(
        registry.key,
        "+inf",
        "-inf" if since is None else since,
        start=0,
        num=NEWEST_FAILURES_CHECKED,
        withscores=True,
    )
    requeued = []
    for member, _ in entries:
        job_id = member.decode()
        try:
            job = Job.fetch(job_id, connection=queue.connection, serializer=queue.serializer)
        except NoSuchJobError:
            continue
        reruns = int(job.meta.get(LOST_RERUNS_META, 0))
        if reruns >= max_reruns or not lost_worker(job):
            continue
        try:
            registry.requeue(job)
        except InvalidJobOperation:  # another worker's sweep requeued it first
            continue
        job.meta[LOST_RERUNS_META] = reruns + 1
        job.save_meta()
        requeued.append(job_id)
        log.warning("job %s lost its worker: requeued (re-run %d)", job_id, reruns + 1)
    return requeued, (entries[0][1] if entries else since)


class ForecastWorker(PromptExit, Worker):
    """An RQ worker that re-runs the jobs of dead workers within seconds (and exits
    promptly: ``pipeline.prediction.command_channel``)."""

    def __init__(self, *args, lost_job_reruns: int, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.lost_job_reruns = lost_job_reruns
        self._failures_inspected: dict[str, float | None] = {}

    def get_heartbeat_ttl(self, job: Job) -> int:
        """The lease of a running job: until two heartbeats after the next one."""
        beat = self.job_monitoring_interval
        if job.timeout and job.timeout > 0:
            remaining = max(0, job.timeout - self.current_job_working_time)
            return int(min(remaining, beat)) + 2 * beat
        return 3 * beat

    def run_maintenance_tasks(self) -> None:
        """RQ's registry sweep (abandoned jobs are retried there), then the lost-job requeue."""
        super().run_maintenance_tasks()
        for queue in self.queues:
            _, self._failures_inspected[queue.name] = requeue_lost_jobs(
                queue, self.lost_job_reruns, self._failures_inspected.get(queue.name)
            )
