"""The Braket cloud runner's pure parts: its create limiter, its error kinds, its options."""

from __future__ import annotations

import dataclasses
import uuid
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from gateway.backends.base import AdapterContext, CircuitLimits
from gateway.backends.braket.adapter import BraketAdapter, BraketOptions
from gateway.backends.braket.cloud import (
    BraketCloudRunner,
    CloudSettings,
    CloudStatus,
    CreateRateLimiter,
    classify,
)
from gateway.domain.backends import BackendLimits
from gateway.domain.circuits import Bindings, CircuitLanguage, CircuitSource, SamplerPub
from gateway.domain.errors import ExecutionError, InvalidArgument
from gateway.domain.failures import FailureKind
from gateway.domain.jobs import Job, JobSpec, JobState
from tests.adapters import prepare_in_process

SV1 = "arn:aws:braket:::device/quantum-simulator/amazon/sv1"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_slot_comes_back_one_period_after_its_call_ended() -> None:
    clock = Clock()
    limiter = CreateRateLimiter(3, 1.0, clock=clock)
    assert [limiter.try_acquire() for _ in range(3)] == [0.0, 0.0, 0.0]
    # All three in flight: the fourth waits (for at least a period: none has ended yet).
    assert limiter.try_acquire() == pytest.approx(1.0)
    clock.now = 100.5
    limiter.release()  # the first call ended at 100.5: its slot is back at 101.5
    clock.now = 101.4
    assert limiter.try_acquire() == pytest.approx(0.1)
    clock.now = 101.5
    assert limiter.try_acquire() == 0.0
    assert limiter.try_acquire() > 0


def test_no_more_than_rate_calls_start_within_a_period_of_any_end() -> None:
    clock = Clock()
    limiter = CreateRateLimiter(20, 1.0, clock=clock)
    starts: list[float] = []
    ends: list[float] = []
    # Calls that each take 10 ms, started as soon as the limiter allows, for 5 s.
    while clock.now < 105.0:
        wait = limiter.try_acquire()
        if wait > 0:
            clock.now += wait
            continue
        starts.append(clock.now)
        clock.now += 0.01
        ends.append(clock.now)
        limiter.release()
    for i in range(len(starts) - 20):
        assert starts[i + 20] >= ends[i] + 1.0 - 1e-9
    assert len(starts) >= 80  # ~20 per second: the limiter does not starve callers


