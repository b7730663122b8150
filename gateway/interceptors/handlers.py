"""Rebuilding a method handler around new behaviour: how every interceptor here wraps calls.

grpc.aio interceptors only see method names and metadata; to see the request, the context and
the outcome they must replace the handler's behaviour, which is what `rewrap` does.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from gateway.api.context import Context

SERVICE_PREFIX = "/qgateway.v1."

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
) -> grpc.RpcMethodHandler:
    """The handler with its unary-unary or unary-stream behaviour wrapped."""
    deserializer = request_deserializer or handler.request_deserializer
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
