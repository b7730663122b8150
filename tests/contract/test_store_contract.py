"""The Store contract: what every store implementation must do, run on each (tests/contract/
stores.py). Implementation details (SQLite pragmas, migrations from old schemas, group commit)
are tested beside the implementation in tests/unit/."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest

from gateway.api.job_filter import parse_filter
from gateway.domain.errors import Code, FieldViolation, InvalidArgument
from gateway.domain.job_filter import Comparison, FilterField, FilterOp, JobFilter
from gateway.domain.jobs import (
    ExecutionInfo,
    Job,
    JobError,
    JobState,
    JobTimings,
    StateTransition,
)
from gateway.domain.pricing import Usage
from gateway.store.base import (
    REQUEST_ID_DEDUP_WINDOW_S,
    JobCursor,
    NewJob,
    QuotaCharge,
    Recovered,
    Store,
)
from tests.contract.stores import StoreOpener

pytestmark = pytest.mark.anyio

T0 = datetime(2026, 11, 2, 9, 30, 0, 123456, tzinfo=UTC)
SECOND = timedelta(seconds=1)
LEASE = 30 * SECOND


def new_job(
    *,
    tenant: str = "acme",
    request_id: str = "",
    payload: bytes = b"spec",
    backend: str = "aer",
    placement: str = "",
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
        placement=placement,
    )


def _history(*entries: tuple[JobState, datetime]) -> tuple[StateTransition, ...]:
    return tuple(StateTransition(state, at) for state, at in entries)


async def count_jobs(store: Store, tenant: str = "acme") -> int:
    return len((await store.list_jobs(tenant, limit=10_000)).jobs)


async def get(store: Store, job_id: str) -> Job:
    job = await store.get_job(job_id)
    assert job is not None
    return job


# -- create / get ------------------------------------------------------------------------------


async def test_round_trip_of_every_field(store: Store) -> None:
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
    assert await store.get_result_within("full", 100) is None

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
    assert await store.mark_running("full", started, remote_id="task-7") is not None
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
        remote_id="task-7",
    )
    assert finished == expected
    assert await store.get_job("full") == expected
    assert await store.get_result("full") == b"\x01result\x00"
    stored = b"\x01result\x00"
    assert await store.get_result_within("full", len(stored)) == (len(stored), stored)
    assert await store.get_result_within("full", len(stored) - 1) == (len(stored), None)
    assert await store.get_job("missing") is None
    assert await store.get_spec("missing") is None


async def test_rejects_values_it_cannot_store_faithfully(store: Store) -> None:
    with pytest.raises(ValueError):
        await store.create_job(new_job(seed=2**64))
    with pytest.raises(ValueError):
        await store.create_job(new_job(seed=-1))
    with pytest.raises(ValueError):
        await store.create_job(new_job(created_at=datetime(2026, 1, 1)))  # naive
    with pytest.raises(ValueError):
        await store.list_jobs("acme", limit=0)


async def test_placement_and_request_lookup(store: Store) -> None:
    await store.create_job(new_job(job_id="fb", request_id="r-fb", placement="aer-mps"))
    job = await store.get_job("fb")
    assert job is not None and (job.backend, job.placement) == ("aer", "aer-mps")
    found = await store.find_request("acme", "r-fb", T0)
    assert found is not None and found[0].id == "fb"
    assert found[1] == hashlib.sha256(b"spec").digest()
    assert await store.find_request("other-tenant", "r-fb", T0) is None
    late = T0 + timedelta(seconds=REQUEST_ID_DEDUP_WINDOW_S + 1)
    assert await store.find_request("acme", "r-fb", late) is None


async def test_data_survives_close_and_reopen(store_factory: StoreOpener) -> None:
    s = await store_factory()
    a = (await s.create_job(new_job(request_id="keep", seed=2**64 - 1))).job
    await s.mark_running(a.id, T0)
    done = await s.finish_job(a.id, JobState.SUCCEEDED, ended_at=T0, result=b"res")
    b = (await s.create_job(new_job())).job
    await s.close()

    s2 = await store_factory()
    assert await s2.get_job(a.id) == done
    assert await s2.get_result(a.id) == b"res"
    assert await s2.get_job(b.id) == b
    # Dedup state survives too.
    retry = await s2.create_job(new_job(request_id="keep", seed=2**64 - 1))
    assert retry.job.id == a.id and not retry.created


async def test_a_probe_write_commits_and_changes_nothing_readable(
    store_factory: StoreOpener,
) -> None:
    # Readiness probes a store that failed a write with it (gateway.runtime.readiness).
    s = await store_factory()
    a = (await s.create_job(new_job(request_id="keep"))).job
    await s.probe_write()
    other = await store_factory()  # another process's view
    await other.probe_write()
    assert await other.get_job(a.id) == a
    assert [j.id for j in (await other.list_jobs("acme")).jobs] == [a.id]


# -- request_id deduplication ------------------------------------------------------------------


async def test_same_request_id_and_hash_returns_the_same_job(store: Store) -> None:
    first = await store.create_job(new_job(request_id="retry-me"))
    again = await store.create_job(
        new_job(request_id="retry-me", created_at=T0 + timedelta(minutes=5))
    )
    assert first.created and not again.created
    assert again.job == first.job
    assert await count_jobs(store) == 1


async def test_same_request_id_other_hash_is_request_id_reused(store: Store) -> None:
    first = await store.create_job(new_job(request_id="once", payload=b"a"))
    with pytest.raises(InvalidArgument) as info:
        await store.create_job(new_job(request_id="once", payload=b"b"))
    err = info.value
    assert err.code == Code.INVALID_ARGUMENT
    assert err.reason == "REQUEST_ID_REUSED"
    assert err.metadata == {"job": f"jobs/{first.job.id}", "requestId": "once"}
    assert [v.field for v in err.field_violations] == ["request_id"]
    assert all(isinstance(v, FieldViolation) for v in err.field_violations)
    assert await count_jobs(store) == 1


async def test_request_id_is_scoped_to_the_tenant(store: Store) -> None:
    a = await store.create_job(new_job(tenant="a", request_id="same", payload=b"x"))
    b = await store.create_job(new_job(tenant="b", request_id="same", payload=b"y"))
    assert a.created and b.created
    assert a.job.id != b.job.id
    assert b.job.tenant == "b" and b.job.request_id == "same"


async def test_request_id_is_released_after_the_dedup_window(store: Store) -> None:
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


async def test_the_dedup_window_runs_from_creation_not_from_the_last_change(store: Store) -> None:
    # A job that ran and ended long after it was created still gives its request_id up once
    # the window, measured from its creation, has passed: its later changes do not extend it.
    old = await store.create_job(new_job(request_id="nightly", payload=b"a"))
    window = timedelta(seconds=REQUEST_ID_DEDUP_WINDOW_S)
    ended = T0 + window - SECOND
    await store.mark_running(old.job.id, ended - SECOND)
    await store.finish_job(old.job.id, JobState.SUCCEEDED, ended_at=ended, result=b"r")
    later = T0 + window + SECOND
    assert await store.find_request("acme", "nightly", later) is None
    fresh = await store.create_job(new_job(request_id="nightly", payload=b"b", created_at=later))
    assert fresh.created and fresh.job.id != old.job.id


async def test_jobs_without_request_id_never_deduplicate(store: Store) -> None:
    for _ in range(3):
        assert (await store.create_job(new_job())).created
    assert await count_jobs(store) == 3


# -- reading: tenants and pages ----------------------------------------------------------------


async def test_tenant_isolation(store: Store) -> None:
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


async def test_paging_newest_first_each_job_once(store: Store) -> None:
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


async def test_a_tenants_create_times_rise_in_commit_order(store: Store) -> None:
    # A job whose clock reading was taken before a newer job committed (its admission was
    # slower) commits just after the tenant's newest, never behind a page already served.
    await store.create_job(new_job(job_id="oldest", created_at=T0 - SECOND))
    newest = (await store.create_job(new_job(job_id="newest", created_at=T0 + SECOND))).job
    first = await store.list_jobs("acme", limit=1)
    assert [j.id for j in first.jobs] == ["newest"] and first.next_cursor is not None
    late = (await store.create_job(new_job(job_id="late", created_at=T0))).job
    assert late.created_at == newest.created_at + timedelta(microseconds=1)
    assert late.state_history == _history((JobState.QUEUED, late.created_at))
    assert await get(store, "late") == late
    rest = await store.list_jobs("acme", after=first.next_cursor)
    assert [j.id for j in rest.jobs] == ["oldest"]
    since = parse_filter(f'create_time > "{newest.created_at.isoformat()}"')
    assert [j.id for j in (await store.list_jobs("acme", filter=since)).jobs] == ["late"]
    # The same clock reading again: a microsecond later still.
    again = (await store.create_job(new_job(job_id="again", created_at=T0 + SECOND))).job
    assert again.created_at == late.created_at + timedelta(microseconds=1)
    # Another tenant's clock readings are its own.
    other = (await store.create_job(new_job(job_id="other", tenant="bob", created_at=T0))).job
    assert other.created_at == T0
    # A reading after the newest is kept as it is.
    later = (await store.create_job(new_job(job_id="later", created_at=T0 + 5 * SECOND))).job
    assert later.created_at == T0 + 5 * SECOND
    # A newest row more than a minute ahead is a clock stepped back, not an overtaken commit:
    # the reading is kept (a later row of the tenant is not stamped in the clock's future).
    back = (await store.create_job(new_job(job_id="back", created_at=T0 - 60 * SECOND))).job
    assert back.created_at == T0 - 60 * SECOND


async def test_list_filters_by_state_and_backend(store: Store) -> None:
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


async def test_list_filters_on_cancelling(store: Store) -> None:
    await store.create_job(new_job(job_id="c"))
    await store.mark_cancelling("c", T0)
    await store.create_job(new_job(job_id="q"))
    cancelling = JobFilter(((Comparison(FilterField.STATE, FilterOp.EQ, JobState.CANCELLING),),))
    page = await store.list_jobs("acme", filter=cancelling)
    assert [j.id for j in page.jobs] == ["c"]


# -- state transitions -------------------------------------------------------------------------


async def test_mark_running_only_once(store: Store) -> None:
    job = (await store.create_job(new_job())).job
    started = T0 + timedelta(seconds=3)
    running = await store.mark_running(job.id, started)
    assert running is not None
    assert running.state is JobState.RUNNING
    assert running.attempts == 1 and running.started_at == started
    assert running.remote_id is None
    assert await store.mark_running(job.id, started + timedelta(seconds=1)) is None
    assert await store.get_job(job.id) == running
    assert await store.mark_running("missing", started) is None


async def test_mark_submitting_then_running_stores_the_remote_id(store: Store) -> None:
    await store.create_job(new_job(job_id="r"))
    submitting = await store.mark_submitting("r", T0 + SECOND)
    assert submitting is not None and submitting.state is JobState.SUBMITTING
    assert submitting.remote_id is None and submitting.attempts == 0
    assert submitting.state_history == _history(
        (JobState.QUEUED, T0), (JobState.SUBMITTING, T0 + SECOND)
    )
    assert submitting.updated_at == T0 + SECOND
    # Only from QUEUED.
    assert await store.mark_submitting("r", T0 + 2 * SECOND) is None
    assert await store.mark_submitting("missing", T0) is None

    running = await store.mark_running("r", T0 + 2 * SECOND, remote_id="provider-42")
    assert running is not None and running.state is JobState.RUNNING
    assert running.remote_id == "provider-42" and running.attempts == 1
    assert running.started_at == T0 + 2 * SECOND
    assert running.state_history == _history(
        (JobState.QUEUED, T0),
        (JobState.SUBMITTING, T0 + SECOND),
        (JobState.RUNNING, T0 + 2 * SECOND),
    )
    # Read back everywhere a job is read.
    assert (await get(store, "r")).remote_id == "provider-42"
    assert [j.remote_id for j in (await store.list_jobs("acme")).jobs] == ["provider-42"]
    assert await store.mark_submitting("r", T0) is None  # RUNNING: not again
    cancelling = await store.mark_cancelling("r", T0 + 3 * SECOND)
    assert cancelling is not None and cancelling.remote_id == "provider-42"
    done = await store.finish_job("r", JobState.CANCELLED, ended_at=T0 + 4 * SECOND)
    assert done is not None and done.remote_id == "provider-42"

    # A local job (no remote id) runs straight from QUEUED; SUBMITTING can be cancelled.
    await store.create_job(new_job(job_id="s"))
    await store.mark_submitting("s", T0)
    assert await store.record_remote_id("s", "provider-7") is None  # not CANCELLING yet
    assert (await store.mark_cancelling("s", T0 + SECOND)) is not None
    # The provider had it after all: its id is kept, so it can be stopped and accounted for.
    kept = await store.record_remote_id("s", "provider-7")
    assert kept is not None and kept.state is JobState.CANCELLING
    assert (await get(store, "s")).remote_id == "provider-7"


async def test_a_refused_submit_queues_the_job_again(store: Store) -> None:
    await store.create_job(new_job(job_id="q"))
    assert await store.mark_queued_again("q", T0) is None  # only from SUBMITTING
    await store.mark_submitting("q", T0 + SECOND)
    again = await store.mark_queued_again("q", T0 + 2 * SECOND)
    assert again is not None and again.state is JobState.QUEUED
    assert again.remote_id is None and again.attempts == 0
    assert again.state_history == _history(
        (JobState.SUBMITTING, T0 + SECOND), (JobState.QUEUED, T0 + 2 * SECOND)
    )
    # Queued again, it can be submitted again.
    assert await store.mark_submitting("q", T0 + 3 * SECOND) is not None
    # A job the provider has (its remote id stored) never goes back to the queue.
    await store.mark_running("q", T0 + 4 * SECOND, remote_id="provider-7")
    assert await store.mark_queued_again("q", T0 + 5 * SECOND) is None
    assert await store.mark_queued_again("missing", T0) is None


async def test_finish_job_only_once_and_first_result_kept(store: Store) -> None:
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


async def test_a_run_without_its_running_write_is_finished_with_its_start(store: Store) -> None:
    """A short local run writes RUNNING with its end, in finish_job's transaction."""
    await store.create_job(new_job(job_id="s"))
    done = await store.finish_job(
        "s", JobState.SUCCEEDED, ended_at=T0 + 2 * SECOND, started_at=T0 + SECOND, result=b"r"
    )
    assert done is not None and done.state is JobState.SUCCEEDED
    assert done.started_at == T0 + SECOND and done.ended_at == T0 + 2 * SECOND
    assert done.attempts == 1
    assert done.updated_at == T0 + 2 * SECOND
    assert done.state_history == _history(
        (JobState.QUEUED, T0),
        (JobState.RUNNING, T0 + SECOND),
        (JobState.SUCCEEDED, T0 + 2 * SECOND),
    )
    assert await store.get_job("s") == done
    assert await store.get_result("s") == b"r"

    # A job re-queued after a restart keeps one RUNNING entry, its latest run's.
    await store.create_job(new_job(job_id="r"))
    await store.mark_running("r", T0 + SECOND)
    await store.recover(T0 + 2 * SECOND)
    cancelled = await store.finish_job(
        "r", JobState.CANCELLED, ended_at=T0 + 4 * SECOND, started_at=T0 + 3 * SECOND
    )
    assert cancelled is not None and cancelled.attempts == 2
    assert cancelled.state_history == _history(
        (JobState.QUEUED, T0 + 2 * SECOND),
        (JobState.RUNNING, T0 + 3 * SECOND),
        (JobState.CANCELLED, T0 + 4 * SECOND),
    )
    # A cancel accepted while the RUNNING write waited: the history stays in time order.
    await store.create_job(new_job(job_id="c", tenant="carol"))
    await store.mark_cancelling("c", T0 + 2 * SECOND)
    stopped = await store.finish_job(
        "c", JobState.CANCELLED, ended_at=T0 + 3 * SECOND, started_at=T0 + SECOND
    )
    assert stopped is not None
    assert stopped.state_history == _history(
        (JobState.QUEUED, T0),
        (JobState.RUNNING, T0 + SECOND),
        (JobState.CANCELLING, T0 + 2 * SECOND),
        (JobState.CANCELLED, T0 + 3 * SECOND),
    )
    assert await store.get_job("c") == stopped
    # Final is final, with or without a start.
    assert await store.finish_job("s", JobState.FAILED, ended_at=T0, started_at=T0) is None
    assert await store.finish_job("missing", JobState.FAILED, ended_at=T0, started_at=T0) is None


