"""Async client of the two Sensibo API v2 endpoints the connector polls.

Every answer is checked against the project's OpenAPI document before a field
is read, and every way a request can go wrong becomes a ``SourceError`` whose
``kind`` names it (timeout, connection, tls, http_5xx, http_4xx, rate_limited,
malformed, envelope, schema), so the connector can count it, skip the device
for one poll and carry on. Transient failures (no answer, 5xx, 429, a body cut
short) are retried with jittered backoff; 429, as an HTTP status or as a JSON
``status``, honours ``Retry-After`` and pauses the shared rate limiter.

The API key travels as the ``apiKey`` query parameter, which is why no URL
with a query string ever reaches a message: errors name the path only, text
that came from the server is scrubbed of the key, and chained aiohttp errors
(whose text can hold the full URL) are not attached.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import quote

import aiohttp

from pipeline.connections import tls_context
from pipeline.source.backoff import Backoff, parse_retry_after
from pipeline.source.openapi_validation import ApiDocument, SchemaViolation
from pipeline.source.rate_limit import TokenBucket

log = logging.getLogger(__name__)

SNIPPET_CHARS = 200


class SourceError(Exception):
    """The device API could not deliver what was asked; ``reason`` says why."""

    kind = "error"
    retryable = False

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class SourceUnavailable(SourceError):
    """No answer: connection refused or reset, DNS failure (``connection``) or a timeout."""

    retryable = True

    def __init__(self, reason: str, kind: str = "connection") -> None:
        super().__init__(reason)
        self.kind = kind


class SourceTLSError(SourceError):
    """The API's certificate failed verification (``tls``): untrusted, expired, wrong host.

    Not retried within a poll: it will not heal in seconds, so the device waits a
    poll and the others go on.
    """

    kind = "tls"


class SourceHTTPError(SourceError):
    """The API answered with an HTTP error status (``status``), e.g. 401 for a wrong key."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.kind = "http_5xx" if status >= 500 else "http_4xx"
        self.retryable = status >= 500


class SourceRateLimited(SourceHTTPError):
    """HTTP 429, or a JSON ``status`` of 429; ``retry_after`` is the wait the API asked for."""

    kind = "rate_limited"
    retryable = True

    def __init__(self, status: int, reason: str, retry_after: float | None) -> None:
        super().__init__(status, reason)
        self.kind = "rate_limited"
        self.retryable = True
        self.retry_after = retry_after


class SourceResponseError(SourceError):
    """The answer broke the contract: not JSON (``malformed``, retried), an error envelope
    (``envelope``), or a body that does not match the API document (``schema``)."""

    def __init__(self, reason: str, kind: str = "schema") -> None:
        super().__init__(reason)
        self.kind = kind
        self.retryable = kind == "malformed"


@dataclass(frozen=True, slots=True)
class RawReading:
    """One sample as the API reported it; None where a series had no value at that time."""

    device_id: str
    time: float  # epoch seconds
    temperature: float | None
    humidity: float | None


@dataclass(frozen=True, slots=True)
class History:
    """A device's samples, oldest first, and the API's clock when it answered.

    ``api_time`` comes from the answer's HTTP ``Date`` header: the reference
    for "a reading from the future", because the API's clock (a simulator's may
    run fast) is the one the device times are on. None if the header is absent.
    """

    readings: list[RawReading]
    api_time: float | None


@dataclass(frozen=True, slots=True)
class DeviceList:
    """The account's device ids and the API's clock when it answered (see ``History``)."""

    ids: list[str]
    api_time: float | None


@dataclass(frozen=True, slots=True)
class _Answer:
    result: Any
    api_time: float | None


def open_session(ca_file: str = "") -> aiohttp.ClientSession:
    """An HTTP session whose HTTPS checks certificates and host names, always.

    It trusts the system's CAs plus ``ca_file`` (the ``source_ca_file`` setting),
    for an API, or a simulator, whose certificate comes from a private CA.
    """
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=tls_context(ca_file)))


