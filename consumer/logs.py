"""Structured logs as Cloud Logging reads them: one JSON object per line with `severity`, `message`
and `logging.googleapis.com/trace` taken from the request's `X-Cloud-Trace-Context` header."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

TRACE_KEY = "logging.googleapis.com/trace"
_trace: ContextVar[str | None] = ContextVar("trace", default=None)

# Python level names → Cloud Logging severities.
SEVERITIES: dict[str, str] = {
    "DEBUG": "DEBUG",
    "INFO": "INFO",
    "WARNING": "WARNING",
    "ERROR": "ERROR",
    "CRITICAL": "CRITICAL",
}


def trace_resource(header: str | None, project: str) -> str | None:
    """`X-Cloud-Trace-Context: TRACE_ID/SPAN_ID;o=1` → `projects/P/traces/TRACE_ID`."""
    if not header:
        return None
    trace_id = header.split("/", 1)[0].split(";", 1)[0].strip()
    if not trace_id:
        return None
    return f"projects/{project}/traces/{trace_id}"


@contextmanager
def request_trace(header: str | None, project: str) -> Iterator[None]:
    """Makes every log line written inside the block carry the request's trace."""
    token = _trace.set(trace_resource(header, project))
    try:
        yield
    finally:
        _trace.reset(token)


def set_trace(header: str | None, project: str) -> object:
    return _trace.set(trace_resource(header, project))


def reset_trace(token: object) -> None:
    _trace.reset(token)  # type: ignore[arg-type]


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "severity": SEVERITIES.get(record.levelname, "DEFAULT"),
            "message": record.getMessage(),
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "logger": record.name,
        }
        trace = _trace.get()
        if trace:
            entry[TRACE_KEY] = trace
        entry.update(getattr(record, "fields", {}) or {})
        if record.exc_info:
            entry["stack_trace"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


def configure_logging(*, json_lines: bool = True, level: str = "INFO") -> None:
    """JSON lines on stdout for Cloud Run; plain text for a terminal."""
    handler = logging.StreamHandler(sys.stdout)
    if json_lines:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def log(logger: logging.Logger, level: int, message: str, **fields: Any) -> None:
    """A log line with structured fields (job_id, seq, reason, …) as top-level JSON keys."""
    logger.log(level, message, extra={"fields": fields})
