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
fails its integrity check or has a schema newer than this gateway's, and keeps what it replaces
in `data_dir/before-restore-<UTC time>/`, never deleting it: the database, its -wal folded in
first as SQLite's next open would (left beside the restored file, SQLite would replay the old
-wal onto it, corrupting it), the head and any key the backup replaces. The old database stays
in place until the restored one replaces it in one rename, so a crash midway never leaves the
directory without a database (on which a restarted gateway would serve a new, empty store).
Both commands create what they write readable by its owner alone (umask 077), as the gateway
does.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import sqlite3
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from gateway.audit_tool import DB_FILE, guarded, offline_options

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
    # [audit] enabled: a gateway then starts only with the key that wrote the records.
    audit_enabled: bool = True

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
        audit_enabled=config.audit.enabled,
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
        try:
            problems = [row[0] for row in conn.execute("PRAGMA integrity_check(5)")]
        except sqlite3.DatabaseError as exc:
            raise ValueError(f"{db}: {exc}") from None
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
    # A name of its own (O_EXCL, no symlink followed): an existing file would keep its mode.
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def _refuse_existing(dest: Path) -> None:
    if dest.exists():
        raise FileExistsError(f"{dest}: already exists; a backup is written to a new directory")


def _cmd_backup(args: argparse.Namespace) -> int:
    paths = _paths(args)
    dest: Path = args.destination
    _refuse_existing(dest)
    dest.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    # Written beside DEST and renamed to it once whole: a failed backup leaves no DEST (a
    # retry would refuse it) and never one that looks like a backup.
    partial = dest.with_name(f".{dest.name}.partial-{os.getpid()}-{secrets.token_hex(4)}")
    partial.mkdir(mode=0o700)
    try:
        copied = []
        # The head before the snapshot: the snapshot then holds the record it names.
        for name, path in paths.beside_db().items():
            if path.exists():
                _copy_secret(path, partial / name)
                copied.append(name)
        _snapshot(paths.db, partial / DB_FILE)
        summary = checked_summary(partial / DB_FILE)
        _fsync(partial)
        _refuse_existing(dest)  # one may have appeared meanwhile: rename would replace it
        os.rename(partial, dest)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    _fsync(dest.parent)
    besides = ", ".join(copied) or "no key or head files"
    print(f"backup {dest}: {summary.line()}; with {besides}")
    if summary.audit_records and AUDIT_KEY not in copied:
        print(
            f"warning: no audit key at {paths.audit_key}: a gateway restored from this backup "
            f"starts only with the key that wrote its {summary.audit_records} audit records in "
            "place (or with [audit] enabled = false); pass the gateway's --config",
            file=sys.stderr,
        )
    return 0


