"""``pipeline health [ROLE]``: exit 0 when a role's process on this host is healthy.

One check per role, cheap enough to run every few seconds, for Docker's
HEALTHCHECK, Compose and Kubernetes exec probes:

- ``stream-worker``: the Faust web view answers ``GET /livez`` (web_port);
  with ``--ready``, ``GET /readyz``: not rebalancing, tables recovered;
- ``prediction-worker``: an RQ worker of this host is registered for the
  queue (queue_name) and its heartbeat is recent (it serves no requests, so
  ready means alive);
- ``dashboard``: the Bokeh server accepts connections (dashboard_port); with
  ``--ready``, it answers ``GET /healthz``;
- ``simulator``: the device API simulator answers ``GET /healthz``.

Without ROLE the role (and a ``--port`` it was given) is read from the
container's main process (PID 1's command line, seen through an init such as
tini or docker-init), so one image can carry one HEALTHCHECK for every role.
``python -m pipeline.health`` is the same check without loading the whole
``pipeline`` command (faster probes).
"""

from __future__ import annotations

import argparse
import socket
import sys
import urllib.request
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from pipeline.settings import SettingsError, load_settings

ROLES = ("stream-worker", "prediction-worker", "dashboard", "simulator")
PIPELINE_SUBCOMMAND_ROLES = {"prediction-worker", "dashboard", "simulator"}
PIPELINE_OPTIONS_WITH_VALUE = {"--config", "--log-level"}
DEFAULT_SIMULATOR_PORT = 8080
# The longest an RQ worker goes between heartbeats with RQ's defaults (worker TTL 420 s,
# plus the 60 s its key outlives it); a worker with a shorter TTL whose heartbeats stop
# drops out of the registry sooner, when its key expires.
DEFAULT_HEARTBEAT_AGE = 480.0


class Unhealthy(Exception):
    """The role did not pass its check; the message says why (never a secret)."""


def role_of(argv: Sequence[str]) -> str | None:
    """The role a command line runs, or None: ``faust ... worker`` or ``pipeline ROLE``.

    Scans the whole argv, so wrappers in front (tini, docker-init, sh -c) are skipped.
    """
    words = list(argv)
    for index, word in enumerate(words):
        name = Path(word).name
        rest = words[index + 1 :]
        if name == "faust" and "worker" in rest:
            return "stream-worker"
        if name == "pipeline":
            return _pipeline_subcommand(rest)
    return None


def _pipeline_subcommand(words: list[str]) -> str | None:
    """The role of ``pipeline [GLOBAL OPTIONS] SUBCOMMAND ...``, if it is one."""
    skip_value = False
    for word in words:
        if skip_value:
            skip_value = False
        elif word in PIPELINE_OPTIONS_WITH_VALUE:
            skip_value = True
        elif not word.startswith("-"):
            return word if word in PIPELINE_SUBCOMMAND_ROLES else None
    return None


def port_option(argv: Sequence[str]) -> int | None:
    """The value of ``--port N`` or ``--port=N`` in a command line, if given."""
    for index, word in enumerate(argv):
        if word == "--port" and index + 1 < len(argv) and argv[index + 1].isdigit():
            return int(argv[index + 1])
        if word.startswith("--port=") and word[7:].isdigit():
            return int(word[7:])
    return None


def _main_process_argv() -> list[str]:
    raw = Path("/proc/1/cmdline").read_bytes()
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def _http_ok(url: str, timeout: float) -> None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            if response.status != 200:
                raise Unhealthy(f"{url} answered {response.status}")
    except OSError as exc:  # URLError and HTTPError are OSErrors
        raise Unhealthy(f"{url} did not answer: {exc}") from None


def _port_open(host: str, port: int, timeout: float) -> None:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return
    except OSError as exc:
        raise Unhealthy(f"nothing accepts connections on {host}:{port}: {exc}") from None


