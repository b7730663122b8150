"""The JobQueue contract (gateway/jobs/queue_port.py), run on both implementations: the
in-memory queue and the claim queue on a real SQLite store. Time is an injected clock moved by
hand; nothing sleeps.

"Another holder" is another ClaimQueue (another owner, as another gateway process) on the same
store; the in-memory queue belongs to one process, so there it is the same queue."""

from __future__ import annotations

import asyncio
import hashlib
import pathlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import anyio
import pytest

from gateway.backends.base import PreparedJob
from gateway.domain.jobs import Job, JobState
from gateway.jobs.claim_queue import ClaimQueue
from gateway.jobs.memory_queue import MemoryQueue
from gateway.jobs.queue_port import Claim, JobQueue
from gateway.store.base import NewJob
from gateway.store.sqlite import SqliteStore

pytestmark = pytest.mark.anyio

T0 = datetime(2026, 11, 2, 9, 30, 0, tzinfo=UTC)
LEASE_S = 30.0
MAX_QUEUE_S = 600.0
LEASE = timedelta(seconds=LEASE_S)
MAX_QUEUE = timedelta(seconds=MAX_QUEUE_S)
US = timedelta(microseconds=1)
BACKEND = "aer"


class ManualClock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> None:
        self.now += delta


@dataclass
class Harness:
    kind: str
    store: SqliteStore
    clock: ManualClock
    queues: dict[str, JobQueue] = field(default_factory=dict)

    def queue(self, holder: str = "a") -> JobQueue:
        """The queue as `holder` sees it: for the claim queue, a queue of its own on the shared
        store; the in-memory queue is one process's, the same for every holder."""
        key = holder if self.kind == "claim" else "a"
        if key not in self.queues:
            if self.kind == "claim":
                self.queues[key] = ClaimQueue(
                    self.store, BACKEND, f"owner-{key}", MAX_QUEUE_S, LEASE_S, self.clock
                )
            else:
                self.queues[key] = MemoryQueue(BACKEND, MAX_QUEUE_S, LEASE_S, self.clock)
        return self.queues[key]

    @property
    def q(self) -> JobQueue:
        return self.queue("a")

    async def add(
        self,
        job_id: str,
        tenant: str = "acme",
        at: timedelta = timedelta(0),
        prepared: PreparedJob | None = None,
        holder: str = "a",
    ) -> Job:
        """Admits a job: stored QUEUED (created at T0 + at), then put on the queue."""
        job = await self.stored(job_id, tenant, at)
        await self.queue(holder).put(job, prepared)
        return job

    async def stored(self, job_id: str, tenant: str = "acme", at: timedelta = timedelta(0)) -> Job:
        """A job stored QUEUED (created at T0 + at, or just after the tenant's newest job)."""
        out = await self.store.create_job(
            NewJob(
                id=job_id,
                tenant=tenant,
                request_id="",
                request_hash=hashlib.sha256(job_id.encode()).digest(),
                backend=BACKEND,
                spec=b"spec",
                num_pubs=1,
                seed=1,
                created_at=T0 + at,
            )
        )
        return out.job

    async def claim(self, holder: str = "a") -> Claim:
        claim = await self.queue(holder).claim()
        assert claim is not None, "nothing to claim"
        return claim

    async def claim_ids(self, n: int, holder: str = "a") -> list[str]:
        return [(await self.claim(holder)).job.id for _ in range(n)]

    async def finish(self, claim: Claim, holder: str = "a") -> None:
        """The job ends (as the core ends it: in the store, then done)."""
        await self.store.finish_job(claim.job.id, JobState.SUCCEEDED, ended_at=self.clock())
        await self.queue(holder).done(claim)