async def test_every_transition_is_in_the_history_with_its_time(store: Store) -> None:
    created = await store.create_job(new_job(job_id="a"))
    assert created.job.state_history == _history((JobState.QUEUED, T0))
    assert created.job.updated_at == T0
    running = await store.mark_running("a", T0 + SECOND)
    assert running is not None and running.state is JobState.RUNNING
    assert running.updated_at == T0 + SECOND
    done = await store.finish_job(
        "a",
        JobState.SUCCEEDED,
        ended_at=T0 + 3 * SECOND,
        result=b"r",
        result_expires_at=T0 + timedelta(days=30),
    )
    assert done is not None
    assert done.state_history == _history(
        (JobState.QUEUED, T0),
        (JobState.RUNNING, T0 + SECOND),
        (JobState.SUCCEEDED, T0 + 3 * SECOND),
    )
    assert done.updated_at == T0 + 3 * SECOND
    assert done.expire_at == T0 + timedelta(days=30)
    assert await store.get_job("a") == done


async def test_expiry_is_kept_for_succeeded_jobs_only(store: Store) -> None:
    await store.create_job(new_job(job_id="f"))
    failed = await store.finish_job(
        "f", JobState.FAILED, ended_at=T0, result_expires_at=T0 + timedelta(days=1)
    )
    assert failed is not None and failed.expire_at is None


