"""What a ListJobs or ListSessions page costs the SQLite store: its query plans, and the VM
steps it takes (proportional to the rows it examines, where wall time is not deterministic).
A page runs on the store's one thread, so every tenant's commits wait for it."""

from __future__ import annotations

import pathlib
import sqlite3
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

import pytest

from gateway.api.job_filter import parse_filter
from gateway.domain.job_filter import JobFilter
from gateway.domain.jobs import ExecutionInfo, Job
from gateway.store import sqlite as sqlite_module
from gateway.store import sqlite_pages, sqlite_sessions
from gateway.store.base import JobCursor
from gateway.store.sqlite import SqliteStore
from gateway.store.sqlite_pages import PageQuery, page_query
from gateway.store.sqlite_time import to_us

pytestmark = pytest.mark.anyio

T0 = datetime(2026, 11, 2, 9, 30, 0, tzinfo=UTC)
JOBS = 2000


@pytest.fixture
async def db_path(tmp_path: pathlib.Path) -> AsyncIterator[pathlib.Path]:
    path = tmp_path / "gateway.db"
    store = SqliteStore(path)
    await store.open()  # the schema
    await store.close()
    yield path


def _insert_jobs(path: pathlib.Path, count: int) -> list[JobCursor]:
    """`count` jobs of tenant acme, three to a second (ties are ordered by id), in one
    transaction: the store's create path would take seconds. Newest first, as listed."""
    made = [JobCursor(T0 + timedelta(seconds=i // 3), f"j{i:05d}") for i in range(count)]
    with sqlite3.connect(path) as conn:
        conn.executemany(
            "INSERT INTO jobs (id, tenant, backend, state, num_pubs, seed, created_at,"
            " request_hash) VALUES (?, 'acme', 'aer', 'SUCCEEDED', 1, '7', ?, x'00')",
            [(job.id, to_us(job.created_at)) for job in made],
        )
    conn.close()
    return made[::-1]


async def _walk(path: pathlib.Path, limit: int, filter: JobFilter | None = None) -> list[list[str]]:
    """Every page of acme's jobs through the store, as lists of job ids."""
    store = SqliteStore(path)
    await store.open()
    try:
        pages: list[list[str]] = []
        cursor = None
        while True:
            page = await store.list_jobs("acme", filter=filter, after=cursor, limit=limit)
            pages.append([job.id for job in page.jobs])
            if page.next_cursor is None:
                return pages
            cursor = page.next_cursor
    finally:
        await store.close()


@contextmanager
def _reader(path: pathlib.Path) -> Iterator[sqlite3.Connection]:
    conn = sqlite3.connect(path)
    conn.row_factory = sqlite3.Row
    try:
        yield conn
    finally:
        conn.close()


def _jobs_page(filter: JobFilter | None, after: JobCursor | None, limit: int) -> PageQuery:
    columns, comparison_sql = sqlite_module._JOB_COLUMNS, sqlite_module._comparison_sql
    return page_query("jobs", columns, "acme", filter, after, limit, comparison_sql)


def _steps(conn: sqlite3.Connection, query: PageQuery) -> int:
    """The VM steps one page takes, its boundary query included."""
    steps = 0

    def count() -> int:
        nonlocal steps
        steps += 1
        return 0

    conn.set_progress_handler(count, 1)
    try:
        query.page(conn, sqlite_module._row_to_job)
    finally:
        conn.set_progress_handler(None, 1)
    return steps


def _time(seconds: float) -> str:
    return (T0 + timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z")


@pytest.mark.parametrize("table", ["jobs", "sessions"])
@pytest.mark.parametrize(
    "text", ["", f'create_time < "{_time(9)}"', f'create_time > "{_time(1)}"', "labels:team"]
)
async def test_a_page_after_a_cursor_is_an_index_range_from_it(
    db_path: pathlib.Path, table: str, text: str
) -> None:
    # The cursor was `created_at < ? OR (created_at = ? AND id < ?)`, which SQLite checked
    # row by row: each page walked the tenant's index from its newest row. A filter's own
    # upper bound must not displace the cursor as the range's top either.
    if table == "jobs":
        columns, comparison_sql = sqlite_module._JOB_COLUMNS, sqlite_module._comparison_sql
    else:
        columns, comparison_sql = sqlite_sessions._COLUMNS, sqlite_sessions._comparison_sql
    after = JobCursor(T0 + timedelta(seconds=5), "j")
    query = page_query(table, columns, "acme", parse_filter(text), after, 50, comparison_sql)
    sqls = [(query.rows_sql, query.rows_params)]
    if query.boundary_sql is not None:
        sqls.append((query.boundary_sql, query.boundary_params))
    with _reader(db_path) as conn:
        for sql, params in sqls:
            plan = " | ".join(r[3] for r in conn.execute(f"EXPLAIN QUERY PLAN {sql}", params))
            assert f"INDEX {table}_tenant_created (tenant=? AND " in plan, plan
            assert "(created_at,id)<(?,?))" in plan, plan


async def test_a_deep_page_examines_no_more_rows_than_the_first(db_path: pathlib.Path) -> None:
    made = _insert_jobs(db_path, JOBS)
    listed = [job_id for page in await _walk(db_path, 97) for job_id in page]
    assert listed == [job.id for job in made]  # every job once, newest first, ties by id
    deep = made[-41]  # 40 older jobs: 2 pages of 20
    with _reader(db_path) as conn:
        first_steps = _steps(conn, _jobs_page(None, None, 20))
        deep_steps = _steps(conn, _jobs_page(None, deep, 20))
        # Unfixed, it walked the 1960 newer jobs' index entries too: 15 times the steps.
        assert deep_steps <= 2 * first_steps, (first_steps, deep_steps)
        rows = _jobs_page(None, deep, 20).page(conn, sqlite_module._row_to_job)[0]
    assert [job.id for job in rows] == [job.id for job in made[-40:-20]]


async def test_an_or_of_create_times_is_checked_within_the_scan_bound(
    db_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Such a clause went to the SQL range, which it is not: a filter matching none of a
    # tenant's jobs walked them all in one page.
    _insert_jobs(db_path, 11)  # j00010 .. j00000, three to a second from T0
    monkeypatch.setattr(sqlite_pages, "SCAN_ROWS", 4)
    ends = parse_filter(f'(create_time < "{_time(0.5)}" OR create_time >= "{_time(3)}")')
    pages = await _walk(db_path, 10, ends)
    # The jobs it always matched, in windows of 4 from the newest.
    assert pages == [["j00010", "j00009"], [], ["j00002", "j00001", "j00000"]]


async def test_an_or_of_create_times_matching_nothing_examines_one_window(
    db_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _insert_jobs(db_path, JOBS)
    monkeypatch.setattr(sqlite_pages, "SCAN_ROWS", 20)
    nowhere = parse_filter(f'(create_time < "{_time(-1)}" OR create_time > "{_time(10**6)}")')
    with _reader(db_path) as conn:
        window_steps = _steps(conn, _jobs_page(None, None, 20))  # reads 21 jobs
        steps = _steps(conn, _jobs_page(nowhere, None, 10))
        # Unfixed, it walked the index entries of all 2000 jobs: 15 times the steps.
        assert steps <= 2 * window_steps, (window_steps, steps)
        rows, cursor = _jobs_page(nowhere, None, 10).page(conn, sqlite_module._row_to_job)
    assert rows == [] and cursor is not None


@pytest.mark.parametrize(
    "text",
    [
        f'create_time > "{_time(-1)}" AND create_time > "{_time(10**6)}"',
        f'create_time > "{_time(10**6)}" AND create_time > "{_time(-1)}"',
        f'create_time < "{_time(10**6)}" AND create_time < "{_time(-1)}"',
        f'create_time < "{_time(-1)}" AND create_time < "{_time(10**6)}"',
    ],
)
async def test_anded_create_times_range_on_the_tightest_bound(
    db_path: pathlib.Path, text: str
) -> None:
    # SQLite ranges on one lower and one upper bound and checks the others row by row: on
    # the looser, it walked every job for a filter matching none.
    _insert_jobs(db_path, JOBS)
    with _reader(db_path) as conn:
        first_steps = _steps(conn, _jobs_page(None, None, 20))
        steps = _steps(conn, _jobs_page(parse_filter(text), None, 20))
        assert steps <= first_steps, (first_steps, steps)
        assert _jobs_page(parse_filter(text), None, 20).page(conn, sqlite_module._row_to_job) == (
            [],
            None,
        )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f'create_time >= "{_time(1)}" AND create_time > "{_time(1)}"', [9, 8, 7, 6]),
        (f'create_time > "{_time(1)}" AND create_time >= "{_time(1)}"', [9, 8, 7, 6]),
        (f'create_time <= "{_time(1)}" AND create_time < "{_time(1)}"', [2, 1, 0]),
        (f'create_time < "{_time(1)}" AND create_time <= "{_time(1)}"', [2, 1, 0]),
    ],
)
async def test_of_two_bounds_at_one_instant_the_strict_one_is_kept(
    db_path: pathlib.Path, text: str, expected: list[int]
) -> None:
    # Only the tightest bound each way reaches SQL: `>` and `>=` at the same instant are not
    # equally tight, and keeping `>=` listed jobs created exactly then, which the filter
    # excludes.
    _insert_jobs(db_path, 10)  # three a second: j00003..j00005 at T0 + 1 s
    assert await _walk(db_path, 20, parse_filter(text)) == [[f"j{i:05d}" for i in expected]]


async def test_a_page_of_large_jobs_decodes_a_bounded_amount(
    db_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A job of 1000 PUBs keeps a layout per PUB (~250 KB of JSON at 64 qubits, ~7 ms to
    # decode): a page of 1000 of them held the store's one thread for seconds.
    made = _insert_jobs(db_path, 10)
    execution = sqlite_module._execution_to_json(
        ExecutionInfo(
            backend="aer", seed=1, sdk_versions={}, layouts=((0, 1, 2, 3),) * 1000, attempts=1
        )
    )
    with sqlite3.connect(db_path) as conn:
        conn.execute("UPDATE jobs SET execution = ?", (execution,))
    conn.close()
    monkeypatch.setattr(sqlite_pages, "PAGE_BYTES", 3 * len(execution) + 100)
    decoded: list[str] = []
    to_job = sqlite_module._row_to_job

    def counted(row: sqlite3.Row) -> Job:
        decoded.append(str(row["id"]))
        return to_job(row)

    monkeypatch.setattr(sqlite_module, "_row_to_job", counted)
    pages = await _walk(db_path, 1000)
    assert all(1 <= len(page) <= 3 for page in pages)
    walked = [job_id for page in pages for job_id in page]
    assert walked == [job.id for job in made]
    assert decoded == walked  # nothing decoded past a page's cut
