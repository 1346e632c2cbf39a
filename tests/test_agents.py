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


def delivered_send() -> AsyncMock:
    """Stands in for Topic.send: records each call and returns a delivered future."""
    return AsyncMock(side_effect=lambda *args, **kwargs: asyncio.sleep(0))


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


async def test_job_manager_enqueues_one_json_job_per_closed_window(faust_app, redis_client):
    from agents.job_manager import manage_jobs
    from pipeline.topics import jobs_topic
    from tables.pointers import jobs_emitted, last_processed

    audit = delivered_send()
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
        assert job.func_name == "pipeline.prediction.serving.served_forecast"
        assert job.kwargs == {
            "device_id": "dev1",
            "window_start": start,
            "window_end": end,
            "model": "auto",
        }
        stored = json.loads(zlib.decompress(redis_client.hget(job.key, "data")))
        assert stored[0] == job.func_name  # JSON on the wire, never pickle


async def test_window_and_model_can_be_set_per_device(faust_app, redis_client, monkeypatch):
    import dataclasses

    import agents.job_manager as job_manager
    from pipeline.topics import jobs_topic

    settings = dataclasses.replace(
        job_manager.settings,
        models={"prophet": "pipeline.prediction.jobs.prophet_forecast", "fast": "nowhere.fit"},
        device_windows={"quick": 600.0},
        device_models={"quick": "fast"},
    )
    monkeypatch.setattr(job_manager, "settings", settings)
    audit = delivered_send()
    with patch.object(jobs_topic, "send", audit):
        async with job_manager.manage_jobs.test_context() as agent:
            for device in ("quick", "slow"):
                for minute in range(0, 61, 5):
                    reading = Reading(
                        device_id=device, time=minute * 60.0, temperature=20.0, humidity=40.0
                    )
                    await agent.put(reading, key=device)
            await settle(lambda: len(audit.call_args_list) == 7)

    jobs = [c.kwargs["value"] for c in audit.call_args_list]
    quick = [(j.window_start, j.window_end, j.model) for j in jobs if j.device_id == "quick"]
    slow = [(j.window_start, j.window_end, j.model) for j in jobs if j.device_id == "slow"]
    assert quick == [(s * 600.0, (s + 1) * 600.0, "fast") for s in range(6)]
    assert slow == [(0.0, 3600.0, "auto")]  # default_model: the per-device selection
    # The model is referenced by its dotted path only: the module does not exist.
    stored = Job.fetch(jobs[0].job_id, connection=redis_client, serializer=JSONSerializer)
    assert stored.func_name == "nowhere.fit"


async def test_late_readings_are_counted_and_never_windowed(faust_app):
    from agents.job_manager import manage_jobs
    from pipeline.topics import jobs_topic
    from tables.pointers import last_processed, late_readings

    audit = delivered_send()
    with patch.object(jobs_topic, "send", audit):
        async with manage_jobs.test_context() as agent:
            for minute in [0, 60, 10, 60, 0, 61]:
                reading = Reading(
                    device_id="d", time=minute * 60.0, temperature=20.0, humidity=40.0
                )
                await agent.put(reading, key="d")
            await settle(lambda: last_processed.get("d") == 3600.0 and late_readings["d"] == 3)
    assert late_readings["d"] == 3
    assert len(audit.call_args_list) == 1


async def test_replay_redeploys_missing_jobs_and_only_forced_ones_again(faust_app, redis_client):
    from agents.replay import replay
    from pipeline.records import ReplayRequest
    from pipeline.topics import jobs_topic
    from tables.pointers import last_processed

    store = Store(redis_client)
    store.add_readings(
        "dev1", [{"time": 60.0 * m, "temperature": 20.0, "humidity": 40.0} for m in range(121)]
    )
    audit = delivered_send()
    with patch.object(jobs_topic, "send", audit):
        async with replay.test_context() as agent:
            await agent.put(ReplayRequest(device_id="dev1", from_time=0.0), key="dev1")
            await settle(lambda: len(audit.call_args_list) == 2)
            await agent.put(ReplayRequest(device_id="dev1", from_time=0.0), key="dev1")
            await agent.put(
                ReplayRequest(device_id="dev1", from_time=3000.0, force=True), key="dev1"
            )
            await settle(lambda: len(audit.call_args_list) == 3)

    windows = [
        (c.kwargs["value"].window_start, c.kwargs["value"].window_end) for c in audit.call_args_list
    ]
    # First replay: both windows; second: nothing new; forced from 3000: one window, re-run.
    assert windows == [(0.0, 3600.0), (3600.0, 7200.0), (3000.0, 6600.0)]
    assert last_processed["dev1"] == 6600.0
    queue = make_queue(load_settings(environ={}), redis_client)
    assert sorted(queue.job_ids) == sorted(
        job_id_for("dev1", end) for end in (3600.0, 7200.0, 6600.0)
    )


