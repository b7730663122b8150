"""WorkerPoolRunner, in process, on real Aer worker processes.

One pool of one worker serves the whole module (a worker start costs seconds); tests that
recycle the worker check that a new process replaced it. Slow or stuck jobs come from process
faults (FaultyPayload), which the worker really applies. Expected results are hard-coded.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest

from gateway.backends.aer.adapter import AerAdapter
from gateway.backends.base import (
    AdapterContext,
    CircuitLimits,
    ExecutionOutcome,
    PreparedJob,
)
from gateway.backends.fault import FaultyPayload, ProcessFaults, injected_crash
from gateway.backends.runner import ExecutionModel, ProbeSkipped
from gateway.domain.backends import BackendLimits
from gateway.domain.circuits import Bindings, CircuitLanguage, CircuitSource, SamplerPub
from gateway.domain.errors import ExecutionError
from gateway.domain.failures import FailureKind
from gateway.domain.jobs import Job, JobSpec, JobState, SamplerResult
from gateway.runtime.pool import Pool, PoolLimits
from gateway.runtime.simulator_runner import KILL_AFTER_S, WorkerPoolRunner, WorkerRunHandle
from gateway.runtime.worker import SimulatorRole, WorkerProcess
from gateway.runtime.worker_pool import WorkerFactory
from tests.adapters import prepare_in_process

MiB = 1 << 20
SHOTS = 8
# X on qubit 0 of three: c[0] = 1, and bitstring character 0 is the highest bit.
X_ON_QUBIT_0 = (
    'OPENQASM 2.0;\ninclude "qelib1.inc";\nqreg q[3];\ncreg c[3];\nx q[0];\nmeasure q -> c;\n'
)
# The worker's OS memory limit (RLIMIT_DATA): a warm Aer worker fits, 2 GiB more does not.
WORKER_MEMORY = 700 * MiB

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    # One event loop for the module, so one pool of worker processes serves every test.
    return "asyncio"


def context(method: str = "statevector") -> AdapterContext:
    return AdapterContext(
        name="aer-runner-test",
        limits=BackendLimits(
            max_shots=10_000,
            memory_budget_bytes=64 * MiB,
            max_queued_jobs=10,
            max_result_bytes=MiB,
        ),
        default_shots=SHOTS,
        circuit_limits=CircuitLimits(),
        options={"method": method},
        worker_memory_bytes=WORKER_MEMORY,
    )


def x_job(seed: int = 1) -> tuple[JobSpec, Job]:
    source = CircuitSource(CircuitLanguage.QASM2, X_ON_QUBIT_0)
    spec = JobSpec(backend="aer-runner-test", pubs=(SamplerPub(source, Bindings(), shots=SHOTS),))
    job = Job(
        id=f"job-{seed}",
        tenant="t",
        request_id=f"r-{seed}",
        backend="aer-runner-test",
        state=JobState.QUEUED,
        created_at=datetime.now(UTC),
        num_pubs=1,
        seed=seed,
    )
    return spec, job


@pytest.fixture(scope="module")
def prepared() -> PreparedJob:
    spec, _ = x_job()
    return prepare_in_process(AerAdapter(context()), spec, 1234)


def with_faults(prepared: PreparedJob, seed: int = 0, **faults: Any) -> PreparedJob:
    payload = FaultyPayload(prepared.payload, seed, ProcessFaults(**faults))
    return dataclasses.replace(prepared, payload=payload)


@pytest.fixture(scope="module")
async def runner() -> AsyncIterator[WorkerPoolRunner]:
    role = SimulatorRole("aer", context())
    pool: Pool[WorkerProcess] = Pool(
        WorkerFactory(role), PoolLimits(min_instances=1, max_instances=1, acquire_timeout_s=60)
    )
    runner = WorkerPoolRunner(pool)
    await runner.start()
    yield runner
    await runner.close()


def counts(outcome: ExecutionOutcome) -> dict[str, int]:
    result = outcome.result.pubs[0]
    assert isinstance(result, SamplerResult)
    return dict(result.registers[0].counts[0])


async def idle_pid(runner: WorkerPoolRunner) -> int:
    """The pid of the pool's one worker, once it is idle (a replacement may be starting)."""
    worker = await runner.pool.acquire(timeout=60)
    await runner.pool.release(worker)
    return worker.pid


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # A zombie is gone too: it runs nothing and holds no memory.
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        return stat.read().split(") ", 1)[1].startswith("Z")


