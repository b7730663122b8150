"""Tracing and RPC metrics for qgateway.v1 methods (health and reflection are left alone).

Sits just inside the error boundary, so every RPC, including one refused by authentication or
rate limiting, has a span and a duration. The span follows the RPC semantic conventions of the
installed opentelemetry-semantic-conventions package (rpc.system.name, rpc.method,
rpc.response.status_code) and continues the caller's W3C trace context; baggage is accepted
too. Streaming handlers stay async generators: the span covers the whole stream.

Installed only when `[telemetry]` turns tracing or metrics on.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.semconv._incubating.attributes.rpc_attributes import (
    RPC_METHOD,
    RPC_RESPONSE_STATUS_CODE,
    RPC_SYSTEM_NAME,
    RpcSystemNameValues,
)
from opentelemetry.semconv.attributes.error_attributes import ERROR_TYPE
from opentelemetry.trace import SpanKind, Status, StatusCode

from gateway.api.context import Context
from gateway.domain.errors import Code
from gateway.interceptors.handlers import (
    SUBMIT_METHODS,
    Stream,
    Unary,
    failed_call,
    is_gateway_method,
    rewrap,
    status_code,
)
from gateway.telemetry import active
from gateway.telemetry.metrics import GatewayMetrics
from gateway.telemetry.tracing import RPC_CONTEXT, Tracing, extract

GRPC = RpcSystemNameValues.GRPC.value


def _outcome(exc: BaseException | None, context: Context) -> tuple[str, str | None]:
    """(status code name, error type: the reason, else the code name; None for OK) of a
    finished call, as the error boundary answered it (handlers.failed_call)."""
    if exc is None:
        code, reason = status_code(context), ""
        if context.code() is None:  # answered without setting a status: OK
            code = int(Code.OK)
    else:
        code, reason = failed_call(exc, context)
    name = Code(code).name
    return name, None if code == Code.OK else reason or name


class TelemetryInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """A SERVER span (tracing on) and a duration (metrics on) per qgateway.v1 call.

    Args:
        tracing: The tracer, or None.
        metrics: The instruments, or None.
    """

    def __init__(self, tracing: Tracing | None, metrics: GatewayMetrics | None) -> None:
        self._tracing = tracing
        self._metrics = metrics

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method: str = handler_call_details.method
        if not is_gateway_method(handler, method):
            return handler
        rpc_method = method.lstrip("/")  # "qgateway.v1.JobService/Run"
        tracing = self._tracing
        metrics = self._metrics
        submits = metrics is not None and method in SUBMIT_METHODS

        def start(context: Context) -> tuple[Any, otel_context.Context | None, float]:
            started = time.perf_counter()
            if submits:
                active.call_job.set(active.CallJob())  # the call's task: no reset needed
            if tracing is None:
                return None, None, started
            parent = extract(context.invocation_metadata(), tracing.max_header_bytes)
            span = tracing.tracer.start_span(
                rpc_method,
                context=parent,
                kind=SpanKind.SERVER,
                attributes={RPC_SYSTEM_NAME: GRPC, RPC_METHOD: rpc_method},
            )
            ctx = trace.set_span_in_context(span, parent)
            RPC_CONTEXT.set(ctx)  # the handler's task is this call's own: no reset needed
            return span, ctx, started

        def finish(span: Any, started: float, exc: BaseException | None, context: Context) -> None:
            code, error = _outcome(exc, context)
            if metrics is not None:
                holder = active.call_job.get() if submits else None
                known = holder is not None and holder.known
                metrics.record_rpc(rpc_method, code, time.perf_counter() - started, job_known=known)
            if span is None:
                return
            span.set_attribute(RPC_RESPONSE_STATUS_CODE, code)
            if error is not None:
                span.set_attribute(ERROR_TYPE, error)
                span.set_status(Status(StatusCode.ERROR, code))
            span.end()

        def wrap_unary(unary: Unary) -> Unary:
            async def handle(request: Any, context: Context) -> Any:
                span, ctx, started = start(context)
                token = None if ctx is None else otel_context.attach(ctx)
                try:
                    response = await unary(request, context)
                except BaseException as exc:
                    finish(span, started, exc, context)
                    raise
                finally:
                    if token is not None:
                        otel_context.detach(token)
                finish(span, started, None, context)
                return response

            return handle

        def wrap_stream(stream: Stream) -> Stream:
            async def handle(request: Any, context: Context) -> AsyncIterator[Any]:
                span, ctx, started = start(context)
                items = stream(request, context).__aiter__()
                try:
                    while True:
                        # Attached for each step, never across a yield: a stream its client
                        # abandoned is closed later from another task, where detaching a
                        # token attached here failed (an error logged per abandoned stream).
                        token = None if ctx is None else otel_context.attach(ctx)
                        try:
                            item = await items.__anext__()
                        except StopAsyncIteration:
                            break
                        finally:
                            if token is not None:
                                otel_context.detach(token)
                        yield item
                except BaseException as exc:
                    finish(span, started, exc, context)
                    raise
                finish(span, started, None, context)

            return handle

        return rewrap(handler, wrap_unary, wrap_stream)
