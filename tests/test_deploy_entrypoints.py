"""The image's entry points as plain commands: the command lines and environment of the
rendered dev overlay start every role here, against the local Kafka and Redis, and each
becomes healthy by `pipeline health ROLE`, by the probes the manifests declare and by the
Compose health checks. The command lines are read from the manifests, so they cannot
drift from what a cluster runs (test_deploy_compose.py holds Compose to the same ones).

Only what must differ on a shared machine is changed: ports (free ones), listen addresses
(loopback), the settings file's location, and the names that isolate a test (topic prefix,
app id, queue, Redis database). Windows start tomorrow (start_time), so no Prophet fit
loads the machine while roles start.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from tests.deploy_util import (
    compose,
    compose_role,
    container_env,
    containers,
    pipeline_workloads,
    render,
    settings_text,
)
from tests.kafka_util import delete_topics
from tests.processes import BIN, Process, free_port, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.services]

ROLES = ("simulator", "stream-worker", "prediction-worker", "dashboard")
LISTEN_OPTIONS = {"--host", "--address"}
PROBES = ("startupProbe", "readinessProbe", "livenessProbe")


def localize(argv: list[str], ports: dict[int, int]) -> list[str]:
    """A container's command for this machine: this environment's executables, loopback
    addresses, and each container port replaced by its free local port."""
    out = [str(BIN / argv[0]), *argv[1:]]
    for index in range(1, len(out) - 1):
        if out[index] in LISTEN_OPTIONS:
            out[index + 1] = "127.0.0.1"
        elif out[index] == "--port" and int(out[index + 1]) in ports:
            out[index + 1] = str(ports[int(out[index + 1])])
    return out


class Role:
    """One role started from its manifest: the container, its environment, its process."""

    def __init__(self, name: str, container: dict, env: dict[str, str], ports: dict[int, int]):
        self.name = name
        self.container = container
        self.env = env
        self.ports = ports
        self.process: Process | None = None

    def start(self, log_dir: Path) -> Process:
        argv = localize(self.container["command"] + self.container.get("args", []), self.ports)
        self.process = Process(self.name, argv, self.env, log_dir)
        return self.process

    def local_port(self, port: int | str) -> int:
        if isinstance(port, str):
            (port,) = [p["containerPort"] for p in self.container["ports"] if p["name"] == port]
        return self.ports[port]

    def run(self, argv: list[str], timeout: float = 60) -> subprocess.CompletedProcess:
        argv = localize(argv, self.ports)
        if self.name == "simulator" and "health" in " ".join(argv) and "--port" not in argv:
            # The simulator's port is an option, not a setting: the check assumes 8080.
            argv += ["--port", str(self.ports[8080])]
        return subprocess.run(
            argv,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def health(self, form: str = "pipeline") -> subprocess.CompletedProcess:
        if form == "pipeline":
            return self.run(["pipeline", "health", self.name])
        return self.run(["python", "-m", "pipeline.health", self.name])


def probe_passes(role: Role, probe: dict) -> str | None:
    """None if the probe passes, else why not."""
    if "httpGet" in probe:
        url = f"http://127.0.0.1:{role.local_port(probe['httpGet']['port'])}"
        url += probe["httpGet"]["path"]
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return None if response.status == 200 else f"{url}: {response.status}"
        except OSError as exc:
            return f"{url}: {exc}"
    if "tcpSocket" in probe:
        port = role.local_port(probe["tcpSocket"]["port"])
        try:
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
            return None
        except OSError as exc:
            return f"port {port}: {exc}"
    result = role.run(probe["exec"]["command"])
    return None if result.returncode == 0 else f"{probe['exec']['command']}: {result.stderr}"


def probe_passes_in_time(role: Role, probe: dict) -> str | None:
    """None if the probe passes before Kubernetes would act on its failures.

    Kubernetes acts after ``failureThreshold`` failures in a row, one every
    ``periodSeconds``: a stream worker is briefly unready during a rebalance,
    as it should be, without being taken out of service.
    """
    deadline = time.monotonic() + probe.get("failureThreshold", 3) * probe.get("periodSeconds", 10)
    while (reason := probe_passes(role, probe)) and time.monotonic() < deadline:
        time.sleep(1)
    return reason


@pytest.fixture
def roles(base_settings, redis_url, redis_client, topic_prefix, tmp_path):
    resources = render("dev")
    workloads = pipeline_workloads(resources)
    assert set(workloads) == set(ROLES)
    config = tmp_path / "settings" / "pipeline.yaml"
    config.parent.mkdir()
    config.write_text(settings_text(resources))
    web, dashboard, simulator = free_port(), free_port(), free_port()
    ports = {6066: web, 5006: dashboard, 8080: simulator}
    secret_values = {
        "source-api-key": secrets.token_hex(12),
        "redis-password": "",
        "kafka-password": "",
    }
    fields = {"metadata.name": f"{topic_prefix}stream-worker-0", "metadata.namespace": "local"}
    overrides = {
        "PIPELINE_CONFIG": str(config),
        "PIPELINE_BROKER": base_settings.broker,
        # The local Kafka is plain text; the cluster's is SASL_SSL (tests/test_secure_links.py).
        "PIPELINE_KAFKA_SECURITY_PROTOCOL": "PLAINTEXT",
        "PIPELINE_KAFKA_CA_FILE": "",
        # Likewise the local Redis; the cluster's speaks TLS only (test_deploy_k8s_design.py).
        "PIPELINE_REDIS_URL": redis_url,
        "PIPELINE_REDIS_CA_FILE": "",
        "PIPELINE_SOURCE_URL": f"http://127.0.0.1:{simulator}/api/v2",
        "PIPELINE_APP_ID": f"{topic_prefix}app",
        "PIPELINE_TOPIC_PREFIX": topic_prefix,
        "PIPELINE_QUEUE_NAME": f"{topic_prefix}forecasts",
        "PIPELINE_WEB_PORT": str(web),
        "PIPELINE_WEB_HOST": "127.0.0.1",
        "PIPELINE_FAUST_WEB_URL": f"http://127.0.0.1:{web}",
        "PIPELINE_DASHBOARD_PORT": str(dashboard),
        "PIPELINE_START_TIME": str(time.time() + 86400),
    }
    outside = {k: v for k, v in os.environ.items() if not k.startswith("PIPELINE_")}
    started = {}
    for name in ROLES:
        (container,) = containers(workloads[name])
        env = {**outside, **container_env(container, secret_values, fields), **overrides}
        env["PIPELINE_DATA_DIR"] = str(tmp_path / f"data-{name}")
        started[name] = Role(name, container, env, ports)
    yield started
    for role in reversed(started.values()):
        if role.process is not None:
            role.process.stop()
    delete_topics(base_settings.broker, topic_prefix)


def test_manifest_command_lines_start_healthy_roles(roles, tmp_path) -> None:
    processes = [roles[name].start(tmp_path) for name in ROLES]
    try:
        for name in ROLES:
            role = roles[name]
            wait_for(
                lambda role=role: role.health().returncode == 0,
                150,
                f"`pipeline health {name}`",
                processes,
                interval=1,
            )
        failures = []
        for name in ROLES:
            role = roles[name]
            for probe in PROBES:
                if probe in role.container:
                    reason = probe_passes_in_time(role, role.container[probe])
                    if reason:
                        failures.append(f"{name} {probe}: {reason}")
        services = compose()["services"]
        for service_name, service in services.items():
            role = roles.get(compose_role(service_name) or "")
            if role is not None:
                kind, *argv = service["healthcheck"]["test"]
                assert kind == "CMD"
                result = role.run(argv)
                if result.returncode != 0:
                    failures.append(f"compose {service_name} healthcheck: {result.stderr}")
        logs = "\n".join(p.tail() for p in processes)
        assert not failures, "\n".join(failures) + "\n" + logs
    finally:
        for process in reversed(processes):
            process.stop()
    for name in ROLES:
        result = roles[name].health(form="module")
        assert result.returncode == 1, f"{name} still healthy after it stopped"
        assert "status=unhealthy" in result.stderr
