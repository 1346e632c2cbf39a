"""``pipeline services up|down|status``: the local Kafka and Redis by hand.

The README, the test command and CI start the services the same way, so a
failure seen in CI can be reproduced with the same command on a laptop.
"""

from __future__ import annotations

import argparse
import shlex
import sys

from pipeline import services
from pipeline.services.secure import client_environment, secured
from pipeline.settings import Settings, load_settings


def _settings(args: argparse.Namespace) -> Settings:
    """The settings, with the secured links filled in under ``--secure``."""
    settings = load_settings(args.config)
    return secured(settings) if args.secure else settings


def _print_status(report: list[services.ServiceStatus]) -> bool:
    for service in report:
        print(service)
    return all(service.ok for service in report)


def up(args: argparse.Namespace) -> int:
    """Start what is not running, wait until both answer, print where they are."""
    try:
        settings = _settings(args)
        services.ensure_running(settings, kafka_controller_port=args.controller_port)
    except services.ServiceError as exc:
        print(f"pipeline services up: {exc}", file=sys.stderr)
        return 1
    ok = _print_status(services.status(settings))
    if args.secure:
        print("# every role reaches these services with (plus the two passwords):")
        for name, value in client_environment(settings).items():
            print(f"export {name}={shlex.quote(value)}")
    return 0 if ok else 1


def down(args: argparse.Namespace) -> int:
    """Stop what this project started (by pid file: no login needed, secured or not)."""
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
    try:
        settings = _settings(args)
    except services.ServiceError as exc:
        print(f"pipeline services status: {exc}", file=sys.stderr)
        return 3
    return 0 if _print_status(services.status(settings)) else 3


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
    secure = argparse.ArgumentParser(add_help=False)
    secure.add_argument(
        "--secure",
        action="store_true",
        help="authenticated, encrypted links: Kafka on SASL_SSL (SCRAM-SHA-512) and Redis on "
        "TLS with an ACL user, certificates from a local CA in <data_dir>/services/tls; "
        "passwords from PIPELINE_KAFKA_PASSWORD and PIPELINE_REDIS_PASSWORD. Settings "
        "already given (protocol, mechanism, users, CA files) are kept",
    )

    start = actions.add_parser(
        "up",
        parents=[secure],
        help="start Kafka and Redis unless they already answer",
        description="Start whichever of Kafka and Redis does not answer at the addresses in "
        "the settings (broker, redis_url), wait until both answer, then print their status. "
        "The first run downloads Kafka's jars with mvn into $PIPELINE_CACHE_DIR "
        "(default ~/.cache/sensor-forecasts). The servers listen the way the settings "
        "connect: kafka_security_protocol, a rediss:// redis_url, redis_password; with "
        "--secure, the settings to export for every role are printed.",
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
        parents=[secure],
        help="show whether Kafka and Redis are running",
        description="Print one line per service: name, state, address, pid and data folder. "
        "Exit status 0 if both answer, 3 otherwise.",
    ).set_defaults(handler=status)
