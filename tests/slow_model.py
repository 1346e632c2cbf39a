"""Test-only models, registered through the ``models`` setting like any model.

``slow_forecast`` records every run of a job (which process ran it, how many
times) and sleeps before fitting, so that tests can kill workers mid-fit;
``flaky_forecast`` fails with a transient error on its first run. Both then
run the real job path (the seasonal-naive model), so the forecast is stored
exactly as production stores it.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import redis
from rq import get_current_job

from pipeline.prediction.jobs import SEASONAL_NAIVE, run_forecast

RUNS = "test:runs"  # HASH job id -> runs started
RUNNING = "test:running"  # HASH job id -> {"horse": pid, "worker": pid} of its latest run
FIT_SECONDS_ENV = "TEST_FIT_SECONDS"


def _client() -> redis.Redis:
    return redis.Redis.from_url(os.environ["PIPELINE_REDIS_URL"])


def _record_run() -> int:
    job = get_current_job()
    client = _client()
    client.hset(RUNNING, job.id, json.dumps({"horse": os.getpid(), "worker": os.getppid()}))
    return int(client.hincrby(RUNS, job.id, 1))


def slow_forecast(
    device_id: str, window_start: float, window_end: float, model: str = "slow"
) -> dict[str, Any]:
    _record_run()
    time.sleep(float(os.environ.get(FIT_SECONDS_ENV, "2")))
    return run_forecast(SEASONAL_NAIVE, device_id, window_start, window_end, model)


def flaky_forecast(
    device_id: str, window_start: float, window_end: float, model: str = "flaky"
) -> dict[str, Any]:
    if _record_run() == 1:
        raise redis.ConnectionError("simulated Redis hiccup")
    return run_forecast(SEASONAL_NAIVE, device_id, window_start, window_end, model)
