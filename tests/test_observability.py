"""Log formatting and scrubbing, worker metric helpers and stream-worker readiness."""

from __future__ import annotations

import io
import json
import logging

import pytest

from pipeline.logs import JsonFormatter, TextFormatter, job_context
from pipeline.prediction.observed_worker import failure_reason, fits_of
from pipeline.settings import MASK, load_settings


def emit(formatter: logging.Formatter, *args, exc: BaseException | None = None, **extra) -> str:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    logger = logging.getLogger("test.observability")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    if exc is None:
        logger.info(*args, extra=extra or None)
    else:
        try:
            raise exc
        except type(exc):
            logger.exception(*args, extra=extra or None)
    return stream.getvalue().rstrip("\n")


def test_json_lines_carry_level_logger_and_the_job_ids_of_their_context() -> None:
    with job_context(job_id="forecast-a-1", device_id="a"):
        line = emit(JsonFormatter(), "fitted %d points", 42)
    entry = json.loads(line)
    assert entry["message"] == "fitted 42 points"
    assert (entry["level"], entry["logger"]) == ("info", "test.observability")
    assert (entry["job_id"], entry["device_id"]) == ("forecast-a-1", "a")
    outside = json.loads(emit(JsonFormatter(), "no job here"))
    assert "job_id" not in outside and "device_id" not in outside


def test_extra_fields_name_the_device_in_text_lines_too() -> None:
    line = emit(TextFormatter(), "window closed", device_id="dev-7")
    assert line.endswith("window closed [device_id=dev-7]")


@pytest.mark.parametrize("formatter_class", [JsonFormatter, TextFormatter])
def test_secrets_are_scrubbed_from_messages_arguments_and_tracebacks(formatter_class) -> None:
    settings = load_settings(
        environ={
            "PIPELINE_SOURCE_API_KEY": "api-key-0123",
            "PIPELINE_REDIS_URL": "redis://worker:p%40ss-9@redis:6379/0",
        }
    )
    formatter = formatter_class(secrets=settings.secret_values())
    line = emit(
        formatter,
        "GET /pods?apiKey=%s via %s",
        "api-key-0123",
        settings.redis_url,
        exc=RuntimeError("AUTH p@ss-9 refused"),
    )
    for secret in ("api-key-0123", "p%40ss-9", "p@ss-9"):
        assert secret not in line
    assert line.count(MASK) >= 3


def test_printed_settings_mask_secrets_and_url_passwords() -> None:
    settings = load_settings(
        environ={
            "PIPELINE_SOURCE_API_KEY": "api-key-0123",
            "PIPELINE_REDIS_URL": "redis://worker:hunter2@redis:6379/0",
        }
    )
    shown = repr(settings)
    assert "api-key-0123" not in shown and "hunter2" not in shown
    assert f"redis://worker:{MASK}@redis:6379/0" in shown


@pytest.mark.parametrize(
    ("exc_string", "reason"),
    [
        ("...\nTooFewPoints: need at least 10 finite readings", "TooFewPoints"),
        ("...\nrq.timeouts.JobTimeoutException: Task exceeded timeout", "JobTimeoutException"),
        ("Work-horse terminated unexpectedly; waitpid returned 9", "WorkHorseTerminated"),
        ("", "unknown"),
        (None, "unknown"),
    ],
)  # fmt: skip
def test_failure_reasons_are_exception_class_names(exc_string, reason) -> None:
    assert failure_reason(exc_string) == reason


def test_fit_seconds_come_from_single_and_multi_model_results() -> None:
    assert fits_of({"fit_seconds": 0.4}, "prophet") == {"prophet": 0.4}
    assert fits_of({"fits": {"ets": {"fit_seconds": 0.2}, "naive": 0.01}}, "auto") == {
        "ets": 0.2,
        "naive": 0.01,
    }
    assert fits_of({"skipped": True, "fit_seconds": 1.0}, "prophet") == {}
    assert fits_of(None, "prophet") == {}


def test_stream_worker_is_not_ready_while_rebalancing_or_recovering(monkeypatch) -> None:
    from pipeline import probes
    from pipeline.app import app

    monkeypatch.setattr(app, "rebalancing", False)
    monkeypatch.setattr(app.tables.recovery, "in_recovery", False)
    assert probes.readiness() == (True, "ready")
    monkeypatch.setattr(app, "rebalancing", True)
    assert probes.readiness() == (False, "rebalancing")
    monkeypatch.setattr(app, "rebalancing", False)
    monkeypatch.setattr(app.tables.recovery, "in_recovery", True)
    assert probes.readiness()[0] is False
