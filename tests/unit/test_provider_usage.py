"""The job core in process (issue 10): what a job that ended early used, the shots of a job
re-attached after a restart, and a submit refused for the backend's credentials going back to
the queue. A real SQLite store, a scripted runner, an injected wall clock."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from gateway.backends.base import ExecutionOutcome, PreparedJob
from gateway.backends.runner import ExecutionModel, RunHandle
from gateway.domain.errors import ExecutionError, ResourceExhausted
from gateway.domain.failures import FailureKind
from gateway.domain.jobs import Job, JobResult, JobState
from gateway.domain.pricing import Cost, Price
from gateway.runtime.breaker import BreakerPolicy, BreakerState
from gateway.security.tenant_policy import PeriodQuota, Tenant, TenantPolicy
from gateway.store.sqlite import SqliteStore
from tests.core_harness import Core, QueueKind, ScriptedRunner, build_core, spec

pytestmark = pytest.mark.anyio

PRICE = Price(per_task=1.0, per_shot=0.5, per_second=2.0, unit="credits")


async def went(core: Core, job_id: str, states: list[str]) -> None:
    """Waits until the job's transitions (as the lifecycle hooks saw them) are `states`."""
    async with asyncio.timeout(5):
        while core.recorder.states(job_id) != states:
            await asyncio.sleep(0.005)


async def restarted(
    store: SqliteStore,
    core: Core,
    runner: ScriptedRunner,
    kind: QueueKind = "memory",
    *,
    schedule: bool = True,
) -> tuple[Core, ScriptedRunner]:
    """The gateway started again on the same store, clock and provider ("qpu")."""
    again = ScriptedRunner(slots=1, model=ExecutionModel.REMOTE, remote=runner.remote)
    core2 = await build_core(store, kind, {"qpu": again}, clock=core.clock, schedule=schedule)
    return core2, again


def priced(core: Core, name: str) -> None:
    runtime = core.backends[name]
    runtime.settings = dataclasses.replace(runtime.settings, price=PRICE)


class ReportingRunner(ScriptedRunner):
    """A provider that reports the seconds a job used when it fails or is cancelled."""

    reported: float | None = None

    def fail(self, job_id: str, kind: FailureKind, reason: str = "EXECUTION_FAILED") -> None:
        self.handles[job_id].execution_seconds = self.reported
        super().fail(job_id, kind, reason)


class RefusingRunner(ScriptedRunner):
    """A provider that refuses the backend's key on the next `refusals` creates."""

    refusals: int = 0

    async def submit(self, prepared: PreparedJob, job: Job) -> RunHandle:
        if self.refusals > 0:
            self.refusals -= 1
            raise ExecutionError("PROVIDER_ERROR", "key refused", kind=FailureKind.CREDENTIALS)
        return await super().submit(prepared, job)


async def test_a_simulator_job_cancelled_while_running_reports_its_time_charged_per_second(
    store: SqliteStore,
) -> None:
    core = await build_core(store, "memory", {"sim": ScriptedRunner(slots=1)})
    priced(core, "sim")
    try:
        job = await core.submit("alice", spec("sim"))
        await core.until("alice", job.id, "RUNNING")
        await asyncio.sleep(0.05)  # it runs for a measurable time
        await core.manager.cancel("alice", job.id)
        ended = await core.until("alice", job.id, "CANCELLED")
        assert ended.execution is not None and ended.execution.usage is not None
        usage = ended.execution.usage
        assert usage.shots == 0  # not known to have run
        assert usage.execution_seconds >= 0.05
        # Its time only: no per-task or per-shot charge for a job that delivered nothing.
        assert ended.execution.cost == Cost(2.0 * usage.execution_seconds, "credits")
    finally:
        await core.manager.close()


async def test_a_provider_job_that_failed_reports_the_providers_seconds_or_none(
    store: SqliteStore,
) -> None:
    runner = ReportingRunner(slots=1, model=ExecutionModel.REMOTE)
    core = await build_core(store, "memory", {"qpu": runner})
    priced(core, "qpu")
    try:
        runner.reported = 12.5
        job = await core.submit("alice", spec("qpu"))
        await core.until("alice", job.id, "RUNNING")
        runner.fail(job.id, FailureKind.BACKEND_FAULT)
        failed = await core.until("alice", job.id, "FAILED")
        assert failed.execution is not None and failed.execution.usage is not None
        assert failed.execution.usage.execution_seconds == 12.5
        assert failed.execution.cost == Cost(25.0, "credits")
        # A provider that reports nothing: the time it was followed (queued there, perhaps)
        # is not execution, so no usage.
        runner.reported = None
        other = await core.submit("alice", spec("qpu"))
        await core.until("alice", other.id, "RUNNING")
        runner.fail(other.id, FailureKind.BACKEND_FAULT)
        unknown = await core.until("alice", other.id, "FAILED")
        assert unknown.execution is not None and unknown.execution.usage is None
    finally:
        await core.manager.close()


