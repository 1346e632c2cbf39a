"""The ``pipeline prediction-worker`` command: an RQ worker for the forecast queue.

The worker uses RQ's JSON serializer for jobs and results, so it never
unpickles anything it reads from Redis. Each job runs in a forked work horse
(RQ's default, which also enforces the job timeout); the model modules are
imported once in the parent beforehand so that every fork starts with Prophet
already loaded instead of paying seconds of imports per job.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

import redis
from rq import Worker
from rq.serializers import JSONSerializer

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
            "Take prediction jobs from the Redis queue (settings: redis_url, queue_name), "
            "fit the job's model and store its forecast. Start as many as you have cores."
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
    connection = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=5)
    try:
        connection.ping()
    except redis.RedisError as exc:
        where = "{host}:{port}/{db}".format(**connection.connection_pool.connection_kwargs)
        print(f"prediction-worker: Redis unreachable at {where}: {exc}", file=sys.stderr)
        return 1
    _preload_models(settings)
    worker = Worker(
        [make_queue(settings, connection)],
        connection=connection,
        name=args.name,
        serializer=JSONSerializer,
    )
    log.info("prediction worker %s on queue %s", worker.name, settings.queue_name)
    worker.work(burst=args.burst, logging_level=args.log_level.upper(), with_scheduler=False)
    return 0
