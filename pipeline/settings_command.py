"""``pipeline settings``: show the effective settings (secrets masked) or all options."""

from __future__ import annotations

import argparse

from pipeline.settings import describe, load_settings


def run(args: argparse.Namespace) -> int:
    if args.list:
        for key, env, default, help_text in describe():
            print(f"{key:28} {env:38} {default:40} {help_text}")
        return 0
    for key, value in load_settings(args.config).as_dict(masked=True).items():
        print(f"{key}: {value}")
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "settings",
        help="print the effective settings (secrets masked)",
        description="Print the settings every role would use, after the YAML file and "
        "PIPELINE_* variables are applied; exits non-zero naming any bad setting.",
    )
    parser.add_argument(
        "--list", action="store_true", help="list every setting, its variable and default"
    )
    parser.set_defaults(handler=run)
