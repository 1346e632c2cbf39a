"""Which failed jobs run again, and which stay failed with their reason.

RQ re-runs a job enqueued with ``Retry`` after any exception, and also when its
worker died mid-job (see ``pipeline.prediction.reaper``). Bad input would fail
the same way every time, so the worker installs ``no_retry_for_bad_input`` as
an RQ exception handler: RQ calls it with the exception before it decides on a
retry, and the handler spends the job's remaining retries. The job then lands in
RQ's failed registry at once, its reason the exception's last line (``rq info``,
rq-dashboard and the dashboard show it), e.g. ``TooFewPoints: need at least 10
finite temperature readings to fit, got 3``.

Transient failures (Redis unreachable, a timeout) keep their retries.
"""

from __future__ import annotations

import logging
from types import TracebackType

from rq.job import Job

from pipeline.prediction.models.base import BadInput

log = logging.getLogger(__name__)


def no_retry_for_bad_input(
    job: Job, exc_type: type[BaseException], exc_value: BaseException, traceback: TracebackType
) -> bool:
    """RQ exception handler: fail a job at once when its input cannot be fitted."""
    if isinstance(exc_value, BadInput):
        log.info("job %s failed on bad input (%s): not retried", job.id, exc_value.reason)
        job.retries_left = 0
    return True  # let RQ's own failure handling run next
