"""Provider sessions in the job core (issue 10): SessionCore asks a REMOTE runner to open the
provider's session before the session's first job is submitted (once per process), stores its
id, hands the stored id back after a restart, and closes it when the gateway session ends. A
real SQLite store, the in-memory queue, a scripted runner, a hand-moved clock."""

from __future__ import annotations

import asyncio
import dataclasses
import pickle
from dataclasses import dataclass, field

import pytest

from gateway.backends.base import PreparedJob
from gateway.backends.runner import ExecutionModel, RunHandle
from gateway.domain.errors import ExecutionError
from gateway.domain.failures import FailureKind
from gateway.domain.jobs import Job
from gateway.domain.sessions import EndReason, Session, SessionMode
from gateway.jobs.backend import BackendRuntime, BackendSettings
from gateway.jobs.manager import JobManager
from gateway.jobs.memory_queue import MemoryQueue
from gateway.jobs.sessions import NewSession, SessionCore, SessionLimits, SessionQueue
from gateway.runtime import shielded
from gateway.runtime.breaker import BreakerPolicy, CircuitBreaker
from gateway.store.sqlite import SqliteStore
from tests.core_harness import (
    Clock,
    DirectCompiler,
    EchoAdapter,
    PickleFormat,
    ScriptedRunner,
    context,
    spec,
)

pytestmark = pytest.mark.anyio


@dataclass
class SessionRunner(ScriptedRunner):
    """A provider with sessions of its own: ids "p-1", "p-2", ... for new ones."""

    model: ExecutionModel = ExecutionModel.REMOTE
    opened: list[tuple[str, str]] = field(default_factory=list)  # (session, id it was given)
    closed: list[tuple[str, str, EndReason | None]] = field(default_factory=list)
    # The provider session each submitted job was given (as the runner looked it up).
    sessions_of_jobs: dict[str, str] = field(default_factory=dict)
    refusals: int = 0
    known: dict[str, str] = field(default_factory=dict)  # gateway session -> provider id
    close_failures: int = 0  # closes that fail (the provider unreachable)

    async def open_session(self, session: Session) -> str | None:
        self.opened.append((session.id, session.provider_session_id))
        if self.refusals > 0:
            self.refusals -= 1
            raise ExecutionError("PROVIDER_ERROR", "key refused", kind=FailureKind.CREDENTIALS)
        provider_id = session.provider_session_id or f"p-{len(self.opened)}"
        self.known[session.id] = provider_id
        return provider_id

    async def close_session(self, session: Session) -> None:
        self.closed.append((session.id, session.provider_session_id, session.end_reason))
        if self.close_failures > 0:
            self.close_failures -= 1
            raise ExecutionError("PROVIDER_ERROR", "unreachable", kind=FailureKind.TRANSIENT)

    async def submit(self, prepared: PreparedJob, job: Job) -> RunHandle:
        self.sessions_of_jobs[job.id] = self.known.get(job.session, "")
        return await super().submit(prepared, job)


@dataclass
class Gateway:
    manager: JobManager
    sessions: SessionCore
    clock: Clock
    runner: SessionRunner

    async def submit(self, session_id: str) -> Job:
        self.clock.advance(0.001)
        job_spec = dataclasses.replace(spec("qpu"), session=session_id)
        outcome = await self.sessions.submit("alice", "", job_spec, pickle.dumps(job_spec), b"d")
        return outcome.job

    async def run(self, session_id: str) -> Job:
        """A job of the session, run to SUCCEEDED."""
        job = await self.submit(session_id)
        await self.until(job.id, "RUNNING")
        self.runner.succeed(job.id)
        done = await self.until(job.id, "SUCCEEDED")
        await self.step_ended(job.id)
        return done

    async def step_ended(self, job_id: str) -> None:
        """Waits (bounded) until the job's runner step has ended: its end published to the
        session core (its count of the session's work) and its claim ended (the session's line
        in the queue), so a CloseSession now closes the session at once. `until` may return
        before: WatchJob's first event is read from the store on a reader thread, which can
        see a commit before the writer thread's answer reaches the loop."""
        async with asyncio.timeout(5):
            while job_id in self.manager.backends["qpu"].running:
                await asyncio.sleep(0.001)

    async def until(self, job_id: str, state: str) -> Job:
        async with asyncio.timeout(5):
            async for event in self.manager.watch("alice", job_id, heartbeat_s=5):
                if event.job.state.value == state:
                    return event.job
        raise AssertionError(f"job {job_id} ended before {state}")

    async def close(self) -> None:
        await self.sessions.close()
        await self.manager.close()


