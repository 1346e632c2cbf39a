"""The stream tier's Prometheus series, beside Faust's own sensor, in one registry.

Every stream worker serves this registry at ``GET /metrics`` on its Faust web
port (``pipeline.metrics_view``). Three kinds of series live here:

- Faust's own sensor (``faust_*``: messages in/out, events, commits,
  rebalances, send latency), installed as the app's monitor. Faust observes its
  latencies in milliseconds and names them so; they are left as Faust defines
  them, so that Faust's documentation and dashboards apply.
- Counters of this system, incremented where the work happens: the connector's
  and ingest's (``pipeline.source.metrics``), the job manager's below, the
  accuracy tracker's (``agents.accuracy``).
- Per-device gauges (event-time lag, seconds since the last reading, silent)
  and table recovery, computed from the worker's own tables when scraped, so
  they describe exactly the devices whose partitions this worker holds.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import faust
from faust.sensors.prometheus import FaustMetrics, PrometheusMonitor
from prometheus_client import CollectorRegistry, Counter, Gauge

FAUST_PREFIX = "faust"


class JobManagerMetrics:
    """What the job manager did, per device."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.jobs_emitted = Counter(
            "job_manager_jobs_emitted",
            "Prediction jobs enqueued for the first time (a redelivered reading adds nothing)",
            ["device", "model"],
            registry=registry,
        )
        self.late_readings = Counter(
            "job_manager_late_readings",
            "Readings at or before the device's pointer: stored, never windowed",
            ["device"],
            registry=registry,
        )


class DeviceGauges:
    """Per-device state of this worker's partitions, set afresh at each scrape."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.event_time_lag = Gauge(
            "device_event_time_lag_seconds",
            "Newest stored reading's event time minus the job manager's pointer",
            ["device"],
            registry=registry,
        )
        self.since_last_reading = Gauge(
            "device_seconds_since_last_reading",
            "Wall-clock seconds since the job manager last saw a new reading",
            ["device"],
            registry=registry,
        )
        self.silent = Gauge(
            "device_silent",
            "1 when a device has sent nothing new for silent_after_seconds, else 0",
            ["device"],
            registry=registry,
        )
        self.devices = Gauge(
            "devices", "Devices whose partitions this worker actively holds", registry=registry
        )
        self.recovery_seconds = Gauge(
            "table_recovery_seconds",
            "Duration of the last table recovery (still running: time so far)",
            registry=registry,
        )
        self.in_recovery = Gauge(
            "table_in_recovery",
            "1 while tables are being recovered from their changelogs",
            registry=registry,
        )

    def set_devices(self, statuses: Iterable[dict[str, Any]], now: float) -> None:
        """Replace the per-device series with these statuses (``pipeline.views`` shape)."""
        for gauge in (self.event_time_lag, self.since_last_reading, self.silent):
            gauge.clear()
        count = 0
        for status in statuses:
            count += 1
            device = status["device_id"]
            if status["event_time_lag_seconds"] is not None:
                self.event_time_lag.labels(device=device).set(status["event_time_lag_seconds"])
            if status["last_reading_wall_time"] is not None:
                since = now - status["last_reading_wall_time"]
                self.since_last_reading.labels(device=device).set(since)
            self.silent.labels(device=device).set(1 if status["silent"] else 0)
        self.devices.set(count)

    def set_recovery(self, app: faust.App) -> None:
        recovery = app.tables.recovery
        started = recovery._recovery_started_at  # Faust keeps no public accessor
        ended = recovery._recovery_ended_at
        self.in_recovery.set(1 if recovery.in_recovery else 0)
        if started is None:
            return
        finished = ended if ended is not None and ended >= started else time.monotonic()
        self.recovery_seconds.set(finished - started)


def install_faust_sensor(app: faust.App, registry: CollectorRegistry) -> None:
    """Make Faust's Prometheus monitor the app's monitor, writing to ``registry``."""
    app.monitor = PrometheusMonitor(metrics=FaustMetrics.create(registry, FAUST_PREFIX))
