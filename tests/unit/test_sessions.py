"""Sessions in process: the state machine and TTL decisions (gateway.domain.sessions) with a
hand-moved clock, and the job core's session handling (gateway.jobs.sessions) on a real SQLite
store, the in-memory queue and a scripted runner. No worker process, no gRPC."""

from __future__ import annotations

import asyncio
import contextlib
import pickle
import sqlite3
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any

import pytest

from gateway.backends.runner import ExecutionModel
from gateway.domain import sessions as domain
from gateway.domain.errors import Code, GatewayError
from gateway.domain.failures import FailureKind
from gateway.domain.jobs import Job, JobError, JobSpec, JobState
from gateway.domain.sessions import (
    EndReason,
    FailurePolicy,
    Session,
    SessionMode,
    SessionState,
)
from gateway.jobs import sessions as sessions_module
from gateway.jobs.backend import BackendRuntime, BackendSettings
from gateway.jobs.claim_queue import ClaimQueue
from gateway.jobs.hooks import Hooks
from gateway.jobs.manager import JobManager
from gateway.jobs.memory_queue import MemoryQueue
from gateway.jobs.sessions import NewSession, SessionCore, SessionLimits, SessionQueue
from gateway.runtime.breaker import BreakerPolicy, CircuitBreaker
from gateway.store.base import REQUEST_ID_DEDUP_WINDOW_S, CreateOutcome, NewJob
from gateway.store.sqlite import SqliteStore
from tests.core_harness import (
    T0,
    Clock,
    DirectCompiler,
    EchoAdapter,
    HeldCall,
    PickleFormat,
    Recorder,
    ScriptedRunner,
    caller_leaves_inside,
    context,
    spec,
)

pytestmark = pytest.mark.anyio


# ---------------------------------------------------------------- the state machine


