"""A per-backend queue that is fair across tenants: FIFO within a tenant; the next job goes to the
waiting tenant with the fewest running jobs, in turn among equals."""

from __future__ import annotations

import asyncio
from collections import Counter, deque
from collections.abc import Mapping
from dataclasses import dataclass

from gateway.backends.base import PreparedJob
from gateway.domain.jobs import Job


@dataclass(eq=False)
class QueuedJob:
    job: Job
    # None after a restart: the job is prepared again from its stored spec when dispatched.
    prepared: PreparedJob | None
    # time.monotonic() after which the job fails instead of waiting longer.
    deadline: float = float("inf")


class FairQueue:
    """One FIFO per tenant; get() serves tenants in turn, so no tenant starves another."""

    def __init__(self) -> None:
        self._by_tenant: dict[str, deque[QueuedJob]] = {}
        self._turns: deque[str] = deque()
        self._size = 0
        self._nonempty = asyncio.Event()
        # When each tenant was last served (a pop counter), kept while its queue empties and
        # fills again: among tenants running equally many jobs, the one served least recently
        # goes first. One entry per tenant that ever queued (tenants come from configuration).
        self._served: dict[str, int] = {}
        self._pops = 0

    def __len__(self) -> int:
        return self._size

    def put(self, item: QueuedJob) -> None:
        tenant = item.job.tenant
        if tenant not in self._by_tenant:
            self._by_tenant[tenant] = deque()
            self._turns.append(tenant)
        self._by_tenant[tenant].append(item)
        self._size += 1
        self._nonempty.set()

    def remove(self, job_id: str, tenant: str) -> QueuedJob | None:
        dq = self._by_tenant.get(tenant)
        if dq is None:
            return None
        for item in dq:
            if item.job.id == job_id:
                dq.remove(item)
                self._size -= 1
                if not dq:
                    self._drop_tenant(tenant)
                return item
        return None

    def _drop_tenant(self, tenant: str) -> None:
        del self._by_tenant[tenant]
        self._turns.remove(tenant)
        if not self._size:
            self._nonempty.clear()

    def expired(self, now: float) -> list[QueuedJob]:
        """Removes and returns the jobs whose deadline has passed. Deadlines grow in arrival
        order, so only each tenant's head needs looking at."""
        out = []
        for tenant in list(self._by_tenant):
            dq = self._by_tenant[tenant]
            while dq and dq[0].deadline <= now:
                out.append(dq.popleft())
                self._size -= 1
            if not dq:
                self._drop_tenant(tenant)
        return out

    def earliest_deadline(self) -> float | None:
        return min((dq[0].deadline for dq in self._by_tenant.values()), default=None)

    async def wait_nonempty(self) -> None:
        while not self._size:
            await self._nonempty.wait()

    def pop(self, running: Mapping[str, int] | None = None) -> QueuedJob | None:
        """The next job, or None if the queue is empty.

        Args:
            running: Jobs each tenant is running now. Among the waiting tenants, the one
                running the fewest goes first (so under contention none holds more than its
                share of the backend's workers); among equals, the one served least recently.
        """
        if not self._size:
            return None
        tenant = _take_turn(self._turns, running, self._served)
        dq = self._by_tenant[tenant]
        item = dq.popleft()
        self._size -= 1
        self._pops += 1
        self._served[tenant] = self._pops
        if dq:
            self._turns.append(tenant)
        else:
            del self._by_tenant[tenant]
            if not self._size:
                self._nonempty.clear()
        return item

    def position(
        self, job_id: str, tenant: str, running: Mapping[str, int] | None = None
    ) -> int | None:
        """How many jobs pop() would hand out before this one (0: it is next), or None when
        the job is not in the queue.

        The answer replays pop() on a copy of the queue's state, counting every job handed out
        as running for its tenant and no running job as finishing meanwhile. Fair share makes
        it an estimate, not a promise: a tenant that submits later, or whose running jobs
        finish, can be served first, so a job's position can also grow. O(jobs ahead x waiting
        tenants); O(1) tenants in practice, and the queue is bounded (max_queued_jobs).

        Args:
            job_id: The job.
            tenant: Its tenant (jobs are queued per tenant).
            running: As for pop(): jobs each tenant is running now.
        """
        dq = self._by_tenant.get(tenant)
        if dq is None:
            return None
        index = next((i for i, item in enumerate(dq) if item.job.id == job_id), None)
        if index is None or len(self._by_tenant) == 1:
            return index
        left = {t: len(q) for t, q in self._by_tenant.items()}
        turns = deque(self._turns)
        served = dict(self._served)
        counts = None if running is None else Counter(running)
        pops = self._pops
        ahead = 0
        while True:
            chosen = _take_turn(turns, counts, served)
            if chosen == tenant:
                if index == 0:
                    return ahead
                index -= 1
            ahead += 1
            pops += 1
            served[chosen] = pops
            if counts is not None:
                counts[chosen] += 1
            left[chosen] -= 1
            if left[chosen]:
                turns.append(chosen)


def _take_turn(
    turns: deque[str], running: Mapping[str, int] | None, served: Mapping[str, int]
) -> str:
    """Removes and returns the tenant served next: without running counts, the next in turn;
    with them, the one running the fewest jobs, then the one served least recently (the one
    rule for pop() and position(), so they cannot disagree)."""
    if running is None:
        return turns.popleft()
    tenant = min(turns, key=lambda t: (running.get(t, 0), served.get(t, 0)))
    turns.remove(tenant)
    return tenant
