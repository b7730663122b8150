"""Requests are decoded inside authentication (gateway.interceptors.decode): the parse of a
request costs time and memory in proportion to its bytes (16 MiB of empty messages held the
event loop ~0.8 s and took ~20x its size), and a caller with no credentials had every request
decoded before it was refused. An authenticated caller's message still arriving is read under
its tenant's slow-read limits (gateway.interceptors.request_reads). In process, on a real
grpc.aio server with the gateway's own interceptors in the gateway's order."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import grpc
import pytest
from google.protobuf.message import DecodeError

from gateway.api.context import Context, request_bytes
from gateway.domain.errors import GatewayError
from gateway.interceptors.auth import AuthInterceptor
from gateway.interceptors.boundary import ErrorBoundaryInterceptor
from gateway.interceptors.decode import DecodeInterceptor
from gateway.interceptors.rate_limit import RateLimitInterceptor
from gateway.interceptors.request_reads import RequestReads
from gateway.security.api_keys import METADATA_KEY, KeyRing, KeyVerifier, generate_key
from gateway.security.authenticator import Authenticator
from gateway.security.policies import PolicyBook
from gateway.security.rate_limits import RateLimiter
from gateway.security.tenant_policy import RateLimit, Tenant, TenantPolicy, etag_of
from tests.rpc import status_of

pytestmark = pytest.mark.anyio
METHOD = "/qgateway.v1.Probe/Echo"
KEY = generate_key("acme")
OTHER = generate_key("globex")
# One call, then none: the test's clock never moves, so no token refills.
RATED = generate_key("initech")
RATED_POLICY = TenantPolicy(request_rate=RateLimit(per_second=1.0, burst=1))
MAX_SLOW = 2
READ_TIMEOUT_S = 3.0


class Seen:
    def __init__(self) -> None:
        self.decoded: list[bytes] = []
        self.rejected: list[tuple[str, str]] = []
        self.refused: list[tuple[str, str]] = []
        self.sizes: list[int] = []
        # Short enough that tests wait little, far above an arrived message's read.
        self.reads = RequestReads(MAX_SLOW, READ_TIMEOUT_S, slow_after_s=0.2)

    def deserialize(self, data: bytes) -> bytes:
        self.decoded.append(data)
        if data.startswith(b"\xff"):
            raise DecodeError("not a message")
        return data

    def on_rejected(self, method: str, peer: str, error: GatewayError) -> None:
        self.rejected.append((method, error.reason))

    def on_refused(self, method: str, context: Context, error: GatewayError) -> None:
        self.refused.append((method, error.reason))


@pytest.fixture
async def served() -> AsyncIterator[tuple[grpc.aio.Channel, Seen]]:
    seen = Seen()

    async def echo(request: Any, context: Context) -> bytes:
        seen.sizes.append(request_bytes())
        return bytes(request)

    handler = grpc.method_handlers_generic_handler(
        "qgateway.v1.Probe",
        {
            "Echo": grpc.unary_unary_rpc_method_handler(
                echo, request_deserializer=seen.deserialize, response_serializer=bytes
            )
        },
    )
    server = grpc.aio.server(
        interceptors=[
            ErrorBoundaryInterceptor(1 << 20, on_rejected=seen.on_rejected),
            AuthInterceptor(
                Authenticator(KeyVerifier(KeyRing([KEY.config, OTHER.config, RATED.config])))
            ),
            RateLimitInterceptor(
                PolicyBook([Tenant("initech", "", RATED_POLICY, etag_of("", RATED_POLICY))]),
                RateLimiter(clock=lambda: 0.0),
                on_refused=seen.on_refused,
            ),
            DecodeInterceptor(seen.reads, on_rejected=seen.on_rejected),
        ]
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield channel, seen
    finally:
        await server.stop(None)


async def _call(channel: grpc.aio.Channel, body: bytes, key: str | None) -> Any:
    call = channel.unary_unary(METHOD)
    metadata = () if key is None else ((METADATA_KEY, f"Bearer {key}"),)
    return await call(body, metadata=metadata, timeout=10)


async def test_a_caller_without_credentials_has_nothing_decoded(
    served: tuple[grpc.aio.Channel, Seen],
) -> None:
    channel, seen = served
    for key in (None, "qgw_0123456789abcdef_wrong"):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await _call(channel, b"\x0a" * 4096, key)
        assert caught.value.code() is grpc.StatusCode.UNAUTHENTICATED
    assert seen.decoded == []


async def test_an_authenticated_callers_request_is_decoded_once_with_its_size(
    served: tuple[grpc.aio.Channel, Seen],
) -> None:
    channel, seen = served
    assert await _call(channel, b"hello", KEY.key) == b"hello"
    assert seen.decoded == [b"hello"] and seen.sizes == [5]


async def test_an_undecodable_request_is_malformed_and_told_to_the_audit_log(
    served: tuple[grpc.aio.Channel, Seen],
) -> None:
    channel, seen = served
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _call(channel, b"\xff\xff", KEY.key)
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "could not be decoded" in (caught.value.details() or "")
    assert seen.rejected == [(METHOD, "MALFORMED_REQUEST")]


async def test_a_request_too_large_is_refused_undecoded(
    served: tuple[grpc.aio.Channel, Seen],
) -> None:
    channel, seen = served
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _call(channel, b"\x0a" * ((1 << 20) + 1), KEY.key)
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert seen.rejected == [(METHOD, "REQUEST_TOO_LARGE")] and seen.decoded == []
    # Without credentials it is refused as such: its body is never read.
    with pytest.raises(grpc.aio.AioRpcError) as anonymous:
        await _call(channel, b"\x0a" * ((1 << 20) + 1), None)
    assert anonymous.value.code() is grpc.StatusCode.UNAUTHENTICATED
    assert len(seen.rejected) == 1


async def test_a_caller_without_credentials_is_refused_before_its_body_arrives(
    served: tuple[grpc.aio.Channel, Seen],
) -> None:
    # gRPC read a unary request's whole message before any interceptor ran: a caller with no
    # credentials that sent headers and part of a 16 MiB body, then went silent, had it held
    # for as long as it liked. The gateway serves methods request-streaming and reads the
    # message only once the caller is known; this caller never sends one.
    channel, seen = served
    never = asyncio.Event()

    async def silent() -> AsyncIterator[bytes]:
        await never.wait()
        yield b""

    call = channel.stream_unary(METHOD)(silent(), timeout=30)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    assert caught.value.code() is grpc.StatusCode.UNAUTHENTICATED
    assert seen.decoded == []
    never.set()


class Silent:
    """A call whose headers are sent and whose message is held back until `send`."""

    def __init__(self, channel: grpc.aio.Channel, key: str, timeout: float = 30) -> None:
        self._go = asyncio.Event()

        async def held() -> AsyncIterator[bytes]:
            await self._go.wait()
            yield b"late"

        metadata = ((METADATA_KEY, f"Bearer {key}"),)
        self.call = channel.stream_unary(METHOD)(held(), metadata=metadata, timeout=timeout)

    def send(self) -> None:
        self._go.set()


async def _until(condition: Callable[[], bool]) -> None:
    # The server's read state changes on its own timers; wait for it, bounded.
    with anyio.fail_after(10):
        while not condition():
            await asyncio.sleep(0.01)


async def test_a_tenants_slow_requests_are_limited_and_others_go_on(
    served: tuple[grpc.aio.Channel, Seen],
) -> None:
    # gRPC holds the bytes of a message as they arrive: an authenticated caller that sent
    # headers and most of a body, then went silent, kept them until its connection was cut.
    channel, seen = served
    held = [Silent(channel, KEY.key) for _ in range(MAX_SLOW)]
    await _until(lambda: seen.reads.slow_reads("acme") == MAX_SLOW)
    one_more = Silent(channel, KEY.key)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await one_more.call
    status = status_of(caught.value)
    assert status.code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert status.reason == "TOO_MANY_SLOW_REQUESTS"
    assert status.metadata["maxSlowRequests"] == str(MAX_SLOW)
    assert status.retry_delay_s is not None and status.has_quota_failure
    assert seen.rejected == [(METHOD, "TOO_MANY_SLOW_REQUESTS")]
    # A burst of the tenant's own calls whose messages arrive is never counted or refused,
    # nor is another tenant's slow call.
    answers = await asyncio.gather(*(_call(channel, b"%d" % i, KEY.key) for i in range(50)))
    assert answers == [b"%d" % i for i in range(50)]
    other = Silent(channel, OTHER.key)
    await _until(lambda: seen.reads.slow_reads("globex") == 1)
    # A slow call whose message arrives is answered, and frees its place.
    held[0].send()
    assert await held[0].call == b"late"
    await _until(lambda: seen.reads.slow_reads("acme") == MAX_SLOW - 1)
    for call in (*held[1:], other):
        call.send()
        assert await call.call == b"late"
    assert seen.reads.slow_reads("acme") == seen.reads.slow_reads("globex") == 0


async def test_a_message_that_never_arrives_times_out(
    served: tuple[grpc.aio.Channel, Seen],
) -> None:
    channel, seen = served
    silent = Silent(channel, KEY.key)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await silent.call
    status = status_of(caught.value)
    assert status.code is grpc.StatusCode.DEADLINE_EXCEEDED
    assert status.reason == "REQUEST_READ_TIMEOUT"
    assert status.metadata["timeoutSeconds"] == f"{READ_TIMEOUT_S:g}"
    assert seen.rejected == [(METHOD, "REQUEST_READ_TIMEOUT")]
    assert seen.reads.slow_reads("acme") == 0
    silent.send()


async def test_a_call_over_its_rate_is_refused_before_its_request_is_read(
    served: tuple[grpc.aio.Channel, Seen],
) -> None:
    # The rate limit ran after decoding: a tenant over its rate still had every request (up to
    # 16 MiB, ~0.8 s of the event loop at worst) read and parsed before it was refused.
    channel, seen = served
    assert await _call(channel, b"one", RATED.key) == b"one"
    silent = Silent(channel, RATED.key)  # its message never arrives: it need not
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await silent.call
    status = status_of(caught.value)
    assert (status.code, status.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED")
    with pytest.raises(grpc.aio.AioRpcError) as large:
        await _call(channel, b"\x0a" * 4096, RATED.key)
    assert status_of(large.value).reason == "RATE_LIMITED"
    assert seen.decoded == [b"one"]
    assert seen.refused == [(METHOD, "RATE_LIMITED")] * 2
    assert seen.reads.slow_reads("initech") == 0
    silent.send()
