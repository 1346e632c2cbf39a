"""Exactly once under fire: every fault mode of the simulator on, the Faust worker killed
with SIGKILL at random moments and restarted, and Kafka restarted once.

One stream worker, restarted after every kill: the guarantee under test is the one
a deployment gets from a worker that crashes and comes back. Before the fixes in
``pipeline.transport`` this test failed most runs: dead letters went out beside
the transaction, and a worker that restarted soon after a crash skipped table
recovery and forwarded a block of readings a second time.

Afterwards the (device, time) pairs on `readings` are exactly the valid readings the
frozen simulator serves, each once, and the dead-letter topic holds exactly the
invalid ones, each once. The simulator's faults are a pure function of its seed, so
``FaultPlan.catalogue`` says which readings those are.

The restarted Kafka is a private one on free ports with its own data folder, so the
shared broker other tests use is never disturbed. Its folder, and the workers', are
made here rather than under pytest's temporary root, which a concurrent pytest
session may prune while this test runs.
"""

from __future__ import annotations

import json
import random
import shutil
import socket
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path

import pytest
import redis

from pipeline import services
from pipeline.settings import Settings, load_settings
from pipeline.source.faults import ALL_FAULTS, parse_faults
from pipeline.source.simulator import SimulatorConfig, _clock, device_ids, fault_plan
from tests.kafka_util import dump_topic, group_offsets, read_topic
from tests.processes import BIN, Process, free_port, http_ok, isolated_env, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.services]

REDIS_DB = 11  # apart from the per-test database other tests flush at will
DEVICES = 4
INTERVAL = 60
HISTORY = 2 * 3600
DURATION = 5400
SPEEDUP = 100.0  # the clock runs for DURATION / SPEEDUP = 54 s of wall time
SEED = 11
FAULT_RATE = 0.04
KILLS = 3


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _two_free_ports() -> int:
    for _ in range(100):
        port = random.randrange(30000, 40000)
        if _free(port) and _free(port + 1):
            return port
    raise RuntimeError("no free ports for a private Kafka")


