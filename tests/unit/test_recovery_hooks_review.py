"""Recovery at start publishes the transitions it commits (review finding): a local job
CANCELLING at the crash ends CANCELLED, a local RUNNING one is QUEUED again, and lifecycle hooks
(metrics, the transition log, sessions) and watchers hear of both, as of every other
transition (DESIGN.md: hooks "observe every transition without editing the core")."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field, replace
from datetime import timedelta

import pytest
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from prometheus_client import CollectorRegistry, generate_latest

from gateway.domain.jobs import Job, JobState
from gateway.domain.sessions import EndReason, Session, SessionState
from gateway.jobs.hooks import Transition
from gateway.store.sqlite import SqliteStore
from gateway.telemetry.metrics import GatewayMetrics
from tests.core_harness import Clock, ScriptedRunner, build_core, spec
from tests.unit.test_sessions import build as sessions_build
from tests.unit.test_sessions import session_spec

pytestmark = pytest.mark.anyio


async def _crashed_mid_run(store: SqliteStore) -> tuple[Job, Job, Clock]:
    """Two local jobs of a gateway that stopped without ending them: one RUNNING, one
    CANCELLING (a CancelJob accepted while its worker ran), as a crash leaves them."""
    first = await build_core(store, "memory", {"sim": ScriptedRunner(slots=0)})
    running = await first.submit("alice", spec("sim"))
    cancelling = await first.submit("alice", spec("sim"))
    await first.manager.close()
    # Written as the gone gateway's runner step and CancelJob did (its workers never ended
    # them): the store is what a crash leaves.
    clock = first.clock
    clock.advance(1)
    assert await store.mark_running(running.id, clock()) is not None
    assert await store.mark_running(cancelling.id, clock()) is not None
    assert await store.mark_cancelling(cancelling.id, clock()) is not None
    clock.advance(10)
    return running, cancelling, clock


def _finished(registry: CollectorRegistry, state: str) -> float:
    total = 0.0
    for line in generate_latest(registry).decode().splitlines():
        key, _, value = line.rpartition(" ")
        if key.startswith("qgateway_jobs_finished_total{") and f'state="{state}"' in key:
            total += float(value)
    return total


async def test_hooks_hear_of_the_jobs_recovery_cancels_and_requeues(store: SqliteStore) -> None:
    # Recovery changed both jobs in SQL and published nothing: hooks never heard the cancelled
    # job end (no jobs_finished, no transition log line) nor the running one go back to the
    # queue.
    running, cancelling, clock = await _crashed_mid_run(store)
    core = await build_core(store, "memory", {"sim": ScriptedRunner(slots=0)}, clock=clock)
    try:
        heard = {t.job.id: t for t in core.recorder.transitions}
        ended = heard[cancelling.id]
        assert (ended.job.state, ended.previous) == (JobState.CANCELLED, JobState.CANCELLING)
        assert ended.at == clock() and ended.job.ended_at == clock()
        queued = heard[running.id]
        assert (queued.job.state, queued.previous) == (JobState.QUEUED, JobState.RUNNING)
        # Each once: recovery publishes what it committed, nothing more.
        assert core.recorder.states(cancelling.id) == ["CANCELLED"]
        assert core.recorder.states(running.id) == ["QUEUED"]
        # What hooks heard is what the store holds.
        stored = await store.get_job(cancelling.id)
        assert stored is not None and stored.state is JobState.CANCELLED
    finally:
        await core.manager.close()


async def test_jobs_finished_counts_a_job_recovery_cancelled(store: SqliteStore) -> None:
    # The metrics hook, as the gateway registers it: a job whose cancel the restart completed
    # is a finished job like any other, and was missing from qgateway_jobs_finished_total.
    registry = CollectorRegistry()
    provider = MeterProvider(metric_readers=[PrometheusMetricReader(registry=registry)])
    metrics = GatewayMetrics(provider.get_meter("test"), 50)
    _, _, clock = await _crashed_mid_run(store)
    core = await build_core(
        store, "memory", {"sim": ScriptedRunner(slots=0)}, clock=clock, hooks=[metrics]
    )
    try:
        assert _finished(registry, "CANCELLED") == 1
        # The re-queued job has not finished (it runs again).
        assert sum(_finished(registry, s) for s in ("SUCCEEDED", "FAILED")) == 0
    finally:
        await core.manager.close()
        provider.shutdown()


async def test_a_recovered_job_whose_backend_is_gone_is_heard_requeued_then_failed(
    store: SqliteStore,
) -> None:
    # In order for the job: recovery's RUNNING -> QUEUED first, then its BACKEND_NOT_FOUND end
    # from QUEUED (hooks see a job's transitions in order).
    running, cancelling, clock = await _crashed_mid_run(store)
    core = await build_core(store, "memory", {"other": ScriptedRunner(slots=0)}, clock=clock)
    try:
        moves: list[Transition] = [t for t in core.recorder.transitions if t.job.id == running.id]
        assert [(t.previous, t.job.state) for t in moves] == [
            (JobState.RUNNING, JobState.QUEUED),
            (JobState.QUEUED, JobState.FAILED),
        ]
        assert core.recorder.states(cancelling.id) == ["CANCELLED"]
    finally:
        await core.manager.close()


async def test_a_restart_with_nothing_to_recover_publishes_nothing(store: SqliteStore) -> None:
    # A queued job is queued again as it was: no transition, none heard.
    first = await build_core(store, "memory", {"sim": ScriptedRunner(slots=0)})
    job = await first.submit("alice", spec("sim"))
    await first.manager.close()
    clock = first.clock
    clock.advance(timedelta(seconds=5).total_seconds())
    core = await build_core(store, "memory", {"sim": ScriptedRunner(slots=0)}, clock=clock)
    try:
        assert core.recorder.transitions == []
        stored = await store.get_job(job.id)
        assert stored is not None and stored.state is JobState.QUEUED
    finally:
        await core.manager.close()


# ---------------------------------------------------------------- the session core hears it


@dataclass
class _ClosingRunner(ScriptedRunner):
    """Records the provider sessions it is asked to close."""

    closed: list[str] = field(default_factory=list)

    async def close_session(self, session: Session) -> None:
        self.closed.append(session.id)


async def _closing_with_a_cancel_at_the_crash(
    store: SqliteStore, *, queued_after: bool
) -> tuple[Session, Job, Job | None, Clock]:
    """A CLOSING session (a provider session open) whose running job was CANCELLING when the
    gateway stopped, and (`queued_after`) a later job of it still queued."""
    core = await sessions_build(store, slots=1)
    s = await core.create()
    first = await core.submit("alice", session_spec(s, "first"))
    later = await core.submit("alice", session_spec(s, "later")) if queued_after else None
    await core.until("alice", first.id, "RUNNING")
    assert (await core.sessions.close_session("alice", s.id)).state is SessionState.CLOSING
    await core.close()
    # The crash: the accepted cancel's worker never ended the job.
    assert await store.mark_cancelling(first.id, core.clock()) is not None
    opened = await store.get_session(s.id)
    assert opened is not None
    assert await store.save_session(replace(opened, provider_session_id="p-1")) is not None
    core.clock.advance(5)
    return s, first, later, core.clock


async def test_a_closing_session_is_closed_once_when_recovery_cancels_its_last_job(
    store: SqliteStore,
) -> None:
    # The session core hears the recovered cancel (a job end) and, at load, settles CLOSING
    # sessions without work: both close it; the provider session is closed once.
    s, first, _, clock = await _closing_with_a_cancel_at_the_crash(store, queued_after=False)
    runner = _ClosingRunner(slots=1)
    again = await sessions_build(store, clock=clock, runner=runner)
    try:
        closed = await again.session_until(s.id, SessionState.CLOSED)
        assert closed.end_reason is EndReason.CLOSED
        assert again.recorder.states(first.id) == ["CANCELLED"]
        for _ in range(50):  # both paths (the hook's task, the load's settle) have run
            await asyncio.sleep(0)
        assert runner.closed == [s.id]
    finally:
        await again.close()


async def test_a_recovered_cancel_leaves_a_closing_session_with_queued_work_open(
    store: SqliteStore,
) -> None:
    # Heard before the session core loaded its jobs, the end must not close the session while
    # its later job waits in the queue (that job would then never run).
    s, first, later, clock = await _closing_with_a_cancel_at_the_crash(store, queued_after=True)
    assert later is not None
    again = await sessions_build(store, clock=clock, slots=1)
    try:
        await again.until("alice", later.id, "RUNNING")
        stored = await store.get_session(s.id)
        assert stored is not None and stored.state is SessionState.CLOSING
        again.runner.succeed(later.id)
        await again.until("alice", later.id, "SUCCEEDED")
        closed = await again.session_until(s.id, SessionState.CLOSED)
        assert closed.end_reason is EndReason.CLOSED
        assert again.recorder.states(first.id) == ["CANCELLED"]
    finally:
        await again.close()
