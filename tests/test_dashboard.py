"""The dashboard app, built as Bokeh's server builds it, against a real Redis.

Reads run on a one-thread pool here, so that ``settle`` can wait for every
submitted read and then run the hand-back callbacks the way the server's loop
would, without a browser and without timing.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import redis
from bokeh.application.handlers import DirectoryHandler
from bokeh.document import Document
from bokeh.document.events import (
    ColumnDataChangedEvent,
    ColumnsPatchedEvent,
    ColumnsStreamedEvent,
    DocumentChangedEvent,
)
from bokeh.models import AllIndices, IndexFilter
from bokeh.server.callbacks import NextTickCallback, PeriodicCallback
from rq import Worker
from rq.serializers import JSONSerializer

from dashboard import data, document
from dashboard.data import Poller, connect
from dashboard.document import build_document
from pipeline.queue import job_id_for, make_queue
from pipeline.settings import load_settings
from pipeline.storage import Store
from tests.rq_workers import InProcessWorker

APP_DIR = Path(__file__).resolve().parents[1] / "dashboard"
T0 = 1_700_006_400.0
STEP = 600.0
BASE_TEMPERATURE = {"dev-a": 20.0, "dev-b": 30.0, "dev-c": 22.0}
READINGS_PER_DEVICE = 50


def readings(device: str, start: int, count: int) -> list[dict[str, float]]:
    return [
        {
            "time": T0 + i * STEP,
            "temperature": BASE_TEMPERATURE[device] + (i % 7) / 10,
            "humidity": 40.0 + i % 3,
        }
        for i in range(start, start + count)
    ]


def forecast(device: str, trained_until: float, level: float | None = None) -> dict:
    base = BASE_TEMPERATURE[device] if level is None else level
    return {
        "job_id": job_id_for(device, trained_until),
        "device_id": device,
        "model": "prophet",
        "model_version": "prophet-test",
        "window_end": trained_until,
        "trained_until": trained_until,
        "points": [
            {"ds": trained_until + k * STEP, "yhat": base,
             "yhat_lower": base - 1, "yhat_upper": base + 1}
            for k in range(1, 7)
        ],
    }  # fmt: skip


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class FaustView:
    """A stand-in HTTP server answering ``GET /devices/`` as a stream worker would."""

    def __init__(self) -> None:
        self.entries: list[dict] = []
        self.incomplete: str | None = None
        view = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = json.dumps(view.entries).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                if view.incomplete:
                    self.send_header("X-Devices-Incomplete", view.incomplete)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def executor(monkeypatch: pytest.MonkeyPatch) -> Iterator[ThreadPoolExecutor]:
    pool = ThreadPoolExecutor(max_workers=1)
    monkeypatch.setattr(document, "EXECUTOR", pool)
    yield pool
    data.close_shared()
    pool.shutdown(wait=True)


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, redis_url: str, topic_prefix: str, base_settings) -> dict:
    """Settings of the app under test, as environment variables main.py reads."""
    values = {
        "PIPELINE_REDIS_URL": redis_url,
        "PIPELINE_BROKER": base_settings.broker,
        "PIPELINE_TOPIC_PREFIX": topic_prefix,
        "PIPELINE_QUEUE_NAME": f"{topic_prefix}forecasts",
        "PIPELINE_FAUST_WEB_URL": f"http://127.0.0.1:{closed_port()}",
        "PIPELINE_DASHBOARD_REFRESH_SECONDS": "0.001",  # every refresh polls anew
    }
    monkeypatch.delenv("PIPELINE_CONFIG", raising=False)
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    return values


@pytest.fixture
def store(env: dict, redis_client: redis.Redis) -> Store:
    store = Store(redis_client)
    last = T0 + (READINGS_PER_DEVICE - 1) * STEP
    for device in ("dev-a", "dev-b"):
        store.add_readings(device, readings(device, 0, READINGS_PER_DEVICE))
        doc = forecast(device, last)
        store.put_forecast(device, doc["job_id"], doc)
    return store


def settle(doc: Document, pool: ThreadPoolExecutor) -> None:
    """Wait for every read submitted, then run the hand-backs, until nothing is pending."""
    for _ in range(20):
        pool.submit(lambda: None).result(timeout=30)  # one thread: all earlier reads are done
        pending = [cb for cb in doc.session_callbacks if isinstance(cb, NextTickCallback)]
        if not pending:
            return
        for callback in pending:
            doc.remove_next_tick_callback(callback)
            callback.callback()
    raise AssertionError("the document kept scheduling work")


def build_app_document(pool: ThreadPoolExecutor) -> Document:
    """Run the directory app (main.py, theme, template) the way `bokeh serve` does."""
    handler = DirectoryHandler(filename=str(APP_DIR))
    doc = Document()
    handler.modify_document(doc)
    assert not handler.failed, handler.error_detail
    settle(doc, pool)
    return doc


def refresh(doc: Document, pool: ThreadPoolExecutor) -> None:
    """Run the document's periodic update once, as the server's timer would."""
    (callback,) = [cb for cb in doc.session_callbacks if isinstance(cb, PeriodicCallback)]
    callback.callback()
    settle(doc, pool)


def model(doc: Document, name: str):
    found = doc.select_one({"name": name})
    assert found is not None, f"no model named {name!r} in the document"
    return found


def fleet_row(doc: Document, device: str) -> dict:
    table = model(doc, "fleet").data
    index = list(table["device_id"]).index(device)
    return {name: values[index] for name, values in table.items()}


def test_document_shows_fleet_and_first_device(store: Store, executor) -> None:
    doc = build_app_document(executor)

    assert list(model(doc, "fleet").data["device_id"]) == ["dev-a", "dev-b"]
    row = fleet_row(doc, "dev-a")
    assert row["newest_time"] == (T0 + (READINGS_PER_DEVICE - 1) * STEP) * 1000
    assert row["last_job"] == "finished"
    assert row["forecast_until"] == row["newest_time"]
    select = model(doc, "device")
    assert list(select.options) == ["dev-a", "dev-b"]
    assert select.value == "dev-a"
    shown = model(doc, "readings").data
    assert len(shown["time"]) == READINGS_PER_DEVICE
    assert shown["time"][0] == T0 * 1000  # datetime axis: milliseconds
    assert all(20 <= t < 21 for t in shown["temperature"])
    band = model(doc, "forecast").data
    assert list(band["yhat_lower"]) == [19.0] * 6 and list(band["yhat_upper"]) == [21.0] * 6
    assert "prophet-test" in model(doc, "device_status").text
    assert "2 devices" in model(doc, "fleet_summary").text
    assert doc.theme is not None and doc.template is not None
    assert doc.title == "Sensor forecasts"


def test_switching_device_loads_its_data(store: Store, executor) -> None:
    doc = build_app_document(executor)

    model(doc, "device").value = "dev-b"
    settle(doc, executor)

    shown = model(doc, "readings").data
    assert len(shown["time"]) == READINGS_PER_DEVICE
    assert all(30 <= t < 31 for t in shown["temperature"])
    assert list(model(doc, "forecast").data["yhat"]) == [30.0] * 6


def test_clicking_a_fleet_row_opens_that_device(store: Store, executor) -> None:
    doc = build_app_document(executor)

    index = list(model(doc, "fleet").data["device_id"]).index("dev-b")
    model(doc, "fleet").selected.indices = [index]
    settle(doc, executor)

    assert model(doc, "device").value == "dev-b"
    assert all(30 <= t < 31 for t in model(doc, "readings").data["temperature"])


def test_a_read_for_a_device_no_longer_shown_is_dropped(store: Store, executor) -> None:
    doc = build_app_document(executor)
    select = model(doc, "device")
    select.value = "dev-b"  # its read is submitted, not yet applied
    select.value = "dev-a"
    settle(doc, executor)
    assert all(20 <= t < 21 for t in model(doc, "readings").data["temperature"])
    assert len(model(doc, "readings").data["time"]) == READINGS_PER_DEVICE


def test_periodic_update_sends_only_what_changed(store: Store, executor) -> None:
    doc = build_app_document(executor)
    source, forecast_source, fleet = (model(doc, n) for n in ("readings", "forecast", "fleet"))
    events: list[DocumentChangedEvent] = []
    doc.on_change(events.append)

    refresh(doc, executor)
    assert not any(getattr(e, "model", None) in (source, forecast_source, fleet) for e in events)

    store.add_readings("dev-a", readings("dev-a", READINGS_PER_DEVICE, 3))
    events.clear()
    refresh(doc, executor)

    assert len(source.data["time"]) == READINGS_PER_DEVICE + 3
    streamed = [e for e in events if isinstance(e, ColumnsStreamedEvent) and e.model is source]
    assert len(streamed) == 1
    assert list(streamed[0].data["time"]) == [
        (T0 + i * STEP) * 1000 for i in range(READINGS_PER_DEVICE, READINGS_PER_DEVICE + 3)
    ]
    assert not any(getattr(e, "model", None) is forecast_source for e in events)
    patched = [e for e in events if isinstance(e, ColumnsPatchedEvent) and e.model is fleet]
    assert len(patched) == 1
    assert {i for changes in patched[0].patches.values() for i, _ in changes} == {0}  # dev-a only
    assert not any(isinstance(e, ColumnDataChangedEvent) and e.model is fleet for e in events)

    newer = forecast("dev-a", T0 + (READINGS_PER_DEVICE + 2) * STEP)
    store.put_forecast("dev-a", newer["job_id"], newer)
    events.clear()
    refresh(doc, executor)
    assert forecast_source.data["time"][0] == newer["points"][0]["ds"] * 1000
    past = model(doc, "past_forecasts").data  # the earlier forecast, against what happened
    assert (
        len(past["xs"]) == 1
        and past["trained_until"][0] == fleet_row(doc, "dev-b")["forecast_until"]
    )
    assert not any(isinstance(e, ColumnsStreamedEvent) and e.model is source for e in events)


def test_new_devices_appear_and_search_filters_the_table(store: Store, executor) -> None:
    doc = build_app_document(executor)
    store.add_readings("dev-c", [{"time": T0, "temperature": 22.0, "humidity": 50.0}])
    refresh(doc, executor)
    assert list(model(doc, "device").options) == ["dev-a", "dev-b", "dev-c"]
    assert model(doc, "device").value == "dev-a"
    assert list(model(doc, "fleet").data["device_id"]) == ["dev-a", "dev-b", "dev-c"]

    table = model(doc, "fleet_table")
    model(doc, "search").value_input = "-C"
    assert isinstance(table.view.filter, IndexFilter) and list(table.view.filter.indices) == [2]
    model(doc, "search").value_input = ""
    assert isinstance(table.view.filter, AllIndices)


def test_accuracy_and_anomalies_show_where_stored(store: Store, executor) -> None:
    doc = build_app_document(executor)
    assert fleet_row(doc, "dev-a")["forecast_error"] != fleet_row(doc, "dev-a")["forecast_error"]
    assert "No accuracy figures" in model(doc, "accuracy").text

    figures = {"mae": 0.42, "mape": 2.1, "coverage": 0.8, "nominal_coverage": 0.9, "count": 12}
    keys = store.keys
    store.client.hset(keys.accuracy("dev-a"), "prophet", json.dumps(figures))
    store.client.hset(keys.accuracy("dev-b"), "prophet", json.dumps(figures))
    anomaly = {"time": T0 + 5 * STEP, "value": 25.0, "lower": 19.0, "upper": 21.0}
    store.client.zadd(keys.anomalies("dev-a"), {json.dumps(anomaly): anomaly["time"]})
    store.client.hset(keys.anomaly_counts, "dev-a", 3)  # counted ever; the set keeps the newest
    refresh(doc, executor)

    row = fleet_row(doc, "dev-a")
    assert row["forecast_error"] == 0.42 and row["anomalies"] == 3
    assert fleet_row(doc, "dev-b")["anomalies"] == 0  # scored, none found
    assert list(model(doc, "anomalies").data["value"]) == [25.0]
    accuracy = model(doc, "accuracy").text
    assert "<td>prophet</td><td>0.42</td><td>2.1</td><td>80</td><td>90</td><td>12</td>" in accuracy
    refresh(doc, executor)
    assert list(model(doc, "anomalies").data["value"]) == [25.0]  # not streamed twice


def test_pipeline_health_shows_queue_failures_and_workers(
    store: Store, env: dict, redis_client: redis.Redis, executor
) -> None:
    settings = load_settings()
    queue = make_queue(settings, redis_client)
    queue.enqueue_call("math.sqrt", args=[-1.0], job_id=job_id_for("dev-b", T0 + 99 * STEP))
    InProcessWorker([queue], connection=redis_client, serializer=JSONSerializer).work(burst=True)
    queue.enqueue_call("math.sqrt", args=[4.0], job_id=job_id_for("dev-a", T0 + 99 * STEP))
    alive = Worker([queue], connection=redis_client, serializer=JSONSerializer, name="alive-1")
    alive.register_birth()
    try:
        doc = build_app_document(executor)
    finally:
        alive.register_death()

    health = model(doc, "health").text
    assert f"<td>{queue.name}</td><td>1</td><td>0</td><td>0</td><td>1</td><td>1</td>" in health
    assert "math domain error" in model(doc, "failures").text
    assert fleet_row(doc, "dev-b")["status"] == "failing"
    assert fleet_row(doc, "dev-b")["last_job"] == "failed"
    assert fleet_row(doc, "dev-a")["last_job"] == "queued"
    assert fleet_row(doc, "dev-a")["last_job_end"] == (T0 + 99 * STEP) * 1000


def test_faust_view_pointers_fill_the_lag_and_jobs_columns(
    store: Store, env: dict, monkeypatch: pytest.MonkeyPatch, executor
) -> None:
    view = FaustView()
    view.entries = [
        {"device_id": "dev-a", "last_ingested_time": T0 + 7200, "last_processed_time": T0 + 3600,
         "jobs_emitted": 3, "silent": False},
        {"device_id": "dev-b", "last_ingested_time": T0, "last_processed_time": T0,
         "jobs_emitted": 0, "silent": True},
    ]  # fmt: skip
    monkeypatch.setenv("PIPELINE_FAUST_WEB_URL", view.url)
    try:
        doc = build_app_document(executor)
        assert fleet_row(doc, "dev-a")["lag_minutes"] == 60.0
        assert fleet_row(doc, "dev-a")["jobs_emitted"] == 3
        assert fleet_row(doc, "dev-a")["status"] == "live"
        assert fleet_row(doc, "dev-b")["status"] == "silent"
        assert "event-time lag, max</th><td>60 min" in model(doc, "health").text
        assert "Live: Redis, Faust web view and Kafka reachable" in model(doc, "status").text

        view.incomplete = "http://worker-2:6066"
        refresh(doc, executor)
        assert "no answer from http://worker-2:6066" in model(doc, "status").text
    finally:
        view.close()


def test_sources_down_are_reported_not_raised(
    env: dict, monkeypatch: pytest.MonkeyPatch, executor
) -> None:
    redis_port, web_port = closed_port(), closed_port()
    monkeypatch.setenv("PIPELINE_REDIS_URL", f"redis://127.0.0.1:{redis_port}/0")
    monkeypatch.setenv("PIPELINE_FAUST_WEB_URL", f"http://127.0.0.1:{web_port}")
    monkeypatch.setenv("PIPELINE_BROKER", f"kafka://127.0.0.1:{closed_port()}")
    doc = build_app_document(executor)

    status = model(doc, "status").text
    assert f"Redis unreachable at 127.0.0.1:{redis_port}/0" in status
    assert f"Faust web view unreachable at http://127.0.0.1:{web_port}" in status
    assert "Kafka unreachable" in status
    assert "retrying every 0.001 s" in status and "Traceback" not in status
    refresh(doc, executor)  # still down: still no exception
    assert "unreachable" in model(doc, "status").text
    assert list(model(doc, "device").options) == []


def test_recovers_when_redis_comes_back(store: Store, env: dict, executor) -> None:
    settings = load_settings(
        environ={**env, "PIPELINE_REDIS_URL": f"redis://127.0.0.1:{closed_port()}/0"}
    )
    flaky = connect(settings)
    doc = Document()
    build_document(doc, settings, Poller(settings, flaky), executor)
    settle(doc, executor)
    assert "Redis unreachable" in model(doc, "status").text

    flaky.client = store.client  # Redis is back
    refresh(doc, executor)

    assert "unreachable" not in model(doc, "status").text.split("Faust")[0]
    assert model(doc, "device").value == "dev-a"
    assert len(model(doc, "readings").data["time"]) == READINGS_PER_DEVICE


def test_invalid_settings_are_explained_on_the_page(
    env: dict, monkeypatch: pytest.MonkeyPatch, executor
) -> None:
    monkeypatch.setenv("PIPELINE_DASHBOARD_REFRESH_SECONDS", "-1")
    doc = build_app_document(executor)
    assert "dashboard_refresh_seconds" in model(doc, "status").text
    assert not doc.session_callbacks


def test_silent_status_and_rates_from_the_pollers_own_memory(store: Store, env: dict) -> None:
    """Without the Faust web view, a device is silent once its newest reading stops moving."""
    now = [T0 + (READINGS_PER_DEVICE - 1) * STEP + 10]
    settings = load_settings()
    poller = Poller(settings, store, clock=lambda: now[0])

    first = poller.snapshot()
    assert [r.status for r in first.rows] == ["live", "live"]
    assert first.health.readings_out_per_second is None  # needs two polls

    now[0] += 10
    store.add_readings("dev-a", readings("dev-a", READINGS_PER_DEVICE, 5))
    second = poller.snapshot()
    assert second.health.readings_out_per_second == pytest.approx(0.5)

    now[0] += settings.silent_after_seconds
    store.add_readings("dev-a", readings("dev-a", READINGS_PER_DEVICE + 5, 1))
    third = poller.snapshot()
    assert {r.device_id: r.status for r in third.rows} == {"dev-a": "live", "dev-b": "silent"}


def test_consumer_lag_and_offsets_come_from_kafka(base_settings, topic_prefix: str) -> None:
    import asyncio

    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
    from aiokafka.structs import OffsetAndMetadata

    from dashboard.kafka_offsets import KafkaProbe
    from tests.kafka_util import bootstrap_of, delete_topics

    bootstrap = bootstrap_of(base_settings.broker)
    topic, group = f"{topic_prefix}readings-raw", f"{topic_prefix}app"

    async def produce_and_commit() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
        await producer.start()
        try:
            for _ in range(10):
                await producer.send_and_wait(topic, b"{}", key=b"d", partition=0)
        finally:
            await producer.stop()
        consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False
        )
        await consumer.start()
        try:
            consumer.assign([TopicPartition(topic, 0)])
            await consumer.commit({TopicPartition(topic, 0): OffsetAndMetadata(4, "")})
        finally:
            await consumer.stop()

    probe = KafkaProbe(bootstrap, group, [topic])
    try:
        asyncio.run(produce_and_commit())
        (figures,) = probe.offsets()
        assert (figures.topic, figures.end, figures.lag) == (topic, 10, 6)
    finally:
        probe.close()
        delete_topics(base_settings.broker, topic_prefix)
