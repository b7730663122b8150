"""gateway.domain.deletion_clock: a sweep deletes no further than the time that can have passed,
however far the wall clock is stepped ahead; the audit log's retention sweep included (a step
deleted a year of the tamper-evident log). The jobs' sweep: tests/unit/test_retention_review.py.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from datetime import timedelta
from pathlib import Path

import pytest

from gateway.domain.deletion_clock import CATCH_UP, STEP_TOLERANCE, DeletionClock
from gateway.security.audit_log import AuditLog
from gateway.store.sqlite import SqliteStore
from tests.core_harness import T0, Clock
from tests.unit.test_audit_chain import KEY, _records


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


def _audit_log(store: SqliteStore, tmp_path: Path, clock: Clock) -> AuditLog:
    (tmp_path / "audit.key").write_bytes(KEY)
    return AuditLog(
        store,
        tmp_path / "audit.key",
        tmp_path / "audit-head.json",
        head_interval_s=3600.0,
        retention_s=86400.0,
        flush_interval_s=1.0,
        failure_window_s=60.0,
        max_failure_peers=100,
        clock=clock,
        monotonic=clock.monotonic,
    )


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
        log = _audit_log(store, tmp_path, clock)
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
