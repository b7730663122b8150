"""Traces: the tracer, W3C context from request metadata, and the spans of a job's life.

Imported only when `[telemetry.tracing] enabled = true` (it imports the OpenTelemetry API).

A job's spans hang under the RPC span that created it (SubmitJob or Run): the job remembers
that span's context (`Job.trace_context`, a W3C traceparent stored with the job), so GetJob
shows the trace id and a job recovered after a restart starts new spans that link to it.

    rpc qgateway.v1.JobService/Run                      (the interceptor)
      qgateway.admission                                (api: validate, compile, store)
        qgateway.compile                                (timed inside the compile worker)
        qgateway.store.create_job
      qgateway.job.queue                                (created -> started)
      qgateway.job.execute                              (started -> final state; events)
        qgateway.runner.submit / .wait / .reattach     (provider runners' calls)
          qgateway.worker.execute                       (timed inside the simulator worker)
        qgateway.store.finish_job                       (marking it RUNNING: an event)

Worker processes export nothing themselves: the gateway sends the trace flag with the work,
the worker returns its own start and end times with the reply, and the gateway records the
span (attribute process.pid names the worker). So workers need no exporter, no collector
address and no OpenTelemetry import; sampling is decided once, in the gateway; and a worker
that dies still gets its span (timed by the gateway, marked as an error).
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from opentelemetry import context, trace
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.trace import Link, Span, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from gateway.domain.jobs import Job, JobState
from gateway.jobs.hooks import Transition

TRACER_NAME = "qgateway"
# The W3C headers accepted from callers (lower case, as gRPC metadata keys are).
TRACE_HEADERS = ("traceparent", "tracestate", "baggage")

_NOTHING: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
_PROPAGATOR = CompositePropagator([TraceContextTextMapPropagator(), W3CBaggagePropagator()])
# Their parsers log a warning per malformed entry of a caller's header, hundreds per call and
# before authentication (any client could fill the log): a bad header is ignored as if absent,
# silently.
for _parser_log in ("opentelemetry.baggage.propagation", "opentelemetry.trace.span"):
    logging.getLogger(_parser_log).setLevel(logging.ERROR)
_TRACEPARENT = TraceContextTextMapPropagator()

# Jobs followed at once (open spans); beyond it the oldest entry is dropped.
MAX_TRACKED_JOBS = 100_000

# The context of the RPC being served (set by the interceptor): a job created in it hangs its
# spans under the RPC's span, not under whatever child span is current when it is stored.
RPC_CONTEXT: contextvars.ContextVar[context.Context | None] = contextvars.ContextVar(
    "qgateway_rpc_context", default=None
)

JOB_ID = "qgateway.job.id"
JOB_BACKEND = "qgateway.job.backend"
JOB_TENANT = "qgateway.tenant"
JOB_STATE = "qgateway.job.state"


def extract(metadata: Sequence[tuple[str, Any]] | None, max_bytes: int) -> context.Context | None:
    """The caller's trace context and baggage from gRPC metadata; None when it sent none.

    A header longer than `max_bytes` (or not text) is ignored, as if absent: a caller cannot
    make the gateway parse or store an unbounded header, and a bad header is never an error.
    """
    carrier: dict[str, str] = {}
    for key, value in metadata or ():
        if key in TRACE_HEADERS and isinstance(value, str) and len(value) <= max_bytes:
            carrier[key] = value
    if not carrier:
        return None
    return _PROPAGATOR.extract(carrier)


def traceparent_of(span_context: trace.SpanContext) -> str:
    """A span context as a W3C traceparent ("" when invalid)."""
    if not span_context.is_valid:
        return ""
    # Formatted here (version 00, as the W3C propagator writes it): one per job created, where
    # the propagator's inject builds a context and a carrier first.
    return (
        f"00-{span_context.trace_id:032x}-{span_context.span_id:016x}-"
        f"{span_context.trace_flags:02x}"
    )


def span_context_of(traceparent: str) -> trace.SpanContext | None:
    """The span context of a stored traceparent; None when empty or malformed."""
    if not traceparent:
        return None
    ctx = _TRACEPARENT.extract({"traceparent": traceparent})
    span_context = trace.get_current_span(ctx).get_span_context()
    return span_context if span_context.is_valid else None


def trace_id_of(traceparent: str) -> str:
    """The 32-hex-digit trace id of a stored traceparent ("" when none)."""
    span_context = span_context_of(traceparent)
    return "" if span_context is None else trace.format_trace_id(span_context.trace_id)


def _ns(when: Any) -> int | None:
    return None if when is None else int(when.timestamp() * 1e9)


@dataclass
class _JobTrace:
    """What the tracer keeps of a job until it ends."""

    parent: context.Context
    links: Sequence[Link] = ()
    execute: Span | None = None
    queue_ended: bool = False


class Tracing:
    """The gateway's tracer and the lifecycle hook that turns job transitions into spans.

    Args:
        tracer: From the configured TracerProvider.
        max_header_bytes: Longest W3C header accepted from a caller.
    """

    def __init__(self, tracer: trace.Tracer, max_header_bytes: int) -> None:
        self.tracer = tracer
        self.max_header_bytes = max_header_bytes
        self._jobs: dict[str, _JobTrace] = {}
        # Contexts of RPCs that created a job in this process, by the job's trace_context.
        self._origins: dict[str, context.Context] = {}

    # ------------------------------------------------------------------ helpers for callers

    def span(
        self, name: str, attributes: Mapping[str, Any] | None = None
    ) -> contextlib.AbstractContextManager[Any]:
        """A child of the current span, current inside the block; records an exception.
        Under a trace that is not sampled nothing is made (the parent-based sampler would
        drop the child anyway)."""
        if not trace.get_current_span().get_span_context().trace_flags.sampled:
            return _NOTHING
        return self.tracer.start_as_current_span(name, attributes=attributes)

    def current_traceparent(self) -> str:
        """The RPC's span (else the current one) as a traceparent (audit records name it)."""
        return traceparent_of(trace.get_current_span(RPC_CONTEXT.get()).get_span_context())

    def job_traceparent(self) -> str:
        """current_traceparent, stamped on a job being created; the RPC's context is kept
        until the job's creation is heard of."""
        rpc = RPC_CONTEXT.get()
        traceparent = traceparent_of(trace.get_current_span(rpc).get_span_context())
        if traceparent:
            # The job may start before its QUEUED transition is heard of (a local run starts
            # while the commit is in flight): its spans find the RPC's context by this key.
            if len(self._origins) >= MAX_TRACKED_JOBS:
                del self._origins[next(iter(self._origins))]
            # The span alone: the RPC's context also holds the caller's baggage (kilobytes).
            self._origins[traceparent] = trace.set_span_in_context(
                trace.get_current_span(rpc), context.Context()
            )
        return traceparent

    def job_not_created(self, traceparent: str) -> None:
        """The job stamped with `traceparent` was not created (refused, or an earlier job of
        its request_id): no transition will claim its context."""
        if traceparent:
            self._origins.pop(traceparent, None)

    def job_context(self, job_id: str) -> context.Context | None:
        """The context a job's work runs in: its execute span, else where it was created."""
        entry = self._jobs.get(job_id)
        if entry is None:
            return None
        if entry.execute is not None:
            return trace.set_span_in_context(entry.execute, entry.parent)
        return entry.parent

    def execute_span(self, job: Job) -> Span:
        """The job's execute span, started now if the RUNNING transition has not started it
        (a local run starts before RUNNING is committed)."""
        entry = self._entry(job)
        if entry.execute is None:
            entry.execute = self.tracer.start_span(
                "qgateway.job.execute",
                context=entry.parent,
                links=entry.links,
                attributes={
                    JOB_ID: job.id,
                    JOB_BACKEND: job.placement or job.backend,
                    JOB_TENANT: job.tenant,
                },
            )
        return entry.execute

    def job_context_for(self, job: Job) -> context.Context:
        """The context of the job's execute span (started now if need be)."""
        span = self.execute_span(job)
        return trace.set_span_in_context(span, self._jobs[job.id].parent)

    @contextlib.contextmanager
    def current(self, ctx: context.Context) -> Iterator[None]:
        """Makes `ctx` current inside the block."""
        token = context.attach(ctx)
        try:
            yield
        finally:
            context.detach(token)

    def sampled(self) -> bool:
        """Whether the current span is recorded (work outside a sampled trace is not)."""
        return trace.get_current_span().get_span_context().trace_flags.sampled

    async def worker_call(
        self,
        name: str,
        pid: int,
        exchange: Callable[[tuple[Any, ...]], Awaitable[tuple[int, int, tuple[Any, ...]]]],
        message: tuple[Any, ...],
    ) -> tuple[Any, ...]:
        """Sends `message` to a worker as traced work and records its span: the worker's own
        start and end times, or the gateway's when the worker died or could not time it."""
        parent = context.get_current()
        started = time.time_ns()
        try:
            worker_start, worker_end, reply = await exchange(message)
        except BaseException as exc:
            self.worker_span(name, parent, pid, started, time.time_ns(), type(exc).__name__)
            raise
        if not worker_start:
            worker_start, worker_end = started, time.time_ns()
        error = None
        if reply[0] != "ok":
            error = reply[1] if len(reply) > 1 and isinstance(reply[1], str) else str(reply[0])
        self.worker_span(name, parent, pid, worker_start, worker_end, error)
        return reply

    def worker_span(
        self,
        name: str,
        parent: context.Context | None,
        pid: int,
        start_ns: int,
        end_ns: int,
        error: str | None,
    ) -> None:
        """Records a span timed inside a worker process (or by the gateway, if it died)."""
        span = self.tracer.start_span(
            name,
            context=parent,
            start_time=start_ns,
            attributes={"process.pid": pid},
        )
        if error is not None:
            span.set_status(Status(StatusCode.ERROR, error))
        span.end(end_time=end_ns)

    def current_event(self, name: str, attributes: Mapping[str, Any]) -> None:
        """An event on the current span (nothing outside a recorded one)."""
        trace.get_current_span().add_event(name, dict(attributes))

    def _add_event(self, job_id: str, name: str, attributes: Mapping[str, Any]) -> None:
        """An event on the job's execute span (retries, breaker transitions), if it has one."""
        entry = self._jobs.get(job_id)
        if entry is not None and entry.execute is not None:
            entry.execute.add_event(name, dict(attributes))

    # ------------------------------------------------------------------ lifecycle hook

    def _entry(self, job: Job) -> _JobTrace:
        entry = self._jobs.get(job.id)
        if entry is not None:
            return entry
        local = self._origins.pop(job.trace_context, None) if job.trace_context else None
        if local is not None:
            # Created by an RPC of this process (the common case: no traceparent to parse).
            entry = _JobTrace(parent=local)
            self._track(job.id, entry)
            return entry
        current = trace.get_current_span().get_span_context()
        origin = span_context_of(job.trace_context)
        if current.is_valid and (origin is None or origin.trace_id == current.trace_id):
            entry = _JobTrace(parent=RPC_CONTEXT.get() or context.get_current())
        elif origin is not None:
            # Recovered after a restart (or claimed from another replica): new spans, linked
            # to the trace the job was created in.
            entry = _JobTrace(
                parent=context.Context(),
                links=(Link(origin, {"qgateway.link": "job.created"}),),
            )
        else:
            entry = _JobTrace(parent=context.Context())
        self._track(job.id, entry)
        return entry

    def _track(self, job_id: str, entry: _JobTrace) -> None:
        if len(self._jobs) >= MAX_TRACKED_JOBS:
            # Jobs that end elsewhere (another replica) never leave: forget the oldest, its
            # execute span ended (an open span is never exported).
            oldest = next(iter(self._jobs))
            _left(self._jobs.pop(oldest), "no longer followed by this gateway")
        self._jobs[job_id] = entry

    def end_open(self) -> None:
        """Ends the execute spans of jobs still running (the gateway stopping: they are
        picked up again after its restart, in spans of their own linked to the job's trace):
        an open span is never exported, and the job's worker and runner spans had no
        parent."""
        jobs, self._jobs = self._jobs, {}
        for entry in jobs.values():
            _left(entry, "gateway stopping; the job is recovered at its next start")

    def on_transition(self, transition: Transition) -> None:
        job = transition.job
        state = job.state
        if transition.previous is None:
            entry = self._entry(job)
            span = trace.get_current_span(entry.parent)
            span.add_event("job created", {JOB_ID: job.id, JOB_BACKEND: job.placement})
            if job.placement and job.placement != job.backend:
                span.add_event(
                    "fallback", {"qgateway.backend": job.backend, JOB_BACKEND: job.placement}
                )
            return
        if state in (JobState.SUBMITTING, JobState.RUNNING):
            self._started(job)
            if state is JobState.RUNNING and job.attempts > 1:
                self._add_event(job.id, "retry", {"qgateway.job.attempt": job.attempts})
            return
        if state is JobState.CANCELLING:
            self._add_event(job.id, "cancel requested", {})
            return
        move = transition.breaker
        if move is not None:  # on the span of the job whose outcome moved it
            self._add_event(
                job.id,
                "breaker transition",
                {"qgateway.backend": job.placement or job.backend,
                 "qgateway.breaker.from": move.before.value,
                 "qgateway.breaker.to": move.after.value},
            )  # fmt: skip
        if state.is_final:
            self._finished(job)

    def _started(self, job: Job) -> None:
        entry = self._entry(job)
        if not entry.queue_ended:
            entry.queue_ended = True
            queue = self.tracer.start_span(
                "qgateway.job.queue",
                context=entry.parent,
                links=entry.links,
                start_time=_ns(job.created_at),
                attributes={JOB_ID: job.id, JOB_BACKEND: job.placement or job.backend},
            )
            queue.end(end_time=_ns(job.started_at) or time.time_ns())
        span = self.execute_span(job)
        span.add_event("state", {JOB_STATE: job.state.value})

    def _finished(self, job: Job) -> None:
        entry = self._jobs.pop(job.id, None)
        if entry is None or entry.execute is None:
            return  # never started (cancelled or expired in the queue): no execute span
        span = entry.execute
        span.set_attribute(JOB_STATE, job.state.value)
        span.add_event("state", {JOB_STATE: job.state.value})
        if job.error is not None:
            span.set_status(Status(StatusCode.ERROR, job.error.reason))
            span.set_attribute("error.type", job.error.reason)
        span.end()


def _left(entry: _JobTrace, why: str) -> None:
    """Ends a job's execute span (if it started) that no final state will end."""
    if entry.execute is not None:
        entry.execute.add_event("left", {"qgateway.reason": why})
        entry.execute.end()
