"""The simulated Sensibo API: shape, auth, determinism, clock, realism, CLI."""

from __future__ import annotations

import argparse
import asyncio
import calendar
import contextlib
import itertools
import logging
import math
import os
import re
import signal
import statistics
import sys
import time
from collections.abc import AsyncIterator, Coroutine
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import test_utils

from pipeline.source.simulator import SimulatorConfig, build_app, device_ids, register

KEY = "sim-test-key-7f3a"
START = 1_700_000_040  # 2023-11-14T22:14:00Z, a multiple of 60
PODS = "/api/v2/users/me/pods"
ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


def drive(coro: Coroutine[Any, Any, Any], timeout: float = 30.0) -> Any:
    return asyncio.run(asyncio.wait_for(coro, timeout))


@contextlib.asynccontextmanager
async def simulator(**overrides: Any) -> AsyncIterator[test_utils.TestClient]:
    """A simulator on a free port; by default its clock is frozen at START."""
    settings: dict[str, Any] = {"start": START, "duration_seconds": 0.0} | overrides
    app = build_app(SimulatorConfig(api_key=KEY, **settings))
    server = test_utils.TestServer(app)
    # No access log, as `pipeline simulator` serves: aiohttp's logs the query, apiKey included.
    await server.start_server(access_log=None)
    async with test_utils.TestClient(server) as client:
        yield client


async def call(
    client: test_utils.TestClient, path: str, **params: str
) -> tuple[int, dict[str, Any]]:
    params = {"apiKey": KEY} | params
    async with client.get(path, params=params) as response:
        return response.status, await response.json()


def history_path(device_id: str) -> str:
    return f"/api/v2/pods/{device_id}/historicalMeasurements"


async def history(client: test_utils.TestClient, device_id: str, days: int = 1) -> dict:
    status, body = await call(client, history_path(device_id), days=str(days))
    assert status == 200, body
    return body["result"]


async def health(client: test_utils.TestClient) -> dict[str, Any]:
    async with client.get("/healthz") as response:
        assert response.status == 200
        return await response.json()


def as_series(entries: list[dict[str, Any]]) -> dict[str, float]:
    return {e["time"]: e["value"] for e in entries}


# --- API shape -----------------------------------------------------------------------------


def test_pods_carry_exactly_the_requested_fields() -> None:
    async def scenario() -> None:
        async with simulator(devices=3) as client:
            status, default = await call(client, PODS)
            _, only_id = await call(client, PODS, fields="id")
            _, with_room = await call(client, PODS, fields="id,room")
            _, everything = await call(client, PODS, fields="*")
        assert status == 200
        assert default["status"] == "success"
        assert default["result"] == only_id["result"]
        assert [set(p) for p in only_id["result"]] == [{"id"}] * 3
        assert [p["id"] for p in only_id["result"]] == device_ids(0, 3)
        assert all(re.fullmatch(r"[a-z0-9]{8}", p["id"]) for p in only_id["result"])
        assert [p["room"]["name"] for p in with_room["result"]] == ["Room 1", "Room 2", "Room 3"]
        assert all(set(p) == {"id", "room"} for p in with_room["result"])
        pod = everything["result"][0]
        assert set(pod) == {"id", "room", "productModel", "measurements"}
        assert pod["measurements"]["time"] == {"time": "2023-11-14T22:14:00Z", "secondsAgo": 0}

    drive(scenario())


def test_history_arrays_are_aligned_iso_and_oldest_first() -> None:
    async def scenario() -> None:
        async with simulator(history_seconds=7200.0) as client:
            device = device_ids(0, 1)[0]
            status, body = await call(client, history_path(device), days="1")
        assert status == 200
        assert body["status"] == "success"
        result = body["result"]
        assert set(result) == {"temperature", "humidity"}
        times = [e["time"] for e in result["temperature"]]
        assert times == [e["time"] for e in result["humidity"]]
        assert all(ISO_UTC.match(t) for t in times)
        assert times == sorted(times) and len(set(times)) == len(times) == 121
        for entry in result["temperature"] + result["humidity"]:
            assert set(entry) == {"time", "value"}
            assert isinstance(entry["value"], float)
            assert math.isclose(entry["value"] * 10, round(entry["value"] * 10), abs_tol=1e-6)

    drive(scenario())


def test_responses_are_gzipped_when_asked() -> None:
    async def scenario() -> str | None:
        async with simulator() as client:
            params = {"apiKey": KEY, "days": "1"}
            headers = {"Accept-Encoding": "gzip"}
            path = history_path(device_ids(0, 1)[0])
            async with client.get(path, params=params, headers=headers) as response:
                await response.read()
                return response.headers.get("Content-Encoding")

    assert drive(scenario()) == "gzip"


