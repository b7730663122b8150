"""Reads of large values (a job's spec, a job's result) on threads of their own.

The store's writer thread runs every other operation in one queue: a result of 150 MB read
there held every tenant's submissions, lookups and commits for as long (another tenant's GetJob
took 1.2 s instead of 3 ms while one tenant streamed a large result over and over). Here each
thread has its own read-only connection; WAL lets it read committed state while the writer
writes, so a large read delays only other large reads.
"""

from __future__ import annotations

import asyncio
import pathlib
import sqlite3
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Final

# Large reads at once: two, so one tenant's reads cannot hold every other tenant's stream start
# behind them, and few, since each one holds a value of up to max_result_mb in memory (the
# stream budget bounds how many a tenant may hold).
BLOB_READ_THREADS: Final = 2
_BUSY_TIMEOUT_MS: Final = 5000


class BlobReader:
    """Runs single-row SELECTs on `BLOB_READ_THREADS` threads, each with its own connection."""

    def __init__(self, path: pathlib.Path) -> None:
        self._path = path
        self._executor = ThreadPoolExecutor(
            max_workers=BLOB_READ_THREADS, thread_name_prefix="qgateway-sqlite-blobs"
        )
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: list[sqlite3.Connection] = []

    async def fetch_one(self, sql: str, params: tuple[Any, ...]) -> tuple[Any, ...] | None:
        """The first row `sql` selects with `params`, or None without one.

        Raises:
            RuntimeError: After close().
            sqlite3.Error: The read failed.
        """
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._fetch_one, sql, params)

    def close(self) -> None:
        """Runs the reads already asked for, then closes every connection (idempotent); reads
        asked for later raise RuntimeError."""
        self._executor.shutdown(wait=True)
        with self._lock:
            connections, self._connections = self._connections, []
        for conn in connections:
            conn.close()

    def _fetch_one(self, sql: str, params: tuple[Any, ...]) -> tuple[Any, ...] | None:
        row: tuple[Any, ...] | None = self._connection().execute(sql, params).fetchone()
        return row

    def _connection(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            # check_same_thread=False only so close() may close it from another thread, once
            # this thread has ended; it is never used by two threads.
            conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
            conn.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
            conn.execute("PRAGMA query_only = ON")
            with self._lock:
                self._connections.append(conn)
            self._local.conn = conn
        return conn
