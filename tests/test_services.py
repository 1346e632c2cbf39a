"""The local Kafka and Redis: up, reuse, status, down, and data kept across restarts.

These start real processes on ports of their own, with a temporary data dir,
so they never touch the instances a developer or the test command runs.
"""

from __future__ import annotations

import asyncio
import os
import random
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from pipeline import services
from pipeline.settings import Settings, load_settings

pytestmark = pytest.mark.services


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_ports(count: int) -> int:
    """A port p with p .. p + count - 1 free, below the ephemeral range."""
    for _ in range(100):
        port = random.randrange(20000, 30000)
        if all(_free(port + i) for i in range(count)):
            return port
    raise RuntimeError("no free ports found")


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """Settings for services of this module only; they are stopped at the end."""
    port = _free_ports(3)  # Kafka broker, Kafka controller, Redis
    config = load_settings(
        environ={
            "PIPELINE_BROKER": f"kafka://127.0.0.1:{port}",
            "PIPELINE_REDIS_URL": f"redis://127.0.0.1:{port + 2}/0",
            "PIPELINE_DATA_DIR": str(tmp_path_factory.mktemp("data")),
        }
    )
    yield config
    services.stop(config)


@pytest.fixture
def running(settings: Settings) -> Settings:
    """The module's services, up; each test can run alone, in any order."""
    services.ensure_running(settings)
    return settings


def _address(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    assert parts.hostname and parts.port
    return parts.hostname, parts.port


def _kafka(settings: Settings, request: str, *args: Any) -> Any:
    """Call one AIOKafkaAdminClient method against the broker of ``settings``."""
    host, port = _address(settings.broker)

    async def call() -> Any:
        admin = AIOKafkaAdminClient(bootstrap_servers=f"{host}:{port}")
        await admin.start()
        try:
            return await getattr(admin, request)(*args)
        finally:
            await admin.close()

    return asyncio.run(call())


def _redis(settings: Settings) -> redis.Redis:
    return redis.Redis.from_url(settings.redis_url, socket_connect_timeout=2)


def _pids(settings: Settings) -> dict[str, int | None]:
    return {service.name: service.pid for service in services.status(settings)}


def _processes_in(directory: Path) -> list[int]:
    """Pids of live processes whose working directory is ``directory``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.readlink(entry / "cwd") == str(directory):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def _accepts(url: str) -> bool:
    try:
        socket.create_connection(_address(url), timeout=1).close()
    except OSError:
        return False
    return True


def test_up_starts_both_and_they_answer(running: Settings) -> None:
    with _redis(running) as client:
        assert client.ping()
    cluster = _kafka(running, "describe_cluster")
    host, port = _address(running.broker)
    assert [(b["node_id"], b["host"], b["port"]) for b in cluster["brokers"]] == [(1, host, port)]


def test_up_again_reuses_the_running_processes(running: Settings) -> None:
    before = _pids(running)
    services.ensure_running(running)
    assert _pids(running) == before
    for service in services.status(running):
        assert _processes_in(service.data_dir) == [service.pid]


def test_status_reports_running(running: Settings) -> None:
    report = {service.name: service for service in services.status(running)}
    assert set(report) == {"kafka", "redis"}
    data = Path(running.data_dir).resolve() / "services"
    for name, url in (("kafka", running.broker), ("redis", running.redis_url)):
        assert report[name].state == "running"
        assert report[name].address == "{}:{}".format(*_address(url))
        assert report[name].data_dir == data / name
        assert report[name].pid is not None


def test_up_reuses_services_started_elsewhere(running: Settings, tmp_path: Path) -> None:
    """Another data dir with the same addresses reuses them and never stops them."""
    other = load_settings(
        environ={
            "PIPELINE_BROKER": running.broker,
            "PIPELINE_REDIS_URL": running.redis_url,
            "PIPELINE_DATA_DIR": str(tmp_path),
        }
    )
    services.ensure_running(other)
    assert [(s.state, s.pid) for s in services.status(other)] == [("external", None)] * 2
    services.stop(other)
    assert all(service.state == "running" for service in services.status(running))


def _running(pid: int) -> bool:
    """Still executing: present in /proc and not a zombie awaiting its parent's wait()."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def test_down_stops_and_up_restarts_on_the_same_storage(running: Settings) -> None:
    kafka_dir = Path(running.data_dir).resolve() / "services" / "kafka"
    meta = (kafka_dir / "data" / "meta.properties").read_text()
    cluster_id = _kafka(running, "describe_cluster")["cluster_id"]
    assert cluster_id == (kafka_dir / "cluster.id").read_text().strip()
    _kafka(running, "create_topics", [NewTopic("kept", num_partitions=2, replication_factor=1)])
    with _redis(running) as client:
        client.set("kept", "yes")
    pids = _pids(running)

    services.stop(running)

    assert not _accepts(running.broker)
    assert not _accepts(running.redis_url)
    assert not any(_running(pid) for pid in pids.values())
    assert {s.state for s in services.status(running)} == {"stopped"}

    services.ensure_running(running)

    assert all(pid not in (None, pids[name]) for name, pid in _pids(running).items())
    assert (kafka_dir / "data" / "meta.properties").read_text() == meta
    assert _kafka(running, "describe_cluster")["cluster_id"] == cluster_id
    assert "kept" in _kafka(running, "list_topics")
    with _redis(running) as client:
        assert client.get("kept") == b"yes"
