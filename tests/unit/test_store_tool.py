"""`qgateway store backup` and `store restore` on real SQLite stores (the CLI in-process)."""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
import stat
from pathlib import Path

import pytest

from gateway import store_tool
from gateway.cli import main
from gateway.store.data_dir_lock import lock_data_dir
from gateway.store.sqlite import LATEST_SCHEMA_VERSION, SqliteStore
from tests.unit.test_sqlite_store import count_rows, new_job

pytestmark = pytest.mark.anyio

DB = "qgateway.db"


async def _store_with_jobs(data: Path, n: int) -> None:
    store = SqliteStore(data / DB)
    await store.open()
    try:
        for _ in range(n):
            await store.create_job(new_job())
    finally:
        await store.close()


async def crash_left(tmp_path: Path) -> Path:
    """A data directory as a SIGKILL leaves it: 5 jobs, each changed (backend 'in-the-wal') in
    its -wal file only."""
    data = tmp_path / "alive"
    await _store_with_jobs(data, 5)
    held = sqlite3.connect(data / DB, isolation_level=None)
    held.execute("PRAGMA wal_autocheckpoint = 0")
    held.execute("UPDATE jobs SET backend = 'in-the-wal'")
    crashed = tmp_path / "crashed"
    crashed.mkdir()
    for name in (DB, DB + "-wal"):
        shutil.copy(data / name, crashed / name)
    held.close()
    return crashed


def _job_ids(db: Path) -> set[str]:
    with sqlite3.connect(db) as conn:
        return {row[0] for row in conn.execute("SELECT id FROM jobs")}


