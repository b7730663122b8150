"""Authentication and rate limits on every kind of gateway call, in process, on a real
grpc.aio server with the gateway's own interceptors in the gateway's order: a server-streaming
call is authenticated and rate-limited as a unary one is, and SubmitJob also takes a token of
its tenant's submit rate."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from gateway.api.context import Context
from gateway.interceptors.auth import AuthInterceptor
from gateway.interceptors.boundary import ErrorBoundaryInterceptor
from gateway.interceptors.rate_limit import RateLimitInterceptor
from gateway.security.api_keys import METADATA_KEY, KeyRing, KeyVerifier, generate_key
from gateway.security.authenticator import Authenticator
from gateway.security.policies import PolicyBook
from gateway.security.principals import current_principal
from gateway.security.rate_limits import RateLimiter
from gateway.security.tenant_policy import RateLimit, Tenant, TenantPolicy, etag_of
from tests.rpc import status_of

pytestmark = pytest.mark.anyio
WATCH = "/qgateway.v1.Probe/Watch"
SUBMIT = "/qgateway.v1.JobService/SubmitJob"
KEY = generate_key("acme")
# One request, then none (the clock never moves, so no token refills).
ONE_REQUEST = generate_key("initech")
# Requests unlimited, one submission.
ONE_SUBMIT = generate_key("globex")


def _tenant(tid: str, policy: TenantPolicy) -> Tenant:
    return Tenant(tid, "", policy, etag_of("", policy))


@pytest.fixture
async def channel() -> AsyncIterator[grpc.aio.Channel]:
    async def watch(request: Any, context: Context) -> AsyncIterator[bytes]:
        yield current_principal.get().tenant.encode()

    async def submit(request: Any, context: Context) -> bytes:
        return current_principal.get().tenant.encode()

    handlers = (
        grpc.method_handlers_generic_handler(
            "qgateway.v1.Probe",
            {"Watch": grpc.unary_stream_rpc_method_handler(watch)},
        ),
        grpc.method_handlers_generic_handler(
            "qgateway.v1.JobService",
            {"SubmitJob": grpc.unary_unary_rpc_method_handler(submit)},
        ),
    )
    policies = PolicyBook(
        [
            _tenant("initech", TenantPolicy(request_rate=RateLimit(per_second=1.0, burst=1))),
            _tenant("globex", TenantPolicy(submit_rate=RateLimit(per_second=1.0, burst=1))),
        ]
    )
    keys = KeyRing([KEY.config, ONE_REQUEST.config, ONE_SUBMIT.config])
    server = grpc.aio.server(
        interceptors=[
            ErrorBoundaryInterceptor(1 << 20),
            AuthInterceptor(Authenticator(KeyVerifier(keys))),
            RateLimitInterceptor(policies, RateLimiter(clock=lambda: 0.0)),
        ]
    )
    server.add_generic_rpc_handlers(handlers)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield channel
    finally:
        await server.stop(None)


def _metadata(key: str | None) -> tuple[tuple[str, str], ...]:
    return () if key is None else ((METADATA_KEY, f"Bearer {key}"),)


async def _watch(channel: grpc.aio.Channel, key: str | None) -> list[bytes]:
    call = channel.unary_stream(WATCH)(b"", metadata=_metadata(key), timeout=10)
    return [item async for item in call]


async def _submit(channel: grpc.aio.Channel, key: str) -> bytes:
    result: bytes = await channel.unary_unary(SUBMIT)(b"", metadata=_metadata(key), timeout=10)
    return result


async def test_a_streaming_call_needs_credentials_and_runs_as_their_tenant(
    channel: grpc.aio.Channel,
) -> None:
    for key in (None, "qgw_0123456789abcdef_wrong"):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await _watch(channel, key)
        assert caught.value.code() is grpc.StatusCode.UNAUTHENTICATED
    assert await _watch(channel, KEY.key) == [b"acme"]


async def test_a_streaming_call_takes_a_request_token(channel: grpc.aio.Channel) -> None:
    assert await _watch(channel, ONE_REQUEST.key) == [b"initech"]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _watch(channel, ONE_REQUEST.key)
    status = status_of(caught.value)
    assert (status.code, status.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED")
    # Another tenant's calls are not counted against it.
    assert await _watch(channel, KEY.key) == [b"acme"]


async def test_a_submission_takes_a_submit_token(channel: grpc.aio.Channel) -> None:
    assert await _submit(channel, ONE_SUBMIT.key) == b"globex"
    assert await _watch(channel, ONE_SUBMIT.key) == [b"globex"]  # requests are not limited
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _submit(channel, ONE_SUBMIT.key)
    status = status_of(caught.value)
    assert (status.code, status.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED")
