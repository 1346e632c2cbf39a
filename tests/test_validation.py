"""Raw readings: what enters the pipeline and why the rest is rejected."""

from __future__ import annotations

import json

import pytest

from pipeline.validation import InvalidReading, parse_reading


def raw(**fields) -> bytes:
    payload = {"device_id": "abc", "time": 1714521600.0, "temperature": 21.5, "humidity": 45.0}
    payload.update(fields)
    return json.dumps(payload).encode()


def test_valid_reading_is_parsed():
    reading = parse_reading("abc", raw())
    assert (reading.device_id, reading.time, reading.temperature, reading.humidity) == (
        "abc",
        1714521600.0,
        21.5,
        45.0,
    )
    assert "__faust" not in reading.asdict()


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"{not json", "not JSON"),
        (b"[1, 2]", "not a JSON object"),
        (raw(temperature=None), "missing temperature"),
        (raw(humidity="45"), "humidity is not a number"),
        (
            b'{"device_id": "abc", "time": 1714521600, "temperature": NaN, "humidity": 40}',
            "temperature is not finite",
        ),
        (raw(temperature=400.0), "temperature 400.0 outside"),
        (raw(humidity=-3), "humidity -3.0 outside"),
        (raw(time=-5), "time is not a positive epoch"),
        (raw(device_id=""), "missing device_id"),
    ],
)
def test_bad_readings_are_rejected_with_the_reason(payload, reason):
    with pytest.raises(InvalidReading, match=reason):
        parse_reading("abc", payload)


def test_key_must_match_device():
    with pytest.raises(InvalidReading, match="does not match"):
        parse_reading(b"other", raw())
