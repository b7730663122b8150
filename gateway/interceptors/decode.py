"""Decoding requests, inside authentication.

Parsing a request costs time and memory in proportion to its bytes (16 MiB of empty messages:
~0.23 s holding the GIL, ~20x its size in memory), so a caller is identified first: a request
from nobody is refused without being read or decoded. A request larger than
request_pieces.PIECE_BYTES is decoded in a thread, in pieces that each hold the GIL ~1 ms (one
long string field, parsed whole, longer), and refused as soon as a field occurs more often than
a job may hold (gateway.api.request_pieces): parsed at once on the event loop, one tenant's
16 MiB request stalled every other tenant's calls for the whole parse. The error boundary,
outermost, passes the message on unread (it is read here, size-checked); every interceptor
between the two reads no more than metadata. A request that cannot be decoded is
INVALID_ARGUMENT MALFORMED_REQUEST (not gRPC's UNKNOWN), told to the audit log as a request too
large is. A message still arriving is read under the caller's tenant's slow-read limits
(gateway.interceptors.request_reads).
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import Message

from gateway.api import request_pieces
from gateway.api.context import Context
from gateway.domain.errors import (
    DeadlineExceeded,
    GatewayError,
    ResourceExhausted,
)
from gateway.interceptors.boundary import DECODE_ERRORS, OnRejected, PendingRequest, malformed
from gateway.interceptors.handlers import Stream, Unary, is_gateway_method, rewrap
from gateway.interceptors.request_reads import RequestReads
from gateway.runtime.fair_share import FairShare
from gateway.security.principals import current_principal

# Requests decoded in pieces at once, and per tenant: each is a thread competing with the
# event loop for the GIL (up to ~3.5 s of walking for the worst), so one tenant's many large
# requests wait for each other, not the loop for all of them; another tenant's still starts.
LARGE_DECODES_AT_ONCE = 2
LARGE_DECODES_PER_TENANT = 1


class DecodeInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    def __init__(self, reads: RequestReads, on_rejected: OnRejected | None = None) -> None:
        self._reads = reads
        self._on_rejected = on_rejected
        self._large = FairShare(LARGE_DECODES_AT_ONCE, per_tenant=LARGE_DECODES_PER_TENANT)

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
        message_class = _message_class(deserialize)
        on_rejected = self._on_rejected
        reads = self._reads

        def told(error: GatewayError, context: Context) -> GatewayError:
            if on_rejected is not None:
                on_rejected(method, context.peer() or "", error)
            return error

        async def decoded(request: PendingRequest, context: Context) -> Any:
            try:  # here, once the caller is known
                data = await reads.read(request, current_principal.get().tenant)
            except (ResourceExhausted, DeadlineExceeded) as refused:  # the slow-read limits
                raise told(refused, context) from None
            if deserialize is None:
                return data
            try:
                if message_class is not None and len(data) > request_pieces.PIECE_BYTES:
                    parse = functools.partial(request_pieces.parse, message_class, data)
                    tenant = current_principal.get().tenant
                    return await self._large.run_blocking(tenant, parse)
                return deserialize(data)
            except DECODE_ERRORS as exc:
                raise told(malformed(exc), context) from None
            except GatewayError as refused:  # a field past its limit (request_pieces)
                raise told(refused, context) from None

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


def _message_class(deserialize: Callable[[bytes], Any] | None) -> type[Message] | None:
    """The message class whose FromString `deserialize` is (generated handlers' own), else
    None: such a deserializer is called as it is."""
    owner = getattr(deserialize, "__self__", None)
    if isinstance(owner, type) and issubclass(owner, Message):
        return owner
    return None
