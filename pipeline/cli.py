"""The ``pipeline`` command: everything a user runs by hand.

Each subcommand is registered by the module that owns it, so this file only
assembles them. ``faust -A pipeline.app worker -l info`` remains the way to
start a stream worker, as Faust users expect.
"""

from __future__ import annotations

import argparse
import sys

from pipeline import backtest, logs, replay_command, settings_command, stack
from pipeline.services import ServiceError
from pipeline.settings import Settings, SettingsError, load_settings


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pipeline",
        description="Stream sensor readings through Kafka and keep forecasts fresh.",
    )
    parser.add_argument(
        "--config", help="YAML settings file (default: $PIPELINE_CONFIG, else built-in defaults)"
    )
    parser.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="log verbosity (default: info)",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    stack.register(commands)

    from dashboard import serve
    from pipeline import health
    from pipeline.prediction import worker
    from pipeline.services import cli as services_cli
    from pipeline.source import simulator

    services_cli.register(commands)
    simulator.register(commands)
    worker.register(commands)
    serve.register(commands)
    health.register(commands)
    replay_command.register(commands)
    settings_command.register(commands)
    backtest.register(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        logs.configure(load_settings(args.config), args.log_level)
    except SettingsError:
        logs.configure(Settings(), args.log_level)  # the handler reports the bad setting
    try:
        return int(args.handler(args) or 0)
    except SettingsError as exc:
        print(f"pipeline: {exc}", file=sys.stderr)
        return 2
    except ServiceError as exc:
        print(f"pipeline: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
