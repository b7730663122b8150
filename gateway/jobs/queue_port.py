"""The queue port: where the scheduler claims work from.

One queue per backend. Two implementations pass the same contract suite
(tests/contract/test_queue_contract.py):

- gateway.jobs.memory_queue.MemoryQueue: the fair queue in this process's memory; the store
  keeps every job durably, the queue only orders them. The embedded default.
- gateway.jobs.claim_queue.ClaimQueue: the store is the queue; claims are leases written to it,
  so several gateway replicas can share one store's queue (PostgreSQL replicas use it).

Both are fair across tenants (the next job goes to the waiting tenant holding the fewest claims,
then to the one served least recently, FIFO within a tenant) and lease every claim: a holder
renews its lease while the job runs, and a claim whose holder died (its lease expired) is handed
out again. Time comes from an injected wall clock, so tests can move it.

A job's queue deadline is its create time plus the backend's max_queue_time_s (so a job
re-queued after a restart keeps its original deadline); `take_expired` hands out the unclaimed
jobs past it, and the caller reports each one it has ended to `expired_ended`. Both
implementations are constructed with (backend name, max_queue_time_s,
lease_s, clock) plus what they are built on (the store and a holder id for ClaimQueue).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from gateway.backends.base import PreparedJob
from gateway.domain.jobs import Job

Clock = Callable[[], datetime]


@dataclass(frozen=True, eq=False)
class Claim:
    """A job handed to one holder until `lease_expires_at` (renewed while it runs).

    Attributes:
        job: The job as the queue knows it. QUEUED normally; a job whose previous holder's
            lease expired comes back in the state that holder left it (RUNNING, SUBMITTING,
            CANCELLING), with its stored remote id, for the scheduler to re-run or re-attach.
        prepared: The prepared job when this process admitted it and still has it; None means
            prepare again from the stored spec (a compile cache hit when it was compiled here).
        owner: Who holds the claim (the scheduler's holder id).
        lease_expires_at: When the claim lapses unless renewed.
    """

    job: Job
    prepared: PreparedJob | None
    owner: str
    lease_expires_at: datetime


class JobQueue(Protocol):
    """Queued jobs of one backend, claimed under leases."""

    # True when the queue orders jobs itself (in memory) and may be given a job whose QUEUED
    # commit is still in flight: admission then queues it at once, so its run overlaps that
    # commit (the store applies writes in order, so RUNNING and the final state follow it).
    # False when the store is the queue: a job is claimable only once committed.
    queues_before_commit: bool

    async def put(self, job: Job, prepared: PreparedJob | None) -> None:
        """Queues a job the store already holds as QUEUED (admission, or recovery at start)."""

    def adopt(self, job: Job) -> None:
        """A job recovered in flight at start (a provider job re-attached) runs outside the
        queue, under a claim that `done` ends: jobs that must follow it (its session's next
        ones) wait for that."""

    async def claim(self) -> Claim | None:
        """The next job, fair across tenants, leased to this queue's holder; None when there
        is nothing to claim now. Expired claims of dead holders are claimable again."""

    async def renew(self, claim: Claim) -> Claim | None:
        """Extends the lease; None if the claim was lost (expired and taken by another). A
        shared queue's renewed claim carries CANCELLING when another process accepted a
        CancelJob for the job: its holder stops it."""

    async def done(self, claim: Claim) -> None:
        """The claimed job reached a final state: the claim ends."""

    async def release(self, claim: Claim, job: Job | None = None) -> None:
        """Gives a claimed job back unstarted (drain, a breaker that said no, a provider that
        refused the backend's credentials): it keeps its place at the head of its tenant's
        line. `job`: the job as it is now, when it changed since it was claimed (QUEUED again
        after SUBMITTING)."""

    async def remove(self, job_id: str, tenant: str) -> bool:
        """Takes a queued, unclaimed job out (CancelJob); False if it is not waiting here."""

    async def take_expired(self) -> list[Job]:
        """Removes and returns the unclaimed jobs that waited past the queue-time limit."""

    async def expired_ended(self, job: Job) -> None:
        """A job `take_expired` returned has been ended by the caller (its final state
        committed): what waits for its end may go on (its session's next job)."""

    async def next_wakeup(self, *, leases: bool = True) -> datetime | None:
        """The earliest time something may become claimable or expire without a put (a
        queue deadline, a lease that lapses), for the scheduler's timer; None if nothing.
        With leases=False, queue deadlines only: a scheduler that could not claim anyway (no
        free slot, no breaker permit) would otherwise spin on a lapsed lease, whose expiry
        stays in the past until someone claims it."""

    async def wait_changed(self) -> None:
        """Returns when the queue may have changed (a put, a release, a removal): the
        scheduler waits on this instead of polling."""

    async def depth(self) -> int:
        """Jobs waiting (not claimed)."""

    async def waiting_by_tenant(self) -> dict[str, int]:
        """Jobs waiting (not claimed) per tenant; tenants with none are absent (admission's
        fair share of the queue, gateway.domain.queue_share)."""

    async def position(self, job_id: str, tenant: str) -> int | None:
        """An estimate of how many jobs are handed out before this one (0: next); None when
        it is not waiting here."""

    async def claims_by_tenant(self) -> dict[str, int]:
        """Claims held now per tenant (the jobs each tenant is running)."""
