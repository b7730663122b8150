"""Decoding requests, inside authentication.

Parsing a request costs the event loop time and memory in proportion to its bytes (16 MiB of
empty messages: ~0.8 s holding the GIL, ~20x its size in memory), so a caller is identified
first: a request from nobody is refused without being read or decoded. The error boundary,
outermost, passes the message on unread (it is read here, size-checked); every interceptor
between the two reads no more than metadata. A request that cannot be decoded is
INVALID_ARGUMENT MALFORMED_REQUEST (not gRPC's UNKNOWN), told to the audit log as a request too
large is.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from gateway.api.context import Context
from gateway.domain.errors import InvalidArgument
from gateway.interceptors.boundary import OnRejected, PendingRequest
from gateway.interceptors.handlers import Stream, Unary, is_gateway_method, rewrap


class DecodeInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    def __init__(self, on_rejected: OnRejected | None = None) -> None:
        self._on_rejected = on_rejected

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method: str = handler_call_details.method
        if not is_gateway_method(handler, method):
            return handler
        deserialize: Callable[[bytes], Any] | None = handler.request_deserializer
        on_rejected = self._on_rejected

        async def decoded(request: PendingRequest, context: Context) -> Any:
            data = await request.read()  # here, once the caller is known
            if deserialize is None:
                return data
            try:
                return deserialize(data)
            except (DecodeError, UnicodeDecodeError, ValueError) as exc:
                error = InvalidArgument(
                    "MALFORMED_REQUEST",
                    f"request could not be decoded as protobuf: {type(exc).__name__}",
                )
                if on_rejected is not None:
                    on_rejected(method, context.peer() or "", error)
                raise error from None

        def wrap_unary(unary: Unary) -> Unary:
            async def handle(request: Any, context: Context) -> Any:
                return await unary(await decoded(request, context), context)

            return handle

        def wrap_stream(stream: Stream) -> Stream:
            async def handle(request: Any, context: Context) -> AsyncIterator[Any]:
                async for item in stream(await decoded(request, context), context):
                    yield item

            return handle

        return rewrap(handler, wrap_unary, wrap_stream, raw_requests=True)
