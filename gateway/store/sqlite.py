"""The embedded SQLite store: one writer thread, group commit, versioned schema.

Every write is a callable run on the single thread that owns the writing connection. The thread
takes all operations waiting in its queue and runs them in one transaction, each inside its own
SAVEPOINT, so one failing operation rolls back alone. Futures are resolved only after COMMIT
returned: with `synchronous=FULL` that means a job is acknowledged only once it is on disk, while
the fsync is shared by everything that arrived during the previous one. Reads run on reader
threads with connections of their own (gateway.store.sqlite_readers), never behind writes: specs
and results, up to hundreds of MB, on one pool, every other read on another. A write's future
resolves after its COMMIT, so a read asked for after it was awaited sees it (WAL).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import pathlib
import queue
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Generic, TypeVar

from gateway.domain import queue_order
from gateway.domain.audit import Effect
from gateway.domain.errors import Code, DataLoss, StoreUnavailable, reason_code
from gateway.domain.job_filter import Comparison, FilterField, FilterOp, JobFilter
from gateway.domain.jobs import (
    FINAL_STATES,
    ExecutionInfo,
    Job,
    JobError,
    JobState,
    JobTimings,
    SamplerOutput,
    StateTransition,
)
from gateway.domain.pricing import Cost, Usage, reported
from gateway.store.base import (
    CreateOutcome,
    ExpiryCursor,
    JobCursor,
    JobPage,
    NewJob,
    Recovered,
    request_id_reused,
)
from gateway.store.sqlite_audit import MIGRATION_SQL as SQLITE_AUDIT_MIGRATION
from gateway.store.sqlite_audit import SqliteAudit, job_changed, job_created
from gateway.store.sqlite_keys import UNREVOKED_INDEX_SQL as SQLITE_KEYS_UNREVOKED_INDEX
from gateway.store.sqlite_keys import SqliteApiKeys
from gateway.store.sqlite_pages import creation_us, page_query
from gateway.store.sqlite_readers import BLOB_READ_THREADS, READ_THREADS, ReaderPool
from gateway.store.sqlite_sessions import TOTALS_MIGRATION_SQL as SQLITE_SESSION_TOTALS
from gateway.store.sqlite_sessions import SqliteSessions, add_to_totals
from gateway.store.sqlite_tenants import MIGRATION_SQL as SQLITE_TENANTS_MIGRATION
from gateway.store.sqlite_tenants import SqliteTenants, reserve, settle
from gateway.store.sqlite_time import from_us, opt_from_us, to_us, within_dedup_window

T = TypeVar("T")


@dataclass(frozen=True)
class Migration:
    version: int
    sql: str
    # A step SQL alone cannot express; runs after `sql`, in the same transaction.
    apply: Callable[[sqlite3.Connection], None] | None = None
    # Rebuilding a table needs foreign keys off: DROP TABLE of a parent would run its ON DELETE
    # CASCADE actions (and delete every result). Integrity is checked before the commit.
    foreign_keys_off: bool = False
    # Removes what older gateways still use: run only by a gateway alone on the database, never
    # under replicas of an older version (sharing it with queue = "store"), which would fail.
    needs_alone: bool = False


log = logging.getLogger(__name__)


class StoreInUse(RuntimeError):
    """A migration that older gateways cannot run beside is due while others use the store."""


class SchemaTooNew(RuntimeError):
    """The database was migrated by a newer gateway: this one cannot read it safely."""


class StoreLocked(RuntimeError):
    """Another process (an operator's sqlite3 shell) held the database's write lock for the
    whole of START_LOCK_WAIT_S while this gateway started."""


# How long a start waits for another process's write lock on the database (each attempt waits
# the connection's busy timeout) before it gives up with one line instead of a traceback.
START_LOCK_WAIT_S = 60.0


# How long a start waits for a replica beside it to apply a migration it may not apply itself
# (one replica of a version applies it, the others wait), and how often it looks.
PEER_MIGRATION_WAIT_S = 30.0
PEER_MIGRATION_POLL_S = 0.1


# Append only: a released migration is never edited, the next change is a new version.
MIGRATIONS: Final[tuple[Migration, ...]] = (
    Migration(
        1,
        """
        CREATE TABLE jobs (
            -- AUTOINCREMENT: a seq is never reused, even after the newest job is deleted,
            -- so list cursors stay valid across retention sweeps.
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            id TEXT NOT NULL UNIQUE,
            tenant TEXT NOT NULL,
            request_id TEXT,
            request_hash BLOB NOT NULL,
            backend TEXT NOT NULL,
            state TEXT NOT NULL CHECK (state IN
                ('QUEUED', 'SUBMITTING', 'RUNNING', 'SUCCEEDED', 'FAILED', 'CANCELLED')),
            spec BLOB NOT NULL,
            num_pubs INTEGER NOT NULL,
            -- uint64 as decimal text: SQLite integers are signed 64-bit.
            seed TEXT NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            created_at INTEGER NOT NULL,
            started_at INTEGER,
            ended_at INTEGER,
            error_reason TEXT,
            error_message TEXT,
            execution TEXT,
            timings TEXT,
            UNIQUE (tenant, request_id)
        );
        CREATE INDEX jobs_tenant_seq ON jobs (tenant, seq);
        CREATE INDEX jobs_state_seq ON jobs (state, seq);
        CREATE TABLE results (
            job_id TEXT PRIMARY KEY REFERENCES jobs (id) ON DELETE CASCADE,
            data BLOB NOT NULL,
            created_at INTEGER NOT NULL
        );
        """,
    ),
    Migration(
        2,
        """
        -- Where a job is queued and runs, when that differs from the backend it was submitted
        -- to (the fallback backend while the requested one's breaker was open). NULL: backend.
        ALTER TABLE jobs ADD COLUMN placement TEXT;
        """,
    ),
    # --- issue 7, long-running behaviour (CANCELLING, state history, result expiry) ---------
    Migration(
        3,
        """
        -- When the job last changed (microseconds since the epoch, like every time here).
        ALTER TABLE jobs ADD COLUMN updated_at INTEGER;
        -- Every state entered, in order: JSON [[state, time_us], ...], one entry per state
        -- (the last time, for a state entered again after a restart).
        ALTER TABLE jobs ADD COLUMN state_history TEXT;
        -- When a SUCCEEDED job's result stops being kept (fixed when the job finishes).
        ALTER TABLE jobs ADD COLUMN result_expires_at INTEGER;
        """,
        apply=lambda conn: _migrate_long_running(conn),
        foreign_keys_off=True,
    ),
    # --- end of issue 7, long-running behaviour ---------------------------------------------
    # --- issue 7, job failures as google.rpc.Status (code and ErrorInfo metadata) ----------
    Migration(
        4,
        """
        -- The failure's status code (google.rpc.Code number). NULL in rows written before this
        -- step: read as the reason's registered code.
        ALTER TABLE jobs ADD COLUMN error_code INTEGER;
        -- ErrorInfo metadata: a JSON object of strings, e.g. {"pubIndex": "1"}.
        ALTER TABLE jobs ADD COLUMN error_metadata TEXT;
        -- Reasons that were status-code names got names of their own.
        UPDATE jobs SET error_reason = 'OUT_OF_MEMORY' WHERE error_reason = 'RESOURCE_EXHAUSTED';
        UPDATE jobs SET error_reason = 'INTERNAL_ERROR' WHERE error_reason = 'INTERNAL';
        """,
    ),
    # --- end of issue 7, job failures as google.rpc.Status -----------------------------------
    # --- issue 7, labels and ListJobs paging by create time ---------------------------------
    Migration(
        5,
        """
        -- JobSpec.labels as a JSON object of strings (NULL: no labels); ListJobs filters on
        -- them with json_each.
        ALTER TABLE jobs ADD COLUMN labels TEXT;
        -- ListJobs pages a tenant's jobs newest first by (created_at, id): page tokens hold the
        -- tenant's own last job, never the global seq.
        CREATE INDEX jobs_tenant_created ON jobs (tenant, created_at, id);
        """,
    ),
    # --- end of issue 7, labels and ListJobs paging -----------------------------------------
    Migration(
        6,
        """
        -- JobOptions.sampler_output the job asked for (a SamplerOutput value; NULL in rows
        -- written before this step: they had samples and counts unless counts_only).
        ALTER TABLE jobs ADD COLUMN sampler_output TEXT;
        """,
    ),
    # --- issue 8, remote ids and the claim queue ----------------------------------------------
    Migration(
        7,
        """
        -- The provider's id of the job (REMOTE runners), written when the job leaves
        -- SUBMITTING: a restarted gateway re-attaches to it instead of submitting again.
        ALTER TABLE jobs ADD COLUMN remote_id TEXT;
        -- A claim: who holds the job and until when (microseconds); NULL: unclaimed. Cleared
        -- when the job ends.
        ALTER TABLE jobs ADD COLUMN lease_owner TEXT;
        ALTER TABLE jobs ADD COLUMN lease_expires_at INTEGER;
        -- Waiting jobs (unclaimed QUEUED) per queue: by tenant for the head of each tenant's
        -- line, and oldest first for listing and queue deadlines. Partial: only waiting rows.
        CREATE INDEX jobs_waiting_by_tenant
            ON jobs (coalesce(placement, backend), tenant, created_at, id)
            WHERE state = 'QUEUED' AND lease_owner IS NULL;
        CREATE INDEX jobs_waiting
            ON jobs (coalesce(placement, backend), created_at, id)
            WHERE state = 'QUEUED' AND lease_owner IS NULL;
        -- Claimed jobs per queue by lease expiry: live claims, lapsed leases, the next expiry.
        CREATE INDEX jobs_claimed
            ON jobs (coalesce(placement, backend), lease_expires_at)
            WHERE lease_owner IS NOT NULL;
        -- When each tenant was last claimed from, per queue (an ordinal, larger = later): fair
        -- share's tie-break, kept while the tenant has nothing queued.
        CREATE TABLE claim_history (
            placement TEXT NOT NULL,
            tenant TEXT NOT NULL,
            last_claim INTEGER NOT NULL,
            PRIMARY KEY (placement, tenant)
        ) WITHOUT ROWID;
        """,
    ),
    # --- end of issue 8, remote ids and the claim queue ---------------------------------------
    # --- issue 10, sessions (gateway.store.sqlite_sessions) -----------------------------------
    Migration(
        8,
        """
        CREATE TABLE sessions (
            id TEXT PRIMARY KEY,
            tenant TEXT NOT NULL,
            request_id TEXT,
            request_hash BLOB NOT NULL,
            backend TEXT NOT NULL,
            mode TEXT NOT NULL,
            state TEXT NOT NULL,
            failure_policy TEXT NOT NULL,
            -- Resolved TTLs, in seconds.
            max_ttl_s REAL NOT NULL,
            idle_ttl_s REAL NOT NULL,
            labels TEXT,
            created_at INTEGER NOT NULL,
            first_job_at INTEGER,
            last_activity_at INTEGER,
            ended_at INTEGER,
            end_reason TEXT,
            provider_session_id TEXT,
            UNIQUE (tenant, request_id)
        );
        CREATE INDEX sessions_tenant_created ON sessions (tenant, created_at, id);
        CREATE INDEX sessions_open ON sessions (tenant)
            WHERE state NOT IN ('CLOSED', 'FAILED');
        -- The session a job runs in (NULL: none).
        ALTER TABLE jobs ADD COLUMN session_id TEXT;
        CREATE INDEX jobs_session ON jobs (session_id, created_at, id)
            WHERE session_id IS NOT NULL;
        """,
    ),
    # --- end of issue 10, sessions ------------------------------------------------------------
    # --- issue 11, api keys (gateway.store.sqlite_keys) ---------------------------------------
    Migration(
        9,
        """
        -- Only the SHA-256 of a key is stored; the prefix is its public id.
        CREATE TABLE api_keys (
            prefix TEXT PRIMARY KEY,
            tenant TEXT NOT NULL,
            sha256 TEXT NOT NULL,
            display_name TEXT NOT NULL DEFAULT '',
            role TEXT NOT NULL,
            created_at INTEGER NOT NULL,
            expires_at INTEGER,
            revoked_at INTEGER,
            last_used_at INTEGER
        ) WITHOUT ROWID;
        CREATE INDEX api_keys_tenant ON api_keys (tenant, prefix);
        """,
    ),
    # --- end of issue 11, api keys ------------------------------------------------------------
    # --- issue 11, tenants and quota (gateway.store.sqlite_tenants) ---------------------------
    Migration(10, SQLITE_TENANTS_MIGRATION),
    # --- end of issue 11, tenants and quota ---------------------------------------------------
    # --- issue 11, audit (gateway.store.sqlite_audit) -----------------------------------------
    Migration(11, SQLITE_AUDIT_MIGRATION),
    # --- end of issue 11, audit ---------------------------------------------------------------
    # --- issue 12, telemetry ------------------------------------------------------------------
    Migration(
        12,
        """
        -- The W3C traceparent a job was created under (NULL: tracing was off).
        ALTER TABLE jobs ADD COLUMN trace_context TEXT;
        """,
    ),
    # --- end of issue 12, telemetry -----------------------------------------------------------
    # --- review: listing a tenant's keys (gateway.store.sqlite_keys) -------------------------
    Migration(13, SQLITE_KEYS_UNREVOKED_INDEX),
    # --- review: session totals kept, not summed over jobs (gateway.store.sqlite_sessions) ---
    Migration(14, SQLITE_SESSION_TOTALS),
    # --- review: expired results deleted by a sweep (gateway.jobs.retention_sweep) --------------
    Migration(
        15,
        """
        -- The sweep walks jobs by result expiry from where it stopped (a cursor), not every job.
        CREATE INDEX jobs_result_expiry ON jobs (result_expires_at, id)
            WHERE result_expires_at IS NOT NULL;
        """,
    ),
    # --- job retention (gateway.jobs.retention_sweep) ----------------------------------------
    Migration(
        16,
        """
        -- The retention sweep deletes the oldest ended jobs and sessions first.
        CREATE INDEX jobs_ended ON jobs (ended_at, id) WHERE ended_at IS NOT NULL;
        CREATE INDEX sessions_ended ON sessions (ended_at, id) WHERE ended_at IS NOT NULL;
        """,
    ),
    # --- review: a job's spec in a table of its own ------------------------------------------
    Migration(
        17,
        """
        -- A spec (up to max_request_bytes) inside the jobs row made SQLite walk its overflow
        -- pages to reach every column after it, in every listing and lookup, and rewrite it at
        -- every state change: a tenant's jobs of 3 MiB specs made one filtered ListJobs page
        -- take 0.7 s on the store's thread and every other tenant's calls wait seconds.
        CREATE TABLE job_specs (
            job_id TEXT PRIMARY KEY REFERENCES jobs (id) ON DELETE CASCADE,
            spec BLOB NOT NULL
        );
        INSERT INTO job_specs (job_id, spec) SELECT id, spec FROM jobs;
        ALTER TABLE jobs DROP COLUMN spec;
        """,
        needs_alone=True,
    ),
    # --- review: a cost quota's unit changed mid-period (gateway.store.sqlite_tenants) --------
    Migration(
        18,
        """
        -- The unit of a period's cost sums: a job charged in another unit (the tenant's cost
        -- quota moved from USD to EUR mid-period) counted its dollars as euros. '' in the rows
        -- written before: any unit, as then.
        ALTER TABLE quota_totals ADD COLUMN cost_unit TEXT NOT NULL DEFAULT '';
        """,
    ),
)

LATEST_SCHEMA_VERSION: Final = MIGRATIONS[-1].version

# The result sweep's walk (jobs_result_expiry): from the start, and from a cursor.
# With each result's size (length() of a blob reads its record header, not its pages).
_EXPIRED_RESULTS_SQL: Final = (
    "SELECT id, result_expires_at,"
    " (SELECT length(data) FROM results WHERE job_id = id) AS size FROM jobs"
    " WHERE result_expires_at IS NOT NULL AND result_expires_at <= ?"
    " ORDER BY result_expires_at, id LIMIT ?"
)
_EXPIRED_RESULTS_AFTER_SQL: Final = (
    "SELECT id, result_expires_at,"
    " (SELECT length(data) FROM results WHERE job_id = id) AS size FROM jobs"
    " WHERE result_expires_at IS NOT NULL AND (result_expires_at, id) > (?, ?)"
    " AND result_expires_at <= ? ORDER BY result_expires_at, id LIMIT ?"
)
# What one retention transaction frees at most (past its first row): deleting a blob reads
# every page it frees (~4 ms per MiB here) while the writer holds every tenant's writes, and
# 1000 rows of 256 MiB results (or 16 MiB specs) held it for minutes.
SWEEP_TRANSACTION_BYTES: Final = 8 << 20
# The retention sweep's batches (jobs_ended, sessions_ended): deleted rows leave the index, so
# every batch starts from the oldest again and needs no cursor.
_ENDED_SESSIONS_SQL: Final = (
    "SELECT id FROM sessions WHERE ended_at IS NOT NULL AND ended_at <= ?"
    " AND NOT EXISTS (SELECT 1 FROM jobs WHERE jobs.session_id = sessions.id)"
    " ORDER BY ended_at, id LIMIT ?"
)


def _within_bytes(rows: list[sqlite3.Row]) -> list[sqlite3.Row]:
    """The first rows whose `size` column sums to at most SWEEP_TRANSACTION_BYTES (at least
    one)."""
    total = 0
    for taken, row in enumerate(rows):
        total += int(row["size"] or 0)
        if taken and total > SWEEP_TRANSACTION_BYTES:
            return rows[:taken]
    return rows


# Bounds one transaction's size (and so the latency of its first operation) under a flood.
_MAX_BATCH: Final = 1000
_BUSY_TIMEOUT_MS: Final = 5000
_UINT64_MAX: Final = 2**64 - 1
# The encoders json.dumps(..., sort_keys=True) and json.dumps(..., separators=(",", ":")) build
# on every call (any option but the defaults makes a new one), made once: ~1.2 us less per
# value written (each job's, on the event loop). The same settings, the same bytes.
_SORTED_JSON: Final = json.JSONEncoder(sort_keys=True)
_COMPACT_JSON: Final = json.JSONEncoder(separators=(",", ":"))

_JOB_COLUMNS: Final = (
    "seq, id, tenant, request_id, backend, state, num_pubs, seed, attempts, created_at, "
    "started_at, ended_at, error_reason, error_message, execution, timings, placement, "
    "error_code, error_metadata"
    # issue 7, long-running behaviour
    ", updated_at, state_history, result_expires_at"
    # issue 7, labels
    ", labels, sampler_output"
    # issue 8, remote ids
    ", remote_id"
    # issue 10, sessions
    ", session_id"
    # issue 12, telemetry
    ", trace_context"
)
# How many columns _JOB_COLUMNS names (_row_to_job reads them by position).
_JOB_WIDTH: Final = len(_JOB_COLUMNS.split(","))
_FINAL_NAMES: Final = tuple(s.value for s in FINAL_STATES)
_FINAL_PLACEHOLDERS: Final = ", ".join("?" * len(_FINAL_NAMES))
# The retention sweep's jobs (see _ENDED_SESSIONS_SQL): (until, *final states, limit).
_ENDED_JOBS_SQL: Final = (
    "SELECT id, coalesce((SELECT length(spec) FROM job_specs WHERE job_id = id), 0)"
    " + coalesce((SELECT length(data) FROM results WHERE job_id = id), 0) AS size"
    " FROM jobs WHERE ended_at IS NOT NULL AND ended_at <= ?"
    f" AND state IN ({_FINAL_PLACEHOLDERS}) ORDER BY ended_at, id LIMIT ?"
)
# The queue a job waits in. The very expression of the claim indexes (migration 7): SQLite uses
# an expression index only when a query spells the expression the same way.
_PLACE: Final = "coalesce(placement, backend)"


@dataclass(frozen=True)
class _Op(Generic[T]):
    fn: Callable[[sqlite3.Connection], T]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[T]
    # Called on the loop with (value, error) once the transaction ended, even when the caller
    # went away (its future cancelled): how an operation left running ended.
    after: Callable[[Any, BaseException | None], None] | None = None


@dataclass(frozen=True)
class _Stop:
    """Queued by close(): everything before it runs, then the thread stops and resolves it."""

    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[None]


class SqliteStore(SqliteSessions, SqliteApiKeys, SqliteTenants, SqliteAudit):
    """Store on a SQLite file in WAL mode with `synchronous=FULL`.

    Args:
        path: The database file; its directory is created by `open()`.

    Attributes:
        commits: Write transactions committed by the writer thread so far (one per batch).
    """

    def __init__(self, path: pathlib.Path) -> None:
        self.path = path
        self.commits = 0
        # Told (on its loop) each time a write fails STORE_UNAVAILABLE (readiness watches it).
        self._on_unavailable: tuple[Callable[[], None], asyncio.AbstractEventLoop] | None = None
        # A write failed SQLITE_FULL, and no probe has found room since.
        self._full = False
        self._queue: queue.SimpleQueue[_Op[Any] | _Stop] = queue.SimpleQueue()
        self._lock = threading.Lock()  # orders the open/closed check against enqueueing
        self._opening = False
        self._thread: threading.Thread | None = None
        self._closed = False
        # The event loop's own read-only connection, for point lookups every submission makes
        # (request_id): an indexed read takes microseconds, a hand-off to the writer thread and
        # back far longer. WAL lets it read committed state while the writer writes.
        self._reader: sqlite3.Connection | None = None
        # Reads run off the writer thread (gateway.store.sqlite_readers): specs and results on
        # a pool of their own, so a large result read never holds a GetJob behind it.
        self._reads: ReaderPool | None = None
        self._blobs: ReaderPool | None = None
        self._reads_closed = False

    # -- lifecycle ---------------------------------------------------------------------------

    async def open(self, *, alone: Callable[[], bool] | None = None) -> None:
        """Creates the directory, opens the database and applies missing migrations.

        Args:
            alone: Asked (on the store's thread) before a migration that removes what older
                gateways use: whether no other gateway uses the database, kept so until the
                open ends (DataDirLock.try_alone). None: this process is its only user.

        Raises:
            StoreInUse: Such a migration is due and `alone` says other gateways use it.
            RuntimeError: When already opened or closed, when the database was written by a
                newer schema version than this code knows, or when WAL cannot be enabled.
        """
        with self._lock:
            if self._opening or self._closed:
                raise RuntimeError("SqliteStore.open() may be called only once")
            self._opening = True
        try:
            await asyncio.to_thread(self.path.parent.mkdir, parents=True, exist_ok=True)
        except BaseException:
            with self._lock:
                self._closed = True
            raise
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = loop.create_future()
        thread = threading.Thread(
            target=self._main,
            args=(loop, ready, alone),
            name="qgateway-sqlite-writer",
            # A process exiting without close() must not hang on this thread; an unfinished
            # transaction is rolled back by SQLite and was never acknowledged.
            daemon=True,
        )
        with self._lock:
            if self._closed:  # close() raced with open()
                raise RuntimeError("the store was closed while opening")
            self._thread = thread
        thread.start()
        await ready
        # Only now: a read must not see the schema before the migrations are committed.
        self._reader = _connect_reader(self.path)
        self._reads = ReaderPool(self.path, threads=READ_THREADS, name="reads")
        self._blobs = ReaderPool(self.path, threads=BLOB_READ_THREADS, name="blobs")

    def on_write_unavailable(self, callback: Callable[[], None]) -> None:
        """Calls `callback`, on the calling event loop, each time a write fails
        STORE_UNAVAILABLE (a full disk, an I/O error, a read-only file, a lock held past
        busy_timeout). One listener; a second replaces the first."""
        self._on_unavailable = (callback, asyncio.get_running_loop())

    async def probe_write(self) -> None:
        """Commits a write that changes nothing (the database header's user_version set to
        itself, appended to the WAL and synced like any commit): whether the store can write.
        After a write failed for want of space, also whether PROBE_ROOM_BYTES are free, on
        the file system and under the database's page limit: the header is rewritten in
        place, and the WAL's file reused, so it commits on a full disk where no job fits.

        Raises:
            StoreUnavailable: It cannot now.
        """

        def rewrite_header(conn: sqlite3.Connection) -> int:
            (version,) = conn.execute("PRAGMA user_version").fetchone()
            conn.execute(f"PRAGMA user_version = {int(version)}")
            if not self._full:
                return PROBE_ROOM_BYTES
            pages = {
                name: int(conn.execute(f"PRAGMA {name}").fetchone()[0])
                for name in ("page_size", "page_count", "max_page_count", "freelist_count")
            }
            free_pages = pages["max_page_count"] - pages["page_count"] + pages["freelist_count"]
            disk = os.statvfs(self.path.parent)
            return min(free_pages * pages["page_size"], disk.f_bavail * disk.f_frsize)

        room = await self._call(rewrite_header)
        if room < PROBE_ROOM_BYTES:
            raise StoreUnavailable(
                "STORE_UNAVAILABLE",
                f"the gateway's store has {room} bytes free after it filled up; "
                f"{PROBE_ROOM_BYTES} are needed",
                metadata={"sqliteError": "SQLITE_FULL"},
                retry_after=STORE_RETRY_S,
            )
        self._full = False

    async def close(self) -> None:
        """Runs every operation already asked for, then closes the connections and threads.

        Idempotent; operations after close raise RuntimeError.
        """
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        pools = [pool for pool in (self._reads, self._blobs) if pool is not None]
        self._reads = self._blobs = None
        self._reads_closed = True
        for pool in pools:
            await asyncio.to_thread(pool.close)  # answers the reads already asked for
        with self._lock:
            first = not self._closed
            self._closed = True
            thread = self._thread
            if first and thread is not None:
                self._queue.put(_Stop(loop, done))
        if thread is None:
            return
        if first:
            await done
        else:
            # A second close() still returns only once the thread is gone.
            await asyncio.to_thread(thread.join)

    # -- the Store protocol ------------------------------------------------------------------

    async def create_job(self, new: NewJob) -> CreateOutcome:
        """Inserts a QUEUED job, durably, unless (tenant, request_id) already names one.

        A request_id is recognised for REQUEST_ID_DEDUP_WINDOW_S after the earlier job's
        created_at (measured against `new.created_at`); after that the old job gives the id up.
        The job's create time is `new.created_at`, or just after the tenant's newest job's when
        that is later (gateway.store.sqlite_pages.creation_us).

        Raises:
            InvalidArgument: reason REQUEST_ID_REUSED, when the id names a job with another hash.
        """
        _check_seed(new.seed)
        clock_us = to_us(new.created_at)

        def op(conn: sqlite3.Connection) -> CreateOutcome:
            earlier = _request_row(conn, new.tenant, new.request_id) if new.request_id else None
            if earlier is not None:
                if within_dedup_window(int(earlier["created_at"]), clock_us):
                    existing = _row_to_job(earlier)
                    if bytes(earlier["request_hash"]) == new.request_hash:
                        return CreateOutcome(existing, created=False)
                    raise request_id_reused(new.request_id, existing.id)
                # Outside the window the id is free again: the old job gives it up.
                conn.execute("UPDATE jobs SET request_id = NULL WHERE id = ?", (earlier["id"],))
            created_us = creation_us(conn, "jobs", new.tenant, clock_us)
            if new.charge is not None:  # the tenant's limits, checked and reserved (issue 11)
                reserve(conn, new.id, new.tenant, new.charge, new.created_at)
            insert_args = (
                new.id,
                new.tenant,
                new.request_id or None,
                new.request_hash,
                new.backend,
                None if new.placement in ("", new.backend) else new.placement,
                JobState.QUEUED.value,
                new.num_pubs,
                str(new.seed),
                created_us,
                _labels_to_json(new.labels),
                new.sampler_output.value,
                new.session or None,
                new.trace_context or None,
                created_us,
                _COMPACT_JSON.encode([[JobState.QUEUED.value, created_us]]),
            )
            row = conn.execute(_INSERT_JOB_SQL, insert_args).fetchone()
            conn.execute(_INSERT_SPEC_SQL, (new.id, new.spec))
            return CreateOutcome(_row_to_job(row), created=True)

        # A submission's audit record commits with its job (issue 11, audit).
        return await self._audited(Effect.CREATE_JOB, op, job_created(new.request_hash))

    async def find_request(
        self, tenant: str, request_id: str, now: datetime
    ) -> tuple[Job, bytes] | None:
        """The job (and its request hash) that request_id names within the dedup window."""
        now_us = to_us(now)
        if self._reader is None:
            raise RuntimeError("the store is not open")
        try:
            return _lookup_request(self._reader, tenant, request_id, now_us)
        except sqlite3.OperationalError:
            # Busy (a WAL reader rarely is: the log being recovered or reset): the writer
            # thread may wait for it; the event loop must not.
            pass

        def op(conn: sqlite3.Connection) -> tuple[Job, bytes] | None:
            return _lookup_request(conn, tenant, request_id, now_us)

        return await self._call(op, readonly=True)

    async def get_job(self, job_id: str, tenant: str | None = None) -> Job | None:
        """The job, or None if absent or (when tenant is given) owned by another tenant."""

        def op(conn: sqlite3.Connection) -> Job | None:
            job = _select_job(conn, job_id)
            if job is None or (tenant is not None and job.tenant != tenant):
                return None
            return job

        return await self._call(op, readonly=True)

    async def list_jobs(
        self,
        tenant: str,
        *,
        filter: JobFilter | None = None,
        after: JobCursor | None = None,
        limit: int = 50,
    ) -> JobPage:
        """The tenant's jobs matching `filter` (None: all), newest first (create time, then id,
        both descending), starting after cursor `after`.

        The filter runs in SQL with every client value a bound parameter; a filtered page
        examines a bounded number of jobs and may come back short (gateway.store.sqlite_pages).

        Raises:
            ValueError: When limit is below 1 (page-size defaults belong to the API layer).
        """
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        query = page_query("jobs", _JOB_COLUMNS, tenant, filter, after, limit, _comparison_sql)

        def op(conn: sqlite3.Connection) -> JobPage:
            jobs, cursor = query.page(conn, _row_to_job)
            return JobPage(jobs=jobs, next_cursor=cursor)

        return await self._call(op, readonly=True)

    async def get_spec(self, job_id: str) -> bytes | None:
        row = await self._read_blob("SELECT spec FROM job_specs WHERE job_id = ?", (job_id,))
        return None if row is None else bytes(row[0])

    async def reserved_shots(self, job_id: str) -> int | None:
        def op(conn: sqlite3.Connection) -> int | None:
            sql = "SELECT shots_reserved FROM quota_ledger WHERE job_id = ?"
            row = conn.execute(sql, (job_id,)).fetchone()
            return None if row is None else int(row[0])

        return await self._call(op, readonly=True)

    async def get_result(self, job_id: str) -> bytes | None:
        row = await self._read_blob("SELECT data FROM results WHERE job_id = ?", (job_id,))
        return None if row is None else bytes(row[0])

    async def _read_blob(self, sql: str, params: tuple[Any, ...]) -> sqlite3.Row | None:
        def op(conn: sqlite3.Connection) -> sqlite3.Row | None:
            row: sqlite3.Row | None = conn.execute(sql, params).fetchone()
            return row

        return await self._read(self._blobs, op)

    async def get_result_within(
        self, job_id: str, max_bytes: int
    ) -> tuple[int, bytes | None] | None:
        row = await self._read_blob(
            "SELECT length(data), CASE WHEN length(data) <= ? THEN data END"
            " FROM results WHERE job_id = ?",
            (max_bytes, job_id),
        )
        if row is None:
            return None
        return int(row[0]), None if row[1] is None else bytes(row[1])

    async def mark_submitting(
        self, job_id: str, at: datetime, *, holder: str | None = None
    ) -> Job | None:
        """QUEUED -> SUBMITTING (a REMOTE runner is about to hand the job to its provider);
        None from any other state, or when `holder` is given and does not hold its lease."""
        at_us = to_us(at)

        def op(conn: sqlite3.Connection) -> Job | None:
            row = conn.execute(
                f"UPDATE jobs SET state = 'SUBMITTING', {_ENTER_STATE}"
                f" WHERE id = ? AND state = 'QUEUED' AND {_HELD_BY} RETURNING {_JOB_COLUMNS}",
                (*_entering(JobState.SUBMITTING, at_us), job_id, holder, holder),
            ).fetchone()
            return None if row is None else _row_to_job(row)

        return await self._call(op)

    async def mark_queued_again(
        self, job_id: str, at: datetime, *, holder: str | None = None
    ) -> Job | None:
        """SUBMITTING with no remote id -> QUEUED (the provider refused the submit and
        created nothing); None otherwise, or when `holder` is given and does not hold its
        lease."""
        at_us = to_us(at)

        def op(conn: sqlite3.Connection) -> Job | None:
            row = conn.execute(
                f"UPDATE jobs SET state = 'QUEUED', {_ENTER_STATE} WHERE id = ?"
                f" AND state = 'SUBMITTING' AND remote_id IS NULL AND {_HELD_BY}"
                f" RETURNING {_JOB_COLUMNS}",
                (*_entering(JobState.QUEUED, at_us), job_id, holder, holder),
            ).fetchone()
            return None if row is None else _row_to_job(row)

        return await self._call(op)

    async def mark_running(
        self,
        job_id: str,
        started_at: datetime,
        remote_id: str | None = None,
        *,
        rerun: bool = False,
        holder: str | None = None,
    ) -> Job | None:
        """QUEUED or SUBMITTING (and RUNNING when `rerun`) -> RUNNING, incrementing attempts and
        storing the provider's `remote_id` in the same transaction (None keeps the stored one);
        None from any other state, or when `holder` is given and does not hold its lease."""
        started_us = to_us(started_at)
        states = "('QUEUED', 'SUBMITTING', 'RUNNING')" if rerun else "('QUEUED', 'SUBMITTING')"

        def op(conn: sqlite3.Connection) -> Job | None:
            row = conn.execute(
                f"UPDATE jobs SET state = 'RUNNING', started_at = {_NOT_BEFORE_LAST},"
                " attempts = attempts + 1,"
                f" remote_id = coalesce(?, remote_id), {_ENTER_STATE}"
                f" WHERE id = ? AND state IN {states} AND {_HELD_BY} RETURNING {_JOB_COLUMNS}",
                (
                    started_us,
                    remote_id,
                    *_entering(JobState.RUNNING, started_us),
                    job_id,
                    holder,
                    holder,
                ),
            ).fetchone()
            return None if row is None else _row_to_job(row)

        return await self._call(op)

    async def mark_cancelling(self, job_id: str, at: datetime) -> Job | None:
        """QUEUED, SUBMITTING or RUNNING -> CANCELLING (CancelJob accepted for a job whose
        worker is being stopped); None from any other state, CANCELLING included."""
        at_us = to_us(at)

        def op(conn: sqlite3.Connection) -> Job | None:
            row = conn.execute(
                f"UPDATE jobs SET state = 'CANCELLING', {_ENTER_STATE} WHERE id = ?"
                f" AND state IN ('QUEUED', 'SUBMITTING', 'RUNNING') RETURNING {_JOB_COLUMNS}",
                (*_entering(JobState.CANCELLING, at_us), job_id),
            ).fetchone()
            return None if row is None else _row_to_job(row)

        return await self._audited(Effect.CANCEL_JOB, op, job_changed)

    async def record_remote_id(self, job_id: str, remote_id: str) -> Job | None:
        """Stores the provider's id of a CANCELLING job (cancelled while it was being
        submitted); None when the job is not CANCELLING."""

        def op(conn: sqlite3.Connection) -> Job | None:
            row = conn.execute(
                "UPDATE jobs SET remote_id = ? WHERE id = ? AND state = 'CANCELLING'"
                f" RETURNING {_JOB_COLUMNS}",
                (remote_id, job_id),
            ).fetchone()
            return None if row is None else _row_to_job(row)

        return await self._call(op)

    async def delete_result(self, job_id: str) -> bool:
        """Deletes a job's stored result (an expired one); False if there was none."""

        def op(conn: sqlite3.Connection) -> bool:
            return conn.execute("DELETE FROM results WHERE job_id = ?", (job_id,)).rowcount > 0

        return await self._call(op)

    async def delete_expired_results(
        self, after: ExpiryCursor | None, until: datetime, limit: int
    ) -> tuple[int, int, ExpiryCursor | None]:
        """Deletes the stored results of up to `limit` jobs whose result expired after the
        cursor `after` (None: from the first) and by `until`, in expiry order, in
        transactions that free at most SWEEP_TRANSACTION_BYTES each (past their first).

        Returns:
            (results deleted, jobs walked, the cursor of the last job walked or None).
        """
        until_us = to_us(until)

        def op(
            cursor: ExpiryCursor | None, left: int
        ) -> Callable[[sqlite3.Connection], tuple[int, int, ExpiryCursor | None]]:
            def run(conn: sqlite3.Connection) -> tuple[int, int, ExpiryCursor | None]:
                if cursor is None:
                    rows = conn.execute(_EXPIRED_RESULTS_SQL, (until_us, left)).fetchall()
                else:
                    params = (to_us(cursor[0]), cursor[1], until_us, left)
                    rows = conn.execute(_EXPIRED_RESULTS_AFTER_SQL, params).fetchall()
                rows = _within_bytes(rows)
                if not rows:
                    return 0, 0, None
                ids = [(row["id"],) for row in rows]
                deleted = conn.executemany("DELETE FROM results WHERE job_id = ?", ids).rowcount
                last = rows[-1]
                return deleted, len(rows), (from_us(last["result_expires_at"]), last["id"])

            return run

        deleted = walked = 0
        last: ExpiryCursor | None = None
        while walked < limit:
            more, seen, cursor = await self._call(op(last or after, limit - walked))
            if cursor is None:
                break
            deleted, walked, last = deleted + more, walked + seen, cursor
        return deleted, walked, last

    async def delete_ended_jobs(self, until: datetime, limit: int) -> tuple[int, int]:
        """Deletes up to `limit` final jobs that ended by `until` (oldest end first), with their
        results (ON DELETE CASCADE) and quota ledger rows, and up to `limit` ended sessions that
        ended by `until` and hold no job any more, with their cost totals; returns (jobs
        deleted, sessions deleted)."""
        until_us = to_us(until)
        deleted_jobs = deleted_sessions = 0
        # Transactions that free at most SWEEP_TRANSACTION_BYTES each (past their first job).
        while True:
            jobs, sessions, full = await self._call(
                self._delete_ended(until_us, limit - deleted_jobs, limit - deleted_sessions)
            )
            deleted_jobs, deleted_sessions = deleted_jobs + jobs, deleted_sessions + sessions
            if not full or deleted_jobs >= limit:
                return deleted_jobs, deleted_sessions

    def _delete_ended(
        self, until_us: int, jobs_left: int, sessions_left: int
    ) -> Callable[[sqlite3.Connection], tuple[int, int, bool]]:
        """delete_ended_jobs' transaction: (jobs deleted, sessions deleted, whether it stopped
        at its byte bound with jobs left)."""

        def op(conn: sqlite3.Connection) -> tuple[int, int, bool]:
            params = (until_us, *_FINAL_NAMES, jobs_left)
            rows = conn.execute(_ENDED_JOBS_SQL, params).fetchall()
            kept = _within_bytes(rows)
            jobs = [(row["id"],) for row in kept]
            # A job's ledger row is only read to settle it, once, when it ends: the running
            # totals in quota_totals keep what it used.
            conn.executemany("DELETE FROM quota_ledger WHERE job_id = ?", jobs)
            deleted_jobs = conn.executemany("DELETE FROM jobs WHERE id = ?", jobs).rowcount
            sessions = [
                (row["id"],) for row in conn.execute(_ENDED_SESSIONS_SQL, (until_us, sessions_left))
            ]
            # Its cost rows name the session (a foreign key without a cascade): left behind,
            # they failed the whole batch, and every later sweep retried it, so one session
            # that ran a priced job stopped retention for every tenant.
            conn.executemany("DELETE FROM session_costs WHERE session_id = ?", sessions)
            deleted_sessions = conn.executemany(
                "DELETE FROM sessions WHERE id = ?", sessions
            ).rowcount
            return deleted_jobs, deleted_sessions, len(kept) < len(rows)

        return op

    async def finish_job(
        self,
        job_id: str,
        state: JobState,
        *,
        ended_at: datetime,
        error: JobError | None = None,
        execution: ExecutionInfo | None = None,
        timings: JobTimings | None = None,
        result: bytes | None = None,
        result_expires_at: datetime | None = None,
        started_at: datetime | None = None,
        holder: str | None = None,
    ) -> Job | None:
        """Moves a non-final job to a final state, storing its result in the same transaction,
        and ends its claim (a final job is never claimable).

        `started_at`: the job ran, from then, without its RUNNING state written (a short local
        run): RUNNING is written in this transaction as mark_running would have (start time,
        attempts + 1, its history entry), then the final state.

        Returns None (and changes nothing) when the job is absent or already final, or when
        `holder` is given and does not hold its lease. `result_expires_at` is kept for
        SUCCEEDED jobs only.

        Raises:
            ValueError: When `state` is not a final state.
        """
        if not state.is_final:
            raise ValueError(f"finish_job needs a final state, got {state.value}")
        ended_us = to_us(ended_at)
        execution_json = None if execution is None else _execution_to_json(execution)
        timings_json = None if timings is None else _timings_to_json(timings)
        expires_us = (
            to_us(result_expires_at)
            if result_expires_at is not None and state is JobState.SUCCEEDED
            else None
        )
        # One statement changes the row: its state, its history and its update time.
        if started_at is None:
            started_sql, history_sql = "", _APPEND_STATE
            started_args: tuple[object, ...] = ()
            history_args: tuple[object, ...] = (state.value, ended_us)
        else:
            # Not before the job was (last) queued: a job queued again, then run after a step
            # back, started before it was queued. (Not the last transition's time: a cancel
            # accepted while the run was not yet written is after its start.)
            started_sql = f", started_at = {_NOT_BEFORE_QUEUED}, attempts = attempts + 1"
            history_sql = _ENTER_RUNNING_THEN
            started_us = to_us(started_at)
            ended_us = max(ended_us, started_us)  # the clock stepped back during the run
            started_args = (started_us,)
            running = JobState.RUNNING.value
            history_args = (running, running, started_us, state.value, ended_us)
        sql = (
            f"UPDATE jobs SET state = ?, ended_at = {_NOT_BEFORE_LAST}, error_reason = ?,"
            " error_message = ?, error_code = ?, error_metadata = ?, execution = ?, timings = ?,"
            f" result_expires_at = ?, lease_owner = NULL, lease_expires_at = NULL{started_sql},"
            f" state_history = {history_sql}, updated_at = {_NOT_BEFORE_LAST}"
            f" WHERE id = ? AND state NOT IN ({_FINAL_PLACEHOLDERS}) AND {_HELD_BY}"
            f" RETURNING {_JOB_COLUMNS}"
        )
        args = (
            state.value,
            ended_us,
            None if error is None else error.reason,
            None if error is None else error.message,
            None if error is None else int(error.code),
            None if error is None else _SORTED_JSON.encode(dict(error.metadata)),
            execution_json,
            timings_json,
            expires_us,
            *started_args,
            *history_args,
            ended_us,
            job_id,
            *_FINAL_NAMES,
            holder,
            holder,
        )

        def op(conn: sqlite3.Connection) -> Job | None:
            row = conn.execute(sql, args).fetchone()
            if row is None:
                return None
            if result is not None:
                # The primary key makes a second result impossible even if a bug got this far.
                conn.execute(
                    "INSERT INTO results (job_id, data, created_at) VALUES (?, ?, ?)",
                    (job_id, result, ended_us),
                )
            settle(conn, job_id, state, execution, ended_at)  # its quota reservation (issue 11)
            if execution is not None and row["session_id"] is not None:
                # Here, once: the UPDATE above matched only because the job was not final.
                add_to_totals(conn, str(row["session_id"]), execution)
            job = _row_to_job(row)
            return job if started_at is None else _history_in_time_order(conn, job)

        if state is JobState.CANCELLED:  # CancelJob of a queued job: its record commits here
            return await self._audited(Effect.CANCEL_JOB, op, job_changed)
        return await self._call(op)

    async def recover(self, now: datetime) -> Recovered:
        """At the start of the only process using this store (in-memory queue).

        A job without a remote id ran in a worker that is gone: CANCELLING -> CANCELLED (a
        cancel accepted before the restart stands; ended at `now`, never run again) and
        RUNNING -> QUEUED (started_at cleared: a queued job has not started its next attempt;
        attempts kept, so running again counts another). Jobs with a remote id, SUBMITTING
        ones, and CANCELLING ones that were SUBMITTING (a provider may have the job without
        its id stored) keep their state for the runner to re-attach. Every claim lease is
        cleared.

        Returns:
            Every non-final job, oldest first (create time, then id), and the records of the
            jobs cancelled and re-queued here, for the caller to publish.
        """
        now_us = to_us(now)

        def op(conn: sqlite3.Connection) -> Recovered:
            cancelled = _oldest_first(
                conn.execute(
                    f"UPDATE jobs SET state = 'CANCELLED', ended_at = {_NOT_BEFORE_LAST},"
                    f" {_ENTER_STATE}"
                    " WHERE state = 'CANCELLING' AND remote_id IS NULL AND NOT EXISTS (SELECT 1"
                    " FROM json_each(state_history)"
                    " WHERE json_extract(value, '$[0]') = 'SUBMITTING')"
                    f" RETURNING {_JOB_COLUMNS}",
                    (now_us, *_entering(JobState.CANCELLED, now_us)),
                ).fetchall()
            )
            for job in cancelled:
                settle(conn, job.id, JobState.CANCELLED, None, now)
            requeued = _oldest_first(
                conn.execute(
                    f"UPDATE jobs SET state = 'QUEUED', started_at = NULL, {_ENTER_STATE}"
                    f" WHERE state = 'RUNNING' AND remote_id IS NULL RETURNING {_JOB_COLUMNS}",
                    _entering(JobState.QUEUED, now_us),
                ).fetchall()
            )
            conn.execute(
                "UPDATE jobs SET lease_owner = NULL, lease_expires_at = NULL"
                " WHERE lease_owner IS NOT NULL"
            )
            rows = conn.execute(
                f"SELECT {_JOB_COLUMNS} FROM jobs WHERE state NOT IN ({_FINAL_PLACEHOLDERS})"
                " ORDER BY created_at, id",
                _FINAL_NAMES,
            ).fetchall()
            return Recovered([_row_to_job(r) for r in rows], cancelled, requeued)

        return await self._call(op)

    # -- the claim queue ---------------------------------------------------------------------
    # A lease is live while now < lease_expires_at and lapsed from lease_expires_at on. Each
    # claim is one operation of the writer thread, inside its BEGIN IMMEDIATE transaction: the
    # write lock is held from the first read, so two connections (or processes) on one file
    # never hand out the same job.

    async def claim_next(
        self, placement: str, owner: str, lease_expires_at: datetime, now: datetime
    ) -> Job | None:
        """Atomically leases the next claimable job of `placement` to `owner`, or None.

        Claimable: an unclaimed QUEUED job, or any non-final job whose lease lapsed at or
        before `now` (it comes back in the state it was left in, remote id included). Lapsed
        jobs go first, oldest first; then the order of gateway.domain.queue_order (fewest live
        claims on `placement`, least recently claimed from, FIFO by (create time, id)). Every
        claim records its tenant as the most recently claimed from on `placement`.
        """
        now_us = to_us(now)
        expires_us = to_us(lease_expires_at)

        def op(conn: sqlite3.Connection) -> Job | None:
            lapsed = conn.execute(_LAPSED_SQL, (placement, now_us, *_FINAL_NAMES)).fetchone()
            if lapsed is not None:
                job_id, tenant = str(lapsed[0]), str(lapsed[1])
            else:
                heads = _waiting_heads(conn, placement)
                if not heads:
                    return None
                tenant = queue_order.next_tenant(
                    {t: (created, i) for t, (created, i) in heads.items()},
                    _live_claims(conn, placement, now_us),
                    _last_claims(conn, placement),
                )
                job_id = heads[tenant][1]
            conn.execute(
                "UPDATE jobs SET lease_owner = ?, lease_expires_at = ? WHERE id = ?",
                (owner, expires_us, job_id),
            )
            conn.execute(
                "INSERT INTO claim_history (placement, tenant, last_claim)"
                " SELECT ?, ?, coalesce(max(last_claim), 0) + 1 FROM claim_history"
                " WHERE placement = ?"
                " ON CONFLICT (placement, tenant) DO UPDATE SET last_claim = excluded.last_claim",
                (placement, tenant, placement),
            )
            return _select_job(conn, job_id)

        return await self._call(op)

    async def renew_claim(
        self, job_id: str, owner: str, lease_expires_at: datetime, now: datetime
    ) -> JobState | None:
        """Extends `owner`'s live lease (now < its expiry) to `lease_expires_at` and returns the
        job's state; None if the claim is not (or no longer) its, lapsed, or the job ended."""
        now_us = to_us(now)
        expires_us = to_us(lease_expires_at)

        def op(conn: sqlite3.Connection) -> JobState | None:
            row = conn.execute(
                "UPDATE jobs SET lease_expires_at = ?"
                " WHERE id = ? AND lease_owner = ? AND lease_expires_at > ?"
                f" AND state NOT IN ({_FINAL_PLACEHOLDERS}) RETURNING state",
                (expires_us, job_id, owner, now_us, *_FINAL_NAMES),
            ).fetchone()
            return None if row is None else JobState(row[0])

        return await self._call(op)

    async def end_claim(self, job_id: str, owner: str, *, requeue: bool = False) -> None:
        """Drops `owner`'s claim (no-op if not its).

        `requeue`: the job goes back and keeps its place. A QUEUED job becomes an unclaimed
        waiting job again (its create time orders it). A job in another non-final state
        (a lapsed job re-claimed, then given back) keeps its state and is marked lapsed, so
        the next claim_next hands it out again; without `requeue` such a job stays unclaimed
        until it ends or recover() runs.
        """

        def op(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE jobs SET"
                " lease_owner = CASE WHEN ? AND state != 'QUEUED' THEN lease_owner END,"
                " lease_expires_at = CASE WHEN ? AND state != 'QUEUED' THEN 0 END"
                " WHERE id = ? AND lease_owner = ?",
                (requeue, requeue, job_id, owner),
            )

        await self._call(op)

    # The claim queue's reads (queued_jobs to last_claims) run on the writer thread, in order
    # with this process's own queue writes, as the claim queue (gateway.jobs.claim_queue)
    # combines their answers with its memory of what it wrote: a reader thread's answer could
    # predate a write already asked for. Admission adds queued_by_tenant's count to its
    # creates in flight (BackendRuntime.admitting), each of which it stops counting once its
    # create answered: a count that missed a create whose answer then arrived first overfilled
    # a full queue. A release records its prepared job, then requeues the claim: a position
    # read seeing the claim not yet requeued dropped the prepared job. Each is a bounded read
    # of an index.

    async def queued_jobs(self, placement: str) -> Sequence[tuple[str, str]]:
        """(job id, tenant) of the unclaimed QUEUED jobs of `placement`, oldest first (create
        time, then id)."""

        def op(conn: sqlite3.Connection) -> list[tuple[str, str]]:
            rows = conn.execute(_WAITING_SQL, (placement,)).fetchall()
            return [(str(r[0]), str(r[1])) for r in rows]

        return await self._call(op)

    async def queued_by_tenant(self, placement: str) -> dict[str, int]:
        """How many unclaimed QUEUED jobs `placement` has per tenant."""

        def op(conn: sqlite3.Connection) -> dict[str, int]:
            rows = conn.execute(_WAITING_COUNT_SQL, (placement,)).fetchall()
            return {str(r[0]): int(r[1]) for r in rows}

        return await self._call(op)

    async def claims_by_tenant(self, placement: str, now: datetime) -> dict[str, int]:
        """Live claims (now < lease expiry) on `placement` per tenant; tenants with none are
        absent."""
        now_us = to_us(now)

        def op(conn: sqlite3.Connection) -> dict[str, int]:
            return _live_claims(conn, placement, now_us)

        return await self._call(op)

    async def next_lease_expiry(self, placement: str) -> datetime | None:
        """The earliest lease expiry among `placement`'s claimed non-final jobs (in the past
        for a lapsed lease nobody has taken over yet)."""

        def op(conn: sqlite3.Connection) -> datetime | None:
            row = conn.execute(_NEXT_EXPIRY_SQL, (placement,)).fetchone()
            return opt_from_us(row[0])

        return await self._call(op)

    async def claim_job(
        self, job_id: str, tenant: str, placement: str, owner: str, lease_expires_at: datetime
    ) -> Job | None:
        """Atomically leases one job to `owner` if it is an unclaimed QUEUED job of `tenant`
        on `placement`; None otherwise. The claim history is not touched."""
        expires_us = to_us(lease_expires_at)

        def op(conn: sqlite3.Connection) -> Job | None:
            row = conn.execute(
                "UPDATE jobs SET lease_owner = ?, lease_expires_at = ?"
                " WHERE id = ? AND tenant = ? AND state = 'QUEUED' AND lease_owner IS NULL"
                f" AND {_PLACE} = ? RETURNING id",
                (owner, expires_us, job_id, tenant, placement),
            ).fetchone()
            return None if row is None else _select_job(conn, job_id)

        return await self._call(op)

    async def claim_expired(
        self, placement: str, owner: str, created_by: datetime, lease_expires_at: datetime
    ) -> Sequence[Job]:
        """Atomically leases to `owner` every unclaimed QUEUED job of `placement` created at
        or before `created_by`, oldest first. The claim history is not touched."""
        created_us = to_us(created_by)
        expires_us = to_us(lease_expires_at)

        def op(conn: sqlite3.Connection) -> list[Job]:
            ids = [
                str(r[0]) for r in conn.execute(_EXPIRED_SQL, (placement, created_us)).fetchall()
            ]
            jobs = []
            for job_id in ids:
                conn.execute(
                    "UPDATE jobs SET lease_owner = ?, lease_expires_at = ? WHERE id = ?",
                    (owner, expires_us, job_id),
                )
                job = _select_job(conn, job_id)
                assert job is not None  # selected above, in this transaction
                jobs.append(job)
            return jobs

        return await self._call(op)

    async def oldest_queued_at(self, placement: str) -> datetime | None:
        """The create time of `placement`'s oldest unclaimed QUEUED job, or None."""

        def op(conn: sqlite3.Connection) -> datetime | None:
            return opt_from_us(conn.execute(_OLDEST_SQL, (placement,)).fetchone()[0])

        return await self._call(op)

    async def last_claims(self, placement: str) -> dict[str, int]:
        """Per tenant ever claimed from on `placement`, the ordinal of its latest claim."""

        def op(conn: sqlite3.Connection) -> dict[str, int]:
            return _last_claims(conn, placement)

        return await self._call(op)

    # -- diagnostics -------------------------------------------------------------------------

    async def settings(self) -> Mapping[str, str | int]:
        """The store connection's durability settings and schema version, read back from SQLite.

        Keys: journal_mode ("wal"), synchronous (2 = FULL), foreign_keys (1), schema_version.
        """
        # On the writer thread, a (rare) write call: synchronous and foreign_keys are settings
        # of each connection, and the writer's are the ones that count.

        def op(conn: sqlite3.Connection) -> dict[str, str | int]:
            return {
                "journal_mode": str(conn.execute("PRAGMA journal_mode").fetchone()[0]),
                "synchronous": int(conn.execute("PRAGMA synchronous").fetchone()[0]),
                "foreign_keys": int(conn.execute("PRAGMA foreign_keys").fetchone()[0]),
                "schema_version": _schema_version(conn),
            }

        return await self._call(op)

    # -- the writer thread -------------------------------------------------------------------

    async def _call(self, fn: Callable[[sqlite3.Connection], T], *, readonly: bool = False) -> T:
        """Runs `fn` on the writer thread; returns once its transaction has committed.
        `readonly`: `fn` only reads; it runs on a reader thread instead, in a read transaction
        of its own, seeing every write whose call has returned.

        If the caller is cancelled the operation still runs (and may commit): callers that
        must not lose track of it retry with the same request_id.
        """
        if readonly:
            return await self._read(self._reads, fn)
        return await self._enqueue(fn)

    async def _read(self, pool: ReaderPool | None, fn: Callable[[sqlite3.Connection], T]) -> T:
        """`fn`'s value from a reader thread of `pool`, its errors answered as the writer
        thread's are (_as_answer)."""
        if pool is None:
            raise RuntimeError(
                "the store is closed"
                if self._reads_closed
                else "the store is not open; call open() first"
            )
        try:
            return await pool.run(fn)
        except sqlite3.Error as exc:
            if getattr(exc, "sqlite_errorname", "") == "SQLITE_READONLY":
                # A read that tried to write (query_only): a bug to see, not a store to retry.
                raise
            answer = _as_answer(exc)
            if answer is exc:
                raise
            raise answer from exc

    def _enqueue(
        self,
        fn: Callable[[sqlite3.Connection], T],
        *,
        after: Callable[[Any, BaseException | None], None] | None = None,
    ) -> asyncio.Future[T]:
        """Queues `fn` for the writer thread; the future resolves once its transaction has
        committed (cancelling the future does not stop the operation); `after` is called on
        the loop with (value, error) when it ended, even if the future was cancelled."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        with self._lock:
            if self._closed:
                raise RuntimeError("the store is closed")
            if self._thread is None:
                raise RuntimeError("the store is not open; call open() first")
            self._queue.put(_Op(fn, loop, future, after))
        return future

    def _main(
        self,
        loop: asyncio.AbstractEventLoop,
        ready: asyncio.Future[None],
        alone: Callable[[], bool] | None,
    ) -> None:
        try:
            conn = _connect(self.path)
        except BaseException as exc:
            self._fail_start(loop, ready, exc)
            return
        stop: _Stop | None = None
        try:
            try:
                _migrate(conn, self.path, alone=alone)
            except BaseException as exc:
                self._fail_start(loop, ready, exc)
                return
            _settle(loop, ready, None, None)
            stop = self._serve(conn)
        finally:
            conn.close()
            if stop is not None:
                _settle(stop.loop, stop.future, None, None)

    def _fail_start(
        self, loop: asyncio.AbstractEventLoop, ready: asyncio.Future[None], exc: BaseException
    ) -> None:
        with self._lock:
            self._closed = True
        _settle(loop, ready, None, exc)
        # Nothing more can be enqueued; answer whatever slipped in while opening.
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if isinstance(item, _Stop):
                _settle(item.loop, item.future, None, None)
            else:
                _settle_op(item, None, RuntimeError("the store failed to open"))

    def _serve(self, conn: sqlite3.Connection) -> _Stop:
        while True:
            first = self._queue.get()
            if isinstance(first, _Stop):
                return first
            batch: list[_Op[Any]] = [first]
            stop: _Stop | None = None
            while len(batch) < _MAX_BATCH:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if isinstance(nxt, _Stop):
                    stop = nxt
                    break
                batch.append(nxt)
            try:
                self._run_batch(conn, batch)
            except BaseException as exc:
                # A bug in the batch machinery: nobody may wait forever for an answer.
                for op in batch:
                    _settle_op(op, None, exc)
                with contextlib.suppress(sqlite3.Error):
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
            if stop is not None:
                return stop

    def _run_batch(self, conn: sqlite3.Connection, batch: list[_Op[Any]]) -> None:
        pending = list(batch)
        while pending:
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                self._fail(pending, exc)
                return
            outcomes: list[tuple[_Op[Any], Any, BaseException | None]] = []
            aborted: int | None = None
            if len(pending) == 1:
                # Alone in its transaction, an operation needs no savepoint: if it fails, the
                # whole transaction is rolled back.
                op = pending[0]
                try:
                    value = op.fn(conn)
                except Exception as exc:
                    with contextlib.suppress(sqlite3.Error):
                        if conn.in_transaction:
                            conn.execute("ROLLBACK")
                    self._fail([op], exc)
                    return
                outcomes.append((op, value, None))
                pending_ops: list[_Op[Any]] = []
            else:
                pending_ops = pending
            for i, op in enumerate(pending_ops):
                conn.execute("SAVEPOINT op")
                try:
                    value = op.fn(conn)
                except Exception as exc:
                    if _rollback_savepoint(conn):
                        outcomes.append((op, None, exc))
                        continue
                    # SQLite rolled back the whole transaction (e.g. disk full): this op fails,
                    # the others run again in a fresh transaction.
                    self._fail([op], exc)
                    aborted = i
                    break
                conn.execute("RELEASE op")
                outcomes.append((op, value, None))
            if aborted is not None:
                pending = pending[:aborted] + pending[aborted + 1 :]
                continue
            try:
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                with contextlib.suppress(sqlite3.Error):
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                self._fail(pending, exc)
                return
            self.commits += 1
            for _, _, error in outcomes:
                if error is not None and _is_unavailable(error):
                    self._tell_unavailable(error)
            # Only now, with the commit on disk, may anyone see an answer: one wake-up of each
            # waiting event loop for the whole batch.
            _settle_all(outcomes)
            return

    def _fail(self, ops: list[_Op[Any]], exc: BaseException) -> None:
        if _is_unavailable(exc):
            self._tell_unavailable(exc)
        _fail_all(ops, exc)

    def _tell_unavailable(self, exc: BaseException) -> None:
        """Tells the listener (on its loop) that a write failed for want of a writable store."""
        if getattr(exc, "sqlite_errorname", "") == "SQLITE_FULL":
            self._full = True  # until a probe finds room (probe_write)
        listener = self._on_unavailable
        if listener is None:
            return
        callback, loop = listener
        with contextlib.suppress(RuntimeError):  # the loop already closed
            loop.call_soon_threadsafe(callback)


def _fail_all(pending: list[_Op[Any]], exc: BaseException) -> None:
    """Fails a batch's operations with `exc` (a full or read-only disk fails BEGIN IMMEDIATE
    or COMMIT): nothing of it was stored."""
    for op in pending:
        _settle_op(op, None, exc)


# SQLite's answers that say the store cannot write now, not that the request is wrong: a full
# disk, an I/O error or a read-only file (an emergency remount), a lock held past busy_timeout.
_UNAVAILABLE_ERRORS = (
    "SQLITE_FULL",
    "SQLITE_IOERR",
    "SQLITE_READONLY",
    "SQLITE_BUSY",
    "SQLITE_LOCKED",
    "SQLITE_CANTOPEN",
)
# The file itself damaged (a torn write on bad hardware, an edit): retrying cannot help.
_DAMAGED_ERRORS = ("SQLITE_CORRUPT", "SQLITE_NOTADB")
STORE_RETRY_S = 5.0
# Free space a probe needs to find after the store filled up (probe_write): room for a few
# large jobs, not only for the probe's own page.
PROBE_ROOM_BYTES = 64 << 20


def _is_unavailable(error: BaseException) -> bool:
    """Whether `error` says the store cannot write now (what _as_answer makes UNAVAILABLE)."""
    name = getattr(error, "sqlite_errorname", "") or ""
    return isinstance(error, sqlite3.OperationalError) and name.startswith(_UNAVAILABLE_ERRORS)


def _as_answer(error: BaseException) -> BaseException:
    """The error a caller gets: the store out of service is UNAVAILABLE STORE_UNAVAILABLE
    (retryable; INTERNAL said "a gateway bug" and clients do not retry it); a damaged
    database file is DATA_LOSS STORE_CORRUPT."""
    name = getattr(error, "sqlite_errorname", "") or ""
    if isinstance(error, sqlite3.DatabaseError) and name.startswith(_DAMAGED_ERRORS):
        damaged = DataLoss(
            "STORE_CORRUPT",
            f"the gateway's database is damaged ({error}); its operator must restore it",
            metadata={"sqliteError": name},
        )
        damaged.__cause__ = error
        log.error("the database is damaged: %s (%s)", error, name)
        return damaged
    if not _is_unavailable(error):
        return error
    unavailable = StoreUnavailable(
        "STORE_UNAVAILABLE",
        f"the gateway's store cannot write now ({error}); retry later, with the same "
        "request_id for a submission (its job may have been stored)",
        metadata={"sqliteError": name},
        retry_after=STORE_RETRY_S,
    )
    unavailable.__cause__ = error
    return unavailable


def _rollback_savepoint(conn: sqlite3.Connection) -> bool:
    """Undoes a failed operation; False when its error already ended the whole transaction."""
    if not conn.in_transaction:
        return False
    try:
        conn.execute("ROLLBACK TO op")
        conn.execute("RELEASE op")
    except sqlite3.Error:
        with contextlib.suppress(sqlite3.Error):
            if conn.in_transaction:
                conn.execute("ROLLBACK")
        return False
    return True


def _settle(
    loop: asyncio.AbstractEventLoop,
    future: asyncio.Future[Any],
    value: Any,
    error: BaseException | None,
) -> None:
    def resolve() -> None:
        if future.done():  # the caller was cancelled
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(value)

    # The loop may already be closed when a caller abandoned the store without close().
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(resolve)


def _settle_op(op: _Op[Any], value: Any, error: BaseException | None) -> None:
    _settle_all([(op, value, error)])


def _settle_all(outcomes: list[tuple[_Op[Any], Any, BaseException | None]]) -> None:
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Op[Any], Any, BaseException | None]]]
    by_loop = {}
    for outcome in outcomes:
        by_loop.setdefault(outcome[0].loop, []).append(outcome)
    for loop, group in by_loop.items():

        def resolve(group: list[tuple[_Op[Any], Any, BaseException | None]] = group) -> None:
            for op, value, error in group:
                if op.after is not None:
                    op.after(value, error)
                if op.future.done():  # the caller was cancelled
                    continue
                if error is not None:
                    op.future.set_exception(_as_answer(error))
                else:
                    op.future.set_result(value)

        with contextlib.suppress(RuntimeError):  # a loop closed without closing the store
            loop.call_soon_threadsafe(resolve)


WAL_SIZE_LIMIT_BYTES = 64 << 20
_WAL_RETRY_S = 0.01


def _enable_wal(conn: sqlite3.Connection) -> str:
    """Switches to WAL; the journal mode it answers. Two processes opening a new database at
    once (replicas started together): the switch needs the database alone, and SQLite answers
    the one that lost SQLITE_BUSY at once, without its busy handler. Asked again within the
    busy timeout (1 start in ~5 failed "database is locked")."""
    deadline = time.monotonic() + _BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            return str(conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]).lower()
        except sqlite3.OperationalError as exc:
            busy = getattr(exc, "sqlite_errorname", "") == "SQLITE_BUSY"
            if not busy or time.monotonic() >= deadline:
                raise
            time.sleep(_WAL_RETRY_S)


def _connect(path: pathlib.Path) -> sqlite3.Connection:
    # isolation_level=None: the module starts no transactions of its own; we issue BEGIN.
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.row_factory = sqlite3.Row
        conn.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
        mode = _enable_wal(conn)
        if mode != "wal":
            raise RuntimeError(f"{path}: SQLite refused WAL journal mode (got {mode!r})")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA foreign_keys = ON")
        # The WAL is reused from its start after each checkpoint but kept at its high-water
        # mark: one large result, or a reader holding an old snapshot meanwhile (`qgateway
        # audit export` into a pipe nobody reads), left it at hundreds of MiB for the life of
        # the process. Past this size it is truncated when it restarts.
        conn.execute(f"PRAGMA journal_size_limit = {WAL_SIZE_LIMIT_BYTES}")
        # Durability is asserted, not assumed: a build or wrapper ignoring the pragma fails here.
        if int(conn.execute("PRAGMA synchronous").fetchone()[0]) != 2:
            raise RuntimeError(f"{path}: PRAGMA synchronous=FULL did not take effect")
        if int(conn.execute("PRAGMA foreign_keys").fetchone()[0]) != 1:
            raise RuntimeError(f"{path}: PRAGMA foreign_keys=ON did not take effect")
    except BaseException:
        conn.close()
        raise
    return conn


def _connect_reader(path: pathlib.Path) -> sqlite3.Connection:
    """A read-only connection for the thread that opens it (the event loop's)."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA busy_timeout = 0")  # never wait on the event loop
        conn.execute("PRAGMA query_only = ON")
    except BaseException:
        conn.close()
        raise
    return conn


def _schema_version(conn: sqlite3.Connection) -> int:
    row = conn.execute("SELECT max(version) FROM schema_migrations").fetchone()
    return 0 if row[0] is None else int(row[0])


def _begin_at_start(conn: sqlite3.Connection, path: pathlib.Path) -> None:
    """BEGIN IMMEDIATE, waiting out another process's write lock for up to START_LOCK_WAIT_S."""
    deadline = time.monotonic() + START_LOCK_WAIT_S
    while True:
        try:
            conn.execute("BEGIN IMMEDIATE")
            return
        except sqlite3.OperationalError as exc:
            if getattr(exc, "sqlite_errorname", "") != "SQLITE_BUSY":
                raise
            if time.monotonic() >= deadline:
                raise StoreLocked(
                    f"{path}: another process held the database's write lock for "
                    f"{START_LOCK_WAIT_S:g}s (an open sqlite3 shell?); close it and start again"
                ) from exc
            log.warning("%s: another process holds the database's write lock; waiting", path)


def _migrate(
    conn: sqlite3.Connection, path: pathlib.Path, *, alone: Callable[[], bool] | None = None
) -> None:
    _begin_at_start(conn, path)
    try:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations"
            " (version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)"
        )
        # A new database: no gateway of an older version can be using it, and replicas
        # started together on it must not wait for each other.
        fresh = _schema_version(conn) == 0
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    for migration in MIGRATIONS:
        waiting = False
        if migration.foreign_keys_off:
            # Only outside a transaction does this pragma take effect.
            conn.execute("PRAGMA foreign_keys = OFF")
        # One transaction per migration, re-checking the version under the write lock in
        # case another process migrated meanwhile.
        _begin_at_start(conn, path)
        try:
            current = _schema_version(conn)
            if current > LATEST_SCHEMA_VERSION:
                raise SchemaTooNew(
                    f"{path}: database schema version {current} is newer than this gateway "
                    f"knows ({LATEST_SCHEMA_VERSION}); upgrade the gateway or use another "
                    "data directory"
                )
            waiting = (
                current < migration.version
                and migration.needs_alone
                and not fresh
                and not (alone is None or alone())
            )
            if current < migration.version and not waiting:
                for statement in _split_sql(migration.sql):
                    conn.execute(statement)
                if migration.apply is not None:
                    migration.apply(conn)
                if migration.foreign_keys_off:
                    broken = conn.execute("PRAGMA foreign_key_check").fetchall()
                    if broken:
                        raise RuntimeError(
                            f"{path}: migration {migration.version} broke {len(broken)} "
                            "foreign key references; nothing was changed"
                        )
                conn.execute(
                    "INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)",
                    (migration.version, datetime.now(UTC).isoformat()),
                )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        finally:
            if migration.foreign_keys_off:
                conn.execute("PRAGMA foreign_keys = ON")
                if int(conn.execute("PRAGMA foreign_keys").fetchone()[0]) != 1:
                    raise RuntimeError(f"{path}: PRAGMA foreign_keys=ON did not take effect")
        # Others use the database: a replica of this version starting beside this one applies
        # the step soon (wait for it); one of an older version never does.
        if waiting and not _applied_meanwhile(conn, migration.version):
            raise StoreInUse(
                f"{path}: schema migration {migration.version} removes what older gateways "
                "use, and other gateways use this database now: stop them all, start one "
                "gateway of this version, then the others"
            )


