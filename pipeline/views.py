"""Faust web views: per-device status beside Faust's built-in ``/table/`` views.

Each worker holds the job-manager tables of its own partitions only, so:
``GET /devices/local/`` answers for the devices this worker is active for;
``GET /devices/`` asks every worker that holds a partition (from the partition
assignor's table metadata) and merges their answers, so any worker answers
for the whole fleet; ``GET /devices/{id}/`` is answered by, or forwarded to,
the worker that owns the device's key. Newest reading times and forecasts come
from Redis, which every worker can read.

Ownership comes from Faust's partition assignor; the key's partition is computed
here with Kafka's default partitioner rather than with ``app.router`` /
``table_route``, which ask the producer's metadata for the changelog topic and
fail while the producer has not written to it (always, under exactly_once).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from aiokafka.partitioner import DefaultPartitioner
from faust.types import TP
from faust.web import Request, Response, View

from pipeline.accuracy import device_accuracy
from pipeline.app import app, settings
from pipeline.prediction.selection import selection_status
from pipeline.storage import AsyncStore
from tables.dead_letters import dead_letters
from tables.pointers import jobs_emitted, last_processed, last_seen_wall, late_readings

log = logging.getLogger(__name__)

store = AsyncStore.from_settings(settings)

INCOMPLETE_HEADER = "X-Devices-Incomplete"


_partitioner = DefaultPartitioner()


def _changelog() -> str:
    return last_processed.changelog_topic.get_topic_name()


def _partition_of(device_id: str) -> int:
    """The partition of a device's key, as Kafka's default (murmur2) partitioner picks it."""
    partitions = list(range(settings.topic_partitions))
    return _partitioner(device_id.encode(), partitions, partitions)


def _owned_here(device_id: str) -> bool:
    """Whether this worker is the active owner of the device's table partition."""
    return app.assignor.is_active(TP(_changelog(), _partition_of(device_id)))


def _owner_url(device_id: str) -> str | None:
    """Web address of the worker that owns the device, if the assignment is known."""
    partition = _partition_of(device_id)
    for host, topics in app.assignor.table_metadata(_changelog()).items():
        if partition in topics.get(_changelog(), ()):
            return str(host).rstrip("/")
    return None


def device_status(
    device_id: str, newest: float | None, forecast: dict[str, Any] | None, now: float
) -> dict[str, Any]:
    """The status entry of one device, from its tables and Redis."""
    processed = last_processed.get(device_id)
    seen = last_seen_wall.get(device_id)
    return {
        "device_id": device_id,
        "model": settings.model_for(device_id),
        "window_seconds": settings.window_for(device_id),
        "last_ingested_time": newest,
        "last_processed_time": processed,
        "event_time_lag_seconds": (
            newest - processed if newest is not None and processed is not None else None
        ),
        "jobs_emitted": jobs_emitted.get(device_id, 0),
        "late_readings": late_readings.get(device_id, 0),
        "dead_letters": dead_letters.get(device_id, 0),
        "last_reading_wall_time": seen,
        "silent": seen is not None and now - seen > settings.silent_after_seconds,
        "forecast_trained_until": forecast["trained_until"] if forecast else None,
    }


async def local_statuses() -> list[dict[str, Any]]:
    """Status of every device whose partition this worker actively holds."""
    device_ids = sorted(d for d in last_processed if _owned_here(d))
    newest = await store.newest_times(device_ids)
    forecasts = await store.latest_forecasts(device_ids)
    now = time.time()
    return [device_status(d, newest[d], forecasts[d], now) for d in device_ids]


@app.page("/devices/local/")
async def devices_local(web: View, request: Request) -> Response:
    """Devices this worker is the active owner of."""
    return web.json(await local_statuses())


@app.page("/devices/")
async def devices(web: View, request: Request) -> Response:
    """Every device in the cluster, merged from the workers that own them.

    If a worker cannot be reached (a rebalance, a crash), its devices are
    missing and the ``X-Devices-Incomplete`` header names it.
    """
    own_url = str(app.conf.canonical_url).rstrip("/")
    peers = {str(url).rstrip("/") for url in app.assignor.table_metadata(_changelog())}
    entries = await local_statuses()
    unreachable = []
    for peer in sorted(peers - {own_url}):
        try:
            async with app.http_client.get(f"{peer}/devices/local/", timeout=5) as response:
                response.raise_for_status()
                entries.extend(await response.json())
        except Exception as exc:  # a peer's failure must not fail the whole answer
            log.warning("device status of %s unavailable: %s", peer, exc)
            unreachable.append(peer)
    entries.sort(key=lambda entry: entry["device_id"])
    headers = {INCOMPLETE_HEADER: ", ".join(unreachable)} if unreachable else None
    return web.json(entries, headers=headers)


@app.page("/devices/{device_id}/")
async def device(web: View, request: Request, device_id: str) -> Response:
    """One device's status plus its latest forecast (``ds`` in epoch seconds)."""
    if not _owned_here(device_id):
        owner = _owner_url(device_id)
        if owner is None or owner == str(app.conf.canonical_url).rstrip("/"):
            return web.json({"error": "partition assignment in progress, retry"}, status=503)
        async with app.http_client.get(f"{owner}/devices/{device_id}/", timeout=5) as response:
            return web.text(
                await response.text(),
                content_type=response.content_type,
                status=response.status,
            )
    if device_id not in last_processed:
        return web.json({"error": f"unknown device {device_id!r}"}, status=404)
    latest = await store.latest_forecast(device_id)
    newest = await store.newest_time(device_id)
    entry = device_status(device_id, newest, latest, time.time())
    entry["forecast"] = (
        {
            "model": latest["model"],
            "trained_until": latest["trained_until"],
            "points": latest["points"],
        }
        if latest
        else None
    )
    entry["accuracy"] = await device_accuracy(store.client, device_id)
    entry["selection"] = selection_status(
        settings.model_for(device_id), device_id in settings.device_models, latest
    )
    return web.json(entry)
