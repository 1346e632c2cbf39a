"""Fault modes of the simulated device API, for rehearsing failures and for tests.

Two families, both fixed by the seed:

* Request faults hit one HTTP answer and pass: ``timeouts`` (the answer comes
  after the client gave up), ``5xx``, ``429`` (half as HTTP 429, half as HTTP 200
  with a JSON ``status`` of 429, both with ``Retry-After``), ``malformed`` (the
  body is cut short) and ``schema`` (a body that breaks the API document). They
  are drawn from a seeded generator per request, so they change which polls
  succeed but never which readings exist.
* Reading faults belong to one sample of one device and are the same in every
  answer: ``missing`` (the humidity entry is absent), ``null`` (temperature is
  null), ``nan`` (temperature is NaN), ``impossible`` (150 C or 120 %),
  ``duplicates`` (the sample appears twice in each series), ``future`` (the
  sample comes with an extra, valid-looking point a day ahead of its time, off
  the sampling grid, served only while it lies at least an hour ahead of the
  simulator's clock), ``out-of-order`` (answers are shuffled, and the sample is
  published late, one to ten intervals after its time) and ``flapping`` (the
  device vanishes from the API for whole periods of 30 intervals, and returns
  with its history intact; never once the clock has frozen).

Because a sample's fault is a pure function of (seed, device, time),
``FaultPlan.catalogue`` tells a test exactly which readings a frozen simulator
serves as valid and which as invalid.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Iterable
from dataclasses import dataclass, field

DAY = 86400.0
REQUEST_FAULTS = ("timeouts", "5xx", "429", "malformed", "schema")
READING_FAULTS = ("missing", "null", "nan", "impossible", "duplicates", "future")
OTHER_FAULTS = ("out-of-order", "flapping")
ALL_FAULTS = REQUEST_FAULTS + READING_FAULTS + OTHER_FAULTS
INVALID_FAULTS = frozenset({"missing", "null", "nan", "impossible", "future"})
FUTURE_MARGIN = 3600.0  # a future point is served only while at least this far ahead
LATE_MAX_INTERVALS = 10
FLAP_PERIOD_INTERVALS = 30
IMPOSSIBLE_TEMPERATURE = 150.0
IMPOSSIBLE_HUMIDITY = 120.0


def _uniform(*parts: object) -> float:
    digest = hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest) / 2**64


def parse_faults(spec: str, default_rate: float) -> dict[str, float]:
    """``timeouts,5xx=0.2,...`` or ``all`` to {kind: rate}; raises ValueError naming a bad part."""
    rates: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, _, rate_text = part.partition("=")
        names = ALL_FAULTS if name == "all" else (name,)
        if name != "all" and name not in ALL_FAULTS:
            raise ValueError(f"unknown fault {name!r}; known: all, {', '.join(ALL_FAULTS)}")
        try:
            rate = float(rate_text) if rate_text else default_rate
        except ValueError:
            raise ValueError(f"fault rate of {name!r} is not a number: {rate_text!r}") from None
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"fault rate of {name!r} must be within 0..1, got {rate}")
        rates.update(dict.fromkeys(names, rate))
    total = sum(rates.get(k, 0.0) for k in READING_FAULTS)
    if total > 1.0:
        raise ValueError(f"reading fault rates add up to {total}, more than 1")
    return rates


@dataclass(frozen=True)
class Catalogue:
    """What a device serves at one moment: valid sample times, and invalid ones by fault."""

    valid: set[float]
    invalid: dict[float, str]


@dataclass
class FaultPlan:
    """Which faults happen where; every decision depends only on the seed (and, for request
    faults, on the order of requests)."""

    rates: dict[str, float]
    seed: int
    interval: int
    devices: frozenset[str] | None = None  # None: every device
    delay_seconds: float = 30.0  # how late a "timeouts" answer comes
    rng: random.Random = field(init=False)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    def rate(self, kind: str) -> float:
        return self.rates.get(kind, 0.0)

    def covers(self, device_id: str | None) -> bool:
        """Whether faults apply; the account-wide device list only when every device has them."""
        if device_id is None:
            return self.devices is None
        return self.devices is None or device_id in self.devices

    # --- per request -----------------------------------------------------------------------

    def request_fault(self, device_id: str | None) -> str | None:
        """Draw the fault of one request, if any."""
        if not self.covers(device_id):
            return None
        draw = self.rng.random()
        for kind in REQUEST_FAULTS:
            draw -= self.rate(kind)
            if draw < 0:
                return kind
        return None

    # --- per sample ------------------------------------------------------------------------

    def reading_fault(self, device_id: str, t: int) -> str | None:
        if not self.covers(device_id):
            return None
        draw = _uniform(self.seed, device_id, "fault", t)
        for kind in READING_FAULTS:
            draw -= self.rate(kind)
            if draw < 0:
                return kind
        return None

    def lag(self, device_id: str, t: int) -> float:
        """How long after its time a sample is published (0 unless it is out of order)."""
        if not self.covers(device_id) or _uniform(self.seed, device_id, "late", t) >= self.rate(
            "out-of-order"
        ):
            return 0.0
        steps = 1 + math.floor(_uniform(self.seed, device_id, "lag", t) * LATE_MAX_INTERVALS)
        return float(steps * self.interval)

    def visible(self, device_id: str, t: int, now: float) -> bool:
        return t + self.lag(device_id, t) <= now

    def present(self, device_id: str, now: float, frozen: bool) -> bool:
        """Whether the device is listed and answers; flapping stops once the clock froze."""
        if frozen or not self.covers(device_id):
            return True
        period = math.floor(now / (FLAP_PERIOD_INTERVALS * self.interval))
        return _uniform(self.seed, device_id, "flap", period) >= self.rate("flapping")

    def future_time(self, t: int) -> float:
        """The time stamped on the extra point of a ``future`` sample: off the grid, a day on."""
        return t + DAY + self.interval / 2

    def serves_future(self, t: int, now: float) -> bool:
        return self.future_time(t) - now >= FUTURE_MARGIN

    def catalogue(self, device_id: str, grid: Iterable[int], now: float) -> Catalogue:
        """Valid and invalid times a device serves at ``now``, given its sampling ``grid``."""
        valid: set[float] = set()
        invalid: dict[float, str] = {}
        for t in grid:
            if not self.visible(device_id, t, now):
                continue
            kind = self.reading_fault(device_id, t)
            if kind == "future":
                valid.add(float(t))
                if self.serves_future(t, now):
                    invalid[self.future_time(t)] = "future"
            elif kind in INVALID_FAULTS:
                invalid[float(t)] = kind
            else:
                valid.add(float(t))
        return Catalogue(valid, invalid)