@pytest.mark.parametrize("final", [s for s in JobState if s.is_final])
async def test_no_final_state_is_left_for_cancelling(store: Store, final: JobState) -> None:
    # Every final state is final, not only CANCELLED: a late CancelJob of a job that failed
    # or succeeded changes nothing, its history and end time included.
    await store.create_job(new_job(job_id="f"))
    await store.mark_running("f", T0 + SECOND)
    ended = await store.finish_job("f", final, ended_at=T0 + 2 * SECOND)
    assert ended is not None
    assert await store.mark_cancelling("f", T0 + 3 * SECOND) is None
    assert await store.get_job("f") == ended


async def test_mark_cancelling_from_running_queued_only(store: Store) -> None:
    await store.create_job(new_job(job_id="r"))
    await store.mark_running("r", T0 + SECOND)
    cancelling = await store.mark_cancelling("r", T0 + 2 * SECOND)
    assert cancelling is not None and cancelling.state is JobState.CANCELLING
    assert cancelling.state_history[-1] == StateTransition(JobState.CANCELLING, T0 + 2 * SECOND)
    assert cancelling.updated_at == T0 + 2 * SECOND
    # Already cancelling: no-op answer (None), nothing changes.
    assert await store.mark_cancelling("r", T0 + 3 * SECOND) is None
    assert (await store.get_job("r")) == cancelling
    # A CANCELLING job is not final: it can still end, CANCELLED or (finished first) otherwise.
    assert await store.mark_running("r", T0 + 4 * SECOND) is None
    done = await store.finish_job("r", JobState.CANCELLED, ended_at=T0 + 5 * SECOND)
    assert done is not None and done.state is JobState.CANCELLED
    assert [t.state for t in done.state_history] == [
        JobState.QUEUED,
        JobState.RUNNING,
        JobState.CANCELLING,
        JobState.CANCELLED,
    ]
    assert await store.mark_cancelling("r", T0) is None  # final is final
    # A queued job (the dispatcher took it, RUNNING not written yet) can be marked too.
    await store.create_job(new_job(job_id="q"))
    assert (await store.mark_cancelling("q", T0)) is not None
    assert await store.mark_cancelling("missing", T0) is None


async def test_expired_results_are_deleted_in_expiry_order_from_a_cursor(store: Store) -> None:
    # Results nobody asked for again were kept for ever. Jobs walked in (expiry, id) order,
    # `limit` at a time, from where the last batch stopped; results not yet expired stay.
    expiries = {"a": 1, "b": 3, "c": 3, "d": 3, "e": 5, "late": 100}
    for job_id, hours in expiries.items():
        await store.create_job(new_job(job_id=job_id))
        await store.finish_job(
            job_id,
            JobState.SUCCEEDED,
            ended_at=T0,
            result=job_id.encode(),
            result_expires_at=T0 + timedelta(hours=hours),
        )
    await store.create_job(new_job(job_id="failed"))
    await store.finish_job("failed", JobState.FAILED, ended_at=T0)
    now = T0 + timedelta(hours=10)
    walked: list[tuple[int, int]] = []
    cursor = None
    while True:
        deleted, count, last = await store.delete_expired_results(cursor, now, 2)
        walked.append((deleted, count))
        cursor = last if last is not None else cursor
        if count < 2:
            break
    # Ties at one expiry (b, c, d) are split across batches by id, none skipped.
    assert walked == [(2, 2), (2, 2), (1, 1)]
    assert cursor == (T0 + timedelta(hours=5), "e")
    for job_id in ("a", "b", "c", "d", "e"):
        assert await store.get_result(job_id) is None
        assert (await get(store, job_id)).state is JobState.SUCCEEDED  # the job is kept
    assert await store.get_result("late") == b"late"
    # From the cursor, a later sweep walks only what expired since.
    assert await store.delete_expired_results(cursor, now, 2) == (0, 0, None)
    later = T0 + timedelta(hours=200)
    assert await store.delete_expired_results(cursor, later, 2) == (
        1,
        1,
        (T0 + timedelta(hours=100), "late"),
    )


