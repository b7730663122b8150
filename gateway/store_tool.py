"""`qgateway store backup` and `qgateway store restore`: the data directory's state, copied
consistently while gateways run, and put back while none does.

backup writes a new directory (0700) holding `qgateway.db`, a snapshot taken with SQLite's
online backup API inside one read transaction, so gateways go on writing meanwhile (copying the
file instead misses what its -wal file holds, or copies a torn page), then checked with
`PRAGMA integrity_check`; and beside it the files the database is useless without: the audit
key (a start refuses a log its key did not write), the exported audit head (read before the
snapshot, so the snapshot holds the record it names and `audit verify` passes on the
restored directory) and the page-token key. They are secrets: keep a backup as you keep the
data directory.

restore refuses while any gateway holds the data directory (its lock), refuses a backup that
fails its integrity check or has a schema newer than this gateway's, and moves what it replaces
into `data_dir/before-restore-<UTC time>/`, never deleting it: the database with its -wal and
-shm files (SQLite would otherwise replay the old -wal onto the restored file, corrupting it),
the head and any key the backup replaces.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from gateway.audit_tool import DB_FILE, guarded

AUDIT_KEY: Final = "audit.key"
AUDIT_HEAD: Final = "audit-head.json"
PAGE_TOKEN_KEY: Final = "page-token.key"
ASIDE_PREFIX: Final = "before-restore-"
# How long the snapshot's read waits for a writer's lock (WAL recovery by another process).
_BUSY_TIMEOUT_MS: Final = 10_000


@dataclass(frozen=True)
class _Paths:
    data_dir: Path
    db: Path
    audit_key: Path
    audit_head: Path
    page_token_key: Path

    def beside_db(self) -> dict[str, Path]:
        """The files besides the database, by their names in a backup."""
        return {
            AUDIT_KEY: self.audit_key,
            AUDIT_HEAD: self.audit_head,
            PAGE_TOKEN_KEY: self.page_token_key,
        }


def _paths(args: argparse.Namespace) -> _Paths:
    from gateway.api.paging import KEY_FILE
    from gateway.config import GatewayConfig, load_config

    config = load_config(args.config) if args.config is not None else GatewayConfig()
    data_dir: Path = args.data_dir if args.data_dir is not None else config.data_dir
    return _Paths(
        data_dir=data_dir,
        db=data_dir / DB_FILE,
        audit_key=config.audit.key_path(data_dir),
        audit_head=config.audit.head_path(data_dir),
        page_token_key=data_dir / KEY_FILE,
    )


@dataclass(frozen=True)
class Summary:
    """What a database holds, for the operator to compare before and after."""

    schema_version: int
    jobs: int
    audit_records: int

    def line(self) -> str:
        return (
            f"schema version {self.schema_version}, {self.jobs} jobs, "
            f"{self.audit_records} audit records"
        )


def checked_summary(db: Path) -> Summary:
    """The database's summary once `PRAGMA integrity_check` passed.

    Raises:
        ValueError: The file is damaged or not a gateway's database.
    """
    conn = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True, isolation_level=None)
    try:
        problems = [row[0] for row in conn.execute("PRAGMA integrity_check(5)")]
        if problems != ["ok"]:
            raise ValueError(f"{db}: damaged: {'; '.join(problems)}")
        try:
            version = conn.execute("SELECT max(version) FROM schema_migrations").fetchone()[0]
            jobs = conn.execute("SELECT count(*) FROM jobs").fetchone()[0]
            tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
            records = 0
            if "audit_records" in tables:
                records = conn.execute("SELECT count(*) FROM audit_records").fetchone()[0]
        except sqlite3.Error as exc:
            raise ValueError(f"{db}: not a gateway's database ({exc})") from None
        return Summary(int(version or 0), int(jobs), int(records))
    finally:
        conn.close()


def _snapshot(source: Path, target: Path) -> None:
    """Copies `source` to the new file `target` from one read transaction, then syncs it."""
    if not source.exists():
        raise FileNotFoundError(f"{source}: no such database")
    src = sqlite3.connect(f"{source.resolve().as_uri()}?mode=ro", uri=True)
    try:
        src.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
        dst = sqlite3.connect(target)
        try:
            # pages=-1: the whole copy in one step, one read transaction, so writers
            # committing meanwhile neither restart it nor tear it.
            src.backup(dst, pages=-1)
            # One self-contained file: the copy took the source's WAL mode, in which even a
            # read-only look at it leaves -wal and -shm files beside it.
            dst.execute("PRAGMA journal_mode = DELETE")
        finally:
            dst.close()
    finally:
        src.close()
    _fsync(target)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _copy_secret(source: Path, target: Path) -> None:
    """Copies a key or head file to the new file `target`, readable by its owner only."""
    data = source.read_bytes()
    tmp = target.with_name(f".{target.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def _cmd_backup(args: argparse.Namespace) -> int:
    paths = _paths(args)
    dest: Path = args.destination
    if dest.exists():
        raise FileExistsError(f"{dest}: already exists; a backup is written to a new directory")
    dest.mkdir(mode=0o700, parents=True)
    copied = []
    # The head before the snapshot: the snapshot then holds the record it names.
    for name, path in paths.beside_db().items():
        if path.exists():
            _copy_secret(path, dest / name)
            copied.append(name)
    _snapshot(paths.db, dest / DB_FILE)
    summary = checked_summary(dest / DB_FILE)
    _fsync(dest)
    besides = ", ".join(copied) or "no key or head files"
    print(f"backup {dest}: {summary.line()}; with {besides}")
    return 0


def _cmd_restore(args: argparse.Namespace) -> int:
    from gateway.store.data_dir_lock import lock_data_dir
    from gateway.store.sqlite import LATEST_SCHEMA_VERSION

    paths = _paths(args)
    source: Path = args.source
    if not (source / DB_FILE).is_file():
        raise FileNotFoundError(f"{source}: no {DB_FILE}; not a backup")
    # Exclusive: no gateway of either queue may run while its files are replaced.
    lock = lock_data_dir(paths.data_dir, exclusive=True)
    try:
        summary = checked_summary(source / DB_FILE)
        if summary.schema_version > LATEST_SCHEMA_VERSION:
            raise ValueError(
                f"{source}: schema version {summary.schema_version} is newer than this gateway "
                f"knows ({LATEST_SCHEMA_VERSION}); restore it with the gateway that wrote it"
            )
        restored = paths.data_dir / f".{DB_FILE}.restoring"
        restored.unlink(missing_ok=True)
        _snapshot(source / DB_FILE, restored)
        aside = paths.data_dir / (ASIDE_PREFIX + datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ"))
        aside.mkdir(mode=0o700)
        moved = []
        # The database with its -wal and -shm, together: a -wal left beside the restored file
        # would be replayed onto it.
        for suffix in ("", "-wal", "-shm", "-journal"):
            old = paths.db.with_name(DB_FILE + suffix)
            if old.exists():
                shutil.move(old, aside / old.name)
                moved.append(old.name)
        os.replace(restored, paths.db)
        for name, path in paths.beside_db().items():
            backed_up = source / name
            # The head always goes: one naming a record the restored log never had would be
            # kept as evidence of deleted records at every start.
            replaced = name == AUDIT_HEAD or backed_up.exists()
            if path.exists() and replaced:
                if backed_up.exists() and backed_up.read_bytes() == path.read_bytes():
                    continue
                shutil.move(path, aside / name)
                moved.append(name)
            if backed_up.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
                _copy_secret(backed_up, path)
        _fsync(paths.data_dir)
    finally:
        lock.release()
    kept = f"; replaced files kept in {aside}" if moved else ""
    if not moved:
        aside.rmdir()
    print(f"restored {source} into {paths.data_dir}: {summary.line()}{kept}")
    return 0


def add_parser(sub: Any) -> None:
    """Adds `store backup` and `store restore` to the `qgateway` subcommands."""
    store = sub.add_parser("store", help="back up or restore the data directory (offline)")
    actions = store.add_subparsers(dest="store_command", metavar="ACTION")
    store.set_defaults(handler=None, parser=store)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", type=Path, default=None, help="the gateway's TOML file")
    common.add_argument("--data-dir", type=Path, default=None, help="overrides data_dir")
    backup = actions.add_parser(
        "backup", parents=[common], help="copy the store and its keys (gateways may run)"
    )
    backup.add_argument("destination", type=Path, help="a new directory for the backup")
    backup.set_defaults(handler=guarded(_cmd_backup))
    restore = actions.add_parser(
        "restore", parents=[common], help="put a backup back (no gateway may run)"
    )
    restore.add_argument("source", type=Path, help="a directory `store backup` wrote")
    restore.set_defaults(handler=guarded(_cmd_restore))
