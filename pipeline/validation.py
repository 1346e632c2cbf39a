"""Turn a raw message from the device API into a validated ``Reading``.

Ingest never guesses: a payload that is not a JSON object, lacks a field, or
carries a non-finite or physically impossible value is rejected with a reason
that names the field, and the raw bytes go to the dead-letter topic.
"""

from __future__ import annotations

import json
import math
from typing import Any

from pipeline.records import Reading

TEMPERATURE_RANGE = (-40.0, 85.0)  # operating range of indoor climate sensors, Celsius
HUMIDITY_RANGE = (0.0, 100.0)  # relative humidity, percent


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


def parse_reading(key: str | bytes | None, raw: bytes | str) -> Reading:
    """Validate one raw message; raises ``InvalidReading`` with the reason."""
    try:
        payload = json.loads(raw)
    except (TypeError, ValueError) as exc:
        raise InvalidReading(f"not JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise InvalidReading(f"not a JSON object: {type(payload).__name__}")
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
    return Reading(
        device_id=device_id,
        time=event_time,
        temperature=_number(payload, "temperature", TEMPERATURE_RANGE),
        humidity=_number(payload, "humidity", HUMIDITY_RANGE),
    )