async def test_a_job_re_attached_after_a_restart_reports_the_shots_its_prepare_counted(
    store: SqliteStore,
) -> None:
    runner = ScriptedRunner(slots=1, model=ExecutionModel.REMOTE)
    core = await build_core(store, "memory", {"qpu": runner})
    job = await core.submit("alice", spec("qpu"))  # one PUB, 10 shots
    await core.until("alice", job.id, "RUNNING")
    await core.manager.close()
    core2, again = await restarted(store, core, runner)
    priced(core2, "qpu")
    try:
        await asyncio.wait_for(again.started.wait(), 5)
        assert again.reattached == [job.id] and again.submitted == []
        again.succeed(job.id)
        done = await core2.until("alice", job.id, "SUCCEEDED")
        assert done.execution is not None and done.execution.usage is not None
        assert done.execution.usage.shots == 10
        # The provider reported no execution time: the time the gateway followed the job
        # (the provider's queue, perhaps hours) is not charged as execution.
        assert done.execution.usage.execution_seconds == 0.0
        assert done.execution.cost == Cost(1.0 + 0.5 * 10, "credits")
    finally:
        await core2.manager.close()


@pytest.mark.parametrize("kind", ["memory", "store"])
async def test_a_submit_refused_for_the_key_queues_the_job_again_and_counts_for_the_breaker(
    store: SqliteStore, kind: QueueKind
) -> None:
    runner = RefusingRunner(slots=1, model=ExecutionModel.REMOTE)
    runner.refusals = 1
    policy = BreakerPolicy(failure_threshold=1, window_s=60, cooldown_s=10)
    core = await build_core(store, kind, {"qpu": runner}, breaker=policy, max_queue_time_s=30)
    try:
        job = await core.submit("alice", spec("qpu"))
        await went(core, job.id, ["QUEUED", "SUBMITTING", "QUEUED"])
        queued = await core.store.get_job(job.id)
        assert queued is not None and queued.state is JobState.QUEUED
        assert queued.remote_id is None and queued.attempts == 0
        assert core.backends["qpu"].breaker.state is BreakerState.OPEN
        assert runner.submitted == []
        # Behind the open breaker it waits like any queued job; after the cool-down it runs.
        await core.settle()
        assert (await core.store.get_job(job.id)).state is JobState.QUEUED  # type: ignore[union-attr]
        core.clock.advance(10)
        core.backends["qpu"].wake.set()
        await core.until("alice", job.id, "RUNNING")
        assert runner.submitted == [job.id]
        runner.succeed(job.id)
        await core.until("alice", job.id, "SUCCEEDED")
        # Refused again and again: it fails at its queue time limit, never created.
        runner.refusals = 100
        late = await core.submit("alice", spec("qpu"))
        await went(core, late.id, ["QUEUED", "SUBMITTING", "QUEUED"])
        core.clock.advance(31)
        core.backends["qpu"].wake.set()
        expired = await core.until("alice", late.id, "FAILED")
        assert expired.error is not None and expired.error.reason == "BACKEND_UNAVAILABLE"
        assert runner.submitted == [job.id]
    finally:
        await core.manager.close()


class LostAnswerRunner(ScriptedRunner):
    """A provider whose next create answers with a transient error: after it made the job
    (the answer was lost) or before (it never arrived)."""

    created_then_lost: bool = True

    async def submit(self, prepared: PreparedJob, job: Job) -> RunHandle:
        if self.created_then_lost:
            await super().submit(prepared, job)
        raise ExecutionError("PROVIDER_ERROR", "read timed out", kind=FailureKind.TRANSIENT)


@pytest.mark.parametrize("created", [True, False])
async def test_a_submit_whose_answer_was_lost_is_looked_up_before_the_job_fails(
    store: SqliteStore, created: bool
) -> None:
    runner = LostAnswerRunner(slots=1, model=ExecutionModel.REMOTE)
    runner.created_then_lost = created
    core = await build_core(store, "memory", {"qpu": runner})
    try:
        job = await core.submit("alice", spec("qpu"))
        if created:
            # The provider has it: followed under its provider id, never submitted again.
            running = await core.until("alice", job.id, "RUNNING")
            assert running.remote_id == f"r-{job.id}"
            assert runner.reattached == [job.id] and runner.submitted == [job.id]
            runner.succeed(job.id)
            await core.until("alice", job.id, "SUCCEEDED")
        else:
            failed = await core.until("alice", job.id, "FAILED")
            assert failed.error is not None and failed.error.reason == "PROVIDER_ERROR"
            assert runner.reattached == [] and runner.remote == {}
    finally:
        await core.manager.close()


