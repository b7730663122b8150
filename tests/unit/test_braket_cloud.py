"""The Braket cloud runner's pure parts: its create limiter, its error kinds, its options."""

from __future__ import annotations

import dataclasses
import io
import math
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError
from qiskit.circuit import QuantumCircuit

from gateway.backends.base import AdapterContext, CircuitLimits
from gateway.backends.braket.adapter import BraketAdapter, BraketOptions
from gateway.backends.braket.cloud import (
    BraketCloudHandle,
    BraketCloudRunner,
    CloudSettings,
    CloudStatus,
    CreateRateLimiter,
    classify,
    shared_limiter,
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

    def get_object(self, Bucket: str, Key: str) -> dict[str, Any]:
        return {"Body": io.BytesIO(self.objects[f"{Bucket}/{Key}"])}

    def get_quantum_task(self, arn: str) -> dict[str, Any]:
        if arn not in self.tasks:
            raise _client_error("ResourceNotFoundException", 404)
        return dict(self.tasks[arn])

    def finish(self, arn: str, execution_ms: int | None = None) -> None:
        """The task ran on Braket's simulator: COMPLETED, its results.json in the bucket."""
        index = int(arn.rsplit("/", 1)[1]) - 1
        create = self.creates[index]
        directory = f"{create['outputS3KeyPrefix']}/tasks/{index}"
        text = _results(create, execution_ms)
        self.objects[f"{create['outputS3Bucket']}/{directory}/results.json"] = text.encode()
        self.tasks[arn].update(
            status="COMPLETED",
            outputS3Bucket=create["outputS3Bucket"],
            outputS3Directory=directory,
        )


def _results(create: Mapping[str, Any], execution_ms: int | None) -> str:
    """What a managed simulator writes for a task: its program's shots, and its execution
    duration where it reports one."""
    from braket.default_simulator import StateVectorSimulator
    from braket.ir.openqasm import Program
    from braket.task_result import SimulatorMetadata

    program = Program.parse_raw(create["action"])
    result = StateVectorSimulator().run(program, shots=create["shots"])
    result.additionalMetadata.simulatorMetadata = (
        None if execution_ms is None else SimulatorMetadata(executionDuration=execution_ms)
    )
    text: str = result.json()
    return text


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
    # Throttled, then refused: a 429 made nothing, so the create is not uncertain.
    throttled = FakeBraket(throttle=1, refuse_key=1)
    with pytest.raises(ExecutionError) as later:
        await _runner(throttled, attempts=3).submit(prepare_in_process(adapter, spec, 1), _job())
    assert later.value.kind is FailureKind.CREDENTIALS and throttled.searches == []


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


def _sweep(angles: Sequence[float], source: str = SWEEP) -> SamplerPub:
    values = np.array([[a] for a in angles])
    return SamplerPub(
        CircuitSource(CircuitLanguage.QASM3, source),
        Bindings(("theta",), (len(angles),), values),
        8,
    )


# rx(theta) on q[1] only: c reads "00" at theta 0 and "10" at pi, unlike SWEEP's one bit.
SWEEP_Q1 = """OPENQASM 3.0;
include "stdgates.inc";
input float theta;
qubit[2] q;
bit[2] c;
rx(theta) q[1];
c = measure q;
"""


@pytest.mark.anyio
async def test_results_come_back_in_binding_order_and_durations_are_summed() -> None:
    # Two PUBs, five tasks finished out of order: each binding reads its own task's shots.
    adapter = _cloud_adapter()
    spec = JobSpec(
        backend="sv1",
        pubs=(_sweep([math.pi, 0.0, math.pi]), _sweep([0.0, math.pi], SWEEP_Q1)),
    )
    fake = FakeBraket()
    runner = _runner(fake)
    handle = await runner.submit(prepare_in_process(adapter, spec, seed=1), _job())
    assert len(handle.arns) == 5
    # Results land beside the plan, under the backend's prefix.
    assert {c["outputS3KeyPrefix"] for c in fake.creates} == {"gw"}
    for i, arn in reversed(list(enumerate(handle.arns))):
        fake.finish(arn, execution_ms=100 * (i + 1))
    outcome = await runner.wait(handle)
    counts = [[dict(c) for c in pub.registers[0].counts] for pub in outcome.result.pubs]  # type: ignore[union-attr]
    assert counts == [
        [{"1": 8}, {"0": 8}, {"1": 8}],
        [{"00": 8}, {"10": 8}],
    ]
    assert outcome.tasks == 5
    assert outcome.execution_seconds == pytest.approx(1.5)  # 0.1 + 0.2 + ... + 0.5


@pytest.mark.anyio
async def test_a_task_without_a_duration_leaves_the_job_without_one() -> None:
    # A QPU reports no execution time: a sum over some of the tasks would under-report it.
    adapter = _cloud_adapter()
    spec = JobSpec(backend="sv1", pubs=(_sweep([0.0, math.pi]),))
    fake = FakeBraket()
    runner = _runner(fake)
    handle = await runner.submit(prepare_in_process(adapter, spec, seed=1), _job())
    fake.finish(handle.arns[0], execution_ms=250)
    fake.finish(handle.arns[1], execution_ms=None)
    outcome = await runner.wait(handle)
    assert outcome.execution_seconds is None and outcome.tasks == 2


@pytest.mark.anyio
async def test_a_failed_task_ends_the_job_and_cancels_only_the_tasks_after_it() -> None:
    adapter = _cloud_adapter()
    spec = JobSpec(backend="sv1", pubs=(_sweep([0.0, 1.0, 2.0, 3.0]),))
    fake = FakeBraket()
    runner = _runner(fake)
    handle = await runner.submit(prepare_in_process(adapter, spec, seed=1), _job())
    first, second, *rest = handle.arns
    fake.finish(first)
    fake.tasks[second].update(status="FAILED", failureReason="device calibration lost")
    with pytest.raises(ExecutionError) as failed:
        await runner.wait(handle)
    assert (failed.value.kind, failed.value.reason) == (
        FailureKind.BACKEND_FAULT,
        "EXECUTION_FAILED",
    )
    assert failed.value.metadata == {
        "providerJobId": second,
        "providerFailureReason": "device calibration lost",
    }
    # The tasks after it would run and bill for a job that failed; the ones before are final.
    assert fake.cancelled == rest


@pytest.mark.anyio
async def test_a_task_cancelled_at_braket_cancels_the_job_and_its_other_tasks() -> None:
    adapter = _cloud_adapter()
    spec = JobSpec(backend="sv1", pubs=(_sweep([0.0, 1.0, 2.0]),))
    fake = FakeBraket()
    runner = _runner(fake)
    handle = await runner.submit(prepare_in_process(adapter, spec, seed=1), _job())
    fake.tasks[handle.arns[0]]["status"] = "CANCELLED"
    with pytest.raises(ExecutionError) as cancelled:
        await runner.wait(handle)
    assert cancelled.value.kind is FailureKind.CANCELLED
    assert cancelled.value.metadata["providerJobId"] == handle.arns[0]
    assert fake.cancelled == list(handle.arns[1:])


class PagedBraket(FakeBraket):
    """Searches answered one task a page, newest first, as Braket pages a busy device."""

    def search_quantum_tasks(self, **kwargs: Any) -> dict[str, Any]:
        self.searches.append(kwargs["filters"])
        tasks = list(reversed(self.tasks.values()))
        start = int(kwargs.get("nextToken") or 0)
        page: dict[str, Any] = {"quantumTasks": tasks[start : start + 1]}
        if start + 1 < len(tasks):
            page["nextToken"] = str(start + 1)
        return page


@pytest.mark.anyio
async def test_reattach_by_tag_follows_the_pages_past_other_jobs_tasks() -> None:
    # The job's tasks lie on later pages, behind a newer job's tasks with the same indices.
    adapter = _cloud_adapter()
    spec = JobSpec(backend="sv1", pubs=(_sweep([0.0, 1.0]),))
    fake = PagedBraket()
    runner = _runner(fake)
    job = _job()
    # ARNs that sort otherwise than the job's task order (".../9" after ".../10").
    older = JobSpec(backend="sv1", pubs=(_sweep([0.0] * 8),))
    await runner.submit(prepare_in_process(adapter, older, seed=1), _job())
    handle = await runner.submit(prepare_in_process(adapter, spec, seed=1), job)
    await runner.submit(prepare_in_process(adapter, spec, seed=1), _job())
    found = await runner.reattach(job, None)
    assert found is not None and found.arns == handle.arns
    assert fake.cancelled == []


@pytest.mark.anyio
async def test_cancel_asks_for_every_task_past_one_it_could_not_cancel() -> None:
    adapter = _cloud_adapter()
    spec = JobSpec(backend="sv1", pubs=(_sweep([0.0, 1.0, 2.0]),))
    fake = FakeBraket()
    runner = _runner(fake)
    handle = await runner.submit(prepare_in_process(adapter, spec, seed=1), _job())
    asked: list[str] = []

    def cancel(arn: str) -> None:
        asked.append(arn)
        if arn == handle.arns[0]:
            raise _client_error("InternalServiceException", 500)
        if arn == handle.arns[1]:
            raise _client_error("ConflictException", 409)  # already final: nothing to cancel

    fake.cancel_quantum_task = cancel  # type: ignore[method-assign]
    with pytest.raises(ExecutionError) as failed:
        await runner.cancel(handle)
    assert failed.value.kind is FailureKind.TRANSIENT
    assert asked == list(handle.arns)  # each task bills: none is skipped
    asked.clear()
    await runner.cancel(BraketCloudHandle(handle.job_id, handle.arns[1:]))
    assert asked == list(handle.arns[1:])


@pytest.mark.anyio
async def test_a_create_throttled_after_a_lost_answer_is_looked_up_not_queued_again() -> None:
    # The first attempt made the task and lost its answer; the retry was throttled. Not
    # THROTTLED (that is for creates that made nothing): the task is found by its tag.
    adapter = _cloud_adapter()
    spec = JobSpec(
        backend="sv1", pubs=(SamplerPub(CircuitSource(CircuitLanguage.QASM3, BELL), Bindings(), 8),)
    )
    fake = FakeBraket(lose_answer=0)
    original = fake.create_quantum_task

    def throttled_retry(**kwargs: Any) -> str:
        if fake.creates:
            fake.creates.append(kwargs)
            raise _client_error("ThrottlingException", 429)
        return original(**kwargs)

    fake.create_quantum_task = throttled_retry  # type: ignore[method-assign]
    handle = await _runner(fake, attempts=2).submit(prepare_in_process(adapter, spec, 1), _job())
    assert len(fake.creates) == 2 and fake.searches
    assert handle.arns == tuple(fake.tasks) and fake.cancelled == []


@pytest.mark.anyio
async def test_the_probe_needs_an_online_device_and_counts_its_task_queues_only() -> None:
    adapter = _cloud_adapter()
    spec = JobSpec(
        backend="sv1", pubs=(SamplerPub(CircuitSource(CircuitLanguage.QASM3, BELL), Bindings(), 8),)
    )
    prepared = prepare_in_process(adapter, spec, 1)
    fake = FakeBraket()
    device: dict[str, Any] = {
        "deviceStatus": "ONLINE",
        "deviceQueueInfo": [
            {"queue": "QUANTUM_TASKS_QUEUE", "queueSize": "3", "queuePriority": "Normal"},
            {"queue": "QUANTUM_TASKS_QUEUE", "queueSize": "1", "queuePriority": "Priority"},
            {"queue": "JOBS_QUEUE", "queueSize": "7"},  # hybrid jobs, not the gateway's tasks
        ],
    }
    fake.get_device = lambda arn: device  # type: ignore[attr-defined]
    runner = _runner(fake)
    await runner.probe(prepared, 5.0)
    properties = runner.status.properties()
    assert (properties["device_status"], properties["queue_depth"]) == ("ONLINE", "4")
    device["deviceStatus"] = "RETIRED"
    with pytest.raises(ExecutionError) as retired:
        await runner.probe(prepared, 5.0)
    assert retired.value.kind is FailureKind.BACKEND_FAULT
    assert runner.status.properties()["device_status"] == "RETIRED"


def test_backends_of_one_account_and_region_share_one_create_limiter() -> None:
    # Braket counts creates per account: two profiles are two accounts, two budgets.
    def settings(profile: str | None, device: str = SV1) -> CloudSettings:
        return CloudSettings(device, "eu-west-2", "b", "p", profile=profile)

    dm1 = "arn:aws:braket:::device/quantum-simulator/amazon/dm1"
    assert shared_limiter(settings("a")) is shared_limiter(settings("a", dm1))
    assert shared_limiter(settings("a")) is not shared_limiter(settings("b"))


def test_queue_positions_keep_only_the_latest_jobs() -> None:
    # Read at every GetBackend: a gateway following thousands of jobs must not grow it.
    status = CloudStatus(SV1, "us-east-1")
    for i in range(101):
        status.set_position(f"job-{i}", str(i + 1))
    positions = [k for k in status.properties() if k.startswith("queue_position/")]
    assert len(positions) == 100 and "queue_position/jobs/job-0" not in positions
    status.set_position("job-100", None)
    assert "queue_position/jobs/job-100" not in status.properties()


@pytest.mark.anyio
async def test_reattach_by_stored_arns_follows_every_task_of_that_job_only() -> None:
    adapter = _cloud_adapter()
    spec = JobSpec(backend="sv1", pubs=(_sweep([0.0, 1.0]),))
    fake = FakeBraket()
    runner = _runner(fake)
    job = _job()
    handle = await runner.submit(prepare_in_process(adapter, spec, seed=1), job)
    again = await runner.reattach(job, handle.remote_id)
    assert again is not None and again.arns == handle.arns
    # A stored id that names another job's task (a restored database, a bad row): following
    # it would deliver that job's results as this one's.
    with pytest.raises(ExecutionError) as foreign:
        await runner.reattach(_job(), handle.remote_id)
    assert foreign.value.kind is FailureKind.BACKEND_FAULT
    # Braket no longer has the task: nothing to follow, submit creates it again.
    del fake.tasks[handle.arns[0]]
    assert await runner.reattach(job, handle.remote_id) is None


@pytest.mark.anyio
async def test_results_of_the_wrong_shape_fail_the_job_rather_than_misread_it() -> None:
    adapter = _cloud_adapter()
    spec = JobSpec(backend="sv1", pubs=(_sweep([0.0]),))
    fake = FakeBraket()
    runner = _runner(fake)
    handle = await runner.submit(prepare_in_process(adapter, spec, seed=1), _job())
    # Results with two measured bits for a program that measures one: read as they come,
    # the second bit would be ORed into the first's outcomes.
    from braket.ir.openqasm import Program

    two_bits = "OPENQASM 3.0;\nqubit[2] q;\nbit[2] c;\nx q[1];\nc = measure q;\n"
    fake.creates[0]["action"] = Program(source=two_bits).json()
    fake.finish(handle.arns[0])
    with pytest.raises(ExecutionError) as unreadable:
        await runner.wait(handle)
    assert (unreadable.value.kind, unreadable.value.reason) == (
        FailureKind.BACKEND_FAULT,
        "EXECUTION_FAILED",
    )
    assert "unreadable task results" in unreadable.value.message


# No measurement: every clbit reads 0, and the runner creates no task for the PUB.
UNMEASURED = """OPENQASM 3.0;
include "stdgates.inc";
input float theta;
qubit[1] q;
bit[1] c;
rx(theta) q[0];
"""


@pytest.mark.anyio
async def test_the_estimate_counts_only_the_tasks_braket_is_asked_to_run() -> None:
    adapter = _cloud_adapter()
    spec = JobSpec(backend="sv1", pubs=(_sweep([0.0]), _sweep([0.0, 1.0, 2.0], UNMEASURED)))
    prepared = prepare_in_process(adapter, spec, seed=1)
    handle = await _runner(FakeBraket()).submit(prepared, _job())
    # The estimate is per_task times prepared.tasks; the charge, per task the runner made.
    assert prepared.tasks == len(handle.arns) == 1


@pytest.mark.anyio
async def test_a_pub_without_measurements_is_no_task_and_reads_zeros() -> None:
    adapter = _cloud_adapter()
    spec = JobSpec(backend="sv1", pubs=(_sweep([math.pi]), _sweep([0.0, 1.0], UNMEASURED)))
    fake = FakeBraket()
    runner = _runner(fake)
    handle = await runner.submit(prepare_in_process(adapter, spec, seed=1), _job())
    assert len(fake.creates) == 1  # nothing to pay Braket for
    fake.finish(handle.arns[0])
    outcome = await runner.wait(handle)
    counts = [[dict(c) for c in pub.registers[0].counts] for pub in outcome.result.pubs]  # type: ignore[union-attr]
    assert counts == [[{"1": 8}], [{"0": 8}, {"0": 8}]]


@pytest.mark.anyio
async def test_a_job_that_ends_while_queued_leaves_no_queue_position() -> None:
    adapter = _cloud_adapter()
    spec = JobSpec(backend="sv1", pubs=(_sweep([0.0]),))
    fake = FakeBraket()
    runner = _runner(fake)
    job = _job()
    handle = await runner.submit(prepare_in_process(adapter, spec, seed=1), job)
    views = [{**fake.tasks[handle.arns[0]], "queueInfo": {"position": "3"}}]

    def get(arn: str) -> dict[str, Any]:
        if views:
            return views.pop()
        raise _client_error("ResourceNotFoundException", 404)  # then Braket lost it

    fake.get_quantum_task = get  # type: ignore[method-assign]
    with pytest.raises(ExecutionError):
        await runner.wait(handle)
    assert not [k for k in runner.status.properties() if k.startswith("queue_position/")]


def test_a_cloud_backend_offers_the_sampler_and_reads_the_device_live() -> None:
    from gateway.domain import costs
    from gateway.domain.backends import Primitive

    adapter = _cloud_adapter()
    info = adapter.info()
    # Braket tasks are shots: a client must not be offered an estimator it would be refused.
    assert info.primitives == frozenset({Primitive.SAMPLER})
    runner = adapter.create_runner()
    assert runner is not None
    runner.status.set_device("ONLINE", "7")
    assert adapter.info().properties["queue_depth"] == "7"
    # Run at the provider: no local simulation work or memory is priced for it.
    assert adapter.run_costs() is costs.BATCHED_RUNS
    assert adapter.state_size(QuantumCircuit(20), True) == (0, 1 << 20)


def test_a_cloud_backend_runs_with_the_options_it_was_given() -> None:
    context = _cloud_adapter().context
    tuned = {
        "s3_prefix": "p",
        "max_concurrent_tasks": 3,
        "max_creates_per_s": 5,
        "poll_interval_s": 2.5,
        "request_timeout_s": 7.0,
        "retry_attempts": 2,
        "retry_backoff_s": 0.5,
        "max_retry_backoff_s": 4.0,
        "reservation_arn": RESERVATION,
    }
    adapter = BraketAdapter(dataclasses.replace(context, options={**context.options, **tuned}))
    runner = adapter.create_runner()
    assert runner is not None
    expected = CloudSettings(device_arn=SV1, region="us-east-1", s3_bucket="results", **tuned)
    assert runner.settings == expected


def test_a_cloud_backend_refuses_a_seed_it_cannot_honour() -> None:
    from gateway.domain.jobs import JobOptions

    spec = JobSpec(
        backend="sv1",
        pubs=(SamplerPub(CircuitSource(CircuitLanguage.QASM3, BELL), Bindings(), 8),),
        options=JobOptions(seed=7),
    )
    with pytest.raises(InvalidArgument) as refused:
        prepare_in_process(_cloud_adapter(), spec, seed=7)
    assert refused.value.reason == "UNSUPPORTED_FEATURE"


def test_a_cloud_target_is_no_wider_than_the_managed_simulators() -> None:
    # SV1 runs at most 34 qubits: a wider circuit is refused here, not after its queue wait.
    context = _cloud_adapter().context
    wide = BraketAdapter(
        dataclasses.replace(context, options={**context.options, "num_qubits": 40})
    )
    assert wide.build_qiskit_target().num_qubits == 34
