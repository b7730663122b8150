"""SqliteStore against real SQLite files: durability settings, schema, semantics, group commit."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import os
import pathlib
import signal
import sqlite3
import subprocess
import sys
import threading
import uuid
from collections.abc import AsyncIterator, Awaitable
from datetime import UTC, datetime, timedelta, timezone

import anyio
import pytest

from gateway.api.job_filter import parse_filter
from gateway.domain.errors import Code, FieldViolation, InvalidArgument
from gateway.domain.jobs import (
    ExecutionInfo,
    Job,
    JobError,
    JobState,
    JobTimings,
    StateTransition,
)
from gateway.store.base import REQUEST_ID_DEDUP_WINDOW_S, JobCursor, NewJob
from gateway.store.sqlite import LATEST_SCHEMA_VERSION, SqliteStore

pytestmark = pytest.mark.anyio

T0 = datetime(2026, 11, 2, 9, 30, 0, 123456, tzinfo=UTC)
REPO = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def db_path(tmp_path: pathlib.Path) -> pathlib.Path:
    # Two levels that do not exist yet: open() must create them.
    return tmp_path / "data" / "state" / "gateway.db"


@pytest.fixture
async def store(db_path: pathlib.Path) -> AsyncIterator[SqliteStore]:
    s = SqliteStore(db_path)
    await s.open()
    yield s
    await s.close()


def new_job(
    *,
    tenant: str = "acme",
    request_id: str = "",
    payload: bytes = b"spec",
    backend: str = "aer",
    seed: int = 7,
    created_at: datetime = T0,
    job_id: str | None = None,
) -> NewJob:
    return NewJob(
        id=job_id or uuid.uuid4().hex,
        tenant=tenant,
        request_id=request_id,
        request_hash=hashlib.sha256(payload).digest(),
        backend=backend,
        spec=payload,
        num_pubs=2,
        seed=seed,
        created_at=created_at,
    )


def count_rows(path: pathlib.Path, table: str = "jobs") -> int:
    with sqlite3.connect(path) as conn:
        return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


class WriterGate:
    """Holds the writer thread inside one operation so that what is queued meanwhile forms
    the next batch, deterministically."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.release = threading.Event()

    def op(self, conn: sqlite3.Connection) -> None:
        self.started.set()
        self.release.wait(10)


# -- durability and schema --------------------------------------------------------------------


async def test_durability_pragmas(store: SqliteStore, db_path: pathlib.Path) -> None:
    # The store's own connection: synchronous is per connection, so this is the one that counts.
    settings = await store.settings()
    assert settings["journal_mode"] == "wal"
    assert settings["synchronous"] == 2  # FULL
    assert settings["foreign_keys"] == 1

    # WAL is a property of the file: an independent connection must see it too.
    with sqlite3.connect(db_path) as other:
        assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        # A fresh connection's own synchronous (the build's default for WAL); not the store's.
        assert other.execute("PRAGMA synchronous").fetchone()[0] == 2
    # And the file header records it (bytes 18/19 == 2 mean WAL).
    header = db_path.read_bytes()[:20]
    assert header[18] == 2 and header[19] == 2


async def test_schema_version_recorded_and_reopen_is_idempotent(db_path: pathlib.Path) -> None:
    first = SqliteStore(db_path)
    await first.open()
    assert (await first.settings())["schema_version"] == LATEST_SCHEMA_VERSION
    await first.create_job(new_job(job_id="kept"))
    await first.close()
    with sqlite3.connect(db_path) as conn:
        before = conn.execute("SELECT version, applied_at FROM schema_migrations").fetchall()
    assert [v for v, _ in before] == list(range(1, LATEST_SCHEMA_VERSION + 1))

    for _ in range(2):
        again = SqliteStore(db_path)
        await again.open()
        assert await again.get_job("kept") is not None
        await again.close()
    with sqlite3.connect(db_path) as conn:
        after = conn.execute("SELECT version, applied_at FROM schema_migrations").fetchall()
    assert after == before


