"""Review of the gateway's telemetry: a caller's malformed baggage flooded the log before
authentication, an abandoned stream logged a detach error, a failed half-open trial was not
counted as a breaker transition, one failing backend froze every backend's gauges, and jobs
running at the stop lost their execute spans."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from types import SimpleNamespace
from typing import Any, ClassVar, cast

import grpc
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

from gateway.domain.jobs import JobState
from gateway.interceptors.tracing import TelemetryInterceptor
from gateway.jobs.backend import BackendRuntime
from gateway.jobs.hooks import Transition
from gateway.runtime.breaker import BreakerPolicy, BreakerState, CircuitBreaker
from gateway.telemetry.tracing import Tracing
from tests.unit.test_telemetry_metrics import T0, _job, _metrics, _value

# ------------------------------------------------------------------------------- helpers


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# ------------------------------------------------------------------------------- metrics


def test_a_failed_half_open_trial_counts_as_a_transition() -> None:
    metrics, registry = _metrics()
    clock = _Clock()
    breaker = CircuitBreaker(BreakerPolicy(failure_threshold=1, cooldown_s=10), clock=clock)
    metrics.watch({"aer": cast(BackendRuntime, SimpleNamespace(breaker=breaker))}, None)

    permit = breaker.try_dispatch()
    assert permit is not None
    opened = breaker.record_failure(permit)
    metrics.on_transition(Transition(_job(JobState.FAILED), JobState.RUNNING, T0, opened))

    # The cool-down ends and the half-open trial fails at once (a backend that is still down
    # answers in milliseconds), well inside one sample interval.
    clock.now += 10
    trial = breaker.try_dispatch()
    assert trial is not None and trial.trial
    reopened = breaker.record_failure(trial)
    assert reopened is not None
    assert (reopened.before, reopened.after) == (BreakerState.HALF_OPEN, BreakerState.OPEN)
    metrics.on_transition(Transition(_job(JobState.FAILED), JobState.RUNNING, T0, reopened))

    # Two openings and one half-opening happened; every one is a transition "by the state
    # entered".
    assert _value(registry, "qgateway_breaker_transitions_total", state="OPEN") == 2
    assert _value(registry, "qgateway_breaker_transitions_total", state="HALF_OPEN") == 1


def _runtime(status: Any, breaker: CircuitBreaker) -> BackendRuntime:
    return cast(
        BackendRuntime,
        SimpleNamespace(status=status, runner=SimpleNamespace(stats=lambda: None), breaker=breaker),
    )


def _status(serving: bool) -> SimpleNamespace:
    return SimpleNamespace(
        queue_depth=0, running=0, pool_in_use=0, pool_idle=0, pool_waiting=0,
        breaker_state="CLOSED", serving=serving,
    )  # fmt: skip


def test_one_failing_backend_does_not_freeze_the_others_gauges() -> None:
    metrics, registry = _metrics()
    state = {"ibm_healthy": True, "aer_raises": False}

    async def aer_status() -> SimpleNamespace:
        if state["aer_raises"]:
            raise RuntimeError("database is locked")  # the claim queue's depth read
        return _status(True)

    async def ibm_status() -> SimpleNamespace:
        return _status(state["ibm_healthy"])

    breaker = CircuitBreaker(BreakerPolicy())
    metrics.watch(
        {"aer": _runtime(aer_status, breaker), "ibm": _runtime(ibm_status, breaker)}, None
    )

    async def one_sample() -> None:
        # What run_sampler does each interval: a failure is logged and sampling goes on.
        with contextlib.suppress(Exception):
            await metrics.sample()

    asyncio.run(one_sample())
    assert _value(registry, "qgateway_backend_health", backend="ibm") == 1
    state["ibm_healthy"], state["aer_raises"] = False, True
    asyncio.run(one_sample())
    assert _value(registry, "qgateway_backend_health", backend="ibm") == 0


# ------------------------------------------------------------------------------- RPC spans


class _EndedSpans(SpanExporter):
    """Sets an asyncio event (on the loop's thread: SimpleSpanProcessor exports inline) for
    each span that ends."""

    def __init__(self) -> None:
        self.spans: list[ReadableSpan] = []
        self.ended = asyncio.Event()

    def export(self, spans: Any) -> SpanExportResult:
        self.spans.extend(spans)
        self.ended.set()
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


def test_an_abandoned_stream_logs_no_error(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)

    async def main() -> list[ReadableSpan]:
        exporter = _EndedSpans()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        tracing = Tracing(provider.get_tracer("test"), 4096)
        first_sent = asyncio.Event()

        async def results(request: Any, context: Any) -> Any:
            # A result stream: chunks larger than the flow-control window, so the server
            # is blocked writing (not inside the generator) when the client goes away.
            while True:
                yield b"x" * 1_000_000
                first_sent.set()

        handler = grpc.method_handlers_generic_handler(
            "qgateway.v1.JobService",
            {"StreamJobResult": grpc.unary_stream_rpc_method_handler(results)},
        )
        server = grpc.aio.server(interceptors=[TelemetryInterceptor(tracing, None)])
        server.add_generic_rpc_handlers((handler,))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                call = channel.unary_stream("/qgateway.v1.JobService/StreamJobResult")(b"")
                await call.read()
                await first_sent.wait()
                call.cancel()
                for _ in range(100):  # bounded: the span ends once the generator is closed
                    gc.collect()
                    try:
                        await asyncio.wait_for(exporter.ended.wait(), 0.1)
                        break
                    except TimeoutError:
                        continue
                await asyncio.sleep(0)  # finish() detaches right after ending the span
        finally:
            await server.stop(None)
        return exporter.spans

    spans = asyncio.run(main())
    assert [s.name for s in spans] == ["qgateway.v1.JobService/StreamJobResult"]
    # OpenTelemetry's own (grpc's "ExecuteBatchError" for a write to a gone client is the
    # gateway's QuietPeerGone filter's, not installed on this bare server).
    errors = [
        r for r in caplog.records
        if r.levelno >= logging.ERROR and r.name.startswith("opentelemetry")
    ]  # fmt: skip
    assert errors == [], [r.getMessage() for r in errors]


# ------------------------------------------------------------------------------- job spans


class _Collected(SpanExporter):
    """Stands in for the OTLP exporter: keeps what the gateway's provider exports."""

    spans: ClassVar[list[ReadableSpan]] = []

    def __init__(self, **_: Any) -> None:
        pass

    def export(self, spans: Any) -> SpanExportResult:
        _Collected.spans.extend(spans)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


def test_a_job_interrupted_by_the_stop_still_exports_its_execute_span(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from opentelemetry.exporter.otlp.proto.grpc import trace_exporter

    from gateway.telemetry.settings import TelemetryConfig
    from gateway.telemetry.setup import Telemetry

    monkeypatch.setattr(trace_exporter, "OTLPSpanExporter", _Collected)
    _Collected.spans.clear()
    telemetry = Telemetry(
        TelemetryConfig.model_validate({"tracing": {"enabled": True, "export_interval_s": 0.05}})
    )

    async def main() -> None:
        telemetry.install()
        try:
            await in_flight()
        finally:
            # The stop: the grace period is over, the job stays RUNNING in the store
            # (re-queued at the next start), telemetry closes last.
            await telemetry.close()

    async def in_flight() -> None:
        tracing = telemetry.tracing
        assert tracing is not None
        queued = _job(JobState.QUEUED)
        tracing.on_transition(Transition(queued, None, T0))
        running = _job(JobState.RUNNING, started_at=T0, attempts=1)
        tracing.on_transition(Transition(running, JobState.QUEUED, T0))
        # The worker's span under the execute span, as a run cut by the stop records it.
        with tracing.current(tracing.job_context_for(running)):
            tracing.worker_span("qgateway.worker.execute", None, 1, 1, 2, "CancelledError")

    asyncio.run(main())
    names = [s.name for s in _Collected.spans]
    assert "qgateway.worker.execute" in names and "qgateway.job.queue" in names
    assert "qgateway.job.execute" in names, names


# ------------------------------------------------------------------------------- trace headers


def test_a_malformed_baggage_header_does_not_flood_the_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)

    async def main() -> None:
        provider = TracerProvider()
        tracing = Tracing(provider.get_tracer("test"), 4096)

        async def get_job(request: Any, context: Any) -> bytes:
            return b""

        handler = grpc.method_handlers_generic_handler(
            "qgateway.v1.JobService", {"GetJob": grpc.unary_unary_rpc_method_handler(get_job)}
        )
        server = grpc.aio.server(interceptors=[TelemetryInterceptor(tracing, None)])
        server.add_generic_rpc_handlers((handler,))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                # No credentials at all: the tracing interceptor runs before authentication.
                await channel.unary_unary("/qgateway.v1.JobService/GetJob")(
                    b"",
                    metadata=(("baggage", "=," * 2000),),  # 4000 bytes, under the cap
                )
        finally:
            await server.stop(None)

    asyncio.run(main())
    from_headers = [
        r for r in caplog.records
        if r.levelno >= logging.WARNING and r.name.startswith("opentelemetry")
    ]  # fmt: skip
    assert len(from_headers) <= 1, f"{len(from_headers)} log records from one call's header"
