"""Unit tests of gateway.telemetry's tracing, logs and configuration (in-process, an in-memory
span exporter; the end-to-end span tree across processes is tests/e2e/test_telemetry.py)."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import grpc
import pytest
from opentelemetry import baggage, context, trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from pydantic import ValidationError

from gateway.backends.runner import ExecutionModel, RunHandle
from gateway.config import ConfigError, GatewayConfig
from gateway.domain.errors import NotFound
from gateway.domain.jobs import Job, JobError, JobState
from gateway.interceptors.tracing import TelemetryInterceptor
from gateway.jobs.hooks import Hooks, Transition
from gateway.runtime.breaker import BreakerMove, BreakerState
from gateway.telemetry import active
from gateway.telemetry.logs import JsonFormatter, TransitionLog, redact
from gateway.telemetry.runner import ObservedRunner
from gateway.telemetry.settings import TelemetryConfig
from gateway.telemetry.setup import Telemetry
from gateway.telemetry.tracing import (
    RPC_CONTEXT,
    Tracing,
    extract,
    span_context_of,
    trace_id_of,
    traceparent_of,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)
PARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.fixture
def spans() -> Iterator[tuple[Tracing, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield Tracing(provider.get_tracer("test"), max_header_bytes=256), exporter
    provider.shutdown()


def _job(state: JobState, trace_context: str = "", **kwargs: Any) -> Job:
    return Job(
        id="j1",
        tenant="acme",
        request_id="",
        backend="aer",
        placement="aer",
        state=state,
        created_at=T0,
        num_pubs=1,
        seed=1,
        trace_context=trace_context,
        **kwargs,
    )


def _named(exporter: InMemorySpanExporter, name: str) -> ReadableSpan:
    (span,) = [s for s in exporter.get_finished_spans() if s.name == name]
    return span


def test_w3c_context_and_baggage_are_taken_from_metadata() -> None:
    ctx = extract([("traceparent", PARENT), ("baggage", "team=qa"), ("x", "y")], 256)
    assert ctx is not None
    span_context = trace.get_current_span(ctx).get_span_context()
    assert trace.format_trace_id(span_context.trace_id) == "0af7651916cd43dd8448eb211c80319c"
    assert span_context.is_remote
    assert baggage.get_baggage("team", ctx) == "qa"
    assert extract([("authorization", "Bearer x")], 256) is None


def test_an_oversized_or_malformed_header_is_ignored_not_an_error() -> None:
    assert extract([("traceparent", PARENT + "0" * 300)], 256) is None
    ctx = extract([("traceparent", "00-garbage")], 256)
    assert ctx is not None and not trace.get_current_span(ctx).get_span_context().is_valid
    assert extract([("traceparent-bin", b"\x00")], 256) is None


def test_traceparent_round_trip() -> None:
    span_context = span_context_of(PARENT)
    assert span_context is not None
    assert traceparent_of(span_context) == PARENT
    assert trace_id_of(PARENT) == "0af7651916cd43dd8448eb211c80319c"
    assert trace_id_of("") == "" and span_context_of("nonsense") is None
    assert _job(JobState.QUEUED, PARENT).trace_id == "0af7651916cd43dd8448eb211c80319c"
    assert _job(JobState.QUEUED).trace_id == ""


def _in_rpc(tracing: Tracing) -> Iterator[trace.Span]:
    with tracing.tracer.start_as_current_span("rpc") as span:
        token = RPC_CONTEXT.set(context.get_current())
        try:
            yield span
        finally:
            RPC_CONTEXT.reset(token)


def test_a_jobs_spans_hang_under_the_rpc_that_created_it(
    spans: tuple[Tracing, InMemorySpanExporter],
) -> None:
    tracing, exporter = spans
    rpc_gen = _in_rpc(tracing)
    rpc = next(rpc_gen)
    with tracing.span("qgateway.admission"):
        stamp = tracing.job_traceparent()  # what admission stores with the job
        tracing.on_transition(Transition(_job(JobState.QUEUED, stamp), None, T0))
    next(rpc_gen, None)
    assert trace_id_of(stamp) == trace.format_trace_id(rpc.get_span_context().trace_id)
    # The job runs in another task: no current span there.
    started = _job(JobState.RUNNING, stamp, started_at=T0 + timedelta(seconds=1), attempts=2)
    tracing.on_transition(Transition(started, JobState.QUEUED, T0))
    failed = _job(JobState.FAILED, stamp, error=JobError.of("EXECUTION_FAILED", "boom"))
    opened = BreakerMove(BreakerState.CLOSED, BreakerState.OPEN)  # its failure opened it
    tracing.on_transition(Transition(failed, JobState.RUNNING, T0, opened))
    rpc_id = rpc.get_span_context().span_id
    queue = _named(exporter, "qgateway.job.queue")
    execute = _named(exporter, "qgateway.job.execute")
    assert queue.parent is not None and queue.parent.span_id == rpc_id
    assert execute.parent is not None and execute.parent.span_id == rpc_id
    assert queue.end_time is not None and queue.start_time is not None
    assert queue.end_time - queue.start_time == 1_000_000_000  # created -> started
    assert execute.status.status_code is trace.StatusCode.ERROR
    assert execute.attributes is not None
    assert execute.attributes["error.type"] == "EXECUTION_FAILED"
    assert [e.name for e in execute.events] == ["state", "retry", "breaker transition", "state"]
    moved = execute.events[2].attributes
    assert moved is not None
    assert (moved["qgateway.breaker.from"], moved["qgateway.breaker.to"]) == ("CLOSED", "OPEN")
    assert tracing.job_context("j1") is None  # forgotten once final


def test_a_job_not_created_leaves_nothing_behind_and_no_baggage_is_kept(
    spans: tuple[Tracing, InMemorySpanExporter],
) -> None:
    # A tenant over its quota submits again and again with maximal baggage: each refused job's
    # stamp used to keep the RPC's whole context (baggage included) until evicted.
    tracing, _ = spans
    rpc_gen = _in_rpc(tracing)
    next(rpc_gen)
    token = context.attach(baggage.set_baggage("k", "v" * 4000))
    try:
        stamp = tracing.job_traceparent()
    finally:
        context.detach(token)
    next(rpc_gen, None)
    kept = tracing._origins[stamp]
    assert baggage.get_all(kept) == {}  # the span only
    assert trace.get_current_span(kept).get_span_context().is_valid
    tracing.job_not_created(stamp)
    assert stamp not in tracing._origins


def test_a_recovered_job_starts_a_new_trace_linked_to_its_original(
    spans: tuple[Tracing, InMemorySpanExporter],
) -> None:
    tracing, exporter = spans
    job = _job(JobState.RUNNING, PARENT, started_at=T0)
    tracing.on_transition(Transition(job, JobState.RUNNING, T0))
    tracing.on_transition(Transition(_job(JobState.SUCCEEDED, PARENT), JobState.RUNNING, T0))
    execute = _named(exporter, "qgateway.job.execute")
    assert execute.parent is None
    assert execute.context is not None
    assert trace.format_trace_id(execute.context.trace_id) != trace_id_of(PARENT)
    (link,) = execute.links
    assert trace.format_trace_id(link.context.trace_id) == trace_id_of(PARENT)


def test_no_child_span_outside_a_sampled_trace(
    spans: tuple[Tracing, InMemorySpanExporter],
) -> None:
    tracing, exporter = spans
    with tracing.span("orphan") as nothing:
        assert nothing is None and not tracing.sampled()
    assert exporter.get_finished_spans() == ()


def test_a_worker_span_has_the_workers_own_times(
    spans: tuple[Tracing, InMemorySpanExporter],
) -> None:
    tracing, exporter = spans

    async def exchange(message: tuple[Any, ...]) -> tuple[int, int, tuple[Any, ...]]:
        return 1_000, 5_000, ("ok", message[1])

    async def dead(message: tuple[Any, ...]) -> tuple[int, int, tuple[Any, ...]]:
        raise ConnectionError("gone")

    async def main() -> None:
        with tracing.tracer.start_as_current_span("parent"):
            assert tracing.sampled()
            reply = await tracing.worker_call("w.ok", 42, exchange, ("run", "payload"))
            assert reply == ("ok", "payload")
            with pytest.raises(ConnectionError):
                await tracing.worker_call("w.dead", 43, dead, ("run", None))

    asyncio.run(main())
    ok, gone = _named(exporter, "w.ok"), _named(exporter, "w.dead")
    assert (ok.start_time, ok.end_time) == (1_000, 5_000)
    assert ok.attributes is not None and ok.attributes["process.pid"] == 42
    assert gone.status.status_code is trace.StatusCode.ERROR
    assert ok.parent is not None and ok.parent.span_id == _named(exporter, "parent").context.span_id


def test_json_lines_carry_the_trace_and_mask_secrets(
    spans: tuple[Tracing, InMemorySpanExporter],
) -> None:
    tracing, _ = spans
    formatter = JsonFormatter()
    active.install(tracing, None)
    try:
        with tracing.tracer.start_as_current_span("x") as span:
            record = logging.LogRecord(
                "gateway", logging.INFO, __file__, 1, "key %s", ("qgw_abcd1234_s3cr3tVALUE",), None
            )
            record.job = "jobs/j1"
            line = json.loads(formatter.format(record))
    finally:
        active.install(None, None)
    assert line["trace_id"] == trace.format_trace_id(span.get_span_context().trace_id)
    assert line["job"] == "jobs/j1" and line["level"] == "INFO"
    assert "s3cr3t" not in json.dumps(line)
    assert redact("Authorization: Bearer eyJhbGciOi.x.y") == "Authorization: [REDACTED]"


def test_one_log_line_per_transition(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "gateway.jobs.transitions")
    hook = TransitionLog()
    hook.on_transition(Transition(_job(JobState.QUEUED, PARENT), None, T0))
    hook.on_transition(Transition(_job(JobState.RUNNING, PARENT), JobState.QUEUED, T0))
    assert [r.state for r in caplog.records] == ["QUEUED", "RUNNING"]  # type: ignore[attr-defined]
    assert caplog.records[1].trace_ids == (trace_id_of(PARENT), PARENT.split("-")[2])  # type: ignore[attr-defined]


def test_config_is_strict_and_off_by_default() -> None:
    config = GatewayConfig()
    assert not config.telemetry.enabled and not config.telemetry.logs.json_lines
    with pytest.raises(ValidationError):
        TelemetryConfig.model_validate({"tracing": {"enabld": True}})
    with pytest.raises(ValidationError):
        TelemetryConfig.model_validate({"tracing": {"enabled": True, "otlp_endpoint": "host:1"}})
    with pytest.raises(ValidationError):
        TelemetryConfig.model_validate({"tracing": {"sample_ratio": 2}})
    for listen in ("localhost", "0.0.0.0:abc", "0.0.0.0:99999", "host:-1", "host:\u0668\u0660"):
        with pytest.raises(ValidationError):  # a config error, not a traceback at start
            TelemetryConfig.model_validate({"metrics": {"prometheus_listen": listen}})
    on = TelemetryConfig.model_validate({"metrics": {"prometheus_listen": "127.0.0.1:0"}})
    assert on.enabled and on.metrics.enabled and not on.tracing.enabled
    assert TelemetryConfig.model_validate({"logs": {"json": True}}).logs.json_lines


def test_off_costs_nothing() -> None:
    telemetry = Telemetry(TelemetryConfig())
    telemetry.install()
    assert telemetry.interceptors() == [] and active.tracing is None and not active.enabled
    assert active.traceparent() == "" and active.job_traceparent() == ""
    # No OpenTelemetry import at all in a gateway process with telemetry off.
    code = (
        "import sys, gateway.server, gateway.runtime.worker, gateway.config\n"
        "gateway.server.Telemetry(gateway.config.GatewayConfig().telemetry).install()\n"
        "print(sorted(m for m in sys.modules if m.startswith(('opentelemetry', 'prometheus'))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]"


def test_a_busy_prometheus_port_is_a_config_error() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        config = TelemetryConfig.model_validate(
            {"metrics": {"prometheus_listen": f"127.0.0.1:{port}"}}
        )
        with pytest.raises(ConfigError, match="prometheus_listen"):
            Telemetry(config).install()
    assert active.metrics is None


def _remote_parent(trace_id: int, sampled: bool) -> Any:
    from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

    flags = TraceFlags(TraceFlags.SAMPLED if sampled else TraceFlags.DEFAULT)
    span = NonRecordingSpan(SpanContext(trace_id, 0x1234, is_remote=True, trace_flags=flags))
    return trace.set_span_in_context(span)


def test_a_callers_sampled_flag_decides_only_when_followed() -> None:
    from opentelemetry.sdk.trace.sampling import Decision

    from gateway.telemetry.sampling import gateway_sampler

    parent = _remote_parent(0xABC << 64, sampled=True)
    unsampled = _remote_parent(0xABC << 64, sampled=False)
    never = gateway_sampler(0.0, follow_caller_sampling=False)
    assert never.should_sample(parent, 0xABC << 64, "rpc").decision is Decision.DROP
    always = gateway_sampler(1.0, follow_caller_sampling=False)
    assert always.should_sample(unsampled, 0xABC << 64, "rpc").decision.is_sampled()
    followed = gateway_sampler(0.0, follow_caller_sampling=True)
    assert followed.should_sample(parent, 0xABC << 64, "rpc").decision.is_sampled()
    assert followed.should_sample(unsampled, 0xABC << 64, "rpc").decision is Decision.DROP


def test_a_caller_cannot_choose_trace_ids_that_are_always_sampled() -> None:
    """Trace ids whose low 64 bits are zero: TraceIdRatioBased samples every one of them at
    any ratio above 0; the keyed sampler samples about the ratio, the same way every time."""
    from opentelemetry.sdk.trace.sampling import TraceIdRatioBased

    from gateway.telemetry.sampling import KeyedRatioSampler

    chosen = [(i + 1) << 64 for i in range(2000)]
    plain = TraceIdRatioBased(0.25)
    keyed = KeyedRatioSampler(0.25, key=b"k" * 16)

    def sampled(sampler: Any) -> list[bool]:
        return [
            sampler.should_sample(_remote_parent(t, True), t, "rpc").decision.is_sampled()
            for t in chosen
        ]

    assert all(sampled(plain))
    first = sampled(keyed)
    # 2000 draws at 0.25: mean 500, standard deviation ~19; +-100 is over 5 deviations.
    assert 400 <= sum(first) <= 600
    assert sampled(keyed) == first
    other = KeyedRatioSampler(0.25, key=b"j" * 16)
    assert sampled(other) != first


def test_a_header_of_exactly_the_limit_is_accepted() -> None:
    assert extract([("traceparent", PARENT)], len(PARENT)) is not None
    assert extract([("traceparent", PARENT)], len(PARENT) - 1) is None


def test_the_execute_span_names_its_job_and_backend(
    spans: tuple[Tracing, InMemorySpanExporter],
) -> None:
    tracing, exporter = spans
    started = _job(JobState.RUNNING, started_at=T0 + timedelta(seconds=1))
    tracing.on_transition(Transition(started, JobState.QUEUED, T0))
    tracing.on_transition(Transition(_job(JobState.SUCCEEDED), JobState.RUNNING, T0))
    execute = _named(exporter, "qgateway.job.execute")
    assert execute.attributes is not None
    assert execute.attributes["qgateway.job.id"] == "j1"
    assert execute.attributes["qgateway.job.state"] == "SUCCEEDED"
    assert execute.status.status_code is trace.StatusCode.UNSET


def test_a_jobs_kept_rpc_context_drops_the_callers_baggage(
    spans: tuple[Tracing, InMemorySpanExporter],
) -> None:
    # The interceptor's RPC context holds the caller's baggage (up to max_header_bytes).
    tracing, _ = spans
    with tracing.tracer.start_as_current_span("rpc"):
        token = RPC_CONTEXT.set(baggage.set_baggage("k", "v" * 200))
        try:
            stamp = tracing.job_traceparent()
        finally:
            RPC_CONTEXT.reset(token)
    assert baggage.get_all(tracing._origins[stamp]) == {}


def test_a_failing_hook_neither_breaks_the_job_nor_the_hooks_after_it() -> None:
    seen: list[Transition] = []

    class Broken:
        def on_transition(self, transition: Transition) -> None:
            raise RuntimeError("boom")

    class Recording:
        def on_transition(self, transition: Transition) -> None:
            seen.append(transition)

    hooks = Hooks([Broken(), Recording()])
    transition = Transition(_job(JobState.QUEUED), None, T0)
    hooks.notify(transition)
    assert seen == [transition]


def test_a_job_of_another_trace_claimed_inside_an_rpc_is_linked_not_adopted(
    spans: tuple[Tracing, InMemorySpanExporter],
) -> None:
    # A job created elsewhere (another replica, before a restart) first heard of while this
    # process serves an unrelated RPC: its spans must not join that RPC's trace.
    tracing, exporter = spans
    with tracing.tracer.start_as_current_span("rpc") as rpc:
        job = _job(JobState.RUNNING, PARENT, started_at=T0)
        tracing.on_transition(Transition(job, JobState.QUEUED, T0))
    tracing.on_transition(Transition(_job(JobState.SUCCEEDED, PARENT), JobState.RUNNING, T0))
    execute = _named(exporter, "qgateway.job.execute")
    assert execute.parent is None
    assert execute.context is not None
    assert execute.context.trace_id != rpc.get_span_context().trace_id
    (link,) = execute.links
    assert trace.format_trace_id(link.context.trace_id) == trace_id_of(PARENT)


class _CallContext:
    def __init__(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self._metadata = metadata

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata

    def code(self) -> None:
        return None


def test_an_rpc_span_continues_the_callers_trace_and_ends_with_its_outcome(
    spans: tuple[Tracing, InMemorySpanExporter],
) -> None:
    tracing, exporter = spans

    async def get_job(request: Any, ctx: Any) -> str:
        if request == "missing":
            raise NotFound("JOB_NOT_FOUND", "no such job")
        return "ok"

    async def main() -> None:
        interceptor = TelemetryInterceptor(tracing, None)

        async def continuation(details: Any) -> Any:
            return grpc.unary_unary_rpc_method_handler(get_job)

        details = SimpleNamespace(method="/qgateway.v1.JobService/GetJob")
        handler = await interceptor.intercept_service(continuation, details)
        ctx = _CallContext((("traceparent", PARENT),))
        assert await handler.unary_unary("found", ctx) == "ok"
        with pytest.raises(NotFound):
            await handler.unary_unary("missing", ctx)

    asyncio.run(main())
    ok, failed = exporter.get_finished_spans()
    for span in (ok, failed):
        assert span.name == "qgateway.v1.JobService/GetJob"
        assert span.context is not None and span.parent is not None
        assert trace.format_trace_id(span.context.trace_id) == trace_id_of(PARENT)
        assert span.parent.span_id == 0xB7AD6B7169203331
    assert ok.attributes is not None and failed.attributes is not None
    assert ok.attributes["rpc.response.status_code"] == "OK"
    assert ok.status.status_code is trace.StatusCode.UNSET
    assert failed.attributes["rpc.response.status_code"] == "NOT_FOUND"
    assert failed.attributes["error.type"] == "JOB_NOT_FOUND"
    assert failed.status.status_code is trace.StatusCode.ERROR


def test_a_job_cancelled_in_its_queue_ends_without_an_execute_span(
    spans: tuple[Tracing, InMemorySpanExporter],
) -> None:
    tracing, exporter = spans
    tracing.on_transition(Transition(_job(JobState.QUEUED), None, T0))
    tracing.on_transition(Transition(_job(JobState.CANCELLED), JobState.QUEUED, T0))
    assert exporter.get_finished_spans() == ()
    assert tracing.job_context("j1") is None


def test_a_remote_runners_wait_span_hangs_under_the_jobs_execute_span(
    spans: tuple[Tracing, InMemorySpanExporter],
) -> None:
    tracing, exporter = spans

    class Remote:
        model = ExecutionModel.REMOTE

        async def wait(self, handle: RunHandle) -> str:
            return "done"

    started = _job(JobState.RUNNING, started_at=T0)
    tracing.on_transition(Transition(started, JobState.QUEUED, T0))
    runner = ObservedRunner(Remote(), "ibm")  # type: ignore[arg-type]
    active.install(tracing, None)
    try:
        # Waited on from a task that is serving some other RPC.
        with tracing.tracer.start_as_current_span("unrelated rpc"):
            assert asyncio.run(runner.wait(RunHandle(job_id="j1"))) == "done"  # type: ignore[comparison-overlap]
    finally:
        active.install(None, None)
    tracing.on_transition(Transition(_job(JobState.SUCCEEDED), JobState.RUNNING, T0))
    wait = _named(exporter, "qgateway.runner.wait")
    execute = _named(exporter, "qgateway.job.execute")
    assert execute.context is not None and wait.parent is not None
    assert wait.parent.span_id == execute.context.span_id


def test_a_bracketed_ipv6_listen_address_is_split_like_grpcs() -> None:
    from gateway.telemetry.settings import split_listen

    assert split_listen("[::]:9464") == ("::", 9464)
    assert split_listen("[::1]:0") == ("::1", 0)
    assert split_listen(":9464") == ("0.0.0.0", 9464)


def test_the_prometheus_port_is_free_once_telemetry_closed() -> None:
    import asyncio

    config = TelemetryConfig.model_validate({"metrics": {"prometheus_listen": "127.0.0.1:0"}})
    telemetry = Telemetry(config)
    telemetry.install()
    port = telemetry.prometheus_port
    asyncio.run(telemetry.close())
    with socket.socket() as again:  # the listening socket closed, not only its thread
        again.bind(("127.0.0.1", port))
        again.listen()
