"""Forecast benchmark: what one prediction worker does per job, cold versus warm.

For a fleet of synthetic devices (a daily cycle, a slow trend and sensor noise,
one reading every 10 minutes), each with a 2,000-point training window, this
script fits once to have a previous model, then for each following window (the
window slides by one job window, an hour by default) runs in the same process:

* ``cold``: Prophet fitted from its default starting point (the baseline);
* ``warm``: Prophet warm-started from the device's previous model, loaded from
  its JSON exactly as the job does (Prophet's documented method);
* ``seasonal-naive``: the baseline model, for scale.

Each step is the model part of a job: fit, forecast with intervals, and the
fitted model serialized to JSON (plus parsing the previous one, for ``warm``).
The modes alternate window by window, so they share the machine's conditions.
Reported per mode: forecasts per second of one worker (one process, one core),
latency percentiles, mean optimizer time, the forecast's MAE against the
noise-free truth and against the readings that followed, the interval coverage,
and the process's peak resident memory. RQ and Redis overheads are not included
(a few milliseconds per job).
"""

from __future__ import annotations

import argparse
import math
import random
import resource
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.prediction.models import prophet as prophet_model
from pipeline.prediction.models import seasonal_naive
from pipeline.prediction.models.base import (
    ForecastResult,
    clean_series,
    future_times,
)

STEP = 600.0
DAY = 86400.0
T0 = 1_700_006_400.0


def truth(device: int, t: float) -> float:
    phase = device * 1.3
    cycle = 3.0 * math.sin(2 * math.pi * (t - 9 * 3600.0) / DAY + phase)
    return 20.0 + device % 5 + cycle + 0.2 * (t - T0) / DAY


def readings(device: int, count: int, seed: int) -> list[dict[str, float]]:
    noise = random.Random(seed * 1000 + device)
    return [
        {"time": T0 + i * STEP, "temperature": truth(device, T0 + i * STEP) + noise.gauss(0, 0.3)}
        for i in range(count)
    ]


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


class Tally:
    """Latencies and errors of one mode."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.seconds: list[float] = []
        self.fit_seconds: list[float] = []
        self.errors_truth: list[float] = []
        self.errors_readings: list[float] = []
        self.inside: list[bool] = []
        self.warm = 0

    def add(self, seconds: float, result: ForecastResult, device: int, later: dict) -> None:
        self.seconds.append(seconds)
        self.fit_seconds.append(result.fit_seconds)
        self.warm += result.warm_started
        for point in result.points:
            self.errors_truth.append(abs(point["yhat"] - truth(device, point["ds"])))
            actual = later[point["ds"]]
            self.errors_readings.append(abs(point["yhat"] - actual))
            self.inside.append(point["yhat_lower"] <= actual <= point["yhat_upper"])

    def row(self) -> str:
        total = sum(self.seconds)
        return (
            f"{self.name:15} {len(self.seconds):6d} {len(self.seconds) / total:10.2f} "
            f"{1000 * statistics.median(self.seconds):8.0f} "
            f"{1000 * percentile(self.seconds, 0.95):8.0f} "
            f"{1000 * percentile(self.seconds, 0.99):8.0f} "
            f"{1000 * statistics.mean(self.fit_seconds):8.0f} "
            f"{statistics.mean(self.errors_truth):9.3f} "
            f"{statistics.mean(self.errors_readings):9.3f} "
            f"{statistics.mean(self.inside):8.3f} {self.warm:5d}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Example: python bench/forecast_benchmark.py --devices 4 --refits 10",
    )
    parser.add_argument("--devices", type=int, default=4, help="devices (default 4)")
    parser.add_argument(
        "--points", type=int, default=2000, help="readings per training window (default 2000)"
    )
    parser.add_argument(
        "--refits", type=int, default=8, help="windows after the first, per device (default 8)"
    )
    parser.add_argument(
        "--slide-points",
        type=int,
        default=6,
        help="readings between consecutive windows (default 6: one hour)",
    )
    parser.add_argument(
        "--horizon-seconds", type=float, default=6 * 3600.0, help="forecast horizon (6 h)"
    )
    parser.add_argument("--seed", type=int, default=1, help="noise seed (default 1)")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", category=DeprecationWarning)

    horizon_points = int(args.horizon_seconds / STEP)
    total = args.points + args.slide_points * args.refits + horizon_points
    tallies = {name: Tally(name) for name in ("cold", "warm", "seasonal-naive")}
    print(
        f"{args.devices} devices, {args.points}-point windows, {args.refits} refits each, "
        f"horizon {args.horizon_seconds / 3600:.0f} h, Prophet {prophet_model.prophet.__version__}"
    )
    for device in range(args.devices):
        data = readings(device, total, args.seed)
        later = {r["time"]: r["temperature"] for r in data}
        previous = prophet_model.fit_and_forecast(
            clean_series(data[: args.points]),
            future_times(data[args.points - 1]["time"], args.horizon_seconds, STEP),
        ).state["model"]
        for refit in range(1, args.refits + 1):
            start = refit * args.slide_points
            series = clean_series(data[start : start + args.points])
            future = future_times(series.times[-1], args.horizon_seconds, STEP)
            runs: dict[str, Callable[[], ForecastResult]] = {
                "cold": lambda s=series, f=future: prophet_model.fit_and_forecast(s, f),
                "warm": lambda s=series, f=future, p=previous: prophet_model.fit_and_forecast(
                    s, f, p
                ),
                "seasonal-naive": lambda s=series, f=future: seasonal_naive.fit_and_forecast(
                    s, f, DAY
                ),
            }
            order = list(runs) if refit % 2 else list(reversed(runs))
            for name in order:
                started = time.perf_counter()
                result = runs[name]()
                tallies[name].add(time.perf_counter() - started, result, device, later)
                if name == "warm":
                    previous = result.state["model"]

    print(
        f"\n{'mode':15} {'jobs':>6} {'jobs/s':>10} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} "
        f"{'fit ms':>8} {'MAE true':>9} {'MAE read':>9} {'covered':>8} {'warm':>5}"
    )
    for tally in tallies.values():
        print(tally.row())
    cold, warm = tallies["cold"], tallies["warm"]
    speedup = statistics.mean(cold.seconds) / statistics.mean(warm.seconds)
    fit_speedup = statistics.mean(cold.fit_seconds) / statistics.mean(warm.fit_seconds)
    mae_change = statistics.mean(warm.errors_truth) / statistics.mean(cold.errors_truth) - 1
    print(
        f"\nwarm vs cold: {speedup:.2f}x jobs per second, {fit_speedup:.2f}x optimizer time, "
        f"MAE against truth {100 * mae_change:+.1f}%"
    )
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak resident memory: {peak_mb:.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
