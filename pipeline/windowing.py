"""Event-time windowing of the job manager, kept free of Kafka and Redis.

Per device, the pointer is the event time where the last window closed (at
first sight of a device: its first reading). A reading whose time is at least
``window`` past the pointer closes the window [pointer, reading time]: the
pointer moves to the reading, and a job is deployed for that window unless it
starts before ``start_time``. A reading at or before the pointer (late or
duplicate) never moves the pointer back and deploys nothing; it is stored by
ingest and counts in later training data.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Decision:
    """What one reading does to a device's pointer."""

    pointer: float | None  # the new pointer, or None if unchanged
    window: tuple[float, float] | None  # (start, end) of the job to deploy, if any
    late: bool = False


def decide(pointer: float | None, time: float, window: float, start_time: float) -> Decision:
    """Apply one reading at event ``time`` to a device whose pointer is ``pointer``."""
    if pointer is None:
        return Decision(pointer=time, window=None)
    if time <= pointer:
        return Decision(pointer=None, window=None, late=True)
    if time - pointer >= window:
        deploy = (pointer, time) if pointer >= start_time else None
        return Decision(pointer=time, window=deploy)
    return Decision(pointer=None, window=None)


def windows_through(
    pointer: float | None, times: Iterable[float], window: float, start_time: float
) -> tuple[float | None, list[tuple[float, float]]]:
    """Apply readings in order from ``pointer``; return the new pointer and the windows
    to deploy."""
    windows = []
    for time in times:
        decision = decide(pointer, time, window, start_time)
        if decision.pointer is not None:
            pointer = decision.pointer
        if decision.window is not None:
            windows.append(decision.window)
    return pointer, windows


def expected_windows(
    times: list[float], window: float, start_time: float = 0.0
) -> list[tuple[float, float]]:
    """All windows a device's readings produce, in arrival order (for tests and replay)."""
    return windows_through(None, times, window, start_time)[1]