def _client_error(code: str, status: int) -> Exception:
    from botocore.exceptions import ClientError

    return ClientError(
        {"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}},
        "CreateQuantumTask",
    )


@pytest.mark.parametrize(
    ("code", "status", "kind", "reason"),
    [
        ("ThrottlingException", 429, FailureKind.TRANSIENT, "PROVIDER_ERROR"),
        ("InternalServiceException", 500, FailureKind.TRANSIENT, "PROVIDER_ERROR"),
        ("ValidationException", 400, FailureKind.CLIENT_ERROR, "PROVIDER_REJECTED"),
        ("ExpiredTokenException", 403, FailureKind.CREDENTIALS, "PROVIDER_ERROR"),
        ("AccessDeniedException", 403, FailureKind.CREDENTIALS, "PROVIDER_ERROR"),
        ("DeviceOfflineException", 424, FailureKind.BACKEND_FAULT, "PROVIDER_ERROR"),
    ],
)
def test_provider_errors_map_to_failure_kinds(
    code: str, status: int, kind: FailureKind, reason: str
) -> None:
    error = classify(_client_error(code, status), "sv1", "arn:task")
    assert (error.kind, error.reason) == (kind, reason)
    assert error.metadata == {"providerJobId": "arn:task", "providerErrorCode": code}


def test_clients_never_read_the_gateways_account_role_or_bucket() -> None:
    from botocore.exceptions import ClientError

    def error(code: str, status: int, message: str) -> Exception:
        return ClientError(
            {
                "Error": {"Code": code, "Message": message},
                "ResponseMetadata": {"HTTPStatusCode": status},
            },
            "CreateQuantumTask",
        )

    role = "arn:aws:sts::123456789012:assumed-role/qgw-prod/i-0abc"
    denied = classify(error("AccessDeniedException", 403, f"User: {role} is not allowed"), "sv1")
    assert denied.message == "backends/sv1: AccessDeniedException"
    # A rejection of the job itself keeps AWS's reason, with ARNs and accounts masked.
    rejected = classify(
        error("ValidationException", 400, f"qubit count 40 exceeds 34 on {role} 123456789012"),
        "sv1",
    )
    assert "qubit count 40 exceeds 34" in rejected.message
    assert "123456789012" not in rejected.message and "qgw-prod" not in rejected.message


def test_refused_credentials_while_following_a_task_are_transient() -> None:
    from botocore.exceptions import NoCredentialsError

    assert classify(NoCredentialsError(), "sv1").kind is FailureKind.CREDENTIALS
    following = classify(_client_error("ExpiredTokenException", 403), "sv1", following=True)
    assert following.kind is FailureKind.TRANSIENT


def test_a_device_arn_needs_a_region_and_a_bucket_and_local_devices_refuse_them() -> None:
    options = BraketOptions(device=SV1, region="us-east-1", s3_bucket="b")
    assert options.is_cloud and options.local_device == "braket_sv"
    assert not BraketOptions().is_cloud
    with pytest.raises(ValidationError, match="region and s3_bucket"):
        BraketOptions(device=SV1, region="us-east-1")
    with pytest.raises(ValidationError, match="device ARN only"):
        BraketOptions(device="braket_sv", s3_bucket="b")
    with pytest.raises(ValidationError, match="device ARN only"):
        BraketOptions(device="braket_sv", reservation_arn="arn:aws:braket:us-east-1:1:r/x")
    with pytest.raises(ValidationError, match="device must be"):
        BraketOptions(device="sv1")
    with pytest.raises(ValidationError, match="noise"):
        BraketOptions(device=SV1, region="r", s3_bucket="b", noise={"readout_flip": 0.1})


# ------------------------------------------------------------------------------ the runner


def _cloud_adapter() -> BraketAdapter:
    context = AdapterContext(
        name="sv1",
        limits=BackendLimits(
            max_shots=100_000,
            memory_budget_bytes=1 << 30,
            max_queued_jobs=100,
            max_result_bytes=64 << 20,
        ),
        default_shots=64,
        circuit_limits=CircuitLimits(),
        options={"device": SV1, "region": "us-east-1", "s3_bucket": "results"},
    )
    return BraketAdapter(context)


def _job() -> Job:
    return Job(
        id=uuid.uuid4().hex,
        tenant="default",
        request_id="",
        backend="sv1",
        state=JobState.SUBMITTING,
        created_at=datetime.now(UTC),
        num_pubs=1,
        seed=1,
    )


BELL = """OPENQASM 3.0;
include "stdgates.inc";
qubit[2] q;
bit[2] c;
h q[0];
cx q[0], q[1];
c = measure q;
"""

SWEEP = """OPENQASM 3.0;
include "stdgates.inc";
input float theta;
qubit[1] q;
bit[1] c;
rx(theta) q[0];
c = measure q;
"""


class FakeBraket:
    """AwsSession, the braket client and the s3 client in one: records what the runner asks."""

    def __init__(
        self,
        refuse_create: int | None = None,
        lose_answer: int | None = None,
        refuse_key: int | None = None,
        throttle: int = 0,
    ) -> None:
        self.refuse_create = refuse_create
        # The first `throttle` creates are throttled (429) and make nothing.
        self.throttle = throttle
        # This create makes its task, then its answer is lost (a transient error).
        self.lose_answer = lose_answer
        # This create is refused for an expired key and makes nothing.
        self.refuse_key = refuse_key
        self.tasks: dict[str, dict[str, Any]] = {}
        self.creates: list[dict[str, Any]] = []
        self.cancelled: list[str] = []
        self.searches: list[list[dict[str, Any]]] = []
        self.objects: dict[str, bytes] = {}
        self.session = self.braket = self.s3 = self

    def create_quantum_task(self, **kwargs: Any) -> str:
        self.creates.append(kwargs)
        if len(self.creates) <= self.throttle:
            raise _client_error("ThrottlingException", 429)
        if len(self.creates) - 1 == self.refuse_create:
            raise _client_error("ValidationException", 400)
        if len(self.creates) - 1 == self.refuse_key:
            raise _client_error("ExpiredTokenException", 403)
        arn = f"arn:aws:braket:us-east-1:1:quantum-task/{len(self.creates)}"
        self.tasks[arn] = {"quantumTaskArn": arn, "status": "QUEUED", "tags": kwargs["tags"]}
        if len(self.creates) - 1 == self.lose_answer:
            raise _client_error("InternalServiceException", 500)
        return arn

    def cancel_quantum_task(self, arn: str) -> None:
        self.cancelled.append(arn)

    def search_quantum_tasks(self, **kwargs: Any) -> dict[str, Any]:
        self.searches.append(kwargs["filters"])
        if any(f["name"] == "createdAt" for f in kwargs["filters"]):
            raise _client_error("ValidationException", 400)
        return {"quantumTasks": list(reversed(self.tasks.values()))}

    def put_object(self, Bucket: str, Key: str, Body: bytes) -> None:
        self.objects[f"{Bucket}/{Key}"] = Body


RESERVATION = "arn:aws:braket:us-east-1:123456789012:reservation/r-1"


def _runner(
    fake: FakeBraket, reservation: str | None = None, attempts: int = 1
) -> BraketCloudRunner:
    settings = CloudSettings(
        device_arn=SV1,
        region="us-east-1",
        s3_bucket="results",
        s3_prefix="gw",
        retry_attempts=attempts,
        retry_backoff_s=0.001,
        max_retry_backoff_s=0.001,
        reservation_arn=reservation,
    )
    return BraketCloudRunner(
        "sv1",
        settings,
        CloudStatus(SV1, "us-east-1"),
        clients=fake,
        limiter=CreateRateLimiter(20),
    )


@pytest.mark.anyio
async def test_a_refused_create_cancels_the_tasks_the_job_already_has() -> None:
    adapter = _cloud_adapter()
    bindings = Bindings(("theta",), (3,), np.array([[0.0], [1.0], [2.0]]))
    spec = JobSpec(
        backend="sv1",
        pubs=(SamplerPub(CircuitSource(CircuitLanguage.QASM3, SWEEP), bindings, 8),),
    )
    prepared = prepare_in_process(adapter, spec, seed=1)
    fake = FakeBraket(refuse_create=1)
    job = _job()
    with pytest.raises(ExecutionError) as failed:
        await _runner(fake).submit(prepared, job)
    assert failed.value.kind is FailureKind.CLIENT_ERROR
    assert failed.value.reason == "PROVIDER_REJECTED"
    assert [c["clientToken"] for c in fake.creates] == [f"{job.id}-0", f"{job.id}-1"]
    assert fake.creates[0]["tags"]["qgateway:job-name"] == f"jobs/{job.id}"
    assert fake.cancelled == list(fake.tasks)  # the one task it had
    assert f"results/gw/qgateway/{job.id}.json" in fake.objects  # the plan went first


@pytest.mark.anyio
@pytest.mark.parametrize("lost", [0, 1, 2])
async def test_a_create_whose_answer_was_lost_is_found_by_tag_never_left_running(
    lost: int,
) -> None:
    # Three tasks; one create makes its task and then fails transiently (retries spent).
    adapter = _cloud_adapter()
    bindings = Bindings(("theta",), (3,), np.array([[0.0], [1.0], [2.0]]))
    spec = JobSpec(
        backend="sv1",
        pubs=(SamplerPub(CircuitSource(CircuitLanguage.QASM3, SWEEP), bindings, 8),),
    )
    fake = FakeBraket(lose_answer=lost)
    job = _job()
    runner = _runner(fake)
    if lost == 2:
        # The last create: Braket has every task, so the job runs on them.
        handle = await runner.submit(prepare_in_process(adapter, spec, seed=1), job)
        assert handle.remote_id == " ".join(fake.tasks) and fake.cancelled == []
        return
    with pytest.raises(ExecutionError) as failed:
        await runner.submit(prepare_in_process(adapter, spec, seed=1), job)
    # Every task Braket has for the job is cancelled, the one whose answer was lost too; the
    # job fails for good (its client tokens name cancelled tasks now).
    assert sorted(fake.cancelled) == sorted(fake.tasks)
    assert len(fake.tasks) == lost + 1
    assert failed.value.kind is FailureKind.BACKEND_FAULT


@pytest.mark.anyio
async def test_a_key_refused_after_a_lost_answer_finds_the_task_made() -> None:
    # The first create made its task and its answer was lost; the retry's key was refused.
    # CREDENTIALS queued the job again without a look: a cancel while it waited left the task
    # running and billing, unfollowed. An uncertain create refused later is TRANSIENT: looked
    # up by tag, and here followed.
    adapter = _cloud_adapter()
    spec = JobSpec(
        backend="sv1", pubs=(SamplerPub(CircuitSource(CircuitLanguage.QASM3, BELL), Bindings(), 8),)
    )
    fake = FakeBraket(lose_answer=0, refuse_key=1)
    job = _job()
    handle = await _runner(fake, attempts=3).submit(prepare_in_process(adapter, spec, 1), job)
    assert len(fake.creates) == 2 and handle.remote_id == " ".join(fake.tasks)
    assert fake.cancelled == []
    # Refused on its first attempt, nothing was made: CREDENTIALS (the job is queued again).
    refused = FakeBraket(refuse_key=0)
    with pytest.raises(ExecutionError) as first:
        await _runner(refused, attempts=3).submit(prepare_in_process(adapter, spec, 1), _job())
    assert first.value.kind is FailureKind.CREDENTIALS and len(refused.creates) == 1


@pytest.mark.anyio
async def test_a_create_throttled_at_every_attempt_is_throttled_and_made_nothing() -> None:
    # Every attempt answered 429: nothing was made, so the job goes back to the queue
    # (THROTTLED) instead of failing PROVIDER_ERROR within seconds of sustained throttling.
    adapter = _cloud_adapter()
    spec = JobSpec(
        backend="sv1", pubs=(SamplerPub(CircuitSource(CircuitLanguage.QASM3, BELL), Bindings(), 8),)
    )
    fake = FakeBraket(throttle=3)
    with pytest.raises(ExecutionError) as throttled:
        await _runner(fake, attempts=3).submit(prepare_in_process(adapter, spec, 1), _job())
    assert throttled.value.kind is FailureKind.THROTTLED
    assert len(fake.creates) == 3 and fake.tasks == {} and fake.searches == []
    # Throttled fewer times than the attempts: retried, one task.
    fake = FakeBraket(throttle=2)
    handle = await _runner(fake, attempts=3).submit(prepare_in_process(adapter, spec, 1), _job())
    assert len(fake.creates) == 3 and handle.remote_id == " ".join(fake.tasks)
    # A 500 among them (that create may have made its task): not throttled, looked up by tag.
    fake = FakeBraket(throttle=1, lose_answer=1)
    handle = await _runner(fake, attempts=2).submit(prepare_in_process(adapter, spec, 1), _job())
    assert fake.searches and handle.remote_id == " ".join(fake.tasks) and len(fake.tasks) == 1
    # A sweep whose second task is throttled throughout: the first is cancelled, and the job
    # fails (its client tokens name a cancelled task now).
    bindings = Bindings(("theta",), (2,), np.array([[0.0], [1.0]]))
    sweep = JobSpec(
        backend="sv1",
        pubs=(SamplerPub(CircuitSource(CircuitLanguage.QASM3, SWEEP), bindings, 8),),
    )
    fake = FakeBraket()
    runner = _runner(fake, attempts=2)
    original = fake.create_quantum_task

    def second_throttled(**kwargs: Any) -> str:
        if len(fake.creates) >= 1:
            fake.creates.append(kwargs)
            raise _client_error("ThrottlingException", 429)
        return original(**kwargs)

    fake.create_quantum_task = second_throttled  # type: ignore[method-assign]
    with pytest.raises(ExecutionError) as failed:
        await runner.submit(prepare_in_process(adapter, sweep, seed=1), _job())
    assert failed.value.kind is FailureKind.BACKEND_FAULT
    assert fake.cancelled == list(fake.tasks) and len(fake.tasks) == 1


@pytest.mark.anyio
async def test_reattach_by_tag_finds_every_task_of_the_job_or_none() -> None:
    adapter = _cloud_adapter()
    bindings = Bindings(("theta",), (2,), np.array([[0.0], [1.0]]))
    spec = JobSpec(
        backend="sv1",
        pubs=(SamplerPub(CircuitSource(CircuitLanguage.QASM3, SWEEP), bindings, 8),),
    )
    fake = FakeBraket()
    runner = _runner(fake, reservation=RESERVATION)
    job = _job()
    handle = await runner.submit(prepare_in_process(adapter, spec, seed=1), job)
    other = await runner.submit(prepare_in_process(adapter, spec, seed=1), _job())
    association = {"arn": RESERVATION, "type": "RESERVATION_TIME_WINDOW_ARN"}
    assert all(c["associations"] == [association] for c in fake.creates)
    found = await runner.reattach(job, None)
    assert found is not None and found.remote_id == handle.remote_id
    # The createdAt filter was refused: the search fell back to the device filter alone.
    assert [f["name"] for f in fake.searches[-1]] == ["deviceArn"]
    del fake.tasks[handle.remote_id.split()[1]]  # type: ignore[union-attr]
    assert await runner.reattach(job, None) is None  # submit re-creates under the same tokens
    assert other.remote_id not in (None, handle.remote_id)
    assert fake.cancelled == []
    # Cancelled before its second task was created: that one never will be (the step ends the
    # job unsent), so the first, which Braket has, is cancelled rather than left billing.
    cancelling = dataclasses.replace(job, state=JobState.CANCELLING)
    assert await runner.reattach(cancelling, None) is None
    assert fake.cancelled == [handle.remote_id.split()[0]]  # type: ignore[union-attr]


def test_a_job_may_run_exactly_max_tasks_per_job_tasks() -> None:
    context = _cloud_adapter().context
    options = {**context.options, "max_tasks_per_job": 3}
    adapter = BraketAdapter(dataclasses.replace(context, options=options))

    def sweep(n: int) -> JobSpec:
        values = np.linspace(0.0, 1.0, n).reshape(n, 1)
        bindings = Bindings(("theta",), (n,), values)
        source = CircuitSource(CircuitLanguage.QASM3, SWEEP)
        return JobSpec(backend="sv1", pubs=(SamplerPub(source, bindings, 8),))

    assert prepare_in_process(adapter, sweep(3), seed=1).tasks == 3
    with pytest.raises(InvalidArgument) as refused:
        prepare_in_process(adapter, sweep(4), seed=1)
    assert refused.value.reason == "TOO_MANY_BINDINGS"


def test_a_qpu_arn_is_hardware_and_a_managed_simulator_is_not() -> None:
    from gateway.domain.backends import BackendKind

    qpu = "arn:aws:braket:us-east-1::device/qpu/ionq/Aria-1"
    context = _cloud_adapter().context
    hardware = BraketAdapter(
        dataclasses.replace(context, options={**context.options, "device": qpu})
    )
    assert hardware.backend_kind() is BackendKind.HARDWARE
    assert _cloud_adapter().backend_kind() is BackendKind.SIMULATOR
