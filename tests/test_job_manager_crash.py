"""Two Faust workers share the partitions; one is killed with SIGKILL several times
while a sped-up simulator streams. Afterwards the `jobs` topic and the RQ queue
hold exactly the jobs the window arithmetic predicts: none missing, none twice.
"""

from __future__ import annotations

import json
import os
import random
import secrets
import time
import urllib.request
from collections import Counter, defaultdict

import pytest
from rq.job import Job
from rq.serializers import JSONSerializer

from pipeline.queue import job_id_for, make_queue
from pipeline.settings import load_settings
from pipeline.storage import Store
from pipeline.windowing import expected_windows
from tests.kafka_util import delete_topics, read_topic
from tests.processes import BIN, Process, free_port, http_ok, isolated_env, wait_for
from tests.test_end_to_end import simulator_readings

pytestmark = [pytest.mark.e2e, pytest.mark.services]

DEVICES = 3
WINDOW = 1800
HISTORY = 2 * 3600
DURATION = 4 * 3600
SPEEDUP = 480  # the clock runs for DURATION / SPEEDUP = 30 s of wall time
KILLS = 3


def faust_worker(name: str, env: dict, tmp_path, web_port: int) -> Process:
    worker_env = dict(env)
    worker_env.update(
        PIPELINE_WEB_PORT=str(web_port), PIPELINE_DATA_DIR=str(tmp_path / f"data-{name}")
    )
    argv = [str(BIN / "faust"), "-A", "pipeline.app", "worker", "-l", "info"]
    return Process(name, argv, worker_env, tmp_path)


class Supervisor:
    """Restarts a worker that exits by itself, as Kubernetes or `pipeline up` would."""

    def __init__(self, env: dict, tmp_path) -> None:
        self.env, self.tmp_path, self.restarts = env, tmp_path, 0
        self.workers: dict[str, tuple[Process, int]] = {}
        self.killed: set[str] = set()
        self.starts: Counter[str] = Counter()

    def start(self, name: str, web_port: int) -> Process:
        self.starts[name] += 1
        process = faust_worker(f"{name}{self.starts[name]}", self.env, self.tmp_path, web_port)
        self.workers[name] = (process, web_port)
        return process

    def kill(self, name: str) -> None:
        self.workers[name][0].kill()
        self.killed.add(name)

    def revive(self) -> bool:
        """Restart exited workers; always True so it can ride in a wait condition."""
        for name, (process, port) in list(self.workers.items()):
            if not process.alive():
                if name in self.killed:
                    self.killed.discard(name)
                else:  # it exited by itself: a crash
                    self.restarts += 1
                self.start(name, port)
        return True

    def processes(self) -> list[Process]:
        return [process for process, _ in self.workers.values()]


def devices_seen_by(web_port: int) -> set[str]:
    with urllib.request.urlopen(f"http://127.0.0.1:{web_port}/devices/", timeout=5) as response:
        if response.headers.get("X-Devices-Incomplete"):
            return set()
        return {entry["device_id"] for entry in json.load(response)}


