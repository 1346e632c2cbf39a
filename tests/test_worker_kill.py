"""Real prediction workers killed mid-fit, and stopped gracefully.

Workers are ``pipeline prediction-worker`` processes on one queue, running a
test model (``tests.slow_model``) that sleeps before its fit so that kills land
mid-job. A worker is killed the way a node dies (SIGKILL to the worker, its
scheduler and its work horse) or the way the OOM killer strikes (SIGKILL to the
work horse only). Every job must end with exactly one stored forecast, and a job
that nobody killed must have run exactly once: several workers on one queue
never fit the same job twice.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import uuid
from pathlib import Path

import pytest
import redis
from rq.job import Job, JobStatus
from rq.registry import FailedJobRegistry, StartedJobRegistry
from rq.serializers import JSONSerializer

from pipeline.queue import enqueue_prediction, job_id_for, make_queue
from pipeline.records import PredictionJob
from pipeline.settings import load_settings
from pipeline.storage import Store
from tests.processes import BIN, Process, wait_for
from tests.slow_model import RUNNING, RUNS

pytestmark = pytest.mark.services

ROOT = Path(__file__).resolve().parent.parent
DAY = 86400.0
T0 = 1_700_006_400.0
FIT_SECONDS = 2.0


def readings(days: float = 2.5) -> list[dict[str, float]]:
    return [
        {"time": T0 + i * 600.0, "temperature": 20.0 + (i % 144) / 72.0, "humidity": 40.0}
        for i in range(int(days * DAY / 600.0))
    ]


@pytest.fixture
def env(redis_url: str, redis_client: redis.Redis) -> dict[str, str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("PIPELINE_")}
    environ.update(
        PYTHONPATH=str(ROOT),
        PIPELINE_REDIS_URL=redis_url,
        PIPELINE_QUEUE_NAME=f"test-kill-{uuid.uuid4().hex[:8]}",
        PIPELINE_MODELS=json.dumps({"slow": "tests.slow_model.slow_forecast"}),
        PIPELINE_DEFAULT_MODEL="slow",
        PIPELINE_WORKER_HEARTBEAT_SECONDS="1",
        PIPELINE_JOB_RETRY_SECONDS="1",
        PIPELINE_JOB_TIMEOUT_SECONDS="60",
        PIPELINE_HORIZON_SECONDS="3600",
        TEST_FIT_SECONDS=str(FIT_SECONDS),
    )
    return environ


def enqueue_jobs(env: dict[str, str], client: redis.Redis, devices: int, windows: int) -> list:
    settings = load_settings(environ=env)
    queue = make_queue(settings, client)
    store = Store(client)
    enqueued = []
    for d in range(devices):
        device = f"dev-{d}"
        store.add_readings(device, readings())
        for w in range(windows):
            end = T0 + 2 * DAY + w * 3600.0
            job = PredictionJob(
                job_id=job_id_for(device, end),
                device_id=device,
                window_start=end - 3600.0,
                window_end=end,
                model="slow",
            )
            assert enqueue_prediction(queue, settings, job)
            enqueued.append(job)
    return enqueued


def start_worker(name: str, env: dict[str, str], log_dir: Path) -> Process:
    argv = [str(BIN / "pipeline"), "--log-level", "info", "prediction-worker", "--name", name]
    return Process(name, argv, env, log_dir)


def running_on(client: redis.Redis, queue_name: str, worker: Process) -> tuple[str, int] | None:
    """(job id, work horse pid) of a job this worker is running now, if any."""
    started = StartedJobRegistry(queue_name, connection=client).get_job_ids(cleanup=False)
    for job_id in started:
        run = client.hget(RUNNING, job_id)
        if run and json.loads(run)["worker"] == worker.popen.pid:
            return job_id, json.loads(run)["horse"]
    return None


def kill(pid: int, group: bool = False) -> None:
    with contextlib.suppress(ProcessLookupError):
        (os.killpg if group else os.kill)(pid, signal.SIGKILL)


def scheduler_pid(client: redis.Redis, queue_name: str) -> int | None:
    """The process id of the RQ scheduler holding the queue's lock, once it runs."""
    name = client.get(f"rq:scheduler-lock:{queue_name}")
    pid = client.hget(f"rq:scheduler:{name.decode()}", "pid") if name else None
    return int(pid) if pid and int(pid) else None