async def test_a_job_runs_and_its_worker_is_reused(
    runner: WorkerPoolRunner, prepared: PreparedJob
) -> None:
    assert runner.model is ExecutionModel.LOCAL and runner.capacity == 1
    pid = await idle_pid(runner)
    _, job = x_job()
    handle = await runner.submit(prepared, job)
    assert isinstance(handle, WorkerRunHandle) and handle.job_id == job.id
    assert handle.remote_id is None
    assert runner.stats().in_use == 1
    outcome = await runner.wait(handle)
    assert counts(outcome) == {"001": SHOTS}
    # Given back as execution ended, and reused.
    assert runner.stats().in_use == 0 and runner.stats().idle == 1
    assert await idle_pid(runner) == pid
    assert await runner.reattach(job, None) is None
    stats = runner.stats()
    assert (stats.min_instances, stats.max_instances) == (1, 1) and stats.high_water >= 1


async def test_cancel_kills_a_hung_worker_once_its_job_has_run_kill_after_s(
    runner: WorkerPoolRunner, prepared: PreparedJob
) -> None:
    pid = await idle_pid(runner)
    discarded = runner.stats().discarded
    handle = await runner.submit(with_faults(prepared, hang=True), x_job()[1])
    waiting = asyncio.ensure_future(runner.wait(handle))
    await asyncio.sleep(0)
    assert not waiting.done()
    await runner.cancel(handle)
    await runner.cancel(handle)  # idempotent
    # The hung job never ends: its worker is killed KILL_AFTER_S after it started (wait
    # answers then), and replaced.
    with pytest.raises(ExecutionError) as info:
        await waiting
    assert info.value.kind is FailureKind.CANCELLED and info.value.reason == "CANCELLED"
    assert await idle_pid(runner) != pid
    assert gone(pid) and runner.stats().discarded == discarded + 1
    with pytest.raises(ExecutionError) as info:
        await runner.wait(handle)
    assert info.value.kind is FailureKind.CANCELLED


