"""The stream tier's per-device pointers, from the Faust web view's ``GET /devices/``.

The event-time pointers live in Faust's changelogged tables, not in Redis, so
the dashboard asks a worker's web view for them. Any worker answers for the
whole fleet (it merges its peers' answers); when a peer could not be reached the
answer says so in its ``X-Devices-Incomplete`` header, which the page shows.
"""

from __future__ import annotations

import json
import urllib.request
from dataclasses import dataclass

TIMEOUT_SECONDS = 2.0


INCOMPLETE_HEADER = "X-Devices-Incomplete"


@dataclass(frozen=True)
class Pointers:
    """Where the stream tier stands for one device (event times, epoch seconds)."""

    last_ingested_time: float | None
    last_processed_time: float | None
    jobs_emitted: int
    silent: bool | None  # the worker's own judgement, from wall time of arrival

    @property
    def event_time_lag(self) -> float | None:
        """Event time ingested but not yet closed into a prediction window."""
        if self.last_ingested_time is None or self.last_processed_time is None:
            return None
        return max(0.0, self.last_ingested_time - self.last_processed_time)


@dataclass(frozen=True)
class DeviceView:
    pointers: dict[str, Pointers]
    missing_workers: str | None  # workers whose devices the answer lacks


def fetch_pointers(base_url: str, timeout: float = TIMEOUT_SECONDS) -> DeviceView:
    """Pointers by device id; raises OSError or ValueError when the view is unreachable or odd."""
    with urllib.request.urlopen(f"{base_url}/devices/", timeout=timeout) as response:
        entries = json.load(response)
        missing = response.headers.get(INCOMPLETE_HEADER)
    if not isinstance(entries, list):
        raise ValueError(f"expected a JSON list from {base_url}/devices/")
    pointers = {
        str(entry["device_id"]): Pointers(
            last_ingested_time=entry.get("last_ingested_time"),
            last_processed_time=entry.get("last_processed_time"),
            jobs_emitted=int(entry.get("jobs_emitted") or 0),
            silent=entry.get("silent"),
        )
        for entry in entries
    }
    return DeviceView(pointers, missing or None)
