"""Ingest throughput: raw topic -> `readings`, with and without the dedup table.

Produces a backlog of raw readings for a fleet of devices (with the repeats
and late arrivals that overlapping polls bring) to a fresh topic prefix on
the local Kafka, then starts a real Faust worker and measures how fast the
ingest agent turns the backlog into `readings`, under exactly_once:

* ``dedup``: the ingest agent as shipped (the ``ingest-seen`` table);
* ``baseline``: the same agent with the dedup table switched off, forwarding
  every valid message, repeats included: the cost of exactly-once is the
  difference.

Throughput is counted from the Kafka timestamps of the first and last message
on `readings` (worker start-up excluded); latency is the time the agent spent
per raw message (percentiles); memory is the worker's peak resident size.
Run against the local services (`pipeline services up`); it cleans up its topics.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from kafka_tools import create_topic, delete_prefix, peak_rss_mib  # beside this script

ROOT = Path(__file__).resolve().parents[1]
REDIS_DB = 12
START = 1_714_521_600.0


def backlog(devices: int, readings: int, repeat: float, late: float, seed: int) -> list:
    """(device, payload) pairs: each device's readings, some repeated, some late."""
    rng = random.Random(seed)
    messages = []
    for d in range(devices):
        device = f"bench{d:05d}"
        times = [START + 60 * i for i in range(readings)]
        order = list(times)
        for i in range(len(order) - 3):
            if rng.random() < late:
                order[i], order[i + 3] = order[i + 3], order[i]
        for t in order:
            payload = {
                "device_id": device,
                "time": t,
                "temperature": round(rng.uniform(18, 26), 1),
                "humidity": round(rng.uniform(35, 60), 1),
                "received_at": START + 60 * readings,
            }
            copies = 2 if rng.random() < repeat else 1
            messages.extend([(device, json.dumps(payload).encode())] * copies)
    return messages


async def produce(bootstrap: str, topic: str, partitions: int, messages: list) -> None:
    from aiokafka import AIOKafkaProducer

    await create_topic(bootstrap, topic, partitions)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=20)
    await producer.start()
    try:
        batch = [await producer.send(topic, value, key=key.encode()) for key, value in messages]
        await asyncio.gather(*batch)
    finally:
        await producer.stop()


async def readings_summary(bootstrap: str, topic: str) -> tuple[int, float]:
    """(messages, seconds between the first and last Kafka timestamp) on a topic."""
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        isolation_level="read_committed",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        while not consumer.assignment():
            await asyncio.sleep(0.1)
        partitions = sorted(consumer.assignment())
        end = await consumer.end_offsets(partitions)
        stamps = []
        while any([await consumer.position(tp) < end[tp] for tp in partitions]):
            for records in (await consumer.getmany(timeout_ms=1000)).values():
                stamps.extend(r.timestamp for r in records)
        return len(stamps), (max(stamps) - min(stamps)) / 1000.0 if stamps else 0.0
    finally:
        with contextlib.suppress(asyncio.CancelledError):
            await consumer.stop()


async def committed_count(bootstrap: str, group: str, topic: str) -> int:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    return sum(meta.offset for tp, meta in offsets.items() if tp.topic == topic and meta.offset > 0)


