"""The dashboard document: one device's readings and latest forecast, kept live.

Every browser session gets its own document and its own ``LiveView``, which
remembers what is already on screen (the device, the newest reading time, the
forecast's trained-until time). A periodic callback then sends the browser only
what changed: new readings are streamed (with a rollover, so a page left open
for days stays small) and the forecast is replaced only when a newer one exists.

Redis calls run on the Bokeh server's event loop, so they use short timeouts and
no client-side retries: a Redis outage must show up as a status line, not freeze
every session, and the next periodic update is the retry.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import redis
from bokeh.document import Document
from bokeh.layouts import column, row
from bokeh.models import ColumnDataSource, Div, HoverTool, Range, Select
from bokeh.plotting import figure
from redis.backoff import NoBackoff
from redis.retry import Retry

from pipeline.settings import Settings, load_settings
from pipeline.storage import Store

log = logging.getLogger(__name__)

MAX_READINGS = 5000  # per device on screen; older readings roll off
REDIS_TIMEOUT_SECONDS = 1.0
READING_COLOR = "#1f77b4"
FORECAST_COLOR = "#ff7f0e"


def connect(redis_url: str) -> Store:
    """A Store that fails fast instead of blocking the server's event loop."""
    client = redis.Redis.from_url(
        redis_url,
        socket_connect_timeout=REDIS_TIMEOUT_SECONDS,
        socket_timeout=REDIS_TIMEOUT_SECONDS,
        retry=Retry(NoBackoff(), 0),
    )
    return Store(client)


def _ms(epoch_seconds: float) -> float:
    """Bokeh datetime axes take milliseconds since the epoch."""
    return epoch_seconds * 1000.0


def _utc(epoch_seconds: float) -> str:
    return datetime.fromtimestamp(epoch_seconds, UTC).strftime("%Y-%m-%d %H:%M UTC")


def _reading_columns(readings: list[dict[str, float]]) -> dict[str, list[float]]:
    return {
        "time": [_ms(r["time"]) for r in readings],
        "temperature": [r["temperature"] for r in readings],
        "humidity": [r["humidity"] for r in readings],
    }


def _forecast_columns(forecast: dict[str, Any] | None) -> dict[str, list[float]]:
    points = forecast["points"] if forecast else []
    return {
        "time": [_ms(p["ds"]) for p in points],
        "yhat": [p["yhat"] for p in points],
        "yhat_lower": [p["yhat_lower"] for p in points],
        "yhat_upper": [p["yhat_upper"] for p in points],
    }