async def test_newer_schema_version_refuses_to_open(db_path: pathlib.Path) -> None:
    s = SqliteStore(db_path)
    await s.open()
    await s.close()
    with sqlite3.connect(db_path) as conn:
        conn.execute(
            "INSERT INTO schema_migrations VALUES (?, 'from the future')",
            (LATEST_SCHEMA_VERSION + 1,),
        )
    newer = SqliteStore(db_path)
    with pytest.raises(RuntimeError, match="newer"):
        await newer.open()
    with pytest.raises(RuntimeError):
        await newer.get_job("x")
    await newer.close()


async def test_lifecycle_errors(db_path: pathlib.Path) -> None:
    s = SqliteStore(db_path)
    with pytest.raises(RuntimeError, match="not open"):
        await s.get_job("x")
    await s.open()
    with pytest.raises(RuntimeError):
        await s.open()
    await s.close()
    await s.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        await s.create_job(new_job())


# -- create / get ------------------------------------------------------------------------------


async def test_round_trip_of_every_field(store: SqliteStore) -> None:
    for seed in (0, 1, 2**63 - 1, 2**63, 2**64 - 1):
        out = await store.create_job(new_job(job_id=f"j{seed}", request_id=f"r{seed}", seed=seed))
        assert out.created
        assert (await store.get_job(f"j{seed}")) == out.job
        assert out.job.seed == seed

    # A non-UTC aware time is stored as the same instant and comes back in UTC.
    plus2 = timezone(timedelta(hours=2))
    created = datetime(2026, 11, 2, 11, 30, 0, 654321, tzinfo=plus2)
    out = await store.create_job(
        new_job(job_id="full", request_id="req-1", payload=b"\x00\xffspec", created_at=created)
    )
    assert out.job == Job(
        id="full",
        tenant="acme",
        request_id="req-1",
        backend="aer",
        placement="aer",
        state=JobState.QUEUED,
        created_at=datetime(2026, 11, 2, 9, 30, 0, 654321, tzinfo=UTC),
        num_pubs=2,
        seed=7,
        attempts=0,
        updated_at=datetime(2026, 11, 2, 9, 30, 0, 654321, tzinfo=UTC),
        state_history=(
            StateTransition(JobState.QUEUED, datetime(2026, 11, 2, 9, 30, 0, 654321, tzinfo=UTC)),
        ),
    )
    assert out.job.created_at.tzinfo == UTC
    assert await store.get_spec("full") == b"\x00\xffspec"
    assert await store.get_result("full") is None

    started = T0 + timedelta(seconds=1, microseconds=1)
    ended = T0 + timedelta(seconds=5, microseconds=999999)
    execution = ExecutionInfo(
        backend="aer",
        seed=2**64 - 1,
        sdk_versions={"qiskit": "2.6.2", "qiskit-aer": "0.18.2"},
        layouts=((0, 1, 2), (4, 3)),
        attempts=1,
    )
    timings = JobTimings(queued_s=0.125, transpile_s=1 / 3, execute_s=2.5e-7)
    error = JobError(
        code=Code.UNAVAILABLE,
        reason="PROVIDER_ERROR",
        message="partial: 1 of 2 PUBs failed",
        metadata={"pubIndex": "1", "providerJobId": "task-7"},
    )
    assert await store.mark_running("full", started) is not None
    finished = await store.finish_job(
        "full",
        JobState.FAILED,
        ended_at=ended,
        error=error,
        execution=execution,
        timings=timings,
        result=b"\x01result\x00",
    )
    expected = Job(
        placement="aer",
        id="full",
        tenant="acme",
        request_id="req-1",
        backend="aer",
        state=JobState.FAILED,
        created_at=datetime(2026, 11, 2, 9, 30, 0, 654321, tzinfo=UTC),
        num_pubs=2,
        seed=7,
        started_at=started,
        ended_at=ended,
        error=error,
        execution=execution,
        timings=timings,
        attempts=1,
        updated_at=ended,
        state_history=(
            StateTransition(JobState.QUEUED, datetime(2026, 11, 2, 9, 30, 0, 654321, tzinfo=UTC)),
            StateTransition(JobState.RUNNING, started),
            StateTransition(JobState.FAILED, ended),
        ),
    )
    assert finished == expected
    assert await store.get_job("full") == expected
    assert await store.get_result("full") == b"\x01result\x00"
    assert await store.get_job("missing") is None
    assert await store.get_spec("missing") is None