async def start(store: SqliteStore, runner: SessionRunner, clock: Clock | None = None) -> Gateway:
    clock = clock or Clock()
    runtime = BackendRuntime(
        name="qpu",
        adapter=(adapter := EchoAdapter(context("qpu"))),
        info=adapter.info(),
        runner=runner,
        breaker=CircuitBreaker(
            BreakerPolicy(failure_threshold=1, cooldown_s=10),
            clock=lambda: clock.now.timestamp(),
        ),
        settings=BackendSettings(
            max_run_time_s=3600, max_queue_time_s=3600, health_interval_s=60, probe_timeout_s=5
        ),
        queue=SessionQueue(MemoryQueue("qpu", 3600, 30.0, clock)),
    )
    manager = JobManager(
        store, {"qpu": runtime}, DirectCompiler(), PickleFormat(), prepare_threads=1, clock=clock
    )
    sessions = SessionCore(
        store,
        manager,
        SessionLimits(),
        clock=clock,
        monotonic=clock.monotonic,
        provider_close_retry_s=0.001,
    )
    manager.hooks.add(sessions)
    await sessions.load_sessions()
    await manager.start(schedule=False)
    await sessions.load()
    manager.start_scheduling()
    return Gateway(manager, sessions, clock, runner)


async def test_opened_once_when_the_first_job_runs_reused_after_a_restart_closed_at_the_end(
    store: SqliteStore,
) -> None:
    runner = SessionRunner(slots=1)
    gw = await start(store, runner)
    session, _ = await gw.sessions.create("alice", "", NewSession(backend="qpu"))
    assert runner.opened == []  # nothing to open before a job runs
    first = await gw.submit(session.id)
    await gw.until(first.id, "RUNNING")
    runner.succeed(first.id)
    await gw.until(first.id, "SUCCEEDED")
    second = await gw.submit(session.id)
    await gw.until(second.id, "RUNNING")
    runner.succeed(second.id)
    await gw.until(second.id, "SUCCEEDED")
    assert runner.opened == [(session.id, "")]  # once, for the first job
    assert runner.sessions_of_jobs == {first.id: "p-1", second.id: "p-1"}
    assert (await gw.sessions.get("alice", session.id)).provider_session_id == "p-1"
    await gw.close()

    # After a restart the stored id is handed back (re-used, not a new provider session).
    again = SessionRunner(slots=1)
    gw2 = await start(store, again, gw.clock)
    try:
        third = await gw2.submit(session.id)
        await gw2.until(third.id, "RUNNING")
        again.succeed(third.id)
        await gw2.until(third.id, "SUCCEEDED")
        await gw2.step_ended(third.id)
        assert again.opened == [(session.id, "p-1")]
        assert again.sessions_of_jobs == {third.id: "p-1"}
        await gw2.sessions.close_session("alice", session.id)
        assert again.closed == [(session.id, "p-1", EndReason.CLOSED)]
    finally:
        await gw2.close()


async def test_cancel_closes_it_with_its_reason_and_a_refused_open_queues_the_job_again(
    store: SqliteStore,
) -> None:
    runner = SessionRunner(slots=1)
    runner.refusals = 1
    gw = await start(store, runner)
    try:
        session, _ = await gw.sessions.create(
            "alice", "", NewSession(backend="qpu", mode=SessionMode.BATCH)
        )
        job = await gw.submit(session.id)
        # The provider refused the key while opening: nothing submitted, the job queued again.
        async with asyncio.timeout(5):
            while len(runner.opened) < 1:
                await asyncio.sleep(0.005)
        queued = await gw.until(job.id, "QUEUED")
        assert runner.submitted == [] and queued.remote_id is None
        assert (await gw.sessions.get("alice", session.id)).provider_session_id == ""
        gw.clock.advance(10)  # the breaker's cool-down
        gw.manager.backends["qpu"].wake.set()
        await gw.until(job.id, "RUNNING")
        assert runner.opened == [(session.id, ""), (session.id, "")]
        assert runner.sessions_of_jobs == {job.id: "p-2"}
        await gw.sessions.cancel_session("alice", session.id)
        await gw.until(job.id, "CANCELLED")
        assert runner.closed == [(session.id, "p-2", EndReason.CANCELLED)]
    finally:
        await gw.close()


async def test_a_session_that_never_ran_a_job_is_not_closed_at_the_provider(
    store: SqliteStore,
) -> None:
    # No job went to the provider, so it holds no session for this one: asking it to close
    # one with an empty id is a call to a provider API for nothing (or an error it logs).
    runner = SessionRunner(slots=1)
    gw = await start(store, runner)
    try:
        session, _ = await gw.sessions.create("alice", "", NewSession(backend="qpu"))
        closed = await gw.sessions.close_session("alice", session.id)
        assert closed.state.is_final and closed.provider_session_id == ""
        assert runner.opened == [] and runner.closed == []
    finally:
        await gw.close()


