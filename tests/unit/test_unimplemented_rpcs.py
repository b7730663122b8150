"""An RPC a servicer does not define yet answers UNIMPLEMENTED through the error boundary, as
gRPC answers an unknown method, not INTERNAL (the generated base servicer raises
NotImplementedError, which the boundary used to report as a gateway bug)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
from qgateway.v1 import job_service_pb2, job_service_pb2_grpc

from gateway.interceptors.boundary import ErrorBoundaryInterceptor

pytestmark = pytest.mark.anyio


@pytest.fixture
async def stub() -> AsyncIterator[job_service_pb2_grpc.JobServiceStub]:
    server = grpc.aio.server(interceptors=[ErrorBoundaryInterceptor(1 << 20)])
    # The generated base class: every RPC is "not implemented".
    job_service_pb2_grpc.add_JobServiceServicer_to_server(  # type: ignore[no-untyped-call]
        job_service_pb2_grpc.JobServiceServicer(), server
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield job_service_pb2_grpc.JobServiceStub(channel)  # type: ignore[no-untyped-call]
    finally:
        await server.stop(None)


async def test_a_unary_rpc_not_implemented_is_unimplemented(
    stub: job_service_pb2_grpc.JobServiceStub,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.GetJob(job_service_pb2.GetJobRequest(name="jobs/x"), timeout=5)
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert caught.value.details() == "/qgateway.v1.JobService/GetJob is not implemented"


async def test_a_streaming_rpc_not_implemented_is_unimplemented(
    stub: job_service_pb2_grpc.JobServiceStub,
) -> None:
    call = stub.WatchJob(job_service_pb2.WatchJobRequest(name="jobs/x"), timeout=5)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in call:
            pass
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
