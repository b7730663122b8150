"""Fault injection as a wrapper around any runner (gateway.backends.fault), in process.

Gateway-side faults run against a tiny fake inner runner; process faults run through
`run_with_faults` as a worker would (with a stand-in for the adapter's execute), and once on a
real Aer worker, where a crash must really SIGKILL the process.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import threading
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from gateway.backends import fault
from gateway.backends.aer.adapter import AerAdapter
from gateway.backends.base import (
    AdapterContext,
    CircuitLimits,
    ExecutionOutcome,
    PreparedJob,
)
from gateway.backends.fault import (
    FaultInjectingRunner,
    FaultOptions,
    FaultyPayload,
    ProcessFaults,
    in_flap_sick_period,
    injected_crash,
    injected_failure,
    run_with_faults,
    with_fault_properties,
)
from gateway.backends.runner import ExecutionModel, RunHandle, Runner
from gateway.domain.backends import BackendInfo, BackendKind, BackendLimits, InstanceStats
from gateway.domain.circuits import Bindings, CircuitLanguage, CircuitSource, SamplerPub
from gateway.domain.errors import ExecutionError
from gateway.domain.failures import FailureKind
from gateway.domain.jobs import Job, JobResult, JobSpec, JobState, SamplerResult
from gateway.runtime.pool import Pool, PoolLimits
from gateway.runtime.simulator_runner import WorkerPoolRunner
from gateway.runtime.worker import SimulatorRole, WorkerProcess
from gateway.runtime.worker_pool import WorkerFactory
from tests.adapters import prepare_in_process

SEEDS = range(64)
OUTCOME = ExecutionOutcome(result=JobResult(pubs=()), sdk_versions={"fake": "1"})
PREPARED = PreparedJob(payload="the payload", memory_bytes=1, layouts=((0,),))

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    # One event loop for the module: the real worker's pool lives across tests.
    return "asyncio"


def job(seed: int = 1) -> Job:
    return Job(
        id=f"job-{seed}",
        tenant="t",
        request_id=f"r-{seed}",
        backend="b",
        state=JobState.QUEUED,
        created_at=datetime.now(UTC),
        num_pubs=1,
        seed=seed,
    )


class FakeRunner(Runner):
    """Records what reaches it; every job succeeds with OUTCOME."""

    def __init__(self, model: ExecutionModel = ExecutionModel.LOCAL) -> None:
        self.model = model
        self.submitted: list[tuple[PreparedJob, Job]] = []
        self.probed: list[tuple[PreparedJob, float]] = []
        self.cancelled: list[RunHandle] = []
        self.calls: list[str] = []
        self.submit_error: BaseException | None = None

    @property
    def capacity(self) -> int:
        return 3

    async def start(self) -> None:
        self.calls.append("start")

    async def close(self) -> None:
        self.calls.append("close")

    async def maintain(self) -> None:
        self.calls.append("maintain")

    def stats(self) -> InstanceStats:
        return InstanceStats(1, 2, 0, 1, 3, 3)

    async def reattach(self, job: Job, remote_id: str | None) -> RunHandle | None:
        return RunHandle(job.id, remote_id)

    async def submit(self, prepared: PreparedJob, job: Job) -> RunHandle:
        if self.submit_error is not None:
            raise self.submit_error
        self.submitted.append((prepared, job))
        return RunHandle(job.id, "remote-1" if self.model is ExecutionModel.REMOTE else None)

    async def wait(self, handle: RunHandle) -> ExecutionOutcome:
        return OUTCOME

    async def cancel(self, handle: RunHandle) -> None:
        self.cancelled.append(handle)

    async def probe(self, prepared: PreparedJob, timeout: float) -> None:
        self.probed.append((prepared, timeout))


class Sleeps:
    """Records the backoff delays instead of sleeping them."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


def wrap(
    inner: Runner | None = None, sleeps: Sleeps | None = None, **options: Any
) -> FaultInjectingRunner:
    return FaultInjectingRunner(
        inner or FakeRunner(), FaultOptions(**options), "b", sleep=sleeps or Sleeps()
    )


