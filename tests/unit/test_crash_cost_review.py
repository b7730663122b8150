"""Review of what a tenant is charged, and what its quota holds, when the gateway stops abruptly
and recovers at start (gateway/jobs/recovery.py, SqliteStore.recover, and with the claim queue a
lapsed claim taken over): for a job RUNNING at the crash, on a simulator (run again) or on a
provider (re-attached, never resubmitted), and for one whose CancelJob was committed (CANCELLING)
before the stop reached its runner. No finding: each is charged once, its quota reservation
ends exactly once, and GetTenantUsage's figures are what the job's stored record says. These
tests keep it so. The job core in process (tests.core_harness): a real SQLite store, a scripted
runner, an injected clock; the crash is the core closed without finishing its jobs."""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3

import pytest

from gateway.backends.base import ExecutionOutcome
from gateway.backends.runner import ExecutionModel, RunHandle
from gateway.domain.jobs import Job, JobResult, JobState
from gateway.domain.pricing import Price
from gateway.security.tenant_policy import PeriodQuota, Tenant, TenantPolicy
from gateway.store.base import TenantUsageRecord
from gateway.store.sqlite import SqliteStore
from tests.core_harness import Core, QueueKind, ScriptedHandle, ScriptedRunner, build_core, spec

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(30)]

# Every kind of charge at once: the per-second part is held at the run-time limit.
PRICE = Price(per_task=1.0, per_shot=0.1, per_second=2.0, unit="USD")
RUN_LIMIT_S = 100.0
QUOTA = PeriodQuota(cost=100000.0, cost_unit="USD", shots=100000)
# What the runner reports the job ran for (a provider's QPU seconds; a simulator's report).
SECONDS = 7.0


@dataclasses.dataclass
class BillingRunner(ScriptedRunner):
    """Reports execution seconds, on success and on a cancel; with `cancel_hangs` a cancel
    never reaches it (the gateway dies between committing CANCELLING and telling the runner)."""

    cancel_hangs: bool = False

    async def cancel(self, handle: RunHandle) -> None:
        if self.cancel_hangs:
            await asyncio.Event().wait()
        assert isinstance(handle, ScriptedHandle)
        handle.execution_seconds = SECONDS
        await super().cancel(handle)

    def succeed(self, job_id: str) -> None:
        outcome = ExecutionOutcome(JobResult(pubs=()), {}, execution_seconds=SECONDS)
        self.handles[job_id].done.set_result(outcome)


def priced(core: Core) -> None:
    for runtime in core.backends.values():
        runtime.settings = dataclasses.replace(
            runtime.settings, price=PRICE, max_run_time_s=RUN_LIMIT_S
        )
    core.manager.policies.load([Tenant("alice", "", TenantPolicy(quota=QUOTA), "e")])


async def usage(core: Core) -> TenantUsageRecord:
    period = TenantPolicy(quota=QUOTA).period(core.clock())
    return await core.store.tenant_usage("alice", period.start, period.end)


def ledger(store: SqliteStore) -> list[tuple[str, str]]:
    with sqlite3.connect(store.path) as conn:
        rows = conn.execute("SELECT job_id, state FROM quota_ledger").fetchall()
    return [(str(job_id), str(state)) for job_id, state in rows]


def charged(job: Job) -> float:
    """What the job's stored record says it cost (0 with none)."""
    cost = None if job.execution is None else job.execution.cost
    return 0.0 if cost is None else cost.amount


async def crashed(
    store: SqliteStore, kind: QueueKind, model: ExecutionModel, *, cancel: bool
) -> tuple[Job, Core, BillingRunner]:
    """A priced job RUNNING (or, with `cancel`, CANCELLING) when its gateway died."""
    runner = BillingRunner(slots=1, model=model, cancel_hangs=cancel)
    core = await build_core(store, kind, {"b": runner})
    priced(core)
    job = await core.submit("alice", spec("b"))
    await core.until("alice", job.id, "RUNNING")
    held = await usage(core)
    # The hold: per task + per shot + per second at the run-time limit, nothing used yet.
    assert held.cost_reserved >= PRICE.per_second * RUN_LIMIT_S and held.cost_used == 0.0
    core.clock.advance(10)
    if cancel:
        # Answered (CANCELLING committed) while the runner is never told: then the crash.
        assert (await core.manager.cancel("alice", job.id)).state is JobState.CANCELLING
    await core.manager.close()
    # Past the dead holder's lease (the claim queue), within the job's run-time limit.
    core.clock.advance(40)
    return job, core, runner


async def restarted(
    store: SqliteStore, kind: QueueKind, model: ExecutionModel, first: Core, runner: BillingRunner
) -> tuple[Core, BillingRunner]:
    again = BillingRunner(slots=1, model=model, remote=runner.remote)
    core = await build_core(store, kind, {"b": again}, clock=first.clock, owner="holder-2")
    priced(core)
    return core, again


