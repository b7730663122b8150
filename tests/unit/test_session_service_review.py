"""Hostile review of the session service (gateway/jobs/sessions.py): a store error cancelling
one of a session's jobs was hidden (the job stayed QUEUED in no queue), one recording its first
job lost its max TTL, one closing it left it CLOSING; a session past its TTL took jobs and
counted against the cap until the sweep ran; a session on a removed backend answered
SESSIONS_UNAVAILABLE."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import replace
from typing import Any

import pytest

from gateway.domain import sessions as domain
from gateway.domain.errors import Code, GatewayError, StoreUnavailable
from gateway.domain.jobs import JobState
from gateway.domain.sessions import FailurePolicy, Session, SessionMode, SessionState
from gateway.jobs import sessions as sessions_module
from gateway.jobs.sessions import SessionLimits
from gateway.store.sqlite import SqliteStore
from tests.core_harness import T0, spec
from tests.unit.test_sessions import SessionsCore, build, session_spec

pytestmark = pytest.mark.anyio


def _fail_once_for(store: SqliteStore, job_id: str, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """store.finish_job fails once, STORE_UNAVAILABLE (a full disk, a lock held past
    busy_timeout), for `job_id`; every other call is the real one."""
    real = store.finish_job
    left = [1]

    async def flaky(finished_id: str, *args: Any, **kwargs: Any) -> Any:
        if finished_id == job_id and left[0]:
            left[0] -= 1
            raise StoreUnavailable("STORE_UNAVAILABLE", "injected: the store cannot write now")
        return await real(finished_id, *args, **kwargs)

    monkeypatch.setattr(store, "finish_job", flaky)
    return left


def _save_fails_once(
    store: SqliteStore, state: SessionState, monkeypatch: pytest.MonkeyPatch
) -> list[int]:
    """store.save_session fails once, STORE_UNAVAILABLE, for a session saved in `state`."""
    real = store.save_session
    left = [1]

    async def flaky(session: Session) -> Session | None:
        if session.state is state and left[0]:
            left[0] -= 1
            raise StoreUnavailable("STORE_UNAVAILABLE", "injected: the store cannot write now")
        return await real(session)

    monkeypatch.setattr(store, "save_session", flaky)
    return left


async def _eventually_cancelled(core: SessionsCore, job_id: str) -> JobState:
    """The job's state once it is CANCELLED, or as it is after 2 s (bounded)."""
    try:
        async with asyncio.timeout(2):
            while True:
                job = await core.manager.get("alice", job_id)
                if job.state is JobState.CANCELLED:
                    return job.state
                await asyncio.sleep(0.01)
    except TimeoutError:
        return (await core.manager.get("alice", job_id)).state


# --- 1. CancelSession answers success while a job it failed to cancel stays QUEUED for ever --


