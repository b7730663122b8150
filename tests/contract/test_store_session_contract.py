"""The Store contract for sessions (issue 10): create with request-id dedup and the per-tenant
cap in one transaction, get by tenant, save (never after the end), list paged and filtered,
open sessions, a session's jobs, and survival across a reopen. Run on every implementation in
tests/contract/stores.py."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from gateway.api.session_filter import parse_session_filter
from gateway.domain.errors import Code, GatewayError
from gateway.domain.jobs import ExecutionInfo, JobState
from gateway.domain.pricing import Cost, Totals, Usage
from gateway.domain.sessions import (
    EndReason,
    FailurePolicy,
    Session,
    SessionMode,
    SessionState,
)
from gateway.store.base import REQUEST_ID_DEDUP_WINDOW_S, NewJob, Store
from tests.contract.stores import StoreOpener

pytestmark = pytest.mark.anyio

T0 = datetime(2026, 12, 2, 8, 0, 0, 123456, tzinfo=UTC)
SECOND = timedelta(seconds=1)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def new_session(
    *,
    tenant: str = "acme",
    backend: str = "aer",
    request_id: str = "",
    created_at: datetime = T0,
    labels: dict[str, str] | None = None,
) -> Session:
    return Session(
        id=uuid.uuid4().hex,
        tenant=tenant,
        backend=backend,
        mode=SessionMode.BATCH,
        state=SessionState.PENDING,
        failure_policy=FailurePolicy.ABORT,
        max_ttl_s=3600.5,
        idle_ttl_s=60.25,
        created_at=created_at,
        request_id=request_id,
        labels=labels or {},
    )


def new_job(session: str, created_at: datetime) -> NewJob:
    return NewJob(
        id=uuid.uuid4().hex,
        tenant="acme",
        request_id="",
        request_hash=hashlib.sha256(b"x").digest(),
        backend="aer",
        spec=b"spec",
        num_pubs=1,
        seed=1,
        created_at=created_at,
        session=session,
    )


async def test_round_trip_and_tenancy(store: Store) -> None:
    s = dataclasses.replace(new_session(labels={"team": "a"}), provider_session_id="p-1")
    created, was_new = await store.create_session(s, b"h")
    assert was_new and created == s
    assert await store.get_session(s.id) == s
    assert await store.get_session(s.id, "acme") == s
    assert await store.get_session(s.id, "other") is None
    assert await store.get_session("missing") is None


async def test_a_tenants_session_create_times_rise_in_commit_order(store: Store) -> None:
    # A session whose clock reading was taken before a newer one committed (its provider
    # session took a while) commits just after the tenant's newest.
    oldest, _ = await store.create_session(new_session(created_at=T0 - SECOND), b"h")
    newest, _ = await store.create_session(new_session(created_at=T0 + SECOND), b"h")
    first = await store.list_sessions("acme", limit=1)
    assert first.next_cursor is not None
    late, _ = await store.create_session(new_session(created_at=T0), b"h")
    assert late.created_at == newest.created_at + timedelta(microseconds=1)
    assert await store.get_session(late.id) == late
    rest = await store.list_sessions("acme", after=first.next_cursor)
    assert [s.id for s in rest.sessions] == [oldest.id]
    since = parse_session_filter(f'create_time > "{newest.created_at.isoformat()}"')
    assert [s.id for s in (await store.list_sessions("acme", filter=since)).sessions] == [late.id]
    other, _ = await store.create_session(new_session(tenant="bob", created_at=T0), b"h")
    assert other.created_at == T0


async def test_request_id_dedup_and_reuse(store: Store) -> None:
    first, created = await store.create_session(new_session(request_id="r1"), b"h")
    again, created_again = await store.create_session(new_session(request_id="r1"), b"h")
    assert created and not created_again and again.id == first.id
    with pytest.raises(GatewayError) as reused:
        await store.create_session(new_session(request_id="r1"), b"other")
    assert reused.value.reason == "REQUEST_ID_REUSED"
    assert reused.value.metadata["session"] == first.name
    # Another tenant's request ids are its own.
    _, other_created = await store.create_session(new_session(tenant="b", request_id="r1"), b"x")
    assert other_created
    # The lookup CreateSession makes before validating a request.
    assert await store.find_session_request("acme", "r1", T0) == (first, b"h")
    assert await store.find_session_request("acme", "r2", T0) is None
    assert await store.find_session_request("c", "r1", T0) is None


async def test_request_ids_are_recognised_for_the_dedup_window_only(store: Store) -> None:
    first, _ = await store.create_session(new_session(request_id="r1"), b"h")
    edge = T0 + timedelta(seconds=REQUEST_ID_DEDUP_WINDOW_S)
    late = edge + timedelta(microseconds=1)
    assert await store.find_session_request("acme", "r1", edge) == (first, b"h")
    assert await store.find_session_request("acme", "r1", late) is None
    # Within the window a different request is refused; past it the id is free again.
    with pytest.raises(GatewayError) as reused:
        await store.create_session(new_session(request_id="r1", created_at=edge), b"x")
    assert reused.value.reason == "REQUEST_ID_REUSED"
    fresh, created = await store.create_session(new_session(request_id="r1", created_at=late), b"x")
    assert created and fresh.id != first.id
    assert await store.find_session_request("acme", "r1", late) == (fresh, b"x")
    assert await store.get_session(first.id) == dataclasses.replace(first, request_id="")


async def test_the_cap_counts_open_sessions_atomically(store: Store) -> None:
    made = await asyncio.gather(
        *(store.create_session(new_session(), b"h", max_open=3) for _ in range(3)),
        *(store.create_session(new_session(), b"h", max_open=3) for _ in range(3)),
        return_exceptions=True,
    )
    refused = [m for m in made if isinstance(m, GatewayError)]
    assert len(refused) == 3
    assert all(r.code is Code.RESOURCE_EXHAUSTED for r in refused)
    assert all(r.reason == "SESSION_LIMIT_REACHED" and r.quota_violations for r in refused)
    assert await store.count_open_sessions("acme") == 3
    # A retry of a created session is answered even at the cap.
    retried = new_session(request_id="keep")
    with pytest.raises(GatewayError):
        await store.create_session(retried, b"h", max_open=3)
    first = next(m for m in made if isinstance(m, tuple))[0]
    ended = dataclasses.replace(
        first, state=SessionState.CLOSED, ended_at=T0, end_reason=EndReason.CLOSED
    )
    assert await store.save_session(ended) == ended
    assert await store.count_open_sessions("acme") == 2
    kept, created = await store.create_session(retried, b"h", max_open=3)
    assert created
    again, created_again = await store.create_session(
        new_session(request_id="keep"), b"h", max_open=3
    )
    assert not created_again and again.id == kept.id


async def test_save_changes_state_and_times_but_never_after_the_end(store: Store) -> None:
    s, _ = await store.create_session(new_session(), b"h")
    active = dataclasses.replace(
        s, state=SessionState.ACTIVE, first_job_at=T0 + SECOND, last_activity_at=T0 + 2 * SECOND
    )
    assert await store.save_session(active) == active
    failed = dataclasses.replace(
        active, state=SessionState.FAILED, ended_at=T0 + 3 * SECOND, end_reason=EndReason.JOB_FAILED
    )
    assert await store.save_session(failed) == failed
    assert await store.save_session(dataclasses.replace(failed, state=SessionState.ACTIVE)) is None
    assert await store.get_session(s.id) == failed
    assert [o.id for o in await store.open_sessions()] == []


async def test_list_pages_newest_first_and_filters(store: Store) -> None:
    sessions = []
    for i in range(5):
        s, _ = await store.create_session(
            new_session(
                backend="aer" if i % 2 else "mps",
                created_at=T0 + i * SECOND,
                labels={"n": str(i)},
            ),
            b"h",
        )
        sessions.append(s)
    await store.create_session(new_session(tenant="other"), b"h")
    page = await store.list_sessions("acme", limit=2)
    assert [s.id for s in page.sessions] == [sessions[4].id, sessions[3].id]
    assert page.next_cursor is not None
    rest = await store.list_sessions("acme", after=page.next_cursor, limit=10)
    assert [s.id for s in rest.sessions] == [s.id for s in reversed(sessions[:3])]
    assert rest.next_cursor is None
    closed = dataclasses.replace(
        sessions[1], state=SessionState.CLOSED, ended_at=T0, end_reason=EndReason.CLOSED
    )
    await store.save_session(closed)
    cases = {
        'backend = "backends/aer"': [sessions[3], sessions[1]],
        "state = CLOSED": [sessions[1]],
        'state != SESSION_STATE_CLOSED AND backend = "backends/aer"': [sessions[3]],
        'labels.n = "2"': [sessions[2]],
        "labels:n AND create_time >= " + f'"{(T0 + 3 * SECOND).isoformat()}"': [
            sessions[4],
            sessions[3],
        ],
    }
    for text, expected in cases.items():
        found = await store.list_sessions("acme", filter=parse_session_filter(text), limit=10)
        assert [s.id for s in found.sessions] == [s.id for s in expected], text


async def test_a_sessions_jobs_and_open_sessions_survive_a_reopen(
    store_factory: StoreOpener,
) -> None:
    store = await store_factory()
    s, _ = await store.create_session(new_session(), b"h")
    other, _ = await store.create_session(new_session(), b"h")
    first = (await store.create_job(new_job(s.id, T0 + SECOND))).job
    second = (await store.create_job(new_job(s.id, T0 + 2 * SECOND))).job
    await store.create_job(new_job(other.id, T0 + 3 * SECOND))
    assert first.session == s.id
    await store.finish_job(first.id, JobState.SUCCEEDED, ended_at=T0 + 3 * SECOND)
    await store.close()
    reopened = await store_factory()
    assert [j.id for j in await reopened.session_jobs(s.id)] == [second.id]
    everything = await reopened.session_jobs(s.id, include_final=True)
    assert [j.id for j in everything] == [first.id, second.id]
    assert {o.id for o in await reopened.open_sessions()} == {s.id, other.id}
    assert await reopened.get_session(s.id) == s


async def test_a_sessions_jobs_and_open_sessions_come_oldest_first_whatever_their_ids(
    store: Store,
) -> None:
    # Ids chosen against create order: random ids matched it half the time, so an order by
    # id passed as often as not. Recovery re-queues (and cancels) in this order.
    # (A tenant's create times rise in commit order: each is created in time order.)
    late = dataclasses.replace(new_session(created_at=T0 + SECOND), id="a" * 32)
    early = dataclasses.replace(new_session(created_at=T0), id="b" * 32)
    for s in (early, late):
        await store.create_session(s, b"h")
    assert [o.id for o in await store.open_sessions()] == [early.id, late.id]
    newer = dataclasses.replace(new_job(early.id, T0 + 2 * SECOND), id="c" * 32)
    older = dataclasses.replace(new_job(early.id, T0 + SECOND), id="d" * 32)
    for job in (older, newer):
        await store.create_job(job)
    assert [j.id for j in await store.session_jobs(early.id)] == [older.id, newer.id]
    everything = await store.session_jobs(early.id, include_final=True)
    assert [j.id for j in everything] == [older.id, newer.id]


async def test_a_page_of_no_sessions_is_refused(store: Store) -> None:
    # A page of none would answer with a cursor that never moves on.
    with pytest.raises(ValueError):
        await store.list_sessions("acme", limit=0)


async def test_totals_of_a_page_of_sessions_in_one_call(store: Store) -> None:

    a, _ = await store.create_session(new_session(), b"h")
    b, _ = await store.create_session(new_session(), b"h")
    idle, _ = await store.create_session(new_session(), b"h")
    spent = [(a.id, 100, 1.5, Cost(0.25, "USD")), (a.id, 50, 0.5, Cost(2.0, "credits"))]
    spent += [(a.id, 10, 0.25, Cost(0.5, "USD")), (b.id, 7, 0.0, None)]
    for i, (sid, shots, seconds, cost) in enumerate(spent):
        job = (await store.create_job(new_job(sid, T0 + i * SECOND))).job
        execution = ExecutionInfo(
            backend="aer", seed=1, usage=Usage(shots=shots, execution_seconds=seconds), cost=cost
        )
        await store.finish_job(
            job.id, JobState.SUCCEEDED, ended_at=T0 + 9 * SECOND, execution=execution
        )
    # A job still queued adds nothing.
    await store.create_job(new_job(b.id, T0 + 5 * SECOND))
    totals = await store.session_totals([a.id, b.id, idle.id, a.id])
    assert set(totals) == {a.id, b.id, idle.id}
    assert (totals[a.id].shots, totals[a.id].execution_seconds) == (160, 2.25)
    assert totals[a.id].costs == (Cost(0.75, "USD"), Cost(2.0, "credits"))  # by unit, bytewise
    assert (totals[b.id].shots, totals[b.id].costs) == (7, ())
    assert (totals[idle.id].shots, totals[idle.id].execution_seconds) == (0, 0.0)
    assert await store.session_totals([]) == {}


async def test_totals_count_each_finished_job_once_and_are_kept(
    store_factory: StoreOpener,
) -> None:
    """Totals are added as each job finishes with its execution record: a finish that does
    not happen (the job already final, twice at once, or never given a record) adds nothing,
    and every handle on the data sees the same totals."""

    store = await store_factory()
    s, _ = await store.create_session(new_session(), b"h")
    other, _ = await store.create_session(new_session(), b"h")

    def spent(shots: int, seconds: float, cost: Cost | None) -> ExecutionInfo:
        usage = Usage(shots=shots, execution_seconds=seconds)
        return ExecutionInfo(backend="aer", seed=1, usage=usage, cost=cost)

    jobs = [(await store.create_job(new_job(s.id, T0 + i * SECOND))).job for i in range(6)]
    end = T0 + 9 * SECOND
    first = spent(100, 0.1, Cost(0.25, "USD"))
    assert await store.finish_job(jobs[0].id, JobState.SUCCEEDED, ended_at=end, execution=first)
    # The same job finished again (a retry, a late runner): already final, so not counted.
    again = spent(100, 0.1, Cost(0.25, "USD"))
    assert (
        await store.finish_job(jobs[0].id, JobState.FAILED, ended_at=end, execution=again) is None
    )
    # Two finishes racing: one wins, the job counts once.
    racing = spent(10, 0.2, Cost(1.5, "credits"))
    outcomes = await asyncio.gather(
        *(
            store.finish_job(jobs[1].id, JobState.SUCCEEDED, ended_at=end, execution=racing)
            for _ in range(2)
        )
    )
    assert sum(o is not None for o in outcomes) == 1
    # A failed job's record counts too; one with usage but no cost adds no unit; a short local
    # run (started_at: RUNNING written with the final state) counts like any other.
    await store.finish_job(
        jobs[2].id, JobState.FAILED, ended_at=end, execution=spent(5, 0.0, Cost(0.5, "USD"))
    )
    await store.finish_job(
        jobs[3].id, JobState.SUCCEEDED, ended_at=end, execution=spent(1, 1, None)
    )
    await store.finish_job(
        jobs[4].id,
        JobState.SUCCEEDED,
        ended_at=end,
        started_at=T0 + 8 * SECOND,
        execution=spent(4, 0.25, Cost(0.0, "AUD")),
    )
    # Cancelled before it ran: no execution record, nothing to add.
    await store.finish_job(jobs[5].id, JobState.CANCELLED, ended_at=end)
    # A job of no session adds to no session's totals.
    alone = (await store.create_job(new_job("", T0))).job
    await store.finish_job(alone.id, JobState.SUCCEEDED, ended_at=end, execution=first)

    expected = Totals(
        shots=100 + 10 + 5 + 1 + 4,
        execution_seconds=0.1 + 0.2 + 0.0 + 1 + 0.25,
        # By unit, bytewise; a zero amount still names its unit.
        costs=(Cost(0.0, "AUD"), Cost(0.75, "USD"), Cost(1.5, "credits")),
    )
    totals = await store.session_totals([s.id, other.id, "no-such-session"])
    assert totals == {s.id: expected, other.id: Totals(), "no-such-session": Totals()}
    await store.close()
    reopened = await store_factory()
    assert await reopened.session_totals([s.id]) == {s.id: expected}


async def test_filtered_pages_may_come_back_short_yet_page_through_every_match(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gateway.store import sqlite_pages

    monkeypatch.setattr(sqlite_pages, "SCAN_ROWS", 2)  # the SQLite store's scan bound
    made = []
    for i in range(7):
        labels = {"team": "qml"} if i in (0, 5, 6) else {}
        session = new_session(created_at=T0 + timedelta(seconds=i), labels=labels)
        made.append((await store.create_session(session, b"h"))[0])
    wanted = parse_session_filter('labels.team = "qml"')
    found, pages, cursor = [], 0, None
    while True:
        page = await store.list_sessions("acme", filter=wanted, after=cursor, limit=10)
        found += [s.id for s in page.sessions]
        pages += 1
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert found == [made[6].id, made[5].id, made[0].id]
    assert pages == 4  # windows of 2: [6 5] [4 3] [2 1] [0]


async def test_ended_sessions_past_retention_go_once_their_jobs_have_gone(store: Store) -> None:
    hour = timedelta(hours=1)

    async def ended(at: datetime, job_ends: datetime | None = None) -> Session:
        session, _ = await store.create_session(new_session(created_at=T0), b"h")
        if job_ends is not None:
            job = new_job(session.id, T0)
            await store.create_job(job)
            # Priced: the session's cost totals name it, and must go with it (left behind,
            # they failed every later sweep's batch).
            usage = Usage(shots=8, execution_seconds=0.5)
            execution = ExecutionInfo(backend="aer", seed=1, usage=usage, cost=Cost(1.0, "USD"))
            await store.finish_job(
                job.id, JobState.SUCCEEDED, ended_at=job_ends, execution=execution
            )
        closed = dataclasses.replace(
            session, state=SessionState.CLOSED, ended_at=at, end_reason=EndReason.CLOSED
        )
        assert await store.save_session(closed) == closed
        return closed

    empty = await ended(T0 + hour)
    with_old_job = await ended(T0 + hour, job_ends=T0 + 2 * hour)
    with_late_job = await ended(T0 + hour, job_ends=T0 + 9 * hour)
    recent = await ended(T0 + 8 * hour)
    still_open, _ = await store.create_session(new_session(created_at=T0), b"h")

    # The old job goes first, then the sessions left without jobs, in the same batch.
    assert await store.delete_ended_jobs(T0 + 5 * hour, 10) == (1, 2)
    assert await store.get_session(empty.id) is None
    assert await store.get_session(with_old_job.id) is None
    assert await store.get_session(with_late_job.id) == with_late_job
    assert await store.get_session(recent.id) == recent
    assert await store.get_session(still_open.id) == still_open
    assert await store.delete_ended_jobs(T0 + 5 * hour, 10) == (0, 0)
