"""The dashboard in headless Chromium, against the running system.

Real processes (simulator with a fast, then frozen clock; a Faust worker; a
prediction worker; ``pipeline dashboard``) on their own topic prefix, app id,
queue, Redis database and ports. Once every device has its forecasts the page
is loaded in Debian's Chromium, driven by Playwright through its executable
path (no browser download). The test reads the plots' ColumnDataSources through
BokehJS in the page and compares them with Redis, and saves the screenshot the
README shows.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from pipeline.storage import Store
from tests.kafka_util import delete_topics
from tests.processes import BIN, Process, free_port, http_ok, isolated_env, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.services]

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
# The README shows dashboard/screenshot.png; a run refreshes it only when asked
# (UPDATE_SCREENSHOT=1), so that testing leaves the work tree clean.
SCREENSHOT = ROOT / "dashboard" / "screenshot.png"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
REDIS_DB = 14  # apart from the database other tests flush at will
DEVICES = 3
WINDOW = 3600
HISTORY = 2 * 3600
DURATION = 1800


@pytest.fixture(scope="module")
def chromium() -> Path:
    """Debian's Chromium, installed by scripts/install-browser.sh when missing."""
    if not CHROMIUM.exists():
        subprocess.run([str(ROOT / "scripts" / "install-browser.sh")], check=True, timeout=900)
    return CHROMIUM


@pytest.fixture
def own_redis(base_settings) -> Iterator[tuple[str, redis.Redis]]:
    """A Redis database of this test's own, emptied before and after."""
    url = base_settings.redis_url.rsplit("/", 1)[0] + f"/{REDIS_DB}"
    client = redis.Redis.from_url(url)
    client.flushdb()
    yield url, client
    client.flushdb()
    client.close()


@pytest.fixture
def system(base_settings, own_redis, topic_prefix, tmp_path):
    """The whole pipeline plus the dashboard, started and stopped around the test."""
    redis_url, _ = own_redis
    sim_port, web_port, dash_port = free_port(), free_port(), free_port()
    env = isolated_env(base_settings.broker, redis_url, topic_prefix, sim_port)
    env.update(
        PIPELINE_JOB_WINDOW_SECONDS=str(WINDOW),
        PIPELINE_TRAINING_SECONDS=str(6 * 3600),
        PIPELINE_HORIZON_SECONDS="3600",
        PIPELINE_FORECAST_STEP_SECONDS="600",
        PIPELINE_WEB_PORT=str(web_port),
        PIPELINE_FAUST_WEB_URL=f"http://127.0.0.1:{web_port}",
        PIPELINE_DASHBOARD_REFRESH_SECONDS="1",
        PIPELINE_DATA_DIR=str(tmp_path / "data"),
    )
    simulator = [
        str(BIN / "pipeline"), "simulator", "--port", str(sim_port), "--devices", str(DEVICES),
        "--interval-seconds", "60", "--history-seconds", str(HISTORY),
        "--duration-seconds", str(DURATION), "--speedup", "600", "--seed", "11",
    ]  # fmt: skip
    roles = [
        ("simulator", simulator, f"http://127.0.0.1:{sim_port}/healthz"),
        ("faust", [str(BIN / "faust"), "-A", "pipeline.app", "worker", "-l", "info"], None),
        ("rq", [str(BIN / "pipeline"), "prediction-worker"], None),
        ("dashboard", [str(BIN / "pipeline"), "dashboard", "--port", str(dash_port)], None),
    ]
    processes: list[Process] = []
    try:
        for name, argv, health in roles:
            processes.append(Process(name, argv, env, tmp_path))
            if health:
                wait_for(lambda url=health: http_ok(url), 30, name, processes)
        yield f"http://127.0.0.1:{dash_port}/dashboard", web_port, processes
    finally:
        for process in reversed(processes):
            process.stop()
        delete_topics(base_settings.broker, topic_prefix)


def forecasts_done(store: Store) -> bool:
    """Every device has the forecasts of its windows (readings are frozen by then)."""
    devices = store.devices()
    expected = (HISTORY + DURATION) // WINDOW
    return len(devices) == DEVICES and all(store.forecast_count(d) >= expected for d in devices)


