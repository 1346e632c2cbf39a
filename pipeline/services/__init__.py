"""The local Kafka and Redis that the project starts for itself.

Development, the tests and CI all need a broker and a Redis. Rather than
depend on system services or containers, the project runs a single-node Kafka
and a ``redis-server`` as detached processes of its own, with their data under
``<data_dir>/services``. Whatever already answers on the configured address is
reused, even if someone else started it, so the same command works on a
laptop with its own services and on a bare CI machine.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import ipaddress
import logging
import os
import shlex
import signal
import socket
import subprocess
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from pipeline.settings import Settings

log = logging.getLogger(__name__)

# Heads each start in a service's log, so that errors quote only the latest run.
START_MARK = "=== pipeline services up"

State = Literal["running", "external", "unresponsive", "blocked", "stopped"]


class ServiceError(RuntimeError):
    """Raised when a service cannot be prepared, started, reached or stopped."""


@dataclasses.dataclass(frozen=True)
class ServiceStatus:
    """What one service is doing right now.

    ``state`` is ``running`` (started by this project and answering),
    ``external`` (answering, but not started by this project), ``unresponsive``
    (our process is alive but does not answer), ``blocked`` (something that is
    not the service holds its port) or ``stopped``.
    """

    name: str
    state: State
    address: str
    pid: int | None
    data_dir: Path

    @property
    def ok(self) -> bool:
        """Whether the service answers, whoever started it."""
        return self.state in ("running", "external")

    def __str__(self) -> str:
        pid = "-" if self.pid is None else str(self.pid)
        return f"{self.name:6} {self.state:12} {self.address:21} pid {pid:<8} {self.data_dir}"


def server_address(url: str, default_port: int) -> tuple[str, int]:
    """Return (host, port) of a single-server URL such as ``kafka://host:port``."""
    parts = urlsplit(url)
    try:
        port = parts.port or default_port
    except ValueError:
        port = None
    if not parts.hostname or port is None:
        raise ServiceError(f"{url!r} does not name one server as scheme://host:port")
    return parts.hostname, port


def is_loopback(host: str) -> bool:
    """Whether ``host`` is this machine over IPv4, the only place a local service may run.

    IPv6 is left out because Kafka's ``format --standalone`` cannot parse an
    IPv6 controller address.
    """
    if host == "localhost":
        return True
    try:
        return ipaddress.IPv4Address(host).is_loopback
    except ValueError:
        return False


def bind_host(host: str) -> str:
    """The loopback address a local service listens on for ``host``.

    A loopback IP is used as given; localhost binds 127.0.0.1, so that the
    service never listens beyond this machine.
    """
    return host if host != "localhost" and is_loopback(host) else "127.0.0.1"


def port_accepts(host: str, port: int, timeout: float = 1.0) -> bool:
    """Whether something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _alive_in(pid: int, directory: Path) -> bool:
    """Whether ``pid`` is a live process working in ``directory``.

    Our services run with their service folder as working directory, which
    tells them apart from an unrelated process that got the same pid later.
    A child of this process that has exited is reaped here, so that it does
    not linger as a zombie that still looks alive.
    """
    try:
        alive = os.readlink(f"/proc/{pid}/cwd") == str(directory)
    except OSError:
        alive = False
    if not alive:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
    return alive


class ManagedProcess:
    """A detached service process with its pid file and log in its folder."""

    def __init__(self, directory: Path, name: str) -> None:
        self.directory = directory.resolve()
        self.pid_path = self.directory / f"{name}.pid"
        self.log_path = self.directory / f"{name}.log"

    def pid(self) -> int | None:
        """Return the pid of our live process, or None if it is not running."""
        try:
            pid = int(self.pid_path.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        return pid if _alive_in(pid, self.directory) else None

    def spawn(self, argv: Sequence[str]) -> int:
        """Start ``argv`` in its own session so that it outlives this command."""
        self.directory.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as out:
            out.write(
                f"{START_MARK} {time.strftime('%Y-%m-%d %H:%M:%S')}: {shlex.join(argv)}\n".encode()
            )
            out.flush()
            try:
                process = subprocess.Popen(
                    argv,
                    cwd=self.directory,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            except OSError as exc:
                raise ServiceError(f"cannot run {argv[0]}: {exc}") from None
        pid = process.pid
        self.pid_path.write_text(f"{pid}\n")
        # Outliving the Popen object is the point, so its warning that the
        # child still runs is silenced; _alive_in reaps the child once it exits.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            del process
        return pid

    def wait_ready(self, answers: Callable[[], bool], timeout: float) -> None:
        """Wait until ``answers()``; stop the process and raise if it never does."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.pid() is None:
                raise ServiceError(f"exited during start-up\n{self.tail()}")
            if answers():
                return
            time.sleep(0.5)
        self.terminate(grace=10.0)
        raise ServiceError(f"did not answer within {timeout:.0f} s\n{self.tail()}")

    def terminate(self, grace: float) -> int | None:
        """Stop our process: SIGTERM, then SIGKILL after ``grace`` seconds.

        Returns the pid that was stopped, or None if nothing was running.
        """
        pid = self.pid()
        if pid is not None:
            os.kill(pid, signal.SIGTERM)
            if not self._gone(pid, grace):
                log.warning("pid %d ignored SIGTERM for %.0f s; killing it", pid, grace)
                os.kill(pid, signal.SIGKILL)
                if not self._gone(pid, 10.0):
                    raise ServiceError(f"pid {pid} survived SIGKILL")
        self.pid_path.unlink(missing_ok=True)
        return pid

    def _gone(self, pid: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while _alive_in(pid, self.directory):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.2)
        return True

    def tail(self, lines: int = 25) -> str:
        """The last lines of the log, to put the cause next to the error."""
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return f"(no log at {self.log_path})"
        this_run = text.rpartition(START_MARK)[2].splitlines()[1:]
        last = "\n".join(this_run[-lines:]) or "(nothing logged)"
        return f"last lines of {self.log_path}:\n{last}"


