"""Spans around the job core's store writes (tracing on): the store wrapped for the JobManager.

A write made while an RPC is served (creating a job) hangs under the current span; a write
about a job made elsewhere (the runner step marking it RUNNING, storing its end) hangs under
the job's execute span. Writes of no traced job make no span. Everything else passes through.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any, cast

from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode

from gateway.store.base import Store
from gateway.telemetry.tracing import Tracing

# The job writes that make a span, by the name of the store method: its first argument is the
# NewJob (create_job) or the job's id. mark_running and mark_submitting make none: every job
# makes one of them, and the execute span's "state" event (RUNNING, SUBMITTING) already marks
# the moment; a span each would cost every job a span's building and export (about a tenth of
# the tracing's cost per job) and say only how long one SQLite commit took.
TRACED_WRITES = frozenset({"create_job", "mark_queued_again", "mark_cancelling", "finish_job"})


def _sampled(ctx: Any) -> bool:
    return bool(trace.get_current_span(ctx).get_span_context().trace_flags.sampled)


class TracedStore:
    """Delegates to `inner`; its job writes make a `qgateway.store.<method>` span."""

    def __init__(self, inner: Store, tracing: Tracing) -> None:
        self._inner = inner
        self._tracing = tracing

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._inner, name)
        if name not in TRACED_WRITES:
            return attribute
        traced = self._traced(name, attribute)
        setattr(self, name, traced)  # wrapped once per method
        return traced

    def _traced(
        self, name: str, write: Callable[..., Awaitable[Any]]
    ) -> Callable[..., Awaitable[Any]]:
        tracing = self._tracing
        span_name = f"qgateway.store.{name}"

        @functools.wraps(write)
        async def call(first: Any, *args: Any, **kwargs: Any) -> Any:
            if trace.get_current_span().get_span_context().trace_flags.sampled:
                parent = None  # the current span (the RPC creating the job)
            else:
                job_id = first if isinstance(first, str) else getattr(first, "id", "")
                parent = tracing.job_context(job_id)
                if parent is None or not _sampled(parent):
                    return await write(first, *args, **kwargs)
            # Not made current: nothing is traced inside a store write, and attaching the
            # span's context (start_as_current_span) costs as much again as the span.
            span = tracing.tracer.start_span(span_name, context=parent)
            try:
                return await write(first, *args, **kwargs)
            except Exception as exc:
                span.record_exception(exc)
                span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
                raise
            finally:
                span.end()

        return call


def traced_store(store: Store, tracing: Tracing | None) -> Store:
    """`store`, with spans around its job writes when tracing is on."""
    return store if tracing is None else cast(Store, TracedStore(store, tracing))
