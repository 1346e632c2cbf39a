"""The enqueue side of the job queue against a real Redis: idempotent by job id."""

from __future__ import annotations

import json
import zlib

from rq.job import Job
from rq.serializers import JSONSerializer

from pipeline.queue import enqueue_prediction, forget_job, job_id_for, make_queue
from pipeline.records import PredictionJob
from pipeline.settings import load_settings


def job(device: str = "dev1", end: float = 7200.0, model: str = "prophet") -> PredictionJob:
    return PredictionJob(
        job_id=job_id_for(device, end),
        device_id=device,
        window_start=end - 3600,
        window_end=end,
        model=model,
    )


def test_job_ids_are_deterministic_per_device_and_window_end():
    assert job_id_for("dev1", 7200.0) == job_id_for("dev1", 7200.0)
    assert (
        len({job_id_for("dev1", 7200.0), job_id_for("dev1", 7260.0), job_id_for("dev2", 7200.0)})
        == 3
    )


def test_a_job_is_enqueued_once_even_after_rq_forgets_it(redis_client, redis_url):
    settings = load_settings(environ={"PIPELINE_REDIS_URL": redis_url})
    queue = make_queue(settings, redis_client)
    assert enqueue_prediction(queue, settings, job()) is True
    assert enqueue_prediction(queue, settings, job()) is False
    assert queue.count == 1
    Job.fetch(job().job_id, connection=redis_client, serializer=JSONSerializer).delete()
    assert enqueue_prediction(queue, settings, job()) is False, "RQ hash expiry re-enabled a job"
    assert queue.count == 0


def test_forgetting_a_job_lets_a_forced_replay_run_it_again(redis_client, redis_url):
    settings = load_settings(environ={"PIPELINE_REDIS_URL": redis_url})
    queue = make_queue(settings, redis_client)
    enqueue_prediction(queue, settings, job())
    redis_client.hset("forecasts:dev1", job().job_id, "{}")
    forget_job(redis_client, "dev1", job().job_id)
    assert not redis_client.hexists("forecasts:dev1", job().job_id)
    assert enqueue_prediction(queue, settings, job()) is True
    assert queue.count == 1


def test_a_model_goes_to_its_own_queue_by_dotted_path_with_json_arguments(redis_client, redis_url):
    settings = load_settings(
        environ={
            "PIPELINE_REDIS_URL": redis_url,
            "PIPELINE_MODELS": '{"prophet": "pipeline.prediction.jobs.prophet_forecast", '
            '"slow": "some.module.slow_forecast"}',
            "PIPELINE_MODEL_QUEUES": "{slow: slow-forecasts}",
        }
    )
    enqueue_prediction(make_queue(settings, redis_client), settings, job(model="slow"))
    slow = make_queue(settings, redis_client, "slow-forecasts")
    assert slow.count == 1 and make_queue(settings, redis_client).count == 0
    stored = Job.fetch(job().job_id, connection=redis_client, serializer=JSONSerializer)
    assert stored.func_name == "some.module.slow_forecast"
    payload = json.loads(zlib.decompress(redis_client.hget(stored.key, "data")))
    assert payload[0] == "some.module.slow_forecast"
    assert settings.queues() == ["forecasts", "slow-forecasts"]
