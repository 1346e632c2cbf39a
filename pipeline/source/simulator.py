"""A stand-in for the part of Sensibo's API v2 the connector polls.

Runs the pipeline end to end without hardware or an account. Every value is a
pure function of (seed, device id, sample time), so overlapping polls, restarts
and a second simulator with the same seed all agree; that is what lets tests
assert "exactly these readings, each once" downstream. Time is simulated
(``now = start + wall elapsed * speedup``, optionally frozen after a duration)
so a test can cover days of event time in seconds and know in advance which
samples exist.

The daily cycle follows UTC: temperature peaks in the UTC afternoon.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import logging
import math
import signal
import string
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from importlib import resources

import yaml
from aiohttp import web

from pipeline.settings import ENV_PREFIX, load_settings

log = logging.getLogger(__name__)

API_PREFIX = "/api/v2"
MAX_DAYS = 7  # the real API's limit on historicalMeasurements
ID_ALPHABET = string.ascii_lowercase + string.digits
ROOM_ICONS = ("lounge", "bedroom", "kitchen", "office", "kids", "diningroom")
PUBLIC_PATHS = frozenset({"/healthz", f"{API_PREFIX}/openapi.yaml", f"{API_PREFIX}/openapi.json"})
DAY = 86400.0


@dataclass(frozen=True)
class SimulatorConfig:
    """What a simulator serves; see ``register`` for the meaning of each field."""

    api_key: str
    devices: int = 5
    interval_seconds: int = 60
    speedup: float = 1.0
    history_seconds: float = DAY
    duration_seconds: float | None = None
    start: float | None = None  # epoch seconds; None: now, aligned down to the interval
    seed: int = 0

    def __post_init__(self) -> None:
        problems = []
        if not self.api_key:
            problems.append("an API key is required")
        if self.devices < 1:
            problems.append(f"devices must be at least 1, got {self.devices}")
        if not isinstance(self.interval_seconds, int) or self.interval_seconds < 1:
            problems.append(
                f"interval_seconds must be a whole number from 1, got {self.interval_seconds}"
            )
        if not (math.isfinite(self.speedup) and self.speedup > 0):
            problems.append(f"speedup must be a positive number, got {self.speedup}")
        if not (math.isfinite(self.history_seconds) and self.history_seconds >= 0):
            problems.append(f"history_seconds must be 0 or more, got {self.history_seconds}")
        if self.duration_seconds is not None and not self.duration_seconds >= 0:
            problems.append(f"duration_seconds must be 0 or more, got {self.duration_seconds}")
        if problems:
            raise ValueError("; ".join(problems))


# --- deterministic signals ---------------------------------------------------------------


def _uniforms(*parts: object) -> tuple[float, float]:
    """Two independent uniforms in [0, 1) that depend only on ``parts``."""
    digest = hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=16).digest()
    return int.from_bytes(digest[:8]) / 2**64, int.from_bytes(digest[8:]) / 2**64


def _uniform(*parts: object) -> float:
    return _uniforms(*parts)[0]


def _gauss(*parts: object) -> float:
    """A standard normal variate that depends only on ``parts`` (Box-Muller)."""
    u1, u2 = _uniforms(*parts)
    return math.sqrt(-2.0 * math.log1p(-u1)) * math.cos(2.0 * math.pi * u2)


def device_ids(seed: int, count: int) -> list[str]:
    """The ids of a simulator's devices: 8 lowercase alphanumerics, fixed by the seed."""
    ids: list[str] = []
    n = 0
    while len(ids) < count:
        digest = hashlib.blake2b(f"{seed}:device:{n}".encode(), digest_size=8).digest()
        candidate = "".join(ID_ALPHABET[b % len(ID_ALPHABET)] for b in digest)
        if candidate not in ids:
            ids.append(candidate)
        n += 1
    return ids


@dataclass(frozen=True)
class _Wave:
    amplitude: float
    period: float
    phase: float

    def at(self, t: float) -> float:
        return self.amplitude * math.sin(2.0 * math.pi * t / self.period + self.phase)


