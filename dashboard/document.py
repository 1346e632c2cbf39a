"""One browser session's document: fleet, device and health panels, kept live.

The Bokeh server runs every session on one event loop, so nothing here waits on
Redis, Kafka or HTTP there. Reads run on a thread pool (``dashboard.data``); the
result comes back with ``Document.add_next_tick_callback`` (the one document
method that is safe to call from another thread) and is applied under the
document lock. The periodic callback only submits a read, and skips a refresh
while the previous read is still out, so a slow or unreachable source delays
the page but never piles up work or blocks other sessions.

When a source is down the banner at the top says which and that it retries;
nothing raises into the page, and the next refresh is the retry.
"""

from __future__ import annotations

import html
import logging
from collections.abc import Callable
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from datetime import datetime
from functools import partial
from typing import Any

from bokeh.document import Document
from bokeh.layouts import column, row
from bokeh.models import Div

from dashboard.data import (
    FleetSnapshot,
    Outages,
    Poller,
    fetch_device,
    redis_address,
    shared_poller,
)
from dashboard.device import DevicePanel
from dashboard.fleet import FleetPanel
from dashboard.health import HealthPanel
from dashboard.style import FIGURES_CSS
from pipeline.settings import Settings, SettingsError, load_settings
from pipeline.storage import Store

log = logging.getLogger(__name__)

# Shared by every session of the process; reads are short and mostly wait on I/O.
EXECUTOR = ThreadPoolExecutor(max_workers=4, thread_name_prefix="dashboard-read")
TITLE = "Sensor forecasts"


def banner_html(outages: Outages, refresh_seconds: float, device_error: str | None) -> str:
    """The status line: every unreachable source and that it is retried, or all is well."""
    problems = [p for p in (outages.redis or device_error, outages.faust_web, outages.kafka) if p]
    if problems:
        retry = f" — retrying every {refresh_seconds:g} s"
        return "<br>".join(f"<span class='outage'>{html.escape(p)}{retry}</span>" for p in problems)
    return (
        f"<span class='ok'>Live: Redis, Faust web view and Kafka reachable; "
        f"updated {datetime.now().strftime('%H:%M:%S')}, every {refresh_seconds:g} s</span>"
    )