@pytest.mark.parametrize("kind", ["memory", "store"])
@pytest.mark.parametrize("model", [ExecutionModel.LOCAL, ExecutionModel.REMOTE])
async def test_a_job_running_at_a_crash_is_charged_once_and_usage_says_so(
    store: SqliteStore, kind: QueueKind, model: ExecutionModel
) -> None:
    # A simulator job runs again, a provider job is re-attached: either way one charge (the
    # run that delivered), one settled ledger row, no hold left, and the tenant's usage is
    # exactly what the job's record says it cost.
    job, first, runner = await crashed(store, kind, model, cancel=False)
    core, again = await restarted(store, kind, model, first, runner)
    try:
        await asyncio.wait_for(again.started.wait(), 5)
        if model is ExecutionModel.REMOTE:
            assert again.reattached == [job.id] and again.submitted == []  # never resent
        else:
            assert again.submitted == [job.id]  # a simulator job may execute again
        again.succeed(job.id)
        done = await core.until("alice", job.id, "SUCCEEDED")
        assert done.execution is not None and done.execution.usage is not None
        assert done.execution.usage.execution_seconds == SECONDS
        figures = await usage(core)
        assert figures.cost_used == pytest.approx(charged(done))
        assert charged(done) >= PRICE.per_task + PRICE.per_second * SECONDS
        assert figures.cost_reserved == 0.0 and figures.shots_reserved == 0
        assert ledger(store) == [(job.id, "SETTLED")]
    finally:
        await core.manager.close()


@pytest.mark.parametrize("kind", ["memory", "store"])
@pytest.mark.parametrize("model", [ExecutionModel.LOCAL, ExecutionModel.REMOTE])
async def test_a_job_cancelling_at_a_crash_ends_its_hold_and_usage_says_so(
    store: SqliteStore, kind: QueueKind, model: ExecutionModel
) -> None:
    # The cancel stands after the restart. A provider job is re-attached and cancelled there,
    # charged the seconds the provider reports it ran (as a stop without a crash is); a
    # simulator's run died with the gateway, unmeasured, and is charged nothing, as the lost
    # first run of a job RUNNING at a crash is not. Either way the hold ends (never a quota
    # shrunk for good) and usage agrees with the record.
    job, first, runner = await crashed(store, kind, model, cancel=True)
    core, again = await restarted(store, kind, model, first, runner)
    try:
        done = await core.until("alice", job.id, "CANCELLED")
        assert again.submitted == []  # a cancelled job never runs again
        if model is ExecutionModel.REMOTE:
            assert again.cancelled == [job.id]  # the provider is told to stop
            assert charged(done) == pytest.approx(PRICE.per_second * SECONDS)
        figures = await usage(core)
        assert figures.cost_used == pytest.approx(charged(done))
        assert figures.cost_reserved == 0.0 and figures.shots_used == 0
        assert ledger(store) == [(job.id, "RELEASED")]
    finally:
        await core.manager.close()


@dataclasses.dataclass
class FinishedMeanwhile(BillingRunner):
    """A provider on which every job re-attached after the restart had already finished."""

    async def reattach(self, job: Job, remote_id: str | None) -> RunHandle | None:
        handle = await super().reattach(job, remote_id)
        if handle is not None:
            self.succeed(job.id)
        return handle


@pytest.mark.parametrize("kind", ["memory", "store"])
async def test_a_provider_job_that_finished_before_a_cancel_lost_in_a_crash_is_charged_in_full(
    store: SqliteStore, kind: QueueKind
) -> None:
    # The reverse race: CancelJob was committed, the gateway died before the provider heard
    # of it, and the provider finished the job meanwhile. The stop after the restart finds it
    # done: the job SUCCEEDED with its result, charged what it delivered (per task, per shot,
    # per second) and settled once, not CANCELLED with the provider's work given away.
    model = ExecutionModel.REMOTE
    job, first, runner = await crashed(store, kind, model, cancel=True)
    again = FinishedMeanwhile(slots=1, model=model, remote=runner.remote)
    core = await build_core(store, kind, {"b": again}, clock=first.clock, owner="holder-2")
    priced(core)
    try:
        done = await core.until("alice", job.id, "SUCCEEDED")
        assert again.submitted == []
        assert charged(done) == pytest.approx(
            PRICE.per_task + PRICE.per_shot * 10 + PRICE.per_second * SECONDS
        )
        figures = await usage(core)
        assert figures.cost_used == pytest.approx(charged(done))
        assert done.execution is not None and done.execution.usage is not None
        assert figures.shots_used == done.execution.usage.shots == 10  # what prepare counted
        assert figures.cost_reserved == 0.0
        assert ledger(store) == [(job.id, "SETTLED")]
    finally:
        await core.manager.close()