def _cmd_restore(args: argparse.Namespace) -> int:
    from gateway.store.data_dir_lock import lock_data_dir
    from gateway.store.sqlite import LATEST_SCHEMA_VERSION

    paths = _paths(args)
    source: Path = args.source
    if not (source / DB_FILE).is_file():
        raise FileNotFoundError(f"{source}: no {DB_FILE}; not a backup")
    # Checked before the data directory is touched: a refused restore leaves nothing behind
    # (not even the directory and lock file of a restore into a new one).
    summary = checked_summary(source / DB_FILE)
    if summary.schema_version > LATEST_SCHEMA_VERSION:
        raise ValueError(
            f"{source}: schema version {summary.schema_version} is newer than this gateway "
            f"knows ({LATEST_SCHEMA_VERSION}); restore it with the gateway that wrote it"
        )
    if paths.audit_enabled and summary.audit_records:
        _check_audit_key(source, paths, summary.audit_records)
    # Exclusive: no gateway of either queue may run while its files are replaced.
    lock = lock_data_dir(paths.data_dir, exclusive=True)
    try:
        # Before anything is replaced: a gateway may have the database open without the lock
        # (its lock file deleted as stale), and the restored file would go in under it.
        _fold_log(paths.db)
        restored = paths.data_dir / f".{DB_FILE}.restoring"
        restored.unlink(missing_ok=True)
        _snapshot(source / DB_FILE, restored)
        aside = paths.data_dir / (ASIDE_PREFIX + datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ"))
        aside.mkdir(mode=0o700)
        moved: list[str] = []
        try:
            _replace(paths, source, restored, aside, moved)
        except (OSError, sqlite3.Error) as exc:
            raise RuntimeError(f"{exc}; {_halfway(aside)}") from None
        except BaseException:  # Ctrl-C: the operator still needs to know
            print(f"interrupted: {_halfway(aside)}", file=sys.stderr)
            raise
    finally:
        lock.release()
    kept = f"; replaced files kept in {aside}" if moved else ""
    if not moved:
        aside.rmdir()
    print(f"restored {source} into {paths.data_dir}: {summary.line()}{kept}")
    return 0


def _halfway(aside: Path) -> str:
    return f"the restore stopped halfway: what it replaced is in {aside} (run the restore again)"


def _replace(paths: _Paths, source: Path, restored: Path, aside: Path, moved: list[str]) -> None:
    """Puts `restored` and the backup's key and head files in place, what they replace aside."""
    # The old database stays in place until the restored file replaces it in one rename, so a
    # crash meanwhile never leaves the directory without one (a restarted gateway would create
    # an empty store and serve it). Its -wal is folded into it first, as its next open would:
    # a -wal must never outlive its database (SQLite would replay it onto the restored file),
    # nor be parted from it (it may hold the end of a checkpoint the file needs).
    _fold_log(paths.db)
    logs = [paths.db.with_name(DB_FILE + suffix) for suffix in ("-wal", "-journal")]
    shm = paths.db.with_name(DB_FILE + "-shm")
    if any(log.exists() for log in logs) or not paths.db.exists():
        # Not folded (a damaged database, or a -wal without one): the files go aside together,
        # the only way with a moment without a database.
        for old in (paths.db, *logs, shm):
            if old.exists():
                shutil.move(old, aside / old.name)
                moved.append(old.name)
    else:
        _keep_aside(paths.db, aside / DB_FILE)
        moved.append(DB_FILE)
        if shm.exists():  # an index of no -wal: rebuilt at the next open
            shutil.move(shm, aside / shm.name)
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


def _fold_log(db: Path) -> None:
    """Folds the database's -wal (or a hot -journal) into it, as its next open would; a
    database SQLite cannot open keeps them (the caller moves them aside with it).

    Raises:
        RuntimeError: Another process has the database open (leaving WAL needs it alone).
    """
    if not db.exists() or not any(db.with_name(DB_FILE + s).exists() for s in ("-wal", "-journal")):
        return
    try:
        conn = sqlite3.connect(db, isolation_level=None)
        try:
            conn.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
            # Leaving WAL checkpoints the log whole and deletes it (and its -shm); reading the
            # mode rolls a hot -journal back.
            conn.execute("PRAGMA journal_mode = DELETE")
        finally:
            conn.close()
    except sqlite3.Error as exc:
        # Taken for damage, such a database went aside under a gateway serving it, which
        # then acknowledged jobs into the file moved away.
        if exc.sqlite_errorcode in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
            raise RuntimeError(
                f"{db} is open in another process (a gateway whose lock file was removed?): "
                "stop every gateway on this data directory, then restore"
            ) from None
        return


def _check_audit_key(source: Path, paths: _Paths, records: int) -> None:
    """Refuses a backup whose audit records the key the restore leaves in place (the backup's,
    else the one already there) did not write: the gateway would refuse to start on them."""
    from gateway.security import audit_files
    from gateway.store import sqlite_audit

    key_path = source / AUDIT_KEY if (source / AUDIT_KEY).exists() else paths.audit_key
    if not key_path.exists():
        raise ValueError(
            f"{source}: its {records} audit records need the key that wrote them, and there "
            f"is none in the backup nor at {paths.audit_key}; put that key in place first "
            "(or restore with [audit] enabled = false)"
        )
    key = audit_files.read_key(key_path)
    conn = sqlite_audit.open_readonly(source / DB_FILE)
    try:
        wrote = sqlite_audit.key_wrote_chain(conn, key)
    finally:
        conn.close()
    if not wrote:
        raise ValueError(
            f"{source}: the audit key {key_path} did not write its {records} audit records "
            "(another gateway's key?); a gateway would refuse to start on them. Restore with "
            "the backup's own key"
        )


def _keep_aside(old: Path, kept: Path) -> None:
    """Keeps `old` as `kept` without moving it (a hard link, else a copy)."""
    try:
        os.link(old, kept, follow_symlinks=False)
    except OSError:  # a file system without hard links
        shutil.copy2(old, kept)
        _fsync(kept)


def _private(command: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Runs `command` with the gateway's umask (077): what it creates (the backup's database,
    the restored one, a data directory) holds every tenant's circuits and results."""

    def handler(args: argparse.Namespace) -> int:
        old = os.umask(0o077)
        try:
            return command(args)
        finally:
            os.umask(old)

    return handler


def add_parser(sub: Any) -> None:
    """Adds `store backup` and `store restore` to the `qgateway` subcommands."""
    store = sub.add_parser(
        "store", help="back up the data directory (gateways may run) or restore it (none may)"
    )
    actions = store.add_subparsers(dest="store_command", metavar="ACTION")
    store.set_defaults(handler=None, parser=store)
    common = offline_options()
    backup = actions.add_parser(
        "backup", parents=[common], help="copy the store and its keys (gateways may run)"
    )
    backup.add_argument("destination", type=Path, help="a new directory for the backup")
    backup.set_defaults(handler=guarded(_private(_cmd_backup)))
    restore = actions.add_parser(
        "restore", parents=[common], help="put a backup back (no gateway may run)"
    )
    restore.add_argument("source", type=Path, help="a directory `store backup` wrote")
    restore.set_defaults(handler=guarded(_private(_cmd_restore)))
