"""The ``pipeline dashboard`` command: serve the dashboard app with Bokeh's server.

Runs the same directory app as ``bokeh serve dashboard/`` (so ``main.py``,
``theme.yaml`` and ``templates/`` apply alike), but with the pipeline's settings
for the port and with safe defaults: bound to loopback, and websocket origins
limited to the local host names unless told otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
from pathlib import Path

from bokeh.application import Application
from bokeh.application.handlers import DirectoryHandler
from bokeh.server.server import Server
from tornado.web import RequestHandler

from pipeline.settings import CONFIG_ENV, load_settings

log = logging.getLogger(__name__)

APP_DIR = Path(__file__).resolve().parent
APP_PATH = "/dashboard"  # the path `bokeh serve dashboard/` uses too
HEALTH_PATH = "/healthz"


class HealthHandler(RequestHandler):
    """``GET /healthz``: the server's loop answers HTTP (liveness and readiness probes).

    Opening ``/dashboard`` itself would build a whole Bokeh session per probe.
    """

    def get(self) -> None:
        self.write({"status": "ok"})


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``dashboard`` subcommand to the ``pipeline`` CLI."""
    parser = subparsers.add_parser(
        "dashboard",
        help="serve the live dashboard: fleet, device readings and forecasts, pipeline health",
        description=(
            "Serve the Bokeh dashboard: the fleet, one device in depth and the pipeline's "
            "health, read from Redis (redis_url), the Faust web view (faust_web_url), Kafka "
            "(broker) and the RQ queue (queue_name), refreshed every dashboard_refresh_seconds."
        ),
    )
    parser.add_argument(
        "--port",
        type=int,
        default=None,
        help="port to listen on (default: the dashboard_port setting, 5006 unless changed)",
    )
    parser.add_argument(
        "--address",
        default="127.0.0.1",
        help="address to bind (default: 127.0.0.1; 0.0.0.0 serves other machines too)",
    )
    parser.add_argument(
        "--allow-websocket-origin",
        action="append",
        default=None,
        metavar="HOST[:PORT]",
        help=(
            "host the page may be opened from, as the browser sees it; repeatable "
            "(default: the dashboard_origins setting, else localhost:PORT and 127.0.0.1:PORT)"
        ),
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Serve the dashboard until interrupted."""
    settings = load_settings(args.config)
    if args.config:
        # Each session's main.py loads settings itself; hand it the same file.
        os.environ[CONFIG_ENV] = str(args.config)
    port = args.port or settings.dashboard_port
    origins = (
        args.allow_websocket_origin
        or settings.dashboard_origins
        or [f"localhost:{port}", f"127.0.0.1:{port}"]
    )
    try:
        server = Server(
            {APP_PATH: Application(DirectoryHandler(filename=str(APP_DIR)))},
            port=port,
            address=args.address,
            allow_websocket_origin=origins,
            extra_patterns=[(HEALTH_PATH, HealthHandler)],
        )
    except OSError as exc:
        print(f"dashboard: cannot listen on {args.address}:{port}: {exc}", file=sys.stderr)
        return 1
    server.start()
    # SIGTERM (docker stop, Kubernetes) stops the loop like Ctrl-C: sessions close, exit 0.
    server.io_loop.asyncio_loop.add_signal_handler(signal.SIGTERM, server.io_loop.stop)
    shown_host = "localhost" if args.address in ("0.0.0.0", "::") else args.address
    print(f"Dashboard at http://{shown_host}:{port}{APP_PATH}", flush=True)
    try:
        with contextlib.suppress(KeyboardInterrupt):
            server.io_loop.start()
    finally:
        log.info("dashboard stopping")
        server.stop()
    return 0
