"""Review: the SQLite store misbehaving (a value past SQLite's limits, a damaged file, a WAL
that cannot be checkpointed), in process. The findings are fixed; each test failed before."""

from __future__ import annotations

import pathlib
import sqlite3
import time
from collections.abc import AsyncIterator

import pytest

from gateway.config import ConfigError, load_config
from gateway.domain.errors import DataLoss
from gateway.store.sqlite import SqliteStore
from tests.unit.test_sqlite_store import new_job

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


@pytest.mark.parametrize(
    "toml",
    [
        "[server]\nmax_request_bytes = 1050000000\n",
        '[backends.a]\nadapter = "aer"\nmax_result_mb = 1000\n',
    ],
)
def test_limits_past_what_sqlite_can_store_are_refused(tmp_path: pathlib.Path, toml: str) -> None:
    path = tmp_path / "g.toml"
    path.write_text(f'data_dir = "{tmp_path / "data"}"\n' + toml)
    with pytest.raises(ConfigError):
        load_config(path)


async def test_a_wal_grown_behind_a_held_snapshot_shrinks_once_it_is_released(
    store: SqliteStore, db_path: pathlib.Path
) -> None:
    # Probe (holds today): an operator's shell holding a read snapshot stops checkpoints and
    # the WAL grows; once released, the store's own commits checkpoint and truncate it.
    limit = 256 << 10
    await store._call(lambda c: c.execute(f"PRAGMA journal_size_limit = {limit}").fetchone())
    wal = pathlib.Path(f"{db_path}-wal")
    reader = sqlite3.connect(db_path, isolation_level=None)
    try:
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM jobs").fetchone()  # holds its snapshot
        for i in range(60):
            await store.create_job(new_job(job_id=f"held-{i}", payload=b"p" * 100_000 + bytes([i])))
        grown = wal.stat().st_size
        assert grown > 5_000_000
        reader.execute("ROLLBACK")
    finally:
        reader.close()
    deadline = time.monotonic() + 20
    i = 0
    while wal.stat().st_size > limit:
        assert time.monotonic() < deadline, f"the WAL stayed at {wal.stat().st_size} bytes"
        await store.create_job(new_job(job_id=f"after-{i}"))
        i += 1
    assert len((await store.list_jobs("acme", limit=1000)).jobs) == 60 + i


async def test_a_damaged_database_answers_data_loss(db_path: pathlib.Path) -> None:
    store = SqliteStore(db_path)
    await store.open()
    for i in range(50):
        await store.create_job(new_job(job_id=f"j{i:03d}", payload=b"s" * 3000))
    await store.close()
    conn = sqlite3.connect(db_path)
    root = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = 'jobs'").fetchone()[0]
    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    conn.close()
    with db_path.open("r+b") as f:  # the jobs table's root page overwritten
        f.seek((root - 1) * page_size)
        f.write(b"\xff" * 64)
    store = SqliteStore(db_path)
    await store.open()
    try:
        # On the reader threads as on the writer's: a lookup and a listing.
        for read in (store.get_job("j010"), store.list_jobs("acme")):
            with pytest.raises(Exception) as raised:
                await read
            assert isinstance(raised.value, DataLoss), repr(raised.value)
            assert raised.value.reason == "STORE_CORRUPT"
            assert isinstance(raised.value.__cause__, sqlite3.DatabaseError)
    finally:
        await store.close()
