"""SQLite store, issue 7 long-running behaviour: the table rebuild that allows CANCELLING as a
stored state, and result expiry as the job manager answers it. The behaviour every store shares
(state history, update time, CANCELLING, recovery) is in tests/contract/test_store_contract.py."""

from __future__ import annotations

import hashlib
import pathlib
import sqlite3
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import cast

import pytest

from gateway.api import codec
from gateway.domain.errors import NotFound
from gateway.domain.jobs import JobState, StateTransition
from gateway.jobs.manager import JobManager
from gateway.runtime.compiler import Compiler
from gateway.store.base import NewJob
from gateway.store.sqlite import MIGRATIONS, SqliteStore, _split_sql

pytestmark = pytest.mark.anyio

T0 = datetime(2026, 11, 2, 9, 30, 0, 123456, tzinfo=UTC)
SECOND = timedelta(seconds=1)


@pytest.fixture
def db_path(tmp_path: pathlib.Path) -> pathlib.Path:
    return tmp_path / "data" / "gateway.db"


@pytest.fixture
async def store(db_path: pathlib.Path) -> AsyncIterator[SqliteStore]:
    s = SqliteStore(db_path)
    await s.open()
    yield s
    await s.close()


def new_job(job_id: str | None = None, created_at: datetime = T0) -> NewJob:
    return NewJob(
        id=job_id or uuid.uuid4().hex,
        tenant="acme",
        request_id="",
        request_hash=hashlib.sha256(b"spec").digest(),
        backend="aer",
        spec=b"spec",
        num_pubs=1,
        seed=7,
        created_at=created_at,
    )


def _history(*entries: tuple[JobState, datetime]) -> tuple[StateTransition, ...]:
    return tuple(StateTransition(state, at) for state, at in entries)


# -- migration of a database written before issue 7 --------------------------------------------


