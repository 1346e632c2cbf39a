"""Accuracy agent: readings -> forecast error per device and model, and anomalies.

Consumes ``readings`` beside the job manager (its own agent, so a slow Redis
here never delays a job). Each reading is scored against the forecasts that
covered its time (``pipeline.accuracy``); a reading far outside the newest
forecast's band goes to the ``anomalies`` topic, in the same Kafka transaction
as the input offset under ``exactly_once``. The Redis statistics are idempotent
per reading, so a redelivery after a crash counts nothing twice; the Prometheus
counters below follow them (they count what was newly added).
"""

from __future__ import annotations

import logging

from prometheus_client import CollectorRegistry, Counter

from pipeline.accuracy import AccuracyTracker, Outcome
from pipeline.app import app, settings
from pipeline.connections import redis_client
from pipeline.retry import retry_until_done
from pipeline.settings import SERVED_MODEL
from pipeline.source.metrics import metrics as served_metrics
from pipeline.topics import anomalies_topic, readings_topic

log = logging.getLogger(__name__)


class AccuracyMetrics:
    """Online accuracy as Prometheus counters, per device and model.

    MAE over any range is ``rate(forecast_absolute_error_celsius_total[5m]) /
    rate(forecast_readings_scored_total[5m])``, interval coverage the same with
    ``forecast_readings_inside_interval_total``.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        labels = ["device", "model"]
        self.scored = Counter(
            "forecast_readings_scored",
            "Readings compared with a forecast that covered their time",
            labels,
            registry=registry,
        )
        self.abs_error = Counter(
            "forecast_absolute_error_celsius",
            "Sum of |reading - forecast| over the readings scored",
            labels,
            registry=registry,
        )
        self.inside = Counter(
            "forecast_readings_inside_interval",
            "Readings scored that fell inside the forecast's interval",
            labels,
            registry=registry,
        )
        self.anomalies = Counter(
            "anomalies",
            "Readings outside the newest forecast's interval by more than anomaly_margin",
            ["device"],
            registry=registry,
        )

    def record(self, device_id: str, outcome: Outcome) -> None:
        for model in outcome.counted:
            score = outcome.scores[model]
            self.scored.labels(device=device_id, model=model).inc()
            self.abs_error.labels(device=device_id, model=model).inc(score.abs_error)
            if score.inside:
                self.inside.labels(device=device_id, model=model).inc()
        if outcome.anomaly_counted:
            self.anomalies.labels(device=device_id).inc()


metrics = AccuracyMetrics(served_metrics.registry)  # served at /metrics with the others
tracker = AccuracyTracker(
    redis_client(settings, asyncio=True, socket_timeout=10),
    models=list(dict.fromkeys([*settings.models, SERVED_MODEL])),
    margin=settings.anomaly_margin,
)


@app.agent(readings_topic)
async def track_accuracy(stream) -> None:
    """Score each reading against the forecasts that covered it; publish anomalies."""
    async for reading in stream:
        outcome = await retry_until_done(
            lambda r=reading: tracker.score(r.device_id, r.time, r.temperature),
            f"scoring reading of {reading.device_id} at {reading.time}",
            log,
        )
        metrics.record(reading.device_id, outcome)
        anomaly = outcome.anomaly
        if anomaly is not None:
            log.warning(
                "anomaly device_id=%s time=%.0f value=%.2f band=%.2f..%.2f model=%s",
                anomaly.device_id,
                anomaly.time,
                anomaly.value,
                anomaly.lower,
                anomaly.upper,
                anomaly.model,
            )
            await anomalies_topic.send(key=reading.device_id, value=anomaly)
