"""Rate limits: every RPC of a tenant's principals takes a token of its request rate, SubmitJob
and Run also one of its submit rate (gateway.security.rate_limits), before the servicer runs.

Placed after authentication, so the caller's principal (and its tenant's policy) is known,
and before the request is read: a refusal costs no read or decode of the caller's bytes (up to
16 MiB, ~0.8 s of the event loop to parse at worst), so a tenant's rate bounds what its
requests cost to parse. A refusal is RESOURCE_EXHAUSTED RATE_LIMITED with QuotaFailure and
RetryInfo, told to `on_refused` (the audit log: it sees no request fields). The cost per call
is a dict lookup of the policy and, for a limited tenant, one bucket update; while no tenant
has a rate at all, calls are not wrapped.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from gateway.api.context import Context
from gateway.domain.errors import GatewayError
from gateway.interceptors.handlers import (
    SUBMIT_METHODS,
    Stream,
    Unary,
    is_gateway_method,
    rewrap,
)
from gateway.security.policies import PolicyBook
from gateway.security.principals import current_principal
from gateway.security.rate_limits import RateLimiter

# Told of a call refused for its rate: the full method, the call's context and the refusal.
OnRefused = Callable[[str, Context, GatewayError], None]


class RateLimitInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Takes request and submit tokens per tenant.

    Args:
        policies: Every tenant's policy (request_rate, submit_rate).
        limiter: The tenants' buckets (a clock can be injected there).
        on_refused: Told of every refusal.
    """

    def __init__(
        self,
        policies: PolicyBook,
        limiter: RateLimiter | None = None,
        on_refused: OnRefused | None = None,
    ) -> None:
        self._policies = policies
        self._limiter = limiter if limiter is not None else RateLimiter()
        self._on_refused = on_refused

    def _check(self, submit: bool, method: str, context: Context) -> None:
        tenant = current_principal.get().tenant
        policy = self._policies.policy(tenant)
        try:
            # A tenant whose rate was removed (UpdateTenant) has its bucket dropped here.
            self._limiter.check(tenant, "request", policy.request_rate)
            if submit:
                self._limiter.check(tenant, "submit", policy.submit_rate)
        except GatewayError as refused:
            if self._on_refused is not None:
                self._on_refused(method, context, refused)
            raise

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if not is_gateway_method(handler, method) or not self._policies.rate_limited:
            return handler
        submit = method in SUBMIT_METHODS
        check = self._check

        def wrap_unary(unary: Unary) -> Unary:
            async def handle(request: Any, context: Context) -> Any:
                check(submit, method, context)
                return await unary(request, context)

            return handle

        def wrap_stream(stream: Stream) -> Stream:
            async def handle(request: Any, context: Context) -> AsyncIterator[Any]:
                check(submit, method, context)
                async for item in stream(request, context):
                    yield item

            return handle

        return rewrap(handler, wrap_unary, wrap_stream)
