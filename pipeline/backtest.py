"""``pipeline backtest``: how every registered model, and the served forecast, would have done.

Reads a series per device from Redis (``--device``, ``--all``) or from a CSV
file, and runs ``pipeline.prediction.backtesting`` on it: the workers' own model
code at rolling origins, the served forecast as the ``auto`` job makes it, and
MAE, MASE, MAE relative to seasonal-naive and interval coverage per model and
horizon bucket. A progress bar goes to stderr; ``--json`` prints one JSON
document (a list with one report per series) for machines.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from datetime import UTC, datetime
from typing import Any

from pipeline.settings import Settings, load_settings


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "backtest",
        help="rolling-origin evaluation of the models and the served forecast",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--device", action="append", help="device whose stored readings to use (repeatable)"
    )
    source.add_argument("--all", action="store_true", help="every device with stored readings")
    source.add_argument("--csv", metavar="PATH", help="a CSV file with one series")
    parser.add_argument(
        "--time-column", default="time", help="CSV column of times: epoch s or ISO-8601 (time)"
    )
    parser.add_argument(
        "--value-column", default="temperature", help="CSV column of values (temperature)"
    )
    parser.add_argument(
        "--model",
        action="append",
        help="registered model to evaluate (repeatable; default: every registered model)",
    )
    parser.add_argument(
        "--origins", type=int, default=30, help="scored origins, the newest ones (default 30)"
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=6,
        help="origins before them that only give the served forecast its evidence (default 6)",
    )
    parser.add_argument(
        "--every-seconds",
        type=float,
        help="spacing of origins (default: the job_window_seconds setting)",
    )
    parser.add_argument(
        "--training-seconds", type=float, help="training span (default: training_seconds)"
    )
    parser.add_argument(
        "--horizon-seconds", type=float, help="forecast horizon (default: horizon_seconds)"
    )
    parser.add_argument(
        "--step-seconds", type=float, help="forecast step (default: forecast_step_seconds)"
    )
    parser.add_argument(
        "--buckets", type=int, default=4, help="horizon buckets in the report (default 4)"
    )
    parser.add_argument(
        "--policy",
        choices=["best", "weighted"],
        help="served forecast's selection policy (default: the selection_policy setting)",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    parser.set_defaults(handler=run)


def _plan(args: argparse.Namespace, settings: Settings) -> Any:
    from pipeline.prediction.backtesting import Plan

    return Plan(
        training_seconds=args.training_seconds or settings.training_seconds,
        horizon_seconds=args.horizon_seconds or settings.horizon_seconds,
        step_seconds=args.step_seconds or settings.forecast_step_seconds,
        every_seconds=args.every_seconds or settings.job_window_seconds,
        origins=args.origins,
        warmup=args.warmup,
        buckets=args.buckets,
    )


def _csv_series(path: str, time_column: str, value_column: str) -> Any:
    import pandas as pd

    from pipeline.prediction.models.base import clean_series

    frame = pd.read_csv(path)
    for column in (time_column, value_column):
        if column not in frame.columns:
            raise SystemExit(f"pipeline backtest: {path} has no column {column!r}")
    raw = frame[time_column]
    if pd.api.types.is_numeric_dtype(raw):
        times = raw.astype(float)
    else:
        stamps = pd.to_datetime(raw, utc=True)
        times = (stamps - pd.Timestamp(0, tz="UTC")).dt.total_seconds()
    readings = [
        {"time": t, "temperature": v}
        for t, v in zip(times, pd.to_numeric(frame[value_column], errors="coerce"), strict=True)
    ]
    return clean_series(readings)


def _device_series(settings: Settings, devices: list[str] | None) -> dict[str, Any]:
    from pipeline.connections import redis_client
    from pipeline.prediction.models.base import BadInput, clean_series
    from pipeline.storage import Store

    client = redis_client(settings, socket_timeout=10)
    try:
        store = Store(client)
        series = {}
        for device in devices if devices is not None else store.devices():
            try:
                series[device] = clean_series(store.readings_between(device))
            except BadInput as exc:
                print(f"pipeline backtest: {device}: skipped, {exc}", file=sys.stderr)
        return series
    finally:
        client.close()


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from pipeline.prediction.backtesting import backtest, origins_for
    from pipeline.prediction.jobs import registered_specs

    settings = load_settings(args.config)
    if args.policy:
        settings = dataclasses.replace(settings, selection_policy=args.policy)
    specs = registered_specs(settings, args.model)
    if not specs:
        print("pipeline backtest: no registered model runs a single model", file=sys.stderr)
        return 2
    plan = _plan(args, settings)
    if args.csv:
        sources = {args.csv: _csv_series(args.csv, args.time_column, args.value_column)}
    else:
        sources = _device_series(settings, None if args.all else args.device)
    reports = []
    for name, series in sources.items():
        try:
            total = len(origins_for(series, plan))
        except ValueError as exc:
            print(f"pipeline backtest: {name}: skipped, {exc}", file=sys.stderr)
            continue
        with tqdm(
            total=total,
            desc=name,
            unit="origin",
            file=sys.stderr,
            disable=args.no_progress or None,
        ) as bar:
            report = backtest(series, specs, settings, plan, progress=bar.update)
        reports.append({"name": name, **report})
    if args.json:
        print(json.dumps(reports, indent=2))
    else:
        for report in reports:
            print(format_report(report))
    return 0 if reports else 1


def _utc(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M")


def format_report(report: dict[str, Any]) -> str:
    """A report as a plain-text table: one line per model and horizon bucket."""
    plan = report["plan"]
    lines = [
        f"{report['name']}: {report['series']['readings']} readings, "
        f"{report['origins_scored']} origins {_utc(report['first_origin'])} .. "
        f"{_utc(report['last_origin'])} UTC every {plan['every_seconds'] / 3600:g} h, "
        f"{plan['training_seconds'] / 3600:g} h training, {plan['horizon_seconds'] / 3600:g} h "
        f"horizon; nominal coverage {report['nominal_coverage']:.0%}",
        f"{'model':<16}{'horizon':>9}{'readings':>10}{'MAE':>9}{'MASE':>8}{'rel_mae':>9}"
        f"{'coverage':>10}{'raw cov':>9}",
    ]

    def cell(figures: dict[str, Any], name: str, pattern: str, width: int) -> str:
        value = figures.get(name)
        return f"{'-' if value is None else format(value, pattern):>{width}}"

    for model, by_bucket in report["models"].items():
        for bucket in report["buckets"]:
            f = by_bucket.get(bucket, {})
            lines.append(
                f"{model:<16}{bucket:>9}{f.get('readings', 0):>10}"
                + cell(f, "mae", ".3f", 9)
                + cell(f, "mase", ".3f", 8)
                + cell(f, "rel_mae", ".3f", 9)
                + cell(f, "coverage", ".1%", 10)
                + cell(f, "raw_coverage", ".1%", 9)
            )
    if report["served_choice"]:
        shares = ", ".join(f"{m} {n}" for m, n in sorted(report["served_choice"].items()))
        lines.append(f"served forecast led by (origins): {shares}")
    if report["fit_failures"]:
        failures = ", ".join(f"{k} x{n}" for k, n in report["fit_failures"].items())
        lines.append(f"fits that could not run: {failures}")
    return "\n".join(lines) + "\n"
