"""`pipeline health`: the role is read right from a command line, and a role that is not
there is reported unhealthy (exit 1) with the reason, never a secret."""

from __future__ import annotations

import subprocess

import pytest

from pipeline.health import port_option, role_of
from tests.processes import BIN, free_port


@pytest.mark.parametrize(
    ("argv", "role"),
    [
        (["faust", "-A", "pipeline.app", "worker", "-l", "info"], "stream-worker"),
        (["/opt/venv/bin/faust", "-A", "pipeline.app", "worker"], "stream-worker"),
        (["/sbin/docker-init", "--", "pipeline", "prediction-worker"], "prediction-worker"),
        (["tini", "--", "pipeline", "--log-level", "debug", "dashboard"], "dashboard"),
        (["pipeline", "simulator", "--port", "8080"], "simulator"),
        (["faust", "-A", "pipeline.app", "agents"], None),
        (["pipeline", "settings"], None),
        (["sleep", "infinity"], None),
    ],
)
def test_role_is_read_from_the_command_line(argv: list[str], role: str | None) -> None:
    assert role_of(argv) == role


def test_port_is_read_from_the_command_line() -> None:
    assert port_option(["pipeline", "simulator", "--port", "9000"]) == 9000
    assert port_option(["pipeline", "dashboard", "--port=5100"]) == 5100
    assert port_option(["pipeline", "dashboard", "--address", "0.0.0.0"]) is None


PIPELINE_HEALTH = [str(BIN / "pipeline"), "health"]
# The probes' form: the same check without the whole command's imports.
MODULE_HEALTH = [str(BIN / "python"), "-m", "pipeline.health"]


def health(
    *args: str, env: dict[str, str] | None = None, command: list[str] = MODULE_HEALTH
) -> subprocess.CompletedProcess:
    return subprocess.run([*command, *args], capture_output=True, text=True, timeout=60, env=env)


@pytest.mark.parametrize(
    ("role", "command"),
    [
        ("stream-worker", PIPELINE_HEALTH),
        ("dashboard", MODULE_HEALTH),
        ("simulator", MODULE_HEALTH),
    ],
)
def test_a_role_that_does_not_listen_is_unhealthy(role: str, command: list[str]) -> None:
    result = health(role, "--port", str(free_port()), command=command)
    assert result.returncode == 1
    assert f"role={role} status=unhealthy" in result.stderr


@pytest.mark.services
def test_a_queue_without_workers_is_unhealthy(redis_url, topic_prefix) -> None:
    password_url = redis_url.replace("redis://", "redis://:hunter2-not-real@", 1)
    env = {
        "PATH": str(BIN),
        "PIPELINE_REDIS_URL": redis_url,
        "PIPELINE_QUEUE_NAME": f"{topic_prefix}forecasts",
    }
    result = health("prediction-worker", env=env)
    assert result.returncode == 1
    assert "no worker of host" in result.stderr and f"{topic_prefix}forecasts" in result.stderr
    # An unreachable Redis is reported by host and port; the password never appears.
    env["PIPELINE_REDIS_URL"] = password_url.replace(
        redis_url.split("//")[1].split("/")[0], f"127.0.0.1:{free_port()}"
    )
    result = health("prediction-worker", "--timeout", "1", env=env)
    assert result.returncode == 1 and "unreachable" in result.stderr
    assert "hunter2" not in result.stderr + result.stdout