@pytest.fixture
def workdir():
    path = Path(tempfile.mkdtemp(prefix="fault-test-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def private_kafka(base_settings: Settings, workdir: Path):
    """A Kafka of this test's own; Redis is the shared one (never stopped here)."""
    port = _two_free_ports()
    config = load_settings(
        environ={
            "PIPELINE_BROKER": f"kafka://127.0.0.1:{port}",
            "PIPELINE_REDIS_URL": base_settings.redis_url,
            "PIPELINE_DATA_DIR": str(workdir / "kafka"),
        }
    )
    try:
        services.ensure_running(config)
        yield config
    finally:
        services.stop(config)


@pytest.fixture
def redis_db(base_settings: Settings):
    url = base_settings.redis_url.rsplit("/", 1)[0] + f"/{REDIS_DB}"
    client = redis.Redis.from_url(url)
    client.flushdb()
    yield url
    client.flushdb()
    client.close()


def expected_readings(start: float) -> tuple[set, set]:
    """(valid, invalid) sets of (device, time) the frozen simulator serves."""
    config = SimulatorConfig(
        api_key="x",
        devices=DEVICES,
        interval_seconds=INTERVAL,
        history_seconds=HISTORY,
        duration_seconds=DURATION,
        start=start,
        seed=SEED,
        faults=parse_faults("all", FAULT_RATE),
    )
    plan, clock = fault_plan(config), _clock(config)
    end = clock.end
    valid, invalid = set(), set()
    for device in device_ids(SEED, DEVICES):
        catalogue = plan.catalogue(device, clock.samples(clock.history_start - 1, end), end)
        valid |= {(device, t) for t in catalogue.valid}
        invalid |= {(device, t) for t in catalogue.invalid}
    return valid, invalid


def simulator_clock(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as response:
        return json.load(response)


def test_every_valid_reading_once_despite_faults_kills_and_a_kafka_restart(
    private_kafka: Settings, redis_db: str, topic_prefix: str, workdir: Path
) -> None:
    try:
        run_under_fire(private_kafka, redis_db, topic_prefix, workdir)
    except AssertionError as exc:
        for topic in ("readings-raw", "readings", "readings-deadletter"):
            dump_topic(private_kafka.broker, f"{topic_prefix}{topic}", workdir / f"{topic}.jsonl")
        offsets = group_offsets(private_kafka.broker, f"{topic_prefix}app")
        (workdir / "group-offsets.json").write_text(json.dumps(offsets, indent=1, sort_keys=True))
        keep = tempfile.mkdtemp(prefix="fault-test-logs-")
        logs = shutil.copytree(
            workdir, keep, dirs_exist_ok=True, ignore=shutil.ignore_patterns("kafka")
        )
        raise AssertionError(
            f"{exc}\nthe processes' logs and the topics' records are kept in {logs}"
        ) from None


def run_under_fire(
    private_kafka: Settings, redis_db: str, topic_prefix: str, workdir: Path
) -> None:
    began = time.monotonic()
    rng = random.Random()
    sim_port = free_port()
    start = (time.time() // INTERVAL) * INTERVAL
    env = isolated_env(private_kafka.broker, redis_db, topic_prefix, sim_port)
    env.update(
        PIPELINE_SOURCE_TIMEOUT_SECONDS="0.5",
        PIPELINE_SOURCE_ATTEMPTS="3",
        PIPELINE_SOURCE_BACKOFF_SECONDS="0.05",
        PIPELINE_SOURCE_RATE_LIMIT_PER_SECOND="50",
        PIPELINE_SESSION_TIMEOUT_SECONDS="10",
        PIPELINE_JOB_WINDOW_SECONDS="86400",
    )
    simulator = [
        str(BIN / "pipeline"), "simulator", "--port", str(sim_port),
        "--devices", str(DEVICES), "--interval-seconds", str(INTERVAL),
        "--history-seconds", str(HISTORY), "--duration-seconds", str(DURATION),
        "--speedup", str(SPEEDUP), "--seed", str(SEED), "--start", str(start),
        "--faults", "all", "--fault-rate", str(FAULT_RATE), "--fault-delay-seconds", "2",
    ]  # fmt: skip
    valid, invalid = expected_readings(start)
    kinds = {kind for kind in parse_faults("all", FAULT_RATE)}
    assert kinds == set(ALL_FAULTS)
    assert invalid and valid

    starts: dict[str, int] = {}

    def worker(name: str) -> Process:
        worker_env = dict(
            env,
            PIPELINE_WEB_PORT=str(free_port()),
            PIPELINE_DATA_DIR=str(workdir / name),
        )
        argv = [str(BIN / "faust"), "-A", "pipeline.app", "worker", "-l", "info"]
        starts[name] = starts.get(name, 0) + 1
        return Process(f"{name}-{starts[name]}", argv, worker_env, workdir)

    processes: list[Process] = [Process("simulator", simulator, env, workdir)]
    workers = {"w1": worker("w1")}
    events = []

    def restart_kafka() -> None:
        services.stop(private_kafka)
        events.append(f"{time.monotonic() - began:.0f}s Kafka stopped")
        services.ensure_running(private_kafka)
        events.append(f"{time.monotonic() - began:.0f}s Kafka up again")

    def supervise() -> None:
        """Restart any worker that died (killed, or crashed while Kafka was away)."""
        for name, process in workers.items():
            if not process.alive():
                events.append(f"{time.monotonic() - began:.0f}s {name} exited; restarted")
                workers[name] = worker(name)

    try:
        wait_for(lambda: http_ok(f"http://127.0.0.1:{sim_port}/healthz"), 30, "the simulator",
                 processes)  # fmt: skip
        moments = sorted(rng.uniform(8, 55) for _ in range(KILLS + 1))
        kafka_restart = moments.pop(rng.randrange(len(moments)))
        chaos = [(m, "kill") for m in moments] + [(kafka_restart, "kafka")]
        for moment, action in sorted(chaos):
            while time.monotonic() - began < moment:
                supervise()
                time.sleep(0.2)
            if action == "kill":
                name = rng.choice(sorted(workers))
                workers[name].kill()
                events.append(f"{time.monotonic() - began:.0f}s SIGKILL {name}")
                workers[name] = worker(name)
            else:  # in the background, so that the kills keep their moments
                restart = threading.Thread(target=restart_kafka)
                restart.start()
        restart.join()

        wait_for(lambda: simulator_clock(sim_port)["now"] >= start + DURATION, 90,
                 "the simulator clock to freeze", processes)  # fmt: skip

        readings_topic = f"{topic_prefix}readings"
        seen: Counter = Counter()

        def converged() -> bool:
            supervise()
            seen.clear()
            for key, value in read_topic(private_kafka.broker, readings_topic):
                seen[(key, value["time"])] += 1
            return set(seen) >= valid

        try:
            wait_for(converged, 240 - (time.monotonic() - began), "every valid reading",
                     processes, interval=2)  # fmt: skip
        except AssertionError as exc:
            missing = sorted(valid - set(seen))
            raise AssertionError(f"{exc}\n{len(missing)} missing, first {missing[:5]}\n"
                                 f"{chr(10).join(events)}") from None  # fmt: skip
        time.sleep(3)  # anything still in flight would show up as a duplicate
        assert converged()
    finally:
        for process in [*processes, *workers.values()]:
            process.stop()

    report = "\n".join(events)
    assert sum("SIGKILL" in e for e in events) == KILLS, report
    assert set(seen) == valid, f"readings differ from the valid set\n{report}"
    twice = sorted(k for k, n in seen.items() if n > 1)
    assert not twice, f"{len(twice)} readings reached the topic twice: {twice[:5]}\n{report}"
    dead = Counter()
    for key, value in read_topic(private_kafka.broker, f"{topic_prefix}readings-deadletter"):
        payload = json.loads(value["payload"])
        dead[(key, payload["time"])] += 1
    assert set(dead) == invalid, f"dead letters differ from the invalid set\n{report}"
    twice = sorted(k for k, n in dead.items() if n > 1)
    assert not twice, f"{len(twice)} invalid readings dead-lettered twice: {twice[:5]}\n{report}"
    refetched = sum(
        log.read_text(errors="replace").count("fetching them again")
        for log in workdir.glob("w*.log")
    )
    print(f"\nfault test: {len(valid)} valid, {len(invalid)} invalid readings in "
          f"{time.monotonic() - began:.0f} s; batches fetched again: {refetched}\n"
          f"{report}")  # fmt: skip
