"""Turn a raw message from the device API into a validated ``Reading``.

Ingest never guesses: a payload that is not a JSON object, lacks a field,
carries a non-finite or physically impossible value, or is stamped in the
future is rejected with a reason that names the field, and the raw bytes go to
the dead-letter topic.

"The future" is judged against the device API's own clock, which the
connector records in each raw message as ``received_at`` (the API's HTTP
``Date``): a simulator's clock may run far ahead of the wall clock, and a
verdict that depends only on the message is the same on every redelivery.
Messages without ``received_at`` (other producers) are judged against the
wall clock.
"""

from __future__ import annotations

import json
import math
import time
from typing import Any

from pipeline.records import Reading

TEMPERATURE_RANGE = (-40.0, 85.0)  # operating range of indoor climate sensors, Celsius
HUMIDITY_RANGE = (0.0, 100.0)  # relative humidity, percent
DEFAULT_FUTURE_TOLERANCE = 300.0  # seconds a reading may lie past the API's clock


class InvalidReading(ValueError):
    """A raw reading that cannot enter the pipeline; the message is the reason."""


def _number(payload: dict[str, Any], field: str, bounds: tuple[float, float] | None) -> float:
    if field not in payload or payload[field] is None:
        raise InvalidReading(f"missing {field}")
    value = payload[field]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidReading(f"{field} is not a number: {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise InvalidReading(f"{field} is not finite: {value!r}")
    if bounds is not None and not bounds[0] <= number <= bounds[1]:
        raise InvalidReading(f"{field} {number} outside {bounds[0]}..{bounds[1]}")
    return number


def load_payload(raw: bytes | str) -> dict[str, Any]:
    """The raw message as a JSON object; raises ``InvalidReading`` if it is not one."""
    try:
        payload = json.loads(raw)
    except (TypeError, ValueError) as exc:
        raise InvalidReading(f"not JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise InvalidReading(f"not a JSON object: {type(payload).__name__}")
    return payload


def parse_reading(
    key: str | bytes | None,
    raw: bytes | str,
    future_tolerance: float = DEFAULT_FUTURE_TOLERANCE,
) -> Reading:
    """Validate one raw message; raises ``InvalidReading`` with the reason."""
    payload = load_payload(raw)
    device_id = payload.get("device_id")
    if not isinstance(device_id, str) or not device_id:
        raise InvalidReading("missing device_id")
    if isinstance(key, bytes):
        key = key.decode("utf-8", "replace")
    if key is not None and key != device_id:
        raise InvalidReading(f"message key {key!r} does not match device_id {device_id!r}")
    event_time = _number(payload, "time", None)
    if event_time <= 0:
        raise InvalidReading(f"time is not a positive epoch: {event_time}")
    clock = payload.get("received_at")
    reference = float(clock) if isinstance(clock, int | float) and math.isfinite(clock) else None
    ahead = event_time - (time.time() if reference is None else reference)
    if ahead > future_tolerance:
        source = "the wall clock" if reference is None else "the device API's clock"
        raise InvalidReading(
            f"time {event_time} is in the future: {ahead:.0f} s ahead of {source} "
            f"(tolerance {future_tolerance:.0f} s)"
        )
    return Reading(
        device_id=device_id,
        time=event_time,
        temperature=_number(payload, "temperature", TEMPERATURE_RANGE),
        humidity=_number(payload, "humidity", HUMIDITY_RANGE),
    )
