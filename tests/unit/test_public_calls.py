"""Health and reflection behind their limits (gateway.interceptors.public_calls), on a real
grpc.aio server on 127.0.0.1: the calls that need no credentials still answer, a request too
large for them is refused, and Health.Watch calls are counted."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

from gateway.api.health_service import HealthService
from gateway.interceptors.public_calls import MAX_REQUEST_BYTES, PublicCallInterceptor, PublicCalls

pytestmark = pytest.mark.anyio
SERVING = health_pb2.HealthCheckResponse.SERVING


@pytest.fixture
async def served() -> AsyncIterator[tuple[str, PublicCalls]]:
    calls = PublicCalls(read_timeout_s=60.0, max_watches=2)
    server = grpc.aio.server(interceptors=[PublicCallInterceptor(calls)])
    health_pb2_grpc.add_HealthServicer_to_server(HealthService(), server)
    reflection.enable_server_reflection(
        (health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
        server,
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}", calls
    finally:
        await server.stop(None)


async def test_health_and_reflection_answer_through_the_limits(
    served: tuple[str, PublicCalls],
) -> None:
    address, _ = served
    async with grpc.aio.insecure_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        answer = await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
        assert answer.status == SERVING
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        asks = [reflection_pb2.ServerReflectionRequest(list_services="")] * 2
        answers = [a async for a in stub.ServerReflectionInfo(iter(asks), timeout=10)]
        assert len(answers) == 2  # each message of the stream is read and answered
        names = {s.name for s in answers[0].list_services_response.service}
        assert "grpc.health.v1.Health" in names


async def test_a_request_larger_than_a_health_check_is_refused(
    served: tuple[str, PublicCalls],
) -> None:
    # gRPC read any such request up to the transport's limit for a caller without credentials.
    address, _ = served
    async with grpc.aio.insecure_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        large = health_pb2.HealthCheckRequest(service="x" * (MAX_REQUEST_BYTES + 1))
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await health.Check(large, timeout=10)
        assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "REQUEST_TOO_LARGE" in str(refused.value.trailing_metadata())


async def test_health_watches_past_the_limit_are_refused_until_one_ends(
    served: tuple[str, PublicCalls],
) -> None:
    address, calls = served
    request = health_pb2.HealthCheckRequest(service="")
    async with grpc.aio.insecure_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        open_watches = [health.Watch(request) for _ in range(calls.max_watches)]
        for watch in open_watches:
            assert (await watch.read()).status == SERVING
        assert calls.watches == calls.max_watches
        refused = health.Watch(request)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await refused.read()
        assert caught.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "TOO_MANY_WATCHES" in str(caught.value.trailing_metadata())
        open_watches[0].cancel()
        for _ in range(1000):  # the server, on this event loop, sees the cancel soon after
            if calls.watches < calls.max_watches:
                break
            await asyncio.sleep(0.005)
        assert calls.watches == calls.max_watches - 1
        again = health.Watch(request)
        assert (await again.read()).status == SERVING
        for watch in (*open_watches[1:], again):
            watch.cancel()
