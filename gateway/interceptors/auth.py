"""Authentication: resolves the caller's principal from its API key, or ends the call
UNAUTHENTICATED. Health and reflection stay open (probes and tools carry no keys)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from gateway.api.context import Context
from gateway.domain.errors import GatewayError
from gateway.interceptors.handlers import Stream, Unary, is_gateway_method, rewrap
from gateway.security.api_keys import KeyRing
from gateway.security.principals import ANONYMOUS, AuthFailure, Principal, current_principal


def _claimed_prefix(metadata: Any) -> str:
    """The public prefix a presented `qgw_<prefix>_<secret>` key claims ("" if none)."""
    for key, value in metadata or ():
        if key == "authorization" and isinstance(value, str):
            parts = value.removeprefix("Bearer ").split("_")
            if len(parts) >= 3 and parts[0] == "qgw" and parts[1].isalnum():
                return parts[1][:32]
    return ""


class AuthInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Sets each gateway call's principal.

    Args:
        keys: The configured API keys; when there are none, every caller is `anonymous`.
        anonymous: The principal of keyless callers (tenant "default"; admin per configuration).
        on_failure: Told of every refused call (the audit log), before it is refused.
    """

    def __init__(
        self,
        keys: KeyRing,
        anonymous: Principal = ANONYMOUS,
        on_failure: Callable[[AuthFailure], None] | None = None,
    ) -> None:
        self._keys = keys
        self._anonymous = anonymous
        self._on_failure = on_failure

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if not is_gateway_method(handler, handler_call_details.method):
            return handler
        if not self._keys and self._anonymous == ANONYMOUS:
            return handler  # the context variable's default is this caller already
        keys, anonymous, on_failure = self._keys, self._anonymous, self._on_failure
        method = handler_call_details.method

        def authenticate(context: Context) -> Principal:
            try:
                return keys.authenticate(context.invocation_metadata()) if keys else anonymous
            except GatewayError as err:
                if on_failure is not None:
                    on_failure(
                        AuthFailure(
                            method=method,
                            peer=context.peer() or "",
                            reason=err.reason,
                            key_prefix=_claimed_prefix(context.invocation_metadata()),
                        )
                    )
                raise

        def wrap_unary(unary: Unary) -> Unary:
            async def handle(request: Any, context: Context) -> Any:
                token = current_principal.set(authenticate(context))
                try:
                    return await unary(request, context)
                finally:
                    current_principal.reset(token)

            return handle

        def wrap_stream(stream: Stream) -> Stream:
            async def handle(request: Any, context: Context) -> AsyncIterator[Any]:
                # Not reset afterwards: a stream generator may be closed from another context,
                # where the token is invalid, and each call runs in a task of its own anyway.
                current_principal.set(authenticate(context))
                async for item in stream(request, context):
                    yield item

            return handle

        return rewrap(handler, wrap_unary, wrap_stream)
