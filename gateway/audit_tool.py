"""`qgateway audit verify` and `qgateway audit export`: offline, on the data directory.

verify proves the chain (every record's MAC, no gaps, the exported head present) or names the
first bad record and exits 1; export writes the records as JSON lines. Both read the database
read-only, so they may run beside a live gateway; they need the audit key (never printed).
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from gateway.domain.timestamps import rfc3339

DB_FILE = "qgateway.db"


@dataclass(frozen=True)
class _Paths:
    db: Path
    key: Path
    head: Path


def _paths(args: argparse.Namespace) -> _Paths:
    from gateway.config import GatewayConfig, load_config

    config = load_config(args.config) if args.config is not None else GatewayConfig()
    data_dir: Path = args.data_dir if args.data_dir is not None else config.data_dir
    return _Paths(
        db=data_dir / DB_FILE,
        key=args.key_file or config.audit.key_path(data_dir),
        head=args.head_file or config.audit.head_path(data_dir),
    )


def _cmd_verify(args: argparse.Namespace) -> int:
    from gateway.domain import audit
    from gateway.security import audit_files
    from gateway.store import sqlite_audit

    paths = _paths(args)
    key = audit_files.read_key(paths.key)
    head = None
    if not args.no_head:
        try:
            head = audit_files.read_head(paths.head, key)
        except audit_files.UnsealedHead as exc:
            print(
                f"BAD: {exc}: after an upgrade, start the gateway once (it checks the head "
                "against the database and seals it), then verify again",
                file=sys.stderr,
            )
            return 1
        except ValueError as exc:
            # Written atomically and sealed by the gateway: anything else was written by
            # someone else, perhaps to hide the deletion of the newest records.
            print(f"BAD: {exc}", file=sys.stderr)
            return 1
    conn = sqlite_audit.open_readonly(paths.db)
    try:
        verdict = audit.verify(
            sqlite_audit.read_records_to_verify(conn), key, head, sqlite_audit.read_anchor(conn)
        )
    finally:
        conn.close()
    if verdict.ok and head is None and not args.no_head:
        # The gateway exports its head when it first starts: no head file means the file was
        # removed, which would hide the deletion of the newest records (or of every one).
        print(
            f"BAD: no exported head at {paths.head} ({verdict.count} records): the newest "
            "records cannot be checked (pass --no-head to verify without it)",
            file=sys.stderr,
        )
        return 1
    if verdict.ok:
        checked = "" if head is not None else " (no exported head: newest records unchecked)"
        print(
            f"OK: {verdict.count} records, head sequence {verdict.head.sequence} "
            f"mac {verdict.head.mac.hex()}{checked}"
        )
        return 0
    assert verdict.problem is not None
    print(
        f"BAD: record {verdict.sequence} {verdict.problem.value}: {verdict.detail} "
        f"({verdict.count} records before it verified)",
        file=sys.stderr,
    )
    return 1


def record_json(record: Any) -> dict[str, Any]:
    return {
        "sequence": record.sequence,
        "time": rfc3339(record.time),
        "end_time": rfc3339(record.end_time),
        "principal": record.principal,
        "tenant": record.tenant,
        "key_prefix": record.key_prefix,
        "peer": record.peer,
        "service": record.service,
        "method": record.method,
        "resource": record.resource,
        "backend": record.backend,
        "circuit_digest": record.circuit_digest,
        "shots": record.shots,
        "code": record.code,
        "reason": record.reason,
        "request_id": record.request_id,
        "trace_id": record.trace_id,
        "count": record.count,
        "mac": record.mac.hex(),
    }


def _export(records: Iterator[Any], out: TextIO) -> int:
    n = 0
    for record in records:
        out.write(json.dumps(record_json(record), sort_keys=True) + "\n")
        n += 1
    return n


def _cmd_export(args: argparse.Namespace) -> int:
    from gateway.store import sqlite_audit

    paths = _paths(args)
    conn = sqlite_audit.open_readonly(paths.db)
    try:
        if args.output in (None, "-"):
            _export(sqlite_audit.read_records(conn), sys.stdout)
        else:
            with open(args.output, "w", encoding="utf-8") as out:
                _export(sqlite_audit.read_records(conn), out)
    finally:
        conn.close()
    return 0


def guarded(command: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """An offline command whose files are missing, unreadable or wrong (a key, a database, a
    record, a held data directory): one line, exit status 2."""
    from gateway.domain.errors import DataLoss

    def handler(args: argparse.Namespace) -> int:
        try:
            return command(args)
        except (OSError, RuntimeError, ValueError, sqlite3.Error) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        except DataLoss as exc:
            print(f"error: {exc.message}", file=sys.stderr)
            return 2

    return handler


def offline_options() -> argparse.ArgumentParser:
    """The options of the commands that work on a data directory without a gateway."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", type=Path, default=None, help="the gateway's TOML file")
    common.add_argument("--data-dir", type=Path, default=None, help="overrides data_dir")
    return common


def add_parser(sub: Any) -> None:
    """Adds `audit verify` and `audit export` to the `qgateway` subcommands."""
    audit = sub.add_parser("audit", help="verify or export the audit log (offline)")
    actions = audit.add_subparsers(dest="audit_command", metavar="ACTION")
    audit.set_defaults(handler=None, parser=audit)
    common = offline_options()
    verify = actions.add_parser(
        "verify", parents=[common], help="prove the chain intact or name the first bad record"
    )
    verify.add_argument("--key-file", type=Path, default=None, help="overrides audit.key_file")
    verify.add_argument("--head-file", type=Path, default=None, help="overrides audit.head_file")
    verify.add_argument(
        "--no-head", action="store_true", help="do not check against the exported head"
    )
    verify.set_defaults(handler=guarded(_cmd_verify))
    export = actions.add_parser("export", parents=[common], help="write records as JSON lines")
    export.add_argument("--output", "-o", default=None, help="file (default: stdout)")
    export.set_defaults(handler=guarded(_cmd_export), key_file=None, head_file=None)
