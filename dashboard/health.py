"""Pipeline health: throughput, lag, the queue by state, failure reasons, workers alive.

What each figure measures (so that nobody reads more into it than it says):
  readings in/s     offsets appended to ``readings-raw`` per second: every reading the
                    connector polled, duplicates and invalid ones included (and, under
                    exactly_once, transaction markers)
  readings out/s    distinct readings ingest stored in Redis per second (growth of the
                    per-device reading sets)
  consumer lag      records on ``readings-raw`` and ``readings`` the stream workers'
                    consumer group has not committed yet
  event-time lag    the largest, over devices, of last ingested minus last processed
                    event time: readings not yet closed into a prediction window
The throughput chart streams one point per refresh with a rollover of an hour.
"""

from __future__ import annotations

import html
import math

from bokeh.layouts import column
from bokeh.models import ColumnDataSource, Div, LinearAxis, Range1d
from bokeh.plotting import figure

from dashboard.data import FleetSnapshot, Health
from dashboard.device import utc
from dashboard.style import FIGURES_CSS

HISTORY_SECONDS = 3600.0
IN_COLOR = "#1f77b4"
OUT_COLOR = "#2ca02c"
LAG_COLOR = "#9467bd"


def _rate(value: float | None) -> str:
    return "—" if value is None else f"{value:,.1f}"


def _count(value: int | None) -> str:
    return "—" if value is None else f"{value:,d}"


def _minutes(seconds: float | None) -> str:
    return "—" if seconds is None else f"{seconds / 60:,.0f} min"


def health_html(health: Health) -> str:
    """Figures and the queue table, as one small HTML block."""
    lines = [
        ("readings in /s", _rate(health.readings_in_per_second)),
        ("readings out /s", _rate(health.readings_out_per_second)),
        ("consumer lag", _count(health.consumer_lag)),
        ("event-time lag, max", _minutes(health.max_event_time_lag)),
    ]
    figures = "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in lines)
    jobs = health.jobs
    if jobs is None:
        queue = "<p>Queue: —</p>"
    else:
        queue_rows = "".join(
            f"<tr><td>{html.escape(q.name)}</td><td>{q.queued:,d}</td><td>{q.started:,d}</td>"
            f"<td>{q.finished:,d}</td><td>{q.failed:,d}</td><td>{q.workers:d}</td></tr>"
            for q in jobs.queues
        )
        queue = (
            "<table class='figures'><tr><th>queue</th><th>queued</th><th>started</th>"
            f"<th>finished</th><th>failed</th><th>workers</th></tr>{queue_rows}</table>"
        )
    return f"<b>Pipeline health</b><table class='figures'>{figures}</table>{queue}"


def failures_html(health: Health) -> str:
    """The newest failure reasons, escaped: they are exception text."""
    if health.jobs is None or not health.jobs.failures:
        return "<b>Latest failures</b><br>none"
    items = "".join(
        f"<li><code>{html.escape(f.device_id or f.job_id)}</code>"
        f"{' at ' + utc(f.failed_at) if f.failed_at else ''}: {html.escape(f.reason)}</li>"
        for f in health.jobs.failures
    )
    return f"<b>Latest failures</b><ul class='failures'>{items}</ul>"


def _nan(value: float | None) -> float:
    return math.nan if value is None else float(value)


class HealthPanel:
    """The health figures, failure list and throughput chart."""

    def __init__(self, refresh_seconds: float) -> None:
        self.rollover = max(2, int(HISTORY_SECONDS / refresh_seconds))
        self._last_point = float("-inf")
        self.figures = Div(
            text="<b>Pipeline health</b><br>measuring…", name="health", stylesheets=[FIGURES_CSS]
        )
        self.failures = Div(text="", name="failures", stylesheets=[FIGURES_CSS])
        self.throughput = ColumnDataSource(
            {"time": [], "in": [], "out": [], "lag": []}, name="throughput"
        )
        self.layout = column(self.figures, self._chart(), self.failures, width=400)

    def _chart(self) -> figure:
        plot = figure(
            name="throughput_chart",
            title="Readings /s (left), consumer lag (right), last hour",
            x_axis_type="datetime",
            height=200,
            width=400,
            tools="",
            toolbar_location=None,
        )
        plot.line("time", "in", source=self.throughput, color=IN_COLOR, legend_label="in")
        plot.line("time", "out", source=self.throughput, color=OUT_COLOR, legend_label="out")
        plot.extra_y_ranges = {"lag": Range1d(start=0, end=10)}
        plot.add_layout(LinearAxis(y_range_name="lag"), "right")
        plot.line(
            "time",
            "lag",
            source=self.throughput,
            color=LAG_COLOR,
            line_dash="dashed",
            y_range_name="lag",
            legend_label="lag",
        )
        plot.legend.location = "top_left"
        plot.legend.orientation = "horizontal"
        self._lag_range = plot.extra_y_ranges["lag"]
        return plot

    def apply(self, snapshot: FleetSnapshot) -> None:
        """Update the figures if they changed; add one point to the chart."""
        health = snapshot.health
        for div, text in (
            (self.figures, health_html(health)),
            (self.failures, failures_html(health)),
        ):
            if div.text != text:
                div.text = text
        if snapshot.taken_at <= self._last_point:
            return  # the same shared snapshot, seen again
        self._last_point = snapshot.taken_at
        self.throughput.stream(
            {
                "time": [snapshot.taken_at * 1000.0],
                "in": [_nan(health.readings_in_per_second)],
                "out": [_nan(health.readings_out_per_second)],
                "lag": [_nan(health.consumer_lag)],
            },
            rollover=self.rollover,
        )
        lags = [v for v in self.throughput.data["lag"] if not math.isnan(v)]
        top = max(10.0, max(lags, default=0.0) * 1.1)
        if top != self._lag_range.end:
            self._lag_range.end = top