async def test_a_job_stopped_before_kill_after_s_finishes_and_its_worker_is_reused(
    runner: WorkerPoolRunner, prepared: PreparedJob, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Killing the worker of a job cancelled (or limited to a nanosecond) right away would cost
    # every tenant a replacement's start per request; the job ends, the worker finishes it.
    monkeypatch.setattr(runner, "_kill_after_s", 600.0)
    pid = await idle_pid(runner)
    discarded = runner.stats().discarded
    handle = await runner.submit(with_faults(prepared, latency_s=0.2), x_job()[1])
    waiting = asyncio.ensure_future(runner.wait(handle))
    await runner.cancel(handle)
    # Answered once the worker finished the job (its result discarded): not killed.
    with pytest.raises(ExecutionError) as info:
        await waiting
    assert info.value.kind is FailureKind.CANCELLED
    assert await idle_pid(runner) == pid and not gone(pid)
    assert runner.stats().discarded == discarded


async def test_a_job_stopped_after_running_kill_after_s_is_killed_at_once(
    runner: WorkerPoolRunner, prepared: PreparedJob, monkeypatch: pytest.MonkeyPatch
) -> None:
    pid = await idle_pid(runner)
    handle = await runner.submit(with_faults(prepared, hang=True), x_job()[1])
    assert isinstance(handle, WorkerRunHandle) and handle.execution is not None
    # Exactly KILL_AFTER_S after it started, on the runner's clock.
    monkeypatch.setattr(runner, "_clock", lambda: handle.started + KILL_AFTER_S)
    await runner.cancel(handle)
    assert handle.kill_timer is None  # killed in cancel() itself
    with pytest.raises(ExecutionError) as info:
        await handle.execution  # the kill ended it: ours, so CANCELLED, not a crash
    assert info.value.kind is FailureKind.CANCELLED
    assert gone(pid) and await idle_pid(runner) != pid


async def test_cancel_after_the_job_finished_keeps_its_result_and_worker(
    runner: WorkerPoolRunner, prepared: PreparedJob
) -> None:
    pid = await idle_pid(runner)
    handle = await runner.submit(prepared, x_job()[1])
    outcome = await runner.wait(handle)
    await runner.cancel(handle)  # too late: nothing to stop, and the worker is not killed
    assert counts(outcome) == {"001": SHOTS}
    assert counts(await runner.wait(handle)) == {"001": SHOTS}
    assert await idle_pid(runner) == pid and not gone(pid)


async def test_a_cancelled_waiter_stops_the_job_and_gives_the_worker_back(
    runner: WorkerPoolRunner, prepared: PreparedJob
) -> None:
    pid = await idle_pid(runner)
    handle = await runner.submit(with_faults(prepared, hang=True), x_job()[1])
    waiting = asyncio.ensure_future(runner.wait(handle))
    await asyncio.sleep(0)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    # Killed and given back before wait() returned.
    assert gone(pid)
    assert runner.stats().in_use == 0
    assert await idle_pid(runner) != pid


async def test_a_crash_is_a_backend_fault_and_the_worker_is_replaced(
    runner: WorkerPoolRunner, prepared: PreparedJob
) -> None:
    pid = await idle_pid(runner)
    assert injected_crash(0, 1.0)
    handle = await runner.submit(with_faults(prepared, seed=0, crash_rate=1.0), x_job()[1])
    with pytest.raises(ExecutionError) as info:
        await runner.wait(handle)
    assert info.value.reason == "WORKER_CRASHED"
    assert info.value.kind is FailureKind.BACKEND_FAULT
    assert info.value.metadata == {"signal": "SIGKILL"}
    assert await idle_pid(runner) != pid


async def test_out_of_memory_is_its_own_kind_and_the_worker_is_replaced(
    runner: WorkerPoolRunner, prepared: PreparedJob
) -> None:
    pid = await idle_pid(runner)
    # 2 GiB really allocated against a 700 MiB RLIMIT_DATA: MemoryError in the worker.
    handle = await runner.submit(with_faults(prepared, allocate_mb=2048), x_job()[1])
    with pytest.raises(ExecutionError) as info:
        await runner.wait(handle)
    assert info.value.reason == "OUT_OF_MEMORY"
    assert info.value.kind is FailureKind.OUT_OF_MEMORY
    new_pid = await idle_pid(runner)
    assert new_pid != pid
    # The replacement serves the next job.
    assert counts(await runner.wait(await runner.submit(prepared, x_job()[1]))) == {"001": SHOTS}


async def test_a_backend_error_keeps_the_worker(runner: WorkerPoolRunner) -> None:
    pid = await idle_pid(runner)
    spec, job = x_job()
    # Prepared for another simulation method: the adapter refuses it inside the worker.
    mps = prepare_in_process(AerAdapter(context("matrix_product_state")), spec, 1)
    handle = await runner.submit(mps, job)
    with pytest.raises(ExecutionError) as info:
        await runner.wait(handle)
    assert info.value.reason == "EXECUTION_FAILED"
    # An exception in a worker that stays up: the breaker counts it only while the backend
    # also fails its probe (FailureKind.SDK_ERROR).
    assert info.value.kind is FailureKind.SDK_ERROR
    assert "payload prepared for matrix_product_state" in info.value.message
    assert await idle_pid(runner) == pid


async def test_probe_runs_skips_when_busy_and_times_out(
    runner: WorkerPoolRunner, prepared: PreparedJob
) -> None:
    await runner.probe(prepared, timeout=30)
    pid = await idle_pid(runner)
    # The one worker is busy with a (slow) job: busy is not sick.
    handle = await runner.submit(with_faults(prepared, latency_s=1.0), x_job()[1])
    with pytest.raises(ProbeSkipped):
        await runner.probe(prepared, timeout=0.05)
    assert counts(await runner.wait(handle)) == {"001": SHOTS}
    # A probe that does not answer in time is stopped like a job.
    with pytest.raises(TimeoutError):
        await runner.probe(with_faults(prepared, hang=True), timeout=0.5)
    assert gone(pid)
    assert runner.stats().in_use == 0
    assert await idle_pid(runner) != pid


class _FakeWorker:
    def __init__(self, alive: bool) -> None:
        self.alive = alive
        self.calls: list[str] = []

    async def stop(self) -> None:
        self.calls.append("stop")

    def kill(self) -> None:
        self.calls.append("kill")

    async def wait(self) -> None:
        self.calls.append("wait")


def test_worker_factory_checks_out_only_live_workers_and_reaps_dead_ones() -> None:
    factory = WorkerFactory(None)  # type: ignore[arg-type]
    live, dead = _FakeWorker(True), _FakeWorker(False)
    assert asyncio.run(factory.check(live)) is True  # type: ignore[arg-type]
    assert asyncio.run(factory.check(dead)) is False  # type: ignore[arg-type]
    asyncio.run(factory.destroy(live))  # type: ignore[arg-type]
    asyncio.run(factory.destroy(dead))  # type: ignore[arg-type]
    assert (live.calls, dead.calls) == (["stop"], ["kill", "wait"])