def _applied_meanwhile(conn: sqlite3.Connection, version: int) -> bool:
    """Whether another process brings the schema to `version` within PEER_MIGRATION_WAIT_S."""
    deadline = time.monotonic() + PEER_MIGRATION_WAIT_S
    while _schema_version(conn) < version:
        if time.monotonic() >= deadline:
            return False
        time.sleep(PEER_MIGRATION_POLL_S)
    return True


# --- issue 7, long-running behaviour: schema steps of migration 3 -----------------------------


def _migrate_long_running(conn: sqlite3.Connection) -> None:
    """Lets jobs be CANCELLING, and gives existing jobs an update time and a state history
    made of the times they already have."""
    _allow_cancelling_state(conn)
    rows = conn.execute("SELECT id, state, created_at, started_at, ended_at FROM jobs").fetchall()
    updates = []
    for row in rows:
        history = [(JobState.QUEUED.value, int(row["created_at"]))]
        if row["started_at"] is not None:
            history.append((JobState.RUNNING.value, int(row["started_at"])))
        if row["state"] in _FINAL_NAMES and row["ended_at"] is not None:
            history.append((str(row["state"]), int(row["ended_at"])))
        updated = max(at for _, at in history)
        updates.append((json.dumps(history), updated, row["id"]))
    conn.executemany("UPDATE jobs SET state_history = ?, updated_at = ? WHERE id = ?", updates)


def _allow_cancelling_state(conn: sqlite3.Connection) -> None:
    """Rebuilds the jobs table with 'CANCELLING' in its state CHECK constraint (SQLite cannot
    alter a constraint), following SQLite's documented table-rebuild procedure.

    The new table's SQL is the current one with the constraint widened, so columns added by
    any migration are kept. Needs foreign keys off (the caller's Migration says so): dropping
    the old table would otherwise cascade to `results`.
    """
    found = conn.execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'jobs'")
    sql = str(found.fetchone()[0])
    if "'CANCELLING'" in sql:
        return
    widened, n = re.subn(r"'CANCELLED'(\s*)\)", r"'CANCELLED', 'CANCELLING'\1)", sql, count=1)
    renamed, m = re.subn(
        r'^\s*CREATE TABLE\s+"?jobs"?(?=\s*\()', "CREATE TABLE jobs_rebuild", widened
    )
    if n != 1 or m != 1:
        raise RuntimeError("jobs table: cannot find its CREATE statement or state constraint")
    # Indexes and triggers go with the old table; UNIQUE constraints' automatic indexes have
    # no SQL and come back with the table.
    dependents = [
        str(r[0])
        for r in conn.execute(
            "SELECT sql FROM sqlite_master WHERE tbl_name = 'jobs' AND type IN"
            " ('index', 'trigger') AND sql IS NOT NULL ORDER BY type, name"
        )
    ]
    # AUTOINCREMENT's high-water mark: seq values of deleted jobs are never reused.
    sequence = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'jobs'").fetchone()
    count = int(conn.execute("SELECT count(*) FROM jobs").fetchone()[0])
    conn.execute(renamed)
    conn.execute("INSERT INTO jobs_rebuild SELECT * FROM jobs")
    conn.execute("DROP TABLE jobs")
    conn.execute("ALTER TABLE jobs_rebuild RENAME TO jobs")
    for statement in dependents:
        conn.execute(statement)
    if int(conn.execute("SELECT count(*) FROM jobs").fetchone()[0]) != count:
        raise RuntimeError("jobs table rebuild lost rows")
    if sequence is not None:
        # The copy gave the new table a sequence row even when no job was left to copy (seq 0
        # then): raise it to the old mark.
        conn.execute(
            "UPDATE sqlite_sequence SET seq = max(seq, ?) WHERE name = 'jobs'", (sequence[0],)
        )


# --- end of issue 7, long-running behaviour --------------------------------------------------


def _split_sql(script: str) -> list[str]:
    """Splits a script into statements (execute() runs one; executescript() would COMMIT)."""
    statements: list[str] = []
    buffer = ""
    for piece in script.split(";"):
        buffer += piece + ";"
        # A ';' inside a literal, comment or trigger body leaves the statement incomplete.
        if sqlite3.complete_statement(buffer):
            if buffer.strip(" \t\r\n;"):
                statements.append(buffer.strip())
            buffer = ""
    if buffer.strip(" \t\r\n;"):
        raise ValueError(f"incomplete SQL statement in migration: {buffer!r}")
    return statements


def _check_seed(seed: int) -> None:
    if not 0 <= seed <= _UINT64_MAX:
        raise ValueError(f"seed {seed} is outside uint64")


def _execution_to_json(info: ExecutionInfo) -> str:
    if info.seed is not None:
        _check_seed(info.seed)
    return _SORTED_JSON.encode(
        {
            "backend": info.backend,
            # A string: JSON readers outside Python lose precision above 2**53.
            "seed": None if info.seed is None else str(info.seed),
            "sdk_versions": dict(info.sdk_versions),
            "layouts": [list(layout) for layout in info.layouts],
            "attempts": info.attempts,
            # Spelled out: dataclasses.asdict deep-copies, ~0.1 ms per finished job.
            "usage": None if info.usage is None else _usage_json(info.usage),
            "cost": None
            if info.cost is None
            else {"amount": info.cost.amount, "unit": info.cost.unit},
        }
    )


def _usage_json(usage: Usage) -> dict[str, object]:
    return {
        "shots": usage.shots,
        "execution_seconds": usage.execution_seconds,
        "provider_cost": usage.provider_cost,
        "provider_unit": usage.provider_unit,
        "tasks": usage.tasks,
    }


def _usage_from_json(data: Mapping[str, Any]) -> Usage:
    # Gateways before 2026-12-05 stored what a provider reported, Infinity included (written
    # by json as such): an amount that is not finite and >= 0 reads as none reported, so the
    # job stays readable.
    return Usage(
        shots=int(data["shots"]),
        execution_seconds=reported(float(data["execution_seconds"])) or 0.0,
        provider_cost=None
        if data.get("provider_cost") is None
        else reported(float(data["provider_cost"])),
        provider_unit=str(data.get("provider_unit", "")),
        tasks=int(data.get("tasks", 1)),
    )


def _execution_from_json(text: str) -> ExecutionInfo:
    data = json.loads(text)
    seed = data["seed"]
    return ExecutionInfo(
        backend=str(data["backend"]),
        seed=None if seed is None else int(seed),
        sdk_versions={str(k): str(v) for k, v in data["sdk_versions"].items()},
        layouts=tuple(tuple(int(q) for q in layout) for layout in data["layouts"]),
        attempts=int(data["attempts"]),
        # Absent from jobs that finished before usage was recorded.
        usage=None if data.get("usage") is None else _usage_from_json(data["usage"]),
        cost=None if data.get("cost") is None else Cost(**data["cost"]),
    )


def _timings_to_json(timings: JobTimings) -> str:
    return _SORTED_JSON.encode(
        {
            "queued_s": timings.queued_s,
            "transpile_s": timings.transpile_s,
            "execute_s": timings.execute_s,
        }
    )


def _timings_from_json(text: str) -> JobTimings:
    data = json.loads(text)
    return JobTimings(
        queued_s=float(data["queued_s"]),
        transpile_s=float(data["transpile_s"]),
        execute_s=float(data["execute_s"]),
    )


def _request_row(conn: sqlite3.Connection, tenant: str, request_id: str) -> sqlite3.Row | None:
    """The job row (and its request hash) holding `request_id`, in or out of the window."""
    row: sqlite3.Row | None = conn.execute(
        f"SELECT {_JOB_COLUMNS}, request_hash FROM jobs WHERE tenant = ? AND request_id = ?",
        (tenant, request_id),
    ).fetchone()
    return row


def _lookup_request(
    conn: sqlite3.Connection, tenant: str, request_id: str, now_us: int
) -> tuple[Job, bytes] | None:
    row = _request_row(conn, tenant, request_id)
    if row is None or not within_dedup_window(int(row["created_at"]), now_us):
        return None
    return _row_to_job(row), bytes(row["request_hash"])


def _select_job(conn: sqlite3.Connection, job_id: str) -> Job | None:
    row = conn.execute(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
    return None if row is None else _row_to_job(row)


def _error_from_row(row: sqlite3.Row) -> JobError:
    reason = str(row["error_reason"])
    code = row["error_code"]
    metadata = row["error_metadata"]
    return JobError(
        code=reason_code(reason) if code is None else Code(int(code)),
        reason=reason,
        message=str(row["error_message"] or ""),
        metadata={} if metadata is None else dict(json.loads(str(metadata))),
    )


def _oldest_first(rows: Sequence[sqlite3.Row]) -> list[Job]:
    """Jobs from rows in no given order (RETURNING's), by create time then id."""
    return sorted((_row_to_job(r) for r in rows), key=lambda job: (job.created_at, job.id))


def _row_to_job(row: sqlite3.Row) -> Job:
    # By position: every query passed here selects _JOB_COLUMNS first (more may follow), and
    # a Row's lookup by name scans its column names (~6 us of a new job's ~26). A column
    # added to _JOB_COLUMNS but not here fails this unpacking loudly.
    (
        _seq,
        id_,
        tenant,
        request_id,
        backend,
        state,
        num_pubs,
        seed,
        attempts,
        created_at,
        started_at,
        ended_at,
        error_reason,
        _error_message,
        execution,
        timings,
        placement,
        _error_code,
        _error_metadata,
        updated_at,
        state_history,
        result_expires_at,
        labels,
        sampler_output,
        remote_id,
        session_id,
        trace_context,
    ) = row[:_JOB_WIDTH]
    error = None if error_reason is None else _error_from_row(row)
    return Job(
        id=str(id_),
        tenant=str(tenant),
        request_id=str(request_id or ""),
        backend=str(backend),
        placement=str(placement or backend),
        state=JobState(state),
        created_at=from_us(int(created_at)),
        num_pubs=int(num_pubs),
        seed=int(seed),
        started_at=opt_from_us(started_at),
        ended_at=opt_from_us(ended_at),
        error=error,
        execution=None if execution is None else _execution_from_json(str(execution)),
        timings=None if timings is None else _timings_from_json(str(timings)),
        attempts=int(attempts),
        updated_at=opt_from_us(updated_at),
        state_history=_history_from_json(state_history),
        expire_at=opt_from_us(result_expires_at),
        labels=_labels_from_json(labels),
        sampler_output=SamplerOutput(sampler_output or SamplerOutput.SAMPLES_AND_COUNTS.value),
        remote_id=None if remote_id is None else str(remote_id),
        session=str(session_id or ""),
        trace_context=str(trace_context or ""),
    )


# --- issue 7, labels and the ListJobs filter --------------------------------------------------


def _labels_to_json(labels: Mapping[str, str]) -> str | None:
    return _SORTED_JSON.encode(dict(labels)) if labels else None


def _labels_from_json(text: object) -> dict[str, str]:
    if text is None:
        return {}
    return {str(k): str(v) for k, v in json.loads(str(text)).items()}


# SQL per (field, operator): fixed text with placeholders only; values are always bound.
_LABEL_IS = "EXISTS (SELECT 1 FROM json_each(jobs.labels) AS l WHERE l.key = ? AND l.value = ?)"
_LABEL_SQL: Final = {
    FilterOp.EQ: _LABEL_IS,
    FilterOp.NE: "NOT " + _LABEL_IS,
    FilterOp.HAS: "EXISTS (SELECT 1 FROM json_each(jobs.labels) AS l WHERE l.key = ?)",
}
_CREATE_TIME_SQL: Final = {
    FilterOp.GT: "created_at > ?",
    FilterOp.GE: "created_at >= ?",
    FilterOp.LT: "created_at < ?",
    FilterOp.LE: "created_at <= ?",
}


def _comparison_sql(c: Comparison) -> tuple[str, list[object]]:
    """One comparison as SQL and its parameters."""
    if c.field is FilterField.STATE:
        assert isinstance(c.value, JobState)
        return ("state = ?" if c.op is FilterOp.EQ else "state != ?"), [c.value.value]
    if c.field is FilterField.BACKEND:
        return ("backend = ?" if c.op is FilterOp.EQ else "backend != ?"), [str(c.value)]
    if c.field is FilterField.SESSION:
        return "session_id = ?", [str(c.value)]
    if c.field is FilterField.LABEL:
        values: list[object] = [c.key] if c.op is FilterOp.HAS else [c.key, str(c.value)]
        return _LABEL_SQL[c.op], values
    assert isinstance(c.value, int)
    # Filter times are nanoseconds, created_at microseconds: round so that the comparison in
    # microseconds is exactly the comparison in nanoseconds.
    floor_us = c.value // 1000
    ceil_us = -(-c.value // 1000)
    bound = floor_us if c.op in (FilterOp.GT, FilterOp.LE) else ceil_us
    return _CREATE_TIME_SQL[c.op], [bound]


# --- end of issue 7, labels and the ListJobs filter -------------------------------------------


# --- issue 7, long-running behaviour: state history ------------------------------------------


# A state by its stored value: a dict read, not the enum's call (~2 us less per job read).
_STATE_BY_VALUE: Final = {state.value: state for state in JobState}


def _history_from_json(text: object) -> tuple[StateTransition, ...]:
    if text is None:
        return ()
    states = _STATE_BY_VALUE
    return tuple(
        StateTransition(
            # A value no state has goes to the enum, which refuses it as it always did.
            states[value] if (value := str(state)) in states else JobState(value),
            from_us(int(at)),
        )
        for state, at in json.loads(str(text))
    )


def _history_in_time_order(conn: sqlite3.Connection, job: Job) -> Job:
    """The job with a RUNNING entry written after later ones (a cancel accepted while its
    run's RUNNING write waited) moved back into time order; ties keep their order."""
    history = job.state_history
    ordered = tuple(sorted(history, key=lambda entry: entry.at))
    if ordered == history:
        return job
    text = _COMPACT_JSON.encode([[e.state.value, to_us(e.at)] for e in ordered])
    conn.execute("UPDATE jobs SET state_history = ? WHERE id = ?", (text, job.id))
    return dataclasses.replace(job, state_history=ordered)


def _entering(state: JobState, at_us: int) -> tuple[str, str, int, int]:
    """The parameters of _ENTER_STATE."""
    return (state.value, state.value, at_us, at_us)


# A new job, QUEUED since its creation (its history's first entry), read back as stored.
_INSERT_JOB_SQL: Final = (
    "INSERT INTO jobs (id, tenant, request_id, request_hash, backend, placement, state,"
    " num_pubs, seed, attempts, created_at, labels, sampler_output, session_id, trace_context,"
    " updated_at, state_history)"
    f" VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 0, ?, ?, ?, ?, ?, ?, ?) RETURNING {_JOB_COLUMNS}"
)
_INSERT_SPEC_SQL: Final = "INSERT INTO job_specs (job_id, spec) VALUES (?, ?)"
# The history without its entry for a state (parameter 1), which is entered again.
_HISTORY_WITHOUT_STATE: Final = (
    "(SELECT json_group_array(json(value)) FROM json_each(coalesce(jobs.state_history, '[]'))"
    " WHERE json_extract(value, '$[0]') != ?)"
)
# Every transition's SET clause records the state entered and when (its update time too):
# appended to the history, replacing an earlier entry of the same state (a state entered again
# after a restart keeps its last time, so the history stays in order). Parameters: _entering.
# A write naming the claim's holder (bound twice: it, then it again) applies only while that
# holder holds the job's lease; one naming none (the in-memory queue's) applies to any job.
_HELD_BY: Final = "(? IS NULL OR lease_owner = ?)"
# A transition's time (parameter) as written: never before the job's last one. The wall clock
# may step back (an NTP correction, a VM restored) between two transitions: written as read,
# a job ended before it started, its history lost its order (a short run's end sorted before
# its start) and its update time went back, which made WatchJob drop the state as stale.
# (Every SET expression of an UPDATE reads the row as it was.)
_NOT_BEFORE_LAST: Final = "max(?, coalesce(jobs.updated_at, jobs.created_at))"
# A start's time (parameter) as written: never before the job's QUEUED entry (its creation, or
# its last re-queue after a restart), for the same reason.
_NOT_BEFORE_QUEUED: Final = (
    "max(?, coalesce((SELECT max(json_extract(value, '$[1]')) FROM"
    " json_each(coalesce(jobs.state_history, '[]')) WHERE json_extract(value, '$[0]') = 'QUEUED'),"
    " jobs.created_at))"
)
_ENTER_STATE: Final = (
    f"state_history = json_insert({_HISTORY_WITHOUT_STATE}, '$[#]',"
    f" json_array(?, {_NOT_BEFORE_LAST})), updated_at = {_NOT_BEFORE_LAST}"
)
# A final state (entered once, so nothing to replace) appended: parameters state, time.
_APPEND_STATE: Final = (
    f"json_insert(coalesce(jobs.state_history, '[]'), '$[#]', json_array(?, {_NOT_BEFORE_LAST}))"
)
# RUNNING entered (replacing an earlier run's entry) and then a final state: parameters
# RUNNING, RUNNING, start, state, end.
_ENTER_RUNNING_THEN: Final = (
    f"json_insert(json_insert({_HISTORY_WITHOUT_STATE}, '$[#]',"
    f" json_array(?, {_NOT_BEFORE_QUEUED})), '$[#]', json_array(?, {_NOT_BEFORE_LAST}))"
)


# --- end of issue 7, long-running behaviour --------------------------------------------------


# --- issue 8, the claim queue -----------------------------------------------------------------
# Each query names the partial index it needs in its WHERE (state = 'QUEUED' AND lease_owner IS
# NULL, or lease_owner IS NOT NULL) with literals, not parameters: SQLite uses a partial index
# only when the query's terms imply the index's. tests/unit/test_sqlite_store.py checks the plans.

_WAITING = f"{_PLACE} = ? AND state = 'QUEUED' AND lease_owner IS NULL"
_CLAIMED = f"{_PLACE} = ? AND lease_owner IS NOT NULL"

# The oldest non-final job whose lease lapsed (at or before now).
_LAPSED_SQL: Final = (
    f"SELECT id, tenant FROM jobs WHERE {_CLAIMED} AND lease_expires_at <= ?"
    f" AND state NOT IN ({_FINAL_PLACEHOLDERS}) ORDER BY created_at, id LIMIT 1"
)
# The head of the first tenant's line, and of the next tenant's after a given one: one index
# seek per waiting tenant (a loose index scan), however many jobs wait.
_FIRST_HEAD_SQL: Final = (
    f"SELECT tenant, created_at, id FROM jobs WHERE {_WAITING}"
    " ORDER BY tenant, created_at, id LIMIT 1"
)
_NEXT_HEAD_SQL: Final = (
    f"SELECT tenant, created_at, id FROM jobs WHERE {_WAITING} AND tenant > ?"
    " ORDER BY tenant, created_at, id LIMIT 1"
)
_LIVE_CLAIMS_SQL: Final = (
    f"SELECT tenant, count(*) FROM jobs WHERE {_CLAIMED} AND lease_expires_at > ? GROUP BY tenant"
)
_WAITING_SQL: Final = f"SELECT id, tenant FROM jobs WHERE {_WAITING} ORDER BY created_at, id"
_WAITING_COUNT_SQL: Final = f"SELECT tenant, count(*) FROM jobs WHERE {_WAITING} GROUP BY tenant"
_EXPIRED_SQL: Final = (
    f"SELECT id FROM jobs WHERE {_WAITING} AND created_at <= ? ORDER BY created_at, id"
)
_OLDEST_SQL: Final = f"SELECT min(created_at) FROM jobs WHERE {_WAITING}"
_NEXT_EXPIRY_SQL: Final = f"SELECT min(lease_expires_at) FROM jobs WHERE {_CLAIMED}"


def _waiting_heads(conn: sqlite3.Connection, placement: str) -> dict[str, tuple[int, str]]:
    """Per tenant with waiting jobs on `placement`, its oldest: (created_at us, id)."""
    heads: dict[str, tuple[int, str]] = {}
    row = conn.execute(_FIRST_HEAD_SQL, (placement,)).fetchone()
    while row is not None:
        tenant = str(row[0])
        heads[tenant] = (int(row[1]), str(row[2]))
        row = conn.execute(_NEXT_HEAD_SQL, (placement, tenant)).fetchone()
    return heads


def _live_claims(conn: sqlite3.Connection, placement: str, now_us: int) -> dict[str, int]:
    return {
        str(t): int(n) for t, n in conn.execute(_LIVE_CLAIMS_SQL, (placement, now_us)).fetchall()
    }


def _last_claims(conn: sqlite3.Connection, placement: str) -> dict[str, int]:
    rows = conn.execute(
        "SELECT tenant, last_claim FROM claim_history WHERE placement = ?", (placement,)
    ).fetchall()
    return {str(t): int(n) for t, n in rows}


# --- end of issue 8, the claim queue ----------------------------------------------------------
