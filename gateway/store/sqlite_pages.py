"""Pages of a tenant's jobs or sessions, newest first, with a bounded scan (AIP-158).

A page's filter runs in SQL on the tenant's rows after the cursor, within the filter's
create-time clauses (an index range). Other clauses are checked on at most SCAN_ROWS of those
rows: a filter matching none of a million rows scanned them all on the store's one thread,
every tenant's commits waiting. A page may then hold fewer rows than asked, even none, with a
cursor after the last row examined.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol, TypeVar

from gateway.domain.job_filter import Comparison, FilterField, JobFilter
from gateway.store.base import JobCursor
from gateway.store.sqlite_time import from_us, to_us

# Rows one filtered page examines at most.
SCAN_ROWS = 10_000

ComparisonSql = Callable[[Comparison], tuple[str, list[object]]]


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
        items = [convert(row) for row in rows[: self.limit]]
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
    matches: list[str] = []
    match_params: list[object] = []
    for clause in filter.clauses if filter is not None else ():
        parts = []
        values: list[object] = []
        for comparison in clause:
            sql, comparison_values = comparison_sql(comparison)
            parts.append(sql)
            values.extend(comparison_values)
        timed = all(c.field is FilterField.CREATE_TIME for c in clause)
        (where if timed else matches).append("(" + " OR ".join(parts) + ")")
        (params if timed else match_params).extend(values)
    if after is not None:
        after_us = to_us(after.created_at)
        where.append("(created_at < ? OR (created_at = ? AND id < ?))")
        params.extend([after_us, after_us, after.id])
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
