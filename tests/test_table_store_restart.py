"""A stream worker on RocksDB tables with a persistent data directory, under exactly_once.

Stopped with SIGTERM and restarted, it exits cleanly, reuses every local table
partition and reads only what its changelogs gained since. Killed with SIGKILL
while readings stream, it discards each partition that held uncommitted writes
and rebuilds it from the changelog. Either way the queue ends up with exactly
the jobs the window arithmetic predicts, each once.
"""

from __future__ import annotations

import json
import random
import re
import time
import urllib.request
from collections import Counter
from pathlib import Path

import pytest

from pipeline.queue import job_id_for, make_queue
from pipeline.settings import load_settings
from pipeline.windowing import expected_windows
from tests.kafka_util import delete_topics, read_topic
from tests.processes import BIN, Process, free_port, http_ok, isolated_env, wait_for
from tests.test_end_to_end import simulator_readings

pytestmark = [pytest.mark.e2e, pytest.mark.services]

DEVICES = 3
WINDOW = 1800
HISTORY = 4 * 3600
DURATION = 4 * 3600
SPEEDUP = 240  # DURATION / SPEEDUP = 60 s of live readings
REUSED = re.compile(r"table (\S+) partition (\d+) reused from its local store")
DISCARDED = re.compile(r"table (\S+) partition (\d+) held writes that were never committed")


def partitions_logged(process: Process, pattern: re.Pattern[str]) -> set[tuple[str, int]]:
    text = process.log_path.read_text(errors="replace")
    return {(table, int(partition)) for table, partition in pattern.findall(text)}


def stores_with(data_dir: Path, suffix: str) -> set[tuple[str, int]]:
    """(table, partition) of every file named ``{table}-{partition}{suffix}``."""
    found = set()
    for path in data_dir.rglob(f"*{suffix}"):
        table, partition = path.name.removesuffix(suffix).rsplit("-", 1)
        found.add((table, int(partition)))
    return found


def uncommitted_markers(data_dir: Path) -> set[tuple[str, int]]:
    """Table partitions marked as holding uncommitted writes."""
    return stores_with(data_dir, ".db.uncommitted")


def ready(worker: Process) -> bool:
    """Faust has recovered the worker's tables and resumed its streams."""
    return "Worker ready" in worker.log_path.read_text(errors="replace")


def jobs_emitted(web_port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{web_port}/devices/", timeout=5) as r:
            return sum(device["jobs_emitted"] for device in json.load(r))
    except OSError:
        return 0


def test_clean_restart_reuses_the_stores_and_a_crash_rebuilds_the_dirty_ones(
    base_settings, redis_url, redis_client, topic_prefix, tmp_path
):
    sim_port, web_port = free_port(), free_port()
    data_dir = tmp_path / "data"
    env = isolated_env(base_settings.broker, redis_url, topic_prefix, sim_port)
    env.update(
        PIPELINE_TABLE_STORE="rocksdb",
        PIPELINE_PROCESSING_GUARANTEE="exactly_once",
        PIPELINE_DATA_DIR=str(data_dir),
        PIPELINE_WEB_PORT=str(web_port),
        PIPELINE_JOB_WINDOW_SECONDS=str(WINDOW),
        PIPELINE_SESSION_TIMEOUT_SECONDS="8",
    )
    simulator = [
        str(BIN / "pipeline"), "simulator", "--port", str(sim_port), "--devices", str(DEVICES),
        "--interval-seconds", "60", "--history-seconds", str(HISTORY),
        "--duration-seconds", str(DURATION), "--speedup", str(SPEEDUP), "--seed", "23",
    ]  # fmt: skip
    faust = [str(BIN / "faust"), "-A", "pipeline.app", "worker", "-l", "info"]
    sim = Process("simulator", simulator, env, tmp_path)
    workers: list[Process] = []
    try:
        wait_for(lambda: http_ok(f"http://127.0.0.1:{sim_port}/healthz"), 30, "the simulator")
        workers.append(Process("worker1", faust, env, tmp_path))
        history_jobs = DEVICES * (HISTORY // WINDOW - 1)
        wait_for(lambda: jobs_emitted(web_port) >= history_jobs, 120, "history's jobs", workers)

        workers[0].stop(timeout=30)
        assert workers[0].popen.returncode == 0, workers[0].tail()
        assert uncommitted_markers(data_dir) == set(), "a clean stop left uncommitted writes"
        kept = stores_with(data_dir, ".db")

        workers.append(Process("worker2", faust, env, tmp_path))
        wait_for(lambda: ready(workers[1]), 90, "worker2's recovery", workers[1:])
        reused = partitions_logged(workers[1], REUSED)
        assert partitions_logged(workers[1], DISCARDED) == set()
        assert reused <= kept
        assert any(table == "last-processed" for table, _ in reused), workers[1].tail()

        time.sleep(random.uniform(3, 10))
        workers[1].kill()
        dirty = uncommitted_markers(data_dir)
        assert dirty, "readings were streaming, yet no partition held uncommitted writes"

        workers.append(Process("worker3", faust, env, tmp_path))
        wait_for(lambda: ready(workers[2]), 90, "worker3's recovery", workers[2:])
        assert partitions_logged(workers[2], DISCARDED) == dirty
        assert not partitions_logged(workers[2], REUSED) & dirty

        def clock() -> dict:
            with urllib.request.urlopen(f"http://127.0.0.1:{sim_port}/healthz", timeout=2) as r:
                return json.load(r)

        wait_for(lambda: clock()["now"] >= clock()["end"], 120, "the simulator's end", workers[2:])
        readings = simulator_readings(env["PIPELINE_SOURCE_URL"], env["PIPELINE_SOURCE_API_KEY"])
        expected = {
            job_id_for(device, end)
            for device, times in readings.items()
            for _, end in expected_windows(sorted(times), WINDOW)
        }
        queue = make_queue(load_settings(environ={}), redis_client, env["PIPELINE_QUEUE_NAME"])
        wait_for(lambda: set(queue.job_ids) >= expected, 120, "every job queued", workers[2:])
    finally:
        for process in [*workers, sim]:
            process.stop()

    queued = queue.job_ids
    assert len(queued) == len(set(queued)), "a job was queued twice"
    assert set(queued) == expected
    audit = Counter(
        value["job_id"] for _, value in read_topic(env["PIPELINE_BROKER"], f"{topic_prefix}jobs")
    )
    assert set(audit) == expected and max(audit.values()) == 1


@pytest.fixture(autouse=True)
def _cleanup_topics(base_settings, topic_prefix):
    yield
    delete_topics(base_settings.broker, topic_prefix)
