"""OpenTelemetry for the client (the `otel` extra: `pip install qgateway[otel]`).

With opentelemetry-api installed, every call carries the caller's current trace context
(W3C `traceparent`/`tracestate` and `baggage` metadata), so the gateway's spans join the
caller's trace. `Client(..., client_spans=True)` also records a CLIENT span per call (RPC
semantic conventions: rpc.system.name, rpc.method, rpc.response.status_code). Without
opentelemetry installed, nothing here is imported and calls carry no trace headers.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable, Sequence
from typing import Any

import grpc

TRACER_NAME = "qgateway.client"


def _available() -> bool:
    try:
        import opentelemetry.propagate
        import opentelemetry.trace  # noqa: F401
    except ImportError:
        return False
    return True


class _Details(
    collections.namedtuple(
        "_Details",
        ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression"),
    ),
    grpc.ClientCallDetails,  # type: ignore[misc]
):
    pass


class _Tracer:
    """Injection and (optionally) spans, shared by the sync and async interceptors."""

    def __init__(self, spans: bool) -> None:
        from opentelemetry import propagate, trace

        self._propagate = propagate
        self._trace = trace
        self._tracer = trace.get_tracer(TRACER_NAME) if spans else None

    def start(self, method: str) -> tuple[Any, list[tuple[str, str]]]:
        """(span or None, trace headers to send) for a call of `method`."""
        span = None
        ctx = None
        if self._tracer is not None:
            name = method.lstrip("/")
            span = self._tracer.start_span(
                name,
                kind=self._trace.SpanKind.CLIENT,
                attributes={"rpc.system.name": "grpc", "rpc.method": name},
            )
            ctx = self._trace.set_span_in_context(span)
        carrier: dict[str, str] = {}
        self._propagate.inject(carrier, context=ctx)
        return span, list(carrier.items())

    def finish(self, span: Any, code: grpc.StatusCode | None) -> None:
        if span is None:
            return
        from opentelemetry.trace import Status, StatusCode

        name = code.name if code is not None else "UNKNOWN"
        span.set_attribute("rpc.response.status_code", name)
        if code is not grpc.StatusCode.OK:
            span.set_status(Status(StatusCode.ERROR, name))
        span.end()


def _merged(metadata: Any, headers: list[tuple[str, str]]) -> list[tuple[str, Any]]:
    keys = {key for key, _ in headers}
    return [(k, v) for k, v in (metadata or ()) if k not in keys] + headers


class _SyncInterceptor(
    grpc.UnaryUnaryClientInterceptor,  # type: ignore[misc]
    grpc.UnaryStreamClientInterceptor,  # type: ignore[misc]
):
    def __init__(self, tracer: _Tracer) -> None:
        self._t = tracer

    def _call(
        self, continuation: Callable[..., Any], details: Any, request: Any, stream: bool
    ) -> Any:
        span, headers = self._t.start(details.method)
        new = _Details(
            details.method,
            details.timeout,
            _merged(details.metadata, headers),
            details.credentials,
            getattr(details, "wait_for_ready", None),
            getattr(details, "compression", None),
        )
        try:
            call = continuation(new, request)
        except BaseException:
            self._t.finish(span, None)
            raise
        if span is None:
            return call
        if not stream:  # a unary call has finished when the continuation returns
            self._t.finish(span, call.code())
        elif not call.add_callback(lambda: self._t.finish(span, call.code())):
            self._t.finish(span, call.code())  # already over
        return call

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return self._call(continuation, details, request, stream=False)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return self._call(continuation, details, request, stream=True)


class _AsyncInterceptor(
    grpc.aio.UnaryUnaryClientInterceptor,  # type: ignore[misc]
    grpc.aio.UnaryStreamClientInterceptor,  # type: ignore[misc]
):
    def __init__(self, tracer: _Tracer) -> None:
        self._t = tracer
        self._ending: set[asyncio.Task[None]] = set()

    async def _call(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
        method = details.method.decode() if isinstance(details.method, bytes) else details.method
        span, headers = self._t.start(method)
        metadata = grpc.aio.Metadata(*_merged(details.metadata, headers))
        new = details._replace(metadata=metadata)
        try:
            call = await continuation(new, request)
        except BaseException:
            self._t.finish(span, None)
            raise
        if span is not None:

            async def end() -> None:
                code = await call.code()  # the call is over: answers at once
                self._t.finish(span, code if isinstance(code, grpc.StatusCode) else None)

            def done(_: Any) -> None:
                task = asyncio.get_running_loop().create_task(end())
                self._ending.add(task)
                task.add_done_callback(self._ending.discard)

            call.add_done_callback(done)
        return call

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await self._call(continuation, details, request)

    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await self._call(continuation, details, request)


def sync_interceptors(client_spans: bool) -> Sequence[Any]:
    """Interceptors for a grpc.Channel; none without opentelemetry installed."""
    if not _available():
        if client_spans:
            raise RuntimeError("client_spans needs opentelemetry: pip install 'qgateway[otel]'")
        return ()
    return (_SyncInterceptor(_Tracer(client_spans)),)


def async_interceptors(client_spans: bool) -> Sequence[Any]:
    """Interceptors for a grpc.aio.Channel; none without opentelemetry installed."""
    if not _available():
        if client_spans:
            raise RuntimeError("client_spans needs opentelemetry: pip install 'qgateway[otel]'")
        return ()
    return (_AsyncInterceptor(_Tracer(client_spans)),)
