"""A replica that lost a job's claim while its uncertain submit was looked up must leave the
job to its new holder: not cancel what the provider has of it (Runner.abandon, or the IBM
runner's own watch of the job's tag) nor end it; and a CancelJob whose CANCELLED write failed
must not put back a job a retried CancelJob ended (review: abandon x replicas)."""

from __future__ import annotations

import asyncio
import sqlite3
from dataclasses import dataclass, field
from typing import Any

import pytest

from gateway.backends.base import PreparedJob
from gateway.backends.runner import ExecutionModel, RunHandle
from gateway.domain.errors import ExecutionError
from gateway.domain.failures import FailureKind
from gateway.domain.jobs import Job, JobState
from gateway.store.sqlite import SqliteStore
from tests.core_harness import Clock, HeldCall, ScriptedRunner, build_core, spec
from tests.unit.test_ibm_stray_jobs_review import IbmUnderCore, LaggingRuntime, _runner

pytestmark = pytest.mark.anyio


@dataclass
class UncertainRunner(ScriptedRunner):
    """A provider runner (REMOTE) over a provider shared with another replica's runner
    (`remote`, `stopped`). `lose_submit`: its submit's answer is lost (TRANSIENT) and nothing
    is made. `gate`: a look-up answers what the provider has when it is asked, then takes
    until the gate opens to come back (a stalled replica, a partition from the store).
    `abandon` stops everything the provider has of the job, as the Braket and IBM runners do
    by the job's tag (then, and at each upkeep for an hour)."""

    model: ExecutionModel = ExecutionModel.REMOTE
    lose_submit: bool = False
    gate: asyncio.Event | None = None
    asked: asyncio.Event = field(default_factory=asyncio.Event)
    stopped: set[str] = field(default_factory=set)
    abandoned: list[str] = field(default_factory=list)

    async def submit(self, prepared: PreparedJob, job: Job) -> RunHandle:
        if self.lose_submit:
            self.submitted.append(job.id)
            raise ExecutionError("EXECUTION_FAILED", "answer lost", kind=FailureKind.TRANSIENT)
        return await super().submit(prepared, job)

    async def reattach(self, job: Job, remote_id: str | None) -> RunHandle | None:
        found = await super().reattach(job, remote_id)  # what the provider had when asked
        if self.gate is not None:
            self.asked.set()
            await self.gate.wait()
        return found

    async def abandon(self, job: Job) -> None:
        self.abandoned.append(job.id)
        self.stopped |= {r for r, j in self.remote.items() if j == job.id}


async def test_a_replica_that_lost_the_claim_during_its_look_up_leaves_the_job_alone(
    store: SqliteStore,
) -> None:
    # Two replicas share the store's claim queue and one provider. A's submit loses its answer
    # (nothing made); A looks the job up, and its look-up comes back late (A stalled). Its
    # lease lapses meanwhile: B claims the SUBMITTING job, finds nothing at the provider,
    # submits it and follows it, RUNNING. A's look-up then says "not found" (it asked before
    # B's submit): A must see its claim is gone and let go. It cancelled everything the
    # provider has under the job's tag (B's run, billed and lost) and ended the job FAILED
    # with its lost submit's error over B's RUNNING.
    remote: dict[str, str] = {}
    stopped: set[str] = set()
    gate = asyncio.Event()
    runner_a = UncertainRunner(remote=remote, stopped=stopped, lose_submit=True, gate=gate)
    runner_b = UncertainRunner(remote=remote, stopped=stopped)
    clock = Clock()
    a = await build_core(store, "store", {"qpu": runner_a}, clock=clock, lease_s=0.3)
    b = await build_core(
        store,
        "store",
        {"qpu": runner_b},
        clock=clock,
        owner="holder-2",
        lease_s=0.3,
        schedule=False,
    )
    try:
        job = await a.submit("alice", spec("qpu"))
        await asyncio.wait_for(runner_a.asked.wait(), 5)  # A's look-up is on its way back
        clock.advance(1.0)  # A's lease (0.3 s) lapses
        b.manager.start_scheduling()
        running = await b.until("alice", job.id, "RUNNING")  # B submitted it and follows it
        assert runner_b.submitted == [job.id] and running.remote_id in remote
        gate.set()  # A's look-up comes back: not found
        async with asyncio.timeout(5):
            while a.backends["qpu"].running:  # A's step ends
                await asyncio.sleep(0.01)
        assert runner_a.abandoned == [] and stopped == set()  # B's run goes on
        current = await store.get_job(job.id)
        assert current is not None and current.state is JobState.RUNNING
        runner_b.succeed(job.id)
        done = await b.until("alice", job.id, "SUCCEEDED")
        states = [t.state.value for t in done.state_history]
        assert states == ["QUEUED", "SUBMITTING", "RUNNING", "SUCCEEDED"]
    finally:
        await b.manager.close()
        await a.manager.close()


