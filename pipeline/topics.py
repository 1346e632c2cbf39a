"""The pipeline's Kafka topics, all keyed by device id.

``readings-raw`` carries payloads exactly as the device API gave them (raw
bytes, so a malformed one can still be dead-lettered verbatim); every topic
after ingest carries validated JSON records (see ``pipeline.records``).
"""

from __future__ import annotations

from typing import Any

from faust.types import TopicT

from pipeline.accuracy import Anomaly
from pipeline.app import app, settings
from pipeline.records import PredictionJob, Reading, RejectedReading, ReplayRequest


def _device_topic(name: str, **types: Any) -> TopicT:
    """A pipeline topic keyed by device id, created by the workers with the
    configured partitions, so every topic is co-partitioned with the tables."""
    return app.topic(
        settings.topic(name),
        key_type=str,
        partitions=settings.topic_partitions,
        internal=True,
        **types,
    )


raw_readings_topic = _device_topic("readings-raw", value_serializer="raw")

readings_topic = _device_topic("readings", value_type=Reading)

jobs_topic = _device_topic("jobs", value_type=PredictionJob)

deadletter_topic = _device_topic("readings-deadletter", value_type=RejectedReading)

replay_topic = _device_topic("replay-requests", value_type=ReplayRequest)

anomalies_topic = _device_topic("anomalies", value_type=Anomaly)


@app.task
async def declare_output_topics() -> None:
    """Create the topics only written to, with the configured partitions, at start-up
    (the broker's auto-creation would give them its default partition count)."""
    for topic in (jobs_topic, anomalies_topic):
        await topic.maybe_declare()