def scheduler_holder(client: redis.Redis, queue_name: str, workers: list[Process]) -> Process:
    """The worker whose forked RQ scheduler holds the queue's scheduler lock."""
    pid = scheduler_pid(client, queue_name)
    parent = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    (holder,) = [w for w in workers if w.popen.pid == parent]
    return holder


def test_jobs_of_killed_workers_run_again_and_store_one_forecast_each(
    env: dict[str, str], redis_client: redis.Redis, tmp_path: Path
) -> None:
    queue_name = env["PIPELINE_QUEUE_NAME"]
    workers = [start_worker(f"kill-w{i}", env, tmp_path) for i in range(3)]
    killed_jobs: set[str] = set()
    try:
        jobs = enqueue_jobs(env, redis_client, devices=3, windows=5)

        def strike(victim: Process, whole_worker: bool) -> None:
            holder: dict[str, tuple[str, int]] = {}

            def busy() -> bool:
                found = running_on(redis_client, queue_name, victim)
                if found:
                    holder["job"] = found
                return found is not None

            wait_for(busy, 60, f"a job on {victim.name}", workers, interval=0.05)
            job_id, horse = holder["job"]
            killed_jobs.add(job_id)
            kill(horse)
            if whole_worker:
                kill(victim.popen.pid, group=True)
                victim.popen.wait(5)
                workers.remove(victim)

        wait_for(
            lambda: scheduler_pid(redis_client, queue_name) is not None,
            60,
            "a scheduler",
            workers,
        )
        # A node dies: worker, its scheduler and its work horse. Taking the worker
        # that runs the scheduler is the worst case: re-runs wait for its lock to expire.
        strike(scheduler_holder(redis_client, queue_name, workers), whole_worker=True)
        strike(workers[0], whole_worker=False)  # the OOM killer takes a work horse
        workers.append(start_worker("kill-w3", env, tmp_path))
        strike(workers[1], whole_worker=True)
        workers.append(start_worker("kill-w4", env, tmp_path))

        store = Store(redis_client)
        devices = sorted({job.device_id for job in jobs})
        wait_for(
            lambda: sum(store.forecast_count(d) for d in devices) == len(jobs),
            150,
            "a forecast for every job",
            workers,
            interval=0.5,
        )
    finally:
        for worker in workers:
            worker.stop()

    runs = {k.decode(): int(v) for k, v in redis_client.hgetall(RUNS).items()}
    assert len(killed_jobs) == 3
    for job in jobs:
        stored = redis_client.hkeys(store.keys.forecasts(job.device_id))
        assert job.job_id.encode() in stored
        rq_job = Job.fetch(job.job_id, connection=redis_client, serializer=JSONSerializer)
        assert rq_job.get_status() == JobStatus.FINISHED, job.job_id
        if job.job_id in killed_jobs:
            assert runs[job.job_id] >= 2, f"killed job {job.job_id} was not run again"
        else:
            assert runs[job.job_id] == 1, f"{job.job_id} ran {runs[job.job_id]} times"
    for device in devices:
        assert store.forecast_count(device) == 5, "one forecast per job id, no more"
    assert FailedJobRegistry(queue_name, connection=redis_client).count == 0


def test_sigterm_lets_the_running_job_finish_before_the_worker_exits(
    env: dict[str, str], redis_client: redis.Redis, tmp_path: Path
) -> None:
    queue_name = env["PIPELINE_QUEUE_NAME"]
    worker = start_worker("term-w0", env, tmp_path)
    try:
        (job,) = enqueue_jobs(env, redis_client, devices=1, windows=1)
        wait_for(
            lambda: running_on(redis_client, queue_name, worker) is not None,
            60,
            "the job to start",
            [worker],
            interval=0.05,
        )
        os.killpg(worker.popen.pid, signal.SIGTERM)
        exit_code = worker.popen.wait(FIT_SECONDS + 20)
    finally:
        worker.stop()

    assert exit_code == 0, worker.tail()
    rq_job = Job.fetch(job.job_id, connection=redis_client, serializer=JSONSerializer)
    assert rq_job.get_status() == JobStatus.FINISHED
    assert Store(redis_client).forecast_count(job.device_id) == 1
    assert int(redis_client.hget(RUNS, job.job_id)) == 1
