"""What choosing the served forecast costs a prediction worker: Prophet alone versus ``auto``.

For a few synthetic devices (two days of readings every 60 s, a daily cycle on a
wandering level, like the simulator's rooms) stored in Redis, each device runs
one job per hourly window, in the same process and alternating window by
window so both modes share the machine's conditions:

* ``before``: the Prophet job with Prophet's default settings (4 Fourier terms
  for the daily cycle), what every device was served before selection existed:
  the baseline;
* ``prophet``: the Prophet job as registered now (``prophet_forecast``: 12
  terms, warm-started), what a device pinned to Prophet runs;
* ``auto``: the served job (``pipeline.prediction.serving.served_forecast``):
  ETS, seasonal-naive and Prophet fitted on the same readings, every candidate
  stored and indexed, the last ``selection_windows`` windows of candidate
  forecasts read back and scored, the choice made and the band calibrated.

Each mode runs on its own devices (same readings) so their forecasts never meet.
The first ``--warmup`` windows per device only build up evidence (``auto``
scores up to ``selection_windows`` earlier windows per job once they exist), the
rest are measured: jobs per second of one worker (one process, one core), job
latency percentiles, and the process's peak resident memory. Redis round trips
are included, RQ's own few milliseconds per job are not (same for both modes).

Uses its own Redis database (default 11), emptied before and after.

    nice .venv/bin/python bench/selection_benchmark.py --devices 2 --windows 32
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.settings import load_settings
from pipeline.storage import Store

HOUR = 3600.0
START = 1_714_521_600.0  # first reading (2024-05-01T00:00Z)


def fill(store: Store, device: str, days: float, seed: int) -> None:
    """Readings every minute: daily cycle, wandering level, sensor noise."""
    rng = np.random.default_rng(seed)
    t = START + np.arange(0.0, days * 86400.0, 60.0)
    level = np.cumsum(rng.normal(0, 0.02, len(t)))
    y = 21 + 2.5 * np.sin(2 * np.pi * t / 86400) + level + rng.normal(0, 0.1, len(t))
    readings = [
        {"time": float(a), "temperature": round(float(b), 2), "humidity": 45.0}
        for a, b in zip(t, y, strict=True)
    ]
    store.add_readings(device, readings)


def row(name: str, seconds: list[float], peak_kib: int) -> str:
    q = statistics.quantiles(seconds, n=100, method="inclusive")
    return (
        f"{name:<8}{len(seconds):>6}{len(seconds) / sum(seconds):>10.2f}"
        f"{q[49] * 1000:>9.0f}{q[94] * 1000:>9.0f}{max(seconds) * 1000:>9.0f}"
        f"{peak_kib / 1024:>10.0f}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=2, help="devices per mode (default 2)")
    parser.add_argument("--windows", type=int, default=32, help="windows per device (default 32)")
    parser.add_argument(
        "--warmup", type=int, default=24, help="windows per device not measured (default 24)"
    )
    parser.add_argument(
        "--redis-url", default="redis://127.0.0.1:6379/11", help="Redis database (emptied)"
    )
    parser.add_argument("--seed", type=int, default=1, help="noise seed (default 1)")
    args = parser.parse_args()
    if args.windows <= args.warmup:
        parser.error("--windows must exceed --warmup")

    os.environ.pop("PIPELINE_CONFIG", None)
    os.environ["PIPELINE_REDIS_URL"] = args.redis_url
    os.environ["PIPELINE_SELECTION_CANDIDATES"] = "ets,seasonal_naive,prophet"
    settings = load_settings()
    from pipeline.prediction.jobs import ModelSpec, prophet_forecast, run_forecast
    from pipeline.prediction.models import prophet as prophet_model
    from pipeline.prediction.serving import served_forecast

    defaults = ModelSpec(
        version=f"{prophet_model.VERSION}-defaults",
        fit=lambda series, future, settings, previous: prophet_model.fit_and_forecast(
            series,
            future,
            previous["model"] if previous else None,
            prophet_model.PROPHET_DEFAULTS,
        ),
        keeps_state=True,
    )

    def before(device_id: str, window_start: float, window_end: float) -> dict:
        return run_forecast(defaults, device_id, window_start, window_end, "prophet")

    modes = {"before": before, "prophet": prophet_forecast, "auto": served_forecast}
    client = redis.Redis.from_url(args.redis_url)
    client.flushdb()
    store = Store(client)
    days = settings.training_seconds / 86400 + args.windows * HOUR / 86400
    try:
        for mode in modes:
            for d in range(args.devices):
                fill(store, f"{mode}-{d}", days, args.seed + d)
        first_end = START + settings.training_seconds
        took: dict[str, list[float]] = {mode: [] for mode in modes}
        chosen: dict[str, int] = {}
        for w in range(args.windows):
            end = first_end + w * HOUR
            for d in range(args.devices):
                for mode, job in modes.items():
                    began = time.perf_counter()
                    summary = job(f"{mode}-{d}", end - HOUR, end)
                    seconds = time.perf_counter() - began
                    if w >= args.warmup:
                        took[mode].append(seconds)
                        for model in summary.get("weights", {}):
                            chosen[model] = chosen.get(model, 0) + 1
            print(f"window {w + 1}/{args.windows} done", file=sys.stderr)
        peak = max(
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
            resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
        )
    finally:
        client.flushdb()
        client.close()

    print(
        f"{args.devices} devices per mode, {args.windows} hourly windows each "
        f"({args.warmup} warm-up), {settings.training_seconds / 3600:g} h of minute readings, "
        f"{settings.horizon_seconds / 3600:g} h horizon"
    )
    print(
        f"{'mode':<8}{'jobs':>6}{'jobs/s':>10}{'p50 ms':>9}{'p95 ms':>9}{'max ms':>9}"
        f"{'peak MiB':>10}"
    )
    for mode, seconds in took.items():
        print(row(mode, seconds, peak))
    rate = {mode: len(seconds) / sum(seconds) for mode, seconds in took.items()}
    print(
        f"throughput auto / before: {rate['auto'] / rate['before']:.2f} (must stay >= 0.75), "
        f"auto / prophet: {rate['auto'] / rate['prophet']:.2f}, "
        f"prophet / before: {rate['prophet'] / rate['before']:.2f}"
    )
    print(f"served model in measured auto jobs: {chosen}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
