"""Read-only store operations on threads of their own, never on the writer thread.

The store's writer thread batches operations into one transaction: a read there held every
write queued behind it. A result of 150 MB read there held every tenant's submissions and
commits for as long (another tenant's GetJob took 1.2 s instead of 3 ms), and four ListJobs
scanning their bounded 10,000 rows each (~9 ms) made another tenant's create_job take 37 ms
instead of 0.35 ms. A read also waited while the writer waited for another process's write
lock. Here each thread has its own read-only connection; WAL lets it read committed state while
a writer writes, so a read delays only the reads queued behind it in its own pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import pathlib
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Final, TypeVar

T = TypeVar("T")

# Large reads (specs, results) at once: two, so one tenant's reads cannot hold every other
# tenant's stream start behind them, and few, since each one holds a value of up to
# max_result_mb in memory (the stream budget bounds how many a tenant may hold).
BLOB_READ_THREADS: Final = 2
# Every other read (lookups, listings, queue and audit reads) at once: each is bounded (a page
# scans at most SCAN_ROWS rows, ~9 ms), so two keep one tenant's listing from holding every
# other tenant's GetJob, and more would buy little: turning rows into jobs holds the GIL, which
# the event loop and the writer thread need as well.
READ_THREADS: Final = 2
_BUSY_TIMEOUT_MS: Final = 5000


class ReaderPool:
    """Runs read-only functions on `threads` threads, each with its own connection, each call
    inside one read transaction (one snapshot for all its statements).

    The connections are `query_only`: a function that writes fails with SQLITE_READONLY
    instead of writing outside the writer's transactions.
    """

    def __init__(self, path: pathlib.Path, *, threads: int, name: str) -> None:
        self._path = path
        self._executor = ThreadPoolExecutor(
            max_workers=threads, thread_name_prefix=f"qgateway-sqlite-{name}"
        )
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: list[sqlite3.Connection] = []

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """`fn(conn)`'s value, run in one read transaction on one of the pool's threads.

        Raises:
            RuntimeError: After close().
            Exception: What `fn` raised (sqlite3.Error as SQLite raised it).
        """
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._run, fn)

    def close(self) -> None:
        """Runs the reads already asked for, then closes every connection (idempotent); reads
        asked for later raise RuntimeError."""
        self._executor.shutdown(wait=True)
        with self._lock:
            connections, self._connections = self._connections, []
        for conn in connections:
            conn.close()

    def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        conn = self._connection()
        conn.execute("BEGIN")
        try:
            value = fn(conn)
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
            raise
        # Ends the snapshot (a read transaction left open would stop checkpoints); writes
        # nothing.
        conn.execute("COMMIT")
        return value

    def _connection(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            # check_same_thread=False only so close() may close it from another thread, once
            # this thread has ended; it is never used by two threads.
            conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
            try:
                conn.row_factory = sqlite3.Row
                conn.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
                conn.execute("PRAGMA query_only = ON")
            except BaseException:
                conn.close()
                raise
            with self._lock:
                self._connections.append(conn)
            self._local.conn = conn
        return conn
