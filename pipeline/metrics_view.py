"""``GET /metrics`` on each stream worker's Faust web port (Prometheus text format).

Serves one registry: Faust's sensor, the connector's, ingest's, the job
manager's and the accuracy tracker's counters, and the per-device gauges,
which are refreshed from this worker's tables right before each scrape (the
tables only hold this worker's partitions, so every worker reports its own
devices and a fleet-wide view is a ``sum``/``max`` across workers).
"""

from __future__ import annotations

import time

from faust.web import Request, Response, View
from prometheus_client.exposition import generate_latest

from pipeline.app import app
from pipeline.source.metrics import CONTENT_TYPE, metrics
from pipeline.stream_metrics import DeviceGauges, install_faust_sensor
from pipeline.views import local_statuses

install_faust_sensor(app, metrics.registry)
device_gauges = DeviceGauges(metrics.registry)


@app.page("/metrics")
async def metrics_page(web: View, request: Request) -> Response:
    """This worker's series, with its devices' gauges as of now."""
    device_gauges.set_devices(await local_statuses(), time.time())
    device_gauges.set_recovery(app)
    return web.bytes(generate_latest(metrics.registry), content_type=CONTENT_TYPE)