async def test_rejects_values_it_cannot_store_faithfully(store: SqliteStore) -> None:
    with pytest.raises(ValueError):
        await store.create_job(new_job(seed=2**64))
    with pytest.raises(ValueError):
        await store.create_job(new_job(seed=-1))
    with pytest.raises(ValueError):
        await store.create_job(new_job(created_at=datetime(2026, 1, 1)))  # naive
    with pytest.raises(ValueError):
        await store.list_jobs("acme", limit=0)


# -- request_id deduplication ------------------------------------------------------------------


async def test_same_request_id_and_hash_returns_the_same_job(
    store: SqliteStore, db_path: pathlib.Path
) -> None:
    first = await store.create_job(new_job(request_id="retry-me"))
    again = await store.create_job(
        new_job(request_id="retry-me", created_at=T0 + timedelta(minutes=5))
    )
    assert first.created and not again.created
    assert again.job == first.job
    assert count_rows(db_path) == 1


async def test_same_request_id_other_hash_is_request_id_reused(
    store: SqliteStore, db_path: pathlib.Path
) -> None:
    first = await store.create_job(new_job(request_id="once", payload=b"a"))
    with pytest.raises(InvalidArgument) as info:
        await store.create_job(new_job(request_id="once", payload=b"b"))
    err = info.value
    assert err.code == Code.INVALID_ARGUMENT
    assert err.reason == "REQUEST_ID_REUSED"
    assert err.metadata == {"job": f"jobs/{first.job.id}", "requestId": "once"}
    assert [v.field for v in err.field_violations] == ["request_id"]
    assert all(isinstance(v, FieldViolation) for v in err.field_violations)
    assert count_rows(db_path) == 1


async def test_request_id_is_scoped_to_the_tenant(store: SqliteStore) -> None:
    a = await store.create_job(new_job(tenant="a", request_id="same", payload=b"x"))
    b = await store.create_job(new_job(tenant="b", request_id="same", payload=b"y"))
    assert a.created and b.created
    assert a.job.id != b.job.id
    assert b.job.tenant == "b" and b.job.request_id == "same"


async def test_request_id_is_released_after_the_dedup_window(store: SqliteStore) -> None:
    old = await store.create_job(new_job(request_id="weekly", payload=b"a"))
    within = T0 + timedelta(seconds=REQUEST_ID_DEDUP_WINDOW_S)
    assert not (
        await store.create_job(new_job(request_id="weekly", payload=b"a", created_at=within))
    ).created

    later = T0 + timedelta(seconds=REQUEST_ID_DEDUP_WINDOW_S, microseconds=1)
    fresh = await store.create_job(new_job(request_id="weekly", payload=b"b", created_at=later))
    assert fresh.created and fresh.job.id != old.job.id
    old_now = await store.get_job(old.job.id)
    assert old_now is not None and old_now.request_id == ""
    retry = await store.create_job(new_job(request_id="weekly", payload=b"b", created_at=later))
    assert retry.job.id == fresh.job.id and not retry.created


async def test_jobs_without_request_id_never_deduplicate(
    store: SqliteStore, db_path: pathlib.Path
) -> None:
    for _ in range(3):
        assert (await store.create_job(new_job())).created
    assert count_rows(db_path) == 3


# -- reading: tenants and pages ----------------------------------------------------------------


