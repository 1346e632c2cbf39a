"""Dead-letter agent: counts each device's rejected readings.

It also keeps ingest's dead letters inside ingest's Kafka transaction. Under
``exactly_once`` faust-streaming picks the transaction for a message from the
partition it goes to, and finds that partition only for topics the app
consumes: a message to a topic no agent reads is sent by the plain producer,
outside any transaction, so a redelivery after a crash would dead-letter the
same payload again. Consuming the topic here makes it one of the app's
co-partitioned topics, and each dead letter commits with the raw message that
caused it.
"""

from __future__ import annotations

from pipeline.app import app
from pipeline.commit_gate import commit_gate
from pipeline.topics import deadletter_topic
from tables.dead_letters import dead_letters


@app.agent(deadletter_topic)
async def count_dead_letters(stream) -> None:
    """Count the readings ingest rejected, per device (``dead_letters`` in /devices/)."""
    async for event in stream.events():
        async with commit_gate.event():
            dead_letters[event.key] += 1