class HeldThenFails(HeldCall):
    """A store write whose first call holds until `go` is set and then fails (SQLite busy);
    the rest run the real one."""

    def __init__(self, real: Any) -> None:
        super().__init__(real)
        self.first = True

    async def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if not self.first:
            return await self.real(*args, **kwargs)
        self.first = False
        self.entered.set()
        await self.go.wait()
        self.done.set()
        raise sqlite3.OperationalError("database is locked")


async def test_a_failed_cancel_does_not_put_back_a_job_a_retry_cancelled(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # CancelJob #1 takes bob's queued job out of the memory queue; its CANCELLED write is
    # slow and then fails (SQLite busy). Meanwhile the client's retry, #2, finds the job in
    # no queue and ends it CANCELLED. #1 then put the job back: a CANCELLED job counted in
    # the queue's depth (against max_queued_jobs, in bob's line), which the scheduler then
    # started on a worker until its RUNNING write was refused.
    runner = ScriptedRunner(slots=1)
    core = await build_core(store, "memory", {"sim": runner})
    try:
        blocker = await core.submit("alice", spec("sim"))
        await core.until("alice", blocker.id, "RUNNING")
        job = await core.submit("bob", spec("sim"))
        held = HeldThenFails(store.finish_job)
        monkeypatch.setattr(store, "finish_job", held)
        first = asyncio.ensure_future(core.manager.cancel("bob", job.id))
        await held.entered.wait()  # #1 took the job out; its write is on its way
        second = await core.manager.cancel("bob", job.id)
        assert second.state is JobState.CANCELLED
        held.go.set()
        with pytest.raises(sqlite3.OperationalError):
            await first
        queue = core.backends["sim"].queue
        assert await queue.depth() == 0 and await queue.waiting_by_tenant() == {}
        runner.succeed(blocker.id)
        other = await core.submit("carol", spec("sim"))
        await core.until("carol", other.id, "RUNNING", timeout=2)
        assert runner.submitted == [blocker.id, other.id]  # bob's cancelled job never ran
        assert core.recorder.states(job.id) == ["QUEUED", "CANCELLED"]
    finally:
        await core.manager.close()


async def test_a_replica_that_looked_a_job_up_spares_what_the_next_holder_follows(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The runner half of the case above (the core no longer abandons a job whose claim it
    # lost): replica A's look-up by tag of a job whose create was uncertain found nothing, and
    # its runner watches the job from then on (`reattach` -> `_watch`), as it does after a
    # create that failed transiently. A's claim lapsed; B took the job over, found nothing
    # either, created it and follows it. A's next upkeep cancels every runtime job under the
    # job's tag that no handle of A's runner follows: B's run, the tenant's job lost.
    fake = LaggingRuntime()
    runner_a, runner_b = _runner(fake, monkeypatch), _runner(fake, monkeypatch)
    job: Any = type("J", (), {"id": "job-1", "session": ""})()
    assert await runner_a.reattach(job, None) is None  # A's look-up: watched from now on
    assert await runner_b.reattach(job, None) is None  # B, the job's holder now
    handle = await runner_b.submit(IbmUnderCore.PREPARED, job)
    assert handle.remote_id == "r-1"
    await runner_a.maintain()  # A's next upkeep (before each health probe)
    assert fake.running() == {"r-1"}  # B's run goes on


class RefusesTheRetry(LaggingRuntime):
    """The first create makes its runtime job and loses the answer (hidden from the search);
    the retry fails for good (an SDK error that is neither an outage nor a refusal)."""

    def __init__(self) -> None:
        super().__init__(lose_answers=1)

    def create(self, tags: list[str]) -> str:
        if self.made:
            raise ValueError("the service answered something unreadable")
        return super().create(tags)


async def test_a_retry_that_fails_for_good_leaves_no_copy_of_the_uncertain_create(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The runner no longer searches a job for strays on its own initiative: the job's end
    # must reach it. Here the submit's first create made a runtime job (answer lost, not in
    # the search yet) and the retry failed as the backend's fault: the job core fails the job
    # without a look-up, so it must hand the job over (`abandon`), or the first runtime job
    # runs and bills for nobody.
    fake = RefusesTheRetry()
    ibm = _runner(fake, monkeypatch)
    core = await build_core(store, "memory", {"ibmq": IbmUnderCore(ibm)})  # type: ignore[dict-item]
    try:
        job = await core.submit("alice", spec("ibmq"))
        failed = await core.until("alice", job.id, "FAILED")
    finally:
        await core.manager.close()
    assert failed.error is not None and list(fake.made) == ["r-1"]
    fake.hidden.clear()  # the search catches up
    await ibm.maintain()  # the backend's next upkeep
    assert fake.running() == set()
