"""The dashboard app, built as Bokeh's server builds it, against a real Redis."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import redis
from bokeh.application.handlers import DirectoryHandler
from bokeh.document import Document
from bokeh.document.events import ColumnDataChangedEvent, ColumnsStreamedEvent, DocumentChangedEvent

from dashboard.document import build_document
from pipeline.settings import load_settings
from pipeline.storage import Store

APP_DIR = Path(__file__).resolve().parents[1] / "dashboard"
T0 = 1_700_006_400.0
STEP = 600.0
BASE_TEMPERATURE = {"dev-a": 20.0, "dev-b": 30.0}
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


def forecast(device: str, trained_until: float) -> dict:
    base = BASE_TEMPERATURE[device]
    return {
        "job_id": f"job-{device}-{trained_until:.0f}",
        "device_id": device,
        "model": "prophet",
        "model_version": "prophet-test",
        "trained_until": trained_until,
        "points": [
            {
                "ds": trained_until + k * STEP,
                "yhat": base,
                "yhat_lower": base - 1,
                "yhat_upper": base + 1,
            }
            for k in range(1, 7)
        ],
    }


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"redis://127.0.0.1:{port}/0"


@pytest.fixture
def store(redis_client: redis.Redis, redis_url: str, monkeypatch: pytest.MonkeyPatch) -> Store:
    """Two devices with readings and a forecast; the app's settings point at them."""
    monkeypatch.delenv("PIPELINE_CONFIG", raising=False)
    monkeypatch.setenv("PIPELINE_REDIS_URL", redis_url)
    store = Store(redis_client)
    last = T0 + (READINGS_PER_DEVICE - 1) * STEP
    for device in BASE_TEMPERATURE:
        store.add_readings(device, readings(device, 0, READINGS_PER_DEVICE))
        doc = forecast(device, last)
        store.put_forecast(device, doc["job_id"], doc)
    return store


def build_app_document() -> Document:
    """Run the directory app (main.py, theme, template) the way `bokeh serve` does."""
    handler = DirectoryHandler(filename=str(APP_DIR))
    doc = Document()
    handler.modify_document(doc)
    assert not handler.failed, handler.error_detail
    return doc


def refresh(doc: Document) -> None:
    """Run the document's periodic update once, as the server's timer would."""
    (callback,) = doc.session_callbacks
    callback.callback()


def model(doc: Document, name: str):
    found = doc.select_one({"name": name})
    assert found is not None, f"no model named {name!r} in the document"
    return found


def test_document_shows_first_device_readings_and_forecast(store: Store) -> None:
    doc = build_app_document()

    select = model(doc, "device")
    assert list(select.options) == ["dev-a", "dev-b"]
    assert select.value == "dev-a"
    shown = model(doc, "readings").data
    assert len(shown["time"]) == READINGS_PER_DEVICE
    assert shown["time"][0] == T0 * 1000  # datetime axis: milliseconds
    assert all(20 <= t < 21 for t in shown["temperature"])
    band = model(doc, "forecast").data
    assert len(band["time"]) == 6
    assert list(band["yhat_lower"]) == [19.0] * 6
    assert list(band["yhat_upper"]) == [21.0] * 6
    assert "prophet-test" in model(doc, "status").text
    assert doc.theme is not None and doc.template is not None
    assert doc.title == "Sensor forecasts"


def test_switching_device_loads_its_data(store: Store) -> None:
    doc = build_app_document()

    model(doc, "device").value = "dev-b"

    shown = model(doc, "readings").data
    assert len(shown["time"]) == READINGS_PER_DEVICE
    assert all(30 <= t < 31 for t in shown["temperature"])
    assert list(model(doc, "forecast").data["yhat"]) == [30.0] * 6


def test_periodic_update_streams_only_new_readings(store: Store) -> None:
    doc = build_app_document()
    source = model(doc, "readings")
    forecast_source = model(doc, "forecast")
    events: list[DocumentChangedEvent] = []
    doc.on_change(events.append)

    refresh(doc)
    assert len(source.data["time"]) == READINGS_PER_DEVICE
    assert events == []  # nothing new, nothing sent

    store.add_readings("dev-a", readings("dev-a", READINGS_PER_DEVICE, 3))
    refresh(doc)

    assert len(source.data["time"]) == READINGS_PER_DEVICE + 3
    streamed = [e for e in events if isinstance(e, ColumnsStreamedEvent)]
    assert len(streamed) == 1
    assert list(streamed[0].data["time"]) == [
        (T0 + i * STEP) * 1000 for i in range(READINGS_PER_DEVICE, READINGS_PER_DEVICE + 3)
    ]
    assert not any(
        getattr(e, "model", None) is forecast_source for e in events
    )  # same forecast, not resent

    newer = forecast("dev-a", T0 + (READINGS_PER_DEVICE + 2) * STEP)
    store.put_forecast("dev-a", newer["job_id"], newer)
    events.clear()
    refresh(doc)
    assert forecast_source.data["time"][0] == (newer["points"][0]["ds"]) * 1000
    assert not any(isinstance(e, ColumnsStreamedEvent) for e in events)
    assert not any(isinstance(e, ColumnDataChangedEvent) and e.model is source for e in events)


def test_new_devices_appear_in_the_select(store: Store) -> None:
    doc = build_app_document()
    store.add_readings("dev-c", [{"time": T0, "temperature": 22.0, "humidity": 50.0}])
    refresh(doc)
    assert list(model(doc, "device").options) == ["dev-a", "dev-b", "dev-c"]
    assert model(doc, "device").value == "dev-a"


def test_unreachable_redis_is_reported_not_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PIPELINE_CONFIG", raising=False)
    monkeypatch.setenv("PIPELINE_REDIS_URL", closed_port_url())
    doc = build_app_document()

    status = model(doc, "status")
    assert "Redis unreachable at 127.0.0.1:" in status.text
    assert "retrying" in status.text
    refresh(doc)  # still no Redis: still no exception
    assert "unreachable" in status.text
    assert list(model(doc, "device").options) == []


def test_recovers_when_redis_comes_back(store: Store, redis_client: redis.Redis) -> None:
    settings = load_settings(environ={"PIPELINE_REDIS_URL": closed_port_url()})
    flaky = Store(redis.Redis.from_url(settings.redis_url))
    doc = Document()
    build_document(doc, settings, flaky)
    assert "unreachable" in model(doc, "status").text

    flaky.client = redis_client  # Redis is back
    refresh(doc)

    assert "unreachable" not in model(doc, "status").text
    assert model(doc, "device").value == "dev-a"
    assert len(model(doc, "readings").data["time"]) == READINGS_PER_DEVICE
