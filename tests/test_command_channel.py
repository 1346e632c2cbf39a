"""The prediction worker's command channel is read with a one-second wait.

With RQ's 60 s wait, a worker that had finished often took a minute to exit
(pipeline.prediction.command_channel): measured 2 of 15 burst runs at 60 s.
"""

from __future__ import annotations

import redis
from rq import Queue

from pipeline.prediction.command_channel import READ_WAIT_SECONDS
from pipeline.prediction.reaper import ForecastWorker


def test_the_worker_reads_commands_with_a_short_wait_and_stops_reading_at_exit(redis_url):
    client = redis.Redis.from_url(redis_url)
    worker = ForecastWorker(
        [Queue("command-channel-check", connection=client)], connection=client, lost_job_reruns=1
    )
    worker.subscribe()
    try:
        assert worker.pubsub_thread.is_alive()
        assert worker.pubsub_thread.sleep_time == READ_WAIT_SECONDS
    finally:
        worker.unsubscribe()
    worker.pubsub_thread.join(timeout=2 * READ_WAIT_SECONDS)
    assert not worker.pubsub_thread.is_alive()
    client.close()