async def outcome_of(runner: FaultInjectingRunner, seed: int) -> str:
    """Returns "ok", or the injected failure's reason."""
    try:
        await runner.wait(await runner.submit(PREPARED, job(seed)))
    except ExecutionError as exc:
        assert exc.message.startswith("fault backend: injected failure ("), exc.message
        return exc.reason
    return "ok"


# ------------------------------------------------------------------------------ options


@pytest.mark.parametrize(
    "options",
    [
        {"failure_rate": 1.5},
        {"failure_rate": -0.1},
        {"crash_rate": 2},
        {"latency_s": -1},
        {"latency_s": float("inf")},
        {"allocate_mb": -1},
        {"flap_period_s": -5},
        {"fail_while_exists": ""},
        {"retry_attempts": 0},
        {"failure_rte": 0.5},  # a typo is an error, not a silently healthy backend
        {"method": "statevector"},  # Aer's options belong to the adapter, not here
    ],
)
def test_bad_options_are_refused(options: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        FaultOptions(**options)


def test_the_faults_are_listed_in_the_backend_properties(tmp_path: Path) -> None:
    sick = str(tmp_path / "sick")
    options = FaultOptions(failure_rate=0.25, latency_s=0.5, fail_while_exists=sick)
    info = BackendInfo(
        name="b",
        provider="aer",
        kind=BackendKind.SIMULATOR,
        num_qubits=3,
        basis_gates=("x",),
        primitives=frozenset(),
        features=frozenset(),
        limits=BackendLimits(
            max_shots=1, memory_budget_bytes=1, max_queued_jobs=1, max_result_bytes=1
        ),
        properties={"method": "statevector"},
    )
    described = with_fault_properties(info, options)
    assert described.provider == "aer"
    assert described.properties == {
        "method": "statevector",
        "faults.failure_rate": "0.25",
        "faults.crash_rate": "0",
        "faults.latency_s": "0.5",
        "faults.hang": "false",
        "faults.allocate_mb": "0",
        "faults.flap_period_s": "0",
        "faults.transient_errors": "0",
        # A server path: only its presence is shown.
        "faults.fail_while_exists": "true",
    }


def test_process_faults_on_a_remote_runner_are_refused() -> None:
    with pytest.raises(ValueError, match=r"backends\.b\.faults"):
        wrap(FakeRunner(ExecutionModel.REMOTE), crash_rate=0.5)
    # Gateway-side faults suit any runner.
    assert wrap(FakeRunner(ExecutionModel.REMOTE), failure_rate=0.5).model is (
        ExecutionModel.REMOTE
    )


async def test_the_wrapper_delegates_to_its_runner() -> None:
    inner = FakeRunner()
    runner = wrap(inner)
    assert runner.model is ExecutionModel.LOCAL and runner.capacity == 3
    assert runner.stats() == inner.stats()
    await runner.start()
    await runner.maintain()
    await runner.close()
    assert inner.calls == ["start", "maintain", "close"]
    again = await runner.reattach(job(), "remote-7")
    assert again is not None and again.remote_id == "remote-7"
    handle = await runner.submit(PREPARED, job())
    assert await runner.wait(handle) is OUTCOME
    await runner.cancel(handle)
    assert inner.cancelled == [handle]
    # Without process faults the prepared job passes unchanged.
    assert inner.submitted[0][0] is PREPARED


async def test_process_faults_travel_in_the_payload_with_the_seed() -> None:
    inner = FakeRunner()
    runner = wrap(inner, latency_s=0.25, allocate_mb=3, crash_rate=0.5, hang=True)
    await runner.submit(PREPARED, job(seed=77))
    sent, _ = inner.submitted[0]
    assert isinstance(sent.payload, FaultyPayload)
    assert sent.payload.inner == "the payload" and sent.payload.seed == 77
    assert sent.payload.faults == ProcessFaults(
        latency_s=0.25, hang=True, allocate_mb=3, crash_rate=0.5
    )
    assert dataclasses.replace(sent, payload="the payload").layouts == PREPARED.layouts
    await runner.probe(PREPARED, timeout=5)
    probed, timeout = inner.probed[0]
    assert isinstance(probed.payload, FaultyPayload) and probed.payload.seed == 0
    assert 0 < timeout <= 5


# ------------------------------------------------------------------- gateway-side failures


async def test_failure_rate_one_always_fails_without_reaching_the_backend() -> None:
    inner = FakeRunner()
    runner = wrap(inner, failure_rate=1.0)
    for seed in range(5):
        handle = await runner.submit(PREPARED, job(seed))
        with pytest.raises(ExecutionError) as info:
            await runner.wait(handle)
        assert info.value.reason == "EXECUTION_FAILED"
        assert info.value.kind is FailureKind.BACKEND_FAULT
        assert info.value.message == (
            f"fault backend: injected failure (failure_rate=1, seed {seed})"
        )
        assert info.value.metadata == {"backend": "backends/b"}
    assert inner.submitted == []


async def test_failure_rate_half_is_decided_by_the_seed() -> None:
    runner = wrap(failure_rate=0.5)
    first = {seed: await outcome_of(runner, seed) for seed in SEEDS}
    again = {seed: await outcome_of(runner, seed) for seed in SEEDS}
    assert first == again
    failed = {seed for seed, outcome in first.items() if outcome != "ok"}
    assert set(first.values()) == {"ok", "EXECUTION_FAILED"}
    assert 16 <= len(failed) <= 48
    # The helper tests use to pick seeds agrees with the wrapper.
    assert failed == {seed for seed in SEEDS if injected_failure(seed, 0.5)}
    # Pinned: the draw depends only on the seed, in any process and Python hash seed.
    assert [injected_failure(seed, 0.5) for seed in range(6)] == [
        True,
        True,
        False,
        True,
        True,
        True,
    ]


async def test_successive_probes_draw_from_successive_seeds() -> None:
    # A failure rate makes a share of probes fail, not all or none of them.
    inner = FakeRunner()
    runner = wrap(inner, failure_rate=0.5)
    outcomes: list[bool] = []
    for _ in range(6):
        try:
            await runner.probe(PREPARED, timeout=5)
        except ExecutionError as exc:
            assert exc.reason == "EXECUTION_FAILED"
            outcomes.append(True)
        else:
            outcomes.append(False)
    assert outcomes == [injected_failure(seed, 0.5) for seed in range(6)]
    assert outcomes == [True, True, False, True, True, True] and len(inner.probed) == 1


def test_rates_zero_and_one_are_absolute() -> None:
    assert not any(injected_failure(seed, 0.0) or injected_crash(seed, 0.0) for seed in SEEDS)
    assert all(injected_failure(seed, 1.0) and injected_crash(seed, 1.0) for seed in SEEDS)


def test_crash_and_failure_draws_are_independent() -> None:
    crashes = [injected_crash(seed, 0.5) for seed in SEEDS]
    failures = [injected_failure(seed, 0.5) for seed in SEEDS]
    assert True in crashes and False in crashes
    assert crashes != failures


async def test_fail_while_exists_switches_jobs_and_probes(tmp_path: Path) -> None:
    switch = tmp_path / "sick"
    inner = FakeRunner()
    runner = wrap(inner, fail_while_exists=str(switch))
    assert await outcome_of(runner, 1) == "ok"
    await runner.probe(PREPARED, timeout=5)
    switch.touch()
    with pytest.raises(ExecutionError) as info:
        await runner.wait(await runner.submit(PREPARED, job()))
    assert info.value.message == f"fault backend: injected failure ({switch} exists)"
    with pytest.raises(ExecutionError) as probe:
        await runner.probe(PREPARED, timeout=5)
    assert probe.value.reason == "EXECUTION_FAILED"
    assert len(inner.probed) == 1  # the failing probe never reached the backend
    switch.unlink()
    assert await outcome_of(runner, 1) == "ok"
    await runner.probe(PREPARED, timeout=5)
    assert len(inner.probed) == 2


def test_flap_periods() -> None:
    assert [in_flap_sick_period(t, 10.0) for t in (0.0, 9.99, 10.0, 19.99, 20.0, 35.0)] == [
        False,
        False,
        True,
        True,
        False,
        True,
    ]
    assert not in_flap_sick_period(15.0, 0.0)  # 0 = no flapping


async def test_flapping_follows_the_wall_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    runner = wrap(flap_period_s=30.0)
    monkeypatch.setattr(fault, "_wall_clock", lambda: 3_000_000_005.0)  # period 100000000: even
    assert await outcome_of(runner, 1) == "ok"
    monkeypatch.setattr(fault, "_wall_clock", lambda: 3_000_000_035.0)  # next period: sick
    with pytest.raises(ExecutionError, match=r"flapping, sick period of 30 s"):
        await runner.wait(await runner.submit(PREPARED, job()))


async def test_a_failing_job_takes_its_latency_unless_cancelled() -> None:
    runner = wrap(failure_rate=1.0, latency_s=0.2)
    started = time.monotonic()
    with pytest.raises(ExecutionError, match="injected failure"):
        await runner.wait(await runner.submit(PREPARED, job()))
    assert time.monotonic() - started >= 0.2
    # Cancelled first: the wait ends at once, CANCELLED.
    slow = wrap(failure_rate=1.0, latency_s=3600)
    handle = await slow.submit(PREPARED, job())
    waiting = asyncio.ensure_future(slow.wait(handle))
    await asyncio.sleep(0)
    assert not waiting.done()
    await slow.cancel(handle)
    with pytest.raises(ExecutionError) as info:
        await waiting
    assert info.value.kind is FailureKind.CANCELLED


async def test_a_hanging_failing_job_ends_only_when_cancelled_and_probes_time_out() -> None:
    runner = wrap(failure_rate=1.0, hang=True)
    handle = await runner.submit(PREPARED, job())
    waiting = asyncio.ensure_future(runner.wait(handle))
    done, _ = await asyncio.wait({waiting}, timeout=0.2)
    assert not done
    await runner.cancel(handle)
    with pytest.raises(ExecutionError) as info:
        await waiting
    assert info.value.reason == "CANCELLED" and info.value.kind is FailureKind.CANCELLED
    with pytest.raises(TimeoutError):
        await runner.probe(PREPARED, timeout=0.1)


# ------------------------------------------------------------------------ transient errors


async def test_transient_errors_are_retried_with_backoff_before_the_submission() -> None:
    inner = FakeRunner()
    sleeps = Sleeps()
    runner = wrap(inner, sleeps, transient_errors=2, retry_attempts=4, retry_backoff_s=0.1)
    handle = await runner.submit(PREPARED, job(seed=5))
    assert await runner.wait(handle) is OUTCOME
    assert len(inner.submitted) == 1  # submitted once, after two failed attempts
    # Jittered (+-20%) exponential backoff: 0.1 then 0.2.
    assert len(sleeps.delays) == 2
    assert 0.08 <= sleeps.delays[0] <= 0.12 and 0.16 <= sleeps.delays[1] <= 0.24
    # Seeded by the job: the same job waits the same.
    same = Sleeps()
    again = wrap(None, same, transient_errors=2, retry_attempts=4, retry_backoff_s=0.1)
    await again.submit(PREPARED, job(seed=5))
    assert same.delays == sleeps.delays


async def test_exhausted_retries_are_a_transient_provider_error() -> None:
    inner = FakeRunner()
    runner = wrap(inner, transient_errors=9, retry_attempts=3, retry_backoff_s=0.01)
    with pytest.raises(ExecutionError) as info:
        await runner.submit(PREPARED, job())
    assert info.value.reason == "PROVIDER_ERROR"
    assert info.value.kind is FailureKind.TRANSIENT
    assert info.value.message == (
        "provider call failed after 3 attempts: fault backend: injected transient error 3"
    )
    assert inner.submitted == []
    with pytest.raises(ExecutionError) as probe:
        await runner.probe(PREPARED, timeout=5)
    assert probe.value.reason == "PROVIDER_ERROR" and inner.probed == []


async def test_the_inner_runners_own_errors_are_not_retried() -> None:
    inner = FakeRunner()
    inner.submit_error = ConnectionResetError("the real provider")
    sleeps = Sleeps()
    runner = wrap(inner, sleeps, transient_errors=1, retry_attempts=5, retry_backoff_s=0.01)
    with pytest.raises(ConnectionResetError, match="the real provider"):
        await runner.submit(PREPARED, job())
    assert len(sleeps.delays) == 1  # only the injected error was retried


# ------------------------------------------------------------ process faults, as a worker


def execute(payload: object) -> ExecutionOutcome:
    assert payload == "inner"
    return OUTCOME


def faulty(seed: int = 0, **faults: Any) -> FaultyPayload:
    return FaultyPayload("inner", seed, ProcessFaults(**faults))


def test_process_faults_then_the_real_execution() -> None:
    assert run_with_faults(faulty(), execute) is OUTCOME
    started = time.monotonic()
    assert run_with_faults(faulty(latency_s=0.05), execute) is OUTCOME
    assert time.monotonic() - started >= 0.05
    assert run_with_faults(faulty(allocate_mb=4), execute) is OUTCOME
    seed = next(s for s in SEEDS if not injected_crash(s, 0.5))
    # A crashing seed here would SIGKILL the test process itself.
    assert not injected_crash(seed, 0.5)
    assert run_with_faults(faulty(seed, crash_rate=0.5), execute) is OUTCOME


def test_hang_blocks_the_worker() -> None:
    finished = threading.Event()

    def run() -> None:
        try:
            run_with_faults(faulty(hang=True), execute)
        finally:
            finished.set()

    # A daemon thread: nothing ends the hang in this process, and it must not block exit.
    threading.Thread(target=run, daemon=True).start()
    assert not finished.wait(0.3)


# ------------------------------------------------------------------------ a real worker


def aer_context() -> AdapterContext:
    return AdapterContext(
        name="fault-test",
        limits=BackendLimits(
            max_shots=10_000,
            memory_budget_bytes=1 << 28,
            max_queued_jobs=10,
            max_result_bytes=1 << 20,
        ),
        default_shots=8,
        circuit_limits=CircuitLimits(),
        options={},
    )


@pytest.fixture(scope="module")
async def worker_runner() -> AsyncIterator[WorkerPoolRunner]:
    pool: Pool[WorkerProcess] = Pool(
        WorkerFactory(SimulatorRole("aer", aer_context())),
        PoolLimits(min_instances=1, max_instances=1, acquire_timeout_s=60),
    )
    runner = WorkerPoolRunner(pool)
    await runner.start()
    yield runner
    await runner.close()


async def test_a_crash_seed_really_kills_the_worker(worker_runner: WorkerPoolRunner) -> None:
    source = CircuitSource(
        CircuitLanguage.QASM2,
        'OPENQASM 2.0;\ninclude "qelib1.inc";\nqreg q[3];\ncreg c[3];\nx q[0];\nmeasure q -> c;\n',
    )
    spec = JobSpec(backend="fault-test", pubs=(SamplerPub(source, Bindings(), shots=8),))
    prepared = prepare_in_process(AerAdapter(aer_context()), spec, 3)
    runner = FaultInjectingRunner(worker_runner, FaultOptions(crash_rate=0.5), "fault-test")
    lives = next(s for s in SEEDS if not injected_crash(s, 0.5))
    dies = next(s for s in SEEDS if injected_crash(s, 0.5))
    # A seed that does not crash gets the real result: c[0] = 1.
    outcome = await runner.wait(await runner.submit(prepared, job(lives)))
    result = outcome.result.pubs[0]
    assert isinstance(result, SamplerResult)
    assert dict(result.registers[0].counts[0]) == {"001": 8}
    worker = await worker_runner.pool.acquire(timeout=60)
    await worker_runner.pool.release(worker)
    with pytest.raises(ExecutionError) as info:
        await runner.wait(await runner.submit(prepared, job(dies)))
    assert info.value.reason == "WORKER_CRASHED"
    assert info.value.kind is FailureKind.BACKEND_FAULT
    assert info.value.metadata == {"signal": "SIGKILL"}
    # Dead and reaped (the worker handle waits for its exit status before it answers).
    with pytest.raises(ProcessLookupError):
        os.kill(worker.pid, 0)