class SensiboClient:
    """Reads devices and their recent measurements from a Sensibo API v2 (or the simulator).

    ``limiter`` spaces requests out (shared by all devices), ``concurrency``
    bounds requests in flight (held only while a request is on the wire, never
    during a backoff), ``backoff`` says how often and how long to retry.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        session: aiohttp.ClientSession,
        timeout: float = 10.0,
        *,
        limiter: TokenBucket | None = None,
        concurrency: asyncio.Semaphore | None = None,
        backoff: Backoff | None = None,
        document: ApiDocument | None = None,
    ) -> None:
        self._base_url = base_url.rstrip("/")
        self._api_key = api_key
        self._session = session
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._limiter = limiter
        self._concurrency = concurrency
        self._backoff = backoff or Backoff(attempts=1)
        self._document = document or ApiDocument.bundled()

    async def devices(self) -> DeviceList:
        """The ids of the account's devices, in the API's order, and the API's clock."""
        answer = await self._get("listPods", "users/me/pods", {"fields": "id"})
        return DeviceList([pod["id"] for pod in answer.result], answer.api_time)

    async def list_devices(self) -> list[str]:
        """The ids of the account's devices, in the API's order."""
        return (await self.devices()).ids

    async def history(self, device_id: str, days: int) -> History:
        """The device's samples of the last ``days`` days, oldest first.

        The temperature and humidity series are joined on time; a time found in
        only one series yields a reading with None for the other, kept so that
        the ingest agent decides what is valid. If a series repeats a time, its
        later entry wins.
        """
        if days < 1:
            raise ValueError(f"days must be at least 1, got {days}")
        path = f"pods/{quote(device_id, safe='')}/historicalMeasurements"
        answer = await self._get("getHistoricalMeasurements", path, {"days": str(days)})
        temperature = _series(answer.result["temperature"], "temperature", path)
        humidity = _series(answer.result["humidity"], "humidity", path)
        readings = [
            RawReading(device_id, t, temperature.get(t), humidity.get(t))
            for t in sorted(temperature.keys() | humidity.keys())
        ]
        return History(readings, answer.api_time)

    async def historical_measurements(self, device_id: str, days: int) -> list[RawReading]:
        """The readings of ``history``, without the API's clock."""
        return (await self.history(device_id, days)).readings

    async def _get(self, operation: str, path: str, params: dict[str, str]) -> _Answer:
        """GET ``path`` with retries; return the envelope's ``result`` and the API's clock."""
        attempts = self._backoff.attempts
        for attempt in range(1, attempts + 1):
            if self._limiter is not None:
                await self._limiter.acquire()
            try:
                return await self._get_once(operation, path, params)
            except SourceError as exc:
                retry_after = exc.retry_after if isinstance(exc, SourceRateLimited) else None
                if isinstance(exc, SourceRateLimited) and self._limiter is not None:
                    self._limiter.pause(retry_after or self._backoff.delay(attempt))
                if not exc.retryable or attempt == attempts:
                    raise
                if retry_after is not None and retry_after > self._backoff.cap:
                    raise  # the API wants a longer pause than a poll; the device waits a round
                delay = self._backoff.delay(attempt, retry_after)
                log.info(
                    "device API retry path=%s kind=%s attempt=%d wait_s=%.2f",
                    path,
                    exc.kind,
                    attempt,
                    delay,
                )
                await asyncio.sleep(delay)
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def _get_once(self, operation: str, path: str, params: dict[str, str]) -> _Answer:
        url = f"{self._base_url}/{path}"
        where = self._scrub(f"GET {url}")
        slot = self._concurrency or contextlib.nullcontext()
        try:
            async with (
                slot,
                self._session.get(
                    url,
                    params={**params, "apiKey": self._api_key},
                    headers={"Accept-Encoding": "gzip"},
                    timeout=self._timeout,
                ) as response,
            ):
                status = response.status
                headers = response.headers
                body = await response.read()
        except TimeoutError:
            raise SourceUnavailable(
                f"{where}: no answer within {self._timeout.total} s", kind="timeout"
            ) from None
        except aiohttp.ClientConnectorCertificateError as exc:
            raise SourceTLSError(
                self._scrub(
                    f"{where}: the device API's certificate is not trusted "
                    f"({exc.certificate_error}); if it comes from a private CA, name that CA "
                    "in source_ca_file"
                )
            ) from None
        except aiohttp.ClientError as exc:
            raise SourceUnavailable(self._scrub(f"{where}: {type(exc).__name__}: {exc}")) from None

        try:
            payload: Any = json.loads(body)
            is_json = True
        except ValueError:
            payload, is_json = None, False
        envelope = payload if isinstance(payload, dict) else {}
        reason = envelope.get("reason")
        if not isinstance(reason, str):
            reason = _snippet(body)

        if status == 429 or str(envelope.get("status")) == "429":
            wait = parse_retry_after(headers.get("Retry-After"))
            raise SourceRateLimited(
                status, self._scrub(f"{where} is rate limited (HTTP {status}): {reason}"), wait
            )
        if not 200 <= status < 300:
            raise SourceHTTPError(status, self._scrub(f"{where} answered HTTP {status}: {reason}"))
        if not is_json:
            raise SourceResponseError(
                self._scrub(f"{where}: answer is not JSON: {reason}"), kind="malformed"
            )
        if envelope.get("status") != "success":
            raise SourceResponseError(
                self._scrub(f"{where}: status {envelope.get('status')!r}, not 'success': {reason}"),
                kind="envelope",
            )
        try:
            self._document.check(operation, status, payload)
        except SchemaViolation as exc:
            raise SourceResponseError(
                self._scrub(f"{where}: answer does not match the API document: {exc}")
            ) from None
        return _Answer(payload["result"], _http_date(headers.get("Date")))

    def _scrub(self, text: str) -> str:
        """Remove the API key from text that may echo it (server reasons, aiohttp errors)."""
        return text.replace(self._api_key, "***") if self._api_key else text


def _http_date(value: str | None) -> float | None:
    if not value:
        return None
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _snippet(body: bytes) -> str:
    text = " ".join(body.decode("utf-8", errors="replace").split())
    if not text:
        return "(empty body)"
    return text if len(text) <= SNIPPET_CHARS else text[:SNIPPET_CHARS] + "..."


def _series(entries: list[dict[str, Any]], name: str, path: str) -> dict[float, float | None]:
    """One measurement series (already checked against the document) as {epoch s: value}."""
    values: dict[float, float | None] = {}
    for i, entry in enumerate(entries):
        value = entry["value"]
        values[_epoch(entry["time"], f"{path}: {name}[{i}]")] = (
            None if value is None else float(value)
        )
    return values


def _epoch(value: str, where: str) -> float:
    """ISO-8601 time to epoch seconds; a time without a zone is taken as UTC."""
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise SourceResponseError(f"{where}: 'time' {value!r} is not an ISO-8601 time") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()
