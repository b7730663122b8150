"""Structured logs: one JSON object per line, with trace and span ids and the job's fields; one
line per job transition; key-shaped secrets masked.

Fields: `time` (UTC, ISO 8601), `level`, `logger`, `message`, and when known `trace_id`,
`span_id`, `job` (jobs/{id}), `tenant`, `backend`, `state`, `previous`; `exception` with the
traceback. A record passes job fields as `extra={"job": ..., "tenant": ..., "backend": ...}`.
"""

from __future__ import annotations

import json
import logging
import re
from datetime import UTC, datetime
from typing import Any

from gateway.jobs.hooks import Transition
from gateway.telemetry import active

# Extra record attributes copied into the JSON object.
FIELDS = ("job", "tenant", "backend", "state", "previous", "error")
TRANSITIONS_LOGGER = "gateway.jobs.transitions"
# API keys (qgw_<prefix>_<secret>) and bearer tokens, wherever a message might carry one.
_SECRET = re.compile(r"qgw_[A-Za-z0-9]+_[A-Za-z0-9_\-]+|(?i:bearer)\s+[A-Za-z0-9._\-~+/]+=*")


def redact(text: str) -> str:
    """`text` with anything shaped like an API key or bearer token masked."""
    return _SECRET.sub("[REDACTED]", text)


def _trace_ids() -> tuple[str, str] | None:
    if active.tracing is None:
        return None
    from opentelemetry import trace

    span_context = trace.get_current_span().get_span_context()
    if not span_context.is_valid:
        return None
    return trace.format_trace_id(span_context.trace_id), trace.format_span_id(span_context.span_id)


class JsonFormatter(logging.Formatter):
    """One JSON object per record, one line."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        ids = getattr(record, "trace_ids", None) or _trace_ids()
        if ids is not None:
            entry["trace_id"], entry["span_id"] = ids
        for name in FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                entry[name] = value if isinstance(value, int | float) else redact(str(value))
        if record.exc_info:
            entry["exception"] = redact(self.formatException(record.exc_info))
        return json.dumps(entry, ensure_ascii=False)


# The logger grpc's asyncio server reports a servicer's failures on.
GRPC_SERVER_LOGGER = "grpc._cython.cygrpc"


class QuietPeerGone(logging.Filter):
    """grpc's asyncio server logs an ERROR with a traceback whenever it cannot write a response
    to a call whose client has gone (an ExecuteBatchError on a send): every client that
    abandoned a result stream wrote one, so any tenant could fill the log with them. It also
    logs one for every request metadata value that is not UTF-8 (`Invalid encoding on ...`,
    each time the call's metadata is read), and the value is decoded anyway: a caller without
    credentials sending a Health.Check with 300 one-byte values wrote ~90 KB of tracebacks.
    Such a record passes only when DEBUG is on, as a line without its traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if type(error).__name__ not in ("ExecuteBatchError", "UnicodeDecodeError"):
            return True
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        record.exc_info, record.exc_text = None, None
        return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)


def use_json(level: int = logging.INFO) -> None:
    """Every record of the process as JSON lines on stderr (replaces the root handlers'
    formatters)."""
    root = logging.getLogger()
    formatter = JsonFormatter()
    if not root.handlers:
        logging.basicConfig(level=level)
    for handler in root.handlers:
        handler.setFormatter(formatter)


class TransitionLog:
    """Lifecycle hook: one INFO line per job state change (logger TRANSITIONS_LOGGER)."""

    def __init__(self) -> None:
        self._log = logging.getLogger(TRANSITIONS_LOGGER)

    def on_transition(self, transition: Transition) -> None:
        if not self._log.isEnabledFor(logging.INFO):
            return
        job = transition.job
        extra: dict[str, Any] = {
            "job": f"jobs/{job.id}",
            "tenant": job.tenant,
            "backend": job.placement or job.backend,
            "state": job.state.value,
            "previous": None if transition.previous is None else transition.previous.value,
        }
        if job.error is not None:
            extra["error"] = job.error.reason
        ids = _job_trace_ids(job.id, job.trace_context)
        if ids is not None:
            extra["trace_ids"] = ids
        self._log.info(
            "job %s %s -> %s",
            job.id,
            "created" if transition.previous is None else transition.previous.value,
            job.state.value,
            extra=extra,
        )


def _job_trace_ids(job_id: str, traceparent: str) -> tuple[str, str] | None:
    """The job's trace: the current span when there is one, else the job's execute span,
    else the stored context (the span the job was created under)."""
    current = _trace_ids()
    if current is not None:
        return current
    tracing = active.tracing
    job_context = None if tracing is None else tracing.job_context(job_id)
    if job_context is not None:
        from opentelemetry import trace

        span_context = trace.get_current_span(job_context).get_span_context()
        if span_context.is_valid:
            return (
                trace.format_trace_id(span_context.trace_id),
                trace.format_span_id(span_context.span_id),
            )
    if not traceparent:
        return None
    parts = traceparent.split("-")
    return (parts[1], parts[2]) if len(parts) == 4 else None