async def test_a_result_is_not_deleted_a_microsecond_before_it_expires(store: Store) -> None:
    expires = T0 + timedelta(hours=1)
    await store.create_job(new_job(job_id="r"))
    await store.finish_job(
        "r", JobState.SUCCEEDED, ended_at=T0, result=b"data", result_expires_at=expires
    )
    early = expires - timedelta(microseconds=1)
    assert await store.delete_expired_results(None, early, 10) == (0, 0, None)
    assert await store.get_result("r") == b"data"
    assert await store.delete_expired_results(None, expires, 10) == (1, 1, (expires, "r"))
    assert await store.get_result("r") is None


async def test_a_later_expiry_batch_deletes_results_expiring_at_its_cutoff(store: Store) -> None:
    # Batches after the first (from a cursor) take `until` as inclusively as the first does.
    expires = T0 + timedelta(hours=1)
    for job_id in ("a", "b"):
        await store.create_job(new_job(job_id=job_id))
        await store.finish_job(
            job_id, JobState.SUCCEEDED, ended_at=T0, result=b"x", result_expires_at=expires
        )
    first = await store.delete_expired_results(None, expires, 1)
    assert first == (1, 1, (expires, "a"))
    assert await store.delete_expired_results(first[2], expires, 1) == (1, 1, (expires, "b"))
    assert await store.get_result("b") is None


async def test_a_job_ending_a_microsecond_after_the_retention_cutoff_stays(store: Store) -> None:
    ended = T0 + timedelta(hours=1)
    await store.create_job(new_job(job_id="j"))
    await store.finish_job("j", JobState.SUCCEEDED, ended_at=ended, result=b"r")
    assert await store.delete_ended_jobs(ended - timedelta(microseconds=1), 10) == (0, 0)
    assert await store.get_result("j") == b"r"
    assert await store.delete_ended_jobs(ended, 10) == (1, 0)
    assert await store.get_job("j") is None


async def test_delete_result(store: Store) -> None:
    await store.create_job(new_job(job_id="d"))
    await store.finish_job("d", JobState.SUCCEEDED, ended_at=T0, result=b"data")
    assert await store.delete_result("d") is True
    assert await store.get_result("d") is None
    assert await store.delete_result("d") is False
    assert (await store.get_job("d")) is not None  # the job stays


async def test_a_job_keeps_the_shots_its_reservation_holds(store: Store) -> None:
    # What a job re-attached after a restart is charged (its prepared job is gone): the shots
    # its prepare counted, kept by its quota reservation, also once the reservation ended.
    charge = QuotaCharge(period_start=T0, period_end=T0 + timedelta(days=1), shots=123)
    await store.create_job(dataclasses.replace(new_job(job_id="held"), charge=charge))
    assert await store.reserved_shots("held") == 123
    await store.finish_job("held", JobState.SUCCEEDED, ended_at=T0, result=b"r")
    assert await store.reserved_shots("held") == 123
    await store.create_job(new_job(job_id="uncharged", request_id="r-2"))
    assert await store.reserved_shots("uncharged") is None
    assert await store.reserved_shots("nobody") is None


async def test_jobs_and_sessions_past_retention_are_deleted(store: Store) -> None:
    # Jobs were kept for ever: the database only grew. Final jobs that ended by the cutoff go,
    # oldest end first, with their results and ledger rows (the tenant's totals stay); jobs
    # still running and jobs that ended later stay; so does a session that still holds a job.
    hour = timedelta(hours=1)
    period = (T0 - 24 * hour, T0 + 24 * hour)
    charge = QuotaCharge(period_start=period[0], period_end=period[1], shots=100)
    ended = {"a": 1, "b": 2, "c": 3, "late": 9}
    for job_id, hours in ended.items():
        new = dataclasses.replace(new_job(job_id=job_id, request_id=f"r-{job_id}"), charge=charge)
        await store.create_job(new)
        await store.mark_running(job_id, T0)
        await store.finish_job(
            job_id,
            JobState.SUCCEEDED if job_id != "b" else JobState.FAILED,
            ended_at=T0 + hours * hour,
            result=job_id.encode(),
            execution=ExecutionInfo(backend="aer", seed=7, usage=Usage(100, 0.5)),
        )
    await store.create_job(new_job(job_id="running"))
    await store.mark_running("running", T0)
    usage = await store.tenant_usage("acme", *period)
    assert usage.shots_used == 400

    cutoff = T0 + 5 * hour
    assert await store.delete_ended_jobs(cutoff, 2) == (2, 0)  # a and b
    assert await store.delete_ended_jobs(cutoff, 2) == (1, 0)  # c
    assert await store.delete_ended_jobs(cutoff, 2) == (0, 0)
    for job_id in ("a", "b", "c"):
        assert await store.get_job(job_id) is None
        assert await store.get_result(job_id) is None
    assert await store.get_result("late") == b"late"
    assert (await get(store, "running")).state is JobState.RUNNING
    assert await store.tenant_usage("acme", *period) == usage
    # The deleted job's request_id is free again (its 7 days had passed long before).
    again = await store.create_job(new_job(job_id="a2", request_id="r-a", payload=b"other"))
    assert again.created and again.job.id == "a2"


# -- recovery at start -------------------------------------------------------------------------


async def test_recover_requeues_jobs_that_ran_locally(store: Store) -> None:
    for i in range(5):
        await store.create_job(new_job(job_id=f"j{i}", created_at=T0 + i * SECOND))
    await store.mark_running("j1", T0)
    await store.mark_running("j2", T0)
    await store.finish_job("j2", JobState.SUCCEEDED, ended_at=T0, result=b"r")
    await store.mark_running("j4", T0)

    recovered = (await store.recover(T0 + 10 * SECOND)).jobs
    assert [j.id for j in recovered] == ["j0", "j1", "j3", "j4"]
    assert all(j.state is JobState.QUEUED for j in recovered)
    by_id = {j.id: j for j in recovered}
    assert by_id["j1"].attempts == 1 and by_id["j1"].started_at is None
    assert by_id["j0"].attempts == 0
    final = await store.get_job("j2")
    assert final is not None and final.state is JobState.SUCCEEDED
    # Running again counts a second attempt.
    again = await store.mark_running("j1", T0)
    assert again is not None and again.attempts == 2


