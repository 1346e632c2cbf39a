"""Counters of what the device API delivered and what ingest made of it.

One object groups every metric, created against a registry of its own so that
tests and benchmarks can make a fresh one; the Faust web server exposes it at
``GET /metrics`` in Prometheus' text format. Every series is labelled by
device; totals are the sums over that label (``sum by (outcome) (...)``).
Each worker reports what it did: the connector's series come from the leader,
ingest's from whichever worker holds the device's partition.
"""

from __future__ import annotations

import faust
from faust.web import Request, Response, View
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import generate_latest

CONTENT_TYPE = "text/plain; version=0.0.4"  # Prometheus text format; aiohttp adds the charset
POLL_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class SourceMetrics:
    """Connector and ingest counters, per device."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.fetched = Counter(
            "connector_records_fetched",
            "Readings the device API returned, duplicates across polls included",
            ["device"],
            registry=self.registry,
        )
        self.produced = Counter(
            "connector_records_produced",
            "Readings the connector produced to readings-raw (not sent before by this leader)",
            ["device"],
            registry=self.registry,
        )
        self.api_errors = Counter(
            "connector_api_errors",
            "Failed device API requests after retries, by kind "
            "(timeout, connection, http_5xx, http_4xx, rate_limited, malformed, envelope, "
            "schema); device is empty for the device list",
            ["device", "kind"],
            registry=self.registry,
        )
        self.poll_seconds = Histogram(
            "connector_poll_seconds",
            "Time to poll one device: request, retries and producing",
            buckets=POLL_BUCKETS,
            registry=self.registry,
        )
        self.ingested = Counter(
            "ingest_records",
            "Raw readings by ingest outcome: new, duplicate or rejected",
            ["device", "outcome"],
            registry=self.registry,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)


def register_page(app: faust.App, metrics: SourceMetrics) -> None:
    """Serve ``metrics`` at ``GET /metrics`` on the app's web server."""

    @app.page("/metrics")
    async def metrics_page(web: View, request: Request) -> Response:
        return web.bytes(metrics.render(), content_type=CONTENT_TYPE)


metrics = SourceMetrics()  # this process's counters, served at /metrics by the Faust app
