"""The Sensibo client against the simulator, and against servers that misbehave."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import traceback
from collections.abc import AsyncIterator, Coroutine
from typing import Any

import aiohttp
import pytest
from aiohttp import test_utils, web

from pipeline.source.sensibo import (
    RawReading,
    SensiboClient,
    SourceError,
    SourceHTTPError,
    SourceResponseError,
    SourceUnavailable,
)
from pipeline.source.simulator import SimulatorConfig, build_app, device_ids

KEY = "client-key-5e1f9b"
START = 1_700_000_040  # a multiple of 60


def drive(coro: Coroutine[Any, Any, Any], timeout: float = 30.0) -> Any:
    return asyncio.run(asyncio.wait_for(coro, timeout))


@contextlib.asynccontextmanager
async def client_for(
    app: web.Application, key: str = KEY, timeout: float = 5.0
) -> AsyncIterator[SensiboClient]:
    async with test_utils.TestServer(app) as server, aiohttp.ClientSession() as session:
        yield SensiboClient(str(server.make_url("/api/v2")), key, session, timeout)


def simulator_app(**overrides: Any) -> web.Application:
    settings: dict[str, Any] = {"start": START, "duration_seconds": 0.0} | overrides
    return build_app(SimulatorConfig(api_key=KEY, **settings))


def assert_key_hidden(exc: BaseException) -> None:
    """The key appears nowhere an operator could see it: message, repr, traceback."""
    shown = str(exc) + repr(exc) + "".join(traceback.format_exception(exc))
    assert KEY not in shown


# --- against the simulator -----------------------------------------------------------------


def test_lists_the_simulators_devices() -> None:
    async def scenario() -> list[str]:
        async with client_for(simulator_app(devices=4, seed=3)) as client:
            return await client.list_devices()

    assert drive(scenario()) == device_ids(3, 4)


def test_parses_history_into_readings_with_epoch_times() -> None:
    device = device_ids(0, 1)[0]

    async def scenario() -> tuple[list[RawReading], dict]:
        async with test_utils.TestServer(simulator_app(history_seconds=7200.0)) as server:
            base = str(server.make_url("/api/v2"))
            async with aiohttp.ClientSession() as session:
                readings = await SensiboClient(base, KEY, session).historical_measurements(
                    device, 1
                )
                raw_url = f"{base}/pods/{device}/historicalMeasurements"
                async with session.get(raw_url, params={"apiKey": KEY, "days": "1"}) as response:
                    raw = (await response.json())["result"]
        return readings, raw

    readings, raw = drive(scenario())
    assert len(readings) == 121
    assert [r.time for r in readings] == [float(START - 7200 + 60 * i) for i in range(121)]
    assert {r.device_id for r in readings} == {device}
    assert [r.temperature for r in readings] == [e["value"] for e in raw["temperature"]]
    assert [r.humidity for r in readings] == [e["value"] for e in raw["humidity"]]
    assert all(isinstance(r.temperature, float) and isinstance(r.humidity, float) for r in readings)


def test_a_wrong_key_raises_a_clear_error_without_the_key() -> None:
    async def wrong_key() -> SourceError:
        app = build_app(
            SimulatorConfig(api_key="the-simulators-own-key", start=START, duration_seconds=0.0)
        )
        async with client_for(app) as client:
            with pytest.raises(SourceHTTPError) as caught:
                await client.historical_measurements(device_ids(0, 1)[0], 1)
            return caught.value

    error = drive(wrong_key())
    assert error.status == 401
    assert "HTTP 401" in str(error) and "invalid apiKey" in str(error)
    assert "/historicalMeasurements" in str(error)
    assert_key_hidden(error)


def test_unknown_device_and_bad_days() -> None:
    async def scenario() -> tuple[SourceHTTPError, SourceHTTPError]:
        async with client_for(simulator_app()) as client:
            with pytest.raises(SourceHTTPError) as missing:
                await client.historical_measurements("zzzzzzzz", 1)
            with pytest.raises(SourceHTTPError) as too_many:
                await client.historical_measurements(device_ids(0, 1)[0], 8)
            with pytest.raises(ValueError, match="days"):
                await client.historical_measurements("zzzzzzzz", 0)
        return missing.value, too_many.value

    missing, too_many = drive(scenario())
    assert missing.status == 404 and "no pod with id 'zzzzzzzz'" in str(missing)
    assert too_many.status == 400 and "days" in str(too_many)
    assert_key_hidden(missing)


# --- against servers that misbehave --------------------------------------------------------

SEEN = web.AppKey("seen", list)


def answering(status: int, body: str, content_type: str = "application/json") -> web.Application:
    """A server that answers every API request alike, recording what it was sent."""

    async def handler(request: web.Request) -> web.Response:
        request.app[SEEN].append(request)
        return web.Response(status=status, text=body, content_type=content_type)

    app = web.Application()
    app[SEEN] = []
    app.router.add_get("/api/v2/{tail:.*}", handler)
    return app


async def failure_of(app: web.Application, call: str) -> SourceError:
    async with client_for(app) as client:
        with pytest.raises(SourceError) as caught:
            if call == "list":
                await client.list_devices()
            else:
                await client.historical_measurements("abc123", 1)
        return caught.value


@pytest.mark.parametrize(
    ("status", "body", "content_type", "kind", "expected"),
    [
        (200, "<html>Bad gateway</html>", "text/html", SourceResponseError, "not JSON"),
        (200, "", "text/plain", SourceResponseError, "(empty body)"),
        (200, f'{{"status": "error", "reason": "quota for {KEY}"}}', "application/json",
         SourceResponseError, "quota for ***"),
        (200, '{"status": "success"}', "application/json", SourceResponseError, "'result'"),
        (200, '["not", "an", "envelope"]', "application/json", SourceResponseError, "'success'"),
        (500, f"Internal error while serving apiKey={KEY}", "text/plain", SourceHTTPError,
         "HTTP 500: Internal error while serving apiKey=***"),
        (403, '{"status": "error", "reason": "forbidden"}', "application/json", SourceHTTPError,
         "HTTP 403: forbidden"),
    ],
)  # fmt: skip
def test_bad_answers_raise_clear_errors_without_the_key(
    status: int, body: str, content_type: str, kind: type[SourceError], expected: str
) -> None:
    for call in ("list", "history"):
        error = drive(failure_of(answering(status, body, content_type), call))
        assert type(error) is kind
        assert expected in str(error)
        assert_key_hidden(error)
        if isinstance(error, SourceHTTPError):
            assert error.status == status


@pytest.mark.parametrize(
    ("result", "expected"),
    [
        ('{"humidity": []}', "result: 'temperature' is a required property"),
        ('{"temperature": [], "humidity": {}}', "result.humidity: {} is not of type 'array'"),
        ('{"temperature": [1], "humidity": []}', "result.temperature[0]: 1 is not of type"),
        ('{"temperature": [{"time": "yesterday", "value": 1}], "humidity": []}',
         "result.temperature[0].time: 'yesterday' is not a 'date-time'"),
        ('{"temperature": [{"value": 1}], "humidity": []}',
         "result.temperature[0]: 'time' is a required property"),
        ('{"temperature": [{"time": "2024-05-01T10:00:00Z", "value": "22.1"}], "humidity": []}',
         "result.temperature[0].value: '22.1' is not of type 'number', 'null'"),
        ('{"temperature": [], "humidity": [{"time": "2024-05-01T10:00:00Z", "value": true}]}',
         "result.humidity[0].value: True is not of type 'number', 'null'"),
        ("[]", "result: [] is not of type 'object'"),
    ],
)  # fmt: skip
def test_ill_formed_history_raises_naming_the_field(result: str, expected: str) -> None:
    body = f'{{"status": "success", "result": {result}}}'
    error = drive(failure_of(answering(200, body), "history"))
    assert isinstance(error, SourceResponseError)
    assert expected in str(error)


@pytest.mark.parametrize(
    ("result", "expected"),
    [
        ('{"id": "x"}', "result: {'id': 'x'} is not of type 'array'"),
        ('[{"id": "a"}, {"room": {}}]', "result[1]: 'id' is a required property"),
    ],
)
def test_ill_formed_device_list_raises_naming_the_field(result: str, expected: str) -> None:
    body = f'{{"status": "success", "result": {result}}}'
    error = drive(failure_of(answering(200, body), "list"))
    assert isinstance(error, SourceResponseError)
    assert expected in str(error)


def test_series_are_joined_on_time_keeping_one_sided_rows() -> None:
    body = """{"status": "success", "result": {
        "temperature": [
            {"time": "2024-05-01T10:01:00Z", "value": 22.5},
            {"time": "2024-05-01T10:00:00Z", "value": 22}
        ],
        "humidity": [
            {"time": "2024-05-01T10:01:00+00:00", "value": null},
            {"time": "2024-05-01T10:02:00", "value": 47.9}
        ]}}"""

    async def scenario() -> tuple[list[RawReading], web.Request]:
        app = answering(200, body)
        async with client_for(app) as client:
            readings = await client.historical_measurements("living/room 1", 3)
        return readings, app[SEEN][0]

    readings, request = drive(scenario())
    ten = 1_714_557_600.0  # 2024-05-01T10:00:00Z
    assert readings == [
        RawReading("living/room 1", ten, 22.0, None),
        RawReading("living/room 1", ten + 60, 22.5, None),
        RawReading("living/room 1", ten + 120, None, 47.9),
    ]
    assert request.raw_path.startswith("/api/v2/pods/living%2Froom%201/historicalMeasurements?")
    assert request.query["days"] == "3"


def test_requests_carry_the_key_fields_and_gzip() -> None:
    async def scenario() -> web.Request:
        app = answering(200, '{"status": "success", "result": [{"id": "abc123"}]}')
        async with client_for(app) as client:
            assert await client.list_devices() == ["abc123"]
        return app[SEEN][0]

    request = drive(scenario())
    assert request.path == "/api/v2/users/me/pods"
    assert dict(request.query) == {"fields": "id", "apiKey": KEY}
    assert request.headers["Accept-Encoding"] == "gzip"


# --- when nothing answers ------------------------------------------------------------------


def test_a_closed_port_raises_unavailable() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    async def scenario() -> SourceError:
        async with aiohttp.ClientSession() as session:
            client = SensiboClient(f"http://127.0.0.1:{port}/api/v2", KEY, session, timeout=5.0)
            with pytest.raises(SourceUnavailable) as caught:
                await client.list_devices()
            return caught.value

    error = drive(scenario())
    assert f"127.0.0.1:{port}" in str(error)
    assert_key_hidden(error)


def test_a_silent_server_raises_unavailable_after_the_timeout() -> None:
    release = asyncio.Event()

    async def stall(request: web.Request) -> web.Response:
        await asyncio.wait_for(release.wait(), 10)
        return web.json_response({"status": "success", "result": []})

    async def scenario() -> SourceError:
        app = web.Application()
        app.router.add_get("/api/v2/users/me/pods", stall)
        async with client_for(app, timeout=0.3) as client:
            try:
                with pytest.raises(SourceUnavailable) as caught:
                    await client.list_devices()
            finally:
                release.set()
            return caught.value

    error = drive(scenario())
    assert "no answer within 0.3 s" in str(error)
    assert_key_hidden(error)
