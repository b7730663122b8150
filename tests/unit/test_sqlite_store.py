"""SqliteStore against real SQLite files: durability settings, schema and migrations, group
commit, the claim queries' plans. What every store must do is in tests/contract/."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import os
import pathlib
import signal
import sqlite3
import subprocess
import sys
import threading
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import pytest

from gateway.domain.errors import InvalidArgument, Unavailable
from gateway.domain.jobs import ExecutionInfo, JobState
from gateway.domain.pricing import Cost, Totals, Usage
from gateway.domain.sessions import FailurePolicy, Session, SessionMode, SessionState
from gateway.store import sqlite as sqlite_module
from gateway.store import sqlite_keys, sqlite_pages, sqlite_readers
from gateway.store.base import REQUEST_ID_DEDUP_WINDOW_S, NewJob
from gateway.store.sqlite import (
    LATEST_SCHEMA_VERSION,
    MIGRATIONS,
    SqliteStore,
    StoreInUse,
    _split_sql,
)

pytestmark = pytest.mark.anyio

T0 = datetime(2026, 11, 2, 9, 30, 0, 123456, tzinfo=UTC)
REPO = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture
def db_path(tmp_path: pathlib.Path) -> pathlib.Path:
    # Two levels that do not exist yet: open() must create them.
    return tmp_path / "data" / "state" / "gateway.db"


@pytest.fixture
async def store(db_path: pathlib.Path) -> AsyncIterator[SqliteStore]:
    s = SqliteStore(db_path)
    await s.open()
    yield s
    await s.close()


def new_job(
    *,
    tenant: str = "acme",
    request_id: str = "",
    payload: bytes = b"spec",
    backend: str = "aer",
    seed: int = 7,
    created_at: datetime = T0,
    job_id: str | None = None,
) -> NewJob:
    return NewJob(
        id=job_id or uuid.uuid4().hex,
        tenant=tenant,
        request_id=request_id,
        request_hash=hashlib.sha256(payload).digest(),
        backend=backend,
        spec=payload,
        num_pubs=2,
        seed=seed,
        created_at=created_at,
    )


def count_rows(path: pathlib.Path, table: str = "jobs") -> int:
    with sqlite3.connect(path) as conn:
        return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


class WriterGate:
    """Holds the writer thread inside one operation so that what is queued meanwhile forms
    the next batch, deterministically."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.release = threading.Event()

    def op(self, conn: sqlite3.Connection) -> None:
        self.started.set()
        self.release.wait(10)


# -- durability and schema --------------------------------------------------------------------


async def test_durability_pragmas(store: SqliteStore, db_path: pathlib.Path) -> None:
    # The store's own connection: synchronous is per connection, so this is the one that counts.
    settings = await store.settings()
    assert settings["journal_mode"] == "wal"
    assert settings["synchronous"] == 2  # FULL
    assert settings["foreign_keys"] == 1

    # WAL is a property of the file: an independent connection must see it too.
    with sqlite3.connect(db_path) as other:
        assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        # A fresh connection's own synchronous (the build's default for WAL); not the store's.
        assert other.execute("PRAGMA synchronous").fetchone()[0] == 2
    # And the file header records it (bytes 18/19 == 2 mean WAL).
    header = db_path.read_bytes()[:20]
    assert header[18] == 2 and header[19] == 2