def stored_readings(redis_client, device: str, minutes: list[int]) -> None:
    Store(redis_client).add_readings(
        device, [{"time": m * 60.0, "temperature": 20.0, "humidity": 40.0} for m in minutes]
    )


async def test_windows_close_at_stored_readings_the_stream_skipped(faust_app, redis_client):
    """After a crash the stream can miss readings that ingest stored; the windows are
    still the ones the arithmetic over every reading gives."""
    from agents.job_manager import manage_jobs
    from pipeline.topics import jobs_topic
    from pipeline.windowing import expected_windows
    from tables.pointers import last_processed

    every = list(range(0, 200, 10))
    stored_readings(redis_client, "dev2", every)
    audit = delivered_send()
    with patch.object(jobs_topic, "send", audit):
        async with manage_jobs.test_context() as agent:
            for minute in [0, 20, 130, 190]:  # the stream only delivers these
                reading = Reading(device_id="dev2", time=minute * 60.0, temperature=20.0,
                                  humidity=40.0)  # fmt: skip
                await agent.put(reading, key="dev2")
            await settle(lambda: len(audit.call_args_list) == 3)

    windows = [
        (c.kwargs["value"].window_start, c.kwargs["value"].window_end) for c in audit.call_args_list
    ]
    assert windows == expected_windows([m * 60.0 for m in every], 3600.0)
    assert windows == [(0.0, 3600.0), (3600.0, 7200.0), (7200.0, 10800.0)]
    assert last_processed["dev2"] == 10800.0


async def test_a_pointer_behind_the_enqueued_jobs_never_repeats_or_shifts_a_window(
    faust_app, redis_client
):
    """A takeover restored a pointer older than the last enqueued window (its changelog
    write was lost): the redelivered readings deploy nothing new, the next window
    starts where the last enqueued one ended."""
    from agents.job_manager import job_for, manage_jobs, queue
    from pipeline.queue import enqueue_prediction
    from pipeline.topics import jobs_topic
    from tables.pointers import last_processed

    every = list(range(0, 190, 10))
    stored_readings(redis_client, "dev3", every)
    settings = load_settings(environ={})
    assert enqueue_prediction(queue, settings, job_for("dev3", (0.0, 3600.0)))
    assert enqueue_prediction(queue, settings, job_for("dev3", (3600.0, 7200.0)))
    last_processed.data["dev3"] = 0.0  # the writes of 3600 and 7200 never reached the changelog

    audit = delivered_send()
    with patch.object(jobs_topic, "send", audit):
        async with manage_jobs.test_context() as agent:
            for minute in [60, 100, 120, 130, 180]:  # redelivered, then new
                reading = Reading(device_id="dev3", time=minute * 60.0, temperature=20.0,
                                  humidity=40.0)  # fmt: skip
                await agent.put(reading, key="dev3")
            await settle(lambda: last_processed["dev3"] == 10800.0)

    windows = [
        (c.kwargs["value"].window_start, c.kwargs["value"].window_end) for c in audit.call_args_list
    ]
    assert windows == [(7200.0, 10800.0)]
    assert sorted(queue.job_ids) == sorted(
        job_id_for("dev3", end) for end in (3600.0, 7200.0, 10800.0)
    )


async def test_dead_letters_are_counted_per_device_and_shown_in_device_status(faust_app):
    from agents.dead_letters import count_dead_letters
    from pipeline.records import RejectedReading
    from pipeline.views import device_status
    from tables.dead_letters import dead_letters

    dead_letters.data.clear()
    async with count_dead_letters.test_context() as agent:
        for device in ["dev1", "dev2", "dev1"]:
            await agent.put(RejectedReading(reason="missing temperature", payload="{}"), key=device)
        await settle(lambda: dead_letters.get("dev1") == 2)

    assert dict(dead_letters.data) == {"dev1": 2, "dev2": 1}
    assert device_status("dev1", None, None, 0.0)["dead_letters"] == 2
