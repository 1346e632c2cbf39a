"""Forecast accuracy and anomalies per device, as the accuracy tracker stores them.

The fleet table and the device view show a forecast error, an anomaly count,
anomaly markers and accuracy figures per model, written by
``pipeline.accuracy`` (key names in ``pipeline.storage.Keys``). This module is
the dashboard's one reader of them: where a device has no figures yet the page
shows "—", and entries that do not parse are skipped rather than failing the view.

  accuracy:{d}      HASH  model -> JSON {"count", "mae" (°C), "mape" (%), "coverage"
                          (share inside the interval), "nominal_coverage", ...}
  anomalies:{d}     ZSET  score = event time, member = JSON {"time", "value", ...}
                          (the newest ones)
  anomaly-counts    HASH  device id -> anomalies counted ever
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from pipeline.storage import Store


@dataclass(frozen=True)
class Accuracy:
    """How one model's forecasts of a device compared with the readings that followed."""

    model: str
    mae: float | None
    mape: float | None
    coverage: float | None
    nominal_coverage: float | None
    count: int | None


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def parse_accuracy(raw: dict[bytes, bytes]) -> dict[str, Accuracy]:
    """Decode an ``accuracy:{d}`` hash; models whose entry is not a JSON object are skipped."""
    figures = {}
    for name, encoded in raw.items():
        try:
            doc = json.loads(encoded)
        except ValueError:
            continue
        if not isinstance(doc, dict):
            continue
        model = name.decode() if isinstance(name, bytes) else str(name)
        count = _number(doc.get("count"))
        figures[model] = Accuracy(
            model=model,
            mae=_number(doc.get("mae")),
            mape=_number(doc.get("mape")),
            coverage=_number(doc.get("coverage")),
            nominal_coverage=_number(doc.get("nominal_coverage")),
            count=int(count) if count is not None else None,
        )
    return figures


def forecast_error(figures: dict[str, Accuracy], model: str | None) -> float | None:
    """The MAE of the model that made the device's latest forecast (else of any model)."""
    chosen = figures.get(model) if model else None
    if chosen is None and figures:
        chosen = figures[sorted(figures)[0]]
    return chosen.mae if chosen else None


def anomalies_since(
    store: Store, device_id: str, after: float | None, limit: int
) -> list[dict[str, float]]:
    """A device's anomalies later than ``after`` (all if None), oldest first, at most ``limit``."""
    start = "-inf" if after is None else f"({after!r}"
    key = store.keys.anomalies(device_id)
    newest_first = store.client.zrevrangebyscore(key, "+inf", start, 0, limit)
    anomalies = []
    for member in reversed(newest_first):
        try:
            doc = json.loads(member)
            anomalies.append({"time": float(doc["time"]), "value": float(doc["value"])})
        except (ValueError, KeyError, TypeError):
            continue
    return anomalies