async def test_tenant_isolation(store: SqliteStore) -> None:
    mine = await store.create_job(new_job(tenant="mine"))
    theirs = await store.create_job(new_job(tenant="theirs"))
    assert await store.get_job(mine.job.id, tenant="mine") == mine.job
    assert await store.get_job(mine.job.id, tenant="theirs") is None
    assert await store.get_job(mine.job.id) == mine.job  # internal, tenant-less lookup
    page = await store.list_jobs("mine")
    assert [j.id for j in page.jobs] == [mine.job.id]
    assert page.next_cursor is None
    assert [j.id for j in (await store.list_jobs("theirs")).jobs] == [theirs.job.id]
    assert (await store.list_jobs("nobody")).jobs == []


async def test_paging_newest_first_each_job_once(store: SqliteStore) -> None:
    created = []
    for i in range(120):
        out = await store.create_job(
            new_job(job_id=f"job-{i:03}", backend="aer" if i % 3 else "aer-mps")
        )
        created.append(out.job.id)
    await store.create_job(new_job(tenant="other"))

    seen: list[str] = []
    sizes = []
    cursor: JobCursor | None = None
    while True:
        page = await store.list_jobs("acme", after=cursor, limit=50)
        sizes.append(len(page.jobs))
        seen.extend(j.id for j in page.jobs)
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert sizes == [50, 50, 20]
    assert seen == list(reversed(created))

    # Exactly `limit` jobs left: the last full page says there is no more.
    page = await store.list_jobs("acme", limit=120)
    assert len(page.jobs) == 120 and page.next_cursor is None


async def test_list_filters_by_state_and_backend(store: SqliteStore) -> None:
    ids = [
        (await store.create_job(new_job(job_id=f"j{i}", backend=b))).job.id
        for i, b in enumerate(["aer", "aer", "mps", "aer", "mps"])
    ]
    await store.mark_running("j0", T0)
    await store.mark_running("j2", T0)
    await store.finish_job("j3", JobState.CANCELLED, ended_at=T0)

    async def list_ids(text: str = "") -> list[str]:
        page = await store.list_jobs("acme", filter=parse_filter(text))
        return [j.id for j in page.jobs]

    assert await list_ids() == list(reversed(ids))
    assert await list_ids("state = RUNNING") == ["j2", "j0"]
    assert await list_ids("(state = QUEUED OR state = CANCELLED)") == ["j4", "j3", "j1"]
    assert await list_ids('backend = "backends/mps"') == ["j4", "j2"]
    assert await list_ids('backend = "backends/aer" AND state = RUNNING') == ["j0"]
    assert await list_ids('backend = "backends/nope"') == []

    # Paging composes with filters.
    aer = parse_filter('backend = "backends/aer"')
    page = await store.list_jobs("acme", filter=aer, limit=2)
    assert [j.id for j in page.jobs] == ["j3", "j1"] and page.next_cursor is not None
    rest = await store.list_jobs("acme", filter=aer, limit=2, after=page.next_cursor)
    assert [j.id for j in rest.jobs] == ["j0"] and rest.next_cursor is None


# -- state transitions -------------------------------------------------------------------------


async def test_mark_running_only_once(store: SqliteStore) -> None:
    job = (await store.create_job(new_job())).job
    started = T0 + timedelta(seconds=3)
    running = await store.mark_running(job.id, started)
    assert running is not None
    assert running.state is JobState.RUNNING
    assert running.attempts == 1 and running.started_at == started
    assert await store.mark_running(job.id, started + timedelta(seconds=1)) is None
    assert await store.get_job(job.id) == running
    assert await store.mark_running("missing", started) is None


async def test_finish_job_only_once_and_first_result_kept(store: SqliteStore) -> None:
    job = (await store.create_job(new_job())).job
    await store.mark_running(job.id, T0)
    done = await store.finish_job(
        job.id, JobState.SUCCEEDED, ended_at=T0 + timedelta(seconds=2), result=b"first"
    )
    assert done is not None and done.state is JobState.SUCCEEDED
    again = await store.finish_job(
        job.id,
        JobState.FAILED,
        ended_at=T0 + timedelta(seconds=9),
        error=JobError.of("EXECUTION_FAILED", "should not land"),
        result=b"second",
    )
    assert again is None
    assert await store.get_job(job.id) == done
    assert await store.get_result(job.id) == b"first"
    assert await store.mark_running(job.id, T0) is None  # final is final

    with pytest.raises(ValueError):
        await store.finish_job(job.id, JobState.RUNNING, ended_at=T0)
    assert await store.finish_job("missing", JobState.CANCELLED, ended_at=T0) is None

    # A queued job can be cancelled directly, without a result.
    other = (await store.create_job(new_job())).job
    cancelled = await store.finish_job(other.id, JobState.CANCELLED, ended_at=T0)
    assert cancelled is not None and cancelled.state is JobState.CANCELLED
    assert await store.get_result(other.id) is None


