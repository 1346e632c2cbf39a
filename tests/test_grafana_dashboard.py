"""The Grafana dashboard in deploy/ asks only for series the system exports.

Series names are collected from the live registries (the stream worker's, with
Faust's sensor, and a prediction worker's with its queue collector reading a
real Redis), so renaming a metric without updating the dashboard fails here.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "deploy" / "grafana" / "sensor-forecasts.json"
PROMQL_WORDS = {"sum", "max", "min", "avg", "rate", "topk", "histogram_quantile", "by", "le"}
SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "gauge": ("",),
    "unknown": ("",),
}


def series_names(registry: CollectorRegistry) -> set[str]:
    return {
        family.name + suffix
        for family in registry.collect()
        for suffix in SUFFIXES.get(family.type, ("",))
    }


def metric_names(expr: str) -> set[str]:
    """Identifiers an expression reads, without functions, grouping labels and matchers."""
    expr = re.sub(r"\b(by|without)\s*\([^)]*\)", " ", expr)
    expr = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", expr)
    words = set(re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", expr))
    return words - PROMQL_WORDS


@pytest.fixture
def exported(redis_client) -> set[str]:
    from pipeline.app import app  # noqa: F401  (registers every stream metric)
    from pipeline.prediction.observed_worker import QueueCollector, WorkerMetrics
    from pipeline.queue import make_queue
    from pipeline.settings import Settings
    from pipeline.source.metrics import metrics

    worker = WorkerMetrics()
    worker.registry.register(QueueCollector([make_queue(Settings(), redis_client, "grafana")]))
    return series_names(metrics.registry) | series_names(worker.registry)


def test_every_panel_query_reads_exported_series(exported) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    queries = [
        target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])
    ]
    assert len(queries) >= 20
    unknown = {name for expr in queries for name in metric_names(expr)} - exported
    assert unknown == set(), f"dashboard queries series nobody exports: {sorted(unknown)}"


def test_the_dashboard_covers_every_tier() -> None:
    text = DASHBOARD.read_text()
    for series in (
        "ingest_records_total",
        "job_manager_jobs_emitted_total",
        "device_event_time_lag_seconds",
        "table_recovery_seconds",
        "faust_messages_received_total",
        "prediction_queue_jobs",
        "prediction_job_failures_total",
        "prediction_fit_seconds_bucket",
        "forecast_absolute_error_celsius_total",
    ):
        assert series in text, f"no panel shows {series}"
