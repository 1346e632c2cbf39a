"""``pipeline up|down|status``: the whole system on one machine.

Starts, in data-flow order, Kafka and Redis, the device simulator, a Faust
stream worker, a prediction worker and the dashboard, each as a detached
process with a pid file under ``<data_dir>/run`` and a log under
``<data_dir>/logs``. ``up`` reuses whatever already runs, waits until each
part answers, and prints where to look. The simulator's API key is taken from
``PIPELINE_SOURCE_API_KEY`` or generated once and kept in a 0600 file; it is
handed to the children through the environment and never printed.
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import socket
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from pipeline import services
from pipeline.services import ServiceError
from pipeline.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parent.parent
LOCAL_CONFIG = ROOT / "deploy" / "local" / "pipeline.yaml"
SIMULATOR_PORT = 8080


@dataclass(frozen=True)
class Role:
    """One long-running process of the local system."""

    name: str
    argv: list[str]
    health_url: str | None = None
    port: int | None = None


def _bin(name: str) -> str:
    """A console script of this environment (``faust``, ``pipeline``)."""
    return str(Path(sys.executable).with_name(name))


def roles(settings: Settings) -> list[Role]:
    simulator_flags = ["--port", str(SIMULATOR_PORT), "--devices", "5", "--speedup", "720"]
    simulator_flags += ["--interval-seconds", "60", "--history-seconds", str(3 * 86400)]
    return [
        Role(
            "simulator",
            [_bin("pipeline"), "simulator", *simulator_flags],
            health_url=f"http://127.0.0.1:{SIMULATOR_PORT}/healthz",
        ),
        Role(
            "stream-worker",
            [
                _bin("faust"),
                "-A",
                "pipeline.app",
                "worker",
                "-l",
                "info",
                "--web-bind",
                "127.0.0.1",
            ],
            health_url=f"http://127.0.0.1:{settings.web_port}/devices/",
        ),
        Role("prediction-worker", [_bin("pipeline"), "prediction-worker"]),
        Role("dashboard", [_bin("pipeline"), "dashboard"], port=settings.dashboard_port),
    ]


def _run_dir(settings: Settings) -> Path:
    path = Path(settings.data_dir) / "run"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _log_path(settings: Settings, name: str) -> Path:
    path = Path(settings.data_dir) / "logs"
    path.mkdir(parents=True, exist_ok=True)
    return path / f"{name}.log"


def _pid_of(settings: Settings, name: str) -> int | None:
    pid_file = _run_dir(settings) / f"{name}.pid"
    try:
        pid = int(pid_file.read_text())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return pid


def _api_key(settings: Settings) -> str:
    if settings.source_api_key:
        return settings.source_api_key
    key_file = _run_dir(settings) / "simulator-api-key"
    if not key_file.exists():
        key_file.touch(mode=0o600)
        key_file.write_text(secrets.token_urlsafe(24))
    return key_file.read_text().strip()


def _child_env(settings: Settings, config: str | None) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("PIPELINE_CONFIG", config or str(LOCAL_CONFIG))
    env["PIPELINE_SOURCE_API_KEY"] = _api_key(settings)
    env.setdefault("PIPELINE_SOURCE_URL", f"http://127.0.0.1:{SIMULATOR_PORT}/api/v2")
    return env


def _answers(role: Role) -> bool:
    if role.health_url:
        try:
            with urllib.request.urlopen(role.health_url, timeout=2) as response:
                return response.status == 200
        except OSError:
            return False
    if role.port:
        with socket.socket() as sock:
            sock.settimeout(1)
            return sock.connect_ex(("127.0.0.1", role.port)) == 0
    return True


def _start(settings: Settings, role: Role, env: dict[str, str]) -> int:
    import subprocess

    log = _log_path(settings, role.name).open("ab")
    process = subprocess.Popen(
        role.argv, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
    )
    (_run_dir(settings) / f"{role.name}.pid").write_text(str(process.pid))
    return process.pid


def _wait(settings: Settings, role: Role, pid: int, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _pid_of(settings, role.name) != pid:
            raise ServiceError(f"{role.name} exited; see {_log_path(settings, role.name)}")
        if _answers(role):
            return
        time.sleep(1)
    raise ServiceError(f"{role.name} did not answer in {timeout:.0f}s; see its log")


def up(args: argparse.Namespace) -> int:
    settings = load_settings(args.config or os.environ.get("PIPELINE_CONFIG") or LOCAL_CONFIG)
    print("starting Kafka and Redis ...", flush=True)
    services.ensure_running(settings)
    env = _child_env(settings, args.config)
    for role in roles(settings):
        pid = _pid_of(settings, role.name)
        if pid is None:
            pid = _start(settings, role, env)
            print(f"starting {role.name} (pid {pid}) ...", flush=True)
        _wait(settings, role, pid)
        print(f"  {role.name:18} up   pid {pid:<7} log {_log_path(settings, role.name)}")
    print(
        "\nThe system is running:\n"
        f"  dashboard        http://localhost:{settings.dashboard_port}/dashboard\n"
        f"  device status    http://127.0.0.1:{settings.web_port}/devices/\n"
        f"  Faust tables     http://127.0.0.1:{settings.web_port}/table/last-processed/\n"
        f"  metrics          http://127.0.0.1:{settings.web_port}/metrics (stream), "
        f"http://127.0.0.1:{settings.worker_metrics_port}/metrics (prediction)\n"
        f"  device API       http://127.0.0.1:{SIMULATOR_PORT}/api/v2/openapi.yaml\n"
        f"  logs             {Path(settings.data_dir) / 'logs'}\n"
        "Stop it with: pipeline down"
    )
    return 0


def _stop_pid(pid: int, grace: float = 20.0) -> None:
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.3)
    os.killpg(pid, signal.SIGKILL)


def down(args: argparse.Namespace) -> int:
    settings = load_settings(args.config or os.environ.get("PIPELINE_CONFIG") or LOCAL_CONFIG)
    for role in reversed(roles(settings)):
        pid = _pid_of(settings, role.name)
        if pid is not None:
            print(f"stopping {role.name} (pid {pid})", flush=True)
            _stop_pid(pid)
        (_run_dir(settings) / f"{role.name}.pid").unlink(missing_ok=True)
    if not args.keep_services:
        services.stop(settings)
    return 0


def status(args: argparse.Namespace) -> int:
    settings = load_settings(args.config or os.environ.get("PIPELINE_CONFIG") or LOCAL_CONFIG)
    healthy = True
    for service in services.status(settings):
        print(service)
    for role in roles(settings):
        pid = _pid_of(settings, role.name)
        state = "stopped" if pid is None else ("up" if _answers(role) else "starting")
        healthy &= state == "up"
        print(f"{role.name:18} {state:9} pid {pid or '-':<7} log {_log_path(settings, role.name)}")
    return 0 if healthy else 1


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "up",
        help="start the whole system locally",
        description="Start Kafka, Redis, the device simulator, a Faust worker, a prediction "
        "worker and the dashboard; reuse what already runs; print where to look.",
    )
    parser.set_defaults(handler=up)
    parser = commands.add_parser(
        "down", help="stop the local system", description="Stop everything `up` started."
    )
    parser.add_argument(
        "--keep-services", action="store_true", help="leave Kafka and Redis running"
    )
    parser.set_defaults(handler=down)
    parser = commands.add_parser(
        "status",
        help="show what runs locally",
        description="One line per service and role; exits 1 unless all are up.",
    )
    parser.set_defaults(handler=status)
