"""A loopback OTLP/gRPC receiver for tests: TraceService and MetricsService Export on
127.0.0.1, keeping what it receives so a test can wait for the spans and points it expects.

The gateway and its workers are other processes, so an in-memory exporter cannot see them; the
gateway exports over real OTLP/gRPC to this receiver instead.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from opentelemetry.proto.collector.metrics.v1 import (
    metrics_service_pb2,
    metrics_service_pb2_grpc,
)
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

T = TypeVar("T")


@dataclass(frozen=True)
class ReceivedSpan:
    name: str
    trace_id: str
    span_id: str
    parent_span_id: str
    kind: int
    attributes: dict[str, Any]
    events: tuple[str, ...]
    links: tuple[str, ...]  # linked trace ids
    status_code: int
    start_ns: int
    end_ns: int


def _value(v: Any) -> Any:
    which = v.WhichOneof("value")
    return getattr(v, which) if which else None


class _Traces(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, receiver: OtlpReceiver) -> None:
        self._r = receiver

    def Export(self, request: Any, context: Any) -> Any:
        if not self._r.keep:  # a sink (benchmarks): count, keep nothing
            count = sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)
            self._r._count(count)
            return trace_service_pb2.ExportTraceServiceResponse()
        spans = []
        for resource_spans in request.resource_spans:
            for scope_spans in resource_spans.scope_spans:
                for s in scope_spans.spans:
                    spans.append(
                        ReceivedSpan(
                            name=s.name,
                            trace_id=s.trace_id.hex(),
                            span_id=s.span_id.hex(),
                            parent_span_id=s.parent_span_id.hex(),
                            kind=s.kind,
                            attributes={a.key: _value(a.value) for a in s.attributes},
                            events=tuple(e.name for e in s.events),
                            links=tuple(link.trace_id.hex() for link in s.links),
                            status_code=s.status.code,
                            start_ns=s.start_time_unix_nano,
                            end_ns=s.end_time_unix_nano,
                        )
                    )
        self._r._add(spans=spans)
        return trace_service_pb2.ExportTraceServiceResponse()


class _Metrics(metrics_service_pb2_grpc.MetricsServiceServicer):
    def __init__(self, receiver: OtlpReceiver) -> None:
        self._r = receiver

    def Export(self, request: Any, context: Any) -> Any:
        names: list[str] = []
        for resource_metrics in request.resource_metrics:
            for scope_metrics in resource_metrics.scope_metrics:
                names.extend(m.name for m in scope_metrics.metrics)
        self._r._add(metric_names=names)
        return metrics_service_pb2.ExportMetricsServiceResponse()


class OtlpReceiver:
    """Start with `start()`; `endpoint` is the URL to configure; `stop()` when done.

    Args:
        keep: Keep every span (tests); False only counts them (`span_count`), cheaply.
    """

    def __init__(self, keep: bool = True) -> None:
        self.keep = keep
        self.span_count = 0
        self.spans: list[ReceivedSpan] = []
        self.metric_names: set[str] = set()
        self._cond = threading.Condition()
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        add_traces = trace_service_pb2_grpc.add_TraceServiceServicer_to_server
        add_metrics = metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server
        add_traces(_Traces(self), self._server)  # type: ignore[no-untyped-call]
        add_metrics(_Metrics(self), self._server)  # type: ignore[no-untyped-call]
        self.port = 0

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> OtlpReceiver:
        self.port = self._server.add_insecure_port("127.0.0.1:0")
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop(None)

    def _count(self, spans: int) -> None:
        with self._cond:
            self.span_count += spans

    def _add(
        self, spans: list[ReceivedSpan] | None = None, metric_names: list[str] | None = None
    ) -> None:
        with self._cond:
            self.spans.extend(spans or ())
            self.span_count += len(spans or ())
            self.metric_names.update(metric_names or ())
            self._cond.notify_all()

    def wait_for(self, found: Callable[[OtlpReceiver], T | None], timeout: float = 20.0) -> T:
        """Waits until `found(self)` returns something (checked on every export)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                result = found(self)
                if result is not None and result is not False:
                    return result
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"not received within {timeout}s")
                self._cond.wait(remaining)

    def trace(self, trace_id: str) -> list[ReceivedSpan]:
        with self._cond:
            return [s for s in self.spans if s.trace_id == trace_id]
