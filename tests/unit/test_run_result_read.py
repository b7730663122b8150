"""Run answers a result too large for its response without reading it (JobServicer.Run);
StreamJobResult refuses a resume position past the job's PUBs without reading it either."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest
from qgateway.v1 import job_pb2, job_service_pb2

from gateway.api.job_service import JobServicer
from gateway.api.paging import PageTokens
from gateway.api.preserialized import Preserialized
from gateway.api.stream_budget import StreamBudget
from gateway.api.stream_pace import StreamPace
from gateway.domain.errors import DeadlineExceeded, FailedPrecondition, InvalidArgument
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

    async def wait(self, tenant: str, job_id: str, timeout: float | None) -> Job | None:
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
    if isinstance(response, Preserialized):  # a result sent as the stored bytes
        return response.parse(job_service_pb2.RunResponse), manager
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


class Waiting(Manager):
    """A job Run finds again (created=False) that has not finished when the wait ends."""

    def __init__(self, created: bool) -> None:
        super().__init__(b"")
        self.created = created
        self.job = replace(self.job, state=JobState.RUNNING)

    async def submit(self, *args: Any, **kwargs: Any) -> CreateOutcome:
        return CreateOutcome(self.job, created=self.created)

    async def wait(self, tenant: str, job_id: str, timeout: float | None) -> None:
        return None


class Remaining:
    def __init__(self, seconds: float | None) -> None:
        self.seconds = seconds

    def time_remaining(self) -> float | None:
        return self.seconds


def _unfinished(manager: Manager, remaining: float | None) -> DeadlineExceeded:
    servicer = JobServicer(
        manager,  # type: ignore[arg-type]
        MAX_RESPONSE,
        10.0,
        page_tokens=PageTokens(bytes(32)),
        sessions=None,  # type: ignore[arg-type]
        stream_budget=StreamBudget(1 << 20, 1 << 20),
        stream_pace=StreamPace(1000),
    )
    request = job_service_pb2.RunRequest(request_id="r1", spec=sampler_spec(ghz(2)))
    with pytest.raises(DeadlineExceeded) as info:
        asyncio.run(servicer.Run(request, Remaining(remaining)))  # type: ignore[arg-type]
    assert info.value.reason == "RUN_DEADLINE_EXCEEDED"
    assert info.value.metadata["job"] == "jobs/j1"
    return info.value


@pytest.mark.parametrize(
    ("remaining", "limit"), [(None, "10"), (30.0, "10"), (10.1, "10"), (5.0, "5")]
)
def test_run_names_the_limit_that_ended_its_wait(remaining: float | None, limit: str) -> None:
    # The server's cap (10 s) applies whenever the caller's deadline leaves at least that.
    error = _unfinished(Waiting(created=True), remaining)
    assert error.metadata["limitSeconds"] == limit
    assert ("Run wait limit" in error.message) == (limit == "10")


@pytest.mark.parametrize("created", [True, False])
def test_an_unfinished_run_says_whether_it_created_the_job(created: bool) -> None:
    error = _unfinished(Waiting(created=created), 5.0)
    assert error.metadata["created"] == ("true" if created else "false")


@pytest.mark.parametrize("state", [JobState.CANCELLED, JobState.FAILED])
def test_run_reads_no_result_for_a_job_that_did_not_succeed(state: JobState) -> None:
    manager = Manager(_result(100).SerializeToString(deterministic=True))
    manager.job = replace(manager.job, state=state)
    request = job_service_pb2.RunRequest(request_id="r1", spec=sampler_spec(ghz(2)))
    response = asyncio.run(_servicer(manager).Run(request, Context()))  # type: ignore[arg-type]
    assert not response.HasField("result") and not response.result_too_large
    assert manager.asked_within == [] and manager.full_reads == 0


def test_run_never_answers_past_the_response_limit_with_the_job_included() -> None:
    # Results just under the limit alone: the job's own bytes (here ~300 of labels) count
    # against it too.
    request = job_service_pb2.RunRequest(request_id="r1", spec=sampler_spec(ghz(2)))
    for size in range(MAX_RESPONSE - 400, MAX_RESPONSE - 60, 7):
        manager = Manager(_result(size).SerializeToString(deterministic=True))
        manager.job = replace(manager.job, labels={"team": "q" * 300})
        response = asyncio.run(_servicer(manager).Run(request, Context()))  # type: ignore[arg-type]
        assert response.result_too_large or response.ByteSize() <= MAX_RESPONSE, size
        if response.result_too_large:
            assert not response.HasField("result")


def test_a_stream_holds_its_stored_result_against_the_budget() -> None:
    result = _result(0)
    sampler = result.pub_results[0].sampler
    sampler.shots = 3
    sampler.registers[0].ClearField("samples")
    sampler.registers[0].counts.add(outcomes=b"\x00\x01\x02", counts=[1, 1, 1])
    data = result.SerializeToString(deterministic=True)
    manager = Manager(data)
    budget = StreamBudget(1 << 20, 1 << 20)
    servicer = JobServicer(
        manager,  # type: ignore[arg-type]
        MAX_RESPONSE,
        page_tokens=PageTokens(bytes(32)),
        sessions=None,  # type: ignore[arg-type]
        stream_budget=budget,
        stream_pace=StreamPace(1000),
    )
    request = job_service_pb2.StreamJobResultRequest(name="jobs/j1/result")

    async def first_message() -> int:
        stream = servicer.StreamJobResult(request, Context())  # type: ignore[arg-type]
        await anext(stream)
        held = budget.held("default")
        assert [r async for r in stream][-1].HasField("digest")
        return held

    # Its samples and counts are views of the stored bytes: nothing is held beyond them.
    assert asyncio.run(first_message()) == len(data)
    assert budget.held() == 0


class Refusing(Manager):
    """Refuses the submission now, but an earlier request with its request_id made a job."""

    async def submit(self, *args: Any, **kwargs: Any) -> CreateOutcome:
        raise FailedPrecondition("BACKEND_DRAINING", "the gateway is draining")

    async def find_request(self, tenant: str, request_id: str, digest: bytes) -> Job:
        return self.job


def test_a_retry_refused_now_gets_the_earlier_job_not_created() -> None:
    servicer = _servicer(Refusing(b""))
    request = job_service_pb2.SubmitJobRequest(request_id="r1", spec=sampler_spec(ghz(2)))
    response = asyncio.run(servicer.SubmitJob(request, Context()))  # type: ignore[arg-type]
    assert response.job.name == "jobs/j1" and not response.created


class CountingPace(StreamPace):
    def __init__(self) -> None:
        super().__init__(1000)
        self.tenants: list[str] = []

    async def next_message(self, tenant: str) -> None:
        self.tenants.append(tenant)
        await super().next_message(tenant)


def test_a_stream_is_paced_as_its_jobs_tenant() -> None:
    result = _result(100)
    result.pub_results[0].sampler.shots = 100
    manager = Manager(result.SerializeToString(deterministic=True))
    manager.job = replace(manager.job, tenant="acme")
    pace = CountingPace()
    servicer = JobServicer(
        manager,  # type: ignore[arg-type]
        MAX_RESPONSE,
        page_tokens=PageTokens(bytes(32)),
        sessions=None,  # type: ignore[arg-type]
        stream_budget=StreamBudget(1 << 20, 1 << 20),
        stream_pace=pace,
    )
    request = job_service_pb2.StreamJobResultRequest(name="jobs/j1/result")

    async def stream() -> list[Any]:
        return [r async for r in servicer.StreamJobResult(request, Context())]  # type: ignore[arg-type]

    responses = asyncio.run(stream())
    # Every message but the digest waits its turn in the tenant's pace.
    assert pace.tenants == ["acme"] * (len(responses) - 1) and len(responses) >= 3
