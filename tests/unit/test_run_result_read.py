"""Run answers a result too large for its response without reading it (JobServicer.Run);
StreamJobResult refuses a resume position past the job's PUBs without reading it either."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest
from qgateway.v1 import job_pb2, job_service_pb2

from gateway.api.job_service import JobServicer
from gateway.api.paging import PageTokens
from gateway.api.stream_budget import StreamBudget
from gateway.api.stream_pace import StreamPace
from gateway.domain.errors import InvalidArgument
from gateway.domain.jobs import Job, JobState
from gateway.store.base import CreateOutcome
from tests.rpc import ghz, sampler_spec

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
MAX_RESPONSE = 4096


class Manager:
    """The manager as Run sees it: the job is created, ends at once, and its stored result
    is `size` bytes; every read of the result is counted."""

    def __init__(self, result: bytes) -> None:
        self.result_bytes = result
        self.full_reads = 0
        self.asked_within: list[int] = []
        self.job = Job(
            id="j1",
            tenant="default",
            request_id="r1",
            backend="aer",
            state=JobState.SUCCEEDED,
            created_at=T0,
            num_pubs=1,
            seed=1,
        )

    async def submit(self, *args: Any, **kwargs: Any) -> CreateOutcome:
        return CreateOutcome(self.job, created=True)

    async def wait(self, tenant: str, job_id: str, timeout: float | None) -> Job:
        return self.job

    async def get(self, tenant: str, job_id: str) -> Job:
        return self.job

    async def result_size(self, job: Job) -> int:
        return len(self.result_bytes)

    async def result(self, job: Job) -> bytes:
        self.full_reads += 1
        return self.result_bytes

    async def result_within(self, job: Job, max_bytes: int) -> bytes | int:
        self.asked_within.append(max_bytes)
        data = self.result_bytes
        return data if len(data) <= max_bytes else len(data)


class Context:
    def time_remaining(self) -> float:
        return 30.0


def _servicer(manager: Manager) -> JobServicer:
    return JobServicer(
        manager,  # type: ignore[arg-type]
        MAX_RESPONSE,
        page_tokens=PageTokens(bytes(32)),
        sessions=None,  # type: ignore[arg-type]
        stream_budget=StreamBudget(1 << 20, 1 << 20),
        stream_pace=StreamPace(1000),
    )


def run(result: job_pb2.JobResult) -> tuple[job_service_pb2.RunResponse, Manager]:
    manager = Manager(result.SerializeToString(deterministic=True))
    servicer = _servicer(manager)
    request = job_service_pb2.RunRequest(request_id="r1", spec=sampler_spec(ghz(2)))
    response = asyncio.run(servicer.Run(request, Context()))  # type: ignore[arg-type]
    return response, manager


def _result(sample_bytes: int) -> job_pb2.JobResult:
    result = job_pb2.JobResult()
    register = result.pub_results.add().sampler.registers.add(name="c", num_bits=8)
    register.samples = bytes(sample_bytes)
    return result


def test_a_result_too_large_for_the_response_is_not_read() -> None:
    response, manager = run(_result(MAX_RESPONSE))
    assert response.result_too_large and not response.HasField("result")
    assert manager.full_reads == 0
    assert 0 < manager.asked_within[0] < MAX_RESPONSE  # the room the rest of the answer left


def test_a_result_that_fits_is_answered_whole() -> None:
    response, manager = run(_result(100))
    assert not response.result_too_large
    assert response.result.name == "jobs/j1/result"
    assert len(response.result.pub_results[0].sampler.registers[0].samples) == 100
    assert response.ByteSize() <= MAX_RESPONSE and manager.full_reads == 0


def test_a_stream_resumed_past_the_last_pub_is_refused_before_the_result_is_read() -> None:
    result = _result(100)
    result.pub_results[0].sampler.shots = 100  # one byte a shot: 8 bits
    manager = Manager(result.SerializeToString(deterministic=True))
    request = job_service_pb2.StreamJobResultRequest(name="jobs/j1/result", start_pub_index=1)

    async def stream() -> list[Any]:
        return [r async for r in _servicer(manager).StreamJobResult(request, Context())]  # type: ignore[arg-type]

    with pytest.raises(InvalidArgument) as refused:
        asyncio.run(stream())
    assert refused.value.reason == "INVALID_RESUME_POSITION"
    assert refused.value.metadata["numPubs"] == "1"
    assert manager.full_reads == 0
    # The last PUB itself is streamed.
    request.start_pub_index = 0
    assert asyncio.run(stream())[-1].HasField("digest") and manager.full_reads == 1