async def test_cancel_session_does_not_hide_a_job_it_could_not_cancel(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    core = await build(store)
    try:
        s = await core.create()
        running = await core.submit("alice", session_spec(s, "a"))
        held = await core.submit("alice", session_spec(s, "b"))
        await core.until("alice", running.id, "RUNNING")
        left = _fail_once_for(store, held.id, monkeypatch)
        try:
            await core.sessions.cancel_session("alice", s.id)
        except GatewayError:
            # Told: the README's remedy is a repeated CancelSession.
            await core.sessions.cancel_session("alice", s.id)
        assert left == [0]  # the failure was injected
        assert await _eventually_cancelled(core, held.id) is JobState.CANCELLED
    finally:
        await core.close()


async def test_a_max_ttl_end_cancels_every_job_despite_one_store_error(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sessions_module, "SWEEP_RETRY_S", 0.01)
    core = await build(store)
    try:
        s = await core.create(idle_ttl_s=10.0, max_ttl_s=20.0)
        running = await core.submit("alice", session_spec(s, "a"))
        held = await core.submit("alice", session_spec(s, "b"))
        await core.until("alice", running.id, "RUNNING")
        left = _fail_once_for(store, held.id, monkeypatch)
        core.clock.advance(30)
        try:
            await core.sessions.expire_due()
        except GatewayError:
            await core.sessions.expire_due()  # the timer sweeps again after a failed sweep
        ended = await core.sessions.get("alice", s.id)
        assert ended.state is SessionState.CLOSED
        # Its jobs are cancelled in a task, retried after the injected failure.
        assert await _eventually_cancelled(core, held.id) is JobState.CANCELLED
        assert left == [0]
    finally:
        await core.close()


# --- 2. Admission and the cap read the stored state, not the TTL: an expired session lives on --


async def test_a_session_past_its_idle_ttl_takes_no_job(store: SqliteStore) -> None:
    core = await build(store)
    try:
        s = await core.create(idle_ttl_s=10.0, max_ttl_s=100.0)
        core.clock.advance(11)  # idle past its TTL; the sweep has not run yet
        with pytest.raises(GatewayError) as refused:
            await core.submit("alice", session_spec(s))
        assert refused.value.reason == "SESSION_CLOSED"
    finally:
        await core.close()


async def test_an_expired_session_does_not_count_against_the_cap(store: SqliteStore) -> None:
    core = await build(store, limits=SessionLimits(max_sessions_per_tenant=1))
    try:
        await core.create(idle_ttl_s=10.0)
        core.clock.advance(11)
        await core.create()  # SESSION_LIMIT_REACHED today
    finally:
        await core.close()


# --- 3. A session on a backend since removed answers SESSIONS_UNAVAILABLE -----------------------


async def test_a_session_on_a_removed_backend_answers_backend_not_found(
    store: SqliteStore,
) -> None:
    gone = Session(
        id="a" * 32,
        tenant="alice",
        backend="gone",
        mode=SessionMode.DEDICATED,
        state=SessionState.PENDING,
        failure_policy=FailurePolicy.CONTINUE,
        max_ttl_s=100.0,
        idle_ttl_s=50.0,
        created_at=T0,
    )
    # Created while backends/gone was configured; the gateway restarted without it.
    await store.create_session(gone, domain.request_digest(gone))
    core = await build(store)
    try:
        job_spec = replace(spec("gone"), session=gone.id)
        for call in (core.submit, core.sessions.check_accepts):
            with pytest.raises(GatewayError) as refused:
                await call("alice", job_spec)
            assert refused.value.code is Code.NOT_FOUND
            assert refused.value.reason == "BACKEND_NOT_FOUND"
    finally:
        await core.close()


# --- 4. One store error recording a session's first job leaves it without a max TTL -------------


async def test_a_store_error_recording_the_first_job_does_not_lose_the_max_ttl(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sessions_module, "SWEEP_RETRY_S", 0.01)
    core = await build(store)
    try:
        s = await core.create(idle_ttl_s=10.0, max_ttl_s=20.0)
        left = _save_fails_once(store, SessionState.ACTIVE, monkeypatch)  # the first job's
        job = await core.submit("alice", session_spec(s))
        await core.until("alice", job.id, "RUNNING")
        assert left == [0]
        core.clock.advance(30)  # past the max TTL from the first job
        # Swept until it ends (bounded): a retried record may land meanwhile.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(2):
                while (await core.sessions.get("alice", s.id)).state is not SessionState.CLOSED:
                    await core.sessions.expire_due()
                    await asyncio.sleep(0.01)
        ended = await core.sessions.get("alice", s.id)
        assert ended.state is SessionState.CLOSED and ended.end_reason is domain.EndReason.MAX_TTL
        assert await _eventually_cancelled(core, job.id) is JobState.CANCELLED
    finally:
        await core.close()


# --- 5. A drained CLOSING session whose close could not be saved stays CLOSING until max TTL -----


async def test_a_drained_closing_session_closes_despite_one_store_error(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sessions_module, "SWEEP_RETRY_S", 0.01)
    core = await build(store)
    try:
        s = await core.create()
        job = await core.submit("alice", session_spec(s))
        await core.until("alice", job.id, "RUNNING")
        assert (await core.sessions.close_session("alice", s.id)).state is SessionState.CLOSING
        left = _save_fails_once(store, SessionState.CLOSED, monkeypatch)  # the drain's end
        core.runner.succeed(job.id)
        await core.until("alice", job.id, "SUCCEEDED")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(2):
                while left != [0]:
                    await asyncio.sleep(0.01)
                # The caller's remedy, too: CloseSession again.
                while (await core.sessions.close_session("alice", s.id)).state is not (
                    SessionState.CLOSED
                ):
                    await asyncio.sleep(0.01)
        assert left == [0]
        closed = await core.sessions.get("alice", s.id)
        assert closed.state is SessionState.CLOSED
        assert closed.end_reason is domain.EndReason.CLOSED
    finally:
        await core.close()