def _old_database(path: pathlib.Path) -> None:
    """A database at schema version 2 (before CANCELLING), with jobs in several states, a
    result, and a deleted newest job (AUTOINCREMENT's high-water mark above every row)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    t0 = int((T0 - datetime(1970, 1, 1, tzinfo=UTC)) / timedelta(microseconds=1))
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute(
        "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)"
    )
    for migration in MIGRATIONS:
        if migration.version > 2:
            break
        for statement in _split_sql(migration.sql):
            conn.execute(statement)
        conn.execute("INSERT INTO schema_migrations VALUES (?, 'then')", (migration.version,))
    rows = [
        ("done", "SUCCEEDED", t0, t0 + 1_000_000, t0 + 2_000_000),
        ("running", "RUNNING", t0, t0 + 1_000_000, None),
        ("queued", "QUEUED", t0, None, None),
        ("gone", "QUEUED", t0, None, None),
    ]
    for job_id, state, created, started, ended in rows:
        conn.execute(
            "INSERT INTO jobs (id, tenant, request_hash, backend, state, spec, num_pubs, seed,"
            " created_at, started_at, ended_at) VALUES (?, 'acme', x'00', 'aer', ?, x'00', 1,"
            " '7', ?, ?, ?)",
            (job_id, state, created, started, ended),
        )
    conn.execute("INSERT INTO results (job_id, data, created_at) VALUES ('done', x'0102', 0)")
    conn.execute("DELETE FROM jobs WHERE id = 'gone'")
    conn.close()


async def test_migration_allows_cancelling_and_keeps_everything(db_path: pathlib.Path) -> None:
    _old_database(db_path)
    with sqlite3.connect(db_path) as conn:
        old_seq = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'jobs'").fetchone()
        with pytest.raises(sqlite3.IntegrityError):  # the old constraint refuses CANCELLING
            conn.execute("UPDATE jobs SET state = 'CANCELLING' WHERE id = 'running'")
    store = SqliteStore(db_path)
    await store.open()
    try:
        # Results survived the rebuild (dropping the old table did not cascade to them).
        assert await store.get_result("done") == b"\x01\x02"
        done = await store.get_job("done")
        assert done is not None
        assert done.state_history == _history(
            (JobState.QUEUED, T0),
            (JobState.RUNNING, T0 + SECOND),
            (JobState.SUCCEEDED, T0 + 2 * SECOND),
        )
        assert done.updated_at == T0 + 2 * SECOND
        running = await store.get_job("running")
        assert running is not None
        assert running.state_history == _history(
            (JobState.QUEUED, T0), (JobState.RUNNING, T0 + SECOND)
        )
        assert await store.mark_cancelling("running", T0 + 5 * SECOND) is not None
        # A seq is never reused, even that of the deleted newest job.
        fresh = await store.create_job(new_job("fresh"))
        assert fresh.created
    finally:
        await store.close()
    with sqlite3.connect(db_path) as conn:
        seqs = dict(conn.execute("SELECT id, seq FROM jobs").fetchall())
        assert seqs["fresh"] > old_seq[0]
        indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='index'")}
        assert {"jobs_tenant_seq", "jobs_state_seq"} <= indexes
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        # The foreign key still protects results: a result for no job is refused.
        conn.execute("PRAGMA foreign_keys = ON")
        with pytest.raises(sqlite3.IntegrityError):
            conn.execute("INSERT INTO results VALUES ('nobody', x'00', 0)")
        # And deleting a job still cascades to its result.
        conn.execute("DELETE FROM jobs WHERE id = 'done'")
        assert conn.execute("SELECT count(*) FROM results").fetchone()[0] == 0


async def test_migration_keeps_the_sequence_of_a_database_whose_jobs_were_all_deleted(
    db_path: pathlib.Path,
) -> None:
    # The rebuilt table copies no row, so SQLite starts no sequence for it: the old high-water
    # mark must be written back, or the next job would take a seq a deleted job had (and a
    # client's page token past it would skip the new job).
    _old_database(db_path)
    with sqlite3.connect(db_path) as conn:
        conn.execute("DELETE FROM results")
        conn.execute("DELETE FROM jobs")
        old_seq = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'jobs'").fetchone()[0]
    store = SqliteStore(db_path)
    await store.open()
    try:
        assert (await store.create_job(new_job("fresh"))).created
    finally:
        await store.close()
    with sqlite3.connect(db_path) as conn:
        seq = conn.execute("SELECT seq FROM jobs WHERE id = 'fresh'").fetchone()[0]
        names = [r[0] for r in conn.execute("SELECT name FROM sqlite_sequence")]
    assert seq == old_seq + 1
    assert names.count("jobs") == 1


# -- result expiry, as the job manager answers it -----------------------------------------------


async def test_an_expired_result_is_not_found_and_deleted(store: SqliteStore) -> None:
    manager = JobManager(store, {}, cast(Compiler, None), codec.STORED_FORMAT, prepare_threads=1)
    now = datetime.now(UTC)
    await store.create_job(new_job("old", created_at=now - timedelta(days=3)))
    await store.finish_job(
        "old",
        JobState.SUCCEEDED,
        ended_at=now - timedelta(days=2),
        result=b"old result",
        result_expires_at=now - timedelta(days=1),
    )
    await store.create_job(new_job("new", created_at=now))
    await store.finish_job(
        "new", JobState.SUCCEEDED, ended_at=now, result=b"new", result_expires_at=now + SECOND * 60
    )
    old = await manager.get("acme", "old")
    with pytest.raises(NotFound) as exc:
        await manager.result(old)
    assert exc.value.reason == "RESULT_EXPIRED"
    assert exc.value.metadata["job"] == "jobs/old"
    assert exc.value.metadata["expireTime"].endswith("Z")
    assert exc.value.resource_info is not None
    assert exc.value.resource_info.name == "jobs/old/result"
    # Deleted on the way (lazily: no sweep deletes results nobody asks for).
    assert await store.get_result("old") is None
    assert await manager.result(await manager.get("acme", "new")) == b"new"
