"""The forecast worker as operators see it: Prometheus metrics and tagged log lines.

Each job runs in a forked work horse, so counters kept in the horse would die
with it. The parent process therefore measures each job around RQ's
``execute_job`` (fork, wait, clean-up) and reads the outcome RQ stored in
Redis afterwards: status, the job's return value (its fit seconds) or the
failure's exception line. Queue state is not counted at all but read from
RQ's registries at scrape time (``QueueCollector``), so every worker reports
the same truth and nothing drifts after a restart: aggregate those series
with ``max``, not ``sum``.

Served at ``http://<worker>:<worker_metrics_port>/metrics``.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from rq import Queue, Worker
from rq.job import Job, JobStatus
from rq.registry import (
    DeferredJobRegistry,
    FailedJobRegistry,
    FinishedJobRegistry,
    ScheduledJobRegistry,
    StartedJobRegistry,
)

from pipeline.logs import job_context
from pipeline.prediction.reaper import ForecastWorker

FIT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
REGISTRIES = {
    "started": StartedJobRegistry,
    "scheduled": ScheduledJobRegistry,
    "deferred": DeferredJobRegistry,
    "finished": FinishedJobRegistry,
    "failed": FailedJobRegistry,
}


def failure_reason(exc_string: str | None) -> str:
    """A short, low-cardinality reason: the exception's class name.

    ``"TooFewPoints: need at least 10 ..."`` -> ``TooFewPoints``; RQ's own
    message for a killed horse -> ``WorkHorseTerminated``.
    """
    if not exc_string:
        return "unknown"
    if exc_string.startswith("Work-horse terminated"):
        return "WorkHorseTerminated"
    last = exc_string.strip().splitlines()[-1]
    name = last.partition(":")[0].strip().rpartition(".")[2]
    return name if name.isidentifier() else "unknown"


def fits_of(result: Any, model: str) -> dict[str, float]:
    """Model -> fit seconds from a job's return value.

    A job that fits one model returns ``fit_seconds``; one that fits several
    (the ``auto`` model) returns ``fits``, a mapping of model to its summary or
    seconds. A job that found its forecast stored already (``skipped``) fitted nothing.
    """
    if not isinstance(result, dict) or result.get("skipped"):
        return {}
    fits = result.get("fits")
    if isinstance(fits, dict):
        out = {}
        for name, fit in fits.items():
            seconds = fit.get("fit_seconds") if isinstance(fit, dict) else fit
            if isinstance(seconds, int | float):
                out[str(name)] = float(seconds)
        return out
    seconds = result.get("fit_seconds")
    return {model: float(seconds)} if isinstance(seconds, int | float) else {}


class WorkerMetrics:
    """What this worker did: jobs by outcome, job and fit durations, failures by reason."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.jobs = Counter(
            "prediction_jobs",
            "Jobs this worker ran to an end, by queue, model and outcome "
            "(finished, failed, retried: failed and scheduled to run again)",
            ["queue", "model", "outcome"],
            registry=self.registry,
        )
        self.failures = Counter(
            "prediction_job_failures",
            "Failed runs by reason (the exception's class; WorkHorseTerminated if killed)",
            ["queue", "reason"],
            registry=self.registry,
        )
        self.job_seconds = Histogram(
            "prediction_job_seconds",
            "Wall time of a job: fork, load readings, fit, store",
            ["model"],
            buckets=FIT_BUCKETS,
            registry=self.registry,
        )
        self.fit_seconds = Histogram(
            "prediction_fit_seconds",
            "Time spent fitting and predicting, as the model reported it",
            ["model"],
            buckets=FIT_BUCKETS,
            registry=self.registry,
        )

    def observe(self, job: Job, queue: str, seconds: float) -> None:
        """Record one job's outcome from what RQ stored for it."""
        model = str((job.kwargs or {}).get("model", "unknown"))
        self.job_seconds.labels(model=model).observe(seconds)
        status = job.get_status(refresh=True)
        if status == JobStatus.FINISHED:
            self.jobs.labels(queue=queue, model=model, outcome="finished").inc()
            for fitted, seconds in fits_of(job.return_value(refresh=True), model).items():
                self.fit_seconds.labels(model=fitted).observe(seconds)
            return
        latest = job.latest_result()
        reason = failure_reason(latest.exc_string if latest is not None else None)
        self.failures.labels(queue=queue, reason=reason).inc()
        outcome = "retried" if status in (JobStatus.SCHEDULED, JobStatus.QUEUED) else "failed"
        self.jobs.labels(queue=queue, model=model, outcome=outcome).inc()


class QueueCollector(Collector):
    """Queue depth by state, the oldest waiting job's age and live workers, read at scrape."""

    def __init__(self, queues: Sequence[Queue]) -> None:
        self.queues = list(queues)

    def collect(self) -> Iterable[Metric]:
        depth = GaugeMetricFamily(
            "prediction_queue_jobs",
            "Jobs on each prediction queue by state (RQ registries)",
            labels=["queue", "state"],
        )
        age = GaugeMetricFamily(
            "prediction_queue_oldest_job_age_seconds",
            "How long the job at the head of the queue has waited (0 when empty)",
            labels=["queue"],
        )
        workers = GaugeMetricFamily(
            "prediction_workers", "Workers registered on each queue", labels=["queue"]
        )
        now = time.time()
        for queue in self.queues:
            depth.add_metric([queue.name, "queued"], queue.count)
            for state, registry in REGISTRIES.items():
                count = registry(queue=queue, serializer=queue.serializer).count
                depth.add_metric([queue.name, state], count)
            age.add_metric([queue.name], _oldest_age(queue, now))
            workers.add_metric([queue.name], Worker.count(queue=queue))
        yield depth
        yield age
        yield workers


def _oldest_age(queue: Queue, now: float) -> float:
    for job_id in queue.get_job_ids(0, 1):
        job = queue.fetch_job(job_id)
        if job is not None and job.enqueued_at is not None:
            return max(0.0, now - job.enqueued_at.timestamp())
    return 0.0


class ObservedWorker(ForecastWorker):
    """ForecastWorker that measures each job and tags the horse's log lines with it."""

    def __init__(self, *args, metrics: WorkerMetrics, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.metrics = metrics

    def execute_job(self, job: Job, queue: Queue) -> None:
        started = time.monotonic()
        try:
            super().execute_job(job, queue)
        finally:
            self.metrics.observe(job, queue.name, time.monotonic() - started)

    def perform_job(self, job: Job, queue: Queue) -> bool:
        """Runs in the work horse: every line logged during the job names it."""
        device = str((job.kwargs or {}).get("device_id", ""))
        with job_context(job_id=job.id, device_id=device):
            return super().perform_job(job, queue)


def serve(metrics: WorkerMetrics, queues: Sequence[Queue], port: int, address: str) -> None:
    """Serve this worker's metrics and the queue state on ``address:port`` (a daemon thread)."""
    metrics.registry.register(QueueCollector(queues))
    start_http_server(port, addr=address, registry=metrics.registry)
