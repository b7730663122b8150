"""SQLite store specifics, from a hand mutation review of the store: each test here fails on a
plausible wrong implementation that the rest of the suite let pass. What every store must do
is in tests/contract/test_store_mutants_contract.py."""

from __future__ import annotations

import dataclasses
import hashlib
import pathlib
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest

from gateway.domain.jobs import Job, JobError, JobState
from gateway.jobs.queue_port import Claim
from gateway.jobs.recovery import RECOVERY_OWNER, recover
from gateway.jobs.result_cache import RecentResults
from gateway.jobs.retention_sweep import FIRST_SWEEP_S, RETENTION_SWEEP_S, RetentionSweep
from gateway.store import sqlite_pages
from gateway.store.base import ExpiryCursor, JobCursor, NewJob, QuotaCharge
from gateway.store.sqlite import SqliteStore

pytestmark = pytest.mark.anyio

T0 = datetime(2026, 11, 2, 9, 30, 0, 123456, tzinfo=UTC)
SECOND = timedelta(seconds=1)


@pytest.fixture
async def store(tmp_path: pathlib.Path) -> AsyncIterator[SqliteStore]:
    s = SqliteStore(tmp_path / "data" / "gateway.db")
    await s.open()
    yield s
    await s.close()


def new_job(job_id: str, *, created_at: datetime = T0) -> NewJob:
    return NewJob(
        id=job_id,
        tenant="acme",
        request_id="",
        request_hash=hashlib.sha256(job_id.encode()).digest(),
        backend="aer",
        spec=job_id.encode(),
        num_pubs=1,
        seed=7,
        created_at=created_at,
    )


