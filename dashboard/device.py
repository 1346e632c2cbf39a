"""The device view: one device's readings, forecasts, anomalies and accuracy, kept live.

The panel remembers what it shows as a ``DeviceCursor``; the session reads what
is newer than the cursor off the event loop and hands the result back here.
New readings and anomalies are streamed with a rollover (a page left open for
days stays the same size); the forecast, its band and the earlier forecasts are
replaced only when a new forecast exists. An update read for an older cursor
(the user switched devices meanwhile) is dropped.
"""

from __future__ import annotations

import html
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from bokeh.layouts import column, row
from bokeh.models import ColumnDataSource, Div, HoverTool, Range, Select
from bokeh.plotting import figure

from dashboard.data import MAX_ANOMALIES, MAX_READINGS, DeviceCursor, DeviceUpdate
from dashboard.quality import Accuracy
from dashboard.style import FIGURES_CSS

READING_COLOR = "#1f77b4"
FORECAST_COLOR = "#ff7f0e"
PAST_COLOR = "#8c8c8c"
ANOMALY_COLOR = "#d62728"


def ms(epoch_seconds: float) -> float:
    """Bokeh datetime axes take milliseconds since the epoch."""
    return epoch_seconds * 1000.0


def utc(epoch_seconds: float) -> str:
    return datetime.fromtimestamp(epoch_seconds, UTC).strftime("%Y-%m-%d %H:%M UTC")


def _reading_columns(readings: list[dict[str, float]]) -> dict[str, list[float]]:
    return {
        "time": [ms(r["time"]) for r in readings],
        "temperature": [r["temperature"] for r in readings],
        "humidity": [r["humidity"] for r in readings],
    }


def _forecast_columns(forecast: dict[str, Any] | None) -> dict[str, list[float]]:
    points = forecast["points"] if forecast else []
    return {
        "time": [ms(p["ds"]) for p in points],
        "yhat": [p["yhat"] for p in points],
        "yhat_lower": [p["yhat_lower"] for p in points],
        "yhat_upper": [p["yhat_upper"] for p in points],
    }


def _past_columns(forecasts: list[dict[str, Any]]) -> dict[str, list]:
    return {
        "xs": [[ms(p["ds"]) for p in f["points"]] for f in forecasts],
        "ys": [[p["yhat"] for p in f["points"]] for f in forecasts],
        "trained_until": [ms(f["trained_until"]) for f in forecasts],
    }


def _anomaly_columns(anomalies: list[dict[str, float]]) -> dict[str, list[float]]:
    return {"time": [ms(a["time"]) for a in anomalies], "value": [a["value"] for a in anomalies]}


def _figure(value: float | None, pattern: str) -> str:
    return "—" if value is None else pattern.format(value)


def _percent(share: float | None) -> float | None:
    return None if share is None else share * 100


def accuracy_html(figures: dict[str, Accuracy]) -> str:
    """A small table of each model's accuracy for the device, or a note that none exist."""
    if not figures:
        return "<p><b>Accuracy</b><br>No accuracy figures for this device yet.</p>"
    rows = "".join(
        f"<tr><td>{html.escape(a.model)}</td><td>{_figure(a.mae, '{:.2f}')}</td>"
        f"<td>{_figure(a.mape, '{:.1f}')}</td>"
        f"<td>{_figure(_percent(a.coverage), '{:.0f}')}</td>"
        f"<td>{_figure(_percent(a.nominal_coverage), '{:.0f}')}</td>"
        f"<td>{_figure(a.count, '{:d}')}</td></tr>"
        for a in sorted(figures.values(), key=lambda a: a.model)
    )
    return (
        "<b>Accuracy per model</b><table class='figures'><tr><th>model</th><th>MAE °C</th>"
        f"<th>MAPE %</th><th>in interval %</th><th>nominal %</th><th>readings</th></tr>"
        f"{rows}</table>"
    )


def selection_text(forecast: dict[str, Any]) -> str:
    """Why this forecast is served (model ``auto``): its weights, reason and calibration."""
    served = forecast.get("served")
    if not served:
        return ""
    weights = ", ".join(f"{html.escape(m)} {w:.0%}" for m, w in served["weights"].items())
    calibration = served.get("calibration", {})
    if calibration.get("applied"):
        calibrated = (
            f"interval calibrated on {calibration['scores']} recent readings "
            f"(raw coverage {calibration['raw_coverage']:.0%}, "
            f"nominal {calibration['nominal_coverage']:.0%})"
        )
    else:
        calibrated = "interval not calibrated yet (too few recent readings scored)"
    return f" · served: {weights}: {html.escape(served['reason'])}; {calibrated}"


