"""One logging configuration for every role: text or JSON lines, secrets scrubbed.

Every process (Faust worker, prediction worker and its work horses, dashboard,
simulator, the ``pipeline`` command) logs through the same formatter, so that a
log shipper sees one shape: ``log_format: json`` gives one JSON object per line
with ``time``, ``level``, ``logger``, ``message`` and, where they apply,
``device_id`` and ``job_id``. Those two come from ``extra={...}`` on a log call
or from the context a job runs in (``job_context``), so that library lines
logged while a job runs (RQ, Prophet) carry the job too.

Whatever the format, the text of every line (message, arguments and traceback)
is scrubbed of the settings' secrets before it is written: a secret that leaks
into an exception message from a client library still never reaches a log.
"""

from __future__ import annotations

import contextvars
import json
import logging
import logging.config
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from pipeline.settings import MASK, Settings

CONTEXT_FIELDS = ("device_id", "job_id")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Libraries that attach a handler of their own at import when the root has none yet.
LIBRARIES_WITH_OWN_HANDLERS = ("bokeh",)

_context: contextvars.ContextVar[tuple[tuple[str, str], ...]] = contextvars.ContextVar(
    "log_context", default=()
)


@contextmanager
def job_context(**fields: str) -> Iterator[None]:
    """Tag every line logged inside the block with these fields (device_id, job_id)."""
    token = _context.set(tuple({**dict(_context.get()), **fields}.items()))
    try:
        yield
    finally:
        _context.reset(token)


def _context_of(record: logging.LogRecord) -> dict[str, str]:
    fields = dict(_context.get())
    for name in CONTEXT_FIELDS:
        value = getattr(record, name, None)
        if value is not None:
            fields[name] = str(value)
    return fields


class _Scrubbing(logging.Formatter):
    """Replace every known secret in the finished line with the mask."""

    def __init__(self, *args: Any, secrets: Sequence[str] = (), **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.secrets = [s for s in secrets if s]

    def scrub(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, MASK)
        return text


class TextFormatter(_Scrubbing):
    """``time LEVEL logger: message [device_id=.. job_id=..]``."""

    def __init__(self, secrets: Sequence[str] = ()) -> None:
        super().__init__(TEXT_FORMAT, secrets=secrets)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = _context_of(record)
        if fields:
            tags = " ".join(f"{k}={v}" for k, v in sorted(fields.items()))
            head, newline, rest = line.partition("\n")
            line = f"{head} [{tags}]{newline}{rest}"
        return self.scrub(line)


class JsonFormatter(_Scrubbing):
    """One JSON object per line; tracebacks go in ``exception``."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "process": record.process,
        }
        entry.update(_context_of(record))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return self.scrub(json.dumps(entry, default=str))


def formatter_for(settings: Settings) -> logging.Formatter:
    secrets = settings.secret_values()
    if settings.log_format == "json":
        return JsonFormatter(secrets=secrets)
    return TextFormatter(secrets=secrets)


def faust_logging_config(settings: Settings) -> dict[str, Any]:
    """``logging_config`` for the Faust app, merged into the one ``faust worker -l`` builds.

    Only the handler is replaced: the root level still comes from ``-l``.
    """
    return {
        "version": 1,
        "merge": True,
        "formatters": {"pipeline": {"()": lambda: formatter_for(settings)}},
        "handlers": {
            "default": {
                "class": "logging.StreamHandler",
                "formatter": "pipeline",
                "stream": "ext://sys.stdout",
            }
        },
    }


def configure(settings: Settings, level: str | int = "INFO") -> None:
    """Configure the root logger of a non-Faust process (stderr, the settings' format)."""
    handler = logging.StreamHandler()
    handler.setFormatter(formatter_for(settings))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper() if isinstance(level, str) else level)
    for name in LIBRARIES_WITH_OWN_HANDLERS:
        library = logging.getLogger(name)
        library.handlers.clear()
        library.propagate = True
