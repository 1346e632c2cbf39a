"""A stand-in for the part of Sensibo's API v2 the connector polls.

Runs the pipeline end to end without hardware or an account. Every value is a
pure function of (seed, device id, sample time), so overlapping polls, restarts
and a second simulator with the same seed all agree; that is what lets tests
assert "exactly these readings, each once" downstream. Time is simulated
(``now = start + wall elapsed * speedup``, optionally frozen after a duration)
so a test can cover days of event time in seconds and know in advance which
samples exist.

The daily cycle follows UTC: temperature peaks in the UTC afternoon.

Answers carry the simulated clock in their HTTP ``Date`` header, as the real
API carries its own, so clients can tell a reading from the future even when
the clock runs fast. Fault modes (``--faults``, see ``pipeline.source.faults``)
make the API misbehave in every way the connector must survive, and an
optional request-rate limit (``--rate-limit``) answers 429 like the real API.
With ``--tls-cert`` and ``--tls-key`` it serves HTTPS only, as the real API
does, so the client's certificate verification is exercised too.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import email.utils
import hashlib
import hmac
import logging
import math
import signal
import ssl
import string
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from importlib import resources

import yaml
from aiohttp import web

from pipeline.settings import ENV_PREFIX, load_settings
from pipeline.source.faults import (
    ALL_FAULTS,
    IMPOSSIBLE_HUMIDITY,
    IMPOSSIBLE_TEMPERATURE,
    FaultPlan,
    parse_faults,
)

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
    faults: dict[str, float] = field(default_factory=dict)  # fault kind -> rate
    fault_devices: tuple[str, ...] | None = None  # None: faults hit every device
    fault_delay_seconds: float = 30.0
    rate_limit: float | None = None  # requests per second per key; None: unlimited

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
        unknown = sorted(set(self.faults) - set(ALL_FAULTS))
        if unknown:
            problems.append(f"unknown faults {unknown}")
        if not self.fault_delay_seconds >= 0:
            problems.append(
                f"fault_delay_seconds must be 0 or more, got {self.fault_delay_seconds}"
            )
        if self.rate_limit is not None and not self.rate_limit > 0:
            problems.append(f"rate_limit must be positive, got {self.rate_limit}")
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

    def frozen(self, now: float) -> bool:
        return self.end is not None and now >= self.end

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
    faults: FaultPlan | None
    recent_requests: collections.deque = field(default_factory=collections.deque)

    def present(self, device_id: str, now: float) -> bool:
        return self.faults is None or self.faults.present(device_id, now, self.clock.frozen(now))


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
async def _date_header(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every answer tells the simulated clock, as the real API's ``Date`` tells its own."""
    response = await handler(request)
    now = request.app[SIMULATION].clock.now()
    response.headers["Date"] = email.utils.formatdate(now, usegmt=True)
    return response


def _rate_limited(retry_after: int, as_json_status: bool) -> web.Response:
    body = {"status": 429, "reason": "too many requests"}
    response = _json(body, 200 if as_json_status else 429)
    response.headers["Retry-After"] = str(retry_after)
    return response


