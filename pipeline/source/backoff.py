"""How long to wait before retrying a device API request.

Delays double per attempt up to a cap and are jittered, so that devices whose
requests failed together (an API hiccup) do not retry together. When the API
names the wait itself (``Retry-After``), that wait is honoured, with a little
jitter on top so a fleet of clients does not return at the same instant.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime


@dataclass(frozen=True)
class Backoff:
    """Retry schedule: ``attempts`` tries in all, the first retry after about ``first`` s."""

    first: float = 0.5
    cap: float = 30.0
    attempts: int = 4
    rng: random.Random = field(default_factory=random.Random, compare=False)

    def delay(self, retry: int, retry_after: float | None = None) -> float:
        """Seconds to wait before retry number ``retry`` (1 for the first retry)."""
        if retry_after is not None:
            return retry_after + self.rng.uniform(0.0, min(1.0, 0.1 * retry_after))
        ceiling = min(self.cap, self.first * 2 ** (retry - 1))
        return self.rng.uniform(ceiling / 2, ceiling)  # "equal jitter": never near zero


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """``Retry-After`` as seconds from now: delta-seconds or an HTTP date; None if absent or bad."""
    if value is None:
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            moment = parsedate_to_datetime(text)
        except (TypeError, ValueError):
            return None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        seconds = (moment - (now or datetime.now(UTC))).total_seconds()
    return max(0.0, seconds) if seconds == seconds else None  # NaN is no answer
