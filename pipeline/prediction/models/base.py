"""What every model shares: cleaning the input, the failure reasons, the result.

Bad input is a property of the data, not of the moment: a re-run would fail the
same way. It is raised as ``BadInput`` (with a short machine-readable
``reason``) so that the worker fails the job at once instead of retrying it;
see ``pipeline.prediction.failures``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

# Fewer finite readings than this cannot pin down a daily cycle, a trend and a noise level.
MIN_POINTS = 10
# Nominal share of future readings inside [yhat_lower, yhat_upper]; the accuracy
# tracker compares the measured share with it.
INTERVAL_WIDTH = 0.8


class BadInput(ValueError):
    """The readings cannot be fitted; retrying the job would not help."""

    reason = "bad_input"


class TooFewPoints(BadInput):
    """Fewer than ``MIN_POINTS`` finite readings in the training window."""

    reason = "too_few_points"


class TooShortForSeason(BadInput):
    """A seasonal model needs at least one full season of history."""

    reason = "shorter_than_one_season"


@dataclass(frozen=True)
class Series:
    """A device's finite readings, oldest first, with what was dropped on the way."""

    times: list[float]  # event time, epoch seconds, strictly increasing
    values: list[float]
    dropped: int  # readings dropped for a missing or non-finite time or value

    @property
    def span(self) -> float:
        return self.times[-1] - self.times[0]

    @property
    def constant(self) -> bool:
        return min(self.values) == max(self.values)


@dataclass(frozen=True)
class ForecastResult:
    """A forecast plus what it was trained on; plain Python values throughout."""

    points: list[dict[str, float]]  # {"ds" (epoch s), "yhat", "yhat_lower", "yhat_upper"}
    trained_from: float
    trained_until: float
    training_points: int
    fit_seconds: float
    model_version: str  # the implementation, e.g. "prophet-1.5.0"
    warm_started: bool = False
    fallback: str | None = None  # why the model's usual fit was replaced, if it was
    state: dict[str, Any] | None = field(default=None, repr=False)  # what to keep for next time


def clean_series(readings: Iterable[dict[str, Any]], value_key: str = "temperature") -> Series:
    """Finite (time, value) pairs, oldest first, one per time (the last one wins).

    Raises ``TooFewPoints`` when fewer than ``MIN_POINTS`` remain.
    """
    by_time: dict[float, float] = {}
    dropped = 0
    for reading in readings:
        try:
            when = float(reading["time"])
            value = float(reading[value_key])
        except (KeyError, TypeError, ValueError):
            dropped += 1
            continue
        if not (math.isfinite(when) and math.isfinite(value)):
            dropped += 1
            continue
        by_time[when] = value
    if len(by_time) < MIN_POINTS:
        raise TooFewPoints(
            f"need at least {MIN_POINTS} finite {value_key} readings to fit, got {len(by_time)}"
            + (f" ({dropped} dropped as missing or not finite)" if dropped else "")
        )
    times = sorted(by_time)
    return Series(times=times, values=[by_time[t] for t in times], dropped=dropped)


def future_times(last: float, horizon_seconds: float, step_seconds: float) -> list[float]:
    """Epoch seconds last + step, last + 2 * step, ... up to last + horizon."""
    if horizon_seconds <= 0 or step_seconds <= 0:
        raise ValueError("horizon_seconds and step_seconds must be positive")
    count = max(1, math.floor(horizon_seconds / step_seconds + 1e-9))
    return [last + step_seconds * k for k in range(1, count + 1)]