async def test_a_job_the_provider_refused_makes_the_next_one_check_the_provider_session(
    store: SqliteStore,
) -> None:
    # The provider ended its session on its side (its own TTL, a console): each later job was
    # refused the same way until a restart, as the runner was asked only once per process.
    runner = SessionRunner(slots=1)
    gw = await start(store, runner)
    try:
        session, _ = await gw.sessions.create("alice", "", NewSession(backend="qpu"))
        await gw.run(session.id)
        real_submit = runner.submit

        async def refused(prepared: PreparedJob, job: Job) -> RunHandle:
            raise ExecutionError(
                "PROVIDER_REJECTED",
                "session is not accepting jobs",
                kind=FailureKind.CLIENT_ERROR,
            )

        runner.submit = refused  # type: ignore[method-assign]
        second = await gw.submit(session.id)
        failed = await gw.until(second.id, "FAILED")
        assert failed.error is not None and failed.error.reason == "PROVIDER_REJECTED"
        runner.submit = real_submit  # type: ignore[method-assign]
        third = await gw.submit(session.id)
        await gw.until(third.id, "RUNNING")
        # Asked again before the third job (it checks the provider session, or opens one).
        assert runner.opened == [(session.id, ""), (session.id, "p-1")]
        runner.succeed(third.id)
        await gw.until(third.id, "SUCCEEDED")
    finally:
        await gw.close()


async def test_a_provider_session_that_would_not_close_is_asked_again_until_it_closes(
    store: SqliteStore,
) -> None:
    # Asked once, its failure only logged: a DEDICATED session at the provider kept the
    # device (and its billed time) until the provider's own max TTL.
    runner = SessionRunner(slots=1, close_failures=2)
    gw = await start(store, runner)
    try:
        session, _ = await gw.sessions.create("alice", "", NewSession(backend="qpu"))
        await gw.run(session.id)
        closed = await gw.sessions.close_session("alice", session.id)
        assert closed.state.is_final  # the gateway session ends whatever the provider says
        async with asyncio.timeout(5):
            while len(runner.closed) < 3:
                await asyncio.sleep(0.005)
        await gw.sessions.close()  # nothing left to retry: no fourth ask
        assert runner.closed == [(session.id, "p-1", EndReason.CLOSED)] * 3
        assert runner.close_failures == 0
    finally:
        await gw.close()


@dataclass
class _SlowOpen(SessionRunner):
    """A provider whose session exists from the open's start (an IBM open runs on a thread,
    which goes on when its awaiting task is cancelled); the answer comes when `answer` is set."""

    provider_open: set[str] = field(default_factory=set)
    entered: asyncio.Event = field(default_factory=asyncio.Event)
    answer: asyncio.Event = field(default_factory=asyncio.Event)

    async def open_session(self, session: Session) -> str | None:
        self.opened.append((session.id, session.provider_session_id))
        if session.provider_session_id in self.provider_open:
            return session.provider_session_id
        provider_id = f"p-{len(self.opened)}"
        self.provider_open.add(provider_id)
        self.entered.set()
        await self.answer.wait()
        return provider_id

    async def close_session(self, session: Session) -> None:
        await super().close_session(session)
        self.provider_open.discard(session.provider_session_id)


async def test_a_provider_session_opened_as_the_gateway_stops_is_stored_and_closed_later(
    store: SqliteStore,
) -> None:
    # The stop cancelled the job's step while the provider opened its session: the open went
    # on at the provider, its id was never stored, the next start opened another, and the
    # first stayed open, known to nobody.
    runner = _SlowOpen(slots=1)
    gw = await start(store, runner)
    session, _ = await gw.sessions.create("alice", "", NewSession(backend="qpu"))
    job = await gw.submit(session.id)
    await asyncio.wait_for(runner.entered.wait(), 5)
    await gw.close()  # the stop cancels the job's step while the open is in flight
    runner.answer.set()
    await shielded.carried_on(5.0)  # as the server's stop does before the store closes
    stored = await store.get_session(session.id)
    assert stored is not None and stored.provider_session_id == "p-1"
    again = _SlowOpen(slots=1, provider_open=runner.provider_open)
    gw2 = await start(store, again, gw.clock)
    try:
        await gw2.until(job.id, "RUNNING")  # in the provider session already open
        again.succeed(job.id)
        await gw2.until(job.id, "SUCCEEDED")
        await gw2.step_ended(job.id)
        await gw2.sessions.close_session("alice", session.id)
        assert again.provider_open == set()  # closed at the provider: nothing left open
    finally:
        await gw2.close()


async def test_a_job_cancelled_while_its_provider_session_opens_never_reaches_the_provider(
    store: SqliteStore,
) -> None:
    runner = _SlowOpen(slots=1)
    gw = await start(store, runner)
    try:
        session, _ = await gw.sessions.create("alice", "", NewSession(backend="qpu"))
        job = await gw.submit(session.id)
        await asyncio.wait_for(runner.entered.wait(), 5)
        cancelling = await gw.manager.cancel("alice", job.id)
        assert cancelling.state.value == "CANCELLING"
        runner.answer.set()
        ended = await gw.until(job.id, "CANCELLED")
        assert runner.submitted == [] and ended.remote_id is None
    finally:
        await gw.close()