async def test_recover_ends_cancelling_jobs_and_requeues_running_ones(store: Store) -> None:
    for job_id in ("cancel-me", "run-again", "waiting"):
        await store.create_job(new_job(job_id=job_id))
    await store.mark_running("cancel-me", T0 + SECOND)
    await store.mark_cancelling("cancel-me", T0 + 2 * SECOND)
    await store.mark_running("run-again", T0 + SECOND)
    restart = T0 + 10 * SECOND
    result = await store.recover(restart)
    recovered = result.jobs
    assert [j.id for j in recovered] == ["run-again", "waiting"]  # never the cancelled one
    cancelled = await store.get_job("cancel-me")
    assert cancelled is not None and cancelled.state is JobState.CANCELLED
    assert cancelled.ended_at == restart
    assert cancelled.state_history[-1] == StateTransition(JobState.CANCELLED, restart)
    again = recovered[0]
    # What it changed, as committed, for the caller to publish (hooks, watchers): the
    # cancelled job's final record, the re-queued one's (also among the unfinished jobs).
    assert result.cancelled == [cancelled]
    assert result.requeued == [again]
    # QUEUED entered again: one entry, at its last time, after RUNNING.
    assert again.state_history == _history(
        (JobState.RUNNING, T0 + SECOND), (JobState.QUEUED, restart)
    )
    rerun = await store.mark_running("run-again", restart + SECOND)
    assert rerun is not None
    assert rerun.state_history == _history(
        (JobState.QUEUED, restart), (JobState.RUNNING, restart + SECOND)
    )
    times = [t.at for t in rerun.state_history]
    assert times == sorted(times)


async def test_recover_keeps_remote_and_submitting_jobs_for_reattach(store: Store) -> None:
    ids = [
        "remote-running",
        "remote-cancelling",
        "submitting",
        "cancelled-while-submitting",
        "local-running",
        "queued",
    ]
    for i, job_id in enumerate(ids):
        await store.create_job(new_job(job_id=job_id, created_at=T0 + i * SECOND))
    await store.mark_submitting("remote-running", T0)
    await store.mark_running("remote-running", T0 + SECOND, remote_id="p-1")
    await store.mark_running("remote-cancelling", T0 + SECOND, remote_id="p-2")
    await store.mark_cancelling("remote-cancelling", T0 + 2 * SECOND)
    await store.mark_submitting("submitting", T0 + SECOND)
    # The provider may have it, its id not stored yet: the runner looks it up to cancel it.
    await store.mark_submitting("cancelled-while-submitting", T0 + SECOND)
    await store.mark_cancelling("cancelled-while-submitting", T0 + 2 * SECOND)
    await store.mark_running("local-running", T0 + SECOND)

    result = await store.recover(T0 + 10 * SECOND)
    recovered = result.jobs
    assert [(j.id, j.state, j.remote_id) for j in recovered] == [
        ("remote-running", JobState.RUNNING, "p-1"),
        ("remote-cancelling", JobState.CANCELLING, "p-2"),
        ("submitting", JobState.SUBMITTING, None),
        ("cancelled-while-submitting", JobState.CANCELLING, None),
        ("local-running", JobState.QUEUED, None),
        ("queued", JobState.QUEUED, None),
    ]
    kept = await get(store, "remote-running")
    assert kept.started_at == T0 + SECOND and kept.attempts == 1
    # Only the local RUNNING job changed: the others are kept for the runner to re-attach.
    assert result.cancelled == []
    assert [j.id for j in result.requeued] == ["local-running"]
    # Recovering again changes nothing more (and tells of no change).
    assert await store.recover(T0 + 20 * SECOND) == Recovered(recovered, [], [])


async def test_recover_clears_every_claim(store: Store) -> None:
    await store.create_job(new_job(job_id="q"))
    await store.create_job(new_job(job_id="r", created_at=T0 + SECOND))
    assert (await store.claim_next("aer", "dead", T0 + LEASE, T0)) is not None
    assert (await store.claim_next("aer", "dead", T0 + LEASE, T0)) is not None
    await store.mark_running("r", T0)
    assert await store.queued_jobs("aer") == []

    result = await store.recover(T0 + SECOND)
    assert [j.id for j in result.jobs] == ["q", "r"]
    assert [j.id for j in result.requeued] == ["r"] and result.cancelled == []
    assert await store.claims_by_tenant("aer", T0 + SECOND) == {}
    assert await store.next_lease_expiry("aer") is None
    assert await store.queued_jobs("aer") == [("q", "acme"), ("r", "acme")]
    # The dead holder's claims are gone: it cannot renew them, anyone can claim.
    assert not await store.renew_claim("q", "dead", T0 + LEASE, T0 + SECOND)
    claimed = await store.claim_next("aer", "new", T0 + LEASE, T0 + SECOND)
    assert claimed is not None and claimed.id == "q"


# -- claims: leases on queued jobs -------------------------------------------------------------


async def claim(store: Store, owner: str = "me", now: datetime = T0, placement: str = "aer") -> str:
    job = await store.claim_next(placement, owner, now + LEASE, now)
    assert job is not None, "nothing claimable"
    return job.id


async def test_only_the_lease_holder_moves_a_claimed_job(store: Store) -> None:
    # A holder whose lease lapsed while its write waited must not move the job its new holder
    # runs: the new holder's own write would fail and leave the job claimed by nobody.
    await store.create_job(new_job(job_id="a"))
    await store.create_job(new_job(job_id="b", created_at=T0 + SECOND))
    assert await claim(store, "old") == "a"
    later = T0 + 2 * LEASE  # "old"'s lease lapsed: the job goes to "new"
    claimed = await store.claim_next("aer", "new", later + LEASE, later)
    assert claimed is not None and claimed.id == "a"
    assert await store.mark_running("a", later, holder="old") is None
    assert await store.mark_submitting("a", later, holder="old") is None
    assert (await get(store, "a")).state is JobState.QUEUED
    submitting = await store.mark_submitting("a", later, holder="new")
    assert submitting is not None and submitting.state is JobState.SUBMITTING
    running = await store.mark_running("a", later, holder="new")
    assert running is not None and running.attempts == 1
    # Given back to the queue (unleased, QUEUED), a job is no former holder's either.
    assert await store.mark_running("b", later, holder="old") is None
    # A write naming no holder (the in-memory queue's) applies to any job.
    assert await store.mark_running("b", later) is not None


