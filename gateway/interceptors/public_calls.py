"""Health and reflection: the calls anyone may make, without credentials, read within limits.

gRPC reads a unary call's request before its handler runs, however long the message takes to
arrive, up to the transport's limit (2 x max_request_bytes + 1 MiB): a caller without
credentials that sent headers and most of a large Health.Check body, then went silent, kept it
in the gateway's memory for as long as its connection lived (the qgateway.v1 methods read
nothing before authentication, gateway.interceptors.boundary). Here these calls are served
request-streaming too, and each message is read as an authenticated caller's is
(gateway.interceptors.request_reads), every caller of them counted as one: a message still
arriving after a second is slow, at most MAX_SLOW_READS of them at once, and none takes longer
than READ_TIMEOUT_S (or `server.request_read_timeout_s` when shorter). A message is at most
MAX_REQUEST_BYTES (a health check names a service; a reflection request a file or a symbol).
A Health.Watch holds a task for as long as its caller stays: at most `max_watches` at once,
RESOURCE_EXHAUSTED past them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Final

import grpc

from gateway.api.context import Context
from gateway.domain.errors import GatewayError, ResourceExhausted
from gateway.interceptors.boundary import (
    DECODE_ERRORS,
    PendingRequest,
    abort,
    malformed,
    size_checked,
)
from gateway.interceptors.request_reads import RequestReads

PUBLIC_PREFIXES: Final = ("/grpc.health.v1.Health/", "/grpc.reflection.")
MAX_REQUEST_BYTES: Final = 64 * 1024
MAX_SLOW_READS: Final = 8
READ_TIMEOUT_S: Final = 10.0
# The slow-read limits' key for every caller of these methods: no tenant is named "".
STRANGERS: Final = ""


class _NextMessage(PendingRequest):
    """The next message of a request stream (reflection's); StopAsyncIteration at its end."""

    async def read(self) -> bytes:
        data = await self.next()
        if data is None:
            raise StopAsyncIteration
        return data


class PublicCalls:
    """The limits on health and reflection calls of this process.

    Args:
        read_timeout_s: The server's request read timeout (the shorter of it and
            READ_TIMEOUT_S applies).
        max_watches: Health.Watch calls open at once.
    """

    def __init__(self, read_timeout_s: float, max_watches: int) -> None:
        self.reads = RequestReads(MAX_SLOW_READS, min(read_timeout_s, READ_TIMEOUT_S))
        self.max_watches = max_watches
        self.watches = 0

    async def message(self, pending: PendingRequest, decode: Callable[[bytes], Any] | None) -> Any:
        data = await self.reads.read(pending, STRANGERS)
        if decode is None:
            return data
        try:
            return decode(data)
        except DECODE_ERRORS as exc:
            raise malformed(exc) from None

    def watch_opened(self) -> None:
        if self.watches >= self.max_watches:
            raise ResourceExhausted(
                "TOO_MANY_WATCHES",
                f"this gateway process serves at most {self.max_watches} Health.Watch calls "
                "at once (server.max_health_watches); use Health.Check, or retry",
                metadata={"limit": "server.max_health_watches", "max": str(self.max_watches)},
                retry_after=5.0,
            )
        self.watches += 1

    def watch_closed(self) -> None:
        self.watches -= 1


class PublicCallInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    def __init__(self, calls: PublicCalls) -> None:
        self._calls = calls

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method: str = handler_call_details.method
        if handler is None or not method.startswith(PUBLIC_PREFIXES):
            return handler
        calls = self._calls
        decode = handler.request_deserializer
        serialize = handler.response_serializer
        raw = size_checked(MAX_REQUEST_BYTES)
        if handler.unary_unary is not None:
            unary = handler.unary_unary

            async def check(requests: AsyncIterator[Any], context: Context) -> Any:
                pending = PendingRequest(requests, method, context, None)
                try:
                    request = await calls.message(pending, decode)
                except GatewayError as err:
                    return await abort(context, err)
                return await unary(request, context)

            return grpc.stream_unary_rpc_method_handler(
                check, request_deserializer=raw, response_serializer=serialize
            )
        if handler.unary_stream is not None:
            return grpc.stream_stream_rpc_method_handler(
                _watch(calls, handler.unary_stream, method, decode),
                request_deserializer=raw,
                response_serializer=serialize,
            )
        if handler.stream_stream is not None:
            return grpc.stream_stream_rpc_method_handler(
                _each_read(calls, handler.stream_stream, method, decode),
                request_deserializer=raw,
                response_serializer=serialize,
            )
        return handler


def _watch(
    calls: PublicCalls,
    behaviour: Callable[[Any, Context], Any],
    method: str,
    decode: Callable[[bytes], Any] | None,
) -> Callable[[AsyncIterator[Any], Context], Awaitable[None]]:
    """A unary-stream call (Health.Watch, which writes with context.write), counted while
    open."""

    async def watch(requests: AsyncIterator[Any], context: Context) -> None:
        pending = PendingRequest(requests, method, context, None)
        try:
            request = await calls.message(pending, decode)
            calls.watch_opened()
        except GatewayError as err:
            return await abort(context, err)
        try:
            # Health.Watch (gateway.api.health_service) writes with context.write.
            await behaviour(request, context)
        finally:
            calls.watch_closed()

    return watch


def _each_read(
    calls: PublicCalls,
    behaviour: Callable[[AsyncIterator[Any], Context], AsyncIterator[Any]],
    method: str,
    decode: Callable[[bytes], Any] | None,
) -> Callable[[AsyncIterator[Any], Context], AsyncIterator[Any]]:
    """A stream-stream call (reflection) whose every message is read within the limits."""

    async def each(requests: AsyncIterator[Any], context: Context) -> AsyncIterator[Any]:
        async def messages() -> AsyncIterator[Any]:
            pending = _NextMessage(requests, method, context, None)
            while True:
                try:
                    yield await calls.message(pending, decode)
                except StopAsyncIteration:
                    return

        try:
            async for response in behaviour(messages(), context):
                yield response
        except GatewayError as err:
            await abort(context, err)

    return each
