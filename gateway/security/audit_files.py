"""The audit log's files outside the database: its key and its exported head."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from pathlib import Path

from gateway.domain.audit import KEY_BYTES, ChainPoint


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def load_or_create_key(path: Path) -> bytes:
    """The audit key at `path`, created (32 random bytes, mode 0600) when absent.

    Written to a temporary file and linked into place: a crash never leaves a truncated key,
    and two processes starting at once agree on one key.

    Raises:
        RuntimeError: When the file holds something else than a key.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(secrets.token_bytes(KEY_BYTES))
                out.flush()
                os.fsync(out.fileno())
            with contextlib.suppress(FileExistsError):  # another process won the race
                os.link(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        _fsync_dir(path.parent)
    return read_key(path)


def read_key(path: Path) -> bytes:
    """The audit key at `path` (never created: verifying needs the key that wrote the chain)."""
    key = path.read_bytes()
    if len(key) != KEY_BYTES:
        raise RuntimeError(
            f"{path}: an audit key is {KEY_BYTES} bytes, found {len(key)}; it is not this "
            "gateway's audit key"
        )
    return key


def write_head(path: Path, head: ChainPoint) -> None:
    """Replaces the head file atomically (a crash leaves the old head or the new one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{os.getpid()}.tmp"
    try:
        with tmp.open("w", encoding="utf-8") as out:
            json.dump({"sequence": head.sequence, "mac": head.mac.hex()}, out)
            out.write("\n")
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # a failed write (a full disk) leaves nothing behind
    _fsync_dir(path.parent)


def read_head(path: Path) -> ChainPoint | None:
    """The exported head, or None when no head was written yet.

    Raises:
        ValueError: When the file is not a head file.
    """
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    try:
        return ChainPoint(int(data["sequence"]), bytes.fromhex(str(data["mac"])))
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{path}: not an audit head file ({exc})") from None
