"""Does one stream worker keep a fleet fresh? A live simulator, a real worker, real time.

Starts the device simulator with ``--devices`` devices sampling every 60 s on
the real clock (``--history-seconds`` of history to backfill), and one Faust
worker polling it every ``--interval`` seconds with the shipped connector
settings (16 requests in flight, at most 20 requests per second), then watches
for ``--minutes``:

* poll rounds: the seconds each round took for the whole fleet (the
  connector's ``poll round`` log line), against the interval it must fit in;
  the first round (the backfill) is reported apart;
* freshness: for every device, how far its newest reading on ``readings``
  (``last_ingested_time`` in ``/devices/``) lags the simulator's clock, sampled
  every 10 s after the first round; keeping up means it stays below one sample
  interval plus one poll interval and does not grow;
* ingest: new readings per second (``ingest_records_total{outcome="new"}`` on
  the worker's ``/metrics``) over the watched minutes;
* the worker's peak resident memory.

The baseline in the same invocation is the same flow with a tenth of the
devices, so the figures show what the fleet's size costs. Run against the
local services (``pipeline services up``); topics and the Redis database (10)
are cleaned up.

    nice .venv/bin/python bench/fleet_scale.py --devices 1000 --minutes 4
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

from kafka_tools import delete_prefix, peak_rss_mib  # beside this script

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
REDIS_DB = 10
ROUND = re.compile(r"poll round devices=(\d+) produced=(\d+) seconds=([\d.]+)")


def get_json(url: str) -> object:
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.load(response)


def new_readings(web_port: int) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{web_port}/metrics", timeout=30) as r:
        text = r.read().decode()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "ingest_records_total" and sample.labels.get("outcome") == "new"
    )


def rounds_in(log: Path) -> list[tuple[int, int, float]]:
    """(devices, produced, seconds) of every poll round the worker logged."""
    text = log.read_text(errors="replace")
    return [(int(d), int(p), float(s)) for d, p, s in ROUND.findall(text)]


def percentile(values: list[float], q: int) -> float:
    if len(values) < 2:
        return values[0] if values else float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def run_fleet(devices: int, args: argparse.Namespace) -> dict:
    from pipeline.settings import load_settings

    base = load_settings(environ={k: v for k, v in os.environ.items() if k == "PIPELINE_BROKER"})
    redis_url = base.redis_url.rsplit("/", 1)[0] + f"/{REDIS_DB}"
    prefix = f"fleet-{uuid.uuid4().hex[:8]}-"
    workdir = Path(tempfile.mkdtemp(prefix="fleet-bench-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIPELINE_")}
    env.update(
        PIPELINE_BROKER=base.broker,
        PIPELINE_REDIS_URL=redis_url,
        PIPELINE_SOURCE_URL=f"http://127.0.0.1:{args.sim_port}/api/v2",
        PIPELINE_SOURCE_API_KEY=uuid.uuid4().hex,
        PIPELINE_POLL_SECONDS=str(args.interval),
        PIPELINE_APP_ID=f"{prefix}app",
        PIPELINE_TOPIC_PREFIX=prefix,
        PIPELINE_QUEUE_NAME=f"{prefix}forecasts",
        PIPELINE_WEB_PORT=str(args.web_port),
        PIPELINE_DATA_DIR=str(workdir),
    )
    import redis

    redis.Redis.from_url(redis_url).flushdb()
    simulator = [
        str(BIN / "pipeline"), "simulator", "--port", str(args.sim_port),
        "--devices", str(devices), "--interval-seconds", "60",
        "--history-seconds", str(args.history_seconds), "--seed", "1",
    ]  # fmt: skip
    worker = [str(BIN / "faust"), "-A", "pipeline.app", "worker", "-l", "info"]
    logs = {name: (workdir / f"{name}.log").open("wb") for name in ("simulator", "worker")}
    out = {"cwd": ROOT, "env": env, "stderr": subprocess.STDOUT}
    sim = subprocess.Popen(simulator, stdout=logs["simulator"], **out)
    time.sleep(2)
    faust = subprocess.Popen(worker, stdout=logs["worker"], **out)
    log = workdir / "worker.log"
    freshness: list[float] = []
    worst_per_sample: list[float] = []
    try:
        deadline = time.monotonic() + args.timeout
        while not rounds_in(log):  # the first round: the fleet's backfill
            if faust.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"{devices} devices: no poll round; see {log}")
            time.sleep(1)
        started, first_new = time.monotonic(), new_readings(args.web_port)
        print(f"  {devices} devices: backfill round done, watching {args.minutes} min", flush=True)
        while time.monotonic() - started < args.minutes * 60:
            time.sleep(10)
            clock = get_json(f"http://127.0.0.1:{args.sim_port}/healthz")["now"]
            fleet = get_json(f"http://127.0.0.1:{args.web_port}/devices/")
            lags = [clock - d["last_ingested_time"] for d in fleet if d["last_ingested_time"]]
            lags += [float("inf")] * (devices - len(lags))  # a device with nothing ingested
            freshness.extend(lags)
            worst_per_sample.append(max(lags))
            print(f"    worst freshness {max(lags):7.1f} s over {len(fleet)} devices", flush=True)
        ingested = new_readings(args.web_port) - first_new
        watched = time.monotonic() - started
        peak = peak_rss_mib(faust.pid)
    finally:
        for process in (faust, sim):
            process.terminate()
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
        for handle in logs.values():
            handle.close()
    rounds = rounds_in(log)
    asyncio.run(delete_prefix(base.broker.removeprefix("kafka://"), prefix))
    redis.Redis.from_url(redis_url).flushdb()
    live = [seconds for _, _, seconds in rounds[1:]]
    return {
        "devices": devices,
        "backfill_round_s": rounds[0][2],
        "backfill_readings": rounds[0][1],
        "rounds": len(live),
        "round_p50_s": percentile(live, 50),
        "round_max_s": max(live) if live else float("nan"),
        "fresh_p50_s": percentile(freshness, 50),
        "fresh_p99_s": percentile(freshness, 99),
        "fresh_max_s": max(freshness),
        "fresh_worst_first_last_s": (worst_per_sample[0], worst_per_sample[-1]),
        "new_per_s": ingested / watched,
        "peak_mib": peak,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=1000, help="fleet (default: %(default)s)")
    parser.add_argument(
        "--interval", type=float, default=60.0, help="poll interval, s (default: %(default)s)"
    )
    parser.add_argument(
        "--minutes", type=float, default=4.0, help="watched per fleet (default: %(default)s)"
    )
    parser.add_argument(
        "--history-seconds",
        type=int,
        default=600,
        help="history each device holds at start (default: %(default)s)",
    )
    parser.add_argument(
        "--timeout", type=float, default=900, help="give up after seconds (default: %(default)s)"
    )
    parser.add_argument("--sim-port", type=int, default=18099, help="(default: %(default)s)")
    parser.add_argument("--web-port", type=int, default=6098, help="(default: %(default)s)")
    args = parser.parse_args()
    rows = []
    for devices in (max(1, args.devices // 10), args.devices):
        print(f"fleet of {devices} devices, polled every {args.interval:.0f} s", flush=True)
        rows.append(run_fleet(devices, args))
    print()
    print(
        f"{'devices':>8} {'backfill s':>10} {'round p50':>9} {'round max':>9} "
        f"{'fresh p50':>9} {'fresh p99':>9} {'fresh max':>9} {'new/s':>7} {'peak MiB':>8}"
    )
    for row in rows:
        print(
            f"{row['devices']:>8} {row['backfill_round_s']:>10.1f} {row['round_p50_s']:>9.1f} "
            f"{row['round_max_s']:>9.1f} {row['fresh_p50_s']:>9.1f} {row['fresh_p99_s']:>9.1f} "
            f"{row['fresh_max_s']:>9.1f} {row['new_per_s']:>7.1f} {row['peak_mib']:>8.0f}"
        )
    fleet = rows[-1]
    budget = 60.0 + args.interval
    kept_up = fleet["round_max_s"] < args.interval and fleet["fresh_max_s"] < budget + 30
    print(
        f"\n{fleet['devices']} devices: slowest round {fleet['round_max_s']:.1f} s of a "
        f"{args.interval:.0f} s interval; worst freshness {fleet['fresh_max_s']:.1f} s "
        f"(first sample {fleet['fresh_worst_first_last_s'][0]:.1f} s, last "
        f"{fleet['fresh_worst_first_last_s'][1]:.1f} s); "
        f"{'keeps up' if kept_up else 'does NOT keep up'}"
    )


if __name__ == "__main__":
    main()
