from __future__ import annotations

from datetime import UTC, datetime

import pytest

from gateway.domain.jobs import Job, JobState
from gateway.jobs.queue import FairQueue, QueuedJob


def _item(job_id: str, tenant: str) -> QueuedJob:
    job = Job(
        id=job_id,
        tenant=tenant,
        request_id="",
        backend="aer",
        state=JobState.QUEUED,
        created_at=datetime.now(UTC),
        num_pubs=1,
        seed=0,
    )
    return QueuedJob(job, None)


def _pop(queue: FairQueue) -> QueuedJob:
    item = queue.pop()
    assert item is not None
    return item


@pytest.mark.anyio
async def test_one_tenants_backlog_does_not_starve_another() -> None:
    queue = FairQueue()
    for i in range(1000):
        queue.put(_item(f"a{i}", "alice"))
    queue.put(_item("b0", "bob"))
    first_two = [_pop(queue).job.id for _ in range(2)]
    assert first_two == ["a0", "b0"]
    assert len(queue) == 999


@pytest.mark.anyio
async def test_round_robin_and_fifo_within_a_tenant() -> None:
    queue = FairQueue()
    for job_id, tenant in [("a0", "a"), ("a1", "a"), ("b0", "b"), ("c0", "c"), ("b1", "b")]:
        queue.put(_item(job_id, tenant))
    order = [_pop(queue).job.id for _ in range(5)]
    assert order == ["a0", "b0", "c0", "a1", "b1"]
    assert len(queue) == 0


@pytest.mark.anyio
async def test_remove() -> None:
    queue = FairQueue()
    queue.put(_item("a0", "a"))
    queue.put(_item("b0", "b"))
    assert queue.remove("a0", "b") is None  # wrong tenant
    removed = queue.remove("a0", "a")
    assert removed is not None and removed.job.id == "a0"
    assert queue.remove("a0", "a") is None and len(queue) == 1
    assert _pop(queue).job.id == "b0"


@pytest.mark.anyio
async def test_wait_nonempty_returns_once_a_job_arrives() -> None:
    import anyio

    queue = FairQueue()
    assert queue.pop() is None
    async with anyio.create_task_group() as tg:
        tg.start_soon(queue.wait_nonempty)
        queue.put(_item("a0", "a"))
    assert _pop(queue).job.id == "a0"


def test_expired_takes_only_jobs_past_their_deadline() -> None:
    queue = FairQueue()
    for job_id, tenant, deadline in [("a0", "a", 1.0), ("a1", "a", 5.0), ("b0", "b", 2.0)]:
        item = _item(job_id, tenant)
        item.deadline = deadline
        queue.put(item)
    assert queue.earliest_deadline() == 1.0
    assert [q.job.id for q in queue.expired(2.5)] == ["a0", "b0"]
    assert len(queue) == 1 and queue.earliest_deadline() == 5.0
    assert queue.expired(3.0) == []


@pytest.mark.anyio
async def test_the_tenant_running_the_fewest_jobs_goes_first() -> None:
    queue = FairQueue()
    for i in range(3):
        queue.put(_item(f"a{i}", "alice"))
    queue.put(_item("b0", "bob"))
    queue.put(_item("c0", "carol"))
    # Alice already holds both workers: the others' jobs go before her next one.
    running = {"alice": 2}
    order = []
    while (item := queue.pop(running)) is not None:
        order.append(item.job.id)
        tenant = item.job.tenant
        running[tenant] = running.get(tenant, 0) + 1
    assert order[:2] == ["b0", "c0"]
    assert order[2:] == ["a0", "a1", "a2"]


@pytest.mark.anyio
async def test_among_equals_the_tenant_served_least_recently_goes_first() -> None:
    queue = FairQueue()
    for i in range(3):
        queue.put(_item(f"a{i}", "alice"))
    assert _pop_with(queue, {"alice": 0}) == "a0"
    assert _pop_with(queue, {"alice": 1}) == "a1"
    # Alice's jobs ended, then Bob arrives (after her in turn order): both run nothing now,
    # and Bob, never served, goes first.
    queue.put(_item("b0", "bob"))
    assert _pop_with(queue, {"alice": 0, "bob": 0}) == "b0"
    assert _pop_with(queue, {"alice": 0, "bob": 1}) == "a2"


def _pop_with(queue: FairQueue, running: dict[str, int]) -> str:
    item = queue.pop(running)
    assert item is not None
    return item.job.id


@pytest.mark.anyio
async def test_service_history_survives_an_empty_queue() -> None:
    # Alice's jobs arrive one at a time (each is taken before the next arrives), then Bob's:
    # Bob, never served, still goes before Alice's next job.
    queue = FairQueue()
    queue.put(_item("a0", "alice"))
    assert _pop_with(queue, {}) == "a0"
    queue.put(_item("a1", "alice"))
    assert _pop_with(queue, {"alice": 1}) == "a1"
    queue.put(_item("a2", "alice"))
    queue.put(_item("b0", "bob"))
    assert _pop_with(queue, {}) == "b0"