class StubbornRunner(ScriptedRunner):
    """A provider that cannot be reached for the next `refusals` cancels."""

    refusals: int = 0
    cancel_calls: int = 0

    async def cancel(self, handle: RunHandle) -> None:
        self.cancel_calls += 1
        if self.refusals > 0:
            self.refusals -= 1
            raise ExecutionError("PROVIDER_ERROR", "503", kind=FailureKind.TRANSIENT)
        await super().cancel(handle)


async def test_a_cancel_the_provider_did_not_hear_is_asked_again_until_it_does(
    store: SqliteStore,
) -> None:
    # Before: the failed cancel ended the job FAILED INTERNAL_ERROR and the provider's job
    # went on running (and billing).
    runner = StubbornRunner(slots=1, model=ExecutionModel.REMOTE)
    runner.refusals = 2
    core = await build_core(store, "memory", {"qpu": runner})
    runtime = core.backends["qpu"]
    runtime.settings = dataclasses.replace(runtime.settings, remote_retry_s=0.01)
    try:
        job = await core.submit("alice", spec("qpu"))
        await core.until("alice", job.id, "RUNNING")
        await core.manager.cancel("alice", job.id)
        cancelled = await core.until("alice", job.id, "CANCELLED")
        assert cancelled.error is None
        assert runner.cancel_calls == 3 and runner.cancelled == [job.id]
    finally:
        await core.manager.close()


class UnansweredSubmitRunner(ScriptedRunner):
    """A provider that makes the job and never answers the submit."""

    async def submit(self, prepared: PreparedJob, job: Job) -> RunHandle:
        self.submitted.append(job.id)
        self.remote[f"r-{job.id}"] = job.id
        self.started.set()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


@pytest.mark.parametrize("kind", ["memory", "store"])
async def test_a_job_cancelled_while_being_submitted_is_cancelled_at_the_provider_after_a_restart(
    store: SqliteStore, kind: QueueKind
) -> None:
    # Before: recovery (or the next claimer) ended it CANCELLED without asking the provider,
    # which went on running the job.
    runner = UnansweredSubmitRunner(slots=1, model=ExecutionModel.REMOTE)
    core = await build_core(store, kind, {"qpu": runner})
    job = await core.submit("alice", spec("qpu"))
    await asyncio.wait_for(runner.started.wait(), 5)
    await core.manager.cancel("alice", job.id)
    await went(core, job.id, ["QUEUED", "SUBMITTING", "CANCELLING"])
    await core.manager.close()  # the gateway dies with the submit unanswered
    core2, again = await restarted(store, core, runner, kind)
    try:
        if kind == "store":  # the dead holder's lease lapses
            core2.clock.advance(31)
            core2.backends["qpu"].wake.set()
        cancelled = await core2.until("alice", job.id, "CANCELLED")
        assert cancelled.error is None
        assert again.reattached == [job.id] and again.cancelled == [job.id]
        assert again.submitted == []
    finally:
        await core2.manager.close()


async def test_a_recovered_provider_job_cancelled_before_scheduling_starts_is_cancelled_there(
    store: SqliteStore,
) -> None:
    # A session whose TTL passed while the gateway was down cancels its jobs at start, before
    # the recovered ones' runner steps start. Before: such a job was finished CANCELLED unasked
    # while the provider ran it; its step then re-attached and followed it to its end.
    runner = ScriptedRunner(slots=1, model=ExecutionModel.REMOTE)
    core = await build_core(store, "memory", {"qpu": runner})
    job = await core.submit("alice", spec("qpu"))
    await core.until("alice", job.id, "RUNNING")
    await core.manager.close()
    core2, again = await restarted(store, core, runner, schedule=False)
    try:
        marked = await core2.manager.cancel("alice", job.id)
        assert marked.state is JobState.CANCELLING
        core2.manager.start_scheduling()
        await core2.until("alice", job.id, "CANCELLED")
        assert again.reattached == [job.id] and again.cancelled == [job.id]
    finally:
        await core2.manager.close()


async def test_a_re_attached_job_keeps_its_time_limit_from_its_start(store: SqliteStore) -> None:
    # Before: a re-attached job lost its own max_execution_time and got the backend's whole
    # limit again at each restart, so rolling restarts kept a billing job running for ever.
    runner = ScriptedRunner(slots=1, model=ExecutionModel.REMOTE)
    core = await build_core(store, "memory", {"qpu": runner})
    job = await core.submit("alice", spec("qpu", max_execution_time_s=100.0))
    await core.until("alice", job.id, "RUNNING")
    await core.manager.close()
    core.clock.advance(150)  # down for longer than the job's own limit
    core2, again = await restarted(store, core, runner)
    try:
        failed = await core2.until("alice", job.id, "FAILED")
        assert failed.error is not None and failed.error.reason == "JOB_TIMEOUT"
        assert "max_execution_time" in failed.error.message
        assert again.reattached == [job.id] and again.cancelled == [job.id]
    finally:
        await core2.manager.close()


