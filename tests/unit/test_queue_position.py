"""FairQueue.position: the number of jobs pop() hands out before a job, replayed on a copy."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime

from hypothesis import given, settings
from hypothesis import strategies as st

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


def _fill(queue: FairQueue, arrivals: list[str]) -> list[tuple[str, str]]:
    jobs = []
    for i, tenant in enumerate(arrivals):
        queue.put(_item(f"j{i}", tenant))
        jobs.append((f"j{i}", tenant))
    return jobs


def test_single_tenant_position_is_the_index() -> None:
    queue = FairQueue()
    _fill(queue, ["a"] * 5)
    assert [queue.position(f"j{i}", "a") for i in range(5)] == [0, 1, 2, 3, 4]
    assert queue.pop() is not None
    assert [queue.position(f"j{i}", "a") for i in range(1, 5)] == [0, 1, 2, 3]
    assert queue.position("j0", "a") is None  # handed out: not queued any more


def test_unknown_job_or_wrong_tenant_has_no_position() -> None:
    queue = FairQueue()
    _fill(queue, ["a", "b"])
    assert queue.position("nope", "a") is None
    assert queue.position("j0", "b") is None  # jobs are queued under their own tenant
    assert queue.position("j0", "c") is None


def test_round_robin_positions() -> None:
    queue = FairQueue()
    # Pops go a0 b0 c0 a1 b1.
    for job_id, tenant in [("a0", "a"), ("a1", "a"), ("b0", "b"), ("c0", "c"), ("b1", "b")]:
        queue.put(_item(job_id, tenant))
    got = {j: queue.position(j, j[0]) for j in ["a0", "a1", "b0", "c0", "b1"]}
    assert got == {"a0": 0, "b0": 1, "c0": 2, "a1": 3, "b1": 4}


def test_fair_share_lets_a_tenant_running_less_go_first() -> None:
    queue = FairQueue()
    _fill(queue, ["a", "a", "b"])  # j0, j1 of a; j2 of b
    # a already runs two jobs, b none: b's job goes first, then a's two.
    running = Counter({"a": 2})
    assert queue.position("j2", "b", running) == 0
    assert queue.position("j0", "a", running) == 1
    assert queue.position("j1", "a", running) == 2
    # Without running counts: plain turns.
    assert queue.position("j2", "b") == 1


def test_position_does_not_change_the_queue() -> None:
    queue = FairQueue()
    _fill(queue, ["a", "b", "a", "c", "b"])
    running = Counter({"b": 1})
    before = [queue.position(f"j{i}", t, running) for i, t in enumerate("abacb")]
    again = [queue.position(f"j{i}", t, running) for i, t in enumerate("abacb")]
    assert before == again
    assert len(queue) == 5
    assert sorted(p for p in before if p is not None) == [0, 1, 2, 3, 4]


def _pop_order(queue: FairQueue, running: Counter[str]) -> list[str]:
    """Pops everything, counting each popped job as running for its tenant (the model
    position() documents: nothing finishes meanwhile)."""
    order = []
    while (item := queue.pop(running)) is not None:
        order.append(item.job.id)
        running[item.job.tenant] += 1
    return order


@settings(max_examples=400, deadline=None)
@given(
    history=st.lists(st.sampled_from("abcd"), max_size=12),
    arrivals=st.lists(st.sampled_from("abcd"), min_size=1, max_size=30),
    running=st.dictionaries(st.sampled_from("abcd"), st.integers(0, 3)),
    use_running=st.booleans(),
)
def test_position_predicts_pop_order(
    history: list[str], arrivals: list[str], running: dict[str, int], use_running: bool
) -> None:
    queue = FairQueue()
    # Earlier pops give tenants a serving history, which breaks ties.
    for i, tenant in enumerate(history):
        queue.put(_item(f"h{i}", tenant))
    while queue.pop(Counter()) is not None:
        pass
    jobs = _fill(queue, arrivals)
    counts = Counter(running) if use_running else None
    predicted = {job_id: queue.position(job_id, tenant, counts) for job_id, tenant in jobs}
    if use_running:
        order = _pop_order(queue, Counter(running))
    else:
        order = []
        while (item := queue.pop()) is not None:
            order.append(item.job.id)
    assert predicted == {job_id: order.index(job_id) for job_id, _ in jobs}
