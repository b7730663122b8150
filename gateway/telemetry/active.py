"""The process's telemetry, as hot paths see it: None while it is off.

Hot paths (worker calls, runners, retries) read these module attributes and do nothing more
when they are off: with telemetry off there is no OpenTelemetry import, no span object and no
meter. `gateway.telemetry.setup` sets them when `[telemetry]` turns something on.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gateway.telemetry.metrics import GatewayMetrics
    from gateway.telemetry.tracing import Tracing

tracing: Tracing | None = None
metrics: GatewayMetrics | None = None
# Either of them is on.
enabled = False

# The backend whose runner is being called (set by gateway.telemetry.runner), so a provider
# retry deep inside an adapter is counted against its backend. Context variables follow
# asyncio tasks and anyio/asyncio worker threads.
backend: contextvars.ContextVar[str] = contextvars.ContextVar("qgateway_backend", default="")


class CallJob:
    """Whether a SubmitJob or Run call has its job (created, or an earlier request's found):
    an error after that (Run's wait past its deadline, the caller gone) is no refusal."""

    __slots__ = ("known",)

    def __init__(self) -> None:
        self.known = False


# Set by the RPC interceptor on SubmitJob and Run while metrics are on (a holder: the handler
# may run in a copy of the call's context).
call_job: contextvars.ContextVar[CallJob | None] = contextvars.ContextVar(
    "qgateway_call_job", default=None
)


def job_known() -> None:
    """The current SubmitJob or Run call has its job."""
    holder = call_job.get()
    if holder is not None:
        holder.known = True


def provider_retry(attempt: int, exc: BaseException, delay: float) -> None:
    """A provider call is retried (gateway.runtime.retry): counted, and an event on the
    current span."""
    name = backend.get()
    if metrics is not None:
        metrics.provider_retry(name)
    if tracing is not None:
        tracing.current_event(
            "retry",
            {
                "qgateway.retry.attempt": attempt,
                "qgateway.retry.delay_s": delay,
                "error.type": type(exc).__name__,
            },
        )


_OFF: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()


def span(
    name: str, attributes: Mapping[str, Any] | None = None
) -> contextlib.AbstractContextManager[Any]:
    """A child span of the current one around a block; with tracing off a shared no-op."""
    return _OFF if tracing is None else tracing.span(name, attributes)


def traceparent() -> str:
    """The RPC's span as a W3C traceparent ("" when off)."""
    return "" if tracing is None else tracing.current_traceparent()


def job_traceparent() -> str:
    """traceparent(), for a job being created: its spans will hang under this RPC."""
    return "" if tracing is None else tracing.job_traceparent()


def job_not_created(traceparent: str) -> None:
    """A job stamped by job_traceparent() was not created after all."""
    if tracing is not None:
        tracing.job_not_created(traceparent)


def install(new_tracing: Tracing | None, new_metrics: GatewayMetrics | None) -> None:
    global tracing, metrics, enabled
    tracing, metrics = new_tracing, new_metrics
    enabled = tracing is not None or metrics is not None
