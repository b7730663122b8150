"""The loopback backend's REMOTE runner in process, against a real loopback service process.

The service is started once for the module; tests hold and release it (and inject its faults)
through its control endpoints, and wait on its states with its long polls, never with sleeps.
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import anyio
import numpy as np
import pytest
from pydantic import ValidationError

from gateway.backends.base import AdapterContext, CircuitLimits, PreparedJob
from gateway.backends.loopback.adapter import (
    LoopbackAdapter,
    LoopbackHandle,
    LoopbackOptions,
    LoopbackPayload,
    LoopbackRunner,
)
from gateway.backends.loopback.service import JobService, RequestError
from gateway.backends.runner import ExecutionModel
from gateway.domain.backends import BackendLimits
from gateway.domain.circuits import (
    Bindings,
    CircuitLanguage,
    CircuitSource,
    EstimatorPub,
    Observable,
    SamplerPub,
)
from gateway.domain.errors import ExecutionError, InvalidArgument
from gateway.domain.failures import FailureKind
from gateway.domain.jobs import Job, JobOptions, JobSpec, JobState, SamplerOutput, SamplerResult
from tests.adapters import prepare_in_process
from tests.loopback_service import TWO_REGISTERS, LoopbackService, free_port

pytestmark = pytest.mark.anyio


SWEEP = """OPENQASM 3.0;
include "stdgates.inc";
input float theta;
qubit[2] q;
bit[2] c;
rx(theta) q[1];
x q[0];
c[0] = measure q[0];
c[1] = measure q[1];
"""


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LoopbackService]:
    root = tmp_path_factory.mktemp("loopback")
    process = LoopbackService.start(root / "state", root / "service.log")
    yield process
    assert process.stop() == 0


@pytest.fixture(autouse=True)
def _released(service: LoopbackService) -> Iterator[None]:
    yield
    service.faults()
    service.release()


def options(url: str, **overrides: object) -> dict[str, object]:
    return {"url": url, "retry_attempts": 3, "retry_backoff_s": 0.01, **overrides}


def make_adapter(url: str, **overrides: object) -> LoopbackAdapter:
    context = AdapterContext(
        name="remote",
        limits=BackendLimits(
            max_shots=100_000,
            memory_budget_bytes=1 << 30,
            max_queued_jobs=100,
            max_result_bytes=64 << 20,
        ),
        default_shots=64,
        circuit_limits=CircuitLimits(),
        options=options(url, **overrides),
    )
    return LoopbackAdapter(context)


def make_runner(url: str, sleeps: list[float] | None = None, **overrides: object) -> LoopbackRunner:
    opts = LoopbackOptions.model_validate(options(url, **overrides))
    recorded = sleeps if sleeps is not None else []
    return LoopbackRunner("remote", opts, sleep=recorded.append)


def new_job(seed: int = 7) -> Job:
    return Job(
        id=f"job-{uuid.uuid4().hex}",
        tenant="default",
        request_id="",
        backend="remote",
        state=JobState.SUBMITTING,
        created_at=datetime.now(UTC),
        num_pubs=1,
        seed=seed,
    )


def sampler_spec(
    text: str = TWO_REGISTERS,
    shots: int = 16,
    bindings: Bindings | None = None,
    output: SamplerOutput = SamplerOutput.SAMPLES_AND_COUNTS,
) -> JobSpec:
    pub = SamplerPub(CircuitSource(CircuitLanguage.QASM3, text), bindings or Bindings(), shots)
    return JobSpec(backend="remote", pubs=(pub,), options=JobOptions(sampler_output=output))


def check_two_registers(result: SamplerResult, shots: int, output: SamplerOutput) -> None:
    a, b = result.registers
    assert (a.name, a.num_bits, b.name, b.num_bits) == ("a", 2, "b", 3)
    if output.counts:
        assert dict(a.counts[0]) == {"01": shots}
        assert dict(b.counts[0]) == {"011": shots}
    else:
        assert a.counts == () and b.counts == ()
    if output.samples:
        assert a.samples is not None and b.samples is not None
        assert a.samples.shape == (shots, 1) and b.samples.shape == (shots, 1)
        assert (a.samples == 0b01).all() and (b.samples == 0b011).all()
    else:
        assert a.samples is None and b.samples is None


# ------------------------------------------------------------------------------ adapter


def test_one_config_block_makes_a_remote_runner(service: LoopbackService) -> None:
    adapter = make_adapter(service.url, max_concurrent_jobs=3)
    runner = adapter.create_runner()
    assert isinstance(runner, LoopbackRunner)
    assert runner.model is ExecutionModel.REMOTE and runner.capacity == 3
    with pytest.raises(ValidationError):
        make_adapter(service.url, urll="http://127.0.0.1:1")  # a typo is an error
    with pytest.raises(ValidationError):
        make_adapter("https://127.0.0.1:1/path")


def test_compiled_program_is_openqasm3_in_the_service_basis(service: LoopbackService) -> None:
    adapter = make_adapter(service.url)
    compiled = adapter.compile_circuit(CircuitSource(CircuitLanguage.QASM3, SWEEP))
    assert compiled.program.startswith("OPENQASM 3")
    assert "rx(" not in compiled.program  # transpiled to x, sx, rz, cx
    assert compiled.registers == (("c", 2),) and compiled.parameters == ("theta",)


def test_estimator_and_control_flow_are_refused_up_front(service: LoopbackService) -> None:
    adapter = make_adapter(service.url)
    circuit = CircuitSource(CircuitLanguage.QASM3, TWO_REGISTERS)
    estimator = EstimatorPub(circuit, (Observable((("ZZZZZ", 1.0),)),), (1,), Bindings())
    with pytest.raises(InvalidArgument) as refused:
        prepare_in_process(adapter, JobSpec(backend="remote", pubs=(estimator,)), seed=1)
    assert refused.value.reason == "UNSUPPORTED_FEATURE"
    assert refused.value.field_violations[0].field == "spec.pubs[0].estimator"
    dynamic = TWO_REGISTERS + "if (a[0]) { x q[1]; }\n"
    with pytest.raises(InvalidArgument) as refused:
        prepare_in_process(adapter, sampler_spec(dynamic), seed=1)
    assert refused.value.reason == "UNSUPPORTED_FEATURE"
    assert refused.value.metadata["feature"] == "control_flow"


# ------------------------------------------------------------------------------- runner


async def test_submit_returns_before_the_job_runs_and_wait_gets_the_result(
    service: LoopbackService,
) -> None:
    adapter = make_adapter(service.url)
    runner = adapter.create_runner()
    prepared = prepare_in_process(adapter, sampler_spec(shots=16), seed=3)
    job = new_job()
    before = service.stats()["creates"]
    service.hold()
    handle = await runner.submit(prepared, job)
    assert handle.job_id == job.id and handle.remote_id is not None
    # Accepted and held at the service: submit did not wait for it.
    assert service.job(handle.remote_id)["status"] == "QUEUED"
    assert service.stats()["creates"] == before + 1
    service.release()
    outcome = await runner.wait(handle)
    (pub,) = outcome.result.pubs
    assert isinstance(pub, SamplerResult) and pub.shape == () and pub.shots == 16
    check_two_registers(pub, 16, SamplerOutput.SAMPLES_AND_COUNTS)
    assert outcome.sdk_versions["qiskit-aer"]


@pytest.mark.parametrize("output", [SamplerOutput.COUNTS, SamplerOutput.SAMPLES])
async def test_counts_only_and_samples_only(
    service: LoopbackService, output: SamplerOutput
) -> None:
    adapter = make_adapter(service.url)
    runner = adapter.create_runner()
    prepared = prepare_in_process(adapter, sampler_spec(shots=9, output=output), seed=1)
    assert isinstance(prepared.payload, LoopbackPayload)
    assert prepared.payload.request["memory"] is output.samples
    outcome = await runner.wait(await runner.submit(prepared, new_job()))
    (pub,) = outcome.result.pubs
    assert isinstance(pub, SamplerResult)
    check_two_registers(pub, 9, output)


async def test_a_parameter_sweep_is_one_job(service: LoopbackService) -> None:
    adapter = make_adapter(service.url)
    runner = adapter.create_runner()
    values = np.array([[[0.0], [math.pi]], [[math.pi], [0.0]]])
    bindings = Bindings(parameters=("theta",), shape=(2, 2), values=values)
    prepared = prepare_in_process(adapter, sampler_spec(SWEEP, shots=8, bindings=bindings), 5)
    outcome = await runner.wait(await runner.submit(prepared, new_job()))
    (pub,) = outcome.result.pubs
    assert isinstance(pub, SamplerResult) and pub.shape == (2, 2)
    (c,) = pub.registers
    assert [dict(counts) for counts in c.counts] == [{"01": 8}, {"11": 8}, {"11": 8}, {"01": 8}]
    assert c.samples is not None and c.samples.shape == (2, 2, 8, 1)
    assert (c.samples[0, 1] == 0b11).all() and (c.samples[1, 1] == 0b01).all()


async def test_submitting_a_job_twice_creates_it_once(service: LoopbackService) -> None:
    adapter = make_adapter(service.url)
    runner = adapter.create_runner()
    prepared = prepare_in_process(adapter, sampler_spec(), seed=2)
    job = new_job()
    before = service.stats()
    service.hold()
    first = await runner.submit(prepared, job)
    second = await make_runner(service.url).submit(prepared, job)
    after = service.stats()
    assert first.remote_id == second.remote_id
    assert after["creates"] == before["creates"] + 1
    assert after["create_calls"] == before["create_calls"] + 2


async def test_a_lost_create_reply_is_retried_into_the_same_job(service: LoopbackService) -> None:
    adapter = make_adapter(service.url)
    prepared = prepare_in_process(adapter, sampler_spec(), seed=2)
    sleeps: list[float] = []
    runner = make_runner(service.url, sleeps)
    job = new_job()
    before = service.stats()
    service.hold()
    # The service creates the job, then the reply is lost (503): the retry finds it by token.
    service.faults(lose_create_response=1)
    handle = await runner.submit(prepared, job)
    after = service.stats()
    assert len(sleeps) == 1
    assert after["creates"] == before["creates"] + 1
    assert after["create_calls"] == before["create_calls"] + 2
    found = service.job_by_token(job.id)
    assert found is not None and found["id"] == handle.remote_id


async def test_503s_are_retried_under_the_policy(service: LoopbackService) -> None:
    adapter = make_adapter(service.url)
    prepared = prepare_in_process(adapter, sampler_spec(shots=4), seed=2)
    sleeps: list[float] = []
    runner = make_runner(service.url, sleeps, retry_attempts=3)
    service.faults(unavailable=2)
    outcome = await runner.wait(await runner.submit(prepared, new_job()))
    assert len(sleeps) == 2
    (pub,) = outcome.result.pubs
    assert isinstance(pub, SamplerResult)
    check_two_registers(pub, 4, SamplerOutput.SAMPLES_AND_COUNTS)
    # Three 503s in a row exhaust three attempts: TRANSIENT reaches the caller.
    service.faults(unavailable=3)
    with pytest.raises(ExecutionError) as failed:
        await runner.submit(prepared, new_job())
    assert failed.value.kind is FailureKind.TRANSIENT and failed.value.reason == "PROVIDER_ERROR"


async def test_cancel_is_remote(service: LoopbackService) -> None:
    adapter = make_adapter(service.url)
    runner = adapter.create_runner()
    prepared = prepare_in_process(adapter, sampler_spec(), seed=2)
    # A job still queued at the service.
    service.hold()
    queued = await runner.submit(prepared, new_job())
    await runner.cancel(queued)
    assert queued.remote_id is not None
    assert service.job(queued.remote_id)["status"] == "CANCELLED"
    with pytest.raises(ExecutionError) as cancelled:
        await runner.wait(queued)
    assert cancelled.value.kind is FailureKind.CANCELLED
    assert cancelled.value.metadata["providerJobId"] == queued.remote_id
    # A job running at the service (held there until released or cancelled).
    service.hold("running")
    running = await runner.submit(prepared, new_job())
    assert running.remote_id is not None
    assert service.wait_status(running.remote_id, leaving="QUEUED") == "RUNNING"
    await runner.cancel(running)
    await runner.cancel(running)  # idempotent
    assert service.job(running.remote_id)["status"] == "CANCELLED"
    with pytest.raises(ExecutionError) as cancelled:
        await runner.wait(running)
    assert cancelled.value.kind is FailureKind.CANCELLED
    service.release()
    assert service.job(running.remote_id)["status"] == "CANCELLED"  # stays cancelled


async def test_cancel_of_a_finished_or_unknown_job_changes_nothing(
    service: LoopbackService,
) -> None:
    adapter = make_adapter(service.url)
    runner = adapter.create_runner()
    prepared = prepare_in_process(adapter, sampler_spec(shots=4), seed=2)
    done = await runner.submit(prepared, new_job())
    await runner.wait(done)
    assert done.remote_id is not None
    # The job core may cancel a job that finished meanwhile: its result must stay.
    await runner.cancel(done)
    assert service.job(done.remote_id)["status"] == "DONE"
    assert len((await runner.wait(done)).result.pubs) == 1
    # Nothing there (the service lost it, or never had it): nothing to cancel, not a fault.
    await runner.cancel(LoopbackHandle("job-gone", "lbj-0000000000000000"))


async def test_a_job_cancelled_while_queued_never_runs(service: LoopbackService) -> None:
    adapter = make_adapter(service.url)
    runner = adapter.create_runner()
    prepared = prepare_in_process(adapter, sampler_spec(shots=4), seed=2)
    service.hold()
    cancelled = await runner.submit(prepared, new_job())
    await runner.cancel(cancelled)
    later = await runner.submit(prepared, new_job())
    service.release()
    # The queue is FIFO: once the later job is done, a worker has taken the cancelled one.
    await runner.wait(later)
    assert cancelled.remote_id is not None
    assert service.job(cancelled.remote_id)["status"] == "CANCELLED"


async def test_waiting_for_a_job_the_service_lost_is_a_backend_fault(
    service: LoopbackService,
) -> None:
    runner = make_adapter(service.url).create_runner()
    # fail_after only bounds a regression that polls forever; the real call fails at once.
    with anyio.fail_after(60), pytest.raises(ExecutionError) as lost:
        await runner.wait(LoopbackHandle("job-lost", "lbj-0000000000000000"))
    assert lost.value.kind is FailureKind.BACKEND_FAULT
    assert lost.value.metadata["providerJobId"] == "lbj-0000000000000000"


async def test_a_long_poll_may_outlast_the_request_timeout(service: LoopbackService) -> None:
    # The service holds a long poll for long_poll_s: the socket timeout must allow for it, or
    # every wait on a job longer than request_timeout_s fails as TRANSIENT.
    adapter = make_adapter(service.url, long_poll_s=3, request_timeout_s=2, retry_attempts=1)
    runner = adapter.create_runner()
    prepared = prepare_in_process(adapter, sampler_spec(shots=4), seed=2)
    service.hold()
    handle = await runner.submit(prepared, new_job())
    assert handle.remote_id is not None
    # One poll of a job held QUEUED: answered after the full long poll, still not final.
    assert await anyio.to_thread.run_sync(runner._poll, handle.remote_id) is None


def test_a_first_backoff_above_the_cap_is_capped() -> None:
    # Both are valid options on their own; the runner must not refuse to start, nor wait
    # longer than max_retry_backoff_s.
    sleeps: list[float] = []
    dead = make_runner(
        f"http://127.0.0.1:{free_port()}", sleeps, retry_backoff_s=10, max_retry_backoff_s=0.5
    )
    with pytest.raises(ExecutionError) as failed:
        dead._call("GET", "/v1/stats")
    assert failed.value.kind is FailureKind.TRANSIENT
    assert len(sleeps) == 2 and all(0 < s <= 0.5 for s in sleeps)


async def test_cancelling_the_wait_leaves_the_job_running(service: LoopbackService) -> None:
    adapter = make_adapter(service.url, long_poll_s=30)
    runner = adapter.create_runner()
    prepared = prepare_in_process(adapter, sampler_spec(shots=4), seed=2)
    service.hold()
    handle = await runner.submit(prepared, new_job())
    with anyio.move_on_after(0.3) as scope:
        await runner.wait(handle)
    assert scope.cancelled_caught  # returned while the long poll was still open
    assert handle.remote_id is not None
    assert service.job(handle.remote_id)["status"] == "QUEUED"
    service.release()
    outcome = await runner.wait(handle)
    assert len(outcome.result.pubs) == 1


async def test_reattach_by_id_and_by_token_after_a_restart(service: LoopbackService) -> None:
    adapter = make_adapter(service.url)
    prepared = prepare_in_process(adapter, sampler_spec(shots=8), seed=4)
    job = new_job()
    service.hold()
    submitted = await adapter.create_runner().submit(prepared, job)
    before = service.stats()
    # A new runner, as after a gateway restart: it has nothing but the job and the stored id.
    restarted = make_adapter(service.url).create_runner()
    by_id = await restarted.reattach(job, submitted.remote_id)
    by_token = await restarted.reattach(job, None)  # died before the id was stored
    assert isinstance(by_id, LoopbackHandle) and isinstance(by_token, LoopbackHandle)
    assert by_id.remote_id == by_token.remote_id == submitted.remote_id
    assert by_id.job_id == job.id
    service.release()
    # The result is read with the plan the service kept, not the lost PreparedJob.
    outcome = await restarted.wait(by_token)
    (pub,) = outcome.result.pubs
    assert isinstance(pub, SamplerResult)
    check_two_registers(pub, 8, SamplerOutput.SAMPLES_AND_COUNTS)
    assert service.stats()["creates"] == before["creates"]  # nothing submitted again


async def test_reattach_of_an_unknown_job_is_none(service: LoopbackService) -> None:
    runner = make_adapter(service.url).create_runner()
    job = new_job()
    assert await runner.reattach(job, None) is None
    assert await runner.reattach(job, "lbj-0000000000000000") is None
    # Another job's id is not this job's: refused, never silently adopted.
    adapter = make_adapter(service.url)
    other = await runner.submit(prepare_in_process(adapter, sampler_spec(), seed=1), new_job())
    with pytest.raises(ExecutionError) as mismatch:
        await runner.reattach(job, other.remote_id)
    assert mismatch.value.kind is FailureKind.BACKEND_FAULT


async def test_a_job_failed_at_the_service_is_a_backend_fault(service: LoopbackService) -> None:
    runner = make_adapter(service.url).create_runner()
    pub = {"program": "OPENQASM 3.0; qubit[1] q; nonsense q[0];", "shots": 1, "seed": 0}
    payload = LoopbackPayload(
        {"pubs": [pub], "memory": True, "metadata": {"v": 1, "pubs": [], "sampler_output": ""}}
    )
    prepared = PreparedJob(payload=payload, memory_bytes=0, layouts=((0,),))
    handle = await runner.submit(prepared, new_job())
    with pytest.raises(ExecutionError) as failed:
        await runner.wait(handle)
    assert failed.value.kind is FailureKind.BACKEND_FAULT
    assert failed.value.reason == "EXECUTION_FAILED"
    assert failed.value.metadata["providerJobId"] == handle.remote_id
    assert "cannot read the program" in failed.value.message


async def test_a_result_the_runner_cannot_read_is_a_backend_fault(
    service: LoopbackService,
) -> None:
    # A plan of another version (stored by a newer gateway before a downgrade) is a ValueError
    # while reading: it must end the job as a backend fault, not escape as a bare exception.
    runner = make_adapter(service.url).create_runner()
    pub = {"program": TWO_REGISTERS, "shots": 1, "seed": 0}
    payload = LoopbackPayload(
        {"pubs": [pub], "memory": False, "metadata": {"v": 99, "pubs": [], "sampler_output": ""}}
    )
    prepared = PreparedJob(payload=payload, memory_bytes=0, layouts=((0,),))
    handle = await runner.submit(prepared, new_job())
    with pytest.raises(ExecutionError) as failed:
        await runner.wait(handle)
    assert failed.value.kind is FailureKind.BACKEND_FAULT
    assert "unreadable result" in failed.value.message


async def test_a_dead_service_is_transient(service: LoopbackService) -> None:
    adapter = make_adapter(service.url)
    prepared = prepare_in_process(adapter, sampler_spec(), seed=1)
    sleeps: list[float] = []
    dead = make_runner(f"http://127.0.0.1:{free_port()}", sleeps, retry_attempts=3)
    job = new_job()
    calls = [
        dead.submit(prepared, job),
        dead.wait(LoopbackHandle(job.id, "lbj-1")),
        dead.cancel(LoopbackHandle(job.id, "lbj-1")),
        dead.reattach(job, None),
    ]
    for call in calls:
        with pytest.raises(ExecutionError) as failed:
            await call
        assert failed.value.kind is FailureKind.TRANSIENT
        assert failed.value.reason == "PROVIDER_ERROR"
    assert len(sleeps) == 4 * 2  # every call retried to its three attempts
    with pytest.raises(ExecutionError) as failed:
        await dead.probe(prepared, timeout=5)
    assert failed.value.kind is FailureKind.TRANSIENT


async def test_probe_asks_the_service(service: LoopbackService) -> None:
    adapter = make_adapter(service.url)
    runner = adapter.create_runner()
    before = service.stats()
    await runner.probe(prepare_in_process(adapter, adapter.probe_spec(), seed=0), timeout=5)
    assert service.stats()["create_calls"] == before["create_calls"]  # no job paid for


def test_the_service_keeps_its_jobs_across_a_restart(tmp_path: Path) -> None:
    state = tmp_path / "state"
    first = LoopbackService.start(state, tmp_path / "service.log")
    try:
        first.hold()
        created = first.call(
            "POST",
            "/v1/jobs",
            {"client_token": "t-1", "pubs": [{"program": TWO_REGISTERS, "shots": 2}]},
        )
    finally:
        assert first.stop() == 0
    second = LoopbackService.start(state, tmp_path / "service.log")
    try:
        again = second.call(
            "POST",
            "/v1/jobs",
            {"client_token": "t-1", "pubs": [{"program": TWO_REGISTERS, "shots": 2}]},
        )
        assert again["id"] == created["id"]
        assert second.stats()["creates"] == 1
        done = second.call("GET", f"/v1/jobs/{created['id']}?wait=20")
        assert done["status"] == "DONE"
        counts = [r["counts"][0] for r in done["result"]["pubs"][0]["registers"]]
        assert counts == [{"01": 2}, {"011": 2}]
    finally:
        assert second.stop() == 0


def test_a_job_running_when_the_service_stopped_runs_again(tmp_path: Path) -> None:
    state = tmp_path / "state"
    first = LoopbackService.start(state, tmp_path / "service.log")
    try:
        first.hold("running")
        created = first.call(
            "POST",
            "/v1/jobs",
            {"client_token": "t-run", "pubs": [{"program": TWO_REGISTERS, "shots": 2}]},
        )
        assert first.wait_status(created["id"], leaving="QUEUED") == "RUNNING"
    finally:
        assert first.stop() == 0
    second = LoopbackService.start(state, tmp_path / "service.log")
    try:
        # Like a provider, a restarted service runs it again rather than leaving it RUNNING.
        done = second.call("GET", f"/v1/jobs/{created['id']}?wait=20")
        assert done["status"] == "DONE"
        assert second.stats()["creates"] == 1
    finally:
        assert second.stop() == 0


def test_a_cancelled_job_stays_cancelled_across_a_restart(tmp_path: Path) -> None:
    # In process, without workers: the state machine and its files, not the simulation.
    body = {"client_token": "t-c", "pubs": [{"program": TWO_REGISTERS, "shots": 2}]}
    first = JobService(tmp_path)
    view, created = first.create(body)
    assert created
    first.cancel(view["id"])
    second = JobService(tmp_path)
    again = second.get(view["id"])
    assert again is not None and again["status"] == "CANCELLED"
    # Cancelling a final job again changes nothing, and the token still finds the same job.
    second.cancel(view["id"])
    assert second.create(body) == ({**again}, False)


def test_a_restarted_service_numbers_new_jobs_after_its_old_ones(tmp_path: Path) -> None:
    # seq orders the jobs a restart re-queues; a reused number would reorder them.
    pubs = [{"program": TWO_REGISTERS, "shots": 2}]
    first = JobService(tmp_path)
    old, _ = first.create({"client_token": "t-1", "pubs": pubs})
    new, _ = JobService(tmp_path).create({"client_token": "t-2", "pubs": pubs})
    seqs = [
        json.loads((tmp_path / "jobs" / f"{view['id']}.json").read_text())["seq"]
        for view in (old, new)
    ]
    assert seqs[0] < seqs[1]


@pytest.mark.parametrize("token", ["", "x" * 201, 7, None])
def test_a_create_without_a_usable_client_token_is_refused(tmp_path: Path, token: object) -> None:
    # Without a token a retried create could not be answered with the job it already made.
    service = JobService(tmp_path)
    with pytest.raises(RequestError):
        service.create({"client_token": token, "pubs": [{"program": "x", "shots": 1}]})
    assert service.stats()["creates"] == 0
