"""Wait out an outage instead of dropping data.

Agents call Redis for every message; when Redis is down, skipping the message
would lose it and crashing would restart the agent in a loop. Retrying with a
capped, jittered backoff holds the partition (Kafka keeps the backlog) and
resumes by itself when the dependency returns.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

import redis.exceptions

T = TypeVar("T")

TRANSIENT = (
    ConnectionError,
    TimeoutError,
    OSError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
)


async def retry_until_done(
    action: Callable[[], Awaitable[T]],
    what: str,
    log: logging.Logger,
    *,
    transient: tuple[type[BaseException], ...] = TRANSIENT,
    first_delay: float = 0.2,
    max_delay: float = 10.0,
) -> T:
    """Run ``action`` until it succeeds, logging each transient failure."""
    delay = first_delay
    attempt = 1
    while True:
        try:
            return await action()
        except transient as exc:
            log.warning("%s failed (attempt %d): %s; retrying in %.1fs", what, attempt, exc, delay)
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, max_delay)
            attempt += 1
