"""Requests are decoded inside authentication (gateway.interceptors.decode): the parse of a
request costs time and memory in proportion to its bytes (16 MiB of empty messages held the
event loop ~0.8 s and took ~20x its size), and a caller with no credentials had every request
decoded before it was refused. In process, on a real grpc.aio server with the gateway's own
interceptors in the gateway's order."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from google.protobuf.message import DecodeError

from gateway.api.context import Context, request_bytes
from gateway.domain.errors import GatewayError
from gateway.interceptors.auth import AuthInterceptor
from gateway.interceptors.boundary import ErrorBoundaryInterceptor
from gateway.interceptors.decode import DecodeInterceptor
from gateway.security.api_keys import METADATA_KEY, KeyRing, KeyVerifier, generate_key
from gateway.security.authenticator import Authenticator

pytestmark = pytest.mark.anyio
METHOD = "/qgateway.v1.Probe/Echo"
KEY = generate_key("acme")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Seen:
    def __init__(self) -> None:
        self.decoded: list[bytes] = []
        self.rejected: list[tuple[str, str]] = []
        self.sizes: list[int] = []

    def deserialize(self, data: bytes) -> bytes:
        self.decoded.append(data)
        if data.startswith(b"\xff"):
            raise DecodeError("not a message")
        return data

    def on_rejected(self, method: str, peer: str, error: GatewayError) -> None:
        self.rejected.append((method, error.reason))


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
            AuthInterceptor(Authenticator(KeyVerifier(KeyRing([KEY.config])))),
            DecodeInterceptor(on_rejected=seen.on_rejected),
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
    import asyncio

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
