"""Message schemas of the pipeline's topics.

All records are plain JSON without Faust's ``__faust`` metadata key
(``include_metadata=False``), because they are read by RQ jobs, the dashboard and
outside consumers that know nothing of Faust. The field names are a public
interface (README, "Interfaces").
"""

from __future__ import annotations

import faust


class Reading(faust.Record, include_metadata=False, serializer="json"):
    """One validated sensor reading; topic ``readings``, key = device id."""

    device_id: str
    time: float  # event time, unix epoch seconds
    temperature: float  # degrees Celsius
    humidity: float  # percent relative humidity


class PredictionJob(faust.Record, include_metadata=False, serializer="json"):
    """Audit copy of an emitted prediction job; topic ``jobs``, key = device id."""

    job_id: str
    device_id: str
    window_start: float
    window_end: float
    model: str


class RejectedReading(faust.Record, include_metadata=False, serializer="json"):
    """A raw reading that failed validation; topic ``readings-deadletter``."""

    reason: str
    payload: str  # the raw message as received, for replay after a fix


class ReplayRequest(faust.Record, include_metadata=False, serializer="json"):
    """Reset a device's job pointer and re-deploy its jobs; topic ``replay-requests``."""

    device_id: str
    from_time: float  # epoch seconds: windows are recomputed from the first reading at or after
    force: bool = False  # also re-run jobs that were already enqueued once