# --- errors --------------------------------------------------------------------------------


@pytest.mark.parametrize("key", [None, "", "not-the-key"])
def test_a_missing_or_wrong_key_gets_401_in_the_error_envelope(key: str | None) -> None:
    async def scenario() -> list[tuple[int, dict]]:
        params = {} if key is None else {"apiKey": key}
        answers = []
        async with simulator() as client:
            for path in (PODS, history_path(device_ids(0, 1)[0]), history_path("nosuchid")):
                async with client.get(path, params=params) as response:
                    answers.append((response.status, await response.json()))
        return answers

    for status, body in drive(scenario()):
        assert status == 401
        assert body["status"] == "error"
        assert "apiKey" in body["reason"]


def test_unknown_pod_and_unknown_path_get_404_in_the_error_envelope() -> None:
    async def scenario() -> list[tuple[int, dict]]:
        async with simulator() as client:
            return [
                await call(client, history_path("zzzzzzzz")),
                await call(client, "/api/v2/no/such/endpoint"),
            ]

    (pod_status, pod_body), (path_status, path_body) = drive(scenario())
    assert pod_status == 404
    assert pod_body == {"status": "error", "reason": "no pod with id 'zzzzzzzz'"}
    assert path_status == 404
    assert path_body["status"] == "error" and path_body["reason"]


@pytest.mark.parametrize("days", ["0", "8", "-1", "1.5", "two"])
def test_days_out_of_range_gets_400(days: str) -> None:
    async def scenario() -> tuple[int, dict]:
        async with simulator() as client:
            return await call(client, history_path(device_ids(0, 1)[0]), days=days)

    status, body = drive(scenario())
    assert status == 400
    assert body["status"] == "error"
    assert "days" in body["reason"]


def test_config_refuses_missing_key_and_nonsense() -> None:
    with pytest.raises(ValueError, match="API key"):
        SimulatorConfig(api_key="")
    with pytest.raises(ValueError, match="devices"):
        SimulatorConfig(api_key=KEY, devices=0)
    with pytest.raises(ValueError, match="speedup"):
        SimulatorConfig(api_key=KEY, speedup=0.0)
    with pytest.raises(ValueError, match="interval_seconds"):
        SimulatorConfig(api_key=KEY, interval_seconds=1.5)


def test_requests_are_logged_without_the_key(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="pipeline.source.simulator")

    async def scenario() -> None:
        async with simulator() as client:
            await call(client, PODS)
            await call(client, PODS, apiKey="wrong-key-c0ffee")

    drive(scenario())
    lines = [r.getMessage() for r in caplog.records if r.name == "pipeline.source.simulator"]
    assert len(lines) == 2
    assert f"path={PODS} status=200" in lines[0]
    assert f"path={PODS} status=401" in lines[1]
    assert KEY not in caplog.text
    assert "wrong-key-c0ffee" not in caplog.text


# --- determinism ---------------------------------------------------------------------------


def test_overlapping_polls_of_a_running_clock_agree() -> None:
    async def scenario() -> tuple[dict, dict]:
        device = device_ids(0, 1)[0]
        async with simulator(duration_seconds=None, speedup=600.0, history_seconds=3600.0) as c:
            first = await history(c, device)
            await asyncio.sleep(0.3)  # 180 simulated seconds: 3 new samples
            second = await history(c, device)
        return first, second

    first, second = drive(scenario())
    for name in ("temperature", "humidity"):
        before, after = as_series(first[name]), as_series(second[name])
        assert len(after) > len(before) >= 61
        assert {t: after[t] for t in before} == before


def test_same_seed_same_readings_across_instances_and_starts() -> None:
    async def scenario() -> list[tuple[list[str], dict]]:
        answers = []
        for seed, start in ((7, START), (7, START + 3600), (8, START)):
            async with simulator(seed=seed, start=start, history_seconds=7200.0) as client:
                _, pods = await call(client, PODS)
                ids = [p["id"] for p in pods["result"]]
                answers.append((ids, await history(client, ids[0])))
        return answers

    (ids_a, early), (ids_b, late), (ids_c, other) = drive(scenario())
    assert ids_a == ids_b == device_ids(7, 5)
    assert set(ids_c).isdisjoint(ids_a)
    for name in ("temperature", "humidity"):
        a, b = as_series(early[name]), as_series(late[name])
        shared = a.keys() & b.keys()
        assert len(shared) == 61  # START-3600 .. START, every minute
        assert {t: a[t] for t in shared} == {t: b[t] for t in shared}
    assert as_series(other["temperature"]) != as_series(early["temperature"])