async def test_a_job_larger_than_a_page_s_bytes_is_listed_alone(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The page's byte bound cuts after a row, never before the first: a job whose stored row
    # alone exceeds it still comes back, one per page, and the walk reaches every job.
    for i in range(3):
        await store.create_job(new_job(f"j{i}", created_at=T0 + i * SECOND))
    monkeypatch.setattr(sqlite_pages, "PAGE_BYTES", 1)
    pages: list[list[str]] = []
    cursor: JobCursor | None = None
    while True:
        page = await store.list_jobs("acme", after=cursor, limit=10)
        pages.append([job.id for job in page.jobs])
        cursor = page.next_cursor
        if cursor is None:
            break
        assert len(pages) < 10, "the walk does not end"
    assert pages == [["j2"], ["j1"], ["j0"]]


async def test_a_deleted_job_takes_its_quota_ledger_row_and_keeps_the_totals(
    store: SqliteStore, tmp_path: pathlib.Path
) -> None:
    period = (T0 - 3600 * SECOND, T0 + 3600 * SECOND)
    charge = QuotaCharge(period_start=period[0], period_end=period[1], shots=100, max_shots=1000)
    for job_id in ("old", "new"):
        job = new_job(job_id, created_at=T0 - SECOND)
        await store.create_job(dataclasses.replace(job, charge=charge))
        await store.finish_job(job_id, JobState.FAILED, ended_at=T0)
    await store.create_job(dataclasses.replace(new_job("waiting"), charge=charge))
    usage = await store.tenant_usage("acme", *period)
    assert await store.delete_ended_jobs(T0, 10) == (2, 0)
    assert await store.tenant_usage("acme", *period) == usage
    with sqlite3.connect(tmp_path / "data" / "gateway.db") as conn:
        ledger = conn.execute("SELECT job_id FROM quota_ledger").fetchall()
    conn.close()
    assert ledger == [("waiting",)]


# -- the recent-results cache and the retention sweep ----------------------------------------


def test_a_result_of_exactly_a_quarter_of_the_cache_is_kept() -> None:
    # Only a result over a quarter of the bound is refused.
    recent = RecentResults(max_bytes=100)
    recent.put("quarter", b"q" * 25)
    assert recent.get("quarter") == b"q" * 25


class _Stop(Exception):
    """Ends RetentionSweep.run from its injected sleep."""


class _EventStore:
    """Answers the sweep's deletes with nothing to delete, and records each in `events`."""

    def __init__(self, events: list[str]) -> None:
        self.events = events

    async def delete_expired_results(
        self, after: ExpiryCursor | None, until: datetime, limit: int
    ) -> tuple[int, int, ExpiryCursor | None]:
        self.events.append("results")
        return 0, 0, None

    async def delete_ended_jobs(self, until: datetime, limit: int) -> tuple[int, int]:
        self.events.append("jobs")
        return 0, 0


async def test_the_sweep_runs_first_after_its_start_delay_then_at_its_interval() -> None:
    events: list[str] = []

    async def sleep(seconds: float) -> None:
        events.append(f"sleep {seconds:g}")
        if len([e for e in events if e.startswith("sleep")]) == 3:
            raise _Stop

    sweep = RetentionSweep(_EventStore(events), lambda: T0, job_retention_s=60.0)  # type: ignore[arg-type]
    with pytest.raises(_Stop):
        await sweep.run(sleep)
    assert events == [
        f"sleep {FIRST_SWEEP_S:g}",
        "results",
        "jobs",
        f"sleep {RETENTION_SWEEP_S:g}",
        "results",
        "jobs",
        f"sleep {RETENTION_SWEEP_S:g}",
    ]


# -- recovery at start (gateway.jobs.recovery) ------------------------------------------------


class _RecoveryQueue:
    def __init__(self) -> None:
        self.put_ids: list[str] = []
        self.adopted: list[str] = []

    async def put(self, job: Job, prepared: object) -> None:
        assert prepared is None
        self.put_ids.append(job.id)

    def adopt(self, job: Job) -> None:
        self.adopted.append(job.id)


@dataclass
class _Runtime:
    name: str
    queue: _RecoveryQueue = field(default_factory=_RecoveryQueue)


@dataclass
class _Transitions:
    store: SqliteStore
    finished: list[tuple[str, JobState, str]] = field(default_factory=list)
    # (job id, previous state, new state) of the changes published as committed.
    published: list[tuple[str, JobState | None, JobState]] = field(default_factory=list)

    def clock(self) -> datetime:
        return T0 + 60 * SECOND

    def committed(self, job: Job, previous: JobState | None) -> None:
        self.published.append((job.id, previous, job.state))

    async def finish(self, job: Job, state: JobState, *, error: JobError | None = None) -> None:
        assert error is not None
        self.finished.append((job.id, state, error.reason))


async def test_recovery_requeues_local_jobs_on_their_placement_and_reattaches_the_rest(
    store: SqliteStore,
) -> None:
    made = [
        new_job("queued"),
        dataclasses.replace(new_job("fallback"), backend="ibm", placement="aer"),
        new_job("remote"),
        new_job("cancelled-while-submitting"),
        new_job("ran-locally"),
        dataclasses.replace(new_job("gone"), backend="removed"),
    ]
    for i, new in enumerate(made):
        await store.create_job(dataclasses.replace(new, created_at=T0 + i * SECOND))
    await store.mark_running("remote", T0 + 10 * SECOND, remote_id="p-1")
    await store.mark_submitting("cancelled-while-submitting", T0 + 10 * SECOND)
    await store.mark_cancelling("cancelled-while-submitting", T0 + 11 * SECOND)
    await store.mark_running("ran-locally", T0 + 10 * SECOND)
    aer, ibm = _Runtime("aer"), _Runtime("ibm")
    transitions = _Transitions(store)
    adopted: list[tuple[str, str, str, object]] = []

    def adopt(runtime: _Runtime, claim: Claim) -> None:
        adopted.append((runtime.name, claim.job.id, claim.owner, claim.prepared))

    jobs = await recover(
        {"aer": aer, "ibm": ibm},  # type: ignore[dict-item]
        transitions,  # type: ignore[arg-type]
        adopt,  # type: ignore[arg-type]
    )
    assert [job.id for job in jobs] == [new.id for new in made]
    # A queued job (a fallback one on the queue it was placed in) waits again, once.
    assert aer.queue.put_ids == ["queued", "fallback", "ran-locally"]
    assert ibm.queue.put_ids == [] and ibm.queue.adopted == []
    # A provider job, and one cancelled while it was being submitted (the provider may have
    # it), are re-attached, never queued to run again.
    assert aer.queue.adopted == ["remote", "cancelled-while-submitting"]
    assert adopted == [
        ("aer", "remote", RECOVERY_OWNER, None),
        ("aer", "cancelled-while-submitting", RECOVERY_OWNER, None),
    ]
    assert transitions.finished == [("gone", JobState.FAILED, "BACKEND_NOT_FOUND")]
    # The one change the store's recovery made is published (hooks and watchers hear of it).
    assert transitions.published == [("ran-locally", JobState.RUNNING, JobState.QUEUED)]
