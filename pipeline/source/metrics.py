"""Counters of what the device API delivered and what ingest made of it.

One object groups every metric, created against a registry of its own so that
tests and benchmarks can make a fresh one; its registry is the one every stream
worker serves at ``GET /metrics`` (``pipeline.metrics_view``). Every series is labelled by
device; totals are the sums over that label (``sum by (outcome) (...)``).
Each worker reports what it did: the connector's series come from the leader,
ingest's from whichever worker holds the device's partition.
"""

from __future__ import annotations

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


metrics = SourceMetrics()  # this process's registry, served at /metrics by the Faust app
