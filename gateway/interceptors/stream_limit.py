"""Open server streams per tenant: WatchJob and StreamJobResult hold a stream (and a watcher or
a result in memory) for as long as the caller keeps them open, and Run holds a waiter until its
job ends (up to `server.run_max_wait_s`), so one tenant could otherwise open them without bound
on the process every tenant shares (a Run repeating one request_id creates no job and meets no
queue limit). Past `server.max_streams_per_tenant` a new one is RESOURCE_EXHAUSTED
TOO_MANY_STREAMS (QuotaFailure, RetryInfo) before its handler runs; other unary calls are not
counted.

Placed after authentication (the tenant is the principal's). Counted per process, like rate
limits: replicas each allow the limit.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import grpc

from gateway.api.context import Context
from gateway.domain.errors import QuotaViolation, ResourceExhausted
from gateway.interceptors.handlers import RUN_METHOD, Stream, Unary, is_gateway_method, rewrap
from gateway.security.principals import current_principal


class StreamLimiter:
    """Open streams per tenant, up to a limit."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("a stream limit is at least 1")
        self.limit = limit
        self._open: dict[str, int] = {}

    def open(self, tenant: str) -> None:
        """Counts a new stream of `tenant`.

        Raises:
            ResourceExhausted: TOO_MANY_STREAMS, when the tenant holds `limit` already.
        """
        held = self._open.get(tenant, 0)
        if held >= self.limit:
            raise too_many_streams(tenant, held, self.limit)
        self._open[tenant] = held + 1

    def close(self, tenant: str) -> None:
        held = self._open.get(tenant, 0) - 1
        if held > 0:
            self._open[tenant] = held
        else:  # no entry kept for a tenant with nothing open
            self._open.pop(tenant, None)

    @contextmanager
    def holding(self, tenant: str) -> Iterator[None]:
        """Counts one stream of `tenant` for the block (open, then close however it ends).

        Raises:
            ResourceExhausted: TOO_MANY_STREAMS, as `open`.
        """
        self.open(tenant)
        try:
            yield
        finally:
            self.close(tenant)

    def held(self, tenant: str) -> int:
        return self._open.get(tenant, 0)


def too_many_streams(tenant: str, held: int, limit: int) -> ResourceExhausted:
    return ResourceExhausted(
        "TOO_MANY_STREAMS",
        f"tenant {tenant} has {held} open streams (WatchJob, StreamJobResult) and waiting Run "
        f"calls, the limit of {limit}; close one, or retry",
        metadata={
            "tenant": f"tenants/{tenant}",
            "limit": "max_streams_per_tenant",
            "maxStreams": str(limit),
            "openStreams": str(held),
        },
        quota_violations=[QuotaViolation(f"tenants/{tenant}", f"at most {limit} open streams")],
        retry_after=1.0,
    )


class StreamLimitInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    def __init__(self, limiter: StreamLimiter) -> None:
        self._limiter = limiter

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if not is_gateway_method(handler, handler_call_details.method):
            return handler
        waits = handler_call_details.method == RUN_METHOD
        if handler.unary_stream is None and not waits:
            return handler
        limiter = self._limiter

        def wrap_unary(unary: Unary) -> Unary:
            async def handle(request: Any, context: Context) -> Any:
                with limiter.holding(current_principal.get().tenant):
                    return await unary(request, context)

            return handle

        def wrap_stream(stream: Stream) -> Stream:
            async def handle(request: Any, context: Context) -> AsyncIterator[Any]:
                # Released also when the caller goes away mid-stream (the generator is closed).
                with limiter.holding(current_principal.get().tenant):
                    async for item in stream(request, context):
                        yield item

            return handle

        return rewrap(handler, wrap_unary, wrap_stream)