async def test_only_the_lease_holder_ends_or_queues_again_a_claimed_job(store: Store) -> None:
    # A holder whose lease lapsed while its run went on must not end (or give back) the job
    # its new holder runs: its end would stand for the new holder's run, whose own end is
    # then refused.
    await store.create_job(new_job(job_id="a"))
    assert await claim(store, "old") == "a"
    later = T0 + 2 * LEASE
    claimed = await store.claim_next("aer", "new", later + LEASE, later)
    assert claimed is not None and claimed.id == "a"
    assert await store.mark_submitting("a", later, holder="new") is not None
    assert await store.mark_queued_again("a", later, holder="old") is None
    ended = await store.finish_job(
        "a", JobState.SUCCEEDED, ended_at=later, result=b"old", holder="old"
    )
    assert ended is None
    assert (await get(store, "a")).state is JobState.SUBMITTING
    assert await store.get_result("a") is None
    assert await store.renew_claim("a", "new", later + LEASE, later)  # still the new holder's
    requeued = await store.mark_queued_again("a", later, holder="new")
    assert requeued is not None and requeued.state is JobState.QUEUED
    done = await store.finish_job(
        "a", JobState.SUCCEEDED, ended_at=later, result=b"new", holder="new"
    )
    assert done is not None and done.state is JobState.SUCCEEDED
    assert await store.get_result("a") == b"new"
    # A write naming no holder (the in-memory queue's, a recovery's) ends any job.
    await store.create_job(new_job(job_id="b", created_at=T0 + SECOND))
    assert await claim(store, "other", later) == "b"
    cancelled = await store.finish_job("b", JobState.CANCELLED, ended_at=later)
    assert cancelled is not None and cancelled.state is JobState.CANCELLED


async def test_queued_by_tenant_counts_unclaimed_queued_jobs_of_the_placement(
    store: Store,
) -> None:
    for i in range(3):
        await store.create_job(new_job(job_id=f"a{i}", created_at=T0 + timedelta(seconds=i)))
    await store.create_job(new_job(job_id="b0", tenant="beta", created_at=T0))
    await store.create_job(new_job(job_id="x0", tenant="beta", backend="other"))
    assert await store.queued_by_tenant("aer") == {"acme": 3, "beta": 1}
    await claim(store)  # the oldest: a0 or b0
    await claim(store)
    counts = await store.queued_by_tenant("aer")
    assert sum(counts.values()) == 2 and set(counts) <= {"acme", "beta"}
    assert await store.queued_by_tenant("other") == {"beta": 1}


async def test_a_claim_leases_the_job_without_changing_it(store: Store) -> None:
    created = (await store.create_job(new_job(job_id="a"))).job
    assert await store.queued_jobs("aer") == [("a", "acme")]
    assert await store.next_lease_expiry("aer") is None
    assert await store.queued_by_tenant("aer") == {"acme": 1}
    claimed = await store.claim_next("aer", "me", T0 + LEASE, T0)
    assert claimed == created  # QUEUED, untouched; the lease is not part of the job
    assert await store.queued_jobs("aer") == []
    assert await store.queued_by_tenant("aer") == {} and await store.queued_by_tenant("other") == {}
    assert await store.claims_by_tenant("aer", T0) == {"acme": 1}
    assert await store.next_lease_expiry("aer") == T0 + LEASE
    # Nothing else to claim, for anyone.
    assert await store.claim_next("aer", "me", T0 + LEASE, T0) is None
    assert await store.claim_next("aer", "other", T0 + LEASE, T0) is None
    # The claimed job goes through its states as usual.
    assert await store.mark_running("a", T0 + SECOND) is not None
    assert await store.claims_by_tenant("aer", T0 + SECOND) == {"acme": 1}


async def test_claims_are_per_placement(store: Store) -> None:
    await store.create_job(new_job(job_id="fallback", placement="mps", created_at=T0 - SECOND))
    await store.create_job(new_job(job_id="on-aer"))
    await store.create_job(new_job(job_id="on-mps", backend="mps", created_at=T0 + SECOND))
    assert await store.queued_jobs("aer") == [("on-aer", "acme")]
    assert await store.queued_jobs("mps") == [("fallback", "acme"), ("on-mps", "acme")]
    assert await store.oldest_queued_at("mps") == T0 - SECOND
    assert await claim(store, placement="mps") == "fallback"
    assert await store.claims_by_tenant("aer", T0) == {}
    assert await store.claims_by_tenant("mps", T0) == {"acme": 1}
    assert await store.next_lease_expiry("aer") is None
    assert await claim(store, placement="aer") == "on-aer"
    assert await claim(store, placement="mps") == "on-mps"
    assert await store.claim_next("nowhere", "me", T0 + LEASE, T0) is None


async def test_two_owners_racing_never_get_the_same_job(store_factory: StoreOpener) -> None:
    # Two handles: two connections, as two gateway processes would hold.
    first, second = await store_factory(), await store_factory()
    n = 150
    for i in range(n):
        await first.create_job(
            new_job(job_id=f"j{i:03}", tenant=f"t{i % 3}", created_at=T0 + i * SECOND)
        )

    async def claim_until_empty(store: Store, owner: str) -> list[str]:
        got = []
        while (job := await store.claim_next("aer", owner, T0 + LEASE, T0)) is not None:
            got.append(job.id)
        return got

    async def claim_all(store: Store, owner: str) -> list[str]:
        # Several claims in flight per owner, one after another in each.
        runs = await asyncio.gather(*(claim_until_empty(store, owner) for _ in range(3)))
        return [job_id for run in runs for job_id in run]

    a, b = await asyncio.gather(claim_all(first, "a"), claim_all(second, "b"))
    assert sorted(a + b) == [f"j{i:03}" for i in range(n)]  # each job exactly once
    assert await first.claims_by_tenant("aer", T0) == {"t0": 50, "t1": 50, "t2": 50}
    # Each owner holds what it was given and nothing else.
    for job_id, owner, other in [*((j, "a", "b") for j in a[:5]), *((j, "b", "a") for j in b[:5])]:
        assert not await first.renew_claim(job_id, other, T0 + 2 * LEASE, T0)
        assert await second.renew_claim(job_id, owner, T0 + 2 * LEASE, T0)


async def test_a_dead_holders_claim_goes_to_another_owner_as_it_was_left(
    store_factory: StoreOpener,
) -> None:
    dying = await store_factory()
    await dying.create_job(new_job(job_id="remote"))
    await dying.create_job(new_job(job_id="fresh", created_at=T0 + SECOND))
    assert await claim(dying, "dead") == "remote"
    await dying.mark_submitting("remote", T0)
    await dying.mark_running("remote", T0 + SECOND, remote_id="p-9")
    await dying.close()  # the holder is gone; it never renews

    survivor = await store_factory()
    # Before the lease lapses, the claim stands: the other job is handed out instead.
    assert await survivor.claims_by_tenant("aer", T0 + LEASE - SECOND) == {"acme": 1}
    assert await claim(survivor, "alive", T0 + SECOND) == "fresh"
    assert await survivor.claim_next("aer", "alive", T0 + 2 * LEASE, T0 + LEASE - SECOND) is None

    # At its expiry it lapses: no longer a live claim, and claimable in the state left.
    assert await survivor.claims_by_tenant("aer", T0 + LEASE) == {"acme": 1}  # "fresh" only
    taken = await survivor.claim_next("aer", "alive", T0 + 2 * LEASE, T0 + LEASE)
    assert taken is not None
    assert (taken.id, taken.state, taken.remote_id) == ("remote", JobState.RUNNING, "p-9")
    assert taken.attempts == 1
    assert await survivor.claims_by_tenant("aer", T0 + LEASE) == {"acme": 2}
    # The dead holder's claim is gone for good: renew and end_claim by it do nothing.
    assert not await survivor.renew_claim("remote", "dead", T0 + 3 * LEASE, T0 + LEASE)
    await survivor.end_claim("remote", "dead", requeue=True)
    assert await survivor.claim_next("aer", "x", T0 + 3 * LEASE, T0 + LEASE) is None
    assert await survivor.renew_claim("remote", "alive", T0 + 3 * LEASE, T0 + LEASE)