class LiveView:
    """One session's widgets and sources, and what they already show."""

    def __init__(self, settings: Settings, store: Store) -> None:
        self.settings = settings
        self.store = store
        self.device: str | None = None
        self.last_time: float | None = None  # event time of the newest reading shown
        self.forecast_doc: dict[str, Any] | None = None
        self.redis_down = False  # log outages once, not on every refresh

        self.readings = ColumnDataSource(_reading_columns([]), name="readings")
        self.forecast = ColumnDataSource(_forecast_columns(None), name="forecast")
        self.select = Select(title="Device", options=[], name="device", width=240)
        self.status = Div(text="Connecting to Redis…", name="status")
        self.select.on_change("value", self._on_select)
        temperature = self._temperature_figure()
        self.layout = column(
            Div(text="<h2>Sensor forecasts</h2>", name="title"),
            Div(
                text=(
                    "Temperature and humidity readings of one device as they arrive, with "
                    "the latest Prophet forecast of its temperature and its 80% interval."
                ),
                name="description",
            ),
            row(self.select, self.status),
            temperature,
            self._humidity_figure(temperature.x_range),
            sizing_mode="stretch_width",
        )

    def _temperature_figure(self) -> figure:
        plot = figure(
            name="temperature",
            title="Temperature (°C)",
            x_axis_type="datetime",
            height=360,
            sizing_mode="stretch_width",
            tools="pan,xwheel_zoom,box_zoom,reset,save",
        )
        plot.varea(
            x="time",
            y1="yhat_lower",
            y2="yhat_upper",
            source=self.forecast,
            fill_color=FORECAST_COLOR,
            fill_alpha=0.2,
            legend_label="forecast, 80% interval",
        )
        plot.line(
            "time",
            "yhat",
            source=self.forecast,
            color=FORECAST_COLOR,
            line_dash="dashed",
            line_width=2,
            legend_label="forecast",
        )
        readings = plot.line(
            "time",
            "temperature",
            source=self.readings,
            color=READING_COLOR,
            line_width=2,
            legend_label="reading",
        )
        plot.add_tools(
            HoverTool(
                renderers=[readings],
                tooltips=[("time", "@time{%F %T}"), ("°C", "@temperature{0.00}")],
                formatters={"@time": "datetime"},
                mode="vline",
            )
        )
        plot.legend.location = "top_left"
        return plot

    def _humidity_figure(self, x_range: Range) -> figure:
        plot = figure(
            name="humidity",
            title="Humidity (%)",
            x_axis_type="datetime",
            x_range=x_range,
            height=180,
            sizing_mode="stretch_width",
            tools="pan,xwheel_zoom,box_zoom,reset",
        )
        plot.line("time", "humidity", source=self.readings, color=READING_COLOR, line_width=2)
        return plot

    @property
    def _redis_address(self) -> str:
        """Host, port and database of the Redis used, without any credentials."""
        return "{host}:{port}/{db}".format(**self.store.client.connection_pool.connection_kwargs)

    def refresh(self) -> None:
        """Periodic update: pick up new devices, new readings and a newer forecast."""
        self._guarded(self._refresh)

    def _on_select(self, _attr: str, _old: str, new: str) -> None:
        """The user picked a device (a refresh sets ``self.device`` before the value)."""
        if new != self.device:
            self._guarded(lambda: self._show(new))

    def _guarded(self, update: Callable[[], None]) -> None:
        """Run an update; show a Redis outage in the status line instead of raising."""
        try:
            update()
        except redis.RedisError as exc:
            if not self.redis_down:
                log.warning("dashboard: Redis unreachable at %s: %s", self._redis_address, exc)
            self.redis_down = True
            self.status.text = (
                f"Redis unreachable at {self._redis_address} — retrying every "
                f"{self.settings.dashboard_refresh_seconds:g} s"
            )
        else:
            if self.redis_down:
                log.info("dashboard: Redis at %s is back", self._redis_address)
            self.redis_down = False
            self.status.text = self._describe()

    def _refresh(self) -> None:
        devices = self.store.devices()
        if devices != list(self.select.options):
            self.select.options = devices
        if devices and self.select.value not in devices:
            self._show(devices[0])
            self.select.value = devices[0]
        else:
            self._update()

    def _show(self, device: str) -> None:
        """Switch to a device: empty the sources, then load its data afresh."""
        self.device = device
        self.last_time = None
        self.forecast_doc = None
        self.readings.data = _reading_columns([])
        self.forecast.data = _forecast_columns(None)
        self._update()

    def _update(self) -> None:
        """Stream the shown device's new readings; swap in a newer forecast."""
        if self.device is None:
            return
        if self.last_time is None:
            new = self.store.latest_readings(self.device, MAX_READINGS)
        else:
            since = self.store.readings_between(self.device, self.last_time)
            new = [r for r in since if r["time"] > self.last_time]
        if new:
            self.readings.stream(_reading_columns(new), rollover=MAX_READINGS)
            self.last_time = new[-1]["time"]

        latest = self.store.latest_forecast(self.device)
        shown = self.forecast_doc["trained_until"] if self.forecast_doc else None
        if latest is not None and latest["trained_until"] != shown:
            self.forecast.data = _forecast_columns(latest)
            self.forecast_doc = latest

    def _describe(self) -> str:
        count = len(self.select.options)
        if count == 0:
            return "No devices in Redis yet — waiting for the first readings."
        devices = f"{count} device{'' if count == 1 else 's'}"
        if self.device is None:
            return devices
        newest = _utc(self.last_time) if self.last_time is not None else "none yet"
        if self.forecast_doc is None:
            forecast = "no forecast yet"
        else:
            forecast = (
                f"forecast by {self.forecast_doc.get('model_version', 'unknown model')}, "
                f"trained until {_utc(self.forecast_doc['trained_until'])}"
            )
        return f"{devices} · newest reading {newest} · {forecast}"


def build_document(
    doc: Document, settings: Settings | None = None, store: Store | None = None
) -> None:
    """Populate a session's document and schedule its periodic refresh.

    Without ``settings`` they are loaded like every role loads them (YAML file
    named by ``PIPELINE_CONFIG`` plus ``PIPELINE_*`` variables); without a
    ``store`` one is connected to ``settings.redis_url`` and closed with the
    session. Never raises for an unreachable Redis: the status line says so.
    """
    settings = settings or load_settings()
    if store is None:
        store = connect(settings.redis_url)
        doc.on_session_destroyed(lambda _context: store.client.close())
    view = LiveView(settings, store)
    doc.title = "Sensor forecasts"
    doc.add_root(view.layout)
    view.refresh()
    doc.add_periodic_callback(view.refresh, int(settings.dashboard_refresh_seconds * 1000))
