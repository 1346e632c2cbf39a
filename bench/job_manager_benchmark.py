"""Job-manager benchmark: readings/s through the job-manager agent and the latency
from a reading's arrival in ``readings`` to its job being on the RQ queue, beside a
plain aiokafka consumer reading the same topic in the same run (the ceiling).

Runs against the local Kafka and Redis (``pipeline services up``), in its own topic
prefix, consumer group, queue and Redis database, and removes its topics after.

    .venv/bin/python bench/job_manager_benchmark.py --devices 500 --readings 20
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import redis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from kafka_tools import create_topic, delete_prefix, peak_rss_mib  # beside this script

from pipeline.queue import job_id_for, make_queue
from pipeline.settings import load_settings
from pipeline.windowing import expected_windows

BIN = Path(sys.executable).parent
INTERVAL = 60.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def produce(
    bootstrap: str, topic: str, devices: int, per_device: int, start: float, rate: float | None
) -> dict[tuple[str, float], float]:
    """Send readings (round-robin over devices); returns (device, time) -> send wall time."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await producer.start()
    sent: dict[tuple[str, float], float] = {}
    began = time.perf_counter()
    try:
        for step in range(per_device):
            for d in range(devices):
                device, event_time = f"bench{d:05d}", start + step * INTERVAL
                value = {
                    "device_id": device,
                    "time": event_time,
                    "temperature": 21.0,
                    "humidity": 45.0,
                }
                await producer.send(topic, json.dumps(value).encode(), key=device.encode())
                sent[(device, event_time)] = time.time()
                if rate:
                    lag = len(sent) / rate - (time.perf_counter() - began)
                    if lag > 0:
                        await asyncio.sleep(lag)
        await producer.flush()
    finally:
        await producer.stop()
    return sent


async def plain_consume(bootstrap: str, topic: str, total: int) -> float:
    """Seconds a plain consumer takes to read ``total`` messages from the start."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        group_id=f"bench-plain-{uuid.uuid4().hex[:6]}",
    )
    await consumer.start()
    began, seen = time.perf_counter(), 0
    try:
        while seen < total:
            batch = await consumer.getmany(timeout_ms=1000, max_records=5000)
            for records in batch.values():
                for record in records:
                    json.loads(record.value)
                    seen += 1
    finally:
        await consumer.stop()
    return time.perf_counter() - began


def wait_ready(url: str, timeout: float) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"worker not ready at {url}")


def wait_jobs(queue, expected: set[str], timeout: float) -> float:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if len(set(queue.job_ids) & expected) == len(expected):
            return time.time()
        time.sleep(0.05)
    raise SystemExit(f"only {len(set(queue.job_ids) & expected)} of {len(expected)} jobs queued")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=500, help="devices (default 500)")
    parser.add_argument(
        "--readings", type=int, default=20, help="readings per device per phase (default 20)"
    )
    parser.add_argument(
        "--window",
        type=float,
        default=600.0,
        help="job window in event seconds (default 600: a job every 10 readings)",
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=500.0,
        help="readings/s sent in the latency phase (default 500)",
    )
    parser.add_argument("--redis-db", type=int, default=14, help="Redis database to use (wiped)")
    args = parser.parse_args()

    base = load_settings(
        environ={
            k: v for k, v in os.environ.items() if k in ("PIPELINE_BROKER", "PIPELINE_REDIS_URL")
        }
    )
    bootstrap = base.broker.removeprefix("kafka://")
    redis_url = base.redis_url.rsplit("/", 1)[0] + f"/{args.redis_db}"
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    prefix = f"bench-{uuid.uuid4().hex[:6]}-"
    readings_topic = f"{prefix}readings"
    asyncio.run(create_topic(bootstrap, readings_topic, base.topic_partitions))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIPELINE_")}
    web_port = free_port()
    env.update(
        PIPELINE_BROKER=base.broker,
        PIPELINE_REDIS_URL=redis_url,
        PIPELINE_TOPIC_PREFIX=prefix,
        PIPELINE_APP_ID=f"{prefix}app",
        PIPELINE_QUEUE_NAME=f"{prefix}q",
        PIPELINE_JOB_WINDOW_SECONDS=str(args.window),
        PIPELINE_POLL_SECONDS="3600",
        PIPELINE_SOURCE_API_KEY="unused",
        PIPELINE_SOURCE_URL="http://127.0.0.1:9/api/v2",
        PIPELINE_WEB_PORT=str(web_port),
        PIPELINE_DATA_DIR=tempfile.mkdtemp(prefix="bench-"),
    )
    settings = load_settings(environ={k: v for k, v in env.items() if k.startswith("PIPELINE_")})
    queue = make_queue(settings, client)
    start = 1_700_000_000.0
    devices, per_device = args.devices, args.readings

    def expected_ids(first_step: int, steps: int) -> dict[str, tuple[str, float]]:
        ids = {}
        for d in range(devices):
            device = f"bench{d:05d}"
            times = [start + s * INTERVAL for s in range(first_step + steps)]
            for _, end in expected_windows(times, args.window):
                if end >= start + first_step * INTERVAL:
                    ids[job_id_for(device, end)] = (device, end)
        return ids

    log_path = Path(env["PIPELINE_DATA_DIR"]) / "worker.log"
    log = log_path.open("wb")
    print(f"worker log: {log_path}", flush=True)
    worker = subprocess.Popen(
        [str(BIN / "faust"), "-A", "pipeline.app", "worker", "-l", "info"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_ready(f"http://127.0.0.1:{web_port}/devices/", 120)
        print(f"phase 1: burst of {devices * per_device} readings, {devices} devices", flush=True)
        began = time.time()
        asyncio.run(produce(bootstrap, readings_topic, devices, per_device, start, None))
        backlog = expected_ids(0, per_device)
        done = wait_jobs(queue, set(backlog), 600)
        agent_seconds = done - began
        print(f"phase 2: {devices * per_device} more readings at {args.rate:.0f}/s", flush=True)
        sent = asyncio.run(
            produce(
                bootstrap,
                readings_topic,
                devices,
                per_device,
                start + per_device * INTERVAL,
                args.rate,
            )
        )
        live = expected_ids(per_device, per_device)
        wait_jobs(queue, set(live), 600)
        latencies = []
        for job_id, (device, end) in live.items():
            job = queue.fetch_job(job_id)
            latencies.append(job.enqueued_at.timestamp() - sent[(device, end)])
        rss = peak_rss_mib(worker.pid)
        plain_seconds = asyncio.run(
            plain_consume(bootstrap, readings_topic, 2 * devices * per_device)
        )
    finally:
        worker.terminate()
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait(10)
        asyncio.run(delete_prefix(bootstrap, prefix))
        client.flushdb()

    total = devices * per_device
    print(f"\nreadings/s, plain aiokafka consumer (ceiling): {2 * total / plain_seconds:8.0f}")
    print(
        f"readings/s, job-manager agent (burst to last job queued): {total / agent_seconds:5.0f}"
        f"   ({len(backlog)} jobs in {agent_seconds:.1f} s)"
    )
    print(
        f"reading -> job queued latency at {args.rate:.0f}/s over {len(latencies)} jobs: "
        f"p50 {percentile(latencies, 0.5) * 1000:.0f} ms, "
        f"p99 {percentile(latencies, 0.99) * 1000:.0f} ms, "
        f"mean {statistics.mean(latencies) * 1000:.0f} ms"
    )
    print(f"worker peak RSS: {rss:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