class Session:
    """A session's panels and the hand-off of reads between the thread pool and the loop."""

    def __init__(
        self,
        doc: Document,
        settings: Settings,
        poller: Poller,
        store: Store,
        executor: Executor,
    ) -> None:
        self.doc = doc
        self.settings = settings
        self.poller = poller
        self.store = store
        self.executor = executor
        self.closed = False
        self.reading = False  # a refresh's read is out
        self.device_error: str | None = None
        self.banner = Div(
            text=f"Connecting to Redis at {html.escape(redis_address(store))}…",
            name="status",
            stylesheets=[FIGURES_CSS],
        )
        self.device = DevicePanel()
        self.fleet = FleetPanel(on_pick=self._pick)
        self.health = HealthPanel(settings.dashboard_refresh_seconds)
        self.device.select.on_change("value", self._on_select)
        self.layout = column(
            Div(text=f"<h2>{TITLE}</h2>", name="title"),
            Div(
                text=(
                    "Every device of the fleet with its newest reading, lag, jobs and forecast "
                    "quality; the health of the pipeline; and below, one device in depth: its "
                    "readings, the latest Prophet forecast with its 80% interval, earlier "
                    "forecasts against what happened, and anomalies. Click a row to open a device."
                ),
                name="description",
            ),
            self.banner,
            row(self.fleet.layout, self.health.layout, sizing_mode="stretch_width"),
            self.device.layout,
            sizing_mode="stretch_width",
        )

    def refresh(self) -> None:
        """Periodic callback: read the fleet and the shown device off the loop."""
        if self.reading or self.closed:
            return
        self.reading = True
        cursor = self.device.cursor

        def read() -> tuple[FleetSnapshot, Any]:
            snapshot = self.poller.snapshot()
            return snapshot, fetch_device(self.store, cursor) if cursor else None

        self._off_loop(read, self._apply_refresh, on_error=self._refresh_failed)

    def close(self) -> None:
        self.closed = True

    def _apply_refresh(self, result: tuple[FleetSnapshot, Any]) -> None:
        self.reading = False
        snapshot, update = result
        if update is not None:
            self.device_error = update.error
            self.device.apply(update)
        if snapshot.rows is not None:
            self.fleet.apply(snapshot.rows)
            devices = [r.device_id for r in snapshot.rows]
            if devices != list(self.device.select.options):
                self.device.select.options = devices
            if devices and self.device.select.value not in devices:
                self.device.select.value = devices[0]  # loads it, through _on_select
        self.health.apply(snapshot)
        if snapshot.rows is not None and not snapshot.rows:
            text = (
                "<span class='ok'>No devices in Redis yet — waiting for the first readings.</span>"
            )
        else:
            text = banner_html(
                snapshot.outages, self.settings.dashboard_refresh_seconds, self.device_error
            )
        if text != self.banner.text:
            self.banner.text = text

    def _refresh_failed(self) -> None:
        self.reading = False

    def _on_select(self, _attr: str, _old: str, new: str) -> None:
        """A device was picked (by the user, the table, or the first refresh): load it."""
        if not new or (self.device.cursor and self.device.cursor.device_id == new):
            return
        cursor = self.device.switch(new)
        self._off_loop(partial(fetch_device, self.store, cursor), self.device.apply)

    def _pick(self, device_id: str) -> None:
        self.device.select.value = device_id

    def _off_loop(
        self,
        read: Callable[[], Any],
        apply: Callable[[Any], None],
        on_error: Callable[[], None] | None = None,
    ) -> None:
        future = self.executor.submit(read)
        future.add_done_callback(partial(self._hand_back, apply=apply, on_error=on_error))

    def _hand_back(
        self, future: Future, apply: Callable[[Any], None], on_error: Callable[[], None] | None
    ) -> None:
        """On the reading thread: queue the apply step onto the session's loop."""
        if self.closed:
            return
        self.doc.add_next_tick_callback(partial(self._apply, future, apply, on_error))

    def _apply(
        self, future: Future, apply: Callable[[Any], None], on_error: Callable[[], None] | None
    ) -> None:
        """On the loop, under the document lock: apply a read's result."""
        try:
            result = future.result()
        except Exception:
            log.exception("dashboard: a read failed")
            if on_error is not None:
                on_error()
            self.banner.text = (
                "<span class='outage'>The dashboard could not read its data; see the "
                "dashboard's log. Retrying.</span>"
            )
            return
        apply(result)


def build_document(
    doc: Document,
    settings: Settings | None = None,
    poller: Poller | None = None,
    executor: Executor | None = None,
) -> Session | None:
    """Populate a session's document and schedule its periodic refresh.

    Without ``settings`` they are loaded like every role loads them (YAML file
    named by ``PIPELINE_CONFIG`` plus ``PIPELINE_*`` variables); invalid settings
    are shown on the page instead. Without a ``poller`` the process's shared one
    for these settings is used. Returns the session (None for invalid settings).
    """
    doc.title = TITLE
    if settings is None:
        try:
            settings = load_settings()
        except SettingsError as exc:
            doc.add_root(Div(text=f"<pre>{html.escape(str(exc))}</pre>", name="status"))
            return None
    poller = poller or shared_poller(settings)
    session = Session(doc, settings, poller, poller.store, executor or EXECUTOR)
    doc.add_root(session.layout)
    doc.on_session_destroyed(lambda _context: session.close())
    session.refresh()
    doc.add_periodic_callback(session.refresh, int(settings.dashboard_refresh_seconds * 1000))
    return session