async def test_the_wal_shrinks_back_after_a_large_write(
    db_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # SQLite reuses the WAL from its start after a checkpoint but keeps its file at the
    # high-water mark unless journal_size_limit says otherwise (one 64 MiB result: 64 MiB of
    # WAL for the life of the process).
    monkeypatch.setattr(sqlite_module, "WAL_SIZE_LIMIT_BYTES", 1 << 20)
    store = SqliteStore(db_path)
    await store.open()
    try:
        await store.create_job(new_job(job_id="big", payload=os.urandom(8 << 20)))
        wal = db_path.with_name(db_path.name + "-wal")
        assert wal.stat().st_size > 8 << 20  # checkpointed at that commit, still that large
        await store.create_job(new_job(job_id="small"))  # the WAL restarts, truncated
        assert wal.stat().st_size <= 1 << 20
    finally:
        await store.close()


async def test_schema_version_recorded_and_reopen_is_idempotent(db_path: pathlib.Path) -> None:
    first = SqliteStore(db_path)
    await first.open()
    assert (await first.settings())["schema_version"] == LATEST_SCHEMA_VERSION
    await first.create_job(new_job(job_id="kept"))
    await first.close()
    with sqlite3.connect(db_path) as conn:
        before = conn.execute("SELECT version, applied_at FROM schema_migrations").fetchall()
    assert [v for v, _ in before] == list(range(1, LATEST_SCHEMA_VERSION + 1))

    for _ in range(2):
        again = SqliteStore(db_path)
        await again.open()
        assert await again.get_job("kept") is not None
        await again.close()
    with sqlite3.connect(db_path) as conn:
        after = conn.execute("SELECT version, applied_at FROM schema_migrations").fetchall()
    assert after == before


async def test_newer_schema_version_refuses_to_open(db_path: pathlib.Path) -> None:
    s = SqliteStore(db_path)
    await s.open()
    await s.close()
    with sqlite3.connect(db_path) as conn:
        conn.execute(
            "INSERT INTO schema_migrations VALUES (?, 'from the future')",
            (LATEST_SCHEMA_VERSION + 1,),
        )
    newer = SqliteStore(db_path)
    with pytest.raises(RuntimeError, match="newer"):
        await newer.open()
    with pytest.raises(RuntimeError):
        await newer.get_job("x")
    await newer.close()


async def test_lifecycle_errors(db_path: pathlib.Path) -> None:
    s = SqliteStore(db_path)
    with pytest.raises(RuntimeError, match="not open"):
        await s.get_job("x")
    await s.open()
    with pytest.raises(RuntimeError):
        await s.open()
    await s.close()
    await s.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        await s.create_job(new_job())


# -- durability --------------------------------------------------------------------------------


_CHILD = """
import asyncio, pathlib, sys
from datetime import UTC, datetime
from gateway.domain.jobs import JobState
from gateway.store.base import NewJob
from gateway.store.sqlite import SqliteStore

async def main() -> None:
    store = SqliteStore(pathlib.Path(sys.argv[1]))
    await store.open()
    now = datetime.now(UTC)
    outs = await asyncio.gather(*(
        store.create_job(NewJob(f"k{i}", "acme", f"r{i}", b"h", "aer", b"s", 1, i, now))
        for i in range(20)
    ))
    await store.mark_running("k0", now)
    await store.finish_job("k0", JobState.SUCCEEDED, ended_at=now, result=b"kept")
    print(" ".join(o.job.id for o in outs), flush=True)
    await asyncio.to_thread(sys.stdin.read)  # acknowledged; now wait to be killed

asyncio.run(main())
"""


async def test_acknowledged_jobs_survive_sigkill(db_path: pathlib.Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(db_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=REPO,
        env=env,
    )
    try:
        assert proc.stdout is not None
        with anyio.fail_after(30):
            line = await anyio.to_thread.run_sync(proc.stdout.readline)
        acked = line.decode().split()
        assert len(acked) == 20
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
        if proc.stdin:
            proc.stdin.close()
        if proc.stdout:
            proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL

    s = SqliteStore(db_path)
    await s.open()
    try:
        for job_id in acked:
            assert await s.get_job(job_id) is not None
        assert await s.get_result("k0") == b"kept"
    finally:
        await s.close()


# -- group commit ------------------------------------------------------------------------------


async def test_concurrent_creates_share_commits(store: SqliteStore, db_path: pathlib.Path) -> None:
    before = store.commits
    outs = await asyncio.gather(
        *(store.create_job(new_job(request_id=f"r{i}", payload=b"%d" % i)) for i in range(200))
    )
    assert all(o.created for o in outs)
    assert len({o.job.id for o in outs}) == 200
    assert count_rows(db_path) == 200
    used = store.commits - before
    assert 1 <= used < 200


async def _run_gated(
    store: SqliteStore, gate: WriterGate, *coros: Awaitable[object]
) -> list[object]:
    """Runs `coros` as one batch: queued while the writer is held, released together."""
    held = asyncio.ensure_future(store._call(gate.op))
    await anyio.to_thread.run_sync(gate.started.wait, 10)
    tasks = [asyncio.ensure_future(c) for c in coros]
    await asyncio.sleep(0)  # each task runs up to its enqueue
    gate.release.set()
    await held
    return list(await asyncio.gather(*tasks, return_exceptions=True))


def _hold_blob_reads(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> tuple[threading.Semaphore, threading.Event]:
    """Every blob read, once on its thread, signals the semaphore and waits for the event."""
    started, release = threading.Semaphore(0), threading.Event()
    blobs = store._blobs
    assert blobs is not None
    read = blobs._run

    def held(fn: Callable[[sqlite3.Connection], Any]) -> Any:
        started.release()
        release.wait(30)
        return read(fn)

    monkeypatch.setattr(blobs, "_run", held)
    return started, release


async def test_large_reads_do_not_hold_the_writer(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Specs and results are read on threads of their own: while a result read is held (as a
    150 MB one is), other operations, writes included, go on; on the writer thread they
    waited for it (another tenant's GetJob took 1.2 s instead of 3 ms)."""
    job = (await store.create_job(new_job(payload=b"the spec"))).job
    await store.finish_job(job.id, JobState.SUCCEEDED, ended_at=T0, result=b"the result")
    started, release = _hold_blob_reads(store, monkeypatch)
    reading = asyncio.ensure_future(store.get_result(job.id))
    try:
        assert await asyncio.to_thread(started.acquire, True, 30)
        other = (await store.create_job(new_job(tenant="other"))).job
        assert (await store.get_job(other.id)) == other
        assert not reading.done()
    finally:
        release.set()
    assert await reading == b"the result"
    monkeypatch.undo()
    assert await store.get_spec(job.id) == b"the spec"
    assert await store.get_spec("absent") is None and await store.get_result("absent") is None
    assert await store.get_result_within(job.id, 4) == (10, None)
    assert await store.get_result_within(job.id, 10) == (10, b"the result")


async def test_reads_asked_for_before_close_are_answered(
    db_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """close() runs every operation already asked for, the blob readers' too: reads queued
    behind the two threads were cancelled (CancelledError) by a close meanwhile."""
    store = SqliteStore(db_path)
    await store.open()
    job = (await store.create_job(new_job(payload=b"the spec"))).job
    started, release = _hold_blob_reads(store, monkeypatch)
    reads = [asyncio.ensure_future(store.get_spec(job.id)) for _ in range(4)]
    for _ in range(sqlite_readers.BLOB_READ_THREADS):  # both threads busy, two reads queued
        assert await asyncio.to_thread(started.acquire, True, 30)
    closing = asyncio.ensure_future(store.close())
    await asyncio.sleep(0)
    release.set()
    await closing
    assert await asyncio.gather(*reads) == [b"the spec"] * 4
    with pytest.raises(RuntimeError):
        await store.get_spec(job.id)


async def test_failing_operation_does_not_fail_its_batch(store: SqliteStore) -> None:
    existing = (await store.create_job(new_job(job_id="existing", request_id="r"))).job
    before = store.commits
    late = T0 + timedelta(seconds=REQUEST_ID_DEDUP_WINDOW_S + 1)
    results = await _run_gated(
        store,
        WriterGate(),
        store.create_job(new_job(job_id="a")),
        # Writes first (releases "r" from the old job), then fails on the duplicate id: the
        # savepoint must undo the release.
        store.create_job(new_job(job_id="existing", request_id="r", created_at=late)),
        store.create_job(new_job(request_id="r", payload=b"other")),  # REQUEST_ID_REUSED
        store.create_job(new_job(job_id="c")),
    )
    assert store.commits - before == 2  # the gate's batch, then all four together
    a, dup, reused, c = results
    assert isinstance(dup, sqlite3.IntegrityError)
    assert isinstance(reused, InvalidArgument) and reused.reason == "REQUEST_ID_REUSED"
    assert await store.get_job("a") == getattr(a, "job", None)
    assert await store.get_job("c") == getattr(c, "job", None)
    assert await store.get_job("existing") == existing  # request_id still "r"


async def test_a_full_disk_fails_writes_unavailable_and_reads_asked_for_meanwhile_answer(
    store: SqliteStore,
) -> None:
    # A full (or read-only) disk failed the whole batch's COMMIT: GetJobs batched beside a
    # write failed with it, and every failure was INTERNAL ("a gateway bug"), not retried.
    # Reads now run off the writer thread, never in a write's batch.
    kept = (await store.create_job(new_job(job_id="kept"))).job
    pages = await store._call(lambda c: c.execute("PRAGMA page_count").fetchone()[0])
    await store._call(lambda c: c.execute(f"PRAGMA max_page_count = {pages}").fetchone())
    big = new_job(job_id="big", payload=b"x" * (1 << 20))
    got, written, listed = await _run_gated(
        store,
        WriterGate(),
        store.get_job("kept"),
        store.create_job(big),
        store.list_jobs("acme"),
    )
    assert got == kept
    assert isinstance(written, Unavailable) and written.reason == "STORE_UNAVAILABLE"
    assert written.retry_after and written.metadata == {"sqliteError": "SQLITE_FULL"}
    assert [j.id for j in getattr(listed, "jobs", ())] == ["kept"]
    # Space back: the same submission is stored.
    await store._call(lambda c: c.execute("PRAGMA max_page_count = 1073741823").fetchone())
    assert (await store.create_job(big)).created


async def test_writes_the_store_cannot_begin_fail_unavailable_and_reads_still_answer(
    store: SqliteStore, db_path: pathlib.Path
) -> None:
    # BEGIN IMMEDIATE failing (here a lock held elsewhere past busy_timeout; a read-only
    # remount fails it too) failed every operation of the batch, reads included.
    kept = (await store.create_job(new_job(job_id="kept"))).job
    await store._call(lambda c: c.execute("PRAGMA busy_timeout = 50").fetchone())
    other = sqlite3.connect(db_path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        got, written = await asyncio.gather(
            store.get_job("kept"),
            store.create_job(new_job(job_id="late")),
            return_exceptions=True,
        )
    finally:
        other.close()
    assert got == kept
    assert isinstance(written, Unavailable) and written.reason == "STORE_UNAVAILABLE"
    assert written.metadata == {"sqliteError": "SQLITE_BUSY"}
    assert await store.get_job("late") is None


async def test_operation_that_aborts_the_transaction_fails_alone(store: SqliteStore) -> None:
    def abort(conn: sqlite3.Connection) -> None:
        conn.execute("UPDATE jobs SET tenant = 'hijacked'")
        conn.execute("ROLLBACK")  # what SQLite itself does on e.g. SQLITE_FULL or SQLITE_IOERR
        raise sqlite3.OperationalError("disk full (simulated)")

    before = store.commits
    a, bad, c = await _run_gated(
        store,
        WriterGate(),
        store.create_job(new_job(job_id="a")),
        store._call(abort),
        store.create_job(new_job(job_id="c")),
    )
    assert isinstance(bad, sqlite3.OperationalError)
    assert store.commits - before == 2  # the aborted attempt was retried, not committed
    assert await store.get_job("a") == getattr(a, "job", None)
    assert await store.get_job("c") == getattr(c, "job", None)
    assert (await store.list_jobs("hijacked")).jobs == []
    assert len((await store.list_jobs("acme")).jobs) == 2


# -- issue 8: remote ids and claims on an older database; the claim queries' plans -------------


def _database_at(path: pathlib.Path, version: int) -> None:
    """A database at schema `version`, as a gateway of that version left it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute(
        "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)"
    )
    for migration in MIGRATIONS:
        if migration.version > version:
            break
        for statement in _split_sql(migration.sql):
            conn.execute(statement)
        if migration.apply is not None:
            migration.apply(conn)
        conn.execute("INSERT INTO schema_migrations VALUES (?, 'then')", (migration.version,))
    conn.close()


async def test_migration_7_adds_remote_ids_and_claims_to_existing_jobs(
    db_path: pathlib.Path,
) -> None:
    _database_at(db_path, 6)
    t0 = (T0 - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)
    with sqlite3.connect(db_path) as conn:
        for job_id, state in [("queued", "QUEUED"), ("running", "RUNNING"), ("done", "FAILED")]:
            conn.execute(
                "INSERT INTO jobs (id, tenant, request_hash, backend, state, spec, num_pubs,"
                " seed, created_at, state_history) VALUES (?, 'acme', x'00', 'aer', ?, x'00', 1,"
                " '7', ?, '[]')",
                (job_id, state, t0),
            )
    store = SqliteStore(db_path)
    await store.open()
    try:
        assert (await store.settings())["schema_version"] == LATEST_SCHEMA_VERSION
        for job_id in ("queued", "running", "done"):
            job = await store.get_job(job_id)
            assert job is not None and job.remote_id is None
        # Existing jobs join the claim queue as they are.
        assert await store.queued_jobs("aer") == [("queued", "acme")]
        claimed = await store.claim_next("aer", "me", T0 + timedelta(seconds=30), T0)
        assert claimed is not None and claimed.id == "queued"
        recovered = await store.recover(T0)
        assert [(j.id, j.state) for j in recovered.jobs] == [
            ("queued", JobState.QUEUED),
            ("running", JobState.QUEUED),
        ]
    finally:
        await store.close()


async def test_migration_17_moves_specs_out_of_the_jobs_rows(db_path: pathlib.Path) -> None:
    """A spec inside its job's row made every listing walk its overflow pages to reach the
    columns after it: existing specs move to job_specs, whole, and leave with their jobs."""
    _database_at(db_path, 16)
    t0 = (T0 - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)
    big = os.urandom(3 << 20)
    with sqlite3.connect(db_path) as conn:
        for job_id, state, spec in [("big", "SUCCEEDED", big), ("small", "QUEUED", b"\x01")]:
            conn.execute(
                "INSERT INTO jobs (id, tenant, request_hash, backend, state, spec, num_pubs,"
                " seed, created_at, ended_at, state_history) VALUES (?, 'acme', x'00', 'aer',"
                " ?, ?, 1, '7', ?, ?, '[]')",
                (job_id, state, spec, t0, t0 if state == "SUCCEEDED" else None),
            )
    store = SqliteStore(db_path)
    await store.open()
    try:
        assert (await store.settings())["schema_version"] == LATEST_SCHEMA_VERSION
        assert await store.get_spec("big") == big
        assert await store.get_spec("small") == b"\x01"
        page = await store.list_jobs("acme", limit=10)
        assert sorted(j.id for j in page.jobs) == ["big", "small"]
        assert await store.delete_ended_jobs(T0 + timedelta(days=1), 10) == (1, 0)
        assert await store.get_spec("big") is None
    finally:
        await store.close()
    with sqlite3.connect(db_path) as conn:
        columns = [row[1] for row in conn.execute("PRAGMA table_info(jobs)")]
        assert "spec" not in columns and "num_pubs" in columns
        assert conn.execute("SELECT job_id FROM job_specs").fetchall() == [("small",)]


async def test_migration_17_waits_for_a_gateway_alone(
    db_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Older gateways sharing the database (queue = "store") read and write jobs.spec: a
    start beside them waits for a replica to apply the migration, and without one refuses
    it, changing nothing; alone, it migrates."""
    monkeypatch.setattr(sqlite_module, "PEER_MIGRATION_WAIT_S", 0.3)
    _database_at(db_path, 16)
    store = SqliteStore(db_path)
    asked: list[bool] = []

    def not_alone() -> bool:
        asked.append(False)
        return False

    with pytest.raises(StoreInUse, match="stop them all"):
        await store.open(alone=not_alone)
    assert asked == [False]
    with sqlite3.connect(db_path) as conn:
        assert conn.execute("SELECT max(version) FROM schema_migrations").fetchone() == (16,)
        assert "spec" in [row[1] for row in conn.execute("PRAGMA table_info(jobs)")]
    store = SqliteStore(db_path)
    await store.open()
    await store.close()
    store = SqliteStore(db_path)  # once migrated, replicas start beside each other again
    await store.open(alone=not_alone)
    assert asked == [False]  # and are not even asked
    try:
        assert (await store.settings())["schema_version"] == LATEST_SCHEMA_VERSION
    finally:
        await store.close()


async def test_replicas_starting_together_never_refuse_each_other(
    db_path: pathlib.Path,
) -> None:
    """From the review of the gate: replicas starting together on a new data directory each
    asked to be alone and both exited 2, since each held its lock beside the other. A new
    database has no older gateway to protect; on one to upgrade, a start that is not alone
    waits for a replica beside it to apply the migration."""
    first, second = SqliteStore(db_path), SqliteStore(db_path)
    await asyncio.gather(first.open(alone=lambda: False), second.open(alone=lambda: False))
    await asyncio.gather(first.close(), second.close())

    upgraded = db_path.with_name("upgraded.db")
    _database_at(upgraded, 16)
    asked = threading.Event()

    def not_alone() -> bool:
        asked.set()
        return False

    beside = SqliteStore(upgraded)
    waiting = asyncio.ensure_future(beside.open(alone=not_alone))
    assert await asyncio.to_thread(asked.wait, 30)
    alone = SqliteStore(upgraded)  # a replica of this version that was alone
    await alone.open()
    await waiting
    with sqlite3.connect(upgraded) as conn:
        assert conn.execute("SELECT max(version) FROM schema_migrations").fetchone() == (
            LATEST_SCHEMA_VERSION,
        )
    await asyncio.gather(alone.close(), beside.close())


async def test_migration_13_indexes_the_unrevoked_keys_of_existing_databases(
    db_path: pathlib.Path,
) -> None:
    _database_at(db_path, 12)
    with sqlite3.connect(db_path) as conn:
        conn.executemany(
            "INSERT INTO api_keys (prefix, tenant, sha256, role, created_at, revoked_at)"
            " VALUES (?, 'acme', ?, 'user', 0, ?)",
            [("aaaa0001", "0" * 64, None), ("aaaa0002", "0" * 64, 5)],
        )
    store = SqliteStore(db_path)
    await store.open()
    try:
        assert (await store.settings())["schema_version"] == LATEST_SCHEMA_VERSION
        page = await store.list_api_keys("acme", active_at=T0)
        assert [k.prefix for k in page.keys] == ["aaaa0001"]
    finally:
        await store.close()
    with sqlite3.connect(db_path) as conn:
        sql, params = sqlite_keys.list_sql("acme", active_at=T0, after=("acme", "a"), limit=5)
        plan = _plan(conn, sql, tuple(params))
        assert "INDEX api_keys_unrevoked (tenant=? AND prefix>?)" in plan, plan
        # Every tenant's keys, after a cursor: a range from it, not a scan from the first key.
        for active_at, index in ((T0, "api_keys_unrevoked"), (None, "api_keys_tenant")):
            sql, params = sqlite_keys.list_sql(
                None, active_at=active_at, after=("acme", "a"), limit=5
            )
            plan = _plan(conn, sql, tuple(params))
            assert f"SEARCH api_keys USING INDEX {index} ((tenant,prefix)>(?,?))" in plan, plan


def _plan(conn: sqlite3.Connection, sql: str, params: tuple[object, ...]) -> str:
    rows = conn.execute(f"EXPLAIN QUERY PLAN {sql}", params).fetchall()
    return " | ".join(str(r[3]) for r in rows)


async def test_claim_queries_use_their_indexes(store: SqliteStore, db_path: pathlib.Path) -> None:
    # Enough rows of other queues, tenants and states that a scan would be the planner's
    # choice only without a usable index.
    for i in range(200):
        await store.create_job(
            new_job(tenant=f"t{i % 7}", backend="aer" if i % 2 else "mps", created_at=T0)
        )
    with sqlite3.connect(db_path) as conn:
        conn.execute("ANALYZE")
        final = sqlite_module._FINAL_NAMES
        queries: list[tuple[str, tuple[object, ...], str]] = [
            (sqlite_module._LAPSED_SQL, ("aer", 0, *final), "jobs_claimed"),
            (sqlite_module._FIRST_HEAD_SQL, ("aer",), "jobs_waiting_by_tenant"),
            (sqlite_module._NEXT_HEAD_SQL, ("aer", "t1"), "jobs_waiting_by_tenant"),
            (sqlite_module._LIVE_CLAIMS_SQL, ("aer", 0), "jobs_claimed"),
            (sqlite_module._WAITING_SQL, ("aer",), "jobs_waiting"),
            (sqlite_module._EXPIRED_SQL, ("aer", 0), "jobs_waiting"),
            (sqlite_module._OLDEST_SQL, ("aer",), "jobs_waiting"),
            (sqlite_module._NEXT_EXPIRY_SQL, ("aer",), "jobs_claimed"),
            (sqlite_module._EXPIRED_RESULTS_SQL, (0, 10), "jobs_result_expiry"),
            (sqlite_module._EXPIRED_RESULTS_AFTER_SQL, (0, "a", 5, 10), "jobs_result_expiry"),
            (sqlite_module._ENDED_JOBS_SQL, (0, *final, 10), "jobs_ended"),
            (sqlite_module._ENDED_SESSIONS_SQL, (0, 10), "sessions_ended"),
        ]
        for sql, params, index in queries:
            plan = _plan(conn, sql, params)
            assert f"USING INDEX {index} " in plan or f"USING COVERING INDEX {index} " in plan, (
                sql,
                plan,
            )
            assert "SCAN jobs" not in plan.replace("SCAN jobs USING", ""), (sql, plan)


async def test_a_filtered_page_examines_a_bounded_window_and_pages_on(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A filter matching none of a tenant's million jobs scanned them all on the store's one
    # thread: every tenant's commits waited. A page examines at most LIST_SCAN_ROWS jobs and
    # may come back short, even empty, with a cursor past what it examined (AIP-158).
    from gateway.api.job_filter import parse_filter

    monkeypatch.setattr(sqlite_pages, "SCAN_ROWS", 4)
    backends = ["aer", "aer", "other", "aer", "aer", "aer", "other", "aer", "aer", "other"]
    for i, backend in enumerate(backends):  # newest last
        await store.create_job(
            new_job(backend=backend, job_id=f"j{i}", created_at=T0 + timedelta(seconds=i))
        )
    wanted = parse_filter('backend = "backends/other"')
    pages: list[list[str]] = []
    cursor = None
    while True:
        page = await store.list_jobs("acme", filter=wanted, after=cursor, limit=10)
        pages.append([j.id for j in page.jobs])
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    # Windows of 4 from the newest: j9-j6, j5-j2, j1-j0 (none there: an empty last page).
    assert pages == [["j9", "j6"], ["j2"], []]
    # Unfiltered and time-only pages are bounded by their limit alone: never short.
    page = await store.list_jobs("acme", limit=6)
    assert len(page.jobs) == 6 and page.next_cursor is not None
    before = parse_filter(f'create_time < "{(T0 + timedelta(seconds=8)).isoformat()}"')
    page = await store.list_jobs("acme", filter=before, limit=6)
    assert [j.id for j in page.jobs] == ["j7", "j6", "j5", "j4", "j3", "j2"]


# -- review: session totals are kept, not summed over the sessions' jobs ----------------------


def _insert_session(conn: sqlite3.Connection, session_id: str) -> None:
    conn.execute(
        "INSERT INTO sessions (id, tenant, request_hash, backend, mode, state, failure_policy,"
        " max_ttl_s, idle_ttl_s, created_at) VALUES (?, 'acme', x'00', 'aer', 'BATCH', 'CLOSED',"
        " 'ABORT', 60, 60, 0)",
        (session_id,),
    )


def _insert_session_job(
    conn: sqlite3.Connection,
    job_id: str,
    session_id: str,
    created_us: int,
    execution: ExecutionInfo | None,
) -> None:
    """A job of `session_id` as a gateway left it: final with its execution record, or
    queued without one."""
    state = "QUEUED" if execution is None else "SUCCEEDED"
    record = None if execution is None else sqlite_module._execution_to_json(execution)
    conn.execute(
        "INSERT INTO jobs (id, tenant, request_hash, backend, state, spec, num_pubs, seed,"
        " created_at, state_history, session_id, execution) VALUES (?, 'acme', x'00', 'aer', ?,"
        " x'00', 1, '7', ?, '[]', ?, ?)",
        (job_id, state, created_us, session_id, record),
    )


def _spent(shots: int, seconds: float, cost: Cost | None) -> ExecutionInfo:
    usage = Usage(shots=shots, execution_seconds=seconds)
    return ExecutionInfo(backend="aer", seed=7, usage=usage, cost=cost)


async def test_migration_14_backfills_session_totals_from_finished_jobs(
    db_path: pathlib.Path,
) -> None:
    # Before migration 14 totals were summed over the jobs on every read: the jobs finished
    # then must be in the kept totals, once, and later jobs add to them.
    _database_at(db_path, 13)
    with sqlite3.connect(db_path) as conn:
        for session_id in ("mixed", "queued-only", "empty"):
            _insert_session(conn, session_id)
        spent = [
            _spent(100, 0.5, Cost(0.25, "USD")),
            _spent(50, 0.25, Cost(2.0, "credits")),
            _spent(10, 1.0, Cost(0.5, "USD")),
            ExecutionInfo(backend="aer", seed=7),  # finished before usage was recorded
            None,  # still queued
        ]
        for i, execution in enumerate(spent):
            _insert_session_job(conn, f"m{i}", "mixed", i, execution)
        _insert_session_job(conn, "q", "queued-only", 0, None)
        # A job naming a session that is not stored: no totals row to fill, and no failure.
        _insert_session_job(conn, "o", "orphan", 0, _spent(1, 1.0, Cost(1.0, "USD")))
    store = SqliteStore(db_path)
    await store.open()
    try:
        assert (await store.settings())["schema_version"] == LATEST_SCHEMA_VERSION
        mixed = Totals(
            shots=160, execution_seconds=1.75, costs=(Cost(0.75, "USD"), Cost(2.0, "credits"))
        )
        totals = await store.session_totals(["mixed", "queued-only", "empty"])
        assert totals == {"mixed": mixed, "queued-only": Totals(), "empty": Totals()}
        # The queued job finishes now: added to what the migration found.
        done = await store.finish_job(
            "m4", JobState.SUCCEEDED, ended_at=T0, execution=_spent(5, 0.25, Cost(1.0, "EUR"))
        )
        assert done is not None
        after = await store.session_totals(["mixed"])
        assert after["mixed"] == Totals(
            shots=165,
            execution_seconds=2.0,
            costs=(Cost(1.0, "EUR"), Cost(0.75, "USD"), Cost(2.0, "credits")),
        )
    finally:
        await store.close()
    with sqlite3.connect(db_path) as conn:
        kept = conn.execute(
            "SELECT id, shots_total, execution_seconds_total FROM sessions ORDER BY id"
        ).fetchall()
        assert kept == [("empty", 0, 0.0), ("mixed", 165, 2.0), ("queued-only", 0, 0.0)]
        costs = conn.execute("SELECT session_id, unit, amount FROM session_costs").fetchall()
        assert sorted(costs) == [
            ("mixed", "EUR", 1.0),
            ("mixed", "USD", 0.75),
            ("mixed", "credits", 2.0),
        ]


async def test_session_totals_read_session_rows_and_never_their_jobs(
    db_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Summing every job's execution record on each GetSession/ListSessions took ~130 ms per
    # call at 100,000 jobs in one session, on the writer thread every tenant's commits wait
    # for. Every statement session_totals runs must be an indexed search of the session rows.
    statements: list[str] = []
    connection = sqlite_readers.ReaderPool._connection

    def traced(pool: sqlite_readers.ReaderPool) -> sqlite3.Connection:
        conn = connection(pool)
        # Called on the reader thread, with the statement's parameters filled in.
        conn.set_trace_callback(statements.append)
        return conn

    monkeypatch.setattr(sqlite_readers.ReaderPool, "_connection", traced)
    store = SqliteStore(db_path)
    await store.open()
    try:
        # Enough sessions that the planner would rather search than scan them; two ran jobs.
        for n in range(40):
            session = Session(
                id=f"s{n}",
                tenant="acme",
                backend="aer",
                mode=SessionMode.BATCH,
                state=SessionState.ACTIVE,
                failure_policy=FailurePolicy.ABORT,
                max_ttl_s=60.0,
                idle_ttl_s=60.0,
                created_at=T0,
            )
            await store.create_session(session, b"h")
        session_ids = ["s0", "s1"]
        for session_id in session_ids:
            for i in range(20):
                job = (await store.create_job(_session_job(session_id, i))).job
                unit = "USD" if i % 2 else "credits"
                execution = _spent(10, 0.5, Cost(0.25, unit))
                await store.finish_job(job.id, JobState.SUCCEEDED, ended_at=T0, execution=execution)
        statements.clear()
        totals = await store.session_totals(session_ids)
        read = [s for s in statements if s not in ("BEGIN", "COMMIT")]
    finally:
        await store.close()
    expected = Totals(
        shots=200, execution_seconds=10.0, costs=(Cost(2.5, "USD"), Cost(2.5, "credits"))
    )
    assert totals == {"s0": expected, "s1": expected}
    assert read, statements
    with sqlite3.connect(db_path) as conn:
        conn.execute("ANALYZE")
        for sql in read:
            plan = _plan(conn, sql, ())
            assert "jobs" not in plan, (sql, plan)
            assert all(step.startswith("SEARCH") for step in plan.split(" | ")), (sql, plan)


def _session_job(session_id: str, i: int) -> NewJob:
    return dataclasses.replace(new_job(created_at=T0 + timedelta(seconds=i)), session=session_id)


class _IgnoresSynchronous(sqlite3.Connection):
    """A connection whose build (or wrapper) silently ignores `PRAGMA synchronous = FULL`."""

    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
        if sql.replace(" ", "").upper() == "PRAGMASYNCHRONOUS=FULL":
            sql = "PRAGMA synchronous = NORMAL"
        return super().execute(sql, *args)


def test_a_connection_that_ignores_synchronous_full_is_refused(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Durability is asserted, not assumed: without FULL an acknowledged job may be lost.
    real_connect = sqlite3.connect

    def connect(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        return real_connect(*args, factory=_IgnoresSynchronous, **kwargs)

    monkeypatch.setattr(sqlite3, "connect", connect)
    with pytest.raises(RuntimeError, match="synchronous=FULL did not take effect"):
        sqlite_module._connect(tmp_path / "gateway.db")


async def test_no_write_is_acknowledged_when_its_batch_s_commit_fails(store: SqliteStore) -> None:
    # Answers are settled only after COMMIT returned: a submission batched with a write whose
    # COMMIT fails (here a foreign key deferred to COMMIT) is answered with the failure, never
    # with a job that was not stored.
    def orphan_spec(conn: sqlite3.Connection) -> None:
        conn.execute("PRAGMA defer_foreign_keys = ON")
        conn.execute("INSERT INTO job_specs (job_id, spec) VALUES ('nobody', x'00')")

    created, orphan = await _run_gated(
        store, WriterGate(), store.create_job(new_job(job_id="a")), store._call(orphan_spec)
    )
    assert isinstance(created, sqlite3.IntegrityError)
    assert isinstance(orphan, sqlite3.IntegrityError)
    assert await store.get_job("a") is None
    assert (await store.create_job(new_job(job_id="a"))).created
