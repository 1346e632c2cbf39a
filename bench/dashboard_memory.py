"""Dashboard benchmark: time to first render, refresh cost and memory after an hour of updates.

Fills a Redis database with a fleet (default 1,000 devices, a day of readings
each, one forecast each), then in this process:

1. first render: builds a session's document the way the server does, waits
   for its first read to be applied, and serializes it (what the browser's
   first load receives); timed, with the document's size;
2. a baseline run: N refreshes with nothing new in Redis (nothing to stream);
3. a streaming run: N refreshes while new readings arrive for a share of the
   fleet every refresh (and for the device on screen), and new forecasts and
   anomalies now and then, as an hour of a live fleet would bring.

The refresh timer is driven directly (no waiting between refreshes: a sped-up
hour; the poller's clock advances one refresh interval per step), with reads
on a one-thread pool and the hand-back applied as the server's loop would.
Memory is the process's RSS (and optionally tracemalloc) after a warm-up and at
the end of each run; the streaming run's growth is compared with the baseline's.
What this does not include: Tornado's websocket buffers and the browser.

Uses its own Redis database (default 15) and empties it before and after.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import statistics
import sys
import time
import tracemalloc
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bokeh.document import Document
from bokeh.protocol import Protocol
from bokeh.server.callbacks import NextTickCallback

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dashboard.data import Poller, connect
from dashboard.document import Session, build_document
from pipeline.queue import job_id_for
from pipeline.settings import load_settings
from pipeline.storage import Store

STEP = 300.0  # seconds between a device's readings
PAGE = 4096


def rss_mib() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * PAGE / 2**20


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reading(t: float, rng: random.Random) -> dict[str, float]:
    return {"time": t, "temperature": 21 + rng.random() * 3, "humidity": 40 + rng.random() * 10}


def forecast(device: str, until: float) -> dict:
    return {
        "job_id": job_id_for(device, until),
        "device_id": device,
        "model": "prophet",
        "model_version": "prophet-bench",
        "window_start": until - 3600,
        "window_end": until,
        "trained_until": until,
        "points": [
            {"ds": until + k * 600, "yhat": 22.0, "yhat_lower": 21.0, "yhat_upper": 23.0}
            for k in range(1, 37)
        ],
    }


def fill(store: Store, devices: int, readings: int, t0: float) -> list[str]:
    rng = random.Random(1)
    names = [f"dev-{i:04d}" for i in range(devices)]
    for name in names:
        store.add_readings(name, [reading(t0 + k * STEP, rng) for k in range(readings)])
        doc = forecast(name, t0 + (readings - 1) * STEP)
        store.put_forecast(name, doc["job_id"], doc)
    return names


def settle(doc: Document, pool: ThreadPoolExecutor) -> None:
    """Wait for the submitted reads, then run their hand-backs as the loop would."""
    while True:
        pool.submit(lambda: None).result()
        pending = [cb for cb in doc.session_callbacks if isinstance(cb, NextTickCallback)]
        if not pending:
            return
        for callback in pending:
            doc.remove_next_tick_callback(callback)
            callback.callback()


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1] if len(values) > 1 else values[0]


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def new_session(settings, store: Store, pool: ThreadPoolExecutor, clock: Clock):
    poller = Poller(settings, store, clock=clock)
    poller.min_interval = 0.0  # every refresh reads anew: the sped-up hour
    doc = Document()
    session = build_document(doc, settings, poller, pool)
    assert isinstance(session, Session)
    settle(doc, pool)
    return doc, session


def first_render(settings, store: Store, pool: ThreadPoolExecutor, clock: Clock) -> None:
    started = time.perf_counter()
    doc, _ = new_session(settings, store, pool, clock)
    built = time.perf_counter()
    message = Protocol().create("PULL-DOC-REPLY", "bench", doc)  # the page's first load
    size = len(message.content_json) + sum(len(b.to_bytes()) for b in message.buffers)
    done = time.perf_counter()
    rows = len(doc.select_one({"name": "fleet"}).data["device_id"])
    print(
        f"first render: {1000 * (done - started):.0f} ms "
        f"(build + first read + apply {1000 * (built - started):.0f} ms, "
        f"serialize {1000 * (done - built):.0f} ms), document {size / 2**20:.2f} MiB, "
        f"{rows} fleet rows"
    )


def run(name: str, args, settings, store: Store, names: list[str], t0: float) -> dict:
    """N refreshes of one open page; new data each refresh unless this is the baseline."""
    rng = random.Random(2)
    clock = Clock(time.time())
    pool = ThreadPoolExecutor(max_workers=1)
    doc, session = new_session(settings, store, pool, clock)
    shown = session.device.cursor.device_id
    newest = {n: t0 + (args.readings - 1) * STEP for n in names}
    read_ms, apply_ms = [], []
    streaming = name == "streaming"
    per_refresh = max(1, len(names) // 30)  # a reading per device every ~minute at 2 s refresh
    warm_rss = warm_traced = 0.0
    for step in range(args.updates):
        if step == args.warmup:
            warm_rss = rss_mib()
            warm_traced = tracemalloc.get_traced_memory()[0] / 2**20 if args.tracemalloc else 0
        if streaming:
            for device in {shown, *rng.sample(names, per_refresh)}:
                newest[device] += STEP
                store.add_readings(device, [reading(newest[device], rng)])
            if step % 30 == 0:
                for device in {shown, *rng.sample(names, per_refresh)}:
                    doc_ = forecast(device, newest[device])
                    store.put_forecast(device, doc_["job_id"], doc_)
                anomaly = {"time": newest[shown], "value": 30.0, "lower": 21, "upper": 23}
                store.client.zadd(store.keys.anomalies(shown), {json.dumps(anomaly): newest[shown]})
                store.client.hincrby(store.keys.anomaly_counts, shown, 1)
        clock.now += settings.dashboard_refresh_seconds
        started = time.perf_counter()
        session.refresh()
        pool.submit(lambda: None).result()
        read_done = time.perf_counter()
        settle(doc, pool)
        read_ms.append(1000 * (read_done - started))
        apply_ms.append(1000 * (time.perf_counter() - read_done))
    end_rss = rss_mib()
    end_traced = tracemalloc.get_traced_memory()[0] / 2**20 if args.tracemalloc else 0
    pool.shutdown()
    shown_rows = len(doc.select_one({"name": "readings"}).data["time"])
    total = sum(read_ms) + sum(apply_ms)
    print(
        f"{name:9} {args.updates} refreshes in {total / 1000:.1f} s "
        f"({1000 * args.updates / total:.1f} refreshes/s); "
        f"read p50/p95/p99 {pct(read_ms, 50):.1f}/{pct(read_ms, 95):.1f}/"
        f"{pct(read_ms, 99):.1f} ms; "
        f"apply p50/p95/p99 {pct(apply_ms, 50):.1f}/{pct(apply_ms, 95):.1f}/"
        f"{pct(apply_ms, 99):.1f} ms"
    )
    traced = f"; tracemalloc {warm_traced:.1f} -> {end_traced:.1f} MiB" if args.tracemalloc else ""
    print(
        f"{'':9} RSS after warm-up {warm_rss:.1f} MiB, at end {end_rss:.1f} MiB "
        f"(growth {end_rss - warm_rss:+.1f} MiB){traced}; device on screen holds {shown_rows} "
        f"readings; throughput chart {len(session.health.throughput.data['time'])} points"
    )
    return {"growth": end_rss - warm_rss, "traced": end_traced - warm_traced}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=1000, help="devices in the fleet")
    parser.add_argument("--readings", type=int, default=288, help="readings per device at start")
    parser.add_argument(
        "--updates", type=int, default=1800, help="refreshes per run (1800 = an hour at 2 s)"
    )
    parser.add_argument("--warmup", type=int, default=100, help="refreshes before measuring")
    parser.add_argument(
        "--redis-url", default="redis://127.0.0.1:6379/15", help="Redis database to use (emptied)"
    )
    parser.add_argument("--tracemalloc", action="store_true", help="also trace Python allocations")
    args = parser.parse_args(argv)

    settings = load_settings(
        environ={
            "PIPELINE_REDIS_URL": args.redis_url,
            "PIPELINE_FAUST_WEB_URL": "http://127.0.0.1:9",  # not measured: a closed port
            "PIPELINE_DASHBOARD_REFRESH_SECONDS": "2",
        }
    )
    store = connect(settings.redis_url)
    store.client.flushdb()
    try:
        t0 = time.time() - args.readings * STEP
        started = time.perf_counter()
        names = fill(store, args.devices, args.readings, t0)
        print(
            f"fleet: {args.devices} devices x {args.readings} readings in Redis "
            f"({time.perf_counter() - started:.1f} s to fill); {args.updates} refreshes "
            f"= {args.updates * settings.dashboard_refresh_seconds / 60:.0f} min at "
            f"{settings.dashboard_refresh_seconds:g} s"
        )
        if args.tracemalloc:
            tracemalloc.start()
        with ThreadPoolExecutor(max_workers=1) as pool:
            first_render(settings, store, pool, Clock(time.time()))
        baseline = run("baseline", args, settings, store, names, t0)
        streaming = run("streaming", args, settings, store, names, t0)
        print(
            f"memory growth, streaming minus baseline: "
            f"{streaming['growth'] - baseline['growth']:+.1f} MiB RSS"
            + (
                f", {streaming['traced'] - baseline['traced']:+.1f} MiB traced"
                if args.tracemalloc
                else ""
            )
            + f"; peak RSS {peak_rss_mib():.0f} MiB"
        )
    finally:
        store.client.flushdb()
        store.client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
