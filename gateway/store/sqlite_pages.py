"""Pages of a tenant's jobs or sessions, newest first, with a bounded scan (AIP-158).

A page's filter runs in SQL on the tenant's rows after the cursor, within the filter's
create-time bounds: one index range. Other clauses, an OR of create times among them, are
checked on at most SCAN_ROWS of those rows: a filter matching none of a million rows scanned
them all (on a reader thread, the reads queued behind it waiting). A page may then hold fewer
rows than asked, even none, with a cursor after the last row examined.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Literal, Protocol, TypeVar

from gateway.domain.job_filter import Comparison, FilterField, FilterOp, JobFilter
from gateway.store.base import JobCursor
from gateway.store.sqlite_time import from_us, to_us

# Rows one filtered page examines at most.
SCAN_ROWS = 10_000

ComparisonSql = Callable[[Comparison], tuple[str, list[object]]]

# The stored text one page decodes at most (at least one row): a job of 1000 PUBs keeps a
# layout per PUB, ~250 KB of JSON for 64 qubits that take ~7 ms to decode, so a page of 1000
# of them held a reader thread, and the reads queued behind it, for seconds, only for the
# API to send the few that fit a response. A page of large rows comes back short instead.
PAGE_BYTES = 4 << 20


# How far a new row's create time may be moved past its clock reading (a commit is overtaken
# by milliseconds: the clock is read once the job is prepared).
MAX_CREATE_BUMP_US = 60_000_000


def creation_us(
    conn: sqlite3.Connection, table: Literal["jobs", "sessions"], tenant: str, clock_us: int
) -> int:
    """The create time a new row of `tenant` commits with: the clock's reading, or just after
    the tenant's newest row when that is later, so create times rise in commit order.

    The clock is read before the row's commit (a request-id lookup, a provider's session and
    the writer's batch come between): a row whose commit was overtaken by a newer one's landed
    behind a page cursor already handed out, and a listing, or a `create_time >` poll from
    the newest row seen, never returned it. Called in the write transaction that inserts the
    row (the tenant's index gives the newest in one lookup). A newest row more than
    MAX_CREATE_BUMP_US ahead is a clock stepped back, not a commit overtaken: following it would
    stamp every later row of the tenant in its future (a session's TTL runs from it)."""
    newest = conn.execute(
        f"SELECT max(created_at) FROM {table} WHERE tenant = ?", (tenant,)
    ).fetchone()[0]
    if newest is None or clock_us > newest or newest - clock_us > MAX_CREATE_BUMP_US:
        return clock_us
    return int(newest) + 1


def _stored_bytes(row: sqlite3.Row) -> int:
    return sum(len(value) for value in row if isinstance(value, str | bytes))


class _Listed(Protocol):
    @property
    def created_at(self) -> datetime: ...

    @property
    def id(self) -> str: ...


L = TypeVar("L", bound=_Listed)


@dataclass(frozen=True)
class PageQuery:
    """The SQL of one page: its rows (one more than the limit), and the row that bounds its
    scan (None when nothing but the limit bounds it)."""

    limit: int
    rows_sql: str
    rows_params: list[object]
    boundary_sql: str | None
    boundary_params: list[object]

    def page(
        self, conn: sqlite3.Connection, convert: Callable[[sqlite3.Row], L]
    ) -> tuple[list[L], JobCursor | None]:
        """The page's items and the cursor to go on from: after its last item when more
        matched, else after the last row its scan examined (None: every row was examined)."""
        rows = conn.execute(self.rows_sql, self.rows_params).fetchall()
        items: list[L] = []
        stored = 0
        for row in rows[: self.limit]:
            stored += _stored_bytes(row)
            if items and stored > PAGE_BYTES:
                return items, JobCursor(items[-1].created_at, items[-1].id)
            items.append(convert(row))
        if len(rows) > self.limit:
            return items, JobCursor(items[-1].created_at, items[-1].id)
        if self.boundary_sql is None:
            return items, None
        last = conn.execute(self.boundary_sql, self.boundary_params).fetchone()
        return items, None if last is None else JobCursor(from_us(last[0]), str(last[1]))


def page_query(
    table: str,
    columns: str,
    tenant: str,
    filter: JobFilter | None,
    after: JobCursor | None,
    limit: int,
    comparison_sql: ComparisonSql,
) -> PageQuery:
    """The page's query; `comparison_sql` renders one filter comparison over `table`."""
    where = ["tenant = ?"]
    params: list[object] = [tenant]
    if after is not None:
        # A row value, which SQLite makes the index range's top: spelled out as
        # `created_at < ? OR (created_at = ? AND id < ?)` it was checked row by row, each page
        # walking the tenant's rows from the newest. First in the WHERE: of two upper bounds
        # SQLite ranges on the first, and the cursor is never above the filter's (its row was
        # within them).
        where.append("(created_at, id) < (?, ?)")
        params.extend([to_us(after.created_at), after.id])
    bounds: list[Comparison] = []
    matches: list[str] = []
    match_params: list[object] = []
    for clause in filter.clauses if filter is not None else ():
        if len(clause) == 1 and clause[0].field is FilterField.CREATE_TIME:
            bounds.append(clause[0])
            continue
        parts = []
        for comparison in clause:
            sql, values = comparison_sql(comparison)
            parts.append(sql)
            match_params.extend(values)
        matches.append("(" + " OR ".join(parts) + ")")
    for bound in _tightest(bounds):
        sql, values = comparison_sql(bound)
        where.append(sql)
        params.extend(values)
    order = " ORDER BY created_at DESC, id DESC"
    examined = f"SELECT {columns} FROM {table} WHERE {' AND '.join(where)}{order}"
    if not matches:
        return PageQuery(limit, f"{examined} LIMIT ?", [*params, limit + 1], None, [])
    # Aliased as the table: comparisons name its columns (jobs.labels).
    scanned = f"SELECT * FROM ({examined} LIMIT {SCAN_ROWS}) AS {table}"
    scanned += f" WHERE {' AND '.join(matches)}{order} LIMIT ?"
    boundary = f"SELECT created_at, id FROM {table} WHERE {' AND '.join(where)}{order}"
    boundary += f" LIMIT 1 OFFSET {SCAN_ROWS - 1}"
    return PageQuery(limit, scanned, [*params, *match_params, limit + 1], boundary, params)


def _tightest(bounds: list[Comparison]) -> list[Comparison]:
    """The tightest lower and upper of ANDed create-time `bounds`, which imply the others:
    SQLite ranges on one bound each way and checks the rest row by row, so a looser bound
    taken first walked every row up to the tighter one."""
    lower = [c for c in bounds if c.op in (FilterOp.GT, FilterOp.GE)]
    upper = [c for c in bounds if c.op in (FilterOp.LT, FilterOp.LE)]
    if len(lower) + len(upper) != len(bounds):  # dropping one would widen the filter
        raise ValueError(f"create_time compares by <, <=, > or >= only, got {bounds}")
    return [
        *([max(lower, key=_earliest)] if lower else []),
        *([min(upper, key=_latest)] if upper else []),
    ]


def _earliest(bound: Comparison) -> int:
    """The earliest nanosecond a `>` or `>=` bound admits."""
    assert isinstance(bound.value, int)
    return bound.value + 1 if bound.op is FilterOp.GT else bound.value


def _latest(bound: Comparison) -> int:
    """The latest nanosecond a `<` or `<=` bound admits."""
    assert isinstance(bound.value, int)
    return bound.value - 1 if bound.op is FilterOp.LT else bound.value
