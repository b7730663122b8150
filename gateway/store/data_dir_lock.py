"""One owner per data directory.

A gateway with the in-memory queue (server.queue = "memory") owns its store: at start it
re-queues every job the store shows running, and it alone hands jobs out. A second such gateway
on the same directory (`qgateway serve` started twice, or a new pod started beside the old one
on a shared volume) re-ran the first one's running jobs beside it and scheduled its own. Gateways
claiming from the store (queue = "store") are built to share it, with each other only.

The lock is flock(2) on `data_dir/qgateway.lock`: exclusive for the in-memory queue, shared for
the store queue. The kernel drops it with the process, SIGKILL included, so a crash leaves no
stale lock; workers never hold it (Python opens files non-inheritable and workers are exec'd).
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import Final

LOCK_FILE: Final = "qgateway.lock"
# After the holder's pid while it holds a shared directory alone to migrate the store.
MIGRATING: Final = " (migrating the store)"


class DataDirInUse(RuntimeError):
    """Another gateway holds the data directory in a way this one cannot share."""


class DataDirLock:
    def __init__(self, fd: int, *, exclusive: bool) -> None:
        self._fd: int | None = fd
        self._exclusive = exclusive

    def try_alone(self) -> bool:
        """Whether no other gateway holds the directory: a shared lock is made exclusive when
        it can be (until `share` is called), so no other gateway starts meanwhile."""
        if self._exclusive or self._fd is None:
            return self._fd is not None
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.pwrite(self._fd, f"{os.getpid()}{MIGRATING}".encode(), 0)
            return True
        except BlockingIOError:
            # Linux drops the shared lock before trying the exclusive one: take it again.
            self.share()
            return False

    def share(self) -> None:
        """Back to the shared lock of a gateway with queue = 'store' after `try_alone`.

        Raises:
            DataDirInUse: A gateway with queue = 'memory' took the directory meanwhile.
        """
        if self._exclusive or self._fd is None:
            return
        try:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DataDirInUse("a gateway with queue = 'memory' took the data directory") from None

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the last descriptor drops the flock
            self._fd = None


def lock_data_dir(data_dir: Path, *, exclusive: bool) -> DataDirLock:
    """Takes the data directory's lock (creating the directory), or raises DataDirInUse."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 64, 0).decode(errors="replace").strip()
        os.close(fd)
        where = data_dir.resolve()
        if holder.endswith(MIGRATING):
            raise DataDirInUse(
                f"{where}: the gateway with pid {holder.removesuffix(MIGRATING)} is migrating"
                " the store; start this one once it serves"
            ) from None
        if exclusive:
            by = f"the gateway with pid {holder}" if holder else "gateways with queue = 'store'"
            raise DataDirInUse(
                f"{where} is in use by {by}: a gateway with queue = 'memory' must be alone on its"
                " data directory (stop the other, or give this one its own data_dir)"
            ) from None
        raise DataDirInUse(
            f"{where} is owned by the gateway with pid {holder or '?'}, which uses queue ="
            " 'memory': gateways with queue = 'store' share a data directory only with each other"
        ) from None
    except BaseException:
        os.close(fd)
        raise
    # The exclusive holder names itself for the message above; shared holders leave it empty.
    os.ftruncate(fd, 0)
    if exclusive:
        os.pwrite(fd, str(os.getpid()).encode(), 0)
    return DataDirLock(fd, exclusive=exclusive)
