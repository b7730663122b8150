"""Readiness follows the store: a write failing STORE_UNAVAILABLE makes the gateway not ready,
a probe write brings it back once the store writes and no write failed for the hold. On a real
SQLite store (a lock held by another connection past busy_timeout, a full database), with an
injected clock for the hold."""

from __future__ import annotations

import asyncio
import pathlib
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager

import pytest

from gateway.domain.errors import InvalidArgument, StoreUnavailable
from gateway.runtime.readiness import Readiness
from gateway.store.sqlite import SqliteStore
from tests.unit.test_sqlite_store import new_job

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(30)]


@pytest.fixture
async def sqlite_store(tmp_path: pathlib.Path) -> AsyncIterator[SqliteStore]:
    store = SqliteStore(tmp_path / "data" / "gateway.db")
    await store.open()
    # A lock held elsewhere fails a write after 50 ms, not the default's seconds.
    await store._call(lambda c: c.execute("PRAGMA busy_timeout = 50").fetchone())
    yield store
    await store.close()


@contextmanager
def write_lock_held(store: SqliteStore) -> Iterator[None]:
    other = sqlite3.connect(store.path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        yield
    finally:
        other.close()


class Recorder:
    """What readiness published and how many probes ran, awaited without sleeping."""

    def __init__(self) -> None:
        self.probes = 0
        self.published: list[bool] = []
        self.changed = asyncio.Condition()

    async def note_probe(self) -> None:
        async with self.changed:
            self.probes += 1
            self.changed.notify_all()

    async def publish(self, ready: bool) -> None:
        async with self.changed:
            self.published.append(ready)
            self.changed.notify_all()

    async def until(self, predicate: Callable[[], bool]) -> None:
        async with self.changed:
            # Bounded: a test that fails must not leave its store's threads waiting.
            await asyncio.wait_for(self.changed.wait_for(predicate), 10.0)


class Watched(Recorder):
    """The store as readiness sees it, counting probes."""

    def __init__(self, store: SqliteStore) -> None:
        super().__init__()
        self.store = store

    def on_write_unavailable(self, callback: Callable[[], None]) -> None:
        self.store.on_write_unavailable(callback)

    async def probe_write(self) -> None:
        try:
            await self.store.probe_write()
        finally:
            await self.note_probe()


async def test_a_write_the_store_cannot_make_is_told_and_a_refused_one_is_not(
    sqlite_store: SqliteStore,
) -> None:
    told: list[str] = []
    sqlite_store.on_write_unavailable(lambda: told.append("unavailable"))
    await sqlite_store.create_job(new_job(job_id="a", request_id="r"))
    with pytest.raises(InvalidArgument):  # the caller's mistake, not the store's
        await sqlite_store.create_job(new_job(job_id="b", request_id="r", payload=b"other"))
    assert told == []
    with write_lock_held(sqlite_store), pytest.raises(StoreUnavailable):
        await sqlite_store.create_job(new_job(job_id="c"))
    assert told == ["unavailable"]
    # A full database: the write that needs room fails, and is told.
    pages = await sqlite_store._call(lambda c: c.execute("PRAGMA page_count").fetchone()[0])
    await sqlite_store._call(lambda c: c.execute(f"PRAGMA max_page_count = {pages}").fetchone())
    with pytest.raises(StoreUnavailable):
        await sqlite_store.create_job(new_job(job_id="big", payload=b"x" * (1 << 20)))
    assert told == ["unavailable"] * 2


async def test_a_probe_write_fails_while_the_store_cannot_write_and_changes_nothing(
    sqlite_store: SqliteStore,
) -> None:
    await sqlite_store.create_job(new_job(job_id="a"))
    before = sqlite_store.commits
    await sqlite_store.probe_write()
    assert sqlite_store.commits == before + 1
    with write_lock_held(sqlite_store), pytest.raises(StoreUnavailable):
        await sqlite_store.probe_write()
    await sqlite_store.probe_write()
    assert [j.id for j in (await sqlite_store.list_jobs("acme")).jobs] == ["a"]
    version = await sqlite_store._call(lambda c: c.execute("PRAGMA user_version").fetchone()[0])
    assert version == 0


async def test_readiness_goes_with_the_store_and_stays_down_while_draining(
    sqlite_store: SqliteStore,
) -> None:
    watched = Watched(sqlite_store)
    readiness = Readiness(watched, watched.publish, probe_interval_s=0.01, hold_s=0.0)
    readiness.watch_store()
    try:
        await readiness.started()
        assert watched.published == [True]
        with write_lock_held(sqlite_store):
            with pytest.raises(StoreUnavailable):
                await sqlite_store.create_job(new_job(job_id="late"))
            await watched.until(lambda: watched.published == [True, False])
            probed = watched.probes
            # Probed again and again while the lock is held, and still not ready.
            await watched.until(lambda: watched.probes >= probed + 3)
            assert watched.published == [True, False] and not readiness.ready
        await watched.until(lambda: watched.published == [True, False, True])
        assert (await sqlite_store.create_job(new_job(job_id="late"))).created
        await readiness.draining()
        assert watched.published == [True, False, True, False]
        # A failure and a recovery while draining publish nothing more: still not ready.
        with write_lock_held(sqlite_store):
            with pytest.raises(StoreUnavailable):
                await sqlite_store.create_job(new_job(job_id="later"))
            probed = watched.probes
            await watched.until(lambda: watched.probes >= probed + 2)
        probed = watched.probes
        await watched.until(lambda: watched.probes > probed)  # the one that writes
        assert watched.published == [True, False, True, False] and not readiness.ready
    finally:
        await readiness.close()


async def test_readiness_returns_only_after_the_hold_with_no_write_failing(
    sqlite_store: SqliteStore,
) -> None:
    now = [100.0]
    watched = Watched(sqlite_store)
    readiness = Readiness(
        watched, watched.publish, probe_interval_s=0.01, hold_s=5.0, clock=lambda: now[0]
    )
    readiness.watch_store()
    try:
        await readiness.started()
        with write_lock_held(sqlite_store), pytest.raises(StoreUnavailable):
            await sqlite_store.create_job(new_job(job_id="late"))
        await watched.until(lambda: watched.published == [True, False])
        probed = watched.probes
        await watched.until(lambda: watched.probes >= probed + 3)  # probes succeed meanwhile
        now[0] += 4.9
        probed = watched.probes
        await watched.until(lambda: watched.probes >= probed + 2)
        assert watched.published == [True, False]
        now[0] += 0.1
        await watched.until(lambda: watched.published == [True, False, True])
    finally:
        await readiness.close()


async def test_a_gateway_started_on_a_store_that_cannot_write_is_not_ready_until_it_can(
    sqlite_store: SqliteStore,
) -> None:
    # Nothing has written yet (a restart on a full disk): the start's own probe tells.
    watched = Watched(sqlite_store)
    readiness = Readiness(watched, watched.publish, probe_interval_s=0.01, hold_s=0.0)
    readiness.watch_store()
    try:
        with write_lock_held(sqlite_store):
            await readiness.check_store()
            await readiness.started()
            assert not readiness.ready
            probed = watched.probes
            await watched.until(lambda: watched.probes >= probed + 2)
            assert True not in watched.published
        await watched.until(lambda: watched.published[-1:] == [True])
    finally:
        await readiness.close()
