"""Errors over real gRPC: a failed job's Job.error is a google.rpc.Status shaped like every RPC
error; NOT_FOUND names the resource (ResourceInfo, no BadRequest); an oversize request is
INVALID_ARGUMENT without RetryInfo; a full queue is RESOURCE_EXHAUSTED with QuotaFailure and
RetryInfo. One gateway for the module; faults come from `faults = {...}` blocks."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
from google.protobuf.message import Message
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status
from qgateway import Client, RetryPolicy
from qgateway.errors import (
    ERROR_DOMAIN,
    InternalError,
    JobFailedError,
    NotFoundError,
    ResourceExhaustedError,
    ResourceInfo,
)
from qgateway.results import JobState
from qgateway.v1 import job_pb2, job_service_pb2, job_service_pb2_grpc

from tests.gateway_process import GatewayProcess, write_config
from tests.rpc import ghz, sampler_spec, slow_circuit

ONE = "pool = { min_instances = 1, max_instances = 1 }"
BACKENDS = f"""
[backends.aer]
adapter = "aer"
{ONE}

# Every job allocates 2 GiB against a 700 MiB RLIMIT_DATA: a real MemoryError in the worker.
[backends.fault-oom]
adapter = "aer"
{ONE}
worker_memory_limit_mb = 700
faults = {{ allocate_mb = 2048 }}

# Every job's worker is killed with SIGKILL while it runs.
[backends.fault-crash]
adapter = "aer"
{ONE}
breaker = {{ failure_threshold = 1000, window_s = 60, cooldown_s = 1 }}
faults = {{ crash_rate = 1.0 }}

[backends.capped]
adapter = "aer"
{ONE}
max_queued_jobs = 1
"""

DETAIL_TYPES: dict[str, type[Message]] = {
    "ErrorInfo": error_details_pb2.ErrorInfo,
    "ResourceInfo": error_details_pb2.ResourceInfo,
    "BadRequest": error_details_pb2.BadRequest,
    "QuotaFailure": error_details_pb2.QuotaFailure,
    "RetryInfo": error_details_pb2.RetryInfo,
}


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    root = tmp_path_factory.mktemp("errors")
    config = write_config(root / "g.toml", root / "data", BACKENDS)
    process = GatewayProcess.start(config, root / "gateway.log")
    yield process
    assert process.terminate() == 0, process.log_path.read_text()[-3000:]


@pytest.fixture(scope="module")
def channel(gw: GatewayProcess) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(gw.address) as ch:
        yield ch


@pytest.fixture(scope="module")
def jobs(channel: grpc.Channel) -> job_service_pb2_grpc.JobServiceStub:
    return job_service_pb2_grpc.JobServiceStub(channel)


@pytest.fixture
def client(gw: GatewayProcess) -> Iterator[Client]:
    # No retries: a refusal is the answer under test.
    with Client(gw.address, retry=RetryPolicy(max_attempts=1)) as c:
        yield c


def details(status: status_pb2.Status) -> dict[str, Message]:
    """The status's details by type; fails on a detail type the API does not use, or twice."""
    out: dict[str, Message] = {}
    for detail in status.details:
        name = next(n for n, t in DETAIL_TYPES.items() if detail.Is(t.DESCRIPTOR))
        assert name not in out, f"{name} twice"
        message = DETAIL_TYPES[name]()
        detail.Unpack(message)
        out[name] = message
    return out


def rpc_status_of(err: grpc.RpcError) -> status_pb2.Status:
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    assert status is not None, "no grpc-status-details-bin trailer"
    return status


def error_info(found: dict[str, Message]) -> error_details_pb2.ErrorInfo:
    info = found["ErrorInfo"]
    assert isinstance(info, error_details_pb2.ErrorInfo)
    assert info.domain == ERROR_DOMAIN == "qgateway.dev"
    return info


def failed_job(jobs: job_service_pb2_grpc.JobServiceStub, backend: str) -> job_pb2.Job:
    submitted = jobs.SubmitJob(
        job_service_pb2.SubmitJobRequest(spec=sampler_spec(ghz(3), backend=backend)), timeout=20
    ).job
    for event in jobs.WatchJob(job_service_pb2.WatchJobRequest(name=submitted.name), timeout=60):
        if event.job.state in (job_pb2.JOB_STATE_SUCCEEDED, job_pb2.JOB_STATE_FAILED):
            break
    job = jobs.GetJob(job_service_pb2.GetJobRequest(name=submitted.name), timeout=10).job
    assert job.state == job_pb2.JOB_STATE_FAILED, job
    assert job.HasField("error")
    return job


def test_a_job_out_of_memory_fails_with_a_status(
    jobs: job_service_pb2_grpc.JobServiceStub, client: Client
) -> None:
    job = failed_job(jobs, "fault-oom")
    status = job.error
    assert status.code == code_pb2.RESOURCE_EXHAUSTED
    assert "memory" in status.message
    found = details(status)
    assert set(found) == {"ErrorInfo"}  # not retryable as is: no RetryInfo, no QuotaFailure
    assert error_info(found).reason == "OUT_OF_MEMORY"
    # The Python client: Job.error as a typed error.
    seen = client.get_job(job.name)
    assert isinstance(seen.error, ResourceExhaustedError)
    assert (seen.error.code, seen.error.reason) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "OUT_OF_MEMORY",
    )
    assert seen.error_reason == "OUT_OF_MEMORY" and seen.error.from_gateway


