"""The client's handling of transient faults: retries with backoff, Retry-After for
429 (HTTP status and JSON status), the shared rate limit, and the OpenAPI check."""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime

import aiohttp
import pytest
from aiohttp import test_utils, web

from pipeline.source.backoff import Backoff, parse_retry_after
from pipeline.source.openapi_validation import ApiDocument, SchemaViolation
from pipeline.source.rate_limit import TokenBucket
from pipeline.source.sensibo import SensiboClient, SourceError
from pipeline.source.simulator import SimulatorConfig, build_app, device_ids

KEY = "retry-test-key"
OK = {"status": "success", "result": [{"id": "abc123"}]}


def drive(coro, timeout: float = 30.0):
    return asyncio.run(asyncio.wait_for(coro, timeout))


def scripted(*answers: web.Response) -> tuple[web.Application, list[float]]:
    """A server that gives these answers in turn (then the last forever), noting when."""
    calls: list[float] = []

    async def handler(request: web.Request) -> web.Response:
        calls.append(asyncio.get_running_loop().time())
        answer = answers[min(len(calls), len(answers)) - 1]
        return web.Response(
            status=answer.status,
            body=answer.body,
            headers=answer.headers,
        )

    app = web.Application()
    app.router.add_get("/api/v2/{tail:.*}", handler)
    return app, calls


def answer(status: int, body: str, **headers: str) -> web.Response:
    return web.Response(
        status=status, text=body, headers={"Content-Type": "application/json", **headers}
    )


async def list_with(app: web.Application, **client_args) -> list[str] | SourceError:
    async with test_utils.TestServer(app) as server, aiohttp.ClientSession() as session:
        client = SensiboClient(str(server.make_url("/api/v2")), KEY, session, **client_args)
        try:
            return await client.list_devices()
        except SourceError as exc:
            return exc


FAST = Backoff(first=0.01, cap=1.0, attempts=4, rng=random.Random(1))


@pytest.mark.parametrize(
    "failure",
    [
        answer(503, '{"status": "error", "reason": "maintenance"}'),
        answer(502, "<html>Bad gateway</html>"),
        answer(200, '{"status": "success", "result": [{"id": "ab'),  # cut short
    ],
)
def test_transient_failures_are_retried_until_an_answer(failure: web.Response) -> None:
    app, calls = scripted(
        failure, failure, answer(200, '{"status":"success","result":[{"id":"x"}]}')
    )
    assert drive(list_with(app, backoff=FAST)) == ["x"]
    assert len(calls) == 3


def test_retries_give_up_after_the_attempts_with_the_kind_named() -> None:
    app, calls = scripted(answer(500, '{"status": "error", "reason": "boom"}'))
    error = drive(list_with(app, backoff=FAST))
    assert isinstance(error, SourceError) and error.kind == "http_5xx"
    assert len(calls) == 4


def test_client_errors_and_schema_violations_are_not_retried() -> None:
    for failure, kind in [
        (answer(404, '{"status": "error", "reason": "no pod"}'), "http_4xx"),
        (answer(200, '{"status": "success", "result": "nope"}'), "schema"),
    ]:
        app, calls = scripted(failure)
        error = drive(list_with(app, backoff=FAST))
        assert isinstance(error, SourceError) and error.kind == kind
        assert len(calls) == 1


@pytest.mark.parametrize(
    "limited",
    [
        answer(429, '{"status": 429, "reason": "too many requests"}', **{"Retry-After": "0.3"}),
        answer(200, '{"status": 429, "reason": "slow down"}', **{"Retry-After": "0.3"}),
        answer(200, '{"status": "429"}', **{"Retry-After": "0.3"}),
    ],
)
def test_429_as_status_or_json_waits_the_retry_after_and_pauses_the_limiter(
    limited: web.Response,
) -> None:
    app, calls = scripted(limited, answer(200, '{"status":"success","result":[{"id":"x"}]}'))
    limiter = TokenBucket(100.0)
    assert drive(list_with(app, backoff=FAST, limiter=limiter)) == ["x"]
    assert len(calls) == 2
    assert calls[1] - calls[0] >= 0.3