@web.middleware
async def _limit_rate(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Like the real API: over ``rate_limit`` requests in the last second answers 429."""
    sim = request.app[SIMULATION]
    limit = sim.config.rate_limit
    if limit is None or request.path in PUBLIC_PATHS:
        return await handler(request)
    now = time.monotonic()
    recent = sim.recent_requests
    while recent and recent[0] <= now - 1.0:
        recent.popleft()
    if len(recent) >= limit:
        return _rate_limited(1, as_json_status=False)
    recent.append(now)
    return await handler(request)


@web.middleware
async def _inject_faults(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Request faults: one answer goes wrong; the readings behind it stay the same."""
    faults = request.app[SIMULATION].faults
    if faults is None or request.path in PUBLIC_PATHS:
        return await handler(request)
    kind = faults.request_fault(request.match_info.get("device_id"))
    if kind == "timeouts":
        await asyncio.sleep(faults.delay_seconds)
    elif kind == "5xx":
        status = faults.rng.choice((500, 502, 503))
        if status == 502:
            return web.Response(
                status=502, text="<html>Bad gateway</html>", content_type="text/html"
            )
        raise _ApiError(status, "simulated server error")
    elif kind == "429":
        return _rate_limited(1, as_json_status=faults.rng.random() < 0.5)
    response = await handler(request)
    if kind == "malformed" and isinstance(response, web.Response) and response.body:
        body = bytes(response.body)
        return web.Response(body=body[: len(body) // 2], content_type="application/json")
    if kind == "schema":
        return _json({"status": "success", "result": "temporarily unavailable"})
    return response


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
        if not sim.present(device.id, now):
            continue
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
    now = sim.clock.now()
    if device is None or not sim.present(device_id, now):
        raise _ApiError(404, f"no pod with id {device_id!r}")
    temperature: list[dict[str, object]] = []
    humidity: list[dict[str, object]] = []
    faults = sim.faults
    for t in sim.clock.samples(now - _days(request) * DAY, now):
        if faults is not None and not faults.visible(device_id, t, now):
            continue
        temp_value, humidity_value = device.sample(t)
        kind = faults.reading_fault(device_id, t) if faults is not None else None
        if kind == "null":
            temp_value = None
        elif kind == "nan":
            temp_value = math.nan
        elif kind == "impossible":
            if t // sim.clock.interval % 2:
                temp_value = IMPOSSIBLE_TEMPERATURE
            else:
                humidity_value = IMPOSSIBLE_HUMIDITY
        copies = 2 if kind == "duplicates" else 1
        stamp = _iso(t)
        temperature.extend([{"time": stamp, "value": temp_value}] * copies)
        if kind != "missing":
            humidity.extend([{"time": stamp, "value": humidity_value}] * copies)
        if kind == "future" and faults.serves_future(t, now):
            ahead = _iso(faults.future_time(t))
            temperature.append({"time": ahead, "value": temp_value})
            humidity.append({"time": ahead, "value": humidity_value})
    if faults is not None and faults.rate("out-of-order") > 0 and faults.covers(device_id):
        faults.rng.shuffle(temperature)
        faults.rng.shuffle(humidity)
    return _success({"temperature": temperature, "humidity": humidity})


async def _health(request: web.Request) -> web.Response:
    sim = request.app[SIMULATION]
    clock = sim.clock
    now = clock.now()
    return _json(
        {
            "faults": sim.config.faults,
            "now": now,
            "now_iso": _iso(now),
            "start": clock.start,
            "history_start": clock.history_start,
            "end": clock.end,
            "speedup": clock.speedup,
            "interval_seconds": clock.interval,
            "devices": len(sim.devices),
            "status": "ok",
        }
    )


async def _openapi_yaml(request: web.Request) -> web.Response:
    return web.Response(text=request.app[SIMULATION].openapi_yaml, content_type="application/yaml")


async def _openapi_json(request: web.Request) -> web.Response:
    return _json(yaml.safe_load(request.app[SIMULATION].openapi_yaml))


def fault_plan(config: SimulatorConfig) -> FaultPlan | None:
    """The fault plan a simulator with this configuration follows (None without faults)."""
    if not any(config.faults.values()):
        return None
    devices = None if config.fault_devices is None else frozenset(config.fault_devices)
    return FaultPlan(
        dict(config.faults),
        config.seed,
        config.interval_seconds,
        devices,
        config.fault_delay_seconds,
    )


def build_app(config: SimulatorConfig) -> web.Application:
    """The simulator as an aiohttp application; its clock starts now."""
    app = web.Application(
        middlewares=[
            _log_requests,
            _date_header,
            _error_envelope,
            _require_key,
            _limit_rate,
            _inject_faults,
        ]
    )
    ids = device_ids(config.seed, config.devices)
    app[SIMULATION] = _Simulation(
        config=config,
        clock=_clock(config),
        devices={d: _Device.create(config.seed, d, n) for n, d in enumerate(ids, start=1)},
        openapi_yaml=resources.files(__package__).joinpath("openapi.yaml").read_text(),
        faults=fault_plan(config),
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
        "--faults",
        default="",
        metavar="KIND[=RATE],...",
        help="fault modes to switch on, each at --fault-rate unless given: all, "
        f"{', '.join(ALL_FAULTS)} (default: none)",
    )
    parser.add_argument(
        "--fault-rate",
        type=float,
        default=0.05,
        help="rate of each fault given without one, 0..1 (default: %(default)s)",
    )
    parser.add_argument(
        "--fault-devices",
        metavar="ID,...",
        help="only these devices misbehave (default: every device)",
    )
    parser.add_argument(
        "--fault-delay-seconds",
        type=float,
        default=30.0,
        help="how late a 'timeouts' answer comes (default: %(default)s)",
    )
    parser.add_argument(
        "--rate-limit",
        type=float,
        help="answer 429 above this many requests per second (default: no limit)",
    )
    parser.add_argument(
        "--tls-cert",
        metavar="PEM",
        help="serve HTTPS with this certificate (chain) file; needs --tls-key",
    )
    parser.add_argument(
        "--tls-key",
        metavar="PEM",
        help="private key of --tls-cert (keep it readable by its owner only)",
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
        faults = parse_faults(args.faults, args.fault_rate)
        fault_devices = (
            None
            if args.fault_devices is None
            else tuple(d.strip() for d in args.fault_devices.split(",") if d.strip())
        )
        config = SimulatorConfig(
            api_key=api_key,
            devices=args.devices,
            interval_seconds=args.interval_seconds,
            speedup=args.speedup,
            history_seconds=args.history_seconds,
            duration_seconds=args.duration_seconds,
            start=args.start,
            seed=args.seed,
            faults=faults,
            fault_devices=fault_devices,
            fault_delay_seconds=args.fault_delay_seconds,
            rate_limit=args.rate_limit,
        )
    except ValueError as exc:
        print(f"simulator: {exc}", file=sys.stderr)
        return 2
    try:
        tls = server_tls_context(args.tls_cert, args.tls_key)
    except (OSError, ssl.SSLError, ValueError) as exc:
        print(f"simulator: cannot use the TLS certificate: {exc}", file=sys.stderr)
        return 2
    asyncio.run(_serve(config, args.host, args.port, tls))
    return 0


def server_tls_context(cert: str | None, key: str | None) -> ssl.SSLContext | None:
    """The HTTPS context for ``--tls-cert``/``--tls-key``, or None to serve plain HTTP."""
    if not cert and not key:
        return None
    if not (cert and key):
        raise ValueError("--tls-cert and --tls-key go together")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context


async def _serve(
    config: SimulatorConfig, host: str, port: int, tls: ssl.SSLContext | None = None
) -> None:
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
        await web.TCPSite(runner, host, port, ssl_context=tls).start()
        bound_port = runner.addresses[0][1]
        clock = app[SIMULATION].clock
        print(
            f"simulator listening on {'https' if tls else 'http'}://{host}:{bound_port}"
            f"{API_PREFIX} "
            f"({config.devices} devices, every {clock.interval} s, speedup {clock.speedup}, "
            f"clock starts at {_iso(clock.start)})",
            flush=True,
        )
        await stop.wait()
    finally:
        await runner.cleanup()