def test_a_crashed_worker_fails_its_job_with_a_status_and_metadata(
    jobs: job_service_pb2_grpc.JobServiceStub, client: Client
) -> None:
    job = failed_job(jobs, "fault-crash")
    assert job.error.code == code_pb2.INTERNAL
    assert job.error.message == "the worker process was killed by signal SIGKILL"
    info = error_info(details(job.error))
    assert (info.reason, dict(info.metadata)) == ("WORKER_CRASHED", {"signal": "SIGKILL"})
    # Client.run raises JobFailedError carrying the same status.
    with pytest.raises(JobFailedError) as failed:
        client.run(ghz(2), backend="fault-crash", shots=10, seed=3, timeout=60)
    assert failed.value.state == "FAILED"
    assert (failed.value.code, failed.value.reason) == (grpc.StatusCode.INTERNAL, "WORKER_CRASHED")
    assert failed.value.metadata == {"signal": "SIGKILL"}
    assert isinstance(failed.value.error, InternalError)


def test_get_job_of_an_unknown_job_names_the_resource(
    jobs: job_service_pb2_grpc.JobServiceStub, client: Client
) -> None:
    name = "jobs/0123456789abcdef0123456789abcdef"
    with pytest.raises(grpc.RpcError) as exc:
        jobs.GetJob(job_service_pb2.GetJobRequest(name=name), timeout=10)
    assert exc.value.code() is grpc.StatusCode.NOT_FOUND
    found = details(rpc_status_of(exc.value))
    assert set(found) == {"ErrorInfo", "ResourceInfo"}  # ResourceInfo instead of BadRequest
    info = error_info(found)
    assert (info.reason, dict(info.metadata)) == ("JOB_NOT_FOUND", {"job": name})
    resource = found["ResourceInfo"]
    assert isinstance(resource, error_details_pb2.ResourceInfo)
    assert (resource.resource_type, resource.resource_name) == ("qgateway.dev/Job", name)
    with pytest.raises(NotFoundError) as typed:
        client.get_job(name)
    assert typed.value.resource_info is not None
    assert typed.value.resource_info == ResourceInfo("qgateway.dev/Job", name, resource.description)


def test_an_unknown_backend_names_the_resource(jobs: job_service_pb2_grpc.JobServiceStub) -> None:
    with pytest.raises(grpc.RpcError) as exc:
        jobs.SubmitJob(
            job_service_pb2.SubmitJobRequest(spec=sampler_spec(ghz(2), backend="nowhere")),
            timeout=20,
        )
    assert exc.value.code() is grpc.StatusCode.NOT_FOUND
    found = details(rpc_status_of(exc.value))
    assert set(found) == {"ErrorInfo", "ResourceInfo"}
    info = error_info(found)
    assert (info.reason, dict(info.metadata)) == (
        "BACKEND_NOT_FOUND",
        {"backend": "backends/nowhere"},
    )
    resource = found["ResourceInfo"]
    assert isinstance(resource, error_details_pb2.ResourceInfo)
    assert (resource.resource_type, resource.resource_name) == (
        "qgateway.dev/Backend",
        "backends/nowhere",
    )


def test_an_oversize_request_is_invalid_argument_without_retry_info(
    jobs: job_service_pb2_grpc.JobServiceStub,
) -> None:
    # The test gateway's own limit is 4 MiB; gRPC's transport limit sits above it.
    spec = sampler_spec(ghz(2) + "// " + "x" * (5 << 20) + "\n")
    size = job_service_pb2.SubmitJobRequest(spec=spec).ByteSize()
    with pytest.raises(grpc.RpcError) as exc:
        jobs.SubmitJob(job_service_pb2.SubmitJobRequest(spec=spec), timeout=20)
    assert exc.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    found = details(rpc_status_of(exc.value))
    assert set(found) == {"ErrorInfo"}  # never RetryInfo: it can never succeed as sent
    info = error_info(found)
    assert info.reason == "REQUEST_TOO_LARGE"
    assert dict(info.metadata) == {"sizeBytes": str(size), "limitBytes": str(4 << 20)}


def test_a_full_queue_has_quota_failure_and_retry_info(client: Client) -> None:
    blocker = client.submit(slow_circuit(), backend="capped", shots=100_000, seed=1)
    try:
        for event in client.watch(blocker.name, timeout=60):
            if event.state is JobState.RUNNING:
                break
        queued = client.submit(ghz(2), backend="capped", shots=10, seed=2)
        try:
            with pytest.raises(ResourceExhaustedError) as exc:
                client.submit(ghz(2), backend="capped", shots=10, seed=3)
        finally:
            client.cancel(queued.name)
    finally:
        client.cancel(blocker.name)
    err = exc.value
    assert (err.reason, err.domain) == ("QUEUE_FULL", "qgateway.dev")
    assert err.metadata == {"backend": "backends/capped", "queuedJobs": "1", "limit": "1"}
    assert err.quota_violations == [("backends/capped", "queued jobs at the limit")]
    assert err.retry_delay is not None and err.retry_delay > 0
