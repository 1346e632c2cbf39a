"""Forecasts per second through one prediction worker: the sizing figure of the scaling guide.

Fills a Redis database with a fleet of devices, each with ``training_seconds`` of
readings (default: two days every 60 s, 2,880 points), enqueues one prediction job per
device with the job manager's own enqueue, and drains the queue twice:

* ``baseline``: RQ's SimpleWorker in this process (models already imported, no fork
  per job): the model's own cost plus Redis;
* ``worker``: ``pipeline prediction-worker --burst``, the command the manifests run,
  as a subprocess (a forked work horse per job, the job timeout enforced).

Throughput counts from the first job's start to the last job's end (RQ's timestamps),
so the worker's start-up is reported apart. Latency is each job's run time (start to
end). Peak memory is the resident size of the largest process involved: this process or
a cmdstan fit (baseline), the worker, its work horses or their fits (worker). One worker
uses one core.

Uses its own Redis database (default 9), emptied before and after; run against the
local services (`pipeline services up`).

    .venv/bin/python bench/forecast_throughput.py --devices 24
"""

from __future__ import annotations

import argparse
import math
import os
import random
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import redis
from rq import SimpleWorker
from rq.job import Job
from rq.serializers import JSONSerializer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.queue import enqueue_prediction, job_id_for, make_queue  # noqa: E402
from pipeline.records import PredictionJob  # noqa: E402
from pipeline.settings import Settings, load_settings  # noqa: E402
from pipeline.storage import Store  # noqa: E402

END = 1_714_521_600.0  # window end of every job (2024-05-01T00:00Z)
STEP = 60.0


def series(device: str, points: int, seed: int) -> list[dict[str, float]]:
    """A day-cycle temperature with drift and noise, like the simulator's rooms."""
    rng = random.Random(f"{seed}:{device}")
    base, amplitude, phase = rng.uniform(19, 23), rng.uniform(1.5, 3), rng.uniform(0, 6.3)
    readings = []
    for i in range(points):
        t = END - (points - 1 - i) * STEP
        day = 2 * math.pi * (t % 86400) / 86400
        temperature = base + amplitude * math.sin(day + phase) + rng.gauss(0, 0.1)
        readings.append(
            {
                "time": t,
                "temperature": round(temperature, 1),
                "humidity": round(50 - 2 * (temperature - base), 1),
            }
        )
    return readings


def enqueue_fleet(
    settings: Settings, client: redis.Redis, name: str, devices: int, points: int, seed: int
) -> list[str]:
    """Readings for each device, then one job per device on the settings' queue."""
    store = Store(client)
    queue = make_queue(settings, client, settings.queue_name)
    ids = []
    for d in range(devices):
        device = f"{name}{d:04d}"
        store.add_readings(device, series(device, points, seed))
        job = PredictionJob(
            job_id=job_id_for(device, END),
            device_id=device,
            window_start=END - settings.job_window_seconds,
            window_end=END,
            model=settings.default_model,
        )
        assert enqueue_prediction(queue, settings, job), f"{job.job_id} not enqueued"
        ids.append(job.job_id)
    return ids


def summarize(name: str, client: redis.Redis, ids: list[str], wall: float, peak_kib: int) -> dict:
    jobs = [Job.fetch(i, connection=client, serializer=JSONSerializer) for i in ids]
    failed = [j.id for j in jobs if j.get_status() != "finished"]
    if failed:
        raise SystemExit(f"{name}: {len(failed)} jobs did not finish, e.g. {failed[0]}")
    runs = sorted((j.ended_at - j.started_at).total_seconds() for j in jobs)
    span = (max(j.ended_at for j in jobs) - min(j.started_at for j in jobs)).total_seconds()
    q = statistics.quantiles(runs, n=100, method="inclusive")
    return {
        "name": name,
        "jobs": len(jobs),
        "per_second": len(jobs) / span,
        "wall": wall,
        "p50": q[49],
        "p95": q[94],
        "p99": q[98],
        "max": runs[-1],
        "peak_mib": peak_kib / 1024,
    }


def redis_bytes(client: redis.Redis, devices: list[str]) -> tuple[float, float]:
    """Mean Redis bytes per reading, and per job's stored output (everything kept for the
    device except its readings and RQ's own keys): the memory side of the sizing table."""
    reading_bytes, reading_count, output_bytes = 0, 0, 0
    for device in devices:
        for key in client.scan_iter(match=f"*{device}*"):
            size = client.memory_usage(key) or 0
            if key.startswith(b"readings:"):
                reading_bytes += size
                reading_count += client.zcard(key)
            elif not key.startswith(b"rq:"):
                output_bytes += size
    return reading_bytes / reading_count, output_bytes / len(devices)