def _session(**changes: object) -> Session:
    base = Session(
        id="s1",
        tenant="alice",
        backend="sim",
        mode=SessionMode.DEDICATED,
        state=SessionState.PENDING,
        failure_policy=FailurePolicy.CONTINUE,
        max_ttl_s=100.0,
        idle_ttl_s=10.0,
        created_at=T0,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def test_idle_ttl_runs_only_without_work_and_from_the_last_activity() -> None:
    s = _session()
    assert domain.expire(s, T0 + timedelta(seconds=9.9), has_work=False) is None
    ended = domain.expire(s, T0 + timedelta(seconds=10), has_work=False)
    assert ended is not None and ended.state is SessionState.CLOSED
    assert ended.end_reason is EndReason.IDLE_TTL and ended.ended_at == T0 + timedelta(seconds=10)
    # With work queued or running, idleness does not count.
    assert domain.expire(s, T0 + timedelta(seconds=50), has_work=True) is None
    active = domain.job_accepted(s, T0 + timedelta(seconds=5))
    assert active.state is SessionState.ACTIVE and active.first_job_at == T0 + timedelta(seconds=5)
    assert domain.expire(active, T0 + timedelta(seconds=14), has_work=False) is None
    assert domain.expire(active, T0 + timedelta(seconds=15), has_work=False) is not None


def test_max_ttl_counts_from_the_first_job_even_with_work() -> None:
    s = domain.job_accepted(_session(), T0 + timedelta(seconds=20))
    assert domain.deadline(s, has_work=True) == (T0 + timedelta(seconds=120), EndReason.MAX_TTL)
    assert domain.expire(s, T0 + timedelta(seconds=119), has_work=True) is None
    ended = domain.expire(s, T0 + timedelta(seconds=120), has_work=True)
    assert ended is not None and ended.end_reason is EndReason.MAX_TTL
    # Before any job, only the idle TTL applies.
    assert domain.deadline(_session(), has_work=False) == (
        T0 + timedelta(seconds=10),
        EndReason.IDLE_TTL,
    )


def test_close_drains_then_closes_and_ended_sessions_stay_ended() -> None:
    s = domain.job_accepted(_session(), T0)
    closing = domain.close(s, T0, has_work=True)
    assert closing.state is SessionState.CLOSING and not closing.state.accepts_jobs
    # A job admitted before the close and recorded after it: the session stays CLOSING.
    late = domain.job_accepted(closing, T0 + timedelta(seconds=1))
    assert late.state is SessionState.CLOSING
    assert late.last_activity_at == T0 + timedelta(seconds=1) and late.first_job_at == T0
    still = domain.job_ended(closing, False, T0, has_work=True)
    assert still.state is SessionState.CLOSING
    closed = domain.job_ended(closing, False, T0 + timedelta(seconds=1), has_work=False)
    assert closed.state is SessionState.CLOSED and closed.end_reason is EndReason.CLOSED
    assert domain.close(closed, T0, has_work=False) is closed
    assert domain.cancel(closed, T0) is closed
    assert domain.job_accepted(closed, T0) is closed
    assert domain.expire(closed, T0 + timedelta(days=1), has_work=False) is None
    # Closing a session with no work closes it at once.
    assert domain.close(s, T0, has_work=False).state is SessionState.CLOSED


def test_closing_a_closing_session_again_leaves_it_draining() -> None:
    # A second CloseSession (a retry) while nothing is queued or running, before the last
    # job's end is recorded: the drain's end is job_ended's to record, with its time.
    closing = domain.close(domain.job_accepted(_session(), T0), T0, has_work=True)
    assert domain.close(closing, T0 + timedelta(seconds=1), has_work=False) is closing


def test_abort_policy_fails_the_session_continue_does_not() -> None:
    s = domain.job_accepted(_session(failure_policy=FailurePolicy.ABORT), T0)
    failed = domain.job_ended(s, True, T0, has_work=True)
    assert failed.state is SessionState.FAILED and failed.end_reason is EndReason.JOB_FAILED
    go_on = domain.job_accepted(_session(), T0)
    assert domain.job_ended(go_on, True, T0, has_work=True).state is SessionState.ACTIVE


# ---------------------------------------------------------------- the job core


@dataclass
class SessionsCore:
    manager: JobManager
    sessions: SessionCore
    store: SqliteStore
    clock: Clock
    runner: ScriptedRunner
    recorder: Recorder
    runtime: BackendRuntime

    async def submit(self, tenant: str, job_spec: JobSpec) -> Job:
        self.clock.advance(0.001)
        data = pickle.dumps(job_spec)
        if job_spec.session:
            outcome = await self.sessions.submit(tenant, "", job_spec, data, b"d")
        else:
            outcome = await self.manager.submit(tenant, "", job_spec, data, b"d")
        return outcome.job

    async def create(self, tenant: str = "alice", **new: object) -> Session:
        session, created = await self.sessions.create(
            tenant,
            "",
            NewSession(backend="sim", **new),  # type: ignore[arg-type]
        )
        assert created
        return session

    async def close(self) -> None:
        await self.sessions.close()
        await self.manager.close()

    async def started(self, count: int) -> None:
        """Waits (bounded) until the runner has had `count` submissions."""
        async with asyncio.timeout(5):
            while len(self.runner.submitted) < count:
                self.runner.started.clear()
                await self.runner.started.wait()

    async def until(self, tenant: str, job_id: str, state: str) -> Job:
        async with asyncio.timeout(5):
            async for event in self.manager.watch(tenant, job_id, heartbeat_s=5):
                if event.job.state.value == state:
                    return event.job
        raise AssertionError(f"job {job_id} ended before {state}")

    async def step_ended(self, job_id: str) -> None:
        """Waits (bounded) until the job's runner step here has ended: its end published to
        the hooks (the session core's count of its work) and its claim ended (the session's
        line in the queue). `until` may return before: WatchJob's first event is read from
        the store on a reader thread, which can see a commit before the writer thread's answer
        reaches the loop."""
        async with asyncio.timeout(5):
            while job_id in self.runtime.running:
                await asyncio.sleep(0.001)

    async def session_until(self, session_id: str, state: SessionState) -> Session:
        async with asyncio.timeout(5):
            while True:
                found = await self.store.get_session(session_id)
                assert found is not None
                if found.state is state:
                    return found
                await asyncio.sleep(0)  # the hook's task runs next; bounded by the timeout


async def build(
    store: SqliteStore,
    *,
    slots: int = 3,
    clock: Clock | None = None,
    limits: SessionLimits | None = None,
    runner: ScriptedRunner | None = None,
    claim_queue: bool = False,
) -> SessionsCore:
    clock = clock or Clock()
    runner = runner or ScriptedRunner(slots=slots)
    runtime = BackendRuntime(
        name="sim",
        adapter=(adapter := EchoAdapter(context("sim"))),
        info=adapter.info(),
        runner=runner,
        breaker=CircuitBreaker(BreakerPolicy(), clock=lambda: clock.now.timestamp()),
        settings=BackendSettings(
            max_run_time_s=3600,
            max_queue_time_s=3600,
            health_interval_s=60,
            probe_timeout_s=5,
        ),
        queue=(
            ClaimQueue(store, "sim", "holder", 3600, 30.0, clock)
            if claim_queue
            else SessionQueue(MemoryQueue("sim", 3600, 30.0, clock))
        ),
    )
    recorder = Recorder()
    manager = JobManager(
        store,
        {"sim": runtime},
        DirectCompiler(),
        PickleFormat(),
        prepare_threads=1,
        hooks=Hooks([recorder]),
        clock=clock,
    )
    sessions = SessionCore(
        store, manager, limits or SessionLimits(), clock=clock, monotonic=clock.monotonic
    )
    manager.hooks.add(sessions)
    await sessions.load_sessions()
    await manager.start(schedule=False)
    await sessions.load()
    manager.start_scheduling()
    return SessionsCore(manager, sessions, store, clock, runner, recorder, runtime)


def session_spec(session: Session, text: str = "x") -> JobSpec:
    return replace(spec("sim", text), session=session.id)


async def test_sessions_are_refused_where_the_queue_cannot_keep_their_order(
    store: SqliteStore,
) -> None:
    # The store's claim queue hands out a session's jobs like any others: they ran side by
    # side, though CreateSession had promised one at a time, in order.
    core = await build(store, claim_queue=True)
    try:
        with pytest.raises(GatewayError) as refused:
            await core.create()
        assert refused.value.code is Code.FAILED_PRECONDITION
        assert refused.value.reason == "SESSIONS_UNAVAILABLE"
        assert refused.value.metadata == {"backend": "backends/sim"}
    finally:
        await core.close()


async def test_a_session_opened_before_the_move_to_the_claim_queue_takes_no_jobs(
    store: SqliteStore,
) -> None:
    # CreateSession was refused on the claim queue, but a session opened before the gateway
    # moved to it took jobs and ran them side by side.
    before = await build(store)
    session = await before.create()
    await before.close()
    core = await build(store, claim_queue=True)
    try:
        for check in (core.submit, core.sessions.check_accepts):
            with pytest.raises(GatewayError) as refused:
                await check("alice", session_spec(session))
            assert refused.value.reason == "SESSIONS_UNAVAILABLE"
        assert core.runner.submitted == []
    finally:
        await core.close()


async def test_a_sessions_jobs_run_one_at_a_time_in_order_beside_other_jobs(
    store: SqliteStore,
) -> None:
    core = await build(store, slots=3)
    try:
        s = await core.create()
        jobs = [await core.submit("alice", session_spec(s, f"j{i}")) for i in range(3)]
        other = await core.submit("bob", spec("sim"))
        await core.started(2)
        await core.until("bob", other.id, "RUNNING")
        # Three free slots, yet only the session's first job runs.
        assert core.runner.submitted == [jobs[0].id, other.id]
        # The held jobs count as the tenant's waiting ones (its share of the queue).
        assert await core.runtime.queue.waiting_by_tenant() == {"alice": 2}
        assert (await core.manager.get("alice", jobs[1].id)).queue_position == 0
        assert (await core.manager.get("alice", jobs[2].id)).queue_position == 1
        for index, job in enumerate(jobs):
            await core.until("alice", job.id, "RUNNING")
            assert [j for j in core.runner.submitted if j != other.id][-1] == job.id
            core.runner.succeed(job.id)
            await core.until("alice", job.id, "SUCCEEDED")
            if index + 1 < len(jobs):
                await core.started(3 + index)
        assert [j for j in core.runner.submitted if j != other.id] == [j.id for j in jobs]
        stored = await store.get_session(s.id)
        assert stored is not None and stored.state is SessionState.ACTIVE
        assert stored.first_job_at is not None
    finally:
        await core.close()


async def test_a_held_session_job_is_removed_only_for_its_own_tenant(
    store: SqliteStore,
) -> None:
    # SessionQueue.remove keeps the queue contract (another tenant's job is not removed) for
    # jobs it holds behind the session's current one, as the inner queue does for its own.
    core = await build(store, slots=3)
    try:
        s = await core.create()
        first = await core.submit("alice", session_spec(s, "j0"))
        held = await core.submit("alice", session_spec(s, "j1"))
        await core.until("alice", first.id, "RUNNING")
        assert not await core.runtime.queue.remove(held.id, "bob")
        assert await core.runtime.queue.waiting_by_tenant() == {"alice": 1}
        assert await core.runtime.queue.remove(held.id, "alice")
        assert await core.runtime.queue.waiting_by_tenant() == {}
    finally:
        await core.close()


async def test_a_held_session_job_queue_time_counts_from_its_turn(store: SqliteStore) -> None:
    # The job before it runs longer than the backend's queue time (3600 s here): the next one
    # waited in its session's line, not in the queue, and must not expire when its turn comes.
    core = await build(store, slots=2)
    try:
        s = await core.create()
        first = await core.submit("alice", session_spec(s, "j0"))
        second = await core.submit("alice", session_spec(s, "j1"))
        await core.until("alice", first.id, "RUNNING")
        core.clock.advance(4000)
        core.runner.succeed(first.id)
        await core.until("alice", first.id, "SUCCEEDED")
        await core.until("alice", second.id, "RUNNING")
        core.runner.succeed(second.id)
        await core.until("alice", second.id, "SUCCEEDED")
    finally:
        await core.close()


async def test_close_drains_and_refuses_new_jobs_with_session_closed(store: SqliteStore) -> None:
    core = await build(store)
    try:
        s = await core.create()
        first = await core.submit("alice", session_spec(s))
        second = await core.submit("alice", session_spec(s))
        await core.until("alice", first.id, "RUNNING")
        closing = await core.sessions.close_session("alice", s.id)
        assert closing.state is SessionState.CLOSING
        with pytest.raises(GatewayError) as refused:
            await core.submit("alice", session_spec(s))
        assert refused.value.reason == "SESSION_CLOSED"
        assert refused.value.resource_info is not None
        assert refused.value.resource_info.name == f"sessions/{s.id}"
        core.runner.succeed(first.id)
        await core.started(2)
        core.runner.succeed(second.id)
        await core.until("alice", second.id, "SUCCEEDED")
        closed = await core.session_until(s.id, SessionState.CLOSED)
        assert closed.end_reason is EndReason.CLOSED and closed.ended_at is not None
    finally:
        await core.close()


async def test_abort_policy_fails_the_session_and_cancels_the_rest_unrun(
    store: SqliteStore,
) -> None:
    core = await build(store)
    try:
        s = await core.create(failure_policy=FailurePolicy.ABORT)
        jobs = [await core.submit("alice", session_spec(s)) for _ in range(3)]
        await core.until("alice", jobs[0].id, "RUNNING")
        core.runner.fail(jobs[0].id, FailureKind.CLIENT_ERROR)
        failed = await core.session_until(s.id, SessionState.FAILED)
        assert failed.end_reason is EndReason.JOB_FAILED
        for job in jobs[1:]:
            assert (await core.until("alice", job.id, "CANCELLED")).state is JobState.CANCELLED
        assert core.runner.submitted == [jobs[0].id]
    finally:
        await core.close()


async def test_abort_after_a_queue_timeout_cancels_the_rest_before_any_starts(
    store: SqliteStore,
) -> None:
    # The expired job's session let its next job in when the queue handed the expired one
    # out, before the scheduler committed its FAILED state (what halts the session): the next
    # job was claimed and started, then cancelled mid-run.
    core = await build(store, slots=1)
    try:
        s = await core.create(failure_policy=FailurePolicy.ABORT, max_ttl_s=28800.0)
        blocker = await core.submit("bob", spec("sim", "b"))
        await core.until("bob", blocker.id, "RUNNING")
        first = await core.submit("alice", session_spec(s, "j0"))
        second = await core.submit("alice", session_spec(s, "j1"))
        core.clock.advance(3601)  # the first waited past the backend's queue time
        core.runner.succeed(blocker.id)
        failed = await core.until("alice", first.id, "FAILED")
        assert failed.error is not None and failed.error.reason == "QUEUE_TIMEOUT"
        await core.until("alice", second.id, "CANCELLED")
        assert (await core.session_until(s.id, SessionState.FAILED)).end_reason is (
            EndReason.JOB_FAILED
        )
        assert core.runner.submitted == [blocker.id]
    finally:
        await core.close()


async def test_an_abort_the_gateway_died_before_applying_applies_at_start(
    store: SqliteStore,
) -> None:
    core = await build(store)
    s = await core.create(failure_policy=FailurePolicy.ABORT)
    jobs = [await core.submit("alice", session_spec(s, f"j{i}")) for i in range(2)]
    await core.until("alice", jobs[0].id, "RUNNING")
    await core.close()
    # The job's FAILED commit landed; the gateway died before the session heard of it.
    failed = await store.finish_job(
        jobs[0].id,
        JobState.FAILED,
        ended_at=core.clock.now,
        error=JobError.of("EXECUTION_FAILED", "boom"),
    )
    assert failed is not None
    again = await build(store, clock=core.clock)
    try:
        ended = await again.session_until(s.id, SessionState.FAILED)
        assert ended.end_reason is EndReason.JOB_FAILED
        assert (await again.until("alice", jobs[1].id, "CANCELLED")).state is JobState.CANCELLED
        assert again.runner.submitted == []
    finally:
        await again.close()


async def test_continue_policy_runs_the_rest_after_a_failure(store: SqliteStore) -> None:
    core = await build(store)
    try:
        s = await core.create()
        first = await core.submit("alice", session_spec(s))
        second = await core.submit("alice", session_spec(s))
        await core.until("alice", first.id, "RUNNING")
        core.runner.fail(first.id, FailureKind.CLIENT_ERROR)
        await core.until("alice", second.id, "RUNNING")
        core.runner.succeed(second.id)
        await core.until("alice", second.id, "SUCCEEDED")
        stored = await store.get_session(s.id)
        assert stored is not None and stored.state is SessionState.ACTIVE
    finally:
        await core.close()


async def test_cancel_session_cancels_running_and_queued_jobs(store: SqliteStore) -> None:
    core = await build(store)
    try:
        s = await core.create()
        first = await core.submit("alice", session_spec(s))
        second = await core.submit("alice", session_spec(s))
        await core.until("alice", first.id, "RUNNING")
        ended = await core.sessions.cancel_session("alice", s.id)
        assert ended.state is SessionState.CLOSED and ended.end_reason is EndReason.CANCELLED
        await core.until("alice", first.id, "CANCELLED")
        await core.until("alice", second.id, "CANCELLED")
        assert core.runner.cancelled == [first.id]
        assert core.runner.submitted == [first.id]
    finally:
        await core.close()


async def test_cancel_session_goes_on_past_a_job_that_finished_meanwhile(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The session's unfinished jobs are read, then cancelled one by one; one that finished in
    # between is refused (already finished) and the others must still be cancelled.
    core = await build(store, slots=1)
    try:
        s = await core.create()
        jobs = [await core.submit("alice", session_spec(s, f"j{i}")) for i in range(3)]
        await core.until("alice", jobs[0].id, "RUNNING")
        core.runner.succeed(jobs[0].id)
        await core.until("alice", jobs[1].id, "RUNNING")
        read = store.session_jobs

        async def read_before_the_first_finished(
            session_id: str, *, include_final: bool = False
        ) -> Any:
            return await read(session_id, include_final=True)

        monkeypatch.setattr(store, "session_jobs", read_before_the_first_finished)
        await core.sessions.cancel_session("alice", s.id)
        for job in jobs[1:]:
            await core.until("alice", job.id, "CANCELLED")
    finally:
        await core.close()


async def test_an_interrupted_cancel_session_still_cancels_every_job(store: SqliteStore) -> None:
    # The caller's task is cancelled (its deadline, a disconnect) once the session is saved
    # CLOSED: the jobs not cancelled yet stayed QUEUED for ever, held in the line of a session
    # that never lets another in, and counted against the backend's queue.
    core = await build(store, slots=1)
    try:
        s = await core.create()
        jobs = [await core.submit("alice", session_spec(s, f"j{i}")) for i in range(4)]
        await core.until("alice", jobs[0].id, "RUNNING")
        cancel_job = core.manager.cancel
        call: asyncio.Task[Session] | None = None

        async def cancel_then_interrupt(tenant: str, job_id: str) -> Job:
            cancelled = await cancel_job(tenant, job_id)
            assert call is not None
            call.cancel()
            return cancelled

        core.manager.cancel = cancel_then_interrupt  # type: ignore[method-assign]
        call = asyncio.create_task(core.sessions.cancel_session("alice", s.id))
        with pytest.raises(asyncio.CancelledError):
            await call
        for job in jobs:
            await core.until("alice", job.id, "CANCELLED")
        assert await core.runtime.queue.depth() == 0
    finally:
        await core.close()


async def test_cancel_session_again_cancels_the_jobs_an_earlier_call_left(
    store: SqliteStore,
) -> None:
    # A retry found the session ended and answered at once, leaving the jobs for ever.
    core = await build(store, slots=1)
    try:
        s = await core.create()
        jobs = [await core.submit("alice", session_spec(s, f"j{i}")) for i in range(3)]
        await core.until("alice", jobs[0].id, "RUNNING")
        cancel_job = core.manager.cancel
        calls = 0

        async def fail_the_second(tenant: str, job_id: str) -> Job:
            nonlocal calls
            calls += 1
            if calls == 2:
                raise OSError("disk I/O error")
            return await cancel_job(tenant, job_id)

        core.manager.cancel = fail_the_second  # type: ignore[method-assign]
        with pytest.raises(OSError):
            await core.sessions.cancel_session("alice", s.id)
        assert await store.session_jobs(s.id)  # some left unfinished
        again = await core.sessions.cancel_session("alice", s.id)
        assert again.state is SessionState.CLOSED and again.end_reason is EndReason.CANCELLED
        for job in jobs:
            await core.until("alice", job.id, "CANCELLED")
    finally:
        await core.close()


@dataclass
class _GatedCreates:
    """Every job's create waits for `open` once it is in flight (`entered`); `committed`
    once one has returned."""

    entered: asyncio.Event
    open: asyncio.Event
    committed: asyncio.Event


def _gate_creates(store: SqliteStore) -> _GatedCreates:
    gated = _GatedCreates(asyncio.Event(), asyncio.Event(), asyncio.Event())
    create_job = store.create_job

    async def create(new: NewJob) -> CreateOutcome:
        gated.entered.set()
        await gated.open.wait()
        outcome = await create_job(new)
        gated.committed.set()
        return outcome

    store.create_job = create  # type: ignore[method-assign]
    return gated


async def test_a_job_whose_submit_was_cancelled_mid_commit_starts_the_max_ttl(
    store: SqliteStore,
) -> None:
    # The create is shielded and commits, but the session was recorded after it in the
    # cancelled call: it stayed PENDING, and with no first job its max TTL never started.
    core = await build(store, slots=1)
    try:
        s = await core.create(max_ttl_s=30.0, idle_ttl_s=10.0)
        gated = _gate_creates(store)
        call = asyncio.create_task(core.submit("alice", session_spec(s)))
        await asyncio.wait_for(gated.entered.wait(), 5)
        call.cancel()  # the client's deadline, while the job's commit is in flight
        with pytest.raises(asyncio.CancelledError):
            await call
        gated.open.set()
        await asyncio.wait_for(gated.committed.wait(), 5)
        active = await core.session_until(s.id, SessionState.ACTIVE)
        assert active.first_job_at is not None
        (job,) = await store.session_jobs(s.id)
        # A reader thread can see the recording's commit before the writer thread's answer
        # reaches the loop: the sessions open here (what the sweep reads) still hold the
        # session PENDING then, with no max TTL, and a sweep would end nothing. Swept (with
        # nothing due yet) until the sweep knows the max TTL.
        max_ttl_at = active.first_job_at + timedelta(seconds=30)
        async with asyncio.timeout(5):
            while await core.sessions.expire_due() != max_ttl_at:
                await asyncio.sleep(0)
        core.clock.advance(30)
        await core.sessions.expire_due()
        # The recording may still hold the session's lock (its save is in the store, its
        # lock not yet let go): the sweep then ends the session in a task.
        ended = await core.session_until(s.id, SessionState.CLOSED)
        assert ended.end_reason is EndReason.MAX_TTL
        await core.until("alice", job.id, "CANCELLED")
    finally:
        await core.close()


async def test_a_job_committed_after_its_session_was_cancelled_is_cancelled(
    store: SqliteStore,
) -> None:
    # The submit's caller was gone, so CancelSession did not wait for its create: it cancelled
    # the jobs it found, and the job committed after it stayed QUEUED for ever.
    core = await build(store, slots=1)
    try:
        s = await core.create()
        first = await core.submit("alice", session_spec(s, "j0"))
        await core.until("alice", first.id, "RUNNING")
        gated = _gate_creates(store)
        call = asyncio.create_task(core.submit("alice", session_spec(s, "j1")))
        await asyncio.wait_for(gated.entered.wait(), 5)  # held behind the first
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        await core.sessions.cancel_session("alice", s.id)
        gated.open.set()
        await asyncio.wait_for(gated.committed.wait(), 5)
        jobs = await store.session_jobs(s.id, include_final=True)
        assert len(jobs) == 2
        for job in jobs:
            await core.until("alice", job.id, "CANCELLED")
        assert core.runner.submitted == [first.id]
        assert await core.runtime.queue.depth() == 0
    finally:
        await core.close()


async def test_idle_and_max_ttl_end_sessions_by_the_injected_clock(store: SqliteStore) -> None:
    clock = Clock()
    core = await build(store, clock=clock)
    try:
        idle = await core.create(idle_ttl_s=10.0, max_ttl_s=100.0)
        busy = await core.create(idle_ttl_s=10.0, max_ttl_s=30.0)
        job = await core.submit("alice", session_spec(busy))
        queued = await core.submit("alice", session_spec(busy))
        await core.until("alice", job.id, "RUNNING")
        clock.advance(9)
        assert await core.sessions.expire_due() is not None
        assert (await core.sessions.get("alice", idle.id)).state is SessionState.PENDING
        clock.advance(1)
        await core.sessions.expire_due()
        ended = await core.sessions.get("alice", idle.id)
        assert ended.state is SessionState.CLOSED and ended.end_reason is EndReason.IDLE_TTL
        # The busy one has work, so only its max TTL (30 s from its first job) ends it.
        assert (await core.sessions.get("alice", busy.id)).state is SessionState.ACTIVE
        clock.advance(21)
        await core.sessions.expire_due()
        over = await core.sessions.get("alice", busy.id)
        assert over.state is SessionState.CLOSED and over.end_reason is EndReason.MAX_TTL
        await core.until("alice", job.id, "CANCELLED")
        await core.until("alice", queued.id, "CANCELLED")
    finally:
        await core.close()


async def test_the_sweep_wakes_for_the_earliest_deadline_of_all_sessions(
    store: SqliteStore,
) -> None:
    # The timer sleeps until the deadline the sweep returns: a later one (say, the last of
    # several sessions) left every earlier TTL unenforced until then.
    clock = Clock()
    core = await build(store, clock=clock)
    try:
        late = await core.create(idle_ttl_s=50.0, max_ttl_s=100.0)
        soon = await core.create(idle_ttl_s=10.0, max_ttl_s=100.0)
        later = await core.create(idle_ttl_s=30.0, max_ttl_s=100.0)
        due = await core.sessions.expire_due()
        assert due == soon.created_at + timedelta(seconds=10)
        clock.now = due  # (created at one clock reading, they commit a microsecond apart)
        assert await core.sessions.expire_due() == later.created_at + timedelta(seconds=30)
        assert (await core.sessions.get("alice", soon.id)).state is SessionState.CLOSED
        assert (await core.sessions.get("alice", late.id)).state is SessionState.PENDING
    finally:
        await core.close()


class FinalSavesFail:
    """store.save_session refusing the first `left` saves of an ended session (a store error)."""

    def __init__(self, store: SqliteStore, left: int) -> None:
        self.real = store.save_session
        self.left = left

    async def __call__(self, session: Session) -> Session | None:
        if session.state.is_final and self.left:
            self.left -= 1
            raise sqlite3.OperationalError("database is locked")
        return await self.real(session)


def gate_slow_compiles(core: SessionsCore) -> tuple[asyncio.Event, asyncio.Event]:
    """Holds the compile of a PUB whose text is "slow" until the returned gate is set; the
    returned `entered` is set when one starts (the session's lock is then held)."""
    admission = core.manager._admission
    compiler = admission._compiler
    entered, gate = asyncio.Event(), asyncio.Event()

    class GatedCompiler:
        async def compile(self, tenant: str, backend: str, *args: Any) -> Any:
            if args[1].text == "slow":
                entered.set()
                await gate.wait()
            return await compiler.compile(tenant, backend, *args)

    admission._compiler = GatedCompiler()
    return entered, gate


async def test_a_ttl_end_that_could_not_be_saved_leaves_the_session_running_and_is_retried(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One store error while saving a TTL end left the session open but halted (its jobs held,
    # never run) and stopped the sweep until some unrelated session changed.
    clock = Clock()
    core = await build(store, clock=clock)
    real = store.save_session
    failures = 1
    retried = asyncio.Event()

    async def flaky(session: Session) -> Session | None:
        nonlocal failures
        if session.state.is_final:
            if failures:
                failures -= 1
                raise sqlite3.OperationalError("database is locked")
            retried.set()
        return await real(session)

    monkeypatch.setattr(sessions_module, "SWEEP_RETRY_S", 0.01)
    try:
        idle = await core.create(idle_ttl_s=10.0, max_ttl_s=100.0)
        monkeypatch.setattr(store, "save_session", flaky)
        clock.advance(11)
        with pytest.raises(sqlite3.OperationalError):
            await core.sessions.expire_due()
        assert not core.sessions.halted(idle.id)  # still open: its jobs may still run
        core.sessions.start()  # the timer sweeps, fails... and sweeps again on its own
        async with asyncio.timeout(5):
            await retried.wait()
            while (await core.sessions.get("alice", idle.id)).state is not SessionState.CLOSED:
                await asyncio.sleep(0)
    finally:
        await core.close()


async def test_an_abort_that_could_not_be_saved_is_saved_again(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One store error saving an ABORT failure left the session open (taking jobs) but holding
    # them back: its waiting and new jobs never ran and never ended, until its max TTL.
    core = await build(store, slots=2)
    flaky = FinalSavesFail(store, 1)
    monkeypatch.setattr(sessions_module, "SWEEP_RETRY_S", 0.01)
    try:
        session = await core.create(failure_policy=FailurePolicy.ABORT)
        first = await core.submit("alice", session_spec(session, "j0"))
        second = await core.submit("alice", session_spec(session, "j1"))
        await core.until("alice", first.id, "RUNNING")
        monkeypatch.setattr(store, "save_session", flaky)
        core.runner.fail(first.id, FailureKind.CLIENT_ERROR)
        await core.until("alice", first.id, "FAILED")
        failed = await core.session_until(session.id, SessionState.FAILED)
        assert flaky.left == 0 and failed.end_reason is EndReason.JOB_FAILED
        assert (await core.until("alice", second.id, "CANCELLED")).started_at is None
        assert core.runner.submitted == [first.id]
        with pytest.raises(GatewayError) as refused:
            await core.submit("alice", session_spec(session, "j2"))
        assert refused.value.reason == "SESSION_CLOSED"
    finally:
        await core.close()


async def test_a_ttl_end_deferred_behind_a_compile_is_saved_again_after_a_store_error(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A TTL end waiting for the session's lock (a submission compiling) that then hit a store
    # error was not tried again: the session ran on past its max TTL, taking jobs, until some
    # other session changed.
    clock = Clock()
    core = await build(store, clock=clock)
    entered, gate = gate_slow_compiles(core)
    flaky = FinalSavesFail(store, 1)
    monkeypatch.setattr(sessions_module, "SWEEP_RETRY_S", 0.01)
    try:
        session = await core.create(idle_ttl_s=10.0, max_ttl_s=20.0)
        await core.submit("alice", session_spec(session, "fast"))  # its max TTL from here
        held = asyncio.ensure_future(core.submit("alice", session_spec(session, "slow")))
        await entered.wait()  # compiling, the session's lock held
        clock.advance(30)
        monkeypatch.setattr(store, "save_session", flaky)
        async with asyncio.timeout(5):
            await core.sessions.expire_due()  # deferred to a task: the lock is held
        gate.set()
        with contextlib.suppress(GatewayError):
            await held
        over = await core.session_until(session.id, SessionState.CLOSED)
        assert flaky.left == 0 and over.end_reason is EndReason.MAX_TTL
    finally:
        gate.set()
        await core.close()


@pytest.mark.parametrize("save_fails", [False, True])
async def test_a_job_let_in_before_its_session_began_to_end_is_not_started(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch, save_fails: bool
) -> None:
    # CancelSession halts the session, saves its end, then cancels its jobs; a slot freed
    # during the save started the job already let into the backend's queue, killed right
    # after. If the save fails the session goes on, and so does the job.
    core = await build(store, slots=1)
    try:
        session = await core.create()
        blocker = await core.submit("bob", spec("sim", "b"))
        await core.until("bob", blocker.id, "RUNNING")
        waiting = await core.submit("alice", session_spec(session, "a"))  # let in, no slot
        real = store.save_session
        saving, gate = asyncio.Event(), asyncio.Event()

        async def slow_save(ended: Session) -> Session | None:
            if ended.state.is_final:
                saving.set()
                await gate.wait()
                if save_fails:
                    raise sqlite3.OperationalError("database is locked")
            return await real(ended)

        monkeypatch.setattr(store, "save_session", slow_save)
        cancel = asyncio.ensure_future(core.sessions.cancel_session("alice", session.id))
        await saving.wait()
        core.runner.succeed(blocker.id)  # a slot frees while the end is being saved
        await core.until("bob", blocker.id, "SUCCEEDED")
        for _ in range(50):
            await asyncio.sleep(0)
        assert core.runner.submitted == [blocker.id]
        gate.set()
        if save_fails:
            with pytest.raises(sqlite3.OperationalError):
                await cancel
            await core.started(2)  # the session goes on: its job runs
            assert core.runner.submitted == [blocker.id, waiting.id]
        else:
            await cancel
            done = await core.until("alice", waiting.id, "CANCELLED")
            assert [t.state.value for t in done.state_history] == ["QUEUED", "CANCELLED"]
            assert core.runner.submitted == [blocker.id]
    finally:
        await core.close()


async def test_a_submission_is_answered_without_waiting_for_the_next_ones_compile(
    store: SqliteStore,
) -> None:
    # The answer awaited a task recording the job in its session, which queued for the
    # session's lock behind the next submission, held through that one's whole compile.
    core = await build(store, slots=3)
    admission = core.manager._admission
    compiler = admission._compiler
    gate = asyncio.Event()

    class GatedCompiler:
        async def compile(self, tenant: str, backend: str, *args: Any) -> Any:
            if args[1].text == "slow":
                await gate.wait()
            return await compiler.compile(tenant, backend, *args)

    admission._compiler = GatedCompiler()
    try:
        session = await core.create()
        fast = asyncio.ensure_future(core.submit("alice", session_spec(session, "fast")))
        await asyncio.sleep(0)  # the fast one takes the session's lock first
        slow = asyncio.ensure_future(core.submit("alice", session_spec(session, "slow")))
        async with asyncio.timeout(5):
            await fast  # while the slow one still compiles
        assert not slow.done()
        assert (await core.sessions.get("alice", session.id)).state is SessionState.ACTIVE
        gate.set()
        async with asyncio.timeout(5):
            await slow
    finally:
        gate.set()
        await core.close()


async def test_a_session_held_by_a_compiling_submission_does_not_hold_up_other_ttls(
    store: SqliteStore,
) -> None:
    # The sweep waited for each due session's lock in turn: a submission compiling into one
    # session (up to its PUBs' compile limits) held up every other tenant's TTLs.
    clock = Clock()
    core = await build(store, clock=clock)
    entered, gate = gate_slow_compiles(core)
    try:
        busy = await core.create("mallory", idle_ttl_s=10.0, max_ttl_s=20.0)
        idle = await core.create("alice", idle_ttl_s=10.0, max_ttl_s=100.0)
        await core.submit("mallory", session_spec(busy, "fast"))  # its max TTL runs from here
        held = asyncio.ensure_future(core.submit("mallory", session_spec(busy, "slow")))
        await entered.wait()  # compiling, the session's lock held
        clock.advance(30)
        async with asyncio.timeout(5):
            await core.sessions.expire_due()
        ended = await core.sessions.get("alice", idle.id)
        assert ended.state is SessionState.CLOSED and ended.end_reason is EndReason.IDLE_TTL
        assert (await core.sessions.get("mallory", busy.id)).state is not SessionState.CLOSED
        gate.set()  # the submission ends; the held session's TTL end follows
        with contextlib.suppress(GatewayError):
            await held
        async with asyncio.timeout(5):
            while (await core.sessions.get("mallory", busy.id)).state is not SessionState.CLOSED:
                await asyncio.sleep(0)
        over = await core.sessions.get("mallory", busy.id)
        assert over.end_reason is EndReason.MAX_TTL
    finally:
        gate.set()
        await core.close()


async def test_the_cap_counts_open_sessions_per_tenant(store: SqliteStore) -> None:
    core = await build(store, limits=SessionLimits(max_sessions_per_tenant=2))
    try:
        first = await core.create()
        await core.create()
        with pytest.raises(GatewayError) as refused:
            await core.create()
        assert refused.value.code is Code.RESOURCE_EXHAUSTED
        assert refused.value.reason == "SESSION_LIMIT_REACHED"
        assert refused.value.quota_violations
        await core.create(tenant="bob")  # another tenant's cap is its own
        await core.sessions.close_session("alice", first.id)
        await core.create()
    finally:
        await core.close()


async def test_a_tenant_sees_only_its_sessions(store: SqliteStore) -> None:
    core = await build(store)
    try:
        s = await core.create()
        for call in (
            core.sessions.get("bob", s.id),
            core.sessions.close_session("bob", s.id),
            core.sessions.cancel_session("bob", s.id),
            core.submit("bob", session_spec(s)),
        ):
            with pytest.raises(GatewayError) as missing:
                await call
            assert missing.value.code is Code.NOT_FOUND
            assert missing.value.reason == "SESSION_NOT_FOUND"
        assert (await core.sessions.get("alice", s.id)).state is SessionState.PENDING
        with pytest.raises(GatewayError) as other_backend:
            await core.submit("alice", replace(spec("nope"), session=s.id))
        assert other_backend.value.reason == "SESSION_BACKEND_MISMATCH"
        # A fallback would run the job beside the session's others, on another backend.
        with pytest.raises(GatewayError) as fallback:
            await core.submit("alice", replace(spec("sim", fallback_backend="sim2"), session=s.id))
        assert fallback.value.reason == "SESSION_BACKEND_MISMATCH"
        assert fallback.value.metadata["backend"] == "backends/sim2"
        with pytest.raises(GatewayError):
            await core.sessions.check_accepts(
                "alice", replace(spec("sim", fallback_backend="sim2"), session=s.id)
            )
    finally:
        await core.close()


async def test_named_sessions_leave_no_state_behind(store: SqliteStore) -> None:
    # Every well-formed session id reaches the session's lock before the lookup: a lock kept
    # per id ever named grew without bound; so did the set of ended sessions.
    core = await build(store)
    try:
        for n in range(50):
            made_up = f"s{n:031d}"
            with pytest.raises(GatewayError):
                await core.sessions.close_session("alice", made_up)
            with pytest.raises(GatewayError):
                await core.sessions.cancel_session("alice", made_up)
        s = await core.create()
        await core.sessions.cancel_session("alice", s.id)
        assert core.sessions.halted(s.id)  # ended: still never starts a job
        assert core.sessions._locks == {} and core.sessions._halted == set()
    finally:
        await core.close()


async def test_a_closing_session_whose_jobs_ended_while_down_is_closed_at_start(
    store: SqliteStore,
) -> None:
    # Its last job ended while the gateway was down, so no job end comes to close it: left
    # CLOSING, it lingered until its idle TTL, then ended as IDLE_TTL instead of CLOSED.
    core = await build(store)
    s = await core.create()
    job = await core.submit("alice", session_spec(s))
    await core.until("alice", job.id, "RUNNING")
    assert (await core.sessions.close_session("alice", s.id)).state is SessionState.CLOSING
    await core.close()
    await store.finish_job(job.id, JobState.SUCCEEDED, ended_at=core.clock())
    again = await build(store, clock=core.clock)
    try:
        closed = await again.sessions.get("alice", s.id)
        assert closed.state is SessionState.CLOSED and closed.end_reason is EndReason.CLOSED
    finally:
        await again.close()


async def test_queued_session_jobs_run_in_order_after_a_restart(store: SqliteStore) -> None:
    core = await build(store, slots=2)
    s = await core.create()
    jobs = [await core.submit("alice", session_spec(s, f"j{i}")) for i in range(3)]
    await core.until("alice", jobs[0].id, "RUNNING")
    await core.close()  # a crash: nothing finished; the running job is re-queued at start
    again = await build(store, slots=2, clock=core.clock)
    try:
        for job in jobs:
            await again.until("alice", job.id, "RUNNING")
            assert again.runner.submitted[-1] == job.id
            again.runner.succeed(job.id)
            await again.until("alice", job.id, "SUCCEEDED")
        assert again.runner.submitted == [j.id for j in jobs]
        # Closed at once only when the core has heard the last job end (else CLOSING).
        await again.step_ended(jobs[-1].id)
        closing = await again.sessions.close_session("alice", s.id)
        assert closing.state is SessionState.CLOSED
    finally:
        await again.close()


async def test_a_re_attached_session_job_runs_before_the_next_not_beside_it(
    store: SqliteStore,
) -> None:
    # A provider job re-attached at start ran outside the session's line: the session's next
    # job was submitted at once, beside it.
    remote = ScriptedRunner(slots=2, model=ExecutionModel.REMOTE)
    core = await build(store, runner=remote)
    s = await core.create()
    jobs = [await core.submit("alice", session_spec(s, f"j{i}")) for i in range(2)]
    await core.until("alice", jobs[0].id, "RUNNING")
    await core.close()
    again = ScriptedRunner(slots=2, model=ExecutionModel.REMOTE, remote=remote.remote)
    core2 = await build(store, clock=core.clock, runner=again)
    try:
        await asyncio.wait_for(again.started.wait(), 5)
        assert again.reattached == [jobs[0].id]
        # The next job waits in its session's line for the re-attached one, not in the queue.
        queue = core2.runtime.queue
        assert isinstance(queue, SessionQueue)
        assert jobs[1].id in queue._held
        assert again.submitted == []
        again.succeed(jobs[0].id)
        await core2.until("alice", jobs[0].id, "SUCCEEDED")
        await core2.until("alice", jobs[1].id, "RUNNING")
        assert again.submitted == [jobs[1].id]
    finally:
        await core2.close()


async def test_retried_create_returns_the_same_session_even_at_the_cap(
    store: SqliteStore,
) -> None:
    core = await build(store, limits=SessionLimits(max_sessions_per_tenant=1))
    try:
        first, created = await core.sessions.create("alice", "r1", NewSession("sim"))
        again, created_again = await core.sessions.create("alice", "r1", NewSession("sim"))
        assert created and not created_again and again.id == first.id
        with pytest.raises(GatewayError) as reused:
            await core.sessions.create("alice", "r1", NewSession("sim", mode=SessionMode.BATCH))
        assert reused.value.reason == "REQUEST_ID_REUSED"
    finally:
        await core.close()


async def test_a_request_id_names_its_session_for_the_dedup_window_only(
    store: SqliteStore,
) -> None:
    core = await build(store)
    try:
        first, _ = await core.sessions.create("alice", "r1", NewSession("sim"))
        await core.sessions.close_session("alice", first.id)
        core.clock.advance(REQUEST_ID_DEDUP_WINDOW_S)
        assert (await core.sessions.create("alice", "r1", NewSession("sim")))[0].id == first.id
        core.clock.advance(1)
        # As with SubmitJob: a week later the id is free, whatever the old request was.
        later, created = await core.sessions.create(
            "alice", "r1", NewSession("sim", mode=SessionMode.BATCH)
        )
        assert created and later.id != first.id and later.mode is SessionMode.BATCH
    finally:
        await core.close()


async def test_retried_create_returns_its_session_after_a_limit_was_lowered(
    store: SqliteStore,
) -> None:
    # The TTL was checked against the new limit before the request_id was looked up: the
    # retry of a request that had created its session got INVALID_SESSION.
    core = await build(store, limits=SessionLimits(max_ttl_s=600))
    first, _ = await core.sessions.create("alice", "r1", NewSession("sim", max_ttl_s=500))
    await core.close()
    again = await build(store, clock=core.clock, limits=SessionLimits(max_ttl_s=300))
    try:
        retry, created = await again.sessions.create(
            "alice", "r1", NewSession("sim", max_ttl_s=500)
        )
        assert not created and retry.id == first.id and retry.max_ttl_s == 500
        with pytest.raises(GatewayError) as reused:
            await again.sessions.create("alice", "r1", NewSession("sim", max_ttl_s=400))
        assert reused.value.reason == "REQUEST_ID_REUSED"
        with pytest.raises(GatewayError) as too_long:
            await again.sessions.create("alice", "r2", NewSession("sim", max_ttl_s=500))
        assert too_long.value.reason == "INVALID_SESSION"
    finally:
        await again.close()


async def test_a_retry_spelling_out_or_leaving_out_the_resolved_ttls_is_the_same_request(
    store: SqliteStore,
) -> None:
    core = await build(store, limits=SessionLimits(max_ttl_s=600, idle_ttl_s=60))
    first, _ = await core.sessions.create("alice", "r1", NewSession("sim"))
    spelled = NewSession("sim", SessionMode.DEDICATED, FailurePolicy.CONTINUE, 600, 60)
    assert (await core.sessions.create("alice", "r1", spelled))[0].id == first.id
    await core.close()
    # Defaults changed: an unset TTL still means the one the session got, not today's.
    again = await build(store, clock=core.clock, limits=SessionLimits(max_ttl_s=300))
    try:
        assert (await again.sessions.create("alice", "r1", NewSession("sim")))[0].id == first.id
        assert (await again.sessions.create("alice", "r1", spelled))[0].id == first.id
        with pytest.raises(GatewayError) as reused:
            await again.sessions.create("alice", "r1", NewSession("sim", idle_ttl_s=30))
        assert reused.value.reason == "REQUEST_ID_REUSED"
        assert reused.value.metadata == {"session": first.name, "requestId": "r1"}
    finally:
        await again.close()


async def test_a_retry_asking_for_other_labels_or_another_failure_policy_is_refused(
    store: SqliteStore,
) -> None:
    # Both are part of the request a request_id names: a retry that changed either got the
    # earlier session back, with labels or a policy the caller did not ask for.
    core = await build(store)
    try:
        asked = NewSession("sim", failure_policy=FailurePolicy.ABORT, labels={"team": "a"})
        first, _ = await core.sessions.create("alice", "r1", asked)
        assert (await core.sessions.create("alice", "r1", asked))[0].id == first.id
        for changed in (
            replace(asked, labels={"team": "b"}),
            replace(asked, labels={}),
            replace(asked, failure_policy=FailurePolicy.CONTINUE),
        ):
            with pytest.raises(GatewayError) as reused:
                await core.sessions.create("alice", "r1", changed)
            assert reused.value.reason == "REQUEST_ID_REUSED", changed
    finally:
        await core.close()


async def test_the_idle_ttl_never_exceeds_the_max_ttl_limit(store: SqliteStore) -> None:
    # The configured idle default above the max TTL limit is cut to the limit; asked for
    # explicitly above it, the request is refused like an over-long max TTL.
    core = await build(store, limits=SessionLimits(max_ttl_s=60, idle_ttl_s=300))
    try:
        defaulted = await core.create()
        assert (defaulted.max_ttl_s, defaulted.idle_ttl_s) == (60, 60)
        assert (await core.create(idle_ttl_s=60)).idle_ttl_s == 60
        with pytest.raises(GatewayError) as too_long:
            await core.create(idle_ttl_s=61)
        assert too_long.value.code is Code.INVALID_ARGUMENT
        assert too_long.value.reason == "INVALID_SESSION"
        assert too_long.value.metadata == {"field": "session.idle_ttl", "maxSeconds": "60"}
    finally:
        await core.close()


def _queued(job_id: str, created_at: timedelta, session: str = "") -> Job:
    return Job(
        id=job_id,
        tenant="alice",
        request_id="",
        backend="sim",
        placement="sim",
        state=JobState.QUEUED,
        created_at=T0 + created_at,
        num_pubs=1,
        seed=1,
        session=session,
    )


async def test_held_session_jobs_are_let_in_by_create_time_not_arrival() -> None:
    # Jobs can reach the queue out of create order (recovery, a job given back); the line
    # is ordered by create time, so the older one still runs first.
    queue = SessionQueue(MemoryQueue("sim", 3600, 30.0, Clock()))
    await queue.put(_queued("j1", timedelta(seconds=1), "s1"), None)
    await queue.put(_queued("j3", timedelta(seconds=3), "s1"), None)
    await queue.put(_queued("j2", timedelta(seconds=2), "s1"), None)
    order: list[str] = []
    while (claim := await queue.claim()) is not None:
        order.append(claim.job.id)
        await queue.done(claim)
    assert order == ["j1", "j2", "j3"]


async def test_jobs_outside_a_pinned_session_use_at_most_capacity_minus_the_pins() -> None:
    # Capacity 3 and one pinned session: two slots for everything else, even while the
    # pinned session's job is not claimed (its session halted for a moment), so its slot is
    # free the moment it goes on.
    queue = SessionQueue(MemoryQueue("sim", 3600, 30.0, Clock()))
    queue.capacity = lambda: 3
    queue.dedicated = lambda session: session == "s1"
    halted = {"s1"}
    queue.halted = lambda session: session in halted
    await queue.put(_queued("p1", timedelta(seconds=1), "s1"), None)
    for index in range(3):
        await queue.put(_queued(f"o{index}", timedelta(seconds=2 + index)), None)
    assert queue.pinned_by_tenant() == {"alice": 1}
    first, second = await queue.claim(), await queue.claim()
    assert first is not None and second is not None
    assert [first.job.id, second.job.id] == ["o0", "o1"]
    assert await queue.claim() is None
    halted.clear()
    await queue.resume("s1")  # what the core does when a session's end could not be saved
    assert await queue.depth() == 2  # o2, and the pinned session's job waiting to be claimed
    pinned = await queue.claim()
    assert pinned is not None and pinned.job.id == "p1"


async def test_a_held_jobs_position_counts_its_sessions_current_job_ahead_of_it() -> None:
    queue = SessionQueue(MemoryQueue("sim", 3600, 30.0, Clock()))
    await queue.put(_queued("j1", timedelta(seconds=1), "s1"), None)
    await queue.put(_queued("j2", timedelta(seconds=2), "s1"), None)
    await queue.put(_queued("j3", timedelta(seconds=3), "s1"), None)
    assert [await queue.position(j, "alice") for j in ("j1", "j2", "j3")] == [0, 1, 2]


async def test_cancelling_a_halted_dedicated_sessions_last_held_job_gives_up_its_pin() -> None:
    # An ending session's jobs are held, then cancelled: its line (and the slot it pins)
    # must go with the last of them, or the slot is lost to every tenant for good.
    queue = SessionQueue(MemoryQueue("sim", 3600, 30.0, Clock()))
    queue.capacity = lambda: 3
    queue.dedicated = lambda session: True
    queue.halted = lambda session: True
    await queue.put(_queued("p1", timedelta(seconds=1), "s1"), None)
    assert queue.pinned_by_tenant() == {"alice": 1} and queue.has_work("s1")
    assert await queue.remove("p1", "alice")
    assert queue.pinned_by_tenant() == {} and not queue.has_work("s1")


async def test_a_dedicated_session_keeps_one_slot_and_goes_first_while_it_has_work(
    store: SqliteStore,
) -> None:
    core = await build(store, slots=2)
    try:
        s = await core.create(mode=SessionMode.DEDICATED)
        mine = [await core.submit("alice", session_spec(s, f"s{i}")) for i in range(2)]
        await core.until("alice", mine[0].id, "RUNNING")
        theirs = [await core.submit("bob", spec("sim", f"b{i}")) for i in range(3)]
        await core.until("bob", theirs[0].id, "RUNNING")
        # Two slots: one is the session's, so Bob runs one job at a time beside it.
        assert core.runner.submitted == [mine[0].id, theirs[0].id]
        assert (await core.runtime.queue.claims_by_tenant()) == {"alice": 1, "bob": 1}
        core.runner.succeed(mine[0].id)
        # The session's next job takes its slot, ahead of Bob's waiting jobs.
        await core.until("alice", mine[1].id, "RUNNING")
        assert core.runner.submitted == [mine[0].id, theirs[0].id, mine[1].id]
        core.runner.succeed(mine[1].id)
        # No work left: the slot is free, and Bob's next job runs beside his first.
        await core.until("bob", theirs[1].id, "RUNNING")
        assert (await core.manager.get("bob", theirs[2].id)).state is JobState.QUEUED
        core.runner.succeed(theirs[0].id)
        await core.until("bob", theirs[2].id, "RUNNING")
    finally:
        await core.close()


async def test_one_tenant_pins_at_most_half_the_pinnable_slots(store: SqliteStore) -> None:
    # Four slots, three pinnable: Alice's three dedicated sessions held three of them (and
    # went first) for as long as she kept them busy, up to their max TTL.
    core = await build(store, slots=4)
    try:
        sessions = [await core.create(mode=SessionMode.DEDICATED) for _ in range(3)]
        for index, session in enumerate(sessions):
            await core.submit("alice", session_spec(session, f"s{index}"))
        queue = core.runtime.queue
        assert isinstance(queue, SessionQueue)
        assert queue.pinned_by_tenant() == {"alice": 1}
        bob = await core.create("bob", mode=SessionMode.DEDICATED)
        await core.submit("bob", session_spec(bob, "b"))
        assert queue.pinned_by_tenant() == {"alice": 1, "bob": 1}
    finally:
        await core.close()


async def test_a_batch_session_does_not_keep_a_slot(store: SqliteStore) -> None:
    core = await build(store, slots=2)
    try:
        s = await core.create(mode=SessionMode.BATCH)
        mine = [await core.submit("alice", session_spec(s, f"s{i}")) for i in range(2)]
        await core.until("alice", mine[0].id, "RUNNING")
        theirs = [await core.submit("bob", spec("sim", f"b{i}")) for i in range(2)]
        await core.until("bob", theirs[0].id, "RUNNING")
        queue = core.runtime.queue
        assert isinstance(queue, SessionQueue) and queue.pinned_by_tenant() == {}
        core.runner.succeed(mine[0].id)
        await core.until("alice", mine[0].id, "SUCCEEDED")
        # The session's next job and Bob's second share the freed slot by fair share: Bob
        # holds one claim and Alice none, so Alice's goes first; nothing is kept aside.
        await core.until("alice", mine[1].id, "RUNNING")
        assert (await core.runtime.queue.claims_by_tenant()) == {"alice": 1, "bob": 1}
        core.runner.succeed(theirs[0].id)
        await core.until("bob", theirs[1].id, "RUNNING")
    finally:
        await core.close()


async def test_jobs_of_a_session_that_ended_before_a_crash_never_run_after_it(
    store: SqliteStore,
) -> None:
    core = await build(store, slots=1)
    s = await core.create(failure_policy=FailurePolicy.ABORT)
    blocker = await core.submit("bob", spec("sim"))
    await core.until("bob", blocker.id, "RUNNING")
    jobs = [await core.submit("alice", session_spec(s)) for _ in range(2)]
    # The session failed and the gateway died before cancelling its jobs.
    ended = domain.end(s, SessionState.FAILED, EndReason.JOB_FAILED, core.clock())
    assert await store.save_session(ended) is not None
    await core.close()
    again = await build(store, slots=1, clock=core.clock)
    try:
        for job in jobs:
            await again.until("alice", job.id, "CANCELLED")
        await again.until("bob", blocker.id, "RUNNING")
        assert again.runner.submitted == [blocker.id]
    finally:
        await again.close()


async def test_a_session_job_given_back_keeps_the_queue_time_its_turn_started() -> None:
    # Given back (a breaker that said no, a refused key), it got a new full queue time each
    # time, and never expired while the backend stayed out.
    clock = Clock()
    queue = MemoryQueue("sim", 3600, 30.0, clock)
    job = Job(
        id="j1",
        tenant="alice",
        request_id="",
        backend="sim",
        placement="sim",
        state=JobState.QUEUED,
        created_at=T0 - timedelta(hours=5),  # held in its session's line until now
        num_pubs=1,
        seed=1,
        session="s1",
    )
    await queue.put(job, None)  # its turn: 3600 s from now
    claim = await queue.claim()
    assert claim is not None
    clock.advance(1000)
    await queue.release(claim)
    clock.advance(2599)
    assert await queue.take_expired() == []
    clock.advance(1)
    assert [j.id for j in await queue.take_expired()] == ["j1"]


async def test_a_session_created_after_its_caller_left_takes_jobs(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Found through a proxy resetting connections: the create committed after CreateSession's
    # caller went away, but the session was never opened in the core; its retry got it back,
    # and every job sent into it was cancelled right after SubmitJob answered.
    core = await build(store)
    try:
        held = HeldCall(store.create_session)
        monkeypatch.setattr(store, "create_session", held)
        new = NewSession(backend="sim")
        await caller_leaves_inside(core.sessions.create("alice", "req-1", new), held)
        session, created = await core.sessions.create("alice", "req-1", new)
        assert not created  # the retry gets the session the first call committed
        job = await core.submit("alice", session_spec(session))
        await core.until("alice", job.id, "RUNNING")
        core.runner.succeed(job.id)
        assert (await core.until("alice", job.id, "SUCCEEDED")).state is JobState.SUCCEEDED
    finally:
        await core.close()


async def _running_in_a_session(core: SessionsCore) -> tuple[Session, Job]:
    """A new session and its first job, RUNNING."""
    session = await core.create()
    first = await core.submit("alice", session_spec(session))
    return session, await core.until("alice", first.id, "RUNNING")


async def _save_whose_caller_leaves(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch, call: Any
) -> HeldCall:
    """Runs `call` until its session save is committing, then its caller leaves."""
    held = HeldCall(store.save_session)
    monkeypatch.setattr(store, "save_session", held)
    await caller_leaves_inside(call, held)
    return held


async def test_a_session_closed_after_its_caller_left_takes_no_more_jobs(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    core = await build(store)
    try:
        s, first = await _running_in_a_session(core)
        held = await _save_whose_caller_leaves(
            store, monkeypatch, core.sessions.close_session("alice", s.id)
        )
        await held.done.wait()  # what follows the commit runs on in the same task, at once
        monkeypatch.undo()
        stored = await store.get_session(s.id)
        assert stored is not None and stored.state is SessionState.CLOSING
        with pytest.raises(GatewayError) as refused:
            await core.submit("alice", session_spec(s))
        assert refused.value.reason == "SESSION_CLOSED"
        core.runner.succeed(first.id)
        closed = await core.session_until(s.id, SessionState.CLOSED)
        assert closed.end_reason is EndReason.CLOSED
    finally:
        await core.close()


async def test_a_session_cancelled_after_its_caller_left_cancels_its_jobs(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The session's end committed after CancelSession's caller left, but its jobs were
    # cancelled only by a caller still there: the running one ran on, the held one stayed
    # QUEUED for ever (an ended session's held jobs are never let in).
    core = await build(store)
    try:
        s, first = await _running_in_a_session(core)
        second = await core.submit("alice", session_spec(s))  # held behind the first
        await _save_whose_caller_leaves(
            store, monkeypatch, core.sessions.cancel_session("alice", s.id)
        )
        assert (await core.until("alice", first.id, "CANCELLED")).state is JobState.CANCELLED
        assert (await core.until("alice", second.id, "CANCELLED")).state is JobState.CANCELLED
        ended = await core.session_until(s.id, SessionState.CLOSED)
        assert ended.end_reason is EndReason.CANCELLED
    finally:
        await core.close()


async def test_a_closed_core_starts_nothing_for_changes_published_as_the_manager_closes(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The sessions close first, then the manager, whose steps' last writes are published
    # when they commit: the session hook started work on the closed core, still running
    # (and writing) after close returned, racing the store's close.
    core = await build(store)
    _, first = await _running_in_a_session(core)
    held = HeldCall(store.finish_job)
    monkeypatch.setattr(store, "finish_job", held)
    core.runner.succeed(first.id)
    await held.entered.wait()  # the job's end is being written
    closing = asyncio.ensure_future(core.close())
    async with asyncio.timeout(5):
        while not core.sessions._closed:  # the sessions close first, then the manager
            await asyncio.sleep(0)
    held.go.set()
    await closing
    assert [t for t in core.sessions._tasks if not t.done()] == []
    stored = await store.get_job(first.id)
    assert stored is not None and stored.state is JobState.SUCCEEDED  # written, all the same