async def test_renew(store: Store) -> None:
    await store.create_job(new_job(job_id="a"))
    assert await claim(store, "me") == "a"
    # Not the holder.
    assert not await store.renew_claim("a", "you", T0 + 2 * LEASE, T0 + SECOND)
    assert not await store.renew_claim("missing", "me", T0 + 2 * LEASE, T0 + SECOND)
    # The holder, before expiry: the lease moves, and the claim outlives its first expiry;
    # renewing tells the holder the job's state.
    state = await store.renew_claim("a", "me", T0 + 2 * LEASE, T0 + LEASE - SECOND)
    assert state is JobState.QUEUED
    assert await store.next_lease_expiry("aer") == T0 + 2 * LEASE
    assert await store.claims_by_tenant("aer", T0 + LEASE) == {"acme": 1}
    assert await store.claim_next("aer", "you", T0 + 3 * LEASE, T0 + LEASE) is None
    # At expiry the lease has lapsed: renewing is too late, even before anyone took it.
    assert not await store.renew_claim("a", "me", T0 + 3 * LEASE, T0 + 2 * LEASE)
    # Reclaimed by another: the old holder stays out, the new one renews.
    assert await claim(store, "you", T0 + 2 * LEASE) == "a"
    assert not await store.renew_claim("a", "me", T0 + 4 * LEASE, T0 + 2 * LEASE)
    assert await store.renew_claim("a", "you", T0 + 4 * LEASE, T0 + 2 * LEASE)
    # A cancel accepted elsewhere reaches the holder with its next renewal.
    await store.mark_cancelling("a", T0 + 2 * LEASE)
    cancelling = await store.renew_claim("a", "you", T0 + 4 * LEASE, T0 + 2 * LEASE)
    assert cancelling is JobState.CANCELLING
    # A finished job has no claim left to renew.
    await store.finish_job("a", JobState.SUCCEEDED, ended_at=T0 + 2 * LEASE)
    assert not await store.renew_claim("a", "you", T0 + 5 * LEASE, T0 + 2 * LEASE)


async def test_finishing_a_job_ends_its_claim(store: Store) -> None:
    await store.create_job(new_job(job_id="a"))
    assert await claim(store) == "a"
    await store.finish_job("a", JobState.CANCELLED, ended_at=T0)
    assert await store.claims_by_tenant("aer", T0) == {}
    assert await store.next_lease_expiry("aer") is None
    # Long after its lease would have lapsed, a final job is never handed out again.
    assert await store.claim_next("aer", "me", T0 + 3 * LEASE, T0 + 2 * LEASE) is None


async def test_end_claim(store: Store) -> None:
    for i in range(3):
        await store.create_job(new_job(job_id=f"a{i}", created_at=T0 + i * SECOND))
    assert await claim(store, "me") == "a0"
    # Not the holder: nothing happens.
    await store.end_claim("a0", "you", requeue=True)
    assert await store.claims_by_tenant("aer", T0) == {"acme": 1}
    # Given back unstarted: it keeps its place, first in line again.
    await store.end_claim("a0", "me", requeue=True)
    assert await store.claims_by_tenant("aer", T0) == {}
    assert await store.queued_jobs("aer") == [("a0", "acme"), ("a1", "acme"), ("a2", "acme")]
    assert await claim(store, "you") == "a0"
    assert await claim(store, "you") == "a1"
    # Ended without requeue: the claim is gone too (a QUEUED job waits again).
    await store.end_claim("a1", "you")
    assert await store.claims_by_tenant("aer", T0) == {"acme": 1}
    assert not await store.renew_claim("a1", "you", T0 + LEASE, T0)
    assert await store.queued_jobs("aer") == [("a1", "acme"), ("a2", "acme")]


async def test_a_started_job_given_back_is_handed_out_again_as_it_is(store: Store) -> None:
    await store.create_job(new_job(job_id="old"))
    await store.create_job(new_job(job_id="new", created_at=T0 + SECOND))
    assert await claim(store, "a") == "old"
    await store.mark_running("old", T0, remote_id="p-1")
    await store.end_claim("old", "a", requeue=True)
    assert await store.claims_by_tenant("aer", T0) == {}
    assert not await store.renew_claim("old", "a", T0 + LEASE, T0)
    taken = await store.claim_next("aer", "b", T0 + LEASE, T0)
    assert taken is not None and (taken.id, taken.state, taken.remote_id) == (
        "old",
        JobState.RUNNING,
        "p-1",
    )


async def test_claim_job_takes_one_waiting_job_out(store: Store) -> None:
    await store.create_job(new_job(job_id="a"))
    await store.create_job(new_job(job_id="b", created_at=T0 + SECOND))
    # Wrong tenant or placement, or absent: nothing happens.
    assert await store.claim_job("a", "other", "aer", "me", T0 + LEASE) is None
    assert await store.claim_job("a", "acme", "mps", "me", T0 + LEASE) is None
    assert await store.claim_job("missing", "acme", "aer", "me", T0 + LEASE) is None
    taken = await store.claim_job("a", "acme", "aer", "me", T0 + LEASE)
    assert taken is not None and taken.id == "a" and taken.state is JobState.QUEUED
    assert await store.claim_job("a", "acme", "aer", "you", T0 + LEASE) is None  # claimed
    assert await store.queued_jobs("aer") == [("b", "acme")]
    assert await claim(store, "you") == "b"
    assert await store.claim_job("b", "acme", "aer", "me", T0 + LEASE) is None
    # Not a claim from the tenant's line: fair-share history is untouched by it.
    assert await store.last_claims("aer") == {"acme": 1}
    # Finishing it ends the claim.
    await store.finish_job("a", JobState.CANCELLED, ended_at=T0)
    assert await store.claims_by_tenant("aer", T0) == {"acme": 1}


async def test_claim_job_never_takes_a_started_or_final_job(store: Store) -> None:
    # Only a waiting (QUEUED) job is taken: one that ran, or ended, has no lease left to hold,
    # yet it is not claimable by id either.
    for job_id in ("ended", "running"):
        await store.create_job(new_job(job_id=job_id))
    await store.finish_job("ended", JobState.CANCELLED, ended_at=T0)
    await store.mark_running("running", T0)
    assert await store.claim_job("ended", "acme", "aer", "me", T0 + LEASE) is None
    assert await store.claim_job("running", "acme", "aer", "me", T0 + LEASE) is None
    assert await store.claims_by_tenant("aer", T0) == {}
    assert await store.next_lease_expiry("aer") is None


