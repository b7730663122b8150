"""Hostile review of the provider (cloud) execution paths: an IBM create retried after a read
timeout could leave two runtime jobs running (both billed); an HTTP 408 while following a job
failed it as the client's; an S3 RequestTimeout reading a Braket result failed a job that ran."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.backends.ibm import cloud
from gateway.backends.qiskit.adapter import QiskitPayload
from gateway.domain.errors import ExecutionError
from gateway.domain.failures import FailureKind
from gateway.domain.jobs import SamplerOutput
from tests.unit.test_ibm_cloud import settings


class _Job:
    """A runtime job as the service lists it."""

    def __init__(self, remote_id: str, tags: list[str]) -> None:
        self.remote_id = remote_id
        self.tags = tags
        self.cancelled = False

    def job_id(self) -> str:
        return self.remote_id

    def cancel(self) -> None:
        self.cancelled = True


class _Service:
    """The service's job list; newest first, as `QiskitRuntimeService.jobs` lists them."""

    def __init__(self) -> None:
        self.made: list[_Job] = []
        self.committed: list[_Job] = []

    def jobs(self, job_tags: list[str], limit: int) -> list[_Job]:
        listed = [j for j in self.committed if all(t in j.tags for t in job_tags)]
        return list(reversed(listed))[:limit]

    def job(self, remote_id: str) -> _Job:
        from qiskit_ibm_runtime.exceptions import RuntimeJobNotFound

        for j in self.committed:
            if j.remote_id == remote_id:
                return j
        raise RuntimeJobNotFound(f"job {remote_id} not found")


def test_ibm_a_retried_create_never_leaves_two_runtime_jobs_running() -> None:
    runner = cloud.IbmCloudRunner(settings(retry_backoff_s=0.01), sleep=lambda s: None)
    service = _Service()
    runner._client.service = lambda: service  # type: ignore[method-assign]
    pending: list[_Job] = []

    def create(primitive: str, pubs: Any, tags: list[str], options: Any, job: Any) -> str:
        # The service is slow: the first POST is read-timed-out by the client (request_timeout_s)
        # but the service goes on and commits the job a moment later, after the tag search.
        made = _Job(f"r-{len(service.made) + 1}", list(tags))
        service.made.append(made)
        service.committed.extend(pending)
        pending.clear()
        if len(service.made) == 1:
            pending.append(made)
            raise ExecutionError("PROVIDER_ERROR", "ReadTimeout", kind=FailureKind.TRANSIENT)
        service.committed.append(made)
        return made.remote_id

    runner._create = create  # type: ignore[method-assign]
    job = type("J", (), {"id": "job-1", "session": None})()
    payload = QiskitPayload("local_mode", SamplerOutput.COUNTS, ())
    followed = runner._submit(payload, None, job)  # type: ignore[arg-type]
    live = [j.remote_id for j in service.made if not j.cancelled]
    assert len(service.made) == 2  # the scenario: the lost create was made after all
    # Only the followed runtime job may run: the other bills for a result nobody reads.
    assert live == [followed]


class _RequestsApiError(Exception):
    """qiskit-ibm-runtime's RequestsApiError as the runner sees it: an HTTP status."""

    def __init__(self, message: str, status_code: int) -> None:
        super().__init__(message)
        self.status_code = status_code


def test_ibm_a_request_timeout_while_following_a_job_is_transient() -> None:
    runner = cloud.IbmCloudRunner(settings(retry_attempts=1), sleep=lambda s: None)

    class Service:
        def job(self, remote_id: str) -> Any:
            raise _RequestsApiError("408 Request Timeout", 408)

    runner._client.service = lambda: Service()  # type: ignore[method-assign]
    with pytest.raises(ExecutionError) as info:
        runner._poll(cloud.IbmCloudHandle("job-1", "r-1"), "r-1")
    # Losing touch with the service is TRANSIENT: the job core re-attaches and follows the job
    # on; anything else ends the gateway job while the runtime job keeps running.
    assert info.value.kind is FailureKind.TRANSIENT


def test_braket_an_s3_request_timeout_reading_results_is_retried() -> None:
    from botocore.exceptions import ClientError

    from gateway.backends.braket import cloud as braket_cloud

    timeout = ClientError(
        {
            "Error": {"Code": "RequestTimeout", "Message": "socket not read in time"},
            "ResponseMetadata": {"HTTPStatusCode": 400},
        },
        "GetObject",
    )
    err = braket_cloud.classify(timeout, "braket-sv1", "arn:aws:braket:::task/1", following=True)
    assert err.kind is FailureKind.TRANSIENT
