"""What an operator sees of a real run: metrics that move, JSON logs without secrets,
health checks that answer, and every role stopping cleanly on SIGTERM.

One end-to-end run (simulator, Faust worker, prediction worker, dashboard on real
Kafka and Redis) with ``log_format: json``; the metrics endpoints of the stream
worker and the prediction worker are scraped before and after readings and jobs
flow, and every line every process wrote is checked afterwards.
"""

from __future__ import annotations

import json
import re
import subprocess
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from pipeline.storage import Store
from tests.kafka_util import delete_topics
from tests.processes import BIN, Process, free_port, http_ok, isolated_env, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.services]

DEVICES = 2
# A log line in some other format: a date or time first (logging's and RQ's own
# formats) or a level first (logging.basicConfig's). Start-up notices printed for
# a person (Faust's banner, "simulator listening on ...") are not log lines.
TEXT_LOG_LINE = re.compile(
    r"^(\d{4}-\d\d-\d\d[ T]|\d\d:\d\d:\d\d |(DEBUG|INFO|WARNING|ERROR|CRITICAL)[: ])"
)
WINDOW = 1800
DURATION = 2 * 3600


def scrape(url: str) -> dict[tuple[str, frozenset], float]:
    """Every sample of a Prometheus endpoint: (name, labels) -> value."""
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def total(samples: dict, name: str, **labels: str) -> float:
    """Sum of a series over every label set that includes ``labels``."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)


def devices_in(samples: dict, name: str) -> set[str]:
    return {dict(ls)["device"] for (n, ls) in samples if n == name and "device" in dict(ls)}


@pytest.fixture
def run_env(base_settings, redis_url, redis_client, topic_prefix, tmp_path):
    ports = {name: free_port() for name in ("sim", "web", "worker_metrics", "dashboard")}
    env = isolated_env(base_settings.broker, redis_url, topic_prefix, ports["sim"])
    env.update(
        PIPELINE_LOG_FORMAT="json",
        PIPELINE_JOB_WINDOW_SECONDS=str(WINDOW),
        PIPELINE_TRAINING_SECONDS=str(4 * 3600),
        PIPELINE_HORIZON_SECONDS="3600",
        PIPELINE_WEB_PORT=str(ports["web"]),
        PIPELINE_FAUST_WEB_URL=f"http://127.0.0.1:{ports['web']}",
        PIPELINE_WORKER_METRICS_PORT=str(ports["worker_metrics"]),
        PIPELINE_DASHBOARD_PORT=str(ports["dashboard"]),
        PIPELINE_DATA_DIR=str(tmp_path / "data"),
    )
    yield env, ports
    delete_topics(base_settings.broker, topic_prefix)


def test_metrics_move_logs_are_json_without_secrets_and_roles_stop_cleanly(
    run_env, redis_client, tmp_path
):
    env, ports = run_env
    secret = env["PIPELINE_SOURCE_API_KEY"]
    stream_metrics = f"http://127.0.0.1:{ports['web']}/metrics"
    worker_metrics = f"http://127.0.0.1:{ports['worker_metrics']}/metrics"
    simulator = [
        str(BIN / "pipeline"), "simulator", "--port", str(ports["sim"]),
        "--devices", str(DEVICES), "--interval-seconds", "60", "--history-seconds", "3600",
        "--duration-seconds", str(DURATION), "--speedup", "600", "--seed", "3",
    ]  # fmt: skip
    processes = [Process("simulator", simulator, env, tmp_path)]
    try:
        wait_for(lambda: http_ok(f"http://127.0.0.1:{ports['sim']}/healthz"), 30, "simulator",
                 processes)  # fmt: skip
        processes.append(Process("rq", [str(BIN / "pipeline"), "prediction-worker"], env, tmp_path))
        wait_for(lambda: http_ok(worker_metrics), 30, "worker metrics", processes)
        before = scrape(worker_metrics)
        processes.append(
            Process("faust", [str(BIN / "faust"), "-A", "pipeline.app", "worker", "-l", "info"],
                    env, tmp_path)
        )  # fmt: skip
        processes.append(Process("dashboard", [str(BIN / "pipeline"), "dashboard"], env, tmp_path))
        wait_for(lambda: http_ok(stream_metrics), 60, "stream worker metrics", processes)
        early = scrape(stream_metrics)

        store = Store(redis_client)
        wait_for(
            lambda: (
                all(store.forecast_count(d) >= 2 for d in store.devices())
                and len(store.devices()) == DEVICES
            ),
            180,
            "two forecasts per device",
            processes,
            interval=1,
        )
        for role in ("stream-worker", "prediction-worker", "dashboard"):
            for probe in ([], ["--ready"]):
                check = subprocess.run(
                    [str(BIN / "pipeline"), "health", role, *probe], env=env,
                    capture_output=True, text=True, timeout=30,
                )  # fmt: skip
                assert check.returncode == 0, f"{role} {probe}: {check.stdout}{check.stderr}"
        late = scrape(stream_metrics)
        after = scrape(worker_metrics)
    finally:
        exits = {}
        for process in reversed(processes):
            process.stop(timeout=30)
            exits[process.name] = process.popen.returncode

    # The stream tier: readings in and out, jobs, per-device gauges, Faust's own sensor.
    assert total(late, "ingest_records_total", outcome="new") > total(
        early, "ingest_records_total", outcome="new"
    )
    assert total(late, "connector_records_fetched_total") >= total(
        late, "ingest_records_total", outcome="new"
    )
    assert total(late, "job_manager_jobs_emitted_total") >= 2 * DEVICES
    assert devices_in(late, "device_event_time_lag_seconds") == set(store.devices())
    assert all(v >= 0 for (n, _), v in late.items() if n == "device_event_time_lag_seconds")
    assert total(late, "devices") == DEVICES
    assert total(late, "faust_messages_received_total") > total(
        early, "faust_messages_received_total"
    )
    assert ("table_recovery_seconds", frozenset()) in late

    # The queue and the workers.
    queue = env["PIPELINE_QUEUE_NAME"]
    finished = total(after, "prediction_jobs_total", queue=queue, outcome="finished")
    assert total(before, "prediction_jobs_total") == 0 and finished >= 2 * DEVICES
    assert total(after, "prediction_fit_seconds_count") >= finished
    assert total(after, "prediction_fit_seconds_sum") > 0
    assert total(after, "prediction_queue_jobs", queue=queue, state="finished") >= finished
    assert total(after, "prediction_workers", queue=queue) == 1

    # Every role stopped on SIGTERM by itself, with a clean exit.
    assert exits == dict.fromkeys(exits, 0), f"exit codes after SIGTERM: {exits}"

    # Logs: JSON lines (Faust's start-up banner aside), job lines carry ids, no secret.
    job_lines = 0
    for process in processes:
        text = process.log_path.read_text(errors="replace")
        assert secret not in text, f"the API key appears in the {process.name} log"
        for line in text.splitlines():
            if not line.startswith("{"):
                continue
            entry = json.loads(line)
            assert {"time", "level", "logger", "message"} <= entry.keys()
            if process.name == "rq" and entry.get("job_id"):
                assert entry["device_id"] in store.devices()
                job_lines += 1
    assert job_lines >= 2 * DEVICES
    not_json = [
        f"{p.name}: {line}"
        for p in processes
        for line in p.log_path.read_text(errors="replace").splitlines()
        if TEXT_LOG_LINE.match(line)
    ]
    assert not_json == [], "log lines not in JSON"