@pytest.fixture(params=["memory", "claim"])
async def h(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> AsyncIterator[Harness]:
    store = SqliteStore(tmp_path / "gateway.db")
    await store.open()
    try:
        yield Harness(request.param, store, ManualClock(T0))
    finally:
        await store.close()


def prepared(tag: str) -> PreparedJob:
    return PreparedJob(payload=tag, memory_bytes=1, layouts=())


# -- order -------------------------------------------------------------------------------------


async def test_empty_queue(h: Harness) -> None:
    assert await h.q.claim() is None
    assert await h.q.depth() == 0
    assert await h.q.next_wakeup() is None
    assert await h.q.claims_by_tenant() == {}
    assert await h.q.waiting_by_tenant() == {}
    assert await h.q.take_expired() == []
    assert await h.q.position("nope", "acme") is None


async def test_fifo_within_a_tenant(h: Harness) -> None:
    # Put out of create order (a slow admission puts its job after a later one's): create
    # time decides. Equal clock readings commit a microsecond apart, ids against that order.
    created = [("j0", 0), ("j1b", 1), ("j1a", 1), ("j2", 2), ("j3", 3)]
    jobs = {job_id: await h.stored(job_id, at=at * US) for job_id, at in created}
    for job_id in ["j2", "j0", "j1a", "j1b", "j3"]:
        await h.queue("a").put(jobs[job_id], None)
    assert await h.q.depth() == 5
    assert await h.claim_ids(5) == ["j0", "j1b", "j1a", "j2", "j3"]
    assert await h.q.claim() is None
    assert await h.q.depth() == 0


async def test_a_backlog_does_not_starve_another_tenant(h: Harness) -> None:
    for i in range(50):
        await h.add(f"a{i}", "alice", at=i * US)
    await h.add("b0", "bob", at=100 * US)
    assert await h.claim_ids(2) == ["a0", "b0"]
    assert await h.q.depth() == 49


async def test_waiting_by_tenant_counts_unclaimed_jobs(h: Harness) -> None:
    for i in range(3):
        await h.add(f"a{i}", "alice", at=i * US)
    await h.add("b0", "bob", at=10 * US)
    assert await h.q.waiting_by_tenant() == {"alice": 3, "bob": 1}
    assert await h.claim_ids(2) == ["a0", "b0"]
    assert await h.q.waiting_by_tenant() == {"alice": 2}
    assert await h.q.remove("a1", "alice")
    assert await h.q.waiting_by_tenant() == {"alice": 1}


async def test_tenants_take_turns_while_they_hold_their_claims(h: Harness) -> None:
    arrivals = [("a0", "a"), ("a1", "a"), ("b0", "b"), ("c0", "c"), ("b1", "b")]
    for i, (job_id, tenant) in enumerate(arrivals):
        await h.add(job_id, tenant, at=i * US)
    assert await h.claim_ids(5) == ["a0", "b0", "c0", "a1", "b1"]
    assert await h.q.claims_by_tenant() == {"a": 2, "b": 2, "c": 1}


async def test_the_tenant_holding_fewer_claims_goes_first(h: Harness) -> None:
    for i in range(3):
        await h.add(f"a{i}", "alice", at=i * US)
    assert await h.claim_ids(2) == ["a0", "a1"]  # alone, Alice takes what she wants
    await h.add("b0", "bob", at=10 * US)
    await h.add("c0", "carol", at=11 * US)
    # Alice holds two claims: Bob's and Carol's later jobs go first.
    assert await h.claim_ids(2) == ["b0", "c0"]
    assert await h.q.claims_by_tenant() == {"alice": 2, "bob": 1, "carol": 1}
    assert await h.claim_ids(1) == ["a2"]


async def test_among_equals_the_tenant_served_least_recently_goes_first(h: Harness) -> None:
    for i in range(3):
        await h.add(f"a{i}", "alice", at=i * US)
    await h.finish(await h.claim())  # a0
    await h.finish(await h.claim())  # a1
    # Alice's jobs ended; Bob arrives. Both hold nothing: Bob, never served, goes first.
    await h.add("b0", "bob", at=10 * US)
    await h.add("b1", "bob", at=11 * US)
    b0 = await h.claim()
    assert b0.job.id == "b0"
    await h.finish(b0)
    # Both hold nothing again: now Alice was served less recently.
    assert await h.claim_ids(2) == ["a2", "b1"]


async def test_service_history_survives_an_emptied_queue(h: Harness) -> None:
    # Alice's jobs arrive one at a time, each claimed and done before the next; then Bob's.
    for i in range(2):
        await h.add(f"a{i}", "alice", at=i * US)
        await h.finish(await h.claim())
        assert await h.q.depth() == 0
    await h.add("a2", "alice", at=2 * US)
    await h.add("b0", "bob", at=3 * US)
    assert await h.claim_ids(2) == ["b0", "a2"]


# -- leases ------------------------------------------------------------------------------------


async def test_a_claim_not_renewed_is_claimed_again_after_its_lease(h: Harness) -> None:
    await h.add("job", prepared=prepared("p"))
    await h.add("other", at=1 * US)
    dead = await h.claim("a")
    assert dead.job.id == "job" and dead.lease_expires_at == T0 + LEASE
    # The holder dies: it never renews. Until the lease lapses its claim stands.
    h.clock.advance(LEASE - US)
    survivor = h.queue("b")
    assert await survivor.claims_by_tenant() == {"acme": 1}
    assert (await h.claim("b")).job.id == "other"
    assert await survivor.claim() is None
    h.clock.advance(US)
    # Lapsed: no longer a live claim; claimed again, by another holder where there is one.
    assert await survivor.claims_by_tenant() == {"acme": 1}
    again = await h.claim("b")
    assert again.job.id == "job" and again.job.state is JobState.QUEUED
    assert again.lease_expires_at == T0 + 2 * LEASE
    assert await survivor.claims_by_tenant() == {"acme": 2}
    # The dead holder's claim is lost: renewing it fails, ending it changes nothing.
    assert await h.queue("a").renew(dead) is None
    await h.queue("a").done(dead)
    assert await survivor.claims_by_tenant() == {"acme": 2}
    renewed = await survivor.renew(again)
    assert renewed is not None and renewed.lease_expires_at == h.clock() + LEASE


async def test_a_lapsed_claim_goes_before_waiting_jobs(h: Harness) -> None:
    await h.add("b0", "bob")
    await h.add("a0", "alice", at=1 * US)
    assert (await h.claim()).job.id == "b0"
    h.clock.advance(LEASE)
    # Alice holds nothing and was never served, yet Bob's lapsed job goes first.
    assert await h.claim_ids(2, holder="b") == ["b0", "a0"]


async def test_renew_keeps_the_claim_past_its_first_expiry(h: Harness) -> None:
    await h.add("job")
    claim = await h.claim()
    h.clock.advance(LEASE / 2)
    renewed = await h.q.renew(claim)
    assert renewed is not None and renewed.lease_expires_at == T0 + LEASE / 2 + LEASE
    assert renewed.job == claim.job and renewed.owner == claim.owner
    h.clock.advance(LEASE / 2)  # the first lease's expiry: the renewed one still holds
    assert await h.queue("b").claim() is None
    assert await h.q.claims_by_tenant() == {"acme": 1}
    # Any object of the claim stands for it: the one first handed out renews it too...
    h.clock.advance(LEASE / 4)
    again = await h.q.renew(claim)
    assert again is not None and again.lease_expires_at == h.clock() + LEASE
    # ... and ends it (as a holder that kept the claim it was given calls done()).
    await h.finish(claim)
    assert await h.q.claims_by_tenant() == {}
    assert await h.q.renew(again) is None
    h.clock.advance(2 * LEASE)
    assert await h.queue("b").claim() is None  # ended: never handed out again


async def test_renew_after_the_lease_lapsed_returns_none(h: Harness) -> None:
    await h.add("job")
    claim = await h.claim()
    h.clock.advance(LEASE)
    # Lost at its expiry even before anyone took it: the holder must stop.
    assert await h.q.renew(claim) is None
    assert (await h.claim("b")).job.id == "job"


async def test_done_ends_the_claim(h: Harness) -> None:
    await h.add("job")
    claim = await h.claim()
    await h.finish(claim)
    assert await h.q.claims_by_tenant() == {}
    assert await h.q.renew(claim) is None
    h.clock.advance(2 * LEASE)
    assert await h.q.claim() is None
    assert await h.q.next_wakeup() is None


async def test_release_keeps_the_jobs_place(h: Harness) -> None:
    for i in range(3):
        await h.add(f"a{i}", at=i * US, prepared=prepared(f"p{i}"))
    first = await h.claim()
    assert first.job.id == "a0"
    assert await h.q.position("a1", "acme") == 0
    await h.q.release(first)
    assert await h.q.claims_by_tenant() == {}
    assert await h.q.depth() == 3
    assert await h.q.position("a0", "acme") == 0
    assert await h.q.position("a1", "acme") == 1
    again = await h.claim()
    assert again.job.id == "a0"
    assert again.prepared is first.prepared  # given back here: not prepared again
    assert await h.q.renew(first) is None  # the released claim is over
    await h.q.done(first)  # and ending it again does not end the new one
    assert await h.q.claims_by_tenant() == {"acme": 1}


async def test_prepared_job_reaches_the_claim_of_the_process_that_put_it(h: Harness) -> None:
    p = prepared("mine")
    await h.add("job", prepared=p)
    await h.add("recovered", at=1 * US)  # queued again at start: nothing prepared
    mine = await h.claim()
    assert mine.job.id == "job" and mine.prepared is p
    other = await h.claim()
    assert other.job.id == "recovered" and other.prepared is None


async def test_remove_takes_a_waiting_job_out(h: Harness) -> None:
    await h.add("a0", "alice")
    await h.add("a1", "alice", at=1 * US)
    await h.add("b0", "bob", at=2 * US)
    assert not await h.q.remove("a0", "bob")  # another tenant's job
    assert not await h.q.remove("missing", "alice")
    claimed = await h.claim()
    assert claimed.job.id == "a0"
    assert not await h.q.remove("a0", "alice")  # claimed: not waiting
    assert await h.q.remove("a1", "alice")
    assert not await h.q.remove("a1", "alice")
    assert await h.q.depth() == 1
    assert await h.q.position("a1", "alice") is None
    # The core finishes it CANCELLED; it is never handed out, here or by another holder.
    await h.store.finish_job("a1", JobState.CANCELLED, ended_at=h.clock())
    assert await h.claim_ids(1, holder="b") == ["b0"]
    assert await h.queue("b").claim() is None
    assert await h.q.claim() is None


# -- queue deadlines ---------------------------------------------------------------------------


async def test_take_expired_at_the_deadline_and_not_before(h: Harness) -> None:
    await h.add("a0", "alice")
    await h.add("b0", "bob", at=timedelta(seconds=1))
    await h.add("a1", "alice", at=timedelta(seconds=2))
    await h.add("a2", "alice", at=timedelta(seconds=3))
    await h.add("claimed", "carol", at=-timedelta(seconds=5))
    assert (await h.claim()).job.id == "claimed"
    h.clock.advance(MAX_QUEUE - US)
    assert await h.q.take_expired() == []
    assert await h.q.depth() == 4
    h.clock.advance(US)  # a0's deadline
    assert [j.id for j in await h.q.take_expired()] == ["a0"]
    assert await h.q.take_expired() == []
    h.clock.advance(timedelta(seconds=5))
    expired = await h.q.take_expired()
    # Oldest first, across tenants; a tenant's whole expired run at once.
    assert [j.id for j in expired] == ["b0", "a1", "a2"]
    assert all(j.state is JobState.QUEUED for j in expired)
    assert await h.q.depth() == 0
    # Taken out: never handed out. (Carol's claim, never renewed, lapsed long ago.)
    assert (await h.claim()).job.id == "claimed"
    assert await h.q.claim() is None


async def test_a_job_requeued_after_a_restart_keeps_its_deadline(h: Harness) -> None:
    h.clock.advance(MAX_QUEUE)  # the gateway was down for a while
    await h.add("old")  # created at T0: its deadline is now
    assert await h.q.next_wakeup() == T0 + MAX_QUEUE
    assert [j.id for j in await h.q.take_expired()] == ["old"]


async def test_next_wakeup(h: Harness) -> None:
    assert await h.q.next_wakeup() is None
    await h.add("a0", at=timedelta(seconds=10))
    await h.add("a1", at=timedelta(seconds=20))
    assert await h.q.next_wakeup() == T0 + timedelta(seconds=10) + MAX_QUEUE
    claim = await h.claim()  # a0
    # The claim's lease ends before a1's deadline.
    assert await h.q.next_wakeup() == T0 + LEASE
    h.clock.advance(LEASE / 2)
    renewed = await h.q.renew(claim)
    assert renewed is not None
    assert await h.q.next_wakeup() == T0 + LEASE / 2 + LEASE
    h.clock.advance(LEASE)  # lapsed, not taken over: wake now (it is in the past or now)
    wake = await h.q.next_wakeup()
    assert wake is not None and wake <= h.clock()
    await h.claim("b")  # a0 again
    await h.finish(await h.claim("b"), holder="b")  # a1
    again = await h.queue("b").next_wakeup()
    assert again == h.clock() + LEASE  # the new holder's lease on a0
    assert await h.q.depth() == 0


# -- positions ---------------------------------------------------------------------------------


async def test_positions_in_a_single_tenants_line(h: Harness) -> None:
    for i in range(4):
        await h.add(f"j{i}", at=i * US)
    assert [await h.q.position(f"j{i}", "acme") for i in range(4)] == [0, 1, 2, 3]
    await h.claim()
    assert await h.q.position("j0", "acme") is None  # handed out: not waiting
    assert [await h.q.position(f"j{i}", "acme") for i in range(1, 4)] == [0, 1, 2]
    assert await h.q.position("j1", "other") is None  # asked under another tenant


async def test_round_robin_positions_and_asking_changes_nothing(h: Harness) -> None:
    # Claimed in the order a0 b0 c0 a1 b1.
    jobs = [("a0", "a"), ("a1", "a"), ("b0", "b"), ("c0", "c"), ("b1", "b")]
    for job_id, tenant in jobs:
        await h.add(job_id, tenant)
    expected = {"a0": 0, "b0": 1, "c0": 2, "a1": 3, "b1": 4}
    for _ in range(2):
        assert {j: await h.q.position(j, t) for j, t in jobs} == expected
    assert await h.q.depth() == 5
    assert await h.q.position("a0", "b") is None  # jobs wait under their own tenant
    assert await h.claim_ids(5) == ["a0", "b0", "c0", "a1", "b1"]


async def test_positions_follow_fair_share_and_predict_the_claim_order(h: Harness) -> None:
    # History: Alice then Bob served; both still hold their claims.
    await h.add("a-old", "alice")
    await h.add("b-old", "bob", at=1 * US)
    assert await h.claim_ids(2) == ["a-old", "b-old"]
    arrivals = [("a", "alice"), ("a", "alice"), ("c", "carol"), ("b", "bob"), ("a", "alice")]
    for i, (prefix, tenant) in enumerate(arrivals):
        await h.add(f"{prefix}{i}", tenant, at=(10 + i) * US)
    jobs = [(f"{prefix}{i}", tenant) for i, (prefix, tenant) in enumerate(arrivals)]
    predicted = {job_id: await h.q.position(job_id, tenant) for job_id, tenant in jobs}
    # Carol holds nothing: first; then Alice and Bob hold one each, Alice served earlier...
    order = await h.claim_ids(len(jobs))
    assert order == ["c2", "a0", "b3", "a1", "a4"]
    assert predicted == {job_id: order.index(job_id) for job_id, _ in jobs}


# -- change notification -----------------------------------------------------------------------


async def test_wait_changed_wakes_on_put(h: Harness) -> None:
    # A change made while nobody waits is not lost: the next wait returns at once.
    await h.add("first")
    with anyio.fail_after(5):
        await h.q.wait_changed()
    waiter = asyncio.ensure_future(h.q.wait_changed())
    for _ in range(10):
        await asyncio.sleep(0)
    assert not waiter.done()  # nothing changed since the last return
    await h.add("second", at=1 * US)
    with anyio.fail_after(5):
        await waiter


async def test_wait_changed_wakes_on_release_and_remove(h: Harness) -> None:
    await h.add("a0")
    await h.add("a1", at=1 * US)
    claim = await h.claim()
    with anyio.fail_after(5):
        await h.q.wait_changed()  # the puts
    waiter = asyncio.ensure_future(h.q.wait_changed())
    await asyncio.sleep(0)
    assert not waiter.done()
    await h.q.release(claim)
    with anyio.fail_after(5):
        await waiter
    waiter = asyncio.ensure_future(h.q.wait_changed())
    await asyncio.sleep(0)
    assert not waiter.done()
    assert await h.q.remove("a1", "acme")
    with anyio.fail_after(5):
        await waiter


async def test_claim_queue_forgets_prepared_jobs_other_processes_took(
    tmp_path: pathlib.Path,
) -> None:
    # A process whose callers use Run never asks for a position, the only read that pruned the
    # prepared jobs it kept for jobs another process then claimed: the map grew with every job.
    store = SqliteStore(tmp_path / "gateway.db")
    await store.open()
    try:
        h = Harness("claim", store, ManualClock(T0))
        for i in range(1000):
            await h.add(f"j{i}", prepared=prepared(f"p{i}"), holder="a")
            await h.finish(await h.claim("b"), holder="b")  # another process runs it
        kept = len(h.queue("a")._prepared)  # type: ignore[attr-defined]
        assert kept <= 256, f"{kept} prepared jobs kept for jobs that left the queue"
        # Its own waiting jobs keep theirs.
        await h.add("mine", prepared=prepared("mine"), holder="a")
        mine = (await h.claim("a")).prepared
        assert mine is not None and mine.payload == "mine"
    finally:
        await store.close()


async def test_a_lapsed_running_job_given_back_is_handed_out_again(h: Harness) -> None:
    # A RUNNING job whose holder died is claimed again (lapsed), then given back unstarted (a
    # gateway draining): it must be handed out once more, not left RUNNING with no holder.
    await h.add("job")
    await h.claim("a")
    assert await h.store.mark_running("job", h.clock()) is not None
    h.clock.advance(LEASE)
    again = await h.claim("b")
    assert again.job.id == "job"
    await h.queue("b").release(again)
    third = await h.claim("b")
    assert third.job.id == "job"


async def test_lapsed_claims_come_back_oldest_first(h: Harness) -> None:
    # Two holders die; their jobs must return in (create time, id) order, as waiting jobs do,
    # not in the order the claims were made or lapsed.
    await h.add("old")
    await h.add("new", at=1 * US)
    first = await h.claim("a")
    second = await h.claim("a")
    assert (first.job.id, second.job.id) == ("old", "new")
    h.clock.advance(LEASE)
    assert await h.claim_ids(2, holder="b") == ["old", "new"]


async def test_putting_a_claimed_job_again_never_hands_it_out_twice(h: Harness) -> None:
    # A put of a job already claimed (the scheduler puts back what it took; recovery queues
    # again) must not make it waiting too, or a second holder would run it while the first does.
    job = await h.add("job")
    claim = await h.claim()
    await h.q.put(job, None)
    assert await h.q.depth() == 0
    assert await h.queue("b").claim() is None
    assert await h.q.renew(claim) is not None


async def test_wait_changed_wakes_on_done(h: Harness) -> None:
    # An ended claim frees a slot of its tenant's share: the scheduler must look again.
    await h.add("job")
    claim = await h.claim()
    with anyio.fail_after(5):
        await h.q.wait_changed()  # the put
    waiter = asyncio.ensure_future(h.q.wait_changed())
    await asyncio.sleep(0)
    assert not waiter.done()
    await h.finish(claim)
    with anyio.fail_after(5):
        await waiter


async def test_next_wakeup_is_the_earliest_of_several_leases(h: Harness) -> None:
    # The scheduler sleeps until next_wakeup: the latest lease instead of the earliest would
    # leave a dead holder's job unclaimed until the others lapse too.
    await h.add("a0")
    await h.add("a1", at=1 * US)
    first = await h.claim()
    h.clock.advance(LEASE / 2)
    await h.claim()
    assert await h.q.next_wakeup() == first.lease_expires_at == T0 + LEASE