# --- the clock -----------------------------------------------------------------------------


def test_speedup_moves_event_time() -> None:
    async def scenario() -> tuple[float, float, float, float, dict]:
        async with simulator(duration_seconds=None, speedup=1000.0) as client:
            before_first = time.monotonic()
            first = await health(client)
            after_first = time.monotonic()
            await asyncio.sleep(0.3)
            before_second = time.monotonic()
            second = await health(client)
            after_second = time.monotonic()
            latest = await call(client, PODS, fields="measurements")
        advanced = second["now"] - first["now"]
        lower = 1000.0 * (before_second - after_first)
        upper = 1000.0 * (after_second - before_first)
        return advanced, lower, upper, second["now"], latest[1]

    advanced, lower, upper, now, pods = drive(scenario())
    assert lower <= advanced <= upper
    assert advanced >= 250.0
    newest = pods["result"][0]["measurements"]["time"]
    newest_epoch = calendar.timegm(time.strptime(newest["time"], "%Y-%m-%dT%H:%M:%SZ"))
    assert newest_epoch % 60 == 0
    assert now - 60 < newest_epoch
    assert 0 <= newest["secondsAgo"] < 60


def test_default_start_is_now_aligned_to_the_interval() -> None:
    async def scenario() -> dict[str, Any]:
        async with simulator(start=None, interval_seconds=300) as client:
            return await health(client)

    clock = drive(scenario())
    assert clock["start"] % 300 == 0
    assert time.time() - 300 < clock["start"] <= time.time()
    assert clock["interval_seconds"] == 300 and clock["devices"] == 5


def test_duration_freezes_the_clock_and_fixes_the_readings() -> None:
    async def scenario() -> tuple[dict, dict, dict]:
        config = {"speedup": 1e6, "history_seconds": 7200.0, "duration_seconds": 3600.0}
        async with simulator(**config) as client:
            await asyncio.sleep(0.05)  # 50,000 simulated seconds, far past the end
            first = await health(client)
            readings = await history(client, device_ids(0, 1)[0])
            second = await health(client)
        return first, second, readings

    first, second, readings = drive(scenario())
    assert first["now"] == second["now"] == START + 3600
    times = [e["time"] for e in readings["temperature"]]
    assert len(times) == 181  # 120 minutes of history, the start, 60 minutes of run
    assert times[0] == "2023-11-14T20:14:00Z"
    assert times[-1] == "2023-11-14T23:14:00Z"


def test_unaligned_start_and_history_keep_samples_on_the_grid() -> None:
    async def scenario() -> dict:
        config = {"start": START + 17, "history_seconds": 7205.0, "duration_seconds": 3600.0}
        async with simulator(speedup=1e6, **config) as client:
            await asyncio.sleep(0.05)
            return await history(client, device_ids(0, 1)[0])

    # Samples exist on multiples of 60 within [START+17-7205, START+17+3600].
    times = [e["time"] for e in drive(scenario())["temperature"]]
    assert times[0] == "2023-11-14T20:15:00Z"
    assert times[-1] == "2023-11-14T23:14:00Z"
    assert len(times) == 180


@pytest.mark.parametrize(("days", "expected"), [(1, 144), (2, 288), (7, 432)])
def test_days_selects_a_window_ending_now_bounded_by_history(days: int, expected: int) -> None:
    async def scenario() -> dict:
        async with simulator(interval_seconds=600, history_seconds=3 * 86400.0) as client:
            return await history(client, device_ids(0, 1)[0], days)

    times = [e["time"] for e in drive(scenario())["humidity"]]
    assert len(times) == expected
    assert times[-1] == "2023-11-14T22:10:00Z"  # newest multiple of 600 at or before START


# --- realism -------------------------------------------------------------------------------


def test_values_look_like_a_heated_room_with_a_daily_cycle() -> None:
    async def scenario() -> list[dict]:
        async with simulator(interval_seconds=600, history_seconds=4 * 86400.0) as client:
            return [await history(client, d, 4) for d in device_ids(0, 5)]

    for result in drive(scenario()):
        temperature = as_series(result["temperature"])
        humidity = as_series(result["humidity"])
        assert all(15.0 <= v <= 30.0 for v in temperature.values())
        assert all(20.0 <= v <= 80.0 for v in humidity.values())
        afternoon = [v for t, v in temperature.items() if "T12:" <= t[10:] < "T18:"]
        night = [v for t, v in temperature.items() if t[10:] < "T06:"]
        assert statistics.mean(afternoon) > statistics.mean(night) + 1.0
        values = list(temperature.values())
        assert statistics.correlation(values, list(humidity.values())) < -0.5
        assert max(abs(a - b) for a, b in itertools.pairwise(values)) < 1.5
        assert statistics.pstdev(values) > 0.5