async def test_a_step_retrying_a_cancel_keeps_its_claim(store: SqliteStore) -> None:
    # The back-off between cancels ran outside the follow loop, which alone renewed the claim:
    # past the lease (30 s) the job was handed out again, and the second step finished it
    # CANCELLED while the provider was never told.
    runner = StubbornRunner(slots=2, model=ExecutionModel.REMOTE)
    runner.refusals = 1000
    core = await build_core(store, "memory", {"qpu": runner})
    try:
        job = await core.submit("alice", spec("qpu"))
        await core.until("alice", job.id, "RUNNING")
        await core.manager.cancel("alice", job.id)
        for _ in range(4):  # 80 s of the injected clock, renewed at each back-off
            calls = runner.cancel_calls
            async with asyncio.timeout(5):
                while runner.cancel_calls == calls:
                    await asyncio.sleep(0.005)
            core.clock.advance(20)
            core.backends["qpu"].wake.set()  # the scheduler looks for lapsed claims
        assert (await core.manager.get("alice", job.id)).state is JobState.CANCELLING
        assert runner.submitted == [job.id]
        runner.refusals = 0
        await core.until("alice", job.id, "CANCELLED")
        assert runner.cancelled == [job.id]
    finally:
        await core.manager.close()


async def test_a_spent_cost_quota_holds_back_priced_backends_only(store: SqliteStore) -> None:
    # A per-second price is held at the job's run-time limit (10 s here): such jobs are
    # refused once what is left cannot cover that. A zero price table charges nothing, so it
    # is not held back (the README's own setup: aer free, hardware priced, one USD quota).
    qpu = ScriptedRunner(slots=1, model=ExecutionModel.REMOTE)
    core = await build_core(store, "memory", {"qpu": qpu, "sim": ScriptedRunner(slots=1)})
    core.backends["qpu"].settings = dataclasses.replace(
        core.backends["qpu"].settings, price=Price(per_second=1.0, unit="USD")
    )
    core.backends["sim"].settings = dataclasses.replace(
        core.backends["sim"].settings, price=Price(unit="USD")
    )
    quota = PeriodQuota(cost=10.0, cost_unit="USD")
    policy = TenantPolicy(quota=quota)
    core.manager.policies.load([Tenant("alice", "", policy, "e")])
    try:
        job = await core.submit("alice", spec("qpu", max_execution_time_s=10.0))
        await core.until("alice", job.id, "RUNNING")
        qpu.handles[job.id].execution_seconds = None
        qpu.handles[job.id].done.set_result(
            ExecutionOutcome(JobResult(pubs=()), {}, execution_seconds=8.0)
        )
        done = await core.until("alice", job.id, "SUCCEEDED")
        assert done.execution is not None and done.execution.cost == Cost(8.0, "USD")
        with pytest.raises(ResourceExhausted) as spent:
            await core.submit("alice", spec("qpu", text="again", max_execution_time_s=10.0))
        assert spent.value.reason == "COST_QUOTA_EXCEEDED"
        free = await core.submit("alice", spec("sim"))
        assert free.state is JobState.QUEUED
    finally:
        await core.manager.close()


class SilentSubmitRunner(ScriptedRunner):
    """A provider whose submit never answers, and that never made the job."""

    async def submit(self, prepared: PreparedJob, job: Job) -> RunHandle:
        self.started.set()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


async def test_a_recovered_job_refused_for_the_key_is_queued_again(store: SqliteStore) -> None:
    # Recovered SUBMITTING, not at the provider, its submit refused for the key: it went back
    # to QUEUED in the store but into no queue (the recovery claim was not the queue's), and
    # never ran until the next restart.
    silent = SilentSubmitRunner(slots=1, model=ExecutionModel.REMOTE)
    core = await build_core(store, "memory", {"qpu": silent})
    job = await core.submit("alice", spec("qpu"))
    await asyncio.wait_for(silent.started.wait(), 5)
    await went(core, job.id, ["QUEUED", "SUBMITTING"])
    await core.manager.close()
    again = RefusingRunner(slots=1, model=ExecutionModel.REMOTE)
    again.refusals = 1
    core2 = await build_core(store, "memory", {"qpu": again}, clock=core.clock)
    try:
        await core2.until("alice", job.id, "RUNNING")
        assert again.submitted == [job.id] and again.refusals == 0
    finally:
        await core2.manager.close()
