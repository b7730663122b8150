"""Error boundary for qgateway.v1 methods.

Wraps each method handler so that:
  * a request above the gateway's own size limit (which sits below the transport limit) is
    INVALID_ARGUMENT with reason REQUEST_TOO_LARGE and the sizes: it can never succeed as sent,
    so it carries no RetryInfo and is not RESOURCE_EXHAUSTED, which generic policies retry;
  * a GatewayError raised by a servicer becomes its status with details;
  * anything else is a gateway bug: INTERNAL with a generic message, logged with its traceback.

Requests reach the layers inside it unread (PendingRequest): gRPC is given every method as
request-streaming, so it reads no message before the call is authenticated; the decode
interceptor reads and decodes it after authentication (gateway.interceptors.decode), where a
request too large is REQUEST_TOO_LARGE and one that cannot be decoded MALFORMED_REQUEST.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from gateway.api import preserialized
from gateway.api.context import Context, set_request_bytes
from gateway.api.errors import to_status
from gateway.domain.errors import GatewayError, Internal, InvalidArgument
from gateway.interceptors.handlers import is_gateway_method

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Rejected:
    """Stands in for a request that failed to decode; the handler answers with `error`."""

    error: GatewayError


@dataclass(frozen=True)
class _Received:
    """A request's bytes and their size, which servicers read (request_bytes) to decide
    whether deriving things from the request may run on the event loop."""

    data: bytes
    size: int


def size_checked(max_bytes: int) -> Callable[[bytes], Any]:
    """gRPC's request deserializer: the bytes, kept as they are, or their refusal."""

    def receive(data: bytes) -> Any:
        if len(data) > max_bytes:
            return _Rejected(
                InvalidArgument(
                    "REQUEST_TOO_LARGE",
                    f"request of {len(data)} bytes exceeds the gateway limit of {max_bytes} "
                    "bytes; split the job or send fewer bindings per PUB",
                    metadata={"sizeBytes": str(len(data)), "limitBytes": str(max_bytes)},
                )
            )
        return _Received(data, len(data))

    return receive


# What a request that protobuf cannot decode raises.
DECODE_ERRORS: tuple[type[Exception], ...] = (DecodeError, UnicodeDecodeError, ValueError)


def malformed(exc: Exception) -> InvalidArgument:
    """The refusal of a request that could not be decoded (not gRPC's UNKNOWN)."""
    return InvalidArgument(
        "MALFORMED_REQUEST", f"request could not be decoded as protobuf: {type(exc).__name__}"
    )


def _unexpected(exc: BaseException, method: str) -> GatewayError:
    log.exception("bug in %s", method, exc_info=exc)
    return Internal("INTERNAL_ERROR", "internal error in the gateway; it has been logged")


async def _unimplemented(context: Context, method: str) -> None:
    # grpc's generated base servicer raises NotImplementedError for an RPC the servicer does
    # not define yet: UNIMPLEMENTED, as gRPC answers an unknown method, not INTERNAL.
    await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{method} is not implemented")


async def abort(context: Context, error: GatewayError) -> None:
    status = to_status(error)
    await context.abort(status.code, status.details, status.trailing_metadata)


# Told of a request refused before the audit interceptor saw it (too large, or not decodable):
# the full method, the peer and the error.
OnRejected = Callable[[str, str, GatewayError], None]


class PendingRequest:
    """A call's request message not read yet. The boundary serves every method as
    request-streaming, so gRPC reads no message before the behaviour asks for one: the
    interceptors inside read only metadata and the caller's identity, and decoding reads the
    message (`read`) once the caller is authenticated. A call refused before that never has
    its body held: a caller without credentials that sent headers and most of a 16 MiB body,
    then went silent, kept it in memory for as long as it liked (1.2 GB over 80 streams)."""

    def __init__(
        self,
        requests: AsyncIterator[Any],
        method: str,
        context: Context,
        on_rejected: OnRejected | None,
    ) -> None:
        self._requests = requests
        self._method = method
        self._context = context
        self._on_rejected = on_rejected

    async def read(self) -> bytes:
        """The request's bytes (their size recorded for the call: each call is its own task);
        raises its refusal, told to `on_rejected`."""
        data = await self.next()
        if data is None:
            raise InvalidArgument("MALFORMED_REQUEST", "the call carried no request message")
        return data

    async def next(self) -> bytes | None:
        """The next message's bytes, None at the end of the call's requests (read's refusals
        otherwise)."""
        async for request in self._requests:
            if isinstance(request, _Rejected):
                if self._on_rejected is not None:
                    peer = self._context.peer() or ""
                    self._on_rejected(self._method, peer, request.error)
                raise request.error
            received: _Received = request
            set_request_bytes(received.size)
            return received.data
        return None


def _wrap_unary(
    behaviour: Callable[[Any, Context], Awaitable[Any]],
    method: str,
    on_rejected: OnRejected | None = None,
) -> Callable[[Any, Context], Awaitable[Any]]:
    async def handle(requests: AsyncIterator[Any], context: Context) -> Any:
        request = PendingRequest(requests, method, context, on_rejected)
        try:
            return await behaviour(request, context)
        except GatewayError as err:
            await abort(context, err)
        except (grpc.aio.AbortError, grpc.RpcError):
            raise
        except NotImplementedError:
            await _unimplemented(context, method)
        except Exception as exc:
            await abort(context, _unexpected(exc, method))

    return handle


def _wrap_stream(
    behaviour: Callable[[Any, Context], AsyncIterator[Any]],
    method: str,
    on_rejected: OnRejected | None = None,
) -> Callable[[Any, Context], AsyncIterator[Any]]:
    async def handle(requests: AsyncIterator[Any], context: Context) -> AsyncIterator[Any]:
        request = PendingRequest(requests, method, context, on_rejected)
        try:
            async for item in behaviour(request, context):
                yield item
        except GatewayError as err:
            await abort(context, err)
        except (grpc.aio.AbortError, grpc.RpcError):
            raise
        except NotImplementedError:
            await _unimplemented(context, method)
        except Exception as exc:
            await abort(context, _unexpected(exc, method))

    return handle


class ErrorBoundaryInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    def __init__(self, max_request_bytes: int, on_rejected: OnRejected | None = None) -> None:
        self._max = max_request_bytes
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
        # Request-streaming to gRPC, so that no message is read before authentication.
        deserializer = size_checked(self._max)
        # A response may be bytes the servicer already holds (a stored result).
        response_serializer = preserialized.serializer(handler.response_serializer)
        if handler.unary_unary is not None:
            return grpc.stream_unary_rpc_method_handler(
                _wrap_unary(handler.unary_unary, method, self._on_rejected),
                request_deserializer=deserializer,
                response_serializer=response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.stream_stream_rpc_method_handler(
                _wrap_stream(handler.unary_stream, method, self._on_rejected),
                request_deserializer=deserializer,
                response_serializer=response_serializer,
            )
        return handler