@dataclass(frozen=True)
class _Device:
    """One simulated room: its constants, drawn once from (seed, id)."""

    id: str
    room: str
    icon: str
    seed: int
    base_temperature: float
    daily_amplitude: float
    peak_hour: float
    temperature_drift: tuple[_Wave, ...]
    base_humidity: float
    humidity_per_degree: float
    humidity_drift: tuple[_Wave, ...]

    @classmethod
    def create(cls, seed: int, device_id: str, number: int) -> _Device:
        def draw(name: str, low: float, high: float) -> float:
            return low + (high - low) * _uniform(seed, device_id, name)

        def waves(name: str, spec: tuple[tuple[float, float], ...]) -> tuple[_Wave, ...]:
            return tuple(
                _Wave(
                    amplitude=amplitude,
                    period=period_days * DAY * draw(f"{name}{i}.period", 0.8, 1.25),
                    phase=draw(f"{name}{i}.phase", 0.0, 2.0 * math.pi),
                )
                for i, (amplitude, period_days) in enumerate(spec)
            )

        return cls(
            id=device_id,
            room=f"Room {number}",
            icon=ROOM_ICONS[(number - 1) % len(ROOM_ICONS)],
            seed=seed,
            base_temperature=draw("base_temperature", 20.0, 22.0),
            daily_amplitude=draw("daily_amplitude", 1.5, 3.0),
            peak_hour=draw("peak_hour", 14.0, 17.0),
            temperature_drift=waves("temperature_drift", ((0.5, 2.3), (0.4, 5.9), (0.3, 13.7))),
            base_humidity=draw("base_humidity", 42.0, 52.0),
            humidity_per_degree=draw("humidity_per_degree", 2.0, 3.0),
            humidity_drift=waves("humidity_drift", ((1.5, 3.1), (1.0, 8.3))),
        )

    def sample(self, t: int) -> tuple[float, float]:
        """(temperature in C, humidity in %) at epoch second ``t``, rounded like Sensibo."""
        hour = (t % DAY) / 3600.0
        cycle = self.daily_amplitude * math.cos(2.0 * math.pi * (hour - self.peak_hour) / 24.0)
        warmth = cycle + sum(w.at(t) for w in self.temperature_drift)
        temperature = self.base_temperature + warmth + 0.1 * _gauss(self.seed, self.id, "t", t)
        humidity = (
            self.base_humidity
            - self.humidity_per_degree * warmth
            + sum(w.at(t) for w in self.humidity_drift)
            + 0.4 * _gauss(self.seed, self.id, "h", t)
        )
        return round(temperature, 1), round(humidity, 1)


# --- simulated clock ---------------------------------------------------------------------


@dataclass
class _Clock:
    """Event time of the simulation, and the sampling grid that lies behind it."""

    start: float
    speedup: float
    interval: int
    history_start: float
    end: float | None
    _origin: float = field(default_factory=time.monotonic)

    def now(self) -> float:
        moment = self.start + (time.monotonic() - self._origin) * self.speedup
        return moment if self.end is None else min(moment, self.end)

    def samples(self, after: float, until: float) -> range:
        """Grid times t (epoch seconds) with ``after < t <= until``, none before the history."""
        first = max(
            math.floor(after / self.interval) + 1, math.ceil(self.history_start / self.interval)
        )
        last = math.floor(until / self.interval)
        return range(first * self.interval, (last + 1) * self.interval, self.interval)


def _clock(config: SimulatorConfig) -> _Clock:
    interval = config.interval_seconds
    start = config.start if config.start is not None else time.time() // interval * interval
    end = None if config.duration_seconds is None else start + config.duration_seconds
    return _Clock(start, config.speedup, interval, start - config.history_seconds, end)


def _iso(t: float) -> str:
    """Sensibo's time format: ISO-8601 UTC with a Z, whole seconds."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


# --- HTTP --------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Simulation:
    config: SimulatorConfig
    clock: _Clock
    devices: dict[str, _Device]
    openapi_yaml: str


SIMULATION = web.AppKey("simulation", _Simulation)


class _ApiError(Exception):
    """An answer in Sensibo's error envelope."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def _json(payload: object, status: int = 200) -> web.Response:
    response = web.json_response(payload, status=status)
    response.enable_compression()  # gzip when asked, as the real API does
    return response


