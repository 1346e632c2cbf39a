"""Client-side rate limit for the device API: a token bucket shared by every request.

Sensibo limits requests per account; polling a thousand devices without a limit
of our own would hit that limit every round and turn each poll into a storm of
429 answers and retries. The bucket spaces requests out so the API's limit is
not reached in the first place, and when the API still says 429 the whole
bucket pauses for the ``Retry-After`` it gave, because the limit is per
account, not per device.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable


class TokenBucket:
    """At most ``rate`` acquisitions per second on average, in bursts of up to ``burst``."""

    def __init__(
        self,
        rate: float,
        burst: float | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if rate <= 0:
            raise ValueError(f"rate must be positive, got {rate}")
        self.rate = rate
        self.burst = max(1.0, rate if burst is None else burst)
        self._clock = clock
        self._sleep = sleep
        self._tokens = self.burst
        self._stamp = clock()
        self._paused_until = 0.0
        self._lock = asyncio.Lock()  # waiters are served in arrival order

    def _refill(self, now: float) -> None:
        if now > self._stamp:  # nothing accrues during a pause (the stamp is its end)
            self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
            self._stamp = now

    async def acquire(self) -> None:
        """Wait until one more request may go out, then take its token."""
        async with self._lock:
            while True:
                now = self._clock()
                self._refill(now)
                wait = self._paused_until - now
                if wait <= 0 and self._tokens >= 1.0:
                    self._tokens -= 1.0
                    return
                await self._sleep(max(wait, (1.0 - self._tokens) / self.rate))

    def pause(self, seconds: float) -> None:
        """Send nothing for ``seconds`` (the API asked us to back off), then resume slowly."""
        now = self._clock()
        self._refill(now)
        self._paused_until = max(self._paused_until, now + seconds)
        self._tokens = 0.0
        self._stamp = max(self._stamp, self._paused_until)
