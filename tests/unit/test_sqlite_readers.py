"""SqliteStore's reads on reader threads (gateway.store.sqlite_readers), never on the writer
thread: a read in progress, or another process's write lock, holds no write behind it or no
read behind a write; a write's answer still means every later read sees it."""

from __future__ import annotations

import asyncio
import pathlib
import sqlite3
import threading
from collections.abc import AsyncIterator

import pytest

from gateway.domain.jobs import JobState
from gateway.store.sqlite import SqliteStore
from tests.unit.test_sqlite_store import T0, new_job

pytestmark = pytest.mark.anyio


@pytest.fixture
def db_path(tmp_path: pathlib.Path) -> pathlib.Path:
    return tmp_path / "data" / "gateway.db"


@pytest.fixture
async def store(db_path: pathlib.Path) -> AsyncIterator[SqliteStore]:
    s = SqliteStore(db_path)
    await s.open()
    yield s
    await s.close()


class HeldRead:
    """A read-only operation that counts the jobs, waits for `release` once its snapshot is
    taken, and counts them again."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.release = threading.Event()

    def op(self, conn: sqlite3.Connection) -> tuple[int, int]:
        before = int(conn.execute("SELECT count(*) FROM jobs").fetchone()[0])
        self.started.set()
        self.release.wait(30)
        return before, int(conn.execute("SELECT count(*) FROM jobs").fetchone()[0])


async def test_a_write_commits_while_a_read_is_in_progress(store: SqliteStore) -> None:
    # On the writer thread every read held the writes queued behind it: four ListJobs
    # scanning 10,000 rows each made another tenant's create_job take 37 ms instead of 0.35.
    held = HeldRead()
    reading = asyncio.ensure_future(store._call(held.op, readonly=True))
    try:
        assert await asyncio.to_thread(held.started.wait, 10)
        created = await asyncio.wait_for(store.create_job(new_job(job_id="meanwhile")), 10)
        assert created.created
        assert await asyncio.wait_for(store.get_job("meanwhile"), 10) == created.job
        assert not reading.done()
    finally:
        held.release.set()
    # One snapshot for the whole read, taken before the create committed.
    assert await asyncio.wait_for(reading, 10) == (0, 0)


async def test_a_read_answers_while_another_process_holds_the_write_lock(
    store: SqliteStore, db_path: pathlib.Path
) -> None:
    # Gateways may share one SQLite file: the writer thread waiting for another's write lock
    # (up to busy_timeout) held every GetJob queued behind it, though WAL lets readers read.
    kept = (await store.create_job(new_job(job_id="kept"))).job
    # Longer than any wait below: the create waits for the lock, it does not fail.
    await store._call(lambda c: c.execute("PRAGMA busy_timeout = 60000").fetchone())
    other = sqlite3.connect(db_path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        creating = asyncio.ensure_future(store.create_job(new_job(job_id="late")))
        await asyncio.sleep(0)  # queued first: it holds the writer thread
        assert await asyncio.wait_for(store.get_job("kept"), 10) == kept
        assert [j.id for j in (await asyncio.wait_for(store.list_jobs("acme"), 10)).jobs] == [
            "kept"
        ]
        assert not creating.done()  # still waiting for the lock
        other.execute("ROLLBACK")
    finally:
        other.close()
    assert (await asyncio.wait_for(creating, 10)).created
    assert await store.get_job("late") is not None


async def test_a_read_sees_every_write_whose_call_returned(store: SqliteStore) -> None:
    # Reads and writes use different connections: a write answers after its COMMIT, and a
    # read asked for after that answer begins a snapshot holding it (WAL).
    for i in range(30):
        job = (await store.create_job(new_job(job_id=f"j{i:02d}"))).job
        assert await store.get_job(job.id) == job
        assert (await store.list_jobs("acme", limit=1)).jobs == [job]  # the largest id
        finished = await store.finish_job(
            job.id, JobState.SUCCEEDED, ended_at=T0, result=b"r%d" % i
        )
        assert finished is not None
        assert await store.get_job(job.id) == finished
        assert await store.get_result(job.id) == b"r%d" % i
    outs = await asyncio.gather(*(store.create_job(new_job(job_id=f"k{i}")) for i in range(50)))
    listed = await store.list_jobs("acme", limit=1000)
    assert {o.job.id for o in outs} <= {j.id for j in listed.jobs}
    assert len(listed.jobs) == 80


async def test_reads_run_in_read_transactions_on_query_only_connections(
    store: SqliteStore,
) -> None:
    job = (await store.create_job(new_job(job_id="kept"))).job

    def write(conn: sqlite3.Connection) -> None:
        conn.execute("DELETE FROM jobs")

    # A read that writes fails loudly (not STORE_UNAVAILABLE, which a client would retry).
    with pytest.raises(sqlite3.OperationalError) as raised:
        await store._call(write, readonly=True)
    assert raised.value.sqlite_errorname == "SQLITE_READONLY"
    assert await store.get_job("kept") == job

    def snapshot(conn: sqlite3.Connection) -> bool:
        return conn.in_transaction

    assert await store._call(snapshot, readonly=True)


async def test_reads_before_open_and_after_close_raise(db_path: pathlib.Path) -> None:
    store = SqliteStore(db_path)
    with pytest.raises(RuntimeError, match="not open"):
        await store.get_job("absent")
    await store.open()
    job = (await store.create_job(new_job(job_id="kept"))).job
    held = HeldRead()
    reading = asyncio.ensure_future(store._call(held.op, readonly=True))
    assert await asyncio.to_thread(held.started.wait, 10)
    # Asked for before close, queued behind the held read on the other thread or not: answered.
    asked = [asyncio.ensure_future(store.get_job("kept")) for _ in range(4)]
    await asyncio.sleep(0)
    closing = asyncio.ensure_future(store.close())
    await asyncio.sleep(0)
    held.release.set()
    await asyncio.wait_for(closing, 10)
    assert await reading == (1, 1)
    assert await asyncio.gather(*asked) == [job] * 4
    with pytest.raises(RuntimeError, match="closed"):
        await store.get_job("kept")
    with pytest.raises(RuntimeError, match="closed"):
        await store.list_jobs("acme")