def _prediction_worker(settings, max_age: float, timeout: float) -> str:
    """A worker of this host listens on the queue and beat recently; returns its name."""
    import redis
    from rq import Queue, Worker

    from pipeline.connections import redis_client

    connection = redis_client(settings, socket_connect_timeout=timeout, socket_timeout=timeout)
    kwargs = connection.connection_pool.connection_kwargs
    where = "{}:{}/{}".format(kwargs.get("host"), kwargs.get("port"), kwargs.get("db"))
    try:
        queue = Queue(settings.queue_name, connection=connection)
        workers = Worker.all(queue=queue)
    except redis.RedisError as exc:
        raise Unhealthy(f"Redis at {where} unreachable: {exc}") from None
    finally:
        connection.close()
    hostname = socket.gethostname()
    now = datetime.now(UTC)
    ages = {}
    for worker in workers:
        if worker.hostname != hostname or worker.last_heartbeat is None:
            continue
        beat = worker.last_heartbeat
        beat = beat if beat.tzinfo else beat.replace(tzinfo=UTC)
        ages[worker.name] = (now - beat).total_seconds()
    if not ages:
        raise Unhealthy(f"no worker of host {hostname} registered for queue {settings.queue_name}")
    name, age = min(ages.items(), key=lambda item: item[1])
    if age > max_age:
        raise Unhealthy(f"worker {name}: last heartbeat {age:.0f}s ago (limit {max_age:.0f}s)")
    return name


def check(role: str, args: argparse.Namespace) -> str:
    """Run one role's check; returns what was found healthy, raises ``Unhealthy``."""
    if role == "simulator":
        url = f"http://{args.host}:{args.port or DEFAULT_SIMULATOR_PORT}/healthz"
        _http_ok(url, args.timeout)
        return url
    settings = load_settings(args.config)
    if role == "stream-worker":
        path = "/readyz" if args.ready else "/livez"
        url = f"http://{args.host}:{args.port or settings.web_port}{path}"
        _http_ok(url, args.timeout)
        return url
    if role == "dashboard":
        port = args.port or settings.dashboard_port
        if args.ready:
            url = f"http://{args.host}:{port}/healthz"
            _http_ok(url, args.timeout)
            return url
        _port_open(args.host, port, args.timeout)
        return f"{args.host}:{port}"
    worker = _prediction_worker(settings, args.max_heartbeat_age, args.timeout)
    return f"RQ worker {worker} on queue {settings.queue_name}"


def run(args: argparse.Namespace) -> int:
    """Exit status 0 if healthy, 1 if not, 2 if the role cannot be told."""
    role = args.role
    if role is None:
        try:
            argv = _main_process_argv()
        except OSError:
            argv = []
        role = role_of(argv)
        if role is None:
            print("health: cannot tell the role of PID 1; name it", file=sys.stderr)
            return 2
        if args.port is None:
            args.port = port_option(argv)
    try:
        found = check(role, args)
    except (Unhealthy, SettingsError) as exc:
        print(f"health: role={role} status=unhealthy reason={exc}", file=sys.stderr)
        return 1
    print(f"health: role={role} status=healthy checked={found}")
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "role",
        nargs="?",
        choices=ROLES,
        help="role to check (default: the role of the container's main process, PID 1)",
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="host the role listens on (default: %(default)s)"
    )
    parser.add_argument(
        "--port",
        type=int,
        default=None,
        help="port to check (default: web_port, dashboard_port, or 8080 for the simulator)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=3.0,
        help="seconds to wait for an answer (default: %(default)s)",
    )
    parser.add_argument(
        "--ready",
        action="store_true",
        help="check readiness instead of liveness: stream-worker /readyz (group settled, "
        "tables recovered), dashboard /healthz; the other roles are ready when alive",
    )
    parser.add_argument(
        "--max-heartbeat-age",
        type=float,
        default=DEFAULT_HEARTBEAT_AGE,
        help="prediction-worker: oldest acceptable heartbeat in seconds (default: %(default)s)",
    )
    parser.set_defaults(handler=run)


DESCRIPTION = (
    "Exit 0 if the role's process on this host is healthy, 1 if not (the reason goes to "
    "stderr), 2 if no role is named and PID 1 runs none. For container health checks "
    "and probes."
)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``health`` subcommand to the ``pipeline`` CLI."""
    parser = subparsers.add_parser(
        "health", help="check that a role runs healthily here", description=DESCRIPTION
    )
    add_arguments(parser)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m pipeline.health``: the check without the rest of the CLI's imports."""
    parser = argparse.ArgumentParser(prog="python -m pipeline.health", description=DESCRIPTION)
    parser.add_argument("--config", help="YAML settings file (default: $PIPELINE_CONFIG)")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
