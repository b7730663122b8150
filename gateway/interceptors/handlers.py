"""Rebuilding a method handler around new behaviour: how every interceptor here wraps calls.

grpc.aio interceptors only see method names and metadata; to see the request, the context and
the outcome they must replace the handler's behaviour, which is what `rewrap` does.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from gateway.api.context import Context
from gateway.domain.errors import Code, GatewayError

SERVICE_PREFIX = "/qgateway.v1."
# The methods that submit a job (rate limits, the refused-submission metric).
RUN_METHOD = "/qgateway.v1.JobService/Run"
SUBMIT_METHODS = frozenset({"/qgateway.v1.JobService/SubmitJob", RUN_METHOD})

Unary = Callable[[Any, Context], Awaitable[Any]]
Stream = Callable[[Any, Context], AsyncIterator[Any]]


def is_gateway_method(handler: grpc.RpcMethodHandler | None, method: str) -> bool:
    """Our own services (not health or reflection), with a handler to wrap."""
    return handler is not None and method.startswith(SERVICE_PREFIX)


def rewrap(
    handler: grpc.RpcMethodHandler,
    wrap_unary: Callable[[Unary], Unary],
    wrap_stream: Callable[[Stream], Stream],
    request_deserializer: Callable[[bytes], Any] | None = None,
    *,
    raw_requests: bool = False,
) -> grpc.RpcMethodHandler:
    """The handler with its unary-unary or unary-stream behaviour wrapped; `raw_requests`:
    the wrapped behaviour takes the request's bytes (it decodes them itself)."""
    deserializer = None if raw_requests else request_deserializer or handler.request_deserializer
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(
            wrap_unary(handler.unary_unary),
            request_deserializer=deserializer,
            response_serializer=handler.response_serializer,
        )
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(
            wrap_stream(handler.unary_stream),
            request_deserializer=deserializer,
            response_serializer=handler.response_serializer,
        )
    return handler


def status_code(context: Context) -> int:
    """The status the call was answered with (UNKNOWN if it cannot be read)."""
    try:
        code = context.code()
    except Exception:  # never let recording fail the call
        return int(Code.UNKNOWN)
    if isinstance(code, grpc.StatusCode):
        return int(code.value[0])
    return int(code) if isinstance(code, int) else int(Code.UNKNOWN)


def failed_call(exc: BaseException, context: Context) -> tuple[int, str]:
    """(status code, ErrorInfo reason or "") of a call its behaviour ended with `exc`, as the
    error boundary answers it: a GatewayError its own status, an abort the status it set, a
    caller gone (a cancelled task, a stream closed at its yield) CANCELLED, anything else
    INTERNAL."""
    if isinstance(exc, GatewayError):
        return int(exc.code), exc.reason
    if isinstance(exc, grpc.aio.AbortError):
        return status_code(context), ""
    if isinstance(exc, (asyncio.CancelledError, GeneratorExit)):
        return int(Code.CANCELLED), ""
    return int(Code.INTERNAL), "INTERNAL_ERROR"