def run_baseline(settings: Settings, client: redis.Redis, ids: list[str]) -> dict:
    queue = make_queue(settings, client, settings.queue_name)
    worker = SimpleWorker([queue], connection=client, serializer=JSONSerializer)
    began = time.monotonic()
    worker.work(burst=True, logging_level="WARNING")
    wall = time.monotonic() - began
    # Prophet fits with cmdstan in a child process: the peak is the larger of the two.
    peak = max(
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
    )
    return summarize("baseline", client, ids, wall, peak)


def run_worker(env: dict[str, str], client: redis.Redis, ids: list[str], count: int = 1) -> dict:
    """Drain the queue with ``count`` burst workers side by side."""
    argv = [
        str(Path(sys.executable).with_name("pipeline")),
        "--log-level",
        "warning",
        "prediction-worker",
        "--burst",
    ]
    began = time.monotonic()
    workers = [subprocess.Popen(argv, env=env) for _ in range(count)]
    for worker in workers:
        if worker.wait(timeout=3600) != 0:
            raise SystemExit(f"a prediction worker exited with {worker.returncode}")
    wall = time.monotonic() - began
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return summarize("worker" if count == 1 else f"{count} workers", client, ids, wall, peak)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--devices",
        type=int,
        default=24,
        help="jobs per run, one per device (default: %(default)s)",
    )
    parser.add_argument(
        "--points",
        type=int,
        default=2880,
        help="readings per device, every 60 s (default: %(default)s, two days)",
    )
    parser.add_argument(
        "--redis-db",
        type=int,
        default=9,
        help="Redis database to use, emptied (default: %(default)s)",
    )
    parser.add_argument(
        "--seed", type=int, default=7, help="seed of the series (default: %(default)s)"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="also drain a fleet with this many workers at once, to show scaling "
        "(default: %(default)s, no scaling run)",
    )
    args = parser.parse_args()

    base = load_settings(
        environ={
            k: v
            for k, v in os.environ.items()
            if k == "PIPELINE_BROKER" or k == "PIPELINE_REDIS_URL"
        }
    )
    redis_url = base.redis_url.rsplit("/", 1)[0] + f"/{args.redis_db}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIPELINE_")}
    env.update(
        PIPELINE_REDIS_URL=redis_url,
        PIPELINE_TRAINING_SECONDS=str(args.points * STEP),
        PIPELINE_DATA_DIR=str(ROOT / ".local" / "bench"),
    )
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    try:
        baseline_env = {**env, "PIPELINE_QUEUE_NAME": "bench-forecasts-baseline"}
        worker_env = {**env, "PIPELINE_QUEUE_NAME": "bench-forecasts-worker"}
        # The job function reads its settings from the environment, here as in a worker.
        for name in [k for k in os.environ if k.startswith("PIPELINE_")]:
            del os.environ[name]
        os.environ.update(baseline_env)
        settings = load_settings(environ=baseline_env)
        ids = enqueue_fleet(settings, client, "baseline-", args.devices, args.points, args.seed)
        baseline = run_baseline(settings, client, ids)
        settings = load_settings(environ=worker_env)
        ids = enqueue_fleet(settings, client, "worker-", args.devices, args.points, args.seed)
        worker = run_worker(worker_env, client, ids)
        runs = [baseline, worker]
        if args.workers > 1:
            many_env = {**env, "PIPELINE_QUEUE_NAME": "bench-forecasts-many"}
            settings = load_settings(environ=many_env)
            many_ids = enqueue_fleet(
                settings, client, "many-", args.devices, args.points, args.seed
            )
            runs.append(run_worker(many_env, client, many_ids, args.workers))
        per_reading, per_forecast = redis_bytes(
            client, [f"worker-{d:04d}" for d in range(args.devices)]
        )
    finally:
        client.flushdb()
        client.close()

    print(f"{args.devices} forecasts per run, {args.points} readings each (one core per worker)")
    header = ("run", "fc/s", "wall s", "p50 s", "p95 s", "p99 s", "max s", "peak MiB")
    print(f"{header[0]:9}" + "".join(f"{h:>9}" for h in header[1:]))
    for r in runs:
        figures = (r["per_second"], r["wall"], r["p50"], r["p95"], r["p99"], r["max"])
        print(f"{r['name']:9}" + "".join(f"{x:9.2f}" for x in figures) + f"{r['peak_mib']:9.0f}")
    print(f"Redis: {per_reading:.0f} B per reading, {per_forecast:.0f} B stored per forecast")
    print(
        f"worker/baseline throughput: {worker['per_second'] / baseline['per_second']:.2f} "
        f"(fork per job, job timeout); worker start-up and drain: {worker['wall']:.1f} s wall"
    )
    if len(runs) == 3:
        print(
            f"{args.workers} workers / 1 worker throughput: "
            f"{runs[2]['per_second'] / worker['per_second']:.2f} on {os.cpu_count()} cores"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
