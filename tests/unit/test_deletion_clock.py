"""gateway.domain.deletion_clock: a sweep deletes (or ends) no further than the time that can
have passed, however far the wall clock is stepped ahead: the audit log's retention sweep (a
step deleted a year of the tamper-evident log) and sessions' TTLs included. The jobs' sweep:
tests/unit/test_retention_review.py.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from datetime import timedelta
from pathlib import Path

import pytest

from gateway.domain.deletion_clock import CATCH_UP, STEP_TOLERANCE, DeletionClock
from gateway.domain.sessions import EndReason, SessionState
from gateway.store.sqlite import SqliteStore
from tests.core_harness import T0, Clock
from tests.unit.test_audit_chain import _audit_log, _records
from tests.unit.test_sessions import build as build_sessions


def test_a_clock_moving_with_time_is_taken_as_it_is() -> None:
    clock = Clock()
    deletions = DeletionClock(clock, clock.monotonic)
    clock.advance(90 * 86400)
    assert deletions.now() == (clock.now, timedelta(0))


def test_a_step_is_lagged_and_caught_up_with_at_catch_up_times_real_time() -> None:
    clock = Clock()
    deletions = DeletionClock(clock, clock.monotonic)
    clock.step(timedelta(days=10))
    assert deletions.now() == (T0 + STEP_TOLERANCE, timedelta(days=10) - STEP_TOLERANCE)
    clock.advance(3600)
    bound = T0 + timedelta(hours=CATCH_UP) + STEP_TOLERANCE
    assert deletions.now() == (bound, clock.now - bound)
    clock.step(-timedelta(days=10))  # corrected: trusted again
    assert deletions.now() == (clock.now, timedelta(0))


def _kept(tmp_path: Path) -> int:
    conn = sqlite3.connect(tmp_path / "q.db")
    try:
        return int(conn.execute("SELECT count(*) FROM audit_records").fetchone()[0])
    finally:
        conn.close()


def test_the_audit_sweep_keeps_records_within_retention_when_the_clock_steps_ahead(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock(T0 + timedelta(minutes=1))  # the records are a minute old

    async def main() -> None:
        store = SqliteStore(tmp_path / "q.db")
        log = _audit_log(store, tmp_path, 86400.0, clock=clock, monotonic=clock.monotonic)
        await store.open()
        try:
            await store.append_audit(_records(3))
            clock.step(timedelta(days=400))
            with caplog.at_level(logging.WARNING, logger="gateway.security.audit_log"):
                await log._sweep()
            assert "a clock stepped forward?" in caplog.text
            assert _kept(tmp_path) == 3
            clock.step(-timedelta(days=400))
            clock.advance(2 * 86400)  # time passes: past retention now
            await log._sweep()
            assert _kept(tmp_path) == 0
        finally:
            await log.close()
            await store.close()

    asyncio.run(main())


@pytest.mark.anyio
async def test_sessions_do_not_end_by_ttl_when_the_clock_steps_ahead(
    store: SqliteStore, caplog: pytest.LogCaptureFixture
) -> None:
    # A TTL ends a session for good (its jobs cancelled, its provider session closed): a
    # clock stepped a day ahead ended every open session at the next sweep.
    clock = Clock()
    core = await build_sessions(store, clock=clock)
    try:
        idle = await core.create(idle_ttl_s=600.0, max_ttl_s=7200.0)
        clock.step(timedelta(days=1))
        with caplog.at_level(logging.WARNING, logger="gateway.jobs.sessions"):
            await core.sessions.expire_due()
        assert "a clock stepped forward?" in caplog.text
        assert (await core.sessions.get("alice", idle.id)).state is SessionState.PENDING
        clock.step(-timedelta(days=1))
        clock.advance(601)  # its idle TTL passes
        await core.sessions.expire_due()
        ended = await core.sessions.get("alice", idle.id)
        assert ended.state is SessionState.CLOSED and ended.end_reason is EndReason.IDLE_TTL
    finally:
        await core.close()
