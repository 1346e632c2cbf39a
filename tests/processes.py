"""Real processes for end-to-end tests: start, wait for, stop, and show logs."""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

BIN = Path(sys.executable).parent


def isolated_env(broker: str, redis_url: str, topic_prefix: str, sim_port: int) -> dict[str, str]:
    """Environment for a test's own pipeline: its topics, consumer group and queue,
    the simulator on ``sim_port`` with a fresh API key, and no PIPELINE_* leaking in."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIPELINE_")}
    env.update(
        PIPELINE_BROKER=broker,
        PIPELINE_REDIS_URL=redis_url,
        PIPELINE_SOURCE_URL=f"http://127.0.0.1:{sim_port}/api/v2",
        PIPELINE_SOURCE_API_KEY=secrets.token_hex(12),
        PIPELINE_APP_ID=f"{topic_prefix}app",
        PIPELINE_TOPIC_PREFIX=topic_prefix,
        PIPELINE_QUEUE_NAME=f"{topic_prefix}forecasts",
        PIPELINE_POLL_SECONDS="1",
    )
    return env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Process:
    """A child process with its output in a log file, stopped on request."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log = self.log_path.open("wb")
        self.popen = subprocess.Popen(
            argv, env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, lines: int = 40) -> str:
        text = self.log_path.read_text(errors="replace").splitlines()
        return f"--- {self.name} (exit {self.popen.poll()}) ---\n" + "\n".join(text[-lines:])

    def kill(self) -> None:
        """SIGKILL the process and its children: a crash, with no chance to clean up."""
        if self.alive():
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(10)
        self._log.close()

    def stop(self, timeout: float = 20.0) -> None:
        if self.alive():
            os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(5)
        if not self._log.closed:
            self._log.close()


def wait_for(
    condition: Callable[[], bool],
    timeout: float,
    what: str,
    processes: list[Process] = (),
    interval: float = 0.5,
) -> None:
    """Poll until ``condition`` holds; on timeout or a dead process, fail with logs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        dead = [p for p in processes if not p.alive()]
        if dead:
            raise AssertionError(f"{dead[0].name} died while waiting for {what}\n" + dead[0].tail())
        time.sleep(interval)
    logs = "\n".join(p.tail() for p in processes)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}\n{logs}")


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False
