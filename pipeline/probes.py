"""Liveness and readiness of a stream worker, on its Faust web port.

``GET /livez`` answers 200 whenever the worker's event loop serves requests:
restart the process only when this stops. ``GET /readyz`` answers 200 once the
worker is a settled group member (not rebalancing, tables recovered), and 503
naming the reason otherwise: a worker that is recovering a table from its
changelog is alive, but its ``/devices/`` answers would be incomplete. Neither
touches Kafka or Redis, so probing every few seconds costs nothing.
"""

from __future__ import annotations

from faust.web import Request, Response, View

from pipeline.app import app


def readiness() -> tuple[bool, str]:
    """(ready, reason) of this worker as the group and its tables stand now."""
    if app.rebalancing:
        return False, "rebalancing"
    if app.tables.recovery.in_recovery:
        return False, "recovering tables from their changelogs"
    return True, "ready"


@app.page("/livez")
async def livez(web: View, request: Request) -> Response:
    """Alive: the event loop answers."""
    return web.json({"status": "alive"})


@app.page("/readyz")
async def readyz(web: View, request: Request) -> Response:
    """Ready: group joined, no rebalance under way, tables recovered."""
    ready, reason = readiness()
    return web.json({"status": reason}, status=200 if ready else 503)