def _success(result: object) -> web.Response:
    return _json({"status": "success", "result": result})


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def _log_requests(request: web.Request, handler: Handler) -> web.StreamResponse:
    """One debug line per request; the path only, because the query holds the apiKey."""
    began = time.monotonic()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    finally:
        log.debug(
            "request method=%s path=%s status=%d ms=%.1f",
            request.method,
            request.path,
            status,
            (time.monotonic() - began) * 1000.0,
        )


@web.middleware
async def _error_envelope(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure, ours or the router's, answers in the API's error envelope."""
    try:
        return await handler(request)
    except _ApiError as exc:
        return _json({"status": "error", "reason": exc.reason}, exc.status)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _json({"status": "error", "reason": exc.reason}, exc.status)


@web.middleware
async def _require_key(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path not in PUBLIC_PATHS:
        given = request.query.get("apiKey", "")
        if not given:
            raise _ApiError(401, "missing apiKey query parameter")
        expected = request.app[SIMULATION].config.api_key
        if not hmac.compare_digest(given.encode(), expected.encode()):
            raise _ApiError(401, "invalid apiKey")
    return await handler(request)


def _latest(device: _Device, now: float, clock: _Clock) -> dict[str, object] | None:
    newest = clock.samples(now - clock.interval, now)
    if not newest:
        return None
    t = newest[-1]
    temperature, humidity = device.sample(t)
    return {
        "time": {"time": _iso(t), "secondsAgo": int(now - t)},
        "temperature": temperature,
        "humidity": humidity,
    }


async def _pods(request: web.Request) -> web.Response:
    sim = request.app[SIMULATION]
    wanted = {name.strip() for name in request.query.get("fields", "id").split(",")}
    now = sim.clock.now()
    pods = []
    for device in sim.devices.values():
        pod = {
            "id": device.id,
            "room": {"name": device.room, "icon": device.icon},
            "productModel": "skyv2",
            "measurements": _latest(device, now, sim.clock),
        }
        pods.append({k: v for k, v in pod.items() if "*" in wanted or k in wanted})
    return _success(pods)


def _days(request: web.Request) -> int:
    raw = request.query.get("days", "1")
    try:
        days = int(raw)
    except ValueError:
        days = 0
    if not 1 <= days <= MAX_DAYS:
        raise _ApiError(400, f"days must be a whole number from 1 to {MAX_DAYS}, got {raw!r}")
    return days


async def _historical(request: web.Request) -> web.Response:
    sim = request.app[SIMULATION]
    device_id = request.match_info["device_id"]
    device = sim.devices.get(device_id)
    if device is None:
        raise _ApiError(404, f"no pod with id {device_id!r}")
    now = sim.clock.now()
    temperature, humidity = [], []
    for t in sim.clock.samples(now - _days(request) * DAY, now):
        temp_value, humidity_value = device.sample(t)
        stamp = _iso(t)
        temperature.append({"time": stamp, "value": temp_value})
        humidity.append({"time": stamp, "value": humidity_value})
    return _success({"temperature": temperature, "humidity": humidity})


async def _health(request: web.Request) -> web.Response:
    sim = request.app[SIMULATION]
    clock = sim.clock
    now = clock.now()
    return _json(
        {
            "status": "ok",
            "now": now,
            "now_iso": _iso(now),
            "start": clock.start,
            "history_start": clock.history_start,
            "end": clock.end,
            "speedup": clock.speedup,
            "interval_seconds": clock.interval,
            "devices": len(sim.devices),
        }
    )


async def _openapi_yaml(request: web.Request) -> web.Response:
    return web.Response(text=request.app[SIMULATION].openapi_yaml, content_type="application/yaml")


async def _openapi_json(request: web.Request) -> web.Response:
    return _json(yaml.safe_load(request.app[SIMULATION].openapi_yaml))


def build_app(config: SimulatorConfig) -> web.Application:
    """The simulator as an aiohttp application; its clock starts now."""
    app = web.Application(middlewares=[_log_requests, _error_envelope, _require_key])
    ids = device_ids(config.seed, config.devices)
    app[SIMULATION] = _Simulation(
        config=config,
        clock=_clock(config),
        devices={d: _Device.create(config.seed, d, n) for n, d in enumerate(ids, start=1)},
        openapi_yaml=resources.files(__package__).joinpath("openapi.yaml").read_text(),
    )
    app.router.add_get("/healthz", _health)
    app.router.add_get(f"{API_PREFIX}/openapi.yaml", _openapi_yaml)
    app.router.add_get(f"{API_PREFIX}/openapi.json", _openapi_json)
    app.router.add_get(f"{API_PREFIX}/users/me/pods", _pods)
    app.router.add_get(f"{API_PREFIX}/pods/{{device_id}}/historicalMeasurements", _historical)
    return app


# --- command line ------------------------------------------------------------------------

API_KEY_ENV = f"{ENV_PREFIX}SOURCE_API_KEY"


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``simulator`` subcommand to the ``pipeline`` command."""
    parser = subparsers.add_parser(
        "simulator",
        help="serve a simulated Sensibo API v2 with deterministic readings",
        description=(
            "Serve the part of Sensibo's API v2 the connector polls, for a fleet of simulated "
            "rooms. Values depend only on the seed, the device and the time, so every poll "
            "and every restart agrees."
        ),
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: %(default)s)"
    )
    parser.add_argument(
        "--port",
        type=int,
        default=8080,
        help="port to listen on, 0 for any free one (default: %(default)s)",
    )
    parser.add_argument(
        "--devices", type=int, default=5, help="number of devices (default: %(default)s)"
    )
    parser.add_argument(
        "--interval-seconds",
        type=int,
        default=60,
        help="seconds between samples; samples lie on multiples of it (default: %(default)s)",
    )
    parser.add_argument(
        "--speedup",
        type=float,
        default=1.0,
        help="simulated seconds per wall-clock second (default: %(default)s)",
    )
    parser.add_argument(
        "--history-seconds",
        type=float,
        default=DAY,
        help="seconds of samples that exist before the start, for backfill (default: %(default)s)",
    )
    parser.add_argument(
        "--duration-seconds",
        type=float,
        help="stop the simulated clock this long after the start (default: runs on)",
    )
    parser.add_argument(
        "--start",
        type=float,
        help="simulated start time in epoch seconds (default: now, aligned down to the interval)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of device ids and values (default: %(default)s)"
    )
    parser.add_argument(
        "--api-key",
        help=f"the only API key accepted (default: ${API_KEY_ENV} or source_api_key in the "
        "settings file; prefer those, as command lines are visible to other users)",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Serve until SIGINT or SIGTERM; returns the process exit status."""
    api_key = args.api_key or load_settings(args.config).source_api_key
    if not api_key:
        print(
            f"simulator: no API key; set {API_KEY_ENV} or pass --api-key",
            file=sys.stderr,
        )
        return 2
    try:
        config = SimulatorConfig(
            api_key=api_key,
            devices=args.devices,
            interval_seconds=args.interval_seconds,
            speedup=args.speedup,
            history_seconds=args.history_seconds,
            duration_seconds=args.duration_seconds,
            start=args.start,
            seed=args.seed,
        )
    except ValueError as exc:
        print(f"simulator: {exc}", file=sys.stderr)
        return 2
    asyncio.run(_serve(config, args.host, args.port))
    return 0


async def _serve(config: SimulatorConfig, host: str, port: int) -> None:
    # Handlers first: whoever reads the "listening" line may signal at once.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    app = build_app(config)
    # No access log: aiohttp's logs the request line, and the query holds the apiKey.
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        bound_port = runner.addresses[0][1]
        clock = app[SIMULATION].clock
        print(
            f"simulator listening on http://{host}:{bound_port}{API_PREFIX} "
            f"({config.devices} devices, every {clock.interval} s, speedup {clock.speedup}, "
            f"clock starts at {_iso(clock.start)})",
            flush=True,
        )
        await stop.wait()
    finally:
        await runner.cleanup()
