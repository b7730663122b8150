"""Review of the last two commits: a step's own claim that comes back while its own RUNNING
write is committed but not yet seen by the step (aa4fc8f), and the widening of `$n` programs
(0b8d912)."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import pytest

from gateway.backends.runner import ExecutionModel
from gateway.domain.jobs import Job, JobState
from gateway.jobs.backend import RunningJob
from gateway.jobs.queue_port import Claim
from gateway.runtime.breaker import Permit
from gateway.store.sqlite import SqliteStore
from tests.core_harness import T0, Clock, ScriptedRunner, build_core, spec

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("model", [ExecutionModel.LOCAL, ExecutionModel.REMOTE])
async def test_a_claim_back_while_the_steps_own_running_write_returns_keeps_the_run(
    store: SqliteStore, model: ExecutionModel
) -> None:
    # The step's delayed RUNNING write (attempts 0 -> 1) has committed, but the step has not
    # resumed yet (its answer goes through the transitions' shield: more loop turns than the
    # scheduler's claim). The lease lapses meanwhile (a clock step) and this process's own
    # scheduler claims the job back: the claim carries attempts 1, the step still knows 0.
    # Scheduler.start_job took that for another holder's run: the step let go, its good local
    # run was stopped and the job run a second time (a provider job: let go and re-attached).
    runner = ScriptedRunner(
        slots=2, model=model
    )  # the step holds one slot, the scheduler claims with the other
    clock = Clock()
    core = await build_core(store, "store", {"sim": runner}, clock=clock, lease_s=30.0)
    rt = core.backends["sim"]
    real_mark = store.mark_running
    committed, gate = asyncio.Event(), asyncio.Event()

    async def mark_running(*args: Any, **kwargs: Any) -> Any:
        got = await real_mark(*args, **kwargs)
        committed.set()
        await gate.wait()  # the step's resumption, after the commit, comes late
        return got

    store.mark_running = mark_running  # type: ignore[method-assign]
    real_claim = rt.queue.claim
    reclaimed = asyncio.Event()

    async def claim() -> Claim | None:
        got = await real_claim()
        if got is not None:
            reclaimed.set()
        return got

    try:
        job = await core.submit("alice", spec("sim"))
        await asyncio.wait_for(committed.wait(), 2)  # RUNNING (attempts 1) is stored
        rt.queue.claim = claim  # type: ignore[method-assign]
        clock.advance(31)  # the step's lease lapses: a clock step
        rt.wake.set()
        await asyncio.wait_for(reclaimed.wait(), 2)  # this process's scheduler has it back
        await core.settle()
        gate.set()
        await core.settle()
        # Never stopped, let go or re-attached: the step that wrote RUNNING follows its run.
        assert runner.cancelled == []
        assert runner.reattached == []
        runner.succeed(job.id)
        done = await core.until("alice", job.id, "SUCCEEDED", timeout=2)
        # One run, never stopped, and the record's attempts are that run's.
        assert runner.submitted == [job.id]
        assert done.attempts == 1
        assert done.execution is not None and done.execution.attempts == 1
    finally:
        store.mark_running = real_mark  # type: ignore[method-assign]
        await core.manager.close()


def _claim(job: Job) -> Claim:
    return Claim(job, None, "holder-1", T0)


@pytest.mark.parametrize(
    ("back_with", "written", "lost"),
    [
        (0, 1, False),  # read before the step's own write committed: the step's
        (1, 1, False),  # read after it: the step's own count
        (1, None, True),  # the write was refused: another holder ran it (attempts 1)
        (2, 3, True),  # another holder's run (2) came between, then the step's write (3)
    ],
)
def test_a_claim_back_during_a_start_write_is_judged_by_what_that_write_wrote(
    back_with: int, written: int | None, lost: bool
) -> None:
    # The rule RunningJob.claim_came_back and start_written keep, without a loop: a count the
    # step's own in-flight write explains is the step's; any other is another holder's run.
    job = Job("j", "t", "", "sim", JobState.QUEUED, T0, num_pubs=1, seed=0)
    running = RunningJob(_claim(job), Permit(trial=False, token=0))
    running.starting = True
    running.claim_came_back(_claim(dataclasses.replace(job, attempts=back_with)))
    assert running.lost_claim is None  # judged once the write returns
    started = None if written is None else dataclasses.replace(job, attempts=written)
    running.start_written(started)
    assert (running.lost_claim is not None) is lost
    # Without a write in flight, another count is another holder's at once.
    idle = RunningJob(_claim(job), Permit(trial=False, token=0))
    idle.claim_came_back(_claim(dataclasses.replace(job, attempts=1)))
    assert idle.lost_claim is not None