def _asides(data: Path) -> list[Path]:
    """The directories restores kept replaced files in."""
    return [p for p in data.iterdir() if p.name.startswith(store_tool.ASIDE_PREFIX)]


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def test_a_backup_taken_while_jobs_are_written_restores_into_a_fresh_data_dir(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    await _store_with_jobs(data, 20)
    (data / "audit.key").write_bytes(b"k" * 32)
    (data / "page-token.key").write_bytes(b"p" * 32)
    store = SqliteStore(data / DB)
    await store.open()
    stop = asyncio.Event()

    async def keep_writing() -> int:
        written = 0
        while not stop.is_set():
            await store.create_job(new_job(payload=b"x" * 2000))
            written += 1
        return written

    writer = asyncio.create_task(keep_writing())
    try:
        backup = tmp_path / "backups" / "one"
        code = await asyncio.to_thread(
            main, ["store", "backup", "--data-dir", str(data), str(backup)]
        )
    finally:
        stop.set()
        written = await writer
        await store.close()
    assert code == 0, capsys.readouterr().err
    # A snapshot between the jobs before and after: whole jobs only, the file sound.
    backed_up = _job_ids(backup / DB)
    assert len(backed_up) >= 20 and backed_up <= _job_ids(data / DB)
    assert written > 0
    assert store_tool.checked_summary(backup / DB).jobs == len(backed_up)
    assert _mode(backup) == 0o700
    assert {p.name for p in backup.iterdir()} == {DB, "audit.key", "page-token.key"}
    assert _mode(backup / "audit.key") == 0o600
    assert f"{len(backed_up)} jobs" in capsys.readouterr().out

    fresh = tmp_path / "fresh"
    assert main(["store", "restore", "--data-dir", str(fresh), str(backup)]) == 0
    assert _job_ids(fresh / DB) == backed_up
    assert (fresh / "audit.key").read_bytes() == b"k" * 32
    assert not _asides(fresh)
    reopened = SqliteStore(fresh / DB)
    await reopened.open()  # the gateway's own open: migrations, WAL, the schema checked
    await reopened.close()


async def test_restore_folds_the_old_wal_into_the_database_it_keeps_aside(tmp_path: Path) -> None:
    # A data directory left by a crash: its newest changes only in the -wal file. Restored over,
    # that -wal must not stay: left beside the restored file, SQLite replays it onto it.
    backup_source = tmp_path / "source"
    await _store_with_jobs(backup_source, 3)
    backup = tmp_path / "backup"
    assert main(["store", "backup", "--data-dir", str(backup_source), str(backup)]) == 0

    crashed = await crash_left(tmp_path)
    evidence = tmp_path / "evidence"
    shutil.copytree(crashed, evidence)  # opened here, not in `crashed`: a close checkpoints
    with sqlite3.connect(evidence / DB) as conn:
        assert (
            conn.execute("SELECT count(*) FROM jobs WHERE backend = 'in-the-wal'").fetchone()[0]
            == 5
        )

    assert main(["store", "restore", "--data-dir", str(crashed), str(backup)]) == 0
    assert _job_ids(crashed / DB) == _job_ids(backup / DB)
    with sqlite3.connect(crashed / DB) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert (
            conn.execute("SELECT count(*) FROM jobs WHERE backend = 'in-the-wal'").fetchone()[0]
            == 0
        )
    (aside,) = _asides(crashed)
    assert {p.name for p in aside.iterdir()} == {DB}
    # What was kept aside is the crashed database whole, its -wal folded in.
    with sqlite3.connect(aside / DB) as conn:
        assert (
            conn.execute("SELECT count(*) FROM jobs WHERE backend = 'in-the-wal'").fetchone()[0]
            == 5
        )


async def test_restore_refuses_while_a_gateway_holds_the_data_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    await _store_with_jobs(tmp_path / "source", 1)
    backup = tmp_path / "backup"
    assert main(["store", "backup", "--data-dir", str(tmp_path / "source"), str(backup)]) == 0
    data = tmp_path / "data"
    await _store_with_jobs(data, 2)
    for exclusive in (False, True):  # replicas of the store queue, or one of the memory queue
        lock = lock_data_dir(data, exclusive=exclusive)
        try:
            assert main(["store", "restore", "--data-dir", str(data), str(backup)]) == 2
        finally:
            lock.release()
        assert "in use" in capsys.readouterr().err
        assert count_rows(data / DB) == 2
    assert not _asides(data)


async def test_restore_refuses_a_damaged_backup_and_a_newer_schema(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    await _store_with_jobs(data, 2)
    backup = tmp_path / "backup"
    assert main(["store", "backup", "--data-dir", str(data), str(backup)]) == 0
    capsys.readouterr()

    newer = tmp_path / "newer"
    shutil.copytree(backup, newer)
    with sqlite3.connect(newer / DB) as conn:
        conn.execute(
            "INSERT INTO schema_migrations VALUES (?, 'later')", (LATEST_SCHEMA_VERSION + 1,)
        )
    assert main(["store", "restore", "--data-dir", str(data), str(newer)]) == 2
    assert "newer than this gateway knows" in capsys.readouterr().err

    damaged = tmp_path / "damaged"
    shutil.copytree(backup, damaged)
    raw = bytearray((damaged / DB).read_bytes())
    page = 4096
    raw[3 * page : 4 * page] = b"\xff" * page  # a page of the jobs table's tree
    (damaged / DB).write_bytes(bytes(raw))
    assert main(["store", "restore", "--data-dir", str(data), str(damaged)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and ("damaged" in err or "malformed" in err), err
    assert count_rows(data / DB) == 2  # nothing replaced
    assert not _asides(data)
    # Into a directory that does not exist yet: refused without creating it (or a lock file).
    fresh = tmp_path / "fresh"
    for refused in (newer, damaged):
        assert main(["store", "restore", "--data-dir", str(fresh), str(refused)]) == 2
        assert not fresh.exists()


async def test_a_backup_is_never_written_over_an_existing_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    await _store_with_jobs(data, 1)
    backup = tmp_path / "backup"
    backup.mkdir()
    (backup / "mine").write_text("keep")
    assert main(["store", "backup", "--data-dir", str(data), str(backup)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert [p.name for p in backup.iterdir()] == ["mine"]
