"""Retention, expiry and store-maintenance review (a production operator and a hostile tenant).

In process: a real SQLite store in tmp_path, the job core of tests/core_harness.py with a
hand-moved clock, and the retention sweep (gateway.jobs.retention_sweep) called directly.
Each test names a problem found in review (each fixed since).
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
from datetime import timedelta

import pytest

from gateway.domain.deletion_clock import STEP_TOLERANCE
from gateway.domain.errors import NotFound
from gateway.domain.jobs import JobState
from gateway.jobs.retention_sweep import SWEEP_BATCH, RetentionSweep, Swept
from gateway.store.base import NewJob
from gateway.store.sqlite import SWEEP_TRANSACTION_BYTES, SqliteStore
from tests.core_harness import T0, Clock, HeldCall, ScriptedRunner, build_core, spec

pytestmark = pytest.mark.anyio

MIB = 1 << 20


# Fixed: a forward step of the wall clock (a bad NTP source, a VM resumed with a wrong RTC)
# made the next retention sweep delete every result and every job, irrevocably: the sweep took
# the clock as is. Now it deletes no further than the clock at start plus twice the time
# elapsed since, plus a minute (gateway.domain.deletion_clock).
async def test_a_clock_stepped_forward_does_not_make_the_sweep_delete_everything(
    store: SqliteStore, caplog: pytest.LogCaptureFixture
) -> None:
    runner = ScriptedRunner(slots=1)
    core = await build_core(store, "memory", {"sim": runner})
    try:
        job = await core.submit("alice", spec("sim"))
        await runner.started.wait()
        runner.succeed(job.id)
        done = await core.until("alice", job.id, "SUCCEEDED")
        # The clock steps a year ahead for one sweep, then is corrected.
        core.clock.step(timedelta(days=365))
        with caplog.at_level(logging.WARNING, logger="gateway.jobs.retention_sweep"):
            assert await core.manager.retention_sweep.sweep() == Swept()
        assert "a clock stepped forward?" in caplog.text
        core.clock.step(-timedelta(days=365))
        core.clock.advance(600)
        assert await store.get_job(done.id) is not None, "a job ten minutes old was deleted"
        assert await store.get_result(done.id) is not None, "its result (kept 30 days) too"
        # Time passing is not a step: 31 days on, the result is deleted, the job kept.
        core.clock.advance(31 * 86400)
        assert await core.manager.retention_sweep.sweep() == Swept(results=1)
        assert await store.get_result(done.id) is None
        assert await store.get_job(done.id) is not None
    finally:
        await core.manager.close()


async def test_a_clock_that_stays_stepped_is_caught_up_with_at_twice_real_time(
    store: SqliteStore,
) -> None:
    clock = Clock()
    sweep = RetentionSweep(store, clock, job_retention_s=3600.0, monotonic=clock.monotonic)
    clock.step(timedelta(days=2))
    assert sweep.now() == T0 + STEP_TOLERANCE
    clock.advance(3600)  # an hour passes: the sweep's now moves two
    assert sweep.now() == T0 + timedelta(hours=2) + STEP_TOLERANCE
    clock.advance(86400)  # the gap closes at real time: 23 hours left, less the tolerance
    assert clock.now - sweep.now() == timedelta(hours=23) - STEP_TOLERANCE
    clock.advance(86400)  # caught up with
    assert sweep.now() == clock.now


# Fixed: a GetJobResult/StreamJobResult that checked expiry just before the result's
# expire_time and read it after the sweep deleted it answered RESULT_NOT_FOUND ("job has no
# result") for a SUCCEEDED job instead of RESULT_EXPIRED (JobManager.result/result_within now
# check the expiry again when the row is missing).
async def test_a_result_swept_between_the_expiry_check_and_the_read_is_expired(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    runner = ScriptedRunner(slots=1)
    core = await build_core(store, "memory", {"sim": runner})
    try:
        job = await core.submit("alice", spec("sim"))
        await runner.started.wait()
        runner.succeed(job.id)
        done = await core.until("alice", job.id, "SUCCEEDED")
        assert done.expire_at is not None
        # Not in the process's recent results (another replica, or evicted): read from disk.
        monkeypatch.setattr(core.manager._recent_results, "get", lambda _job_id: None)
        held = HeldCall(store.get_result)
        monkeypatch.setattr(store, "get_result", held)
        core.clock.now = done.expire_at - timedelta(milliseconds=1)
        read = asyncio.ensure_future(core.manager.result(done))
        await held.entered.wait()  # expiry checked: still kept
        core.clock.now = done.expire_at
        await core.manager.retention_sweep.sweep()  # deletes it meanwhile
        held.go.set()
        with pytest.raises(NotFound) as refused:
            await read
        assert refused.value.reason == "RESULT_EXPIRED"
    finally:
        await core.manager.close()


def _free_bytes(conn: sqlite3.Connection) -> int:
    pages = int(conn.execute("PRAGMA freelist_count").fetchone()[0])
    return pages * int(conn.execute("PRAGMA page_size").fetchone()[0])


# What one sweep transaction may free: the writer thread holds every submission, cancel and
# state change of every tenant meanwhile (deleting a blob reads each of its overflow pages);
# with a few pages of the tables' own.
SWEEP_TRANSACTION_BUDGET = SWEEP_TRANSACTION_BYTES + 64 * 1024


# Fixed: the sweep's batches were bounded by row count only (SWEEP_BATCH = 1000): one
# transaction could free 1000 results of max_result_mb or 1000 specs of max_request_bytes,
# holding the store's writer (every tenant's submissions) for minutes; a tenant filling
# results of a few MiB built such a backlog itself.
async def test_one_sweep_transaction_frees_a_bounded_number_of_bytes(tmp_path) -> None:  # type: ignore[no-untyped-def]
    db = tmp_path / "sweep.db"
    store = SqliteStore(db)
    await store.open()
    try:
        blob = os.urandom(MIB)
        for i in range(24):  # 24 MiB of results, far below SWEEP_BATCH rows
            new = NewJob(
                id=f"j{i:03d}",
                tenant="hostile",
                request_id="",
                request_hash=b"h",
                backend="sim",
                spec=b"s",
                num_pubs=1,
                seed=1,
                created_at=T0,
            )
            await store.create_job(new)
            await store.finish_job(
                new.id,
                JobState.SUCCEEDED,
                ended_at=T0,
                result=blob,
                result_expires_at=T0 + timedelta(days=30),
            )
        conn = sqlite3.connect(db)
        freed: list[int] = []
        call = store._call

        async def counted(*args, **kwargs):  # type: ignore[no-untyped-def]
            # Each store call is one transaction on the writer thread.
            before = _free_bytes(conn)
            answer = await call(*args, **kwargs)
            freed.append(_free_bytes(conn) - before)
            return answer

        store._call = counted  # type: ignore[method-assign]
        sweep = RetentionSweep(store, Clock(T0 + timedelta(days=31)), job_retention_s=90 * 86400)
        swept = await sweep.sweep()
        conn.close()
        assert swept.results == 24 and SWEEP_BATCH > 24
        assert max(freed) <= SWEEP_TRANSACTION_BUDGET, f"one transaction freed {max(freed)} bytes"
    finally:
        await store.close()
