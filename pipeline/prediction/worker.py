"""The ``pipeline prediction-worker`` command: an RQ worker for the forecast queues.

The worker uses RQ's JSON serializer for jobs and results, so it never
unpickles anything it reads from Redis. Each job runs in a forked work horse
(RQ's default, which also enforces the job timeout); the model modules are
imported once in the parent beforehand so that every fork starts with Prophet
already loaded instead of paying seconds of imports per job.

Start as many workers as there are cores, on one machine or many: RQ hands each
job to exactly one of them. Re-runs wait in RQ's scheduled registry, so every
worker also offers to run RQ's scheduler: one holds its lock at a time, and if
that worker dies, another takes over once the lock expires (about a minute:
RQ's fixed lease), so re-runs are delayed then, never lost. Bad input is failed at once
(``pipeline.prediction.failures``); the jobs of a worker that died are re-run
(``pipeline.prediction.reaper``). SIGTERM is a warm shutdown: the worker
finishes its current job, then exits; a second SIGTERM or SIGINT abandons the
job, which is then re-run elsewhere as a lost one.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

import redis
from rq.serializers import JSONSerializer

from pipeline.connections import redis_client
from pipeline.prediction.failures import no_retry_for_bad_input
from pipeline.prediction.observed_worker import ObservedWorker, WorkerMetrics
from pipeline.prediction.observed_worker import serve as serve_metrics
from pipeline.queue import make_queue
from pipeline.settings import Settings, load_settings

log = logging.getLogger(__name__)

LOG_LEVELS = ("debug", "info", "warning", "error")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``prediction-worker`` subcommand to the ``pipeline`` CLI."""
    parser = subparsers.add_parser(
        "prediction-worker",
        help="run a worker that fits forecasts from the prediction queue",
        description=(
            "Take prediction jobs from the Redis queues (settings: redis_url, queue_name, "
            "model_queues), fit the job's model and store its forecast. Start as many as you "
            "have cores. SIGTERM finishes the current job, then exits."
        ),
    )
    parser.add_argument(
        "--burst",
        action="store_true",
        help="exit when the queue is empty instead of waiting for more jobs",
    )
    parser.add_argument(
        "--name",
        default=None,
        help="worker name shown by `rq info` (default: a random unique name)",
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        help="port of this worker's Prometheus /metrics (default: worker_metrics_port, 9100; "
        "0 turns it off)",
    )
    parser.add_argument(
        "--metrics-address",
        default="127.0.0.1",
        help="address the metrics server binds (default: 127.0.0.1; 0.0.0.0 lets a "
        "Prometheus on another host scrape it)",
    )
    parser.add_argument(
        "--log-level",
        # Suppressed default: without the option, the global --log-level stands.
        default=argparse.SUPPRESS,
        type=str.lower,
        choices=LOG_LEVELS,
        help="log level of the worker and its jobs (default: the global --log-level, info)",
    )
    parser.set_defaults(handler=run)


def _preload_models(settings: Settings) -> None:
    """Import every registered job function's module before forking work horses."""
    for path in settings.models.values():
        importlib.import_module(path.rpartition(".")[0])


def run(args: argparse.Namespace) -> int:
    """Work the prediction queue until stopped (or, with --burst, until it is empty).

    Logging is configured by the ``pipeline`` command; RQ only sets its own
    loggers' level here and adds no handler where one is already in place.
    """
    settings = load_settings(args.config)
    connection = redis_client(settings, socket_connect_timeout=5)
    try:
        connection.ping()
    except redis.RedisError as exc:
        where = "{host}:{port}/{db}".format(**connection.connection_pool.connection_kwargs)
        print(f"prediction-worker: Redis unreachable at {where}: {exc}", file=sys.stderr)
        return 1
    _preload_models(settings)
    worker = build_worker(settings, connection, args.name)
    port = settings.worker_metrics_port if args.metrics_port is None else args.metrics_port
    if port:
        try:
            serve_metrics(worker.metrics, worker.queues, port, args.metrics_address)
        except OSError as exc:
            log.warning(
                "metrics not served: port %d unavailable (%s); set worker_metrics_port "
                "or --metrics-port",
                port,
                exc.strerror,
            )
    log.info(
        "prediction worker %s on queues %s, metrics on port %s",
        worker.name,
        ", ".join(worker.queue_names()),
        port or "(off)",
    )
    worker.work(burst=args.burst, logging_level=args.log_level.upper(), with_scheduler=True)
    return 0


def build_worker(
    settings: Settings, connection: redis.Redis, name: str | None = None
) -> ObservedWorker:
    """A worker on every prediction queue, with this project's failure handling and metrics."""
    heartbeat = settings.worker_heartbeat_seconds
    return ObservedWorker(
        [make_queue(settings, connection, queue) for queue in settings.queues()],
        connection=connection,
        name=name,
        serializer=JSONSerializer,
        exception_handlers=[no_retry_for_bad_input],
        job_monitoring_interval=heartbeat,
        maintenance_interval=2 * heartbeat,
        # An idle worker blocks on the queue for worker_ttl - 15 s between sweeps.
        worker_ttl=2 * heartbeat + 15,
        lost_job_reruns=settings.job_retries,
        metrics=WorkerMetrics(),
    )