# BokehJS keeps a source's data as a Map or a plain object depending on the version.
PAGE_HELPERS = """
window.sourceData = name => {
    const data = Bokeh.documents[0].get_model_by_name(name).data;
    const entries = data instanceof Map ? [...data.entries()] : Object.entries(data);
    return Object.fromEntries(entries.map(([column, values]) => [column, Array.from(values)]));
};
window.rows = name => {
    const data = window.sourceData(name);
    return Object.values(data)[0].length;
};
"""
SOURCE_JS = "name => window.sourceData(name)"


def test_dashboard_in_chromium_shows_the_selected_devices_data(
    chromium, system, own_redis, tmp_path
) -> None:
    from playwright.sync_api import sync_playwright

    url, web_port, processes = system
    store = Store(own_redis[1])
    wait_for(lambda: forecasts_done(store), 150, "forecasts of every device", processes, 1)
    wait_for(lambda: http_ok(f"http://127.0.0.1:{web_port}/devices/"), 30, "web view", processes)
    wait_for(lambda: http_ok(url), 30, "the dashboard", processes)
    devices = store.devices()
    device = devices[1]  # not the one the page opens with
    readings = store.latest_readings(device, 5000)
    latest = store.latest_forecast(device)

    problems: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(chromium), headless=True, args=CHROMIUM_ARGS
        )
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1100})
            page.on("console", lambda m: m.type == "error" and problems.append(m.text))
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.add_init_script(PAGE_HELPERS)
            page.goto(url)
            page.wait_for_function(
                """n => window.Bokeh && Bokeh.documents.length > 0
                   && rows('fleet') == n && rows('readings') > 0""",
                arg=DEVICES,
                timeout=30_000,
            )
            assert page.evaluate(SOURCE_JS, "fleet")["device_id"] == devices

            page.select_option("select", device)
            # Every device has readings at the same times, so wait for this device's
            # values, not just for as many rows: the plot may still show the last one.
            page.wait_for_function(
                """([device, n, temperatures]) => {
                    const doc = Bokeh.documents[0];
                    const source = doc.get_model_by_name('readings');
                    return doc.get_model_by_name('device').value == device
                        && rows('readings') == n && rows('forecast') > 0
                        && JSON.stringify(Array.from(source.data.temperature))
                           == JSON.stringify(temperatures);
                }""",
                arg=[device, len(readings), [r["temperature"] for r in readings]],
                timeout=20_000,
            )
            shown = page.evaluate(SOURCE_JS, "readings")
            band = page.evaluate(SOURCE_JS, "forecast")
            page.wait_for_function(
                "() => Bokeh.documents[0].get_model_by_name('status').text.includes('Live:')",
                timeout=20_000,
            )
            fleet = page.evaluate(SOURCE_JS, "fleet")
            health = page.evaluate("() => Bokeh.documents[0].get_model_by_name('health').text")
            page.wait_for_timeout(1500)  # let the throughput chart draw a few points
            shot = SCREENSHOT if os.environ.get("UPDATE_SCREENSHOT") else tmp_path / "dash.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000, "the screenshot is blank"
        finally:
            browser.close()

    assert not problems, f"browser console errors: {problems}"
    assert shown["time"] == [r["time"] * 1000 for r in readings]
    assert shown["temperature"] == [r["temperature"] for r in readings]
    assert shown["humidity"] == [r["humidity"] for r in readings]
    assert band["yhat"] == [p["yhat"] for p in latest["points"]]
    assert band["yhat_upper"] == [p["yhat_upper"] for p in latest["points"]]
    row = fleet["device_id"].index(device)
    assert fleet["forecast_until"][row] == latest["trained_until"] * 1000
    assert fleet["jobs_emitted"][row] == (HISTORY + DURATION) // WINDOW
    assert fleet["last_job"][row] == "finished"
    assert "<td>1</td></tr>" in health  # one prediction worker alive
    assert SCREENSHOT.stat().st_size > 10_000
    assert fleet["status"] == ["live"] * DEVICES
