"""The Python client's OpenTelemetry extra: calls carry the caller's W3C trace context, and
`client_spans=True` records a CLIENT span per call. A loopback gRPC server records the metadata
it receives."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from qgateway import AsyncClient, Client, NotFoundError, RetryPolicy

ONCE = RetryPolicy(max_attempts=1)


class _Recorder(grpc.GenericRpcHandler):  # type: ignore[misc]
    def __init__(self) -> None:
        self.metadata: list[dict[str, str]] = []

    def service(self, details: Any) -> Any:
        def answer(request: bytes, context: grpc.ServicerContext) -> bytes:
            self.metadata.append(dict(context.invocation_metadata()))
            context.abort(grpc.StatusCode.NOT_FOUND, "no such job")
            return b""

        return grpc.unary_unary_rpc_method_handler(answer)


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[str, _Recorder]]:
    recorder = _Recorder()
    srv = grpc.server(futures.ThreadPoolExecutor(max_workers=2), handlers=[recorder])
    port = srv.add_insecure_port("127.0.0.1:0")
    srv.start()
    yield f"127.0.0.1:{port}", recorder
    srv.stop(None)


def test_calls_carry_the_callers_trace_context(server: tuple[str, _Recorder]) -> None:
    address, recorder = server
    tracer = TracerProvider().get_tracer("caller")  # not the global provider
    with (
        tracer.start_as_current_span("caller") as span,
        Client(address, retry=ONCE) as client,
        pytest.raises(NotFoundError),
    ):
        client.get_job("jobs/x", timeout=5)
    sent = recorder.metadata[-1]
    want = trace.format_trace_id(span.get_span_context().trace_id)
    assert sent["traceparent"].split("-")[1] == want

    async def call() -> str:
        with tracer.start_as_current_span("async-caller") as caller:
            async with AsyncClient(address, retry=ONCE) as aclient:
                with pytest.raises(NotFoundError):
                    await aclient.get_job("jobs/y", timeout=5)
        return trace.format_trace_id(caller.get_span_context().trace_id)

    async_trace = asyncio.run(call())
    assert async_trace != want
    assert recorder.metadata[-1]["traceparent"].split("-")[1] == async_trace  # the caller's
    # Outside any span nothing is sent.
    with Client(address, retry=ONCE) as client, pytest.raises(NotFoundError):
        client.get_job("jobs/z", timeout=5)
    assert "traceparent" not in recorder.metadata[-1]


def test_client_spans_are_opt_in(server: tuple[str, _Recorder]) -> None:
    address, recorder = server
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)  # client spans use the global provider
    with Client(address, retry=ONCE, client_spans=True) as client, pytest.raises(NotFoundError):
        client.get_job("jobs/x", timeout=5)
    (span,) = exporter.get_finished_spans()
    assert span.name == "qgateway.v1.JobService/GetJob"
    assert span.kind is trace.SpanKind.CLIENT
    assert span.attributes is not None
    assert span.attributes["rpc.response.status_code"] == "NOT_FOUND"
    # The server hears the client span as the parent.
    assert recorder.metadata[-1]["traceparent"].split("-")[2] == format(
        span.context.span_id, "016x"
    )

    async def call() -> None:
        async with AsyncClient(address, retry=ONCE, client_spans=True) as aclient:
            with pytest.raises(NotFoundError):
                await aclient.get_job("jobs/y", timeout=5)

    asyncio.run(call())
    spans = exporter.get_finished_spans()
    assert len(spans) == 2 and spans[1].kind is trace.SpanKind.CLIENT
    assert spans[1].attributes is not None
    assert spans[1].attributes["rpc.response.status_code"] == "NOT_FOUND"
