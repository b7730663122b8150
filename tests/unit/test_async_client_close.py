"""AsyncClient's channel lifecycle, on real servers on 127.0.0.1.

Closed while a call waits: grpc.aio ended the call with asyncio.CancelledError although nobody
cancelled the caller's task, so code using TaskGroup or gather took it for a cancellation of its
own, and the request_id of a job that may go on was lost; the sync client raises its typed
CancelledError, and the async one now does the same. Used again in a second event loop (a second
asyncio.run, a notebook cell): the channel bound to the first loop failed with a raw
RuntimeError; it is opened again in the new loop."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from concurrent import futures
from typing import Any

import grpc
import pytest
from qgateway import AsyncClient
from qgateway.errors import CancelledError as CallCancelledError
from qgateway.v1 import job_pb2, job_service_pb2, job_service_pb2_grpc

pytestmark = pytest.mark.anyio


class Silent(job_service_pb2_grpc.JobServiceServicer):  # type: ignore[misc]
    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.requests: list[Any] = []

    async def GetJob(self, request: Any, context: Any) -> Any:
        self.entered.set()
        await asyncio.Event().wait()  # never answers

    async def Run(self, request: Any, context: Any) -> Any:
        self.requests.append(request)
        self.entered.set()
        await asyncio.Event().wait()  # never answers

    async def WatchJob(self, request: Any, context: Any) -> Any:
        self.entered.set()
        await asyncio.Event().wait()  # never sends
        yield job_service_pb2.WatchJobResponse()


@pytest.fixture
async def silent() -> AsyncIterator[tuple[str, Silent]]:
    server = grpc.aio.server()
    servicer = Silent()
    job_service_pb2_grpc.add_JobServiceServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}", servicer
    finally:
        await server.stop(None)


async def test_closing_the_client_under_a_call_raises_the_typed_cancelled_error(
    silent: tuple[str, Silent],
) -> None:
    address, servicer = silent
    client = AsyncClient(address)
    call = asyncio.create_task(client.get_job("jobs/x"))
    await asyncio.wait_for(servicer.entered.wait(), 10)
    await client.close()
    with pytest.raises(CallCancelledError):
        await asyncio.wait_for(call, 10)


async def test_closing_the_client_under_a_watch_raises_the_typed_cancelled_error(
    silent: tuple[str, Silent],
) -> None:
    address, servicer = silent
    client = AsyncClient(address)

    async def follow() -> None:
        async for _ in client.watch("jobs/x"):
            pass

    watching = asyncio.create_task(follow())
    await asyncio.wait_for(servicer.entered.wait(), 10)
    await client.close()
    with pytest.raises(CallCancelledError) as caught:
        await asyncio.wait_for(watching, 10)
    assert caught.value.metadata["job"] == "jobs/x"


async def test_cancelling_the_callers_task_is_still_a_cancellation(
    silent: tuple[str, Silent],
) -> None:
    address, servicer = silent
    client = AsyncClient(address)
    try:
        call = asyncio.create_task(client.get_job("jobs/x"))
        await asyncio.wait_for(servicer.entered.wait(), 10)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
    finally:
        await client.close()


async def test_a_cancelled_run_says_its_request_id(silent: tuple[str, Silent]) -> None:
    # The job a cancelled Run created goes on (only CancelJob cancels): with an automatic
    # request_id the caller had no way back to it but listing jobs.
    address, servicer = silent
    client = AsyncClient(address)
    try:
        call = asyncio.create_task(client.run("OPENQASM 3.0;", shots=1))
        await asyncio.wait_for(servicer.entered.wait(), 10)
        call.cancel()
        with pytest.raises(asyncio.CancelledError) as caught:
            await call
    finally:
        await client.close()
    sent = servicer.requests[0].request_id
    assert sent and any(f"request_id {sent}:" in note for note in caught.value.__notes__)


class Answering(job_service_pb2_grpc.JobServiceServicer):  # type: ignore[misc]
    """A thread-served GetJob, bound to no event loop."""

    def GetJob(self, request: Any, context: Any) -> Any:
        job = job_pb2.Job(name=request.name, state=job_pb2.JOB_STATE_QUEUED)
        return job_service_pb2.GetJobResponse(job=job)


def test_a_client_used_again_in_a_new_event_loop_opens_its_channel_there() -> None:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    job_service_pb2_grpc.add_JobServiceServicer_to_server(Answering(), server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        client = AsyncClient(f"127.0.0.1:{port}")

        async def name() -> str:
            return (await client.get_job("jobs/a", timeout=10)).name

        assert asyncio.run(name()) == "jobs/a"
        assert asyncio.run(name()) == "jobs/a"  # a second loop: RuntimeError before
        asyncio.run(client.close())
    finally:
        server.stop(None)
