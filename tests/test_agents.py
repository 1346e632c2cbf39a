"""Agent logic with Faust's test_context: one agent at a time, real Redis.

Sends to downstream topics are captured (that is what test_context is for);
the flow through real Kafka is covered by the end-to-end test.
"""

from __future__ import annotations

import asyncio
import json
import zlib
from unittest.mock import AsyncMock, patch

import pytest
from rq.job import Job
from rq.serializers import JSONSerializer

from pipeline.queue import job_id_for, make_queue
from pipeline.records import Reading
from pipeline.settings import load_settings
from pipeline.storage import AsyncStore, Store

pytestmark = pytest.mark.asyncio


async def settle(condition, timeout: float = 10.0) -> None:
    """test_context's put() returns once the previous event is done; wait for the last."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition() and loop.time() < deadline:
        await asyncio.sleep(0.01)


def raw(device: str, time: float, temperature: float = 21.0) -> bytes:
    return json.dumps(
        {"device_id": device, "time": time, "temperature": temperature, "humidity": 40.0}
    ).encode()


@pytest.fixture
def faust_app(redis_url, redis_client, monkeypatch):
    from agents import ingest, job_manager
    from pipeline.app import app
    from tables.pointers import jobs_emitted, last_ingested, last_processed

    app.finalize()
    app.flow_control.resume()
    for table in (last_ingested, last_processed, jobs_emitted):
        table.data.clear()
    settings = load_settings(environ={"PIPELINE_REDIS_URL": redis_url})
    monkeypatch.setattr(ingest, "store", AsyncStore.from_url(redis_url))
    monkeypatch.setattr(job_manager, "queue", make_queue(settings, redis_client))
    return app


async def test_ingest_forwards_each_new_reading_once_and_dead_letters_bad_ones(
    faust_app, redis_client
):
    from agents.ingest import ingest
    from pipeline.topics import deadletter_topic, readings_topic
    from tables.pointers import last_ingested

    forwarded, rejected = AsyncMock(), AsyncMock()
    with (
        patch.object(readings_topic, "send", forwarded),
        patch.object(deadletter_topic, "send", rejected),
    ):
        async with ingest.test_context() as agent:
            for payload in (
                raw("dev1", 100.0),
                raw("dev1", 100.0),  # duplicate from an overlapping poll
                raw("dev1", 40.0),  # older than what was ingested
                raw("dev1", 160.0),
                b"{truncated",
                raw("dev1", 220.0, temperature=float("nan")),
            ):
                await agent.put(payload, key="dev1")
            await settle(lambda: len(rejected.call_args_list) == 2)

    assert [c.kwargs["value"].time for c in forwarded.call_args_list] == [100.0, 160.0]
    reasons = [c.kwargs["value"].reason for c in rejected.call_args_list]
    assert len(reasons) == 2 and reasons[0].startswith("not JSON")
    assert "temperature is not finite" in reasons[1]
    assert rejected.call_args_list[0].kwargs["value"].payload == "{truncated"
    assert [r["time"] for r in Store(redis_client).readings_between("dev1")] == [100.0, 160.0]
    assert last_ingested["dev1"] == 160.0


async def test_job_manager_enqueues_one_json_job_per_closed_window(faust_app, redis_client):
    from agents.job_manager import manage_jobs
    from pipeline.topics import jobs_topic
    from tables.pointers import jobs_emitted, last_processed

    audit = AsyncMock()
    with patch.object(jobs_topic, "send", audit):
        async with manage_jobs.test_context() as agent:
            for minute in [0, 30, 60, 61, 59, 125]:  # window 3600 s; 59 arrives late
                reading = Reading(
                    device_id="dev1", time=minute * 60.0, temperature=20.0, humidity=40.0
                )
                await agent.put(reading, key="dev1")
            await settle(lambda: len(audit.call_args_list) == 2)

    windows = [
        (c.kwargs["value"].window_start, c.kwargs["value"].window_end) for c in audit.call_args_list
    ]
    assert windows == [(0.0, 3600.0), (3600.0, 7500.0)]
    assert last_processed["dev1"] == 7500.0 and jobs_emitted["dev1"] == 2
    for start, end in windows:
        job = Job.fetch(job_id_for("dev1", end), connection=redis_client, serializer=JSONSerializer)
        assert job.func_name == "pipeline.prediction.jobs.prophet_forecast"
        assert job.kwargs == {
            "device_id": "dev1",
            "window_start": start,
            "window_end": end,
            "model": "prophet",
        }
        stored = json.loads(zlib.decompress(redis_client.hget(job.key, "data")))
        assert stored[0] == job.func_name  # JSON on the wire, never pickle
