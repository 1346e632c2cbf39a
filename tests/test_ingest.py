"""The ingest agent with Faust's test_context and a real Redis: every distinct valid
(device, time) forwarded once, out-of-order ones included; invalid ones dead-lettered
once each, with the reason and the raw payload."""

from __future__ import annotations

import asyncio
import json
import math
from unittest.mock import AsyncMock, patch

import pytest
import redis

from pipeline.dedup import DedupState
from pipeline.storage import AsyncStore, Store

pytestmark = pytest.mark.asyncio


OWN_REDIS_DB = 10  # apart from the database other tests flush at will


@pytest.fixture
def redis_url(base_settings):
    """A Redis database of this module's tests only, emptied before and after each."""
    url = base_settings.redis_url.rsplit("/", 1)[0] + f"/{OWN_REDIS_DB}"
    client = redis.Redis.from_url(url)
    client.flushdb()
    yield url
    client.flushdb()
    client.close()


@pytest.fixture
def redis_client(redis_url):
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


API_NOW = 1_714_521_600.0  # the device API's clock when the connector fetched


def raw(device: str, t: float, temperature: float | None = 21.0, **extra) -> bytes:
    payload = {"device_id": device, "time": t, "temperature": temperature, "humidity": 40.0}
    payload.setdefault("received_at", API_NOW)
    payload.update(extra)
    return json.dumps(payload, allow_nan=True).encode()


async def settle(condition, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition() and loop.time() < deadline:
        await asyncio.sleep(0.01)


@pytest.fixture
def ingest_module(redis_url, redis_client, monkeypatch):
    from agents import ingest
    from pipeline.app import app
    from tables.ingest_state import ingest_seen
    from tables.pointers import last_ingested

    app.finalize()
    app.flow_control.resume()
    for table in (ingest_seen, last_ingested):
        table.data.clear()
    monkeypatch.setattr(ingest, "store", AsyncStore.from_url(redis_url))
    monkeypatch.setattr(ingest, "dedup", DedupState(ingest_seen, horizon=600.0))
    return ingest


async def run(ingest_module, messages: list[tuple[str, bytes]], settled) -> tuple[list, list]:
    from pipeline.topics import deadletter_topic, readings_topic

    forwarded, rejected = AsyncMock(), AsyncMock()
    with (
        patch.object(readings_topic, "send", forwarded),
        patch.object(deadletter_topic, "send", rejected),
    ):
        async with ingest_module.ingest.test_context() as agent:
            for key, payload in messages:
                await agent.put(payload, key=key)
            await settle(lambda: settled(forwarded, rejected))
    return (
        [c.kwargs["value"] for c in forwarded.call_args_list],
        [c.kwargs["value"] for c in rejected.call_args_list],
    )


async def test_out_of_order_readings_are_new_and_repeats_are_dropped(ingest_module, redis_client):
    times = [100.0, 160.0, 100.0, 400.0, 220.0, 160.0, 280.0, 220.0, 460.0]
    done = {"n": 0}

    def settled(forwarded, rejected):
        return len(forwarded.call_args_list) == 6

    forwarded, rejected = await run(
        ingest_module, [("d", raw("d", API_NOW - 1000 + t)) for t in times], settled
    )
    assert done == {"n": 0}
    sent = [r.time - (API_NOW - 1000) for r in forwarded]
    assert sent == [100.0, 160.0, 400.0, 220.0, 280.0, 460.0]
    assert rejected == []
    stored = [r["time"] - (API_NOW - 1000) for r in Store(redis_client).readings_between("d")]
    assert stored == [100.0, 160.0, 220.0, 280.0, 400.0, 460.0]
    from tables.pointers import last_ingested

    assert last_ingested["d"] == API_NOW - 1000 + 460.0


async def test_invalid_payloads_are_dead_lettered_once_with_reason_and_payload(ingest_module):
    t = API_NOW - 60
    nan = raw("d", t, temperature=math.nan)
    same_nan_fetched_later = raw("d", t, temperature=math.nan, received_at=API_NOW + 60)
    future = raw("d", API_NOW + 86400 + 30)
    messages = [
        ("d", nan),
        ("d", same_nan_fetched_later),  # the connector re-sent it after a restart
        ("d", b"{truncated"),
        ("d", raw("d", t - 60, temperature=None)),
        ("d", raw("d", t - 120, temperature=150.0)),
        ("d", future),
        ("d", raw("d", API_NOW + 86400 + 30, received_at=API_NOW + 5)),  # same, re-sent
        ("d", raw("d", t)),  # a complete reading at the time of the NaN one is still valid
        ("d", raw("other", t)),  # key and device disagree
    ]
    forwarded, rejected = await run(
        ingest_module, messages, lambda f, r: len(r.call_args_list) >= 6 and f.call_args_list
    )
    reasons = [r.reason for r in rejected]
    assert len(reasons) == 6, reasons
    assert "temperature is not finite" in reasons[0]
    assert reasons[1].startswith("not JSON") and rejected[1].payload == "{truncated"
    assert reasons[2] == "missing temperature"
    assert "temperature 150.0 outside" in reasons[3]
    assert "in the future" in reasons[4] and "device API's clock" in reasons[4]
    assert "does not match device_id" in reasons[5]
    assert json.loads(rejected[4].payload) == json.loads(future)
    assert [r.time for r in forwarded] == [t]


async def test_a_reading_behind_the_horizon_is_a_duplicate_if_stored_else_dead_lettered(
    ingest_module, redis_client
):
    base = API_NOW - 5000
    old_and_stored, old_and_unknown = base, base + 60
    messages = [
        ("d", raw("d", old_and_stored)),
        ("d", raw("d", base + 3000)),  # horizon 600 s: the first two are now beyond it
        ("d", raw("d", old_and_stored)),
        ("d", raw("d", old_and_unknown)),
        ("d", raw("d", base + 2500)),  # late but within the horizon: new
    ]
    forwarded, rejected = await run(
        ingest_module, messages, lambda f, r: len(f.call_args_list) == 3 and r.call_args_list
    )
    assert [r.time for r in forwarded] == [old_and_stored, base + 3000, base + 2500]
    assert len(rejected) == 1 and "older than the dedup horizon" in rejected[0].reason
    assert json.loads(rejected[0].payload)["time"] == old_and_unknown
