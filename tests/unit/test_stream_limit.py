"""The per-tenant limit of open server streams (gateway.interceptors.stream_limit)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import grpc
import pytest

from gateway.domain.errors import Code, ResourceExhausted
from gateway.interceptors.handlers import RUN_METHOD
from gateway.interceptors.stream_limit import StreamLimiter, StreamLimitInterceptor
from gateway.security.principals import Principal, current_principal


def test_a_tenant_opens_up_to_the_limit_and_a_closed_stream_frees_its_place() -> None:
    limiter = StreamLimiter(2)
    limiter.open("a")
    limiter.open("a")
    with pytest.raises(ResourceExhausted) as refused:
        limiter.open("a")
    err = refused.value
    assert err.code is Code.RESOURCE_EXHAUSTED and err.reason == "TOO_MANY_STREAMS"
    assert err.metadata["openStreams"] == "2" and err.metadata["maxStreams"] == "2"
    assert err.quota_violations and err.retry_after == 1.0
    assert limiter.held("a") == 2  # the refused stream was not counted
    limiter.open("b")  # another tenant's streams are its own
    limiter.close("a")
    limiter.open("a")
    for _ in range(2):
        limiter.close("a")
    limiter.close("b")
    assert limiter.held("a") == limiter.held("b") == 0


def test_a_limit_below_one_is_refused() -> None:
    with pytest.raises(ValueError):
        StreamLimiter(0)


def _intercepted(limiter: StreamLimiter, method: str, handler: Any) -> Any:
    async def continuation(details: Any) -> Any:
        return handler

    details = SimpleNamespace(method=method, invocation_metadata=())
    interceptor = StreamLimitInterceptor(limiter)
    return asyncio.run(interceptor.intercept_service(continuation, details))


def test_the_interceptor_counts_run_and_streams_per_tenant_and_not_other_unary_calls() -> None:
    limiter = StreamLimiter(1)
    seen: list[tuple[str, int, int]] = []

    async def unary(request: Any, context: Any) -> str:
        seen.append((current_principal.get().tenant, limiter.held("a"), limiter.held("b")))
        return "ok"

    async def stream(request: Any, context: Any) -> AsyncIterator[str]:
        seen.append((current_principal.get().tenant, limiter.held("a"), limiter.held("b")))
        yield "ok"

    run = _intercepted(limiter, RUN_METHOD, grpc.unary_unary_rpc_method_handler(unary))
    get = _intercepted(
        limiter, "/qgateway.v1.JobService/GetJob", grpc.unary_unary_rpc_method_handler(unary)
    )
    watch = _intercepted(
        limiter, "/qgateway.v1.JobService/WatchJob", grpc.unary_stream_rpc_method_handler(stream)
    )

    async def as_tenant(tenant: str) -> None:
        current_principal.set(Principal(tenant=tenant, id="test"))
        await run.unary_unary(b"", None)
        await get.unary_unary(b"", None)
        assert [item async for item in watch.unary_stream(b"", None)] == ["ok"]

    async def both() -> None:
        await asyncio.create_task(as_tenant("a"))
        await asyncio.create_task(as_tenant("b"))

    asyncio.run(both())
    # Run and WatchJob held one place of their own tenant's (a limit of 1 each); GetJob none.
    assert seen == [("a", 1, 0), ("a", 0, 0), ("a", 1, 0), ("b", 0, 1), ("b", 0, 0), ("b", 0, 1)]
    assert limiter.held("a") == limiter.held("b") == 0