def test_killed_worker_loses_and_repeats_no_job(
    base_settings, redis_url, redis_client, topic_prefix, tmp_path
):
    rng = random.Random(os.environ.get("CRASH_TEST_SEED", secrets.randbits(32)))
    sim_port, port_a, port_b = free_port(), free_port(), free_port()
    env = isolated_env(base_settings.broker, redis_url, topic_prefix, sim_port)
    env.update(
        PIPELINE_JOB_WINDOW_SECONDS=str(WINDOW),
        PIPELINE_SESSION_TIMEOUT_SECONDS="8",
        PIPELINE_PROCESSING_GUARANTEE=os.environ.get("CRASH_TEST_GUARANTEE", "exactly_once"),
        PIPELINE_WEB_HOST="127.0.0.1",
    )
    simulator = [
        str(BIN / "pipeline"), "simulator", "--port", str(sim_port), "--devices", str(DEVICES),
        "--interval-seconds", "60", "--history-seconds", str(HISTORY),
        "--duration-seconds", str(DURATION), "--speedup", str(SPEEDUP), "--seed", "11",
    ]  # fmt: skip
    sim = Process("simulator", simulator, env, tmp_path)
    workers = Supervisor(env, tmp_path)
    try:
        wait_for(lambda: http_ok(f"http://127.0.0.1:{sim_port}/healthz"), 30, "the simulator")
        workers.start("a", port_a)
        workers.start("b", port_b)
        wait_for(
            lambda: workers.revive() and http_ok(f"http://127.0.0.1:{port_b}/devices/"),
            60,
            "worker b",
        )
        for _ in range(KILLS):
            time.sleep(rng.uniform(3, 8))
            workers.revive()
            workers.kill("a")
            time.sleep(rng.uniform(1, 4))
            workers.revive()

        key = env["PIPELINE_SOURCE_API_KEY"]

        def clock() -> dict:
            with urllib.request.urlopen(f"http://127.0.0.1:{sim_port}/healthz", timeout=2) as r:
                return json.load(r)

        wait_for(lambda: workers.revive() and clock()["now"] >= clock()["end"], 90, "sim end")
        readings = simulator_readings(env["PIPELINE_SOURCE_URL"], key)
        expected = {
            device: {job_id_for(device, end) for _, end in expected_windows(sorted(times), WINDOW)}
            for device, times in readings.items()
        }
        expected_ids = set().union(*expected.values())
        assert len(expected_ids) == DEVICES * ((HISTORY + DURATION) // WINDOW)

        queue = make_queue(load_settings(environ={}), redis_client, env["PIPELINE_QUEUE_NAME"])
        wait_for(
            lambda: workers.revive() and set(queue.job_ids) >= expected_ids,
            300,
            "every job queued",
            interval=1,
        )
        wait_for(
            lambda: (
                workers.revive()
                and devices_seen_by(port_a) == devices_seen_by(port_b) == set(expected)
            ),
            60,
            "both workers answering /devices/ for the whole fleet",
            interval=1,
        )
    except AssertionError as failure:
        logs = "\n".join(p.tail(60) for p in workers.processes())
        queued = set(queue.job_ids) if "queue" in locals() else set()
        missing, unexpected = sorted(expected_ids - queued), sorted(queued - expected_ids)
        diff = f"missing {missing}, unexpected {unexpected}" if queued else ""
        if "readings" in locals():
            store = Store(redis_client)
            unstored = {
                d: sorted(set(times) - {r["time"] for r in store.readings_between(d)})
                for d, times in readings.items()
            }
            diff += f"\nreadings the devices hold that Redis lacks: {unstored}"
        raise AssertionError(f"{failure}\n{diff}\n{logs}") from None
    finally:
        for process in [*workers.processes(), sim]:
            process.stop()
    print(f"worker restarts after crashes of their own: {workers.restarts}")

    queued = queue.job_ids
    assert len(queued) == len(set(queued)), "a job was pushed onto the queue twice"
    assert set(queued) == expected_ids
    for job_id in queued:
        job = Job.fetch(job_id, connection=redis_client, serializer=JSONSerializer)
        assert job_id_for(job.kwargs["device_id"], job.kwargs["window_end"]) == job_id

    audit = read_topic(env["PIPELINE_BROKER"], f"{topic_prefix}jobs")
    counts = Counter(value["job_id"] for _, value in audit)
    assert set(counts) == expected_ids, "the jobs topic misses or invents jobs"
    assert max(counts.values()) == 1, (
        f"jobs audited twice: {[j for j, n in counts.items() if n > 1]}"
    )
    by_device = defaultdict(set)
    for key_, value in audit:
        by_device[key_].add(value["job_id"])
    assert dict(by_device) == expected


@pytest.fixture(autouse=True)
def _cleanup_topics(base_settings, topic_prefix):
    yield
    delete_topics(base_settings.broker, topic_prefix)
