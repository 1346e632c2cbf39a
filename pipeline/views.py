"""Faust web views: per-device status beside Faust's built-in ``/table/`` views.

``GET /devices/`` lists the devices whose table partitions this worker holds;
``GET /devices/{id}/`` is routed by Faust to the worker that owns the device's
key, and adds the latest forecast from Redis.
"""

from __future__ import annotations

from typing import Any

from faust.web import Request, Response, View

from pipeline.app import app, settings
from pipeline.storage import AsyncStore
from tables.pointers import jobs_emitted, last_ingested, last_processed

store = AsyncStore.from_url(settings.redis_url)


async def _status(device_id: str, forecast: dict[str, Any] | None) -> dict[str, Any]:
    return {
        "device_id": device_id,
        "last_ingested_time": last_ingested.get(device_id),
        "last_processed_time": last_processed.get(device_id),
        "jobs_emitted": jobs_emitted.get(device_id, 0),
        "forecast_trained_until": forecast["trained_until"] if forecast else None,
    }


@app.page("/devices/")
async def devices(web: View, request: Request) -> Response:
    """Status of every device this worker holds, one JSON entry each."""
    device_ids = sorted(set(last_ingested.keys()) | set(last_processed.keys()))
    entries = [await _status(d, await store.latest_forecast(d)) for d in device_ids]
    return web.json(entries)


@app.page("/devices/{device_id}/")
@app.table_route(table=last_processed, match_info="device_id")
async def device(web: View, request: Request, device_id: str) -> Response:
    """One device's status plus its latest forecast (``ds`` in epoch seconds)."""
    if device_id not in last_ingested and device_id not in last_processed:
        return web.json({"error": f"unknown device {device_id!r}"}, status=404)
    latest = await store.latest_forecast(device_id)
    entry = await _status(device_id, latest)
    entry["forecast"] = (
        {
            "model": latest["model"],
            "trained_until": latest["trained_until"],
            "points": latest["points"],
        }
        if latest
        else None
    )
    return web.json(entry)