def run_mode(mode: str, args: argparse.Namespace, messages: list, expected: int) -> dict:
    from pipeline.settings import load_settings

    base = load_settings(environ={k: v for k, v in os.environ.items() if k == "PIPELINE_BROKER"})
    bootstrap = base.broker.removeprefix("kafka://")
    redis_url = base.redis_url.rsplit("/", 1)[0] + f"/{REDIS_DB}"
    prefix = f"bench-{uuid.uuid4().hex[:8]}-"
    workdir = Path(tempfile.mkdtemp(prefix="ingest-bench-"))
    stats = workdir / "stats.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIPELINE_")}
    env.update(
        PIPELINE_BROKER=base.broker,
        PIPELINE_REDIS_URL=redis_url,
        PIPELINE_SOURCE_URL="http://127.0.0.1:9/api/v2",  # the connector finds nothing
        PIPELINE_SOURCE_API_KEY="bench",
        PIPELINE_POLL_SECONDS="3600",
        PIPELINE_JOB_WINDOW_SECONDS=str(10**9),
        PIPELINE_APP_ID=f"{prefix}app",
        PIPELINE_TOPIC_PREFIX=prefix,
        PIPELINE_TABLE_STORE="memory",
        PIPELINE_WEB_PORT=str(args.web_port),
        PIPELINE_DATA_DIR=str(workdir),
        INGEST_BENCH_STATS=str(stats),
        INGEST_BENCH_EXPECTED=str(len(messages)),
    )
    import redis

    redis.Redis.from_url(redis_url).flushdb()
    asyncio.run(produce(bootstrap, f"{prefix}readings-raw", base.topic_partitions, messages))
    log = (workdir / "worker.log").open("wb")
    worker = subprocess.Popen(
        [sys.executable, __file__, "--worker", mode],
        env=env,
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + args.timeout
        while not stats.exists():  # written once the agent handled every raw message
            if worker.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"{mode}: worker stopped or timed out; see {workdir}/worker.log")
            time.sleep(1)
        group, raw_topic = f"{prefix}app", f"{prefix}readings-raw"
        while asyncio.run(committed_count(bootstrap, group, raw_topic)) < len(messages):
            time.sleep(1)  # the last transaction commits
        peak = peak_rss_mib(worker.pid)
    finally:
        worker.kill()  # its work is committed; a graceful stop would wait for the job manager
        worker.wait(60)
        log.close()
    count, seconds = asyncio.run(readings_summary(bootstrap, f"{prefix}readings"))
    asyncio.run(delete_prefix(bootstrap, prefix))
    redis.Redis.from_url(redis_url).flushdb()
    durations = json.loads(stats.read_text())
    if count != expected:
        raise SystemExit(f"{mode}: {count} readings forwarded, expected {expected}")
    return {
        "mode": mode,
        "forwarded": count,
        "seconds": seconds,
        "raw_per_s": len(messages) / seconds if seconds else float("nan"),
        "p50_ms": 1000 * statistics.median(durations),
        "p99_ms": 1000 * statistics.quantiles(durations, n=100)[98],
        "peak_mib": peak,
    }


def worker_main(mode: str) -> None:
    """The Faust worker, with the ingest agent timed (and, for baseline, without dedup)."""
    from agents import ingest
    from pipeline.app import app
    from pipeline.dedup import Verdict

    if mode == "baseline":

        class NoDedup:
            def check(self, device_id: str, t: float) -> Verdict:
                return Verdict.NEW

            def record(self, device_id: str, t: float) -> bool:
                return False

            def rejected_before(self, *identity: object) -> bool:
                return False

            def record_rejected(self, *identity: object) -> None:
                return None

        ingest.dedup = NoDedup()
    durations: list[float] = []
    expected = int(os.environ["INGEST_BENCH_EXPECTED"])
    timed = ingest.handle

    async def handle(key, raw):
        began = time.perf_counter()
        try:
            return await timed(key, raw)
        finally:
            durations.append(time.perf_counter() - began)
            if len(durations) == expected:
                Path(os.environ["INGEST_BENCH_STATS"]).write_text(json.dumps(durations))

    ingest.handle = handle
    sys.argv = ["faust", "worker", "-l", "warn"]
    app.main()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=1000, help="devices (default: %(default)s)")
    parser.add_argument(
        "--readings", type=int, default=12, help="readings per device (default: %(default)s)"
    )
    parser.add_argument(
        "--repeat", type=float, default=0.2, help="share sent twice (default: %(default)s)"
    )
    parser.add_argument(
        "--late", type=float, default=0.05, help="share arriving late (default: %(default)s)"
    )
    parser.add_argument("--seed", type=int, default=1, help="backlog seed (default: %(default)s)")
    parser.add_argument(
        "--timeout", type=float, default=600, help="give up after seconds (default: %(default)s)"
    )
    parser.add_argument(
        "--web-port", type=int, default=6099, help="worker's web port (default: %(default)s)"
    )
    parser.add_argument("--worker", choices=["dedup", "baseline"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker_main(args.worker)
        return
    messages = backlog(args.devices, args.readings, args.repeat, args.late, args.seed)
    distinct = args.devices * args.readings
    print(
        f"backlog: {len(messages)} raw messages, {distinct} distinct readings, "
        f"{args.devices} devices"
    )
    rows = [
        run_mode("baseline", args, messages, expected=len(messages)),
        run_mode("dedup", args, messages, expected=distinct),
    ]
    print(
        f"{'mode':9} {'forwarded':>9} {'raw msg/s':>10} {'p50 ms':>7} {'p99 ms':>7} {'peak MiB':>8}"
    )
    for row in rows:
        print(
            f"{row['mode']:9} {row['forwarded']:>9} {row['raw_per_s']:>10.0f} "
            f"{row['p50_ms']:>7.2f} {row['p99_ms']:>7.2f} {row['peak_mib']:>8.0f}"
        )
    ratio = rows[1]["raw_per_s"] / rows[0]["raw_per_s"]
    print(f"dedup runs at {ratio:.0%} of the baseline's throughput")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