class DevicePanel:
    """Widgets and sources of the device view, and the cursor of what they show."""

    def __init__(self) -> None:
        self.cursor: DeviceCursor | None = None
        self._generation = 0
        self._forecast_summary: dict[str, Any] | None = None
        self.readings = ColumnDataSource(_reading_columns([]), name="readings")
        self.forecast = ColumnDataSource(_forecast_columns(None), name="forecast")
        self.past = ColumnDataSource(_past_columns([]), name="past_forecasts")
        self.anomalies = ColumnDataSource(_anomaly_columns([]), name="anomalies")
        self.select = Select(title="Device", options=[], name="device", width=240)
        self.status = Div(text="", name="device_status")
        self.accuracy = Div(
            text=accuracy_html({}), name="accuracy", width=320, stylesheets=[FIGURES_CSS]
        )
        temperature = self._temperature_figure()
        self.layout = column(
            Div(text="<h3>Device</h3>", name="device_title"),
            row(self.select, self.status),
            row(temperature, self.accuracy, sizing_mode="stretch_width"),
            self._humidity_figure(temperature.x_range),
            sizing_mode="stretch_width",
        )

    def _temperature_figure(self) -> figure:
        plot = figure(
            name="temperature",
            title="Temperature (°C): readings, latest forecast with its 80% interval, "
            "earlier forecasts",
            x_axis_type="datetime",
            height=340,
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
        plot.multi_line(
            "xs",
            "ys",
            source=self.past,
            line_color=PAST_COLOR,
            line_alpha=0.7,
            line_dash="dotted",
            line_width=1.5,
            legend_label="earlier forecasts",
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
        plot.scatter(
            "time",
            "value",
            source=self.anomalies,
            marker="x",
            size=10,
            line_width=2,
            color=ANOMALY_COLOR,
            legend_label="anomaly",
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
            height=170,
            sizing_mode="stretch_width",
            tools="pan,xwheel_zoom,box_zoom,reset",
        )
        plot.line("time", "humidity", source=self.readings, color=READING_COLOR, line_width=2)
        return plot

    def switch(self, device_id: str) -> DeviceCursor:
        """Show another device: empty every source; its data follows with the next update."""
        self._generation += 1
        self.cursor = DeviceCursor(device_id, self._generation)
        self._forecast_summary = None
        self.readings.data = _reading_columns([])
        self.forecast.data = _forecast_columns(None)
        self.past.data = _past_columns([])
        self.anomalies.data = _anomaly_columns([])
        self.accuracy.text = accuracy_html({})
        self.status.text = f"Loading {html.escape(device_id)}…"
        return self.cursor

    def apply(self, update: DeviceUpdate) -> None:
        """Send the browser what is new; drop an update read for another cursor."""
        if update.cursor != self.cursor or update.error is not None:
            return
        cursor = self.cursor
        if update.readings:
            self.readings.stream(_reading_columns(update.readings), rollover=MAX_READINGS)
            cursor = replace(cursor, last_time=update.readings[-1]["time"])
        if update.forecast is not None:
            self.forecast.data = _forecast_columns(update.forecast)
            self.past.data = _past_columns(update.past_forecasts or [])
            self._forecast_summary = update.forecast
            cursor = replace(cursor, forecast_id=update.forecast.get("job_id"))
        if update.anomalies:
            self.anomalies.stream(_anomaly_columns(update.anomalies), rollover=MAX_ANOMALIES)
            cursor = replace(cursor, last_anomaly=update.anomalies[-1]["time"])
        accuracy = accuracy_html(update.accuracy)
        if accuracy != self.accuracy.text:
            self.accuracy.text = accuracy
        self.cursor = cursor
        status = self._describe()
        if status != self.status.text:
            self.status.text = status

    def _describe(self) -> str:
        cursor = self.cursor
        if cursor is None:
            return ""
        newest = utc(cursor.last_time) if cursor.last_time is not None else "none yet"
        forecast = self._forecast_summary
        if forecast is None:
            made = "no forecast yet"
        else:
            made = (
                f"forecast by {html.escape(str(forecast.get('model_version', 'unknown model')))}, "
                f"trained until {utc(forecast['trained_until'])}"
                f"{selection_text(forecast)}"
            )
        return f"newest reading {newest} · {made}"
