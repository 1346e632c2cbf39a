"""The pipeline's Kafka topics, all keyed by device id.

``readings-raw`` carries payloads exactly as the device API gave them (raw
bytes, so a malformed one can still be dead-lettered verbatim); every topic
after ingest carries validated JSON records (see ``pipeline.records``).
"""

from __future__ import annotations

from pipeline.accuracy import Anomaly
from pipeline.app import app, settings
from pipeline.records import PredictionJob, Reading, RejectedReading, ReplayRequest

raw_readings_topic = app.topic(
    settings.topic("readings-raw"),
    key_type=str,
    value_serializer="raw",
    partitions=settings.topic_partitions,
    internal=True,
)

readings_topic = app.topic(
    settings.topic("readings"),
    key_type=str,
    value_type=Reading,
    partitions=settings.topic_partitions,
    internal=True,
)

jobs_topic = app.topic(
    settings.topic("jobs"),
    key_type=str,
    value_type=PredictionJob,
    partitions=settings.topic_partitions,
    internal=True,
)

deadletter_topic = app.topic(
    settings.topic("readings-deadletter"),
    key_type=str,
    value_type=RejectedReading,
    partitions=settings.topic_partitions,
    internal=True,
)

replay_topic = app.topic(
    settings.topic("replay-requests"),
    key_type=str,
    value_type=ReplayRequest,
    partitions=settings.topic_partitions,
    internal=True,
)

anomalies_topic = app.topic(
    settings.topic("anomalies"),
    key_type=str,
    value_type=Anomaly,
    partitions=settings.topic_partitions,
    internal=True,
)


@app.task
async def declare_output_topics() -> None:
    """Create the topics only written to, with the configured partitions, at start-up
    (the broker's auto-creation would give them its default partition count)."""
    for topic in (jobs_topic, deadletter_topic, anomalies_topic):
        await topic.maybe_declare()
