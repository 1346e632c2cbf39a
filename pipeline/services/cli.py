"""``pipeline services up|down|status``: the local Kafka and Redis by hand.

The README, the test command and CI start the services the same way, so a
failure seen in CI can be reproduced with the same command on a laptop.
"""

from __future__ import annotations

import argparse
import sys

from pipeline import services
from pipeline.settings import load_settings


def _print_status(report: list[services.ServiceStatus]) -> bool:
    for service in report:
        print(service)
    return all(service.ok for service in report)


def up(args: argparse.Namespace) -> int:
    """Start what is not running, wait until both answer, print where they are."""
    settings = load_settings(args.config)
    try:
        services.ensure_running(settings, kafka_controller_port=args.controller_port)
    except services.ServiceError as exc:
        print(f"pipeline services up: {exc}", file=sys.stderr)
        return 1
    return 0 if _print_status(services.status(settings)) else 1


def down(args: argparse.Namespace) -> int:
    """Stop what this project started."""
    settings = load_settings(args.config)
    try:
        services.stop(settings)
    except services.ServiceError as exc:
        print(f"pipeline services down: {exc}", file=sys.stderr)
        return 1
    _print_status(services.status(settings))
    return 0


def status(args: argparse.Namespace) -> int:
    """Print one line per service; exit 3 if one does not answer, as init scripts do."""
    return 0 if _print_status(services.status(load_settings(args.config))) else 3


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``services`` command with its ``up``, ``down`` and ``status`` actions."""
    parser = subparsers.add_parser(
        "services",
        help="start, stop or inspect the local Kafka and Redis",
        description="Run a single-node Kafka (KRaft) and a redis-server for this project, "
        "with their data under <data_dir>/services. Whatever already answers on the "
        "configured addresses is reused.",
    )
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")

    start = actions.add_parser(
        "up",
        help="start Kafka and Redis unless they already answer",
        description="Start whichever of Kafka and Redis does not answer at the addresses in "
        "the settings (broker, redis_url), wait until both answer, then print their status. "
        "The first run downloads Kafka's jars with mvn into $PIPELINE_CACHE_DIR "
        "(default ~/.cache/sensor-forecasts).",
    )
    start.add_argument(
        "--controller-port",
        type=int,
        metavar="PORT",
        help="port of Kafka's controller listener (default: the broker port + 1)",
    )
    start.set_defaults(handler=up)

    actions.add_parser(
        "down",
        help="stop the Kafka and Redis this project started",
        description="Stop the Kafka and Redis that `services up` started (SIGTERM, then "
        "SIGKILL after a grace period). Services started by someone else are left running.",
    ).set_defaults(handler=down)

    actions.add_parser(
        "status",
        help="show whether Kafka and Redis are running",
        description="Print one line per service: name, state, address, pid and data folder. "
        "Exit status 0 if both answer, 3 otherwise.",
    ).set_defaults(handler=status)