def test_a_retry_after_longer_than_the_cap_leaves_the_device_for_the_next_poll() -> None:
    app, calls = scripted(answer(429, '{"status": 429}', **{"Retry-After": "120"}))
    error = drive(list_with(app, backoff=FAST))
    assert isinstance(error, SourceError) and error.kind == "rate_limited"
    assert error.retry_after == 120.0 and len(calls) == 1


def test_retry_after_accepts_seconds_and_http_dates() -> None:
    now = datetime(2024, 5, 1, 10, 0, 0, tzinfo=UTC)
    assert parse_retry_after("7", now) == 7.0
    assert parse_retry_after("Wed, 01 May 2024 10:00:30 GMT", now) == 30.0
    assert parse_retry_after("Wed, 01 May 2024 09:00:00 GMT", now) == 0.0
    assert parse_retry_after("soon", now) is None and parse_retry_after(None) is None


def test_backoff_doubles_up_to_the_cap_with_jitter() -> None:
    backoff = Backoff(first=1.0, cap=5.0, attempts=6, rng=random.Random(3))
    for retry, ceiling in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 5.0), (5, 5.0)]:
        delays = {backoff.delay(retry) for _ in range(50)}
        assert all(ceiling / 2 <= d <= ceiling for d in delays) and len(delays) > 1
    assert 10.0 <= backoff.delay(1, retry_after=10.0) <= 11.0


def test_token_bucket_spaces_requests_and_pauses() -> None:
    now = [0.0]

    async def sleep(seconds: float) -> None:
        now[0] += seconds

    async def scenario() -> list[float]:
        bucket = TokenBucket(10.0, burst=2, clock=lambda: now[0], sleep=sleep)
        stamps = []
        for _ in range(5):
            await bucket.acquire()
            stamps.append(now[0])
        bucket.pause(3.0)
        await bucket.acquire()
        stamps.append(now[0])
        return stamps

    stamps = drive(scenario())
    assert stamps[:2] == [0.0, 0.0]  # the burst
    assert stamps[2:5] == pytest.approx([0.1, 0.2, 0.3])
    assert stamps[5] == pytest.approx(3.3 + 0.1)


def test_the_client_stays_under_the_simulators_rate_limit() -> None:
    config = SimulatorConfig(api_key=KEY, devices=3, start=1_700_000_040, duration_seconds=0.0,
                             rate_limit=5)  # fmt: skip

    async def scenario() -> int:
        limited = 0
        async with (
            test_utils.TestServer(build_app(config)) as server,
            aiohttp.ClientSession() as session,
        ):
            client = SensiboClient(
                str(server.make_url("/api/v2")), KEY, session, limiter=TokenBucket(4.0, 1)
            )
            for device in device_ids(0, 3) * 4:
                try:
                    await client.history(device, 1)
                except SourceError:
                    limited += 1
        return limited

    assert drive(scenario()) == 0


def test_every_simulator_answer_matches_the_document() -> None:
    document = ApiDocument.bundled()
    config = SimulatorConfig(api_key=KEY, devices=2, start=1_700_000_040, duration_seconds=0.0,
                             faults={"null": 0.2, "nan": 0.2, "missing": 0.2})  # fmt: skip

    async def scenario() -> None:
        async with test_utils.TestClient(test_utils.TestServer(build_app(config))) as client:
            async with client.get(
                "/api/v2/users/me/pods", params={"apiKey": KEY, "fields": "*"}
            ) as r:
                document.check("listPods", r.status, await r.json())
            for device in device_ids(0, 2):
                path = f"/api/v2/pods/{device}/historicalMeasurements"
                async with client.get(path, params={"apiKey": KEY}) as r:
                    document.check("getHistoricalMeasurements", r.status, await r.json())
            async with client.get("/api/v2/pods/nothere/historicalMeasurements",
                                  params={"apiKey": KEY}) as r:  # fmt: skip
                document.check("getHistoricalMeasurements", r.status, await r.json())

    drive(scenario())
    with pytest.raises(SchemaViolation, match=r"result\[0\]: 'id' is a required property"):
        document.check("listPods", 200, {"status": "success", "result": [{"room": {}}]})
    with pytest.raises(SchemaViolation, match="HTTP 418 is not a documented JSON answer"):
        document.check("listPods", 418, {})
