"""Which failed jobs run again: bad input never, transient failures and lost
workers with backoff. Real Redis, RQ workers run in-process in burst mode."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator

import pytest
import redis
from rq.executions import Execution
from rq.job import Job, JobStatus
from rq.registry import FailedJobRegistry, ScheduledJobRegistry, StartedJobRegistry
from rq.serializers import JSONSerializer

from pipeline.prediction.reaper import LOST_RERUNS_META, lost_worker, requeue_lost_jobs
from pipeline.prediction.worker import build_worker
from pipeline.queue import enqueue_prediction, job_id_for, make_queue, retry_policy
from pipeline.records import PredictionJob
from pipeline.settings import Settings, load_settings
from pipeline.storage import Store
from tests.slow_model import RUNS

DAY = 86400.0
T0 = 1_700_006_400.0

pytestmark = pytest.mark.filterwarnings("ignore:The inplace keyword:DeprecationWarning")


@pytest.fixture(autouse=True)
def restore_signals() -> Iterator[None]:
    """An RQ worker installs its own SIGINT/SIGTERM handlers; give pytest its own back."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


def make_settings(monkeypatch: pytest.MonkeyPatch, redis_url: str, **overrides: str) -> Settings:
    environ = {
        "PIPELINE_REDIS_URL": redis_url,
        "PIPELINE_QUEUE_NAME": "test-failures",
        "PIPELINE_MODELS": json.dumps(
            {
                "prophet": "pipeline.prediction.jobs.prophet_forecast",
                "flaky": "tests.slow_model.flaky_forecast",
            }
        ),
        "PIPELINE_JOB_RETRY_SECONDS": "1",
        "PIPELINE_HORIZON_SECONDS": "3600",
        **overrides,
    }
    monkeypatch.delenv("PIPELINE_CONFIG", raising=False)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    return load_settings(environ=environ)


def readings(count: int) -> list[dict[str, float]]:
    return [
        {"time": T0 + i * 600.0, "temperature": 20.0 + (i % 144) / 72.0, "humidity": 40.0}
        for i in range(count)
    ]


def enqueue(settings: Settings, client: redis.Redis, model: str, end: float) -> Job:
    job = PredictionJob(
        job_id=job_id_for("dev-1", end),
        device_id="dev-1",
        window_start=end - 3600.0,
        window_end=end,
        model=model,
    )
    assert enqueue_prediction(make_queue(settings, client), settings, job)
    return Job.fetch(job.job_id, connection=client, serializer=JSONSerializer)


def work(settings: Settings, client: redis.Redis) -> None:
    build_worker(settings, client).work(burst=True, logging_level="WARNING", with_scheduler=True)


def test_retry_policy_doubles_the_wait_and_can_be_turned_off(monkeypatch, redis_url) -> None:
    policy = retry_policy(make_settings(monkeypatch, redis_url, PIPELINE_JOB_RETRY_SECONDS="10"))
    assert (policy.max, policy.intervals) == (3, [10, 20, 40])
    assert retry_policy(make_settings(monkeypatch, redis_url, PIPELINE_JOB_RETRIES="0")) is None


def test_bad_input_fails_at_once_with_its_reason(monkeypatch, redis_url, redis_client) -> None:
    settings = make_settings(monkeypatch, redis_url)
    Store(redis_client).add_readings("dev-1", readings(3))
    job = enqueue(settings, redis_client, "prophet", T0 + 3 * 600.0)
    assert job.retries_left == 3

    work(settings, redis_client)

    job.refresh()
    assert job.get_status() == JobStatus.FAILED
    assert job.id in FailedJobRegistry(queue=make_queue(settings, redis_client))
    assert ScheduledJobRegistry(queue=make_queue(settings, redis_client)).count == 0
    reason = job.latest_result().exc_string.strip().splitlines()[-1]
    assert reason == (
        "pipeline.prediction.models.base.TooFewPoints: "
        "need at least 10 finite temperature readings to fit, got 3"
    )
    assert not lost_worker(job)
    assert requeue_lost_jobs(make_queue(settings, redis_client), max_reruns=3)[0] == []


def test_transient_failure_is_retried_after_a_wait(monkeypatch, redis_url, redis_client) -> None:
    settings = make_settings(monkeypatch, redis_url)
    Store(redis_client).add_readings("dev-1", readings(int(1.5 * DAY / 600)))
    job = enqueue(settings, redis_client, "flaky", T0 + DAY)

    work(settings, redis_client)  # first run: a Redis hiccup
    job.refresh()
    assert job.get_status() == JobStatus.SCHEDULED and job.retries_left == 2
    scheduled = ScheduledJobRegistry(queue=make_queue(settings, redis_client))
    due = scheduled.get_scheduled_time(job.id).timestamp()
    assert due > time.time() - 1, "the retry waits job_retry_seconds"
    while time.time() <= due:
        time.sleep(0.1)

    work(settings, redis_client)  # the scheduler releases the due retry, which succeeds
    job.refresh()
    assert job.get_status() == JobStatus.FINISHED
    assert int(redis_client.hget(RUNS, job.id)) == 2
    assert Store(redis_client).forecast_count("dev-1") == 1


def abandon(client: redis.Redis, settings: Settings, job: Job) -> None:
    """Make the job look taken by a worker that then died, and let RQ's sweep find it."""
    queue = make_queue(settings, client)
    queue.remove(job)
    with client.pipeline() as pipe:
        Execution.create(job, ttl=1, pipeline=pipe, worker_name="dead-worker")
        pipe.execute()
    StartedJobRegistry(queue=queue).cleanup(timestamp=time.time() + 60)
    job.refresh()


def test_rq_retries_an_abandoned_job_that_has_retries_left(
    monkeypatch, redis_url, redis_client
) -> None:
    settings = make_settings(monkeypatch, redis_url)
    job = enqueue(settings, redis_client, "prophet", T0 + DAY)
    abandon(redis_client, settings, job)
    assert job.get_status() == JobStatus.SCHEDULED and job.retries_left == 2
    assert job.id in ScheduledJobRegistry(queue=make_queue(settings, redis_client))


def test_a_lost_job_without_retries_is_requeued_a_bounded_number_of_times(
    monkeypatch, redis_url, redis_client
) -> None:
    settings = make_settings(monkeypatch, redis_url, PIPELINE_JOB_RETRIES="0")
    queue = make_queue(settings, redis_client)
    job = enqueue(settings, redis_client, "prophet", T0 + DAY)
    abandon(redis_client, settings, job)
    assert job.get_status() == JobStatus.FAILED and lost_worker(job)
    assert "AbandonedJobError" in job.latest_result().exc_string

    requeued, newest = requeue_lost_jobs(queue, max_reruns=1)
    assert requeued == [job.id]
    assert requeue_lost_jobs(queue, max_reruns=1, since=newest) == ([], newest)
    job.refresh()
    assert job.get_status() == JobStatus.QUEUED and job.id in queue.job_ids
    assert job.meta[LOST_RERUNS_META] == 1

    abandon(redis_client, settings, job)  # lost again: the budget is spent
    assert requeue_lost_jobs(queue, max_reruns=1, since=newest)[0] == []
    assert job.id in FailedJobRegistry(queue=queue)
