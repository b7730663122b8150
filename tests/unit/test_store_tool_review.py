"""Review of `qgateway store backup` / `store restore`: what an operator or a careless user runs
into (real SQLite files, the CLI in-process)."""

from __future__ import annotations

import errno
import os
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway import store_tool
from gateway.cli import main
from gateway.store.sqlite import SqliteStore
from tests.unit.test_audit_chain import KEY, _records
from tests.unit.test_sqlite_store import count_rows, new_job
from tests.unit.test_store_tool import crash_left

pytestmark = pytest.mark.anyio

DB = "qgateway.db"


async def _store_with_jobs(data: Path, n: int, *, audit_records: int = 0) -> None:
    store = SqliteStore(data / DB)
    if audit_records:
        store.enable_audit(KEY)
    await store.open()
    try:
        for _ in range(n):
            await store.create_job(new_job())
        if audit_records:
            await store.append_audit(_records(audit_records))
    finally:
        await store.close()


class _Crash(BaseException):
    """The process ending at that point (nothing catches it)."""


def _fail_replacing(
    monkeypatch: pytest.MonkeyPatch, target: Path, error: type[BaseException]
) -> None:
    """os.replace raises `error` when it would put a file at `target` (the restored database
    renamed into place)."""
    real = os.replace

    def replace(src: str | Path, dst: str | Path) -> None:
        if Path(dst) == target:
            raise error
        real(src, dst)

    monkeypatch.setattr(os, "replace", replace)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def shell_umask() -> Iterator[None]:
    """The umask of an operator's shell (022), not the gateway's own (077)."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


async def _backup(tmp_path: Path, *, jobs: int = 2, key: bool = True) -> Path:
    source = tmp_path / "source"
    await _store_with_jobs(source, jobs)
    if key:
        (source / "audit.key").write_bytes(KEY)
    backup = tmp_path / "backup"
    assert main(["store", "backup", "--data-dir", str(source), str(backup)]) == 0
    return backup


async def test_the_restored_database_and_a_data_dir_restore_creates_are_private(
    tmp_path: Path, shell_umask: None
) -> None:
    # Every tenant's circuits and results: the gateway makes its data directory and database
    # 0700/0600 (serve sets umask 077), but the restore, run from a shell, left them 0755/0644:
    # the restored store readable by every local user. The backup's own database was 0644 too.
    backup = await _backup(tmp_path)
    assert _mode(backup / DB) & 0o077 == 0
    fresh = tmp_path / "fresh"
    assert main(["store", "restore", "--data-dir", str(fresh), str(backup)]) == 0
    assert _mode(fresh / DB) & 0o077 == 0
    assert _mode(fresh) & 0o077 == 0


async def test_a_failed_backup_leaves_no_directory_behind(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The keys are copied before the snapshot: a snapshot that fails (no database here; a full
    # disk, an I/O error) left DEST holding the audit key and no database, and every retry
    # (a nightly cron job) then refused with "already exists".
    data = tmp_path / "data"
    data.mkdir()
    (data / "audit.key").write_bytes(KEY)
    backup = tmp_path / "backup"
    assert main(["store", "backup", "--data-dir", str(data), str(backup)]) == 2
    capsys.readouterr()
    assert not backup.exists(), sorted(p.name for p in backup.iterdir())
    await _store_with_jobs(data, 1)
    assert main(["store", "backup", "--data-dir", str(data), str(backup)]) == 0


async def test_a_backup_of_audit_records_without_their_key_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # audit.key_file outside data_dir and a backup run with --data-dir alone (or a lost key):
    # the backup succeeded saying only "with no key or head files". A gateway restored from it
    # refuses to start ("the key ... is missing") unless the audit log is switched off.
    data = tmp_path / "data"
    await _store_with_jobs(data, 1, audit_records=3)
    backup = tmp_path / "backup"
    code = main(["store", "backup", "--data-dir", str(data), str(backup)])
    captured = capsys.readouterr()
    assert "3 audit records" in captured.out
    assert code != 0 or "audit key" in captured.err, (code, captured)


async def test_a_restore_that_fails_halfway_says_where_the_replaced_files_went(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The disk the restored database just filled: the audit key cannot be written. The old
    # database and key had already been moved into before-restore-*/, but the one error line
    # ("No space left on device") named neither that directory nor the half-restored state.
    backup = await _backup(tmp_path, jobs=2)
    data = tmp_path / "data"
    await _store_with_jobs(data, 5)
    (data / "audit.key").write_bytes(bytes(32))
    real = store_tool._copy_secret

    def full_disk(source: Path, target: Path) -> None:
        if target.parent == data:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(target))
        real(source, target)

    monkeypatch.setattr(store_tool, "_copy_secret", full_disk)
    assert main(["store", "restore", "--data-dir", str(data), str(backup)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert count_rows(data / DB) == 5 or "before-restore-" in err, err


async def test_an_interrupted_restore_never_leaves_a_data_dir_without_its_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A crash (power loss, SIGKILL, the node drained) after the old database was moved aside
    # and before the restored one was renamed in: the lock goes with the process, the
    # supervisor restarts the gateway, and it creates an empty store and serves it.
    backup = await _backup(tmp_path, jobs=2, key=False)
    data = tmp_path / "data"
    await _store_with_jobs(data, 5)
    _fail_replacing(monkeypatch, data / DB, _Crash)  # the process ends there
    with pytest.raises(_Crash):
        main(["store", "restore", "--data-dir", str(data), str(backup)])
    monkeypatch.undo()
    assert (data / DB).exists()
    store = SqliteStore(data / DB)  # what the restarted gateway opens
    await store.open()
    await store.close()
    assert count_rows(data / DB) in (2, 5)


async def test_a_key_restored_through_a_leftover_temporary_file_stays_private(
    tmp_path: Path, shell_umask: None
) -> None:
    # _copy_secret writes `.audit.key.<pid>` with O_CREAT|O_TRUNC: an existing file of that name
    # (left by another run in a container, where pids repeat, or planted; a symlink is
    # followed) keeps its mode, and os.replace makes it the audit key: 0644 here.
    backup = await _backup(tmp_path)
    data = tmp_path / "data"
    await _store_with_jobs(data, 1)
    leftover = data / f".audit.key.{os.getpid()}"
    leftover.write_bytes(b"")
    leftover.chmod(0o644)
    assert main(["store", "restore", "--data-dir", str(data), str(backup)]) == 0
    assert (data / "audit.key").read_bytes() == KEY
    assert _mode(data / "audit.key") == 0o600


async def test_a_backup_that_is_not_a_database_is_named_in_the_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # "error: file is not a database": which file, the backup's or the data directory's?
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / DB).write_bytes(b"not sqlite" * 100)
    data = tmp_path / "data"
    await _store_with_jobs(data, 1)
    assert main(["store", "restore", "--data-dir", str(data), str(bad)]) == 2
    err = capsys.readouterr().err
    assert str(bad / DB) in err, err
    with sqlite3.connect(data / DB) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)


async def test_an_interrupted_restore_over_a_crash_left_wal_leaves_a_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    backup = await _backup(tmp_path, jobs=2, key=False)
    crashed = await crash_left(tmp_path)
    _fail_replacing(monkeypatch, crashed / DB, _Crash)
    with pytest.raises(_Crash):
        main(["store", "restore", "--data-dir", str(crashed), str(backup)])
    monkeypatch.undo()
    # The old database, whole: what its -wal held folded in, nothing lost, nothing torn.
    with sqlite3.connect(crashed / DB) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        in_wal = conn.execute("SELECT count(*) FROM jobs WHERE backend = 'in-the-wal'")
        assert in_wal.fetchone()[0] == 5
    assert main(["store", "restore", "--data-dir", str(crashed), str(backup)]) == 0
    assert count_rows(crashed / DB) == 2


async def test_a_restore_interrupted_by_ctrl_c_says_where_the_replaced_files_went(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    backup = await _backup(tmp_path, jobs=2, key=False)
    data = tmp_path / "data"
    await _store_with_jobs(data, 5)
    _fail_replacing(monkeypatch, data / DB, KeyboardInterrupt)
    assert main(["store", "restore", "--data-dir", str(data), str(backup)]) == 130
    err = capsys.readouterr().err
    assert err.startswith("interrupted: the restore stopped halfway: what it replaced is in ")
    assert "before-restore-" in err
    assert count_rows(data / DB) == 5  # the old database still in place
