"""WorkerPoolRunner's pinned sessions (Runner.pin_session): a DEDICATED session's jobs run on
the worker that ran its previous job, kept out of the pool between them, and the worker goes
back when the session is unpinned. In process, with a counting pool of stand-in workers (the
runner's protocol with its pool and workers is all that is exercised)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

import pytest

from gateway.backends.base import ExecutionOutcome, PreparedJob
from gateway.backends.fault import FaultInjectingRunner, FaultOptions
from gateway.domain.jobs import Job, JobResult, JobState
from gateway.runtime.pool import PoolLimits
from gateway.runtime.simulator_runner import WorkerPoolRunner, WorkerRunHandle

pytestmark = pytest.mark.anyio

_IDS = itertools.count(1)


@dataclass(eq=False)
class StandInWorker:
    pid: int = field(default_factory=lambda: next(_IDS))
    alive: bool = True
    ran: list[object] = field(default_factory=list)

    async def execute(self, payload: object) -> ExecutionOutcome:
        self.ran.append(payload)
        return ExecutionOutcome(JobResult(pubs=()), {})

    def kill(self) -> None:
        self.alive = False


@dataclass
class CountingPool:
    limits: PoolLimits = field(default_factory=lambda: PoolLimits(max_instances=2))
    idle: list[StandInWorker] = field(default_factory=list)
    out: set[int] = field(default_factory=set)
    broken: list[int] = field(default_factory=list)

    async def acquire(self, timeout: float | None = None) -> StandInWorker:
        worker = self.idle.pop() if self.idle else StandInWorker()
        self.out.add(worker.pid)
        return worker

    async def release(self, worker: StandInWorker, *, broken: bool = False) -> None:
        self.out.discard(worker.pid)
        if broken:
            self.broken.append(worker.pid)
        else:
            self.idle.append(worker)

    async def close(self) -> None:
        return None


def _job(session: str = "") -> Job:
    return Job(
        id=f"j{next(_IDS)}",
        tenant="alice",
        request_id="",
        backend="sim",
        state=JobState.QUEUED,
        created_at=datetime(2026, 12, 2, tzinfo=UTC),
        num_pubs=1,
        seed=1,
        session=session,
    )


async def _run(runner: WorkerPoolRunner, job: Job) -> int:
    handle = await runner.submit(PreparedJob(payload=job.id, memory_bytes=0, layouts=()), job)
    await runner.wait(handle)
    assert isinstance(handle, WorkerRunHandle)
    return cast(StandInWorker, handle.worker).pid


async def test_a_pinned_sessions_jobs_share_one_worker_kept_out_of_the_pool() -> None:
    pool = CountingPool()
    runner = WorkerPoolRunner(cast(Any, pool))
    runner.pin_session("s1")
    first = await _run(runner, _job("s1"))
    # Between the session's jobs its worker stays out of the pool.
    assert pool.out == {first} and not pool.idle
    other = await _run(runner, _job())
    assert other != first and pool.out == {first}
    assert await _run(runner, _job("s1")) == first
    runner.unpin_session("s1")
    await runner.close()
    assert pool.out == set() and {w.pid for w in pool.idle} == {first, other}


async def test_unpinned_and_batch_jobs_give_their_worker_back_at_once() -> None:
    pool = CountingPool()
    runner = WorkerPoolRunner(cast(Any, pool))
    await _run(runner, _job("batch-session"))
    assert pool.out == set() and len(pool.idle) == 1


async def test_a_kept_worker_that_died_is_replaced() -> None:
    pool = CountingPool()
    runner = WorkerPoolRunner(cast(Any, pool))
    runner.pin_session("s1")
    first = await _run(runner, _job("s1"))
    kept = runner.pinned_worker("s1")
    assert kept is not None
    kept.kill()
    second = await _run(runner, _job("s1"))
    assert second != first and pool.broken == [first]
    runner.unpin_session("s1")
    await runner.close()
    assert pool.out == set()


async def test_the_fault_wrapper_passes_pins_to_the_runner_it_wraps() -> None:
    pool = CountingPool()
    inner = WorkerPoolRunner(cast(Any, pool))
    wrapper = FaultInjectingRunner(inner, FaultOptions(), "sim")
    wrapper.pin_session("s1")
    first = await _run(inner, _job("s1"))
    assert inner.pinned_worker("s1") is not None and pool.out == {first}
    wrapper.unpin_session("s1")
    await inner.close()
    assert pool.out == set()
