"""Keep Faust's offset commits between events, never inside one.

Under ``exactly_once`` faust-streaming commits a partition's Kafka transaction
from a timer task that runs beside the agents. An agent that is half-way
through an event may already have handed some of its output to the
transactional producer (the forward to ``readings``) while the rest is still
in Faust's producer buffer (the table's changelog write, sent with
``send_soon``). A commit in that instant makes the first half durable and
leaves the second for the next transaction; a ``kill -9`` before that one
commits loses it, and the redelivered message is then processed against a
table that never saw it: the reading is forwarded a second time.

The gate closes that window. Each agent processes an event inside
``commit_gate.event()``; the consumer (``pipeline.transport``) closes the gate
before it commits, waits for the events in progress to finish, hands Faust's
buffered messages to the transactional producers, and only then commits. So
every event's outputs and table updates land in one transaction together,
whichever transaction that is. An event that finished after the offsets were
chosen is committed with its outputs but not its offset; it is redelivered
and decided again from table state that already holds it, so it changes
nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class CommitGate:
    """Many events may be in progress at once, or one commit, never both."""

    def __init__(self) -> None:
        self._sealed = False
        self._in_progress = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._open = asyncio.Event()
        self._open.set()

    @property
    def in_progress(self) -> int:
        """Events being processed now."""
        return self._in_progress

    @asynccontextmanager
    async def event(self) -> AsyncIterator[None]:
        """Hold off commits while one event is processed (waits for a commit in progress)."""
        await self._open.wait()
        self._in_progress += 1
        self._idle.clear()
        try:
            yield
        finally:
            self._in_progress -= 1
            if not self._in_progress:
                self._idle.set()

    @asynccontextmanager
    async def closed(self) -> AsyncIterator[None]:
        """Stop new events from starting and wait for the ones in progress."""
        self._open.clear()
        try:
            await self._idle.wait()
            yield
        finally:
            if not self._sealed:
                self._open.set()

    def seal(self) -> None:
        """Start no event until ``unseal``: a rebalance or the stop is under way."""
        self._sealed = True
        self._open.clear()

    def unseal(self) -> None:
        """Let events start again: the new assignment's transactions have begun."""
        self._sealed = False
        self._open.set()


commit_gate = CommitGate()
