"""Authentication: resolves the caller's principal (gateway.security.authenticator: mTLS or a
forwarded client certificate, a JWT, an API key) or ends the call UNAUTHENTICATED. Health and
reflection stay open (probes and tools carry no credentials)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from gateway.api.context import Context
from gateway.domain.errors import GatewayError
from gateway.interceptors.handlers import Stream, Unary, is_gateway_method, rewrap
from gateway.security.authenticator import (
    Authenticator,
    claimed_key_prefix,
    refused_principal,
)
from gateway.security.principals import ANONYMOUS, AuthFailure, Principal, current_principal


class AuthInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Sets each gateway call's principal.

    Args:
        authenticator: Resolves principals; with authentication off, its anonymous principal.
        on_failure: Told of every refused call (the audit log), before it is refused; it gets
            the key prefix a `qgw_` key claimed, never a secret.
    """

    def __init__(
        self,
        authenticator: Authenticator,
        *,
        on_failure: Callable[[AuthFailure], None] | None = None,
        uses_certificates: bool = False,
    ) -> None:
        self._authenticator = authenticator
        self._on_failure = on_failure
        # Reading the auth context costs a little; only certificate rules need it (an XFCC
        # header without trusted proxies is refused without it).
        self._uses_certificates = uses_certificates

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if not is_gateway_method(handler, handler_call_details.method):
            return handler
        if self._authenticator.anonymous == ANONYMOUS:
            return handler  # the context variable's default is this caller already
        authenticator, on_failure = self._authenticator, self._on_failure
        uses_certificates = self._uses_certificates
        method = handler_call_details.method

        async def authenticate(context: Context) -> Principal:
            metadata = context.invocation_metadata() or ()
            try:
                auth_context = context.auth_context() if uses_certificates else {}
                return await authenticator.authenticate(
                    metadata, auth_context, context.peer() or ""
                )
            except GatewayError as err:
                if on_failure is not None:
                    on_failure(
                        AuthFailure(
                            method=method,
                            peer=context.peer() or "",
                            reason=err.reason,
                            code=err.code,
                            key_prefix=claimed_key_prefix(metadata),
                            principal=refused_principal(err),
                        )
                    )
                raise

        def wrap_unary(unary: Unary) -> Unary:
            async def handle(request: Any, context: Context) -> Any:
                token = current_principal.set(await authenticate(context))
                try:
                    return await unary(request, context)
                finally:
                    current_principal.reset(token)

            return handle

        def wrap_stream(stream: Stream) -> Stream:
            async def handle(request: Any, context: Context) -> AsyncIterator[Any]:
                # Not reset afterwards: a stream generator may be closed from another context,
                # where the token is invalid, and each call runs in a task of its own anyway.
                current_principal.set(await authenticate(context))
                async for item in stream(request, context):
                    yield item

            return handle

        return rewrap(handler, wrap_unary, wrap_stream)
