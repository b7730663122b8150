"""Authentication: resolves the caller's principal from its API key, or ends the call
UNAUTHENTICATED. Health and reflection stay open (probes and tools carry no keys)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from gateway.api.context import Context
from gateway.interceptors.boundary import SERVICE_PREFIX
from gateway.security.api_keys import KeyRing
from gateway.security.principals import current_principal


class AuthInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    def __init__(self, keys: KeyRing) -> None:
        self._keys = keys

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method: str = handler_call_details.method
        if handler is None or not method.startswith(SERVICE_PREFIX) or not self._keys:
            return handler
        keys = self._keys
        if handler.unary_unary is not None:
            unary = handler.unary_unary

            async def handle_unary(request: Any, context: Context) -> Any:
                token = current_principal.set(keys.authenticate(context.invocation_metadata()))
                try:
                    return await unary(request, context)
                finally:
                    current_principal.reset(token)

            return grpc.unary_unary_rpc_method_handler(
                handle_unary,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            stream = handler.unary_stream

            async def handle_stream(request: Any, context: Context) -> AsyncIterator[Any]:
                # Not reset afterwards: a stream generator may be closed from another context,
                # where the token is invalid, and each call runs in a task of its own anyway.
                current_principal.set(keys.authenticate(context.invocation_metadata()))
                async for item in stream(request, context):
                    yield item

            return grpc.unary_stream_rpc_method_handler(
                handle_stream,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler
