"""The sessions repository of the SQLite store (migrations 8 and 14): a mixin of SqliteStore.

Sessions are rows of their own; a job names its session in jobs.session_id. Every change is one
transaction on the store's writer thread, like a job's. What a session's finished jobs used and
cost is kept as running sums (migration 14), added to by finish_job in the transaction that
stores each job's execution record: reading them is a point read however many jobs a session
ran, where summing the jobs' records grew with every job (on the one writer thread every
tenant's commits wait for).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from datetime import datetime
from typing import Final, TypeVar

from gateway.domain.audit import Effect
from gateway.domain.job_filter import Comparison, FilterField, FilterOp, JobFilter
from gateway.domain.jobs import FINAL_STATES, ExecutionInfo, Job
from gateway.domain.pricing import Cost, Totals
from gateway.domain.sessions import (
    EndReason,
    FailurePolicy,
    Session,
    SessionMode,
    SessionState,
    request_id_reused,
    too_many_sessions,
)
from gateway.store.base import JobCursor, SessionPage
from gateway.store.sqlite_audit import SqliteAudit, session_created, session_saved
from gateway.store.sqlite_pages import creation_us, page_query
from gateway.store.sqlite_time import opt_from_us, opt_us, to_us, within_dedup_window

T = TypeVar("T")

_COLUMNS: Final = (
    "id, tenant, request_id, backend, mode, state, failure_policy, max_ttl_s, idle_ttl_s, "
    "labels, created_at, first_job_at, last_activity_at, ended_at, end_reason, "
    "provider_session_id"
)
_FINAL_SESSION: Final = ("CLOSED", "FAILED")

# Migration 14: running totals of each session's finished jobs, backfilled once from the jobs'
# execution records with the sums session_totals computed before this step.
TOTALS_MIGRATION_SQL: Final = """
    ALTER TABLE sessions ADD COLUMN shots_total INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE sessions ADD COLUMN execution_seconds_total REAL NOT NULL DEFAULT 0.0;
    -- Cost summed per unit: a session's jobs may be priced in several.
    CREATE TABLE session_costs (
        session_id TEXT NOT NULL REFERENCES sessions (id),
        unit TEXT NOT NULL,
        amount REAL NOT NULL,
        PRIMARY KEY (session_id, unit)
    ) WITHOUT ROWID;
    UPDATE sessions SET
        shots_total = (
            SELECT COALESCE(SUM(json_extract(execution, '$.usage.shots')), 0) FROM jobs
            WHERE jobs.session_id = sessions.id AND execution IS NOT NULL),
        execution_seconds_total = (
            SELECT COALESCE(SUM(json_extract(execution, '$.usage.execution_seconds')), 0.0)
            FROM jobs WHERE jobs.session_id = sessions.id AND execution IS NOT NULL);
    -- Only sessions that exist: a cost row names its session.
    INSERT INTO session_costs (session_id, unit, amount)
        SELECT session_id, json_extract(execution, '$.cost.unit') AS unit,
            SUM(json_extract(execution, '$.cost.amount'))
        FROM jobs WHERE session_id IN (SELECT id FROM sessions)
            AND json_extract(execution, '$.cost') IS NOT NULL
        GROUP BY session_id, unit;
"""


def open_sessions(conn: sqlite3.Connection, tenant: str) -> int:
    """How many of the tenant's sessions have not ended."""
    sql = f"SELECT count(*) FROM sessions WHERE tenant = ? AND state NOT IN {_FINAL_SESSION!r}"
    return int(conn.execute(sql, (tenant,)).fetchone()[0])


_LABEL_IS: Final = (
    "EXISTS (SELECT 1 FROM json_each(sessions.labels) AS l WHERE l.key = ? AND l.value = ?)"
)
_LABEL_SQL: Final = {
    FilterOp.EQ: _LABEL_IS,
    FilterOp.NE: "NOT " + _LABEL_IS,
    FilterOp.HAS: "EXISTS (SELECT 1 FROM json_each(sessions.labels) AS l WHERE l.key = ?)",
}
_TIME_SQL: Final = {
    FilterOp.GT: "created_at > ?",
    FilterOp.GE: "created_at >= ?",
    FilterOp.LT: "created_at < ?",
    FilterOp.LE: "created_at <= ?",
}


def add_to_totals(conn: sqlite3.Connection, session_id: str, execution: ExecutionInfo) -> None:
    """Adds a finished job's usage and cost to its session's running totals.

    Only finish_job calls it, in the transaction that makes the job final and only when its
    UPDATE matched a job that was not final yet: a job is counted once, also when its finish
    is attempted again (a retry, or the runner and a cancel racing).
    """
    usage = execution.usage
    if usage is None and execution.cost is None:
        return
    shots, seconds = (0, 0.0) if usage is None else (usage.shots, usage.execution_seconds)
    found = conn.execute(
        "UPDATE sessions SET shots_total = shots_total + ?,"
        " execution_seconds_total = execution_seconds_total + ? WHERE id = ?",
        (shots, seconds, session_id),
    )
    # A job naming no stored session has no totals to add to (and a cost row would break
    # its foreign key, failing the finish).
    if found.rowcount == 0 or execution.cost is None:
        return
    conn.execute(
        "INSERT INTO session_costs (session_id, unit, amount) VALUES (?, ?, ?)"
        " ON CONFLICT (session_id, unit) DO UPDATE SET amount = amount + excluded.amount",
        (session_id, execution.cost.unit, execution.cost.amount),
    )


def _row(row: sqlite3.Row) -> Session:
    created = opt_from_us(row["created_at"])
    assert created is not None
    return Session(
        id=str(row["id"]),
        tenant=str(row["tenant"]),
        request_id=str(row["request_id"] or ""),
        backend=str(row["backend"]),
        mode=SessionMode(row["mode"]),
        state=SessionState(row["state"]),
        failure_policy=FailurePolicy(row["failure_policy"]),
        max_ttl_s=float(row["max_ttl_s"]),
        idle_ttl_s=float(row["idle_ttl_s"]),
        labels=json.loads(row["labels"]) if row["labels"] else {},
        created_at=created,
        first_job_at=opt_from_us(row["first_job_at"]),
        last_activity_at=opt_from_us(row["last_activity_at"]),
        ended_at=opt_from_us(row["ended_at"]),
        end_reason=None if row["end_reason"] is None else EndReason(row["end_reason"]),
        provider_session_id=str(row["provider_session_id"] or ""),
    )


def _select(conn: sqlite3.Connection, session_id: str) -> Session | None:
    row = conn.execute(f"SELECT {_COLUMNS} FROM sessions WHERE id = ?", (session_id,)).fetchone()
    return None if row is None else _row(row)


def _request_row(conn: sqlite3.Connection, tenant: str, request_id: str) -> sqlite3.Row | None:
    row: sqlite3.Row | None = conn.execute(
        f"SELECT {_COLUMNS}, request_hash FROM sessions WHERE tenant = ? AND request_id = ?",
        (tenant, request_id),
    ).fetchone()
    return row


def _find_request(
    conn: sqlite3.Connection, tenant: str, request_id: str, now_us: int
) -> tuple[Session, bytes] | None:
    row = _request_row(conn, tenant, request_id)
    if row is None or not within_dedup_window(int(row["created_at"]), now_us):
        return None
    return _row(row), bytes(row["request_hash"])


def _comparison_sql(c: Comparison) -> tuple[str, list[object]]:
    if c.field is FilterField.STATE:
        value = c.value if isinstance(c.value, str) else str(c.value)
        return ("state = ?" if c.op is FilterOp.EQ else "state != ?"), [value]
    if c.field is FilterField.BACKEND:
        return ("backend = ?" if c.op is FilterOp.EQ else "backend != ?"), [str(c.value)]
    if c.field is FilterField.LABEL:
        values: list[object] = [c.key] if c.op is FilterOp.HAS else [c.key, str(c.value)]
        return _LABEL_SQL[c.op], values
    if c.field is FilterField.CREATE_TIME:
        assert isinstance(c.value, int)
        floor_us = c.value // 1000
        ceil_us = -(-c.value // 1000)
        bound = floor_us if c.op in (FilterOp.GT, FilterOp.LE) else ceil_us
        return _TIME_SQL[c.op], [bound]
    raise ValueError(f"sessions cannot be filtered by {c.field.value}")


class SqliteSessions(SqliteAudit):
    """Session methods of the Store protocol: writes on SqliteStore's writer thread, reads on
    its reader threads."""

    async def create_session(
        self, session: Session, request_hash: bytes, *, max_open: int | None = None
    ) -> tuple[Session, bool]:
        """Inserts a session unless (tenant, request_id) already names one: then that one and
        False. Counting the tenant's open sessions and inserting is one transaction. The
        session's create time is `session.created_at`, or just after the tenant's newest
        session's when that is later (gateway.store.sqlite_pages.creation_us).

        Raises:
            InvalidArgument: reason REQUEST_ID_REUSED, when the id names a different request.
            ResourceExhausted: SESSION_LIMIT_REACHED, when the tenant already has `max_open`
                sessions that have not ended.
        """

        clock_us = to_us(session.created_at)

        def op(conn: sqlite3.Connection) -> tuple[Session, bool]:
            if session.request_id:
                earlier = _request_row(conn, session.tenant, session.request_id)
                if earlier is not None and within_dedup_window(
                    int(earlier["created_at"]), clock_us
                ):
                    existing = _row(earlier)
                    if bytes(earlier["request_hash"]) != request_hash:
                        raise request_id_reused(session.request_id, existing.id)
                    return existing, False
                if earlier is not None:  # outside the window the id is free again
                    conn.execute(
                        "UPDATE sessions SET request_id = NULL WHERE id = ?", (earlier["id"],)
                    )
            if max_open is not None and open_sessions(conn, session.tenant) >= max_open:
                raise too_many_sessions(session.tenant, max_open)
            created_us = creation_us(conn, "sessions", session.tenant, clock_us)
            conn.execute(
                f"INSERT INTO sessions ({_COLUMNS}, request_hash)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    session.id,
                    session.tenant,
                    session.request_id or None,
                    session.backend,
                    session.mode.value,
                    session.state.value,
                    session.failure_policy.value,
                    session.max_ttl_s,
                    session.idle_ttl_s,
                    json.dumps(dict(session.labels), sort_keys=True) if session.labels else None,
                    created_us,
                    opt_us(session.first_job_at),
                    opt_us(session.last_activity_at),
                    opt_us(session.ended_at),
                    None if session.end_reason is None else session.end_reason.value,
                    session.provider_session_id or None,
                    request_hash,
                ),
            )
            created = _select(conn, session.id)
            assert created is not None
            return created, True

        return await self._audited(Effect.CREATE_SESSION, op, session_created)

    async def find_session_request(
        self, tenant: str, request_id: str, now: datetime
    ) -> tuple[Session, bytes] | None:
        """The session (tenant, request_id) names within the dedup window before `now`, and
        its request hash, or None."""
        now_us = to_us(now)

        def op(conn: sqlite3.Connection) -> tuple[Session, bytes] | None:
            return _find_request(conn, tenant, request_id, now_us)

        return await self._call(op, readonly=True)

    async def get_session(self, session_id: str, tenant: str | None = None) -> Session | None:
        """The session, or None if absent or (when tenant is given) another tenant's."""

        def op(conn: sqlite3.Connection) -> Session | None:
            found = _select(conn, session_id)
            if found is None or (tenant is not None and found.tenant != tenant):
                return None
            return found

        return await self._call(op, readonly=True)

    async def save_session(self, session: Session) -> Session | None:
        """Writes the session's changing fields (state, times, end reason, provider id);
        None, changing nothing, when the stored session has already ended."""

        def op(conn: sqlite3.Connection) -> Session | None:
            cursor = conn.execute(
                "UPDATE sessions SET state = ?, first_job_at = ?, last_activity_at = ?,"
                " ended_at = ?, end_reason = ?, provider_session_id = ?"
                f" WHERE id = ? AND state NOT IN {_FINAL_SESSION!r}",
                (
                    session.state.value,
                    opt_us(session.first_job_at),
                    opt_us(session.last_activity_at),
                    opt_us(session.ended_at),
                    None if session.end_reason is None else session.end_reason.value,
                    session.provider_session_id or None,
                    session.id,
                ),
            )
            return None if cursor.rowcount == 0 else _select(conn, session.id)

        return await self._audited(Effect.SAVE_SESSION, op, session_saved)

    async def list_sessions(
        self,
        tenant: str,
        *,
        filter: JobFilter | None = None,
        after: JobCursor | None = None,
        limit: int = 50,
    ) -> SessionPage:
        """The tenant's sessions matching `filter` (state values are SessionState names),
        newest first (create time, then id, both descending), after cursor `after`; a filtered
        page examines a bounded number of sessions and may come back short
        (gateway.store.sqlite_pages)."""
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        query = page_query("sessions", _COLUMNS, tenant, filter, after, limit, _comparison_sql)

        def op(conn: sqlite3.Connection) -> SessionPage:
            sessions, cursor = query.page(conn, _row)
            return SessionPage(sessions=sessions, next_cursor=cursor)

        return await self._call(op, readonly=True)

    async def count_open_sessions(self, tenant: str) -> int:
        """How many of the tenant's sessions have not ended."""

        def op(conn: sqlite3.Connection) -> int:
            return open_sessions(conn, tenant)

        return await self._call(op, readonly=True)

    async def open_sessions(self) -> Sequence[Session]:
        """Every session that has not ended, oldest first (recovery at start)."""

        def op(conn: sqlite3.Connection) -> list[Session]:
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM sessions WHERE state NOT IN {_FINAL_SESSION!r}"
                " ORDER BY created_at, id"
            ).fetchall()
            return [_row(r) for r in rows]

        return await self._call(op, readonly=True)

    async def session_totals(self, session_ids: Sequence[str]) -> dict[str, Totals]:
        """What each session's finished jobs used and cost: the running totals finish_job
        keeps (add_to_totals), two indexed reads for a whole page of sessions, never a pass
        over the sessions' jobs. A session without finished jobs has zero totals, and so does
        an id naming no session."""
        ids = list(dict.fromkeys(session_ids))

        def op(conn: sqlite3.Connection) -> dict[str, Totals]:
            marks = ", ".join("?" * len(ids))
            costs: dict[str, list[Cost]] = {}
            # ORDER BY unit compares bytes (BINARY collation): the order totals always had.
            for sid, unit, amount in conn.execute(
                "SELECT session_id, unit, amount FROM session_costs"
                f" WHERE session_id IN ({marks}) ORDER BY session_id, unit",
                ids,
            ):
                costs.setdefault(str(sid), []).append(Cost(float(amount), str(unit)))
            totals = {sid: Totals() for sid in ids}
            for sid, shots, seconds in conn.execute(
                "SELECT id, shots_total, execution_seconds_total FROM sessions"
                f" WHERE id IN ({marks})",
                ids,
            ):
                totals[str(sid)] = Totals(
                    shots=int(shots),
                    execution_seconds=float(seconds),
                    costs=tuple(costs.get(str(sid), ())),
                )
            return totals

        if not ids:
            return {}
        return await self._call(op, readonly=True)

    async def session_jobs(self, session_id: str, *, include_final: bool = False) -> Sequence[Job]:
        """The session's jobs (only the non-final ones unless `include_final`), oldest first."""
        from gateway.store.sqlite import _JOB_COLUMNS, _row_to_job

        final = tuple(s.value for s in FINAL_STATES)

        def op(conn: sqlite3.Connection) -> list[Job]:
            sql = f"SELECT {_JOB_COLUMNS} FROM jobs WHERE session_id = ?"
            params: list[object] = [session_id]
            if not include_final:
                sql += f" AND state NOT IN ({', '.join('?' * len(final))})"
                params.extend(final)
            rows = conn.execute(sql + " ORDER BY created_at, id", params).fetchall()
            return [_row_to_job(r) for r in rows]

        return await self._call(op, readonly=True)
