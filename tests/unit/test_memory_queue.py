"""MemoryQueue beyond the queue contract (tests/contract/test_queue_contract.py): its position
estimate predicts its claim order on random histories (moved from the FairQueue tests)."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.domain.jobs import Job, JobState
from gateway.jobs.memory_queue import MemoryQueue
from gateway.jobs.queue_port import Claim

T0 = datetime(2026, 11, 2, 9, 30, 0, tzinfo=UTC)
T = TypeVar("T")


class _World:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.queue = MemoryQueue("aer", 600.0, 30.0, lambda: T0)
        self.created = 0

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    def put(self, job_id: str, tenant: str) -> None:
        self.created += 1
        job = Job(
            id=job_id,
            tenant=tenant,
            request_id="",
            backend="aer",
            state=JobState.QUEUED,
            created_at=T0 + timedelta(microseconds=self.created),
            num_pubs=1,
            seed=0,
        )
        self.run(self.queue.put(job, None))

    def claim(self) -> str:
        claim = self.run(self.queue.claim())
        assert claim is not None
        return claim.job.id


@settings(max_examples=300, deadline=None)
@given(
    history=st.lists(st.sampled_from("abcd"), max_size=12),
    held=st.dictionaries(st.sampled_from("abcd"), st.integers(0, 3)),
    arrivals=st.lists(st.sampled_from("abcd"), min_size=1, max_size=30),
)
def test_position_predicts_the_claim_order(
    history: list[str], held: dict[str, int], arrivals: list[str]
) -> None:
    world = _World()
    try:
        # Earlier claims, ended, give tenants a service history that breaks ties.
        for i, tenant in enumerate(history):
            world.put(f"h{i}", tenant)
            claim = world.run(world.queue.claim())
            assert claim is not None
            world.run(world.queue.done(claim))
        # Claims still held: the jobs each tenant is running.
        for tenant, n in held.items():
            for i in range(n):
                world.put(f"r{tenant}{i}", tenant)
                world.claim()
        assert world.run(world.queue.claims_by_tenant()) == {t: n for t, n in held.items() if n}
        jobs = []
        for i, tenant in enumerate(arrivals):
            world.put(f"j{i}", tenant)
            jobs.append((f"j{i}", tenant))
        predicted = {j: world.run(world.queue.position(j, t)) for j, t in jobs}
        # Asking changes nothing.
        assert predicted == {j: world.run(world.queue.position(j, t)) for j, t in jobs}
        order = [world.claim() for _ in jobs]
        assert world.run(world.queue.claim()) is None
        assert predicted == {job_id: order.index(job_id) for job_id, _ in jobs}
    finally:
        world.loop.close()


def _job(job_id: str, created: datetime, session: str = "") -> Job:
    return Job(
        id=job_id,
        tenant="acme",
        request_id="",
        backend="aer",
        state=JobState.QUEUED,
        created_at=created,
        num_pubs=1,
        seed=0,
        session=session,
    )


def test_a_session_job_queue_time_counts_from_when_it_was_let_in() -> None:
    # A session's job waited in its session's line (bounded by the session's TTLs) before it
    # was put here: it must not expire the moment its turn comes.
    now = [T0]
    queue = MemoryQueue("aer", 600.0, 30.0, lambda: now[0])
    loop = asyncio.new_event_loop()
    try:
        now[0] = T0 + timedelta(seconds=900)
        loop.run_until_complete(queue.put(_job("s0", T0, session="sess"), None))
        assert loop.run_until_complete(queue.take_expired()) == []
        now[0] = T0 + timedelta(seconds=1500)
        assert [j.id for j in loop.run_until_complete(queue.take_expired())] == ["s0"]
    finally:
        loop.close()


def test_a_job_behind_a_late_session_job_still_expires() -> None:
    # s0 (a session's job, let in late) is first in the line but expires last: the plain job
    # behind it must still expire at its own deadline.
    now = [T0 + timedelta(seconds=1)]
    queue = MemoryQueue("aer", 600.0, 30.0, lambda: now[0])
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(queue.put(_job("n1", T0 + timedelta(seconds=1)), None))
        now[0] = T0 + timedelta(seconds=300)
        loop.run_until_complete(queue.put(_job("s0", T0, session="sess"), None))
        now[0] = T0 + timedelta(seconds=601)
        assert [j.id for j in loop.run_until_complete(queue.take_expired())] == ["n1"]
        assert loop.run_until_complete(queue.depth()) == 1
    finally:
        loop.close()


def test_giving_back_a_foreign_claim_of_a_waiting_job_queues_it_once() -> None:
    # A claim made outside this queue (recovery at start) is given back only when its job is
    # waiting nowhere: were the job queued again here as well, its line would hold it twice
    # and two holders would be handed one job.
    queue = MemoryQueue("aer", 600.0, 30.0, lambda: T0)
    loop = asyncio.new_event_loop()
    try:
        job = _job("j0", T0)
        loop.run_until_complete(queue.put(job, None))
        foreign = Claim(job, None, "recovered", T0 + timedelta(seconds=30))
        loop.run_until_complete(queue.release(foreign))
        assert loop.run_until_complete(queue.depth()) == 1
        assert loop.run_until_complete(queue.waiting_by_tenant()) == {job.tenant: 1}
        first = loop.run_until_complete(queue.claim())
        assert first is not None and first.job.id == "j0"
        assert loop.run_until_complete(queue.claim()) is None
    finally:
        loop.close()
