"""The connector's poller against the simulator: backfill, one send per reading, late
readings, Kafka refusing, a device that misbehaves, and a restart. Produces are
captured here; the flow through real Kafka is the fault-injection test's."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import redis
from aiohttp import test_utils

from pipeline.source.backoff import Backoff
from pipeline.source.sensibo import SensiboClient
from pipeline.source.simulator import SIMULATION, SimulatorConfig, build_app, device_ids

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


KEY = "connector-test-key"
START = 1_700_000_040  # a multiple of 60
HOUR = 3600


class Producer:
    """Stands in for app.producer: records what was sent; can refuse like Kafka when down."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, dict]] = []
        self.down = False

    async def send(self, topic, key, value, partition, timestamp, headers) -> asyncio.Future:
        future = asyncio.get_running_loop().create_future()
        if self.down:
            future.set_exception(ConnectionError("Kafka is away"))
        else:
            self.sent.append((key.decode(), json.loads(value)))
            future.set_result(None)
        return future

    def times(self, device: str | None = None) -> list[float]:
        return [v["time"] for k, v in self.sent if device is None or k == device]


@contextlib.asynccontextmanager
async def poller(
    monkeypatch, redis_url: str, **sim: Any
) -> AsyncIterator[tuple[Any, Producer, Any]]:
    from agents import connector
    from pipeline.app import app
    from pipeline.storage import AsyncStore

    settings = dataclasses.replace(
        connector.settings,
        dedup_horizon_seconds=float(HOUR),
        poll_seconds=1.0,
        source_timeout_seconds=0.5,
        backfill_days=1,
    )
    monkeypatch.setattr(connector, "settings", settings)
    producer = Producer()
    monkeypatch.setattr(app, "_producer", producer, raising=False)
    monkeypatch.setattr(type(app), "producer", property(lambda self: producer))
    config = SimulatorConfig(api_key=KEY, start=START, duration_seconds=0.0, speedup=1e6, **sim)
    web_app = build_app(config)
    async with test_utils.TestServer(web_app) as server, aiohttp.ClientSession() as session:
        service = connector.DevicePoller()
        service._client = SensiboClient(
            str(server.make_url("/api/v2")),
            KEY,
            session,
            settings.source_timeout_seconds,
            backoff=Backoff(first=0.01, cap=0.05, attempts=2),
        )
        service._store = AsyncStore.from_url(redis_url)
        yield service, producer, web_app[SIMULATION]


def advance(sim, seconds: float) -> None:
    sim.clock.end += seconds


async def test_backfill_then_only_new_readings(monkeypatch, redis_url, redis_client):
    async with poller(monkeypatch, redis_url, devices=2, history_seconds=2 * HOUR) as (
        service,
        producer,
        sim,
    ):
        assert await service.poll_once() == 2 * 121
        assert await service.poll_once() == 0
        advance(sim, 300)
        assert await service.poll_once() == 2 * 5
    first = device_ids(0, 2)[0]
    assert producer.times(first) == [START - 2 * HOUR + 60 * i for i in range(126)]
    value = producer.sent[0][1]
    assert set(value) == {"device_id", "time", "temperature", "humidity", "received_at"}
    assert value["received_at"] == START  # the simulator's clock, from its Date header


async def test_late_readings_are_sent_when_they_appear_and_only_then(
    monkeypatch, redis_url, redis_client
):
    async with poller(
        monkeypatch, redis_url, devices=1, history_seconds=HOUR, faults={"out-of-order": 0.5}
    ) as (service, producer, sim):
        for _ in range(32):
            await service.poll_once()
            advance(sim, 60)
        now = sim.clock.now()
        grid = sim.clock.samples(0, now)
        served = sim.faults.catalogue(device_ids(0, 1)[0], grid, now).valid
    times = producer.times()
    assert len(times) == len(set(times)), "a reading was sent twice"
    assert times != sorted(times), "the fault should have published some readings late"
    assert set(times) == served
    assert len(served) < len(grid), "some readings should still be unpublished"


async def test_kafka_refusing_sends_nothing_twice_and_loses_nothing(
    monkeypatch, redis_url, redis_client
):
    async with poller(monkeypatch, redis_url, devices=1, history_seconds=HOUR) as (
        service,
        producer,
        sim,
    ):
        producer.down = True
        assert await service.poll_once() == 0
        advance(sim, 120)
        assert await service.poll_once() == 0
        producer.down = False
        assert await service.poll_once() == 63
        assert await service.poll_once() == 0
    assert producer.times() == [START - HOUR + 60 * i for i in range(63)]


async def test_a_device_that_times_out_does_not_hold_up_the_others(
    monkeypatch, redis_url, redis_client
):
    bad, *good = device_ids(0, 4)
    async with poller(
        monkeypatch,
        redis_url,
        devices=4,
        history_seconds=600,
        faults={"timeouts": 1.0},
        fault_devices=(bad,),
        fault_delay_seconds=5.0,
    ) as (service, producer, _):
        loop = asyncio.get_running_loop()
        began = loop.time()
        assert await service.poll_once() == 3 * 11
        elapsed = loop.time() - began
    assert {k for k, _ in producer.sent} == set(good)
    assert elapsed < 5.0, "the poll waited for the device that never answers in time"


async def test_a_new_leader_resumes_from_redis_minus_the_horizon(
    monkeypatch, redis_url, redis_client
):
    from pipeline.storage import Store

    device = device_ids(0, 1)[0]
    newest = START - 600
    Store(redis_client).add_readings(
        device, [{"time": newest, "temperature": 20.0, "humidity": 40.0}]
    )
    async with poller(monkeypatch, redis_url, devices=1, history_seconds=6 * HOUR) as (
        service,
        producer,
        _,
    ):
        await service.poll_once()
    assert producer.times() == [newest - HOUR + 60 * i for i in range(1, 60 + 11)]


async def test_a_new_leader_polls_a_fleet_larger_than_the_redis_pool_in_one_round(
    monkeypatch, redis_url, redis_client
):
    devices = 250  # redis-py's asyncio pool holds at most 100 connections
    async with poller(monkeypatch, redis_url, devices=devices, history_seconds=600) as (
        service,
        producer,
        _,
    ):
        assert await service.poll_once() == devices * 11
    assert {key for key, _ in producer.sent} == set(device_ids(0, devices))
