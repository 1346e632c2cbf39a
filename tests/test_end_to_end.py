"""The whole pipeline with real processes: simulator, Faust worker, RQ worker,
Kafka and Redis. The simulator's clock runs fast and then freezes, so the full
set of readings is known and the expected jobs follow from window arithmetic."""

from __future__ import annotations

import json
import urllib.request
from collections import Counter, defaultdict
from datetime import datetime

import pytest

from pipeline.storage import Store
from pipeline.windowing import expected_windows
from tests.kafka_util import delete_topics, read_topic
from tests.processes import BIN, Process, free_port, http_ok, isolated_env, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.services]

DEVICES = 3
INTERVAL = 60
HISTORY = 3 * 3600
DURATION = 3 * 3600
WINDOW = 3600


def epoch(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def simulator_readings(url: str, api_key: str) -> dict[str, set[float]]:
    """Every reading the frozen simulator holds, straight from its API."""

    def get(path: str) -> dict:
        with urllib.request.urlopen(f"{url}{path}apiKey={api_key}", timeout=10) as response:
            return json.load(response)["result"]

    devices = [pod["id"] for pod in get("/users/me/pods?fields=id&")]
    return {
        device: {
            epoch(point["time"])
            for point in get(f"/pods/{device}/historicalMeasurements?days=1&")["temperature"]
        }
        for device in devices
    }


@pytest.fixture
def e2e_env(base_settings, redis_url, redis_client, topic_prefix, tmp_path):
    sim_port, web_port = free_port(), free_port()
    env = isolated_env(base_settings.broker, redis_url, topic_prefix, sim_port)
    env.update(
        PIPELINE_JOB_WINDOW_SECONDS=str(WINDOW),
        PIPELINE_TRAINING_SECONDS=str(6 * 3600),
        PIPELINE_HORIZON_SECONDS="3600",
        PIPELINE_FORECAST_STEP_SECONDS="600",
        PIPELINE_WEB_PORT=str(web_port),
        PIPELINE_DATA_DIR=str(tmp_path / "data"),
    )
    yield env, sim_port, web_port
    delete_topics(base_settings.broker, topic_prefix)


def test_every_device_gets_its_forecasts_from_readings_seen_once(e2e_env, redis_client, tmp_path):
    env, sim_port, web_port = e2e_env
    api = f"http://127.0.0.1:{sim_port}/api/v2"
    simulator = [
        str(BIN / "pipeline"), "simulator", "--port", str(sim_port), "--devices", str(DEVICES),
        "--interval-seconds", str(INTERVAL), "--history-seconds", str(HISTORY),
        "--duration-seconds", str(DURATION), "--speedup", "1200", "--seed", "7",
    ]  # fmt: skip
    processes = [Process("simulator", simulator, env, tmp_path)]
    try:
        wait_for(
            lambda: http_ok(f"http://127.0.0.1:{sim_port}/healthz"), 30, "the simulator", processes
        )
        processes.append(
            Process("faust", [str(BIN / "faust"), "-A", "pipeline.app", "worker", "-l", "info"],
                    env, tmp_path)
        )  # fmt: skip
        processes.append(Process("rq", [str(BIN / "pipeline"), "prediction-worker"], env, tmp_path))
        expected = simulator_readings_when_frozen(api, env, processes)
        windows = {d: expected_windows(sorted(t), WINDOW) for d, t in expected.items()}
        assert all(
            len(w) == (len(expected[d]) - 1) // (WINDOW // INTERVAL) for d, w in windows.items()
        )

        store = Store(redis_client)
        wait_for(
            lambda: all(store.forecast_count(d) == len(w) for d, w in windows.items()),
            180,
            "a forecast for every job",
            processes,
            interval=1,
        )
        wait_for(
            lambda: http_ok(f"http://127.0.0.1:{web_port}/devices/"), 30, "web view", processes
        )
    finally:
        for process in reversed(processes):
            process.stop()

    readings = read_topic(env["PIPELINE_BROKER"], env["PIPELINE_TOPIC_PREFIX"] + "readings")
    seen = Counter((key, value["time"]) for key, value in readings)
    assert max(seen.values()) == 1, "a (device, time) reached the readings topic twice"
    by_device = defaultdict(set)
    for key, value in readings:
        assert key == value["device_id"] and "__faust" not in value
        by_device[key].add(value["time"])
    assert dict(by_device) == expected, "readings topic differs from what the devices hold"

    jobs = read_topic(env["PIPELINE_BROKER"], env["PIPELINE_TOPIC_PREFIX"] + "jobs")
    emitted = defaultdict(list)
    for key, job in jobs:
        emitted[key].append((job["window_start"], job["window_end"]))
    assert {d: sorted(w) for d, w in emitted.items()} == windows

    for device, device_windows in windows.items():
        latest = store.latest_forecast(device)
        assert latest["trained_until"] == device_windows[-1][1]
        assert latest["model"] == "auto" and len(latest["points"]) == 3600 // 600
        assert store.forecast_count(device) == len(device_windows)


def simulator_readings_when_frozen(api: str, env: dict, processes: list[Process]) -> dict:
    """Wait for the simulator's clock to freeze, then take its full reading set."""
    key = env["PIPELINE_SOURCE_API_KEY"]
    health = api.removesuffix("/api/v2") + "/healthz"

    def frozen() -> bool:
        with urllib.request.urlopen(health, timeout=2) as response:
            clock = json.load(response)
        return clock["now"] >= clock["start"] + DURATION

    wait_for(frozen, 60, "the simulator clock to reach its end", processes)
    return simulator_readings(api, key)
