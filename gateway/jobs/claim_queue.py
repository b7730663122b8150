"""The claim queue port: the store is the queue.

Claims are leases written to the store (gateway.store.base.Store.claim_next and friends), so
several gateway processes on one store share one queue per backend: each claims under its own
holder id, and a claim whose holder died (stopped renewing) lapses and is handed to whoever
claims next, in the state the dead holder left it (remote id included, to re-attach).
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
from datetime import datetime, timedelta

from gateway.backends.base import PreparedJob
from gateway.domain import queue_order
from gateway.domain.jobs import Job, JobState
from gateway.jobs.claim_book import ClaimBook
from gateway.jobs.queue_port import Claim, Clock
from gateway.store.base import Store

# put() prunes the prepared jobs other processes took once it holds this many (then twice as
# many as it kept).
_PRUNE_MIN = 256


class ClaimQueue:
    """The JobQueue port on a Store's claim leases.

    put() writes nothing (admission already stored the job QUEUED): it remembers the prepared
    job, so a claim in this process need not prepare it again, and wakes local waiters.
    Ordering, fairness, deadlines and leases are the store's (see claim_next); a lease is live
    while now < its expiry and lost to its holder from then on, even before another takes it.

    wait_changed() is woken by this process's own puts, releases, removals and ended claims,
    and by `notify_changed` when another process queued or claimed a job (its signals:
    gateway.jobs.peer_events); a signal lost is made up for at next_wakeup() (a deadline or
    lease expiry) or this process's next local event.

    Args:
        store: The store; it holds the queue.
        backend: The backend (the jobs' placement) this queue serves.
        owner: This process's holder id, unique among the processes sharing the store.
        max_queue_time_s: A job waits at most this long after its create time.
        lease_s: How long a claim lasts unless renewed.
        clock: The wall clock (UTC, aware), injected so tests can move it. Processes sharing
            a store compare leases on their own clocks: keep them synchronised (NTP) well
            within lease_s.
    """

    queues_before_commit = False

    def __init__(
        self,
        store: Store,
        backend: str,
        owner: str,
        max_queue_time_s: float,
        lease_s: float,
        clock: Clock,
    ) -> None:
        self.backend = backend
        self.owner = owner
        self._store = store
        self._max_queue = timedelta(seconds=max_queue_time_s)
        self._lease = timedelta(seconds=lease_s)
        self._clock = clock
        # Prepared jobs put here and not claimed yet: job id -> (put number, prepared).
        # Entries of jobs that left the queue elsewhere (claimed or cancelled by another
        # process) are dropped whenever the waiting list is read (position), and by put()
        # each time the map has doubled since (a process whose callers use Run never asks
        # for a position).
        self._prepared: dict[str, tuple[int, PreparedJob]] = {}
        self._prune_at = _PRUNE_MIN
        self._puts = itertools.count(1)
        # The claims this queue handed out and has not seen end, so that a claim of this
        # process that lapsed and was claimed again here is lost to its first holder.
        self._held = ClaimBook()
        self._changed = asyncio.Event()

    # ------------------------------------------------------------------ the port

    async def put(self, job: Job, prepared: PreparedJob | None) -> None:
        """Remembers the prepared job for a claim in this process and wakes local waiters."""
        if prepared is not None:
            self._prepared[job.id] = (next(self._puts), prepared)
            if len(self._prepared) >= self._prune_at:
                await self._waiting()
                self._prune_at = max(_PRUNE_MIN, 2 * len(self._prepared))
        self._changed.set()

    def adopt(self, job: Job) -> None:
        """Nothing to do: a shared store recovers nothing at start (claims lapse instead)."""

    async def claim(self) -> Claim | None:
        """store.claim_next under this queue's owner: a lapsed claim's job first, else the
        fair choice; None when nothing is claimable now."""
        now = self._clock()
        expires = now + self._lease
        job = await self._store.claim_next(self.backend, self.owner, expires, now)
        if job is None:
            return None
        kept = self._prepared.pop(job.id, None)
        prepared = kept[1] if kept is not None else None
        lapsed = self._held.current(job.id)
        if prepared is None and lapsed is not None:
            # This process's own claim lapsed: its holder's prepared job is still good.
            prepared = lapsed.prepared
        claim = Claim(job, prepared, self.owner, expires)
        self._held.issue(claim)
        return claim

    async def renew(self, claim: Claim) -> Claim | None:
        """The claim with its lease extended from now; None when it is lost (lapsed, ended,
        or claimed again, here or elsewhere). Its job is CANCELLING once another process has
        accepted a CancelJob for it. Any object of the claim (as handed out, or as last
        renewed) may be passed."""
        job_id = claim.job.id
        if not self._held.holds(claim):
            return None
        now = self._clock()
        expires = now + self._lease
        state = await self._store.renew_claim(job_id, self.owner, expires, now)
        if state is None:
            if self._held.holds(claim):
                self._held.drop(job_id)
            return None
        current = self._held.current(job_id)
        if current is None or not self._held.holds(claim):  # ended or released meanwhile
            return None
        job = current.job
        if state is JobState.CANCELLING and job.state is not state:
            # Another process accepted a CancelJob: the claim says so, and its holder stops it.
            job = dataclasses.replace(job, state=state)
        renewed = dataclasses.replace(current, job=job, lease_expires_at=expires)
        self._held.renewed(claim, renewed)
        return renewed

    async def done(self, claim: Claim) -> None:
        """Ends the claim (any object of it) in the store, where finish_job has usually ended
        it already; no-op when it is not the job's current claim here."""
        if not self._held.holds(claim):
            return
        self._held.drop(claim.job.id)
        await self._store.end_claim(claim.job.id, self.owner)
        self._changed.set()

    async def release(self, claim: Claim, job: Job | None = None) -> None:
        """Gives the job back at its place (store.end_claim with requeue); the prepared job is
        kept for the next claim here. No-op when it is not the job's current claim here. The
        next claim reads the job from the store (`job` is not needed)."""
        job_id = claim.job.id
        if not self._held.holds(claim):
            return
        self._held.drop(job_id)
        if claim.prepared is not None:
            self._prepared[job_id] = (next(self._puts), claim.prepared)
        await self._store.end_claim(job_id, self.owner, requeue=True)
        self._changed.set()

    async def remove(self, job_id: str, tenant: str) -> bool:
        """Takes a waiting job out by claiming it (store.claim_job), so no process can claim it
        before the caller finishes it CANCELLED (which ends the claim); False when it is not
        an unclaimed QUEUED job of `tenant` here."""
        now = self._clock()
        job = await self._store.claim_job(
            job_id, tenant, self.backend, self.owner, now + self._lease
        )
        if job is None:
            return False
        self._prepared.pop(job_id, None)
        self._changed.set()
        return True

    async def take_expired(self) -> list[Job]:
        """Claims (store.claim_expired) and returns the unclaimed QUEUED jobs whose deadline
        (create time + max_queue_time_s) is now or past, oldest first, for the caller to fail;
        their claims end when they are finished (or lapse if the caller dies first)."""
        now = self._clock()
        jobs = list(
            await self._store.claim_expired(
                self.backend, self.owner, now - self._max_queue, now + self._lease
            )
        )
        for job in jobs:
            self._prepared.pop(job.id, None)
        return jobs

    async def expired_ended(self, job: Job) -> None:
        """Its claim ended with the job's final state; nothing else waits here."""

    async def next_wakeup(self, *, leases: bool = True) -> datetime | None:
        """The earliest of the oldest waiting job's deadline and (with `leases`) the next
        lease expiry (in the past for a lapsed claim nobody has taken over); None when there
        is neither."""
        oldest = await self._store.oldest_queued_at(self.backend)
        lease = await self._store.next_lease_expiry(self.backend) if leases else None
        deadline = None if oldest is None else oldest + self._max_queue
        return min((t for t in (lease, deadline) if t is not None), default=None)

    def notify_changed(self) -> None:
        """Another process queued or claimed a job here: the scheduler looks again."""
        self._changed.set()

    async def wait_changed(self) -> None:
        """Returns once this process changed the queue (a put, release, removal or ended
        claim, or a peer's signal) since the last return; one waiter (the scheduler)."""
        await self._changed.wait()
        self._changed.clear()

    async def depth(self) -> int:
        """Jobs waiting in the store (unclaimed QUEUED), whichever process queued them."""
        return sum((await self._store.queued_by_tenant(self.backend)).values())

    async def waiting_by_tenant(self) -> dict[str, int]:
        """Jobs waiting in the store per tenant, whichever process queued them."""
        return await self._store.queued_by_tenant(self.backend)

    async def position(self, job_id: str, tenant: str) -> int | None:
        """An estimate of how many waiting jobs are handed out before this one (0: next), by
        gateway.domain.queue_order.position on the store's waiting jobs, live claims and claim
        history; None when it is not waiting. Lapsed claims, which go first, are not counted."""
        waiting = await self._waiting()
        if (job_id, tenant) not in waiting:
            return None
        now = self._clock()
        claims = await self._store.claims_by_tenant(self.backend, now)
        history = await self._store.last_claims(self.backend)
        lengths: dict[str, int] = {}
        heads: dict[str, int] = {}
        index = 0
        # queued_jobs is oldest first: the rank orders jobs as (create time, id) does.
        for rank, (queued_id, queued_tenant) in enumerate(waiting):
            if queued_id == job_id:
                index = lengths.get(tenant, 0)
            heads.setdefault(queued_tenant, rank)
            lengths[queued_tenant] = lengths.get(queued_tenant, 0) + 1
        return queue_order.position(lengths, heads, claims, history, tenant, index)

    async def claims_by_tenant(self) -> dict[str, int]:
        """Live claims per tenant on this backend, held by any process sharing the store."""
        return await self._store.claims_by_tenant(self.backend, self._clock())

    # ------------------------------------------------------------------ internals

    async def _waiting(self) -> list[tuple[str, str]]:
        """The store's waiting jobs; drops remembered prepared jobs that are no longer
        waiting (claimed or cancelled elsewhere), except those put after the read began."""
        mark = next(self._puts)
        waiting = list(await self._store.queued_jobs(self.backend))
        if self._prepared:
            ids = {job_id for job_id, _ in waiting}
            for job_id in [j for j, (n, _) in self._prepared.items() if n < mark]:
                if job_id not in ids:
                    del self._prepared[job_id]
        return waiting