# --- the OpenAPI document ------------------------------------------------------------------


def test_openapi_document_is_served_and_matches_the_answers() -> None:
    async def scenario() -> tuple[str, dict, dict, dict]:
        async with simulator() as client:
            async with client.get("/api/v2/openapi.yaml") as response:
                assert response.status == 200
                text = await response.text()
            async with client.get("/api/v2/openapi.json") as response:
                assert response.status == 200
                as_json = await response.json()
            _, pods = await call(client, PODS, fields="*")
            result = await history(client, device_ids(0, 1)[0])
        return text, as_json, pods, result

    text, as_json, pods, result = drive(scenario())
    document = yaml.safe_load(text)
    assert document == as_json
    assert document["openapi"].startswith("3.0")
    assert set(document["paths"]) == {"/users/me/pods", "/pods/{device_id}/historicalMeasurements"}
    assert document["components"]["securitySchemes"]["apiKey"] == {
        "type": "apiKey",
        "in": "query",
        "name": "apiKey",
        "description": document["components"]["securitySchemes"]["apiKey"]["description"],
    }
    schemas = document["components"]["schemas"]
    assert set(pods["result"][0]) <= set(schemas["Pod"]["properties"])
    assert set(result) == set(schemas["HistoricalMeasurements"]["properties"])
    assert set(result["temperature"][0]) == set(schemas["Measurement"]["properties"])
    assert set(schemas["ErrorEnvelope"]["properties"]) == {"status", "reason"}
    responses = document["paths"]["/pods/{device_id}/historicalMeasurements"]["get"]["responses"]
    assert {"200", "401", "404"} <= set(responses)


# --- command line --------------------------------------------------------------------------


def test_every_option_has_help() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config")
    subparsers = parser.add_subparsers()
    register(subparsers)
    args = parser.parse_args(["simulator"])
    assert args.handler.__name__ == "run"
    simulator_parser = subparsers.choices["simulator"]
    options = [a for a in simulator_parser._actions if a.dest != "help"]
    assert {a.dest for a in options} == {
        "host",
        "port",
        "devices",
        "interval_seconds",
        "speedup",
        "history_seconds",
        "duration_seconds",
        "start",
        "seed",
        "faults",
        "fault_rate",
        "fault_devices",
        "fault_delay_seconds",
        "rate_limit",
        "tls_cert",
        "tls_key",
        "api_key",
    }
    assert all(a.help for a in options)
    assert (args.host, args.port, args.devices, args.interval_seconds) == ("127.0.0.1", 8080, 5, 60)


CLI = (
    "import argparse, sys\n"
    "from pipeline.source import simulator\n"
    "parser = argparse.ArgumentParser()\n"
    "parser.add_argument('--config')\n"
    "simulator.register(parser.add_subparsers())\n"
    "args = parser.parse_args(sys.argv[1:])\n"
    "sys.exit(args.handler(args))\n"
)


def cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIPELINE_")}
    return env | extra


def test_cli_serves_until_sigterm_with_the_key_from_the_environment() -> None:
    async def scenario() -> tuple[str, dict[str, Any], int]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            CLI,
            "simulator",
            "--port",
            "0",
            "--devices",
            "2",
            env=cli_env(PIPELINE_SOURCE_API_KEY=KEY),
            stdout=asyncio.subprocess.PIPE,
        )
        try:
            line = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode()
            url = re.search(r"http://\S+/api/v2", line).group(0)
            timeout = aiohttp.ClientTimeout(total=5)
            async with (
                aiohttp.ClientSession(timeout=timeout) as session,
                session.get(f"{url}/users/me/pods", params={"apiKey": KEY}) as resp,
            ):
                pods = await resp.json()
            proc.send_signal(signal.SIGTERM)
            return line, pods, await asyncio.wait_for(proc.wait(), 10)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()

    line, pods, returncode = drive(scenario(), timeout=40)
    assert line.startswith("simulator listening on http://127.0.0.1:")
    assert [p["id"] for p in pods["result"]] == device_ids(0, 2)
    assert returncode == 0


def test_cli_refuses_to_start_without_a_key() -> None:
    async def scenario() -> tuple[int, bytes]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            CLI,
            "simulator",
            "--port",
            "0",
            env=cli_env(),
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            _, err = await asyncio.wait_for(proc.communicate(), 20)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        return proc.returncode, err

    returncode, err = drive(scenario(), timeout=30)
    assert returncode == 2
    assert b"PIPELINE_SOURCE_API_KEY" in err and b"--api-key" in err
