"""Async client of the two Sensibo API v2 endpoints the connector polls.

It turns every way a poll can go wrong into a ``SourceError`` with a message an
operator can act on, so the connector can skip a device for one poll and carry
on. The API key travels as the ``apiKey`` query parameter, which is why no URL
with a query string ever reaches a message: errors name the path only, text
that came from the server is scrubbed of the key, and chained aiohttp errors
(whose text can hold the full URL) are not attached.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import aiohttp

SNIPPET_CHARS = 200


class SourceError(Exception):
    """The device API could not deliver what was asked; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class SourceUnavailable(SourceError):
    """No answer: connection refused or reset, DNS failure, or a timeout."""


class SourceHTTPError(SourceError):
    """The API answered with an HTTP error status (``status``), e.g. 401 for a wrong key."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


class SourceResponseError(SourceError):
    """The answer broke the contract: not JSON, an error envelope, missing or ill-typed fields."""


@dataclass(frozen=True, slots=True)
class RawReading:
    """One sample as the API reported it; None where a series had no value at that time."""

    device_id: str
    time: float  # epoch seconds
    temperature: float | None
    humidity: float | None


class SensiboClient:
    """Reads devices and their recent measurements from a Sensibo API v2 (or the simulator)."""

    def __init__(
        self, base_url: str, api_key: str, session: aiohttp.ClientSession, timeout: float = 10.0
    ) -> None:
        self._base_url = base_url.rstrip("/")
        self._api_key = api_key
        self._session = session
        self._timeout = aiohttp.ClientTimeout(total=timeout)

    async def list_devices(self) -> list[str]:
        """The ids of the account's devices, in the API's order."""
        path = "users/me/pods"
        result = await self._get(path, {"fields": "id"})
        if not isinstance(result, list):
            raise SourceResponseError(f"{path}: 'result' is not a list")
        ids = []
        for i, pod in enumerate(result):
            pod_id = pod.get("id") if isinstance(pod, dict) else None
            if not isinstance(pod_id, str) or not pod_id:
                raise SourceResponseError(f"{path}: result[{i}] has no string 'id'")
            ids.append(pod_id)
        return ids

    async def historical_measurements(self, device_id: str, days: int) -> list[RawReading]:
        """The device's samples of the last ``days`` days, oldest first.

        The temperature and humidity series are joined on time; a time found in
        only one series yields a reading with None for the other, kept so that
        the ingest agent decides what is valid. If a series repeats a time, its
        later entry wins.
        """
        if days < 1:
            raise ValueError(f"days must be at least 1, got {days}")
        path = f"pods/{quote(device_id, safe='')}/historicalMeasurements"
        result = await self._get(path, {"days": str(days)})
        if not isinstance(result, dict):
            raise SourceResponseError(f"{path}: 'result' is not an object")
        temperature = _series(result, "temperature", path)
        humidity = _series(result, "humidity", path)
        return [
            RawReading(device_id, t, temperature.get(t), humidity.get(t))
            for t in sorted(temperature.keys() | humidity.keys())
        ]

    async def _get(self, path: str, params: dict[str, str]) -> Any:
        """GET ``path`` and return the envelope's ``result``."""
        url = f"{self._base_url}/{path}"
        where = self._scrub(f"GET {url}")
        try:
            async with self._session.get(
                url,
                params={**params, "apiKey": self._api_key},
                headers={"Accept-Encoding": "gzip"},
                timeout=self._timeout,
            ) as response:
                status = response.status
                body = await response.read()
        except TimeoutError:
            raise SourceUnavailable(f"{where}: no answer within {self._timeout.total} s") from None
        except aiohttp.ClientError as exc:
            raise SourceUnavailable(self._scrub(f"{where}: {type(exc).__name__}: {exc}")) from None

        try:
            payload: Any = json.loads(body)
            is_json = True
        except ValueError:
            payload, is_json = None, False
        reason = payload.get("reason") if isinstance(payload, dict) else None
        if not isinstance(reason, str):
            reason = _snippet(body)

        if not 200 <= status < 300:
            raise SourceHTTPError(status, self._scrub(f"{where} answered HTTP {status}: {reason}"))
        if not is_json:
            raise SourceResponseError(self._scrub(f"{where}: answer is not JSON: {reason}"))
        if not isinstance(payload, dict) or payload.get("status") != "success":
            got = payload.get("status") if isinstance(payload, dict) else None
            raise SourceResponseError(
                self._scrub(f"{where}: status {got!r}, not 'success': {reason}")
            )
        if "result" not in payload:
            raise SourceResponseError(f"{where}: envelope has no 'result'")
        return payload["result"]

    def _scrub(self, text: str) -> str:
        """Remove the API key from text that may echo it (server reasons, aiohttp errors)."""
        return text.replace(self._api_key, "***") if self._api_key else text


def _snippet(body: bytes) -> str:
    text = " ".join(body.decode("utf-8", errors="replace").split())
    if not text:
        return "(empty body)"
    return text if len(text) <= SNIPPET_CHARS else text[:SNIPPET_CHARS] + "..."


def _series(result: dict[str, Any], name: str, path: str) -> dict[float, float | None]:
    """One measurement series as {epoch seconds: value}."""
    entries = result.get(name)
    if not isinstance(entries, list):
        raise SourceResponseError(f"{path}: '{name}' is missing or not a list")
    values: dict[float, float | None] = {}
    for i, entry in enumerate(entries):
        where = f"{path}: {name}[{i}]"
        if not isinstance(entry, dict):
            raise SourceResponseError(f"{where} is not an object")
        values[_epoch(entry.get("time"), where)] = _value(entry.get("value"), where)
    return values


def _epoch(value: object, where: str) -> float:
    """ISO-8601 time to epoch seconds; a time without a zone is taken as UTC."""
    if not isinstance(value, str):
        raise SourceResponseError(f"{where}: 'time' is missing or not a string")
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise SourceResponseError(f"{where}: 'time' {value!r} is not an ISO-8601 time") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _value(value: object, where: str) -> float | None:
    """A sample value; JSON null stays None, so a gap is visible downstream."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SourceResponseError(f"{where}: 'value' {value!r} is not a number")
    return float(value)
