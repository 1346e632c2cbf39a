"""``pipeline replay``: re-deploy prediction jobs from a point in event time.

Sends one request per device to the ``replay-requests`` topic; the worker that
owns each device resets its pointer and re-deploys the windows from there (see
``agents.replay``). Without ``--force``, jobs that were already enqueued once
are skipped, so a replay over a range that ran fills gaps without repeating.
"""

from __future__ import annotations

import argparse
import asyncio

from pipeline.settings import load_settings, parse_time
from pipeline.storage import Store


async def _send(device_ids: list[str], from_time: float, force: bool) -> None:
    from pipeline.app import app
    from pipeline.records import ReplayRequest
    from pipeline.topics import replay_topic

    await app.maybe_start_producer()
    try:
        for device_id in device_ids:
            request = ReplayRequest(device_id=device_id, from_time=from_time, force=force)
            delivery = await replay_topic.send(key=device_id, value=request)
            await delivery
    finally:
        await app.producer.stop()


def run(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    try:
        from_time = parse_time(args.from_time)
    except ValueError as exc:
        print(f"pipeline replay: --from: {exc}")
        return 2
    device_ids = Store.from_settings(settings).devices() if args.all else args.device
    if not device_ids:
        print("pipeline replay: no devices to replay")
        return 1
    asyncio.run(_send(device_ids, from_time, args.force))
    mode = "re-running every job" if args.force else "skipping jobs already enqueued"
    print(f"replay requested for {len(device_ids)} device(s) from {from_time:.0f} ({mode})")
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "replay",
        help="reset job pointers and re-deploy jobs from a time",
        description="Reset the job pointer of one or all devices to the first reading at or "
        "after --from and re-deploy the windows from there. Jobs that were already "
        "enqueued once are skipped unless --force is given.",
    )
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--device", action="append", help="device id (repeatable)")
    target.add_argument("--all", action="store_true", help="every device stored in Redis")
    parser.add_argument(
        "--from",
        dest="from_time",
        required=True,
        help="event time to replay from: epoch seconds or ISO-8601 (UTC if no zone)",
    )
    parser.add_argument(
        "--force", action="store_true", help="re-run jobs that were already enqueued"
    )
    parser.set_defaults(handler=run)
