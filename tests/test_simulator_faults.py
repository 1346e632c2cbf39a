"""The simulator's fault modes: each does what it says, deterministically by seed."""

from __future__ import annotations

import asyncio
import json
import math

import pytest
from aiohttp import test_utils

from pipeline.source.faults import FUTURE_MARGIN, FaultPlan, parse_faults
from pipeline.source.simulator import SimulatorConfig, build_app, device_ids

KEY = "fault-key"
START = 1_700_000_040


def drive(coro, timeout: float = 30.0):
    return asyncio.run(asyncio.wait_for(coro, timeout))


async def history(faults: dict, **config) -> tuple[int, dict, str]:
    app = build_app(
        SimulatorConfig(api_key=KEY, start=START, duration_seconds=0.0, faults=faults, **config)
    )
    device = device_ids(0, 1)[0]
    async with test_utils.TestClient(test_utils.TestServer(app)) as client:
        path = f"/api/v2/pods/{device}/historicalMeasurements"
        async with client.get(path, params={"apiKey": KEY}) as response:
            text = await response.text()
            return response.status, dict(response.headers), text


def test_parse_faults() -> None:
    assert parse_faults("timeouts,5xx=0.5", 0.1) == {"timeouts": 0.1, "5xx": 0.5}
    assert set(parse_faults("all", 0.01)) >= {"flapping", "future", "429"}
    for bad in ("gremlins", "nan=2", "nan=x", "missing=0.6,null=0.6"):
        with pytest.raises(ValueError):
            parse_faults(bad, 0.1)


@pytest.mark.parametrize(
    ("kind", "check"),
    [
        ("null", lambda t, h: any(e["value"] is None for e in t)),
        ("nan", lambda t, h: any(isinstance(e["value"], float) and math.isnan(e["value"])
                                 for e in t)),
        ("impossible", lambda t, h: any(e["value"] == 150.0 for e in t)
         or any(e["value"] == 120.0 for e in h)),
        ("missing", lambda t, h: len(h) < len(t)),
        ("duplicates", lambda t, h: len({e["time"] for e in t}) < len(t)),
        ("future", lambda t, h: max(e["time"] for e in t) > "2023-11-15"),
    ],
)  # fmt: skip
def test_reading_faults_show_in_the_history(kind, check) -> None:
    status, _, text = drive(history({kind: 0.2}))
    result = json.loads(text)["result"]
    assert status == 200 and check(result["temperature"], result["humidity"])
    clean = json.loads(drive(history({}))[2])["result"]
    assert not check(clean["temperature"], clean["humidity"])


@pytest.mark.parametrize(
    ("kind", "statuses"),
    [("5xx", {500, 502, 503}), ("429", {200, 429}), ("malformed", {200}), ("schema", {200})],
)
def test_request_faults_break_the_answer_only(kind, statuses) -> None:
    status, headers, text = drive(history({kind: 1.0}))
    assert status in statuses
    if kind == "429":
        assert json.loads(text)["status"] == 429 and headers["Retry-After"] == "1"
    if kind == "malformed":
        with pytest.raises(ValueError):
            json.loads(text)
    if kind == "schema":
        assert json.loads(text)["result"] == "temporarily unavailable"


def test_answers_carry_the_simulated_clock_in_their_date() -> None:
    _, headers, _ = drive(history({}, speedup=1000.0))
    assert headers["Date"] == "Tue, 14 Nov 2023 22:14:00 GMT"  # START, not the wall clock


def test_the_catalogue_tells_valid_from_invalid_and_late_from_published() -> None:
    plan = FaultPlan(parse_faults("all", 0.05), seed=3, interval=60)
    grid = range(START - 6 * 3600, START + 1, 60)
    device = "abc"
    catalogue = plan.catalogue(device, grid, START)
    assert catalogue.valid.isdisjoint(t for t in catalogue.invalid if t <= START)
    assert {"missing", "null", "nan", "impossible", "future"} <= set(catalogue.invalid.values())
    unpublished = [t for t in grid if not plan.visible(device, t, START)]
    assert unpublished and all(START - t <= 600 for t in unpublished)
    assert all(t - START >= FUTURE_MARGIN for t, k in catalogue.invalid.items() if k == "future")
    assert plan.catalogue(device, grid, START) == catalogue  # a pure function of the seed


def test_flapping_devices_vanish_and_return_but_never_once_frozen() -> None:
    plan = FaultPlan({"flapping": 0.3}, seed=1, interval=60)
    moments = range(START, START + 200 * 1800, 1800)
    presence = [plan.present("abc", now, frozen=False) for now in moments]
    assert True in presence and False in presence
    assert all(plan.present("abc", now, frozen=True) for now in moments)


def test_faults_can_be_limited_to_some_devices() -> None:
    plan = FaultPlan({"nan": 1.0, "5xx": 1.0}, seed=1, interval=60, devices=frozenset({"bad"}))
    assert plan.reading_fault("bad", START) == "nan" and plan.reading_fault("good", START) is None
    assert plan.request_fault("good") is None and plan.request_fault(None) is None
    assert plan.request_fault("bad") == "5xx"
