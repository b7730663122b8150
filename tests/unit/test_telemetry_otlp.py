"""gateway.telemetry.otlp_spans writes the same OTLP request as the SDK's encoder."""

from __future__ import annotations

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.trace.span import TraceState

from gateway.telemetry.otlp_spans import SpanEncoder

REMOTE = SpanContext(
    0x0AF7651916CD43DD8448EB211C80319C,
    0xB7AD6B7169203331,
    is_remote=True,
    trace_flags=TraceFlags(1),
    trace_state=TraceState([("vendor", "x1")]),
)


def _spans() -> list[ReadableSpan]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "qgateway"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("qgateway", "1.2")
    other = provider.get_tracer("other")
    remote = trace.set_span_in_context(trace.NonRecordingSpan(REMOTE))
    with tracer.start_as_current_span(
        "rpc", context=remote, kind=SpanKind.SERVER,
        attributes={"s": "grpc", "empty": "", "n": -3, "zero": 0, "big": 2**62, "f": 0.25,
                    "t": True, "no": False, "list": ["a", "b"], "ints": [1, 2]},
    ) as rpc:  # fmt: skip
        rpc.add_event("job created", {"qgateway.job.id": "j1", "n": 1})
        rpc.add_event("bare")
        for n in range(3):  # repeated attribute pairs come from the cache
            with tracer.start_as_current_span("child", attributes={"s": "grpc", "i": n}):
                pass
        child = tracer.start_span(
            "linked", links=[Link(REMOTE, {"qgateway.link": "job.created"}), Link(REMOTE)]
        )
        child.set_status(Status(StatusCode.ERROR, "FAILED_PRECONDITION"))
        child.end()
        with other.start_as_current_span("other scope", kind=SpanKind.CLIENT) as span:
            span.set_status(Status(StatusCode.OK))
    provider.shutdown()
    return list(exporter.get_finished_spans())


def test_the_wire_encoding_is_the_sdks_request() -> None:
    spans = _spans()
    encoder = SpanEncoder()
    for _ in range(2):  # the second time from the encoder's caches
        mine = ExportTraceServiceRequest.FromString(encoder.encode(spans))
        assert mine == encode_spans(spans)
    (resource_spans,) = mine.resource_spans
    assert [len(s.spans) for s in resource_spans.scope_spans] == [5, 1]  # two tracers
    assert encoder.encode([]) == encode_spans([]).SerializeToString() == b""