async def test_requeue_interrupted(store: SqliteStore) -> None:
    for i in range(5):
        await store.create_job(new_job(job_id=f"j{i}"))
    await store.mark_running("j1", T0)
    await store.mark_running("j2", T0)
    await store.finish_job("j2", JobState.SUCCEEDED, ended_at=T0, result=b"r")
    await store.mark_running("j4", T0)

    queued = await store.requeue_interrupted()
    assert [j.id for j in queued] == ["j0", "j1", "j3", "j4"]
    assert all(j.state is JobState.QUEUED for j in queued)
    by_id = {j.id: j for j in queued}
    assert by_id["j1"].attempts == 1 and by_id["j1"].started_at is None
    assert by_id["j0"].attempts == 0
    final = await store.get_job("j2")
    assert final is not None and final.state is JobState.SUCCEEDED
    # Running again counts a second attempt.
    again = await store.mark_running("j1", T0)
    assert again is not None and again.attempts == 2


# -- durability --------------------------------------------------------------------------------


async def test_data_survives_close_and_reopen(db_path: pathlib.Path) -> None:
    s = SqliteStore(db_path)
    await s.open()
    a = (await s.create_job(new_job(request_id="keep", seed=2**64 - 1))).job
    await s.mark_running(a.id, T0)
    done = await s.finish_job(a.id, JobState.SUCCEEDED, ended_at=T0, result=b"res")
    b = (await s.create_job(new_job())).job
    await s.close()

    s2 = SqliteStore(db_path)
    await s2.open()
    try:
        assert await s2.get_job(a.id) == done
        assert await s2.get_result(a.id) == b"res"
        assert await s2.get_job(b.id) == b
        # Dedup state survives too.
        retry = await s2.create_job(new_job(request_id="keep", seed=2**64 - 1))
        assert retry.job.id == a.id and not retry.created
    finally:
        await s2.close()


_CHILD = """
import asyncio, pathlib, sys
from datetime import UTC, datetime
from gateway.domain.jobs import JobState
from gateway.store.base import NewJob
from gateway.store.sqlite import SqliteStore

async def main() -> None:
    store = SqliteStore(pathlib.Path(sys.argv[1]))
    await store.open()
    now = datetime.now(UTC)
    outs = await asyncio.gather(*(
        store.create_job(NewJob(f"k{i}", "acme", f"r{i}", b"h", "aer", b"s", 1, i, now))
        for i in range(20)
    ))
    await store.mark_running("k0", now)
    await store.finish_job("k0", JobState.SUCCEEDED, ended_at=now, result=b"kept")
    print(" ".join(o.job.id for o in outs), flush=True)
    await asyncio.to_thread(sys.stdin.read)  # acknowledged; now wait to be killed

asyncio.run(main())
"""