class Service(Protocol):
    """What the orchestration below needs from one local service."""

    name: str
    host: str
    port: int
    directory: Path
    process: ManagedProcess
    start_timeout: float
    stop_grace: float

    def answers(self) -> bool:
        """Whether a real request to the service's address is answered."""

    def prepare(self) -> None:
        """Make everything a first start needs; raise ServiceError if impossible."""

    def command(self) -> list[str]:
        """The command line that runs the service in the foreground."""

    def mismatch(self) -> str | None:
        """Why our running process was started for other settings (ports, TLS, login), if so."""


def services_dir(settings: Settings) -> Path:
    """The folder that holds the data of every local service."""
    return Path(settings.data_dir).resolve() / "services"


def _services(settings: Settings, kafka_controller_port: int | None = None) -> list[Service]:
    # The service modules build on the helpers above, so they are imported
    # here rather than at the top, which would make the imports circular.
    from pipeline.services.kafka import KafkaService
    from pipeline.services.redis_server import RedisService

    return [KafkaService(settings, kafka_controller_port), RedisService(settings)]


@contextlib.contextmanager
def _exclusive(settings: Settings) -> Iterator[None]:
    """Serialise commands that start or stop services on the same data dir.

    Two concurrent starts would each write a pid file and lose track of one
    of the processes.
    """
    root = services_dir(settings)
    root.mkdir(parents=True, exist_ok=True)
    with (root / ".lock").open("w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for another command that starts or stops services here")
            fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _state(service: Service) -> tuple[State, int | None]:
    pid = service.process.pid()
    if pid is not None:
        return ("running" if service.answers() else "unresponsive"), pid
    if not port_accepts(service.host, service.port):
        return "stopped", None
    return ("external" if service.answers() else "blocked"), None


def _start(service: Service) -> bool:
    """Start the service unless it runs; return whether to wait for it."""
    address = f"{service.host}:{service.port}"
    state, pid = _state(service)
    if state == "running":
        log.info("%s already running at %s (pid %d); reusing it", service.name, address, pid)
        return False
    if state == "external":
        log.info(
            "%s already running at %s, not started by this project; reusing it",
            service.name,
            address,
        )
        return False
    if state == "unresponsive":
        # A server started for other settings (say, without TLS) never answers these
        # clients; waiting would end in stopping it, so say so instead.
        reason = service.mismatch()
        if reason is not None:
            raise ServiceError(
                f"{reason}; stop it with `pipeline services down`, then start it again"
            )
        log.info("%s (pid %d) is not answering yet; waiting for it", service.name, pid)
        return True
    if not is_loopback(service.host):
        raise ServiceError(
            f"nothing answers at {address}, and a local service can only be started "
            "for 127.0.0.1 or localhost"
        )
    if state == "blocked":
        raise ServiceError(f"{address} is in use by something that is not {service.name}")
    service.prepare()
    pid = service.process.spawn(service.command())
    log.info("started %s (pid %d); log %s", service.name, pid, service.process.log_path)
    return True


def ensure_running(settings: Settings, *, kafka_controller_port: int | None = None) -> None:
    """Start whichever of Kafka and Redis is not running and wait until both answer.

    Idempotent: what already answers is reused. Raises ServiceError, with the
    tail of the service's log, if one fails to come up. The Kafka controller
    listens on the broker port + 1 unless ``kafka_controller_port`` is given.
    """
    problems = []
    with _exclusive(settings):
        waiting = []
        for service in _services(settings, kafka_controller_port):
            try:
                if _start(service):
                    waiting.append(service)
            except ServiceError as exc:
                problems.append(f"{service.name}: {exc}")
        for service in waiting:
            try:
                service.process.wait_ready(service.answers, service.start_timeout)
                log.info("%s is answering at %s:%d", service.name, service.host, service.port)
            except ServiceError as exc:
                problems.append(f"{service.name}: {exc}")
    if problems:
        raise ServiceError("\n".join(problems))


def stop(settings: Settings) -> None:
    """Stop the services this project started; leave anyone else's running."""
    with _exclusive(settings):
        for service in _services(settings):
            pid = service.process.terminate(service.stop_grace)
            if pid is not None:
                log.info("stopped %s (pid %d)", service.name, pid)
            elif port_accepts(service.host, service.port):
                log.info(
                    "%s at %s:%d was not started by this project; left running",
                    service.name,
                    service.host,
                    service.port,
                )
            else:
                log.info("%s was not running", service.name)


def status(settings: Settings) -> list[ServiceStatus]:
    """Report each service's state, address, pid and data folder."""
    report = []
    for service in _services(settings):
        state, pid = _state(service)
        address = f"{service.host}:{service.port}"
        report.append(ServiceStatus(service.name, state, address, pid, service.directory))
    return report
