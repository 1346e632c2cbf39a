"""Forecast quality on real hourly temperatures: every model, the served forecast, calibration.

The series are the hourly temperatures of 2010 in Seattle and San Francisco that
the ``vega_datasets`` package ships (``seattle-temps``, ``sf-temps``; offline,
converted to Celsius). A device's setting is mimicked as the issue measured it:
14 days of training, a 24 h horizon at hourly steps, a new forecast every 6 h.
Four slices of the year (ending on days 60, 150, 240 and 330) each get
``--origins`` scored origins after ``--warmup`` origins that only give the
served forecast its evidence, so winter, spring, summer and autumn all count.

Everything goes through ``pipeline.prediction.backtesting.backtest``, i.e. the
prediction workers' own model code and the ``auto`` job's own selection and
calibration. Besides the registered models, Prophet with the package's default
settings (``prophet_defaults``) is run to justify the tuned ones.

Printed per series: MASE (errors over the seasonal-naive in-sample MAE), MAE
relative to seasonal-naive on the same readings, interval coverage (nominal
80%; for the served forecast raw and calibrated), the served forecast against
the best single model, the wall time of each series and the peak memory.
Requires the bench extra: ``.venv/bin/pip install vega_datasets``.

    nice .venv/bin/python bench/backtest_real_series.py
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.prediction.backtesting import SERVED, Plan, backtest
from pipeline.prediction.jobs import ModelSpec, registered_specs
from pipeline.prediction.models import prophet as prophet_model
from pipeline.prediction.models.base import Series, clean_series
from pipeline.settings import Settings

DAY = 86400.0
HOUR = 3600.0
SLICE_ENDS = (60, 150, 240, 330)  # day of 2010 each slice's last origin lies before
PROPHET_DEFAULTS = ModelSpec(
    version=f"{prophet_model.VERSION}-defaults",
    fit=lambda series, future, settings, previous: prophet_model.fit_and_forecast(
        series, future, previous["model"] if previous else None, prophet_model.PROPHET_DEFAULTS
    ),
    keeps_state=True,
)


def load(name: str) -> Series:
    from vega_datasets import data

    frame = getattr(data, name)()
    seconds = (frame["date"] - frame["date"].iloc[0].normalize()).dt.total_seconds()
    celsius = (frame["temp"] - 32.0) * 5.0 / 9.0
    return clean_series(
        {"time": 1262304000.0 + t, "temperature": c}  # 2010-01-01T00:00Z
        for t, c in zip(seconds, celsius, strict=True)
    )


def until(series: Series, end: float) -> Series:
    keep = [k for k, t in enumerate(series.times) if t <= end]
    return Series(
        times=[series.times[k] for k in keep], values=[series.values[k] for k in keep], dropped=0
    )


def pooled(reports: list[dict[str, Any]], model: str) -> dict[str, float]:
    """Figures of ``model`` over all slices, weighted by the readings scored."""
    figures = [r["models"][model]["all"] for r in reports]
    naive = [r["models"]["seasonal_naive"]["all"] for r in reports]
    count = sum(f["readings"] for f in figures)
    out = {
        "readings": count,
        "mae": sum(f["mae"] * f["readings"] for f in figures) / count,
        "mase": sum(f["mase"] * f["readings"] for f in figures) / count,
        "rel_mae": sum(f["mae"] * f["readings"] for f in figures)
        / sum(f["mae"] * f["readings"] for f in naive),
        "coverage": sum(f["coverage"] * f["readings"] for f in figures) / count,
    }
    if model == SERVED:
        out["raw_coverage"] = sum(f["raw_coverage"] * f["readings"] for f in figures) / count
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--origins", type=int, default=24, help="scored origins per slice (24)")
    parser.add_argument("--warmup", type=int, default=8, help="warm-up origins per slice (8)")
    parser.add_argument(
        "--series", action="append", help="vega_datasets series (default seattle_temps, sf_temps)"
    )
    parser.add_argument("--policy", choices=["best", "weighted"], help="override selection_policy")
    parser.add_argument("--json", action="store_true", help="print the pooled figures as JSON")
    args = parser.parse_args()

    settings = Settings()
    if args.policy:
        settings = dataclasses.replace(settings, selection_policy=args.policy)
    specs = registered_specs(settings)
    specs["prophet_defaults"] = PROPHET_DEFAULTS
    plan = Plan(
        training_seconds=14 * DAY,
        horizon_seconds=24 * HOUR,
        step_seconds=HOUR,
        every_seconds=6 * HOUR,
        origins=args.origins,
        warmup=args.warmup,
        buckets=4,
    )
    results = {}
    for name in args.series or ["seattle_temps", "sf_temps"]:
        series = load(name)
        began = time.perf_counter()
        reports = []
        for end_day in SLICE_ENDS:
            part = until(series, series.times[0] + end_day * DAY)
            reports.append(backtest(part, specs, settings, plan))
            print(f"{name}: slice ending day {end_day} done", file=sys.stderr)
        wall = time.perf_counter() - began
        figures = {model: pooled(reports, model) for model in [SERVED, *specs]}
        best = min((m for m in specs if m != "prophet_defaults"), key=lambda m: figures[m]["mase"])
        chosen: dict[str, int] = {}
        for report in reports:
            for model, count in report["served_choice"].items():
                chosen[model] = chosen.get(model, 0) + count
        results[name] = {
            "figures": figures,
            "best_single": best,
            "served_over_best": figures[SERVED]["mae"] / figures[best]["mae"],
            "served_choice": chosen,
            "origins": sum(r["origins_scored"] for r in reports),
            "wall_seconds": wall,
        }
    peak_mib = (
        max(
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
            resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
        )
        / 1024
    )
    if args.json:
        print(json.dumps({"series": results, "peak_mib": peak_mib}, indent=2))
        return 0
    print(
        f"policy {settings.selection_policy}, "
        f"candidates {', '.join(settings.selection_candidates)}; "
        f"{plan.training_seconds / DAY:g} d training, {plan.horizon_seconds / HOUR:g} h horizon, "
        f"origins every {plan.every_seconds / HOUR:g} h, slices ending days {SLICE_ENDS}"
    )
    for name, result in results.items():
        print(
            f"\n{name}: {result['origins']} origins scored in {result['wall_seconds']:.0f} s; "
            f"served / best single ({result['best_single']}) MAE = "
            f"{result['served_over_best']:.3f}; served led by {result['served_choice']}"
        )
        print(f"{'model':<18}{'MASE':>7}{'rel_mae':>9}{'MAE °C':>8}{'coverage':>10}{'raw cov':>9}")
        for model, f in result["figures"].items():
            raw = f"{f['raw_coverage']:.1%}" if "raw_coverage" in f else "-"
            print(
                f"{model:<18}{f['mase']:>7.3f}{f['rel_mae']:>9.3f}{f['mae']:>8.3f}"
                f"{f['coverage']:>10.1%}{raw:>9}"
            )
    print(f"\npeak memory {peak_mib:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