async def test_acknowledged_jobs_survive_sigkill(db_path: pathlib.Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(db_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=REPO,
        env=env,
    )
    try:
        assert proc.stdout is not None
        with anyio.fail_after(30):
            line = await anyio.to_thread.run_sync(proc.stdout.readline)
        acked = line.decode().split()
        assert len(acked) == 20
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
        if proc.stdin:
            proc.stdin.close()
        if proc.stdout:
            proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL

    s = SqliteStore(db_path)
    await s.open()
    try:
        for job_id in acked:
            assert await s.get_job(job_id) is not None
        assert await s.get_result("k0") == b"kept"
    finally:
        await s.close()


# -- group commit ------------------------------------------------------------------------------


async def test_concurrent_creates_share_commits(store: SqliteStore, db_path: pathlib.Path) -> None:
    before = store.commits
    outs = await asyncio.gather(
        *(store.create_job(new_job(request_id=f"r{i}", payload=b"%d" % i)) for i in range(200))
    )
    assert all(o.created for o in outs)
    assert len({o.job.id for o in outs}) == 200
    assert count_rows(db_path) == 200
    used = store.commits - before
    assert 1 <= used < 200


async def _run_gated(
    store: SqliteStore, gate: WriterGate, *coros: Awaitable[object]
) -> list[object]:
    """Runs `coros` as one batch: queued while the writer is held, released together."""
    held = asyncio.ensure_future(store._call(gate.op))
    await anyio.to_thread.run_sync(gate.started.wait, 10)
    tasks = [asyncio.ensure_future(c) for c in coros]
    await asyncio.sleep(0)  # each task runs up to its enqueue
    gate.release.set()
    await held
    return list(await asyncio.gather(*tasks, return_exceptions=True))


async def test_failing_operation_does_not_fail_its_batch(store: SqliteStore) -> None:
    existing = (await store.create_job(new_job(job_id="existing", request_id="r"))).job
    before = store.commits
    late = T0 + timedelta(seconds=REQUEST_ID_DEDUP_WINDOW_S + 1)
    results = await _run_gated(
        store,
        WriterGate(),
        store.create_job(new_job(job_id="a")),
        # Writes first (releases "r" from the old job), then fails on the duplicate id: the
        # savepoint must undo the release.
        store.create_job(new_job(job_id="existing", request_id="r", created_at=late)),
        store.create_job(new_job(request_id="r", payload=b"other")),  # REQUEST_ID_REUSED
        store.create_job(new_job(job_id="c")),
    )
    assert store.commits - before == 2  # the gate's batch, then all four together
    a, dup, reused, c = results
    assert isinstance(dup, sqlite3.IntegrityError)
    assert isinstance(reused, InvalidArgument) and reused.reason == "REQUEST_ID_REUSED"
    assert await store.get_job("a") == getattr(a, "job", None)
    assert await store.get_job("c") == getattr(c, "job", None)
    assert await store.get_job("existing") == existing  # request_id still "r"


async def test_operation_that_aborts_the_transaction_fails_alone(store: SqliteStore) -> None:
    def abort(conn: sqlite3.Connection) -> None:
        conn.execute("UPDATE jobs SET tenant = 'hijacked'")
        conn.execute("ROLLBACK")  # what SQLite itself does on e.g. SQLITE_FULL or SQLITE_IOERR
        raise sqlite3.OperationalError("disk full (simulated)")

    before = store.commits
    a, bad, c = await _run_gated(
        store,
        WriterGate(),
        store.create_job(new_job(job_id="a")),
        store._call(abort),
        store.create_job(new_job(job_id="c")),
    )
    assert isinstance(bad, sqlite3.OperationalError)
    assert store.commits - before == 2  # the aborted attempt was retried, not committed
    assert await store.get_job("a") == getattr(a, "job", None)
    assert await store.get_job("c") == getattr(c, "job", None)
    assert (await store.list_jobs("hijacked")).jobs == []
    assert len((await store.list_jobs("acme")).jobs) == 2


@pytest.mark.anyio
async def test_placement_and_request_lookup(store: SqliteStore) -> None:
    await store.create_job(
        dataclasses.replace(new_job(job_id="fb", request_id="r-fb"), placement="aer-mps")
    )
    job = await store.get_job("fb")
    assert job is not None and (job.backend, job.placement) == ("aer", "aer-mps")
    found = await store.find_request("acme", "r-fb", T0)
    assert found is not None and found[0].id == "fb"
    assert await store.find_request("other-tenant", "r-fb", T0) is None
    late = T0 + timedelta(seconds=REQUEST_ID_DEDUP_WINDOW_S + 1)
    assert await store.find_request("acme", "r-fb", late) is None
