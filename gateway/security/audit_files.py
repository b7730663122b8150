"""The audit log's files outside the database: its key and its exported head."""

from __future__ import annotations

import contextlib
import hmac
import json
import os
import secrets
from pathlib import Path

from gateway.domain.audit import KEY_BYTES, MAC_BYTES, ChainPoint, head_seal


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


def write_head(path: Path, head: ChainPoint, key: bytes) -> None:
    """Replaces the head file atomically (a crash leaves the old head or the new one); the head
    is sealed with the audit key, so writing the file needs the key, not just the directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{os.getpid()}.tmp"
    data = {
        "sequence": head.sequence,
        "mac": head.mac.hex(),
        "seal": head_seal(key, head).hex(),
    }
    try:
        with tmp.open("w", encoding="utf-8") as out:
            json.dump(data, out)
            out.write("\n")
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # a failed write (a full disk) leaves nothing behind
    _fsync_dir(path.parent)


class UnsealedHead(ValueError):
    """A head file without a seal: written by a gateway from before heads were sealed, or by
    someone without the key. `head` is what it names."""

    def __init__(self, message: str, head: ChainPoint) -> None:
        super().__init__(message)
        self.head = head


def read_head(path: Path, key: bytes) -> ChainPoint | None:
    """The exported head, or None when no head was written yet.

    Raises:
        UnsealedHead: When the file is a head file without a seal.
        ValueError: When the file is not a head file this key sealed.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    try:
        data = json.loads(text)
        head = ChainPoint(int(data["sequence"]), bytes.fromhex(str(data["mac"])))
        seal = bytes.fromhex(str(data["seal"])) if "seal" in data else None
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{path}: not an audit head file ({exc})") from None
    if head.sequence < 0 or len(head.mac) != MAC_BYTES:
        raise ValueError(f"{path}: not an audit head file (sequence {head.sequence})")
    if seal is None:
        raise UnsealedHead(
            f"{path}: the head is not sealed (written by a gateway from before heads were "
            "sealed, or by someone without the audit key)",
            head,
        )
    if not hmac.compare_digest(head_seal(key, head), seal):
        raise ValueError(
            f"{path}: the head's seal is not this audit key's (the file was written by "
            "someone without the key, or for another key)"
        )
    return head
