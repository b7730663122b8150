"""Error boundary for qgateway.v1 methods.

Wraps each method handler so that:
  * a request above the gateway's own size limit (which sits below the transport limit) is
    INVALID_ARGUMENT with reason REQUEST_TOO_LARGE and the sizes: it can never succeed as sent,
    so it carries no RetryInfo and is not RESOURCE_EXHAUSTED, which generic policies retry;
  * a GatewayError raised by a servicer becomes its status with details;
  * anything else is a gateway bug: INTERNAL with a generic message, logged with its traceback.

Requests reach the layers inside it as bytes: they are decoded after authentication
(gateway.interceptors.decode), where a request that cannot be decoded is MALFORMED_REQUEST.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc

from gateway.api.context import Context, set_request_bytes
from gateway.api.errors import to_status
from gateway.domain.errors import GatewayError, Internal, InvalidArgument
from gateway.interceptors.handlers import is_gateway_method, rewrap

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


def _size_checked(max_bytes: int) -> Callable[[bytes], Any]:
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


def _rejected(
    request: _Rejected, method: str, context: Context, on_rejected: OnRejected | None
) -> GatewayError:
    if on_rejected is not None:
        on_rejected(method, context.peer() or "", request.error)
    return request.error


def _unwrapped(request: Any) -> Any:
    """The bytes of a _Received, their size recorded for the call (each call is its own task,
    so the size is the call's own)."""
    if isinstance(request, _Received):
        set_request_bytes(request.size)
        return request.data
    return request


def _wrap_unary(
    behaviour: Callable[[Any, Context], Awaitable[Any]],
    method: str,
    on_rejected: OnRejected | None = None,
) -> Callable[[Any, Context], Awaitable[Any]]:
    async def handle(request: Any, context: Context) -> Any:
        if isinstance(request, _Rejected):
            await abort(context, _rejected(request, method, context, on_rejected))
        try:
            return await behaviour(_unwrapped(request), context)
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
    async def handle(request: Any, context: Context) -> AsyncIterator[Any]:
        if isinstance(request, _Rejected):
            await abort(context, _rejected(request, method, context, on_rejected))
        try:
            async for item in behaviour(_unwrapped(request), context):
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
        return rewrap(
            handler,
            lambda unary: _wrap_unary(unary, method, self._on_rejected),
            lambda stream: _wrap_stream(stream, method, self._on_rejected),
            _size_checked(self._max),
        )