async def test_claim_expired_takes_waiting_jobs_created_by_the_cutoff(store: Store) -> None:
    for i in range(4):
        await store.create_job(new_job(job_id=f"j{i}", created_at=T0 + i * SECOND))
    await store.create_job(new_job(job_id="other-queue", backend="mps"))
    assert await claim(store, "runner") == "j0"  # claimed: not "waiting"
    assert await store.oldest_queued_at("aer") == T0 + SECOND

    assert await store.claim_expired("aer", "me", T0 + SECOND - timedelta.resolution, T0) == []
    expired = await store.claim_expired("aer", "me", T0 + 2 * SECOND, T0 + LEASE)
    assert [j.id for j in expired] == ["j1", "j2"]
    assert all(j.state is JobState.QUEUED for j in expired)
    assert await store.queued_jobs("aer") == [("j3", "acme")]
    assert await store.oldest_queued_at("aer") == T0 + 3 * SECOND
    assert await store.claim_expired("aer", "you", T0 + 2 * SECOND, T0 + LEASE) == []
    assert await store.last_claims("aer") == {"acme": 1}
    # Nobody else claims them while the caller fails them.
    assert await claim(store, "runner") == "j3"
    assert await store.claim_next("aer", "runner", T0 + LEASE, T0) is None
    for job in expired:
        await store.finish_job(job.id, JobState.FAILED, ended_at=T0 + 2 * SECOND)
    assert await store.oldest_queued_at("aer") is None
    assert await store.queued_jobs("mps") == [("other-queue", "acme")]


# -- claims: the order they come in -------------------------------------------------------------


async def claim_order(store: Store, n: int, now: datetime = T0) -> list[str]:
    return [await claim(store, "me", now) for _ in range(n)]


async def test_fifo_within_a_tenant_by_create_time(store: Store) -> None:
    # Ids against create order; equal clock readings commit a microsecond apart, in commit
    # order (create_job), so the id never decides within a tenant.
    for job_id, at in [("z", 0), ("b", 1), ("a2", 1), ("a1", 1), ("c", 2)]:
        await store.create_job(new_job(job_id=job_id, created_at=T0 + at * SECOND))
    assert [j for j, _ in await store.queued_jobs("aer")] == ["z", "b", "a2", "a1", "c"]
    assert await claim_order(store, 5) == ["z", "b", "a2", "a1", "c"]


async def test_the_tenant_holding_the_fewest_claims_goes_first(store: Store) -> None:
    for i in range(4):
        await store.create_job(new_job(job_id=f"a{i}", tenant="alice", created_at=T0 + i * SECOND))
    assert await claim_order(store, 2) == ["a0", "a1"]  # alice alone takes what she wants
    await store.create_job(new_job(job_id="b0", tenant="bob", created_at=T0 + 10 * SECOND))
    await store.create_job(new_job(job_id="c0", tenant="carol", created_at=T0 + 11 * SECOND))
    # Alice holds two claims: the others' later jobs go before her older ones.
    assert await claim_order(store, 2) == ["b0", "c0"]
    assert await store.claims_by_tenant("aer", T0) == {"alice": 2, "bob": 1, "carol": 1}
    await store.create_job(new_job(job_id="b1", tenant="bob", created_at=T0 + 12 * SECOND))
    # Bob holds 1, Alice 2: Bob first, then Alice's.
    assert await claim_order(store, 3) == ["b1", "a2", "a3"]


async def test_among_equals_the_tenant_claimed_from_least_recently_goes_first(
    store: Store,
) -> None:
    for i in range(3):
        await store.create_job(new_job(job_id=f"a{i}", tenant="alice", created_at=T0 + i * SECOND))
    assert await claim(store) == "a0"
    await store.finish_job("a0", JobState.SUCCEEDED, ended_at=T0)
    assert await claim(store) == "a1"
    await store.finish_job("a1", JobState.SUCCEEDED, ended_at=T0)
    # Both hold nothing now; Bob, never claimed from, goes before Alice's older job.
    await store.create_job(new_job(job_id="b0", tenant="bob", created_at=T0 + 10 * SECOND))
    await store.create_job(new_job(job_id="b1", tenant="bob", created_at=T0 + 11 * SECOND))
    assert await claim(store) == "b0"
    await store.finish_job("b0", JobState.SUCCEEDED, ended_at=T0)
    # Nothing held again: Alice was claimed from less recently than Bob.
    assert await claim(store) == "a2"
    assert await claim(store) == "b1"
    history = await store.last_claims("aer")
    assert set(history) == {"alice", "bob"} and history["bob"] > history["alice"]


async def test_claim_history_survives_an_emptied_queue(store: Store) -> None:
    # Alice's jobs arrive one at a time (each claimed and done before the next), then Bob's:
    # Bob, never claimed from, still goes before Alice's next job.
    for i in range(2):
        await store.create_job(new_job(job_id=f"a{i}", tenant="alice", created_at=T0 + i * SECOND))
        assert await claim(store) == f"a{i}"
        await store.finish_job(f"a{i}", JobState.SUCCEEDED, ended_at=T0)
        assert await store.queued_jobs("aer") == []
    await store.create_job(new_job(job_id="a2", tenant="alice", created_at=T0 + 2 * SECOND))
    await store.create_job(new_job(job_id="b0", tenant="bob", created_at=T0 + 3 * SECOND))
    assert await claim_order(store, 2) == ["b0", "a2"]


async def test_never_claimed_tenants_go_by_their_oldest_job(store: Store) -> None:
    # Amy's job arrives first, but Zed's oldest is older.
    await store.create_job(new_job(job_id="a-later", tenant="amy", created_at=T0 + 3 * SECOND))
    await store.create_job(new_job(job_id="z-first", tenant="zed", created_at=T0 + SECOND))
    await store.create_job(new_job(job_id="z-late", tenant="zed", created_at=T0 + 2 * SECOND))
    assert await claim(store) == "z-first"
    # Then Amy (fewer claims), then Zed.
    assert await claim_order(store, 2) == ["a-later", "z-late"]


async def test_lapsed_claims_go_before_fresh_jobs(store: Store) -> None:
    await store.create_job(new_job(job_id="b0", tenant="bob"))
    await store.create_job(new_job(job_id="a0", tenant="alice", created_at=T0 + SECOND))
    await store.create_job(new_job(job_id="b1", tenant="bob", created_at=T0 + 2 * SECOND))
    await store.create_job(new_job(job_id="c0", tenant="carol", created_at=T0 - SECOND))
    assert await claim_order(store, 2) == ["c0", "b0"]
    # Carol's and Bob's holders die; at expiry both come back first, oldest first, ahead of
    # Alice, who holds nothing and was never claimed from.
    later = T0 + LEASE
    assert await claim_order(store, 3, later) == ["c0", "b0", "a0"]
    assert await store.claims_by_tenant("aer", later) == {"alice": 1, "bob": 1, "carol": 1}


async def test_last_claims_counts_every_claim_in_order(store: Store) -> None:
    assert await store.last_claims("aer") == {}
    for i, tenant in enumerate(["a", "b", "a"]):
        await store.create_job(new_job(job_id=f"j{i}", tenant=tenant, created_at=T0 + i * SECOND))
    await claim_order(store, 3)
    history = await store.last_claims("aer")
    assert history["a"] > history["b"] > 0
    assert await store.last_claims("mps") == {}
