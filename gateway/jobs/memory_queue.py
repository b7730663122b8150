"""The in-memory queue port: one backend's queued jobs in this process's memory.

The store keeps every job durably; this queue only orders them, so it is for a gateway that is
the only process using its store (the embedded default): at start the store's recover() gives
back the jobs to queue again. Claims are leases kept here too, so a claim whose holder stopped
renewing it (a scheduler task that died) is handed out again, as with the claim queue.
"""

from __future__ import annotations

import asyncio
import bisect
import dataclasses
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from gateway.backends.base import PreparedJob
from gateway.domain import queue_order
from gateway.domain.jobs import Job
from gateway.jobs.claim_book import ClaimBook
from gateway.jobs.queue_port import Claim, Clock


@dataclass(eq=False)
class _Waiting:
    job: Job
    prepared: PreparedJob | None
    # When its queue time is over: max_queue_time_s after its creation; for a session's job,
    # after it was let in (it waited in its session's line before, bounded by the session's
    # TTLs, and must not expire the moment its turn comes).
    deadline: datetime

    @property
    def key(self) -> tuple[datetime, str]:
        return (self.job.created_at, self.job.id)


def _first_deadlines(line: deque[_Waiting]) -> Iterator[_Waiting]:
    """The line's jobs that may expire first: up to and including its first job outside a
    session. Every job after that one was created after it, so its deadline is not earlier
    (a session job's deadline is never before its creation's): the scheduler's timer costs
    one job per tenant, and the few session jobs ahead of it."""
    for item in line:
        yield item
        if not item.job.session:
            return


class MemoryQueue:
    """The JobQueue port in memory: fair across tenants (gateway.domain.queue_order), leased.

    A lease is live while now < lease_expires_at; from then on the claim is lost to its holder
    (renew answers None, as the store's renew_claim does, even before anyone else took it) and
    the job is handed out again, before any waiting job, as the queue knows it (this queue
    does not read the store: the new holder reads the job's stored state).

    Args:
        backend: The backend whose jobs this queue holds.
        max_queue_time_s: A job waits at most this long after its create time; then
            take_expired() hands it out to be failed.
        lease_s: How long a claim lasts unless renewed.
        clock: The wall clock (UTC, aware), injected so tests can move it.
    """

    queues_before_commit = True

    def __init__(self, backend: str, max_queue_time_s: float, lease_s: float, clock: Clock) -> None:
        self.backend = backend
        self.owner = f"memory:{backend}"
        self._max_queue = timedelta(seconds=max_queue_time_s)
        self._lease = timedelta(seconds=lease_s)
        self._clock = clock
        # Per tenant, its waiting jobs in (create time, id) order: FIFO, and a job given back
        # goes back to its place.
        self._lines: dict[str, deque[_Waiting]] = {}
        self._waiting: dict[str, _Waiting] = {}
        # The deadlines of claimed session jobs: one given back keeps it.
        self._session_deadlines: dict[str, datetime] = {}
        # Every claim handed out and not ended, live or lapsed.
        self._claims = ClaimBook()
        # The ordinal of each tenant's latest claim (kept while its line is empty).
        self._last_claim: dict[str, int] = {}
        self._ordinal = 0
        self._changed = asyncio.Event()
        # Claims held outside this queue, per tenant, that count in fair share as this
        # queue's own do: the workers pinned to DEDICATED sessions (gateway.jobs.sessions).
        self.extra_claims: Callable[[], Mapping[str, int]] = dict

    # ------------------------------------------------------------------ the port

    async def put(self, job: Job, prepared: PreparedJob | None) -> None:
        """Queues a job the store holds as QUEUED; a job already here (waiting or claimed) is
        left as it is."""
        if job.id in self._waiting or job.id in self._claims:
            return
        self._insert(self._waiting_item(job, prepared))
        self._changed.set()

    def adopt(self, job: Job) -> None:
        """Nothing here waits for a job recovered in flight."""

    async def claim(self) -> Claim | None:
        """The next job: a lapsed claim's job first (oldest first), else the fair choice among
        the waiting tenants; None when there is nothing."""
        now = self._clock()
        oldest, live = self._scan(now)
        if oldest is not None:
            return self._hand_out(oldest.job, oldest.prepared, now)
        if not self._lines:
            return None
        tenant = queue_order.next_tenant(
            {t: line[0].key for t, line in self._lines.items()}, live, self._last_claim
        )
        line = self._lines[tenant]
        item = line.popleft()
        if not line:
            del self._lines[tenant]
        del self._waiting[item.job.id]
        if item.job.session:
            self._session_deadlines[item.job.id] = item.deadline
        return self._hand_out(item.job, item.prepared, now)

    async def renew(self, claim: Claim) -> Claim | None:
        """The claim with its lease extended from now; None when it is lost (its lease lapsed,
        it ended, or the job was handed out again). Any object of the claim (as handed out,
        or as last renewed) may be passed."""
        now = self._clock()
        current = self._claims.current(claim.job.id)
        if current is None or not self._claims.holds(claim) or current.lease_expires_at <= now:
            return None
        renewed = dataclasses.replace(current, lease_expires_at=now + self._lease)
        self._claims.renewed(claim, renewed)
        return renewed

    async def done(self, claim: Claim) -> None:
        """Ends the claim (any object of it); no-op when it is not the job's current claim."""
        if self._claims.holds(claim):
            self._claims.drop(claim.job.id)
            self._session_deadlines.pop(claim.job.id, None)
            # A tenant holding one claim fewer may now go first.
            self._changed.set()

    async def release(self, claim: Claim, job: Job | None = None) -> None:
        """Gives the job (as `job` says it is now, else as claimed) back to its tenant's line,
        at its place (create time, id); no-op when the claim is not the job's current one."""
        job_id = claim.job.id
        # A claim made outside this queue (a job recovered in flight at start, given back
        # unstarted) queues the job now, or it would wait in no queue at all.
        foreign = claim.owner != self.owner and job_id not in self._waiting
        if not self._claims.holds(claim) and not (foreign and job_id not in self._claims):
            return
        self._claims.drop(job_id)
        deadline = self._session_deadlines.pop(job_id, None)
        item = self._waiting_item(job or claim.job, claim.prepared)
        if deadline is not None:  # a session job keeps the queue time its turn started
            item = dataclasses.replace(item, deadline=deadline)
        self._insert(item)
        self._changed.set()

    async def remove(self, job_id: str, tenant: str) -> bool:
        """Takes a waiting job of `tenant` out; False when it is not waiting here."""
        item = self._waiting.get(job_id)
        if item is None or item.job.tenant != tenant:
            return False
        del self._waiting[job_id]
        line = self._lines[tenant]
        line.remove(item)
        if not line:
            del self._lines[tenant]
        self._changed.set()
        return True

    async def take_expired(self) -> list[Job]:
        """Removes and returns the waiting jobs whose queue time is over (`_Waiting.deadline`),
        oldest first."""
        now = self._clock()
        out: list[_Waiting] = []
        for tenant in list(self._lines):
            line = self._lines[tenant]
            expired: list[_Waiting] = []
            for item in line:
                if item.deadline <= now:
                    expired.append(item)
                elif not item.job.session:
                    break  # every job after it expires no earlier (see _first_deadlines)
            for item in expired:
                line.remove(item)
            out.extend(expired)
            if not line:
                del self._lines[tenant]
        for item in out:
            del self._waiting[item.job.id]
        out.sort(key=lambda item: item.key)
        return [item.job for item in out]

    async def expired_ended(self, job: Job) -> None:
        """Nothing here waits for a job's end."""

    async def next_wakeup(self, *, leases: bool = True) -> datetime | None:
        """The earliest queue deadline or (with `leases`) lease expiry (in the past for a
        lapsed claim not yet handed out again); None when there is none."""
        times = [item.deadline for line in self._lines.values() for item in _first_deadlines(line)]
        if leases:
            times.extend(c.lease_expires_at for c in self._claims.claims())
        return min(times, default=None)

    async def wait_changed(self) -> None:
        """Returns once the queue changed (a put, release, removal or ended claim) since the
        last return: a change while the caller was busy is not lost. Made for one waiter (the
        backend's scheduler): each return consumes the changes so far."""
        await self._changed.wait()
        self._changed.clear()

    async def depth(self) -> int:
        """Jobs waiting (not claimed)."""
        return len(self._waiting)

    async def waiting_by_tenant(self) -> dict[str, int]:
        """Jobs waiting per tenant (a tenant's line is never empty)."""
        return {tenant: len(line) for tenant, line in self._lines.items()}

    async def position(self, job_id: str, tenant: str) -> int | None:
        """An estimate of how many waiting jobs are handed out before this one (0: next), by
        gateway.domain.queue_order.position; None when it is not waiting here. Lapsed claims,
        which go first, are not counted."""
        item = self._waiting.get(job_id)
        if item is None or item.job.tenant != tenant:
            return None
        line = self._lines[tenant]
        index = bisect.bisect_left(line, item.key, key=lambda w: w.key)
        return queue_order.position(
            {t: len(waiting) for t, waiting in self._lines.items()},
            {t: waiting[0].key for t, waiting in self._lines.items()},
            self._scan(self._clock())[1],
            self._last_claim,
            tenant,
            index,
        )

    async def claims_by_tenant(self) -> dict[str, int]:
        """Live claims (lease not lapsed) per tenant: the jobs each tenant is running."""
        return self._scan(self._clock())[1]

    # ------------------------------------------------------------------ internals

    def _waiting_item(self, job: Job, prepared: PreparedJob | None) -> _Waiting:
        start = max(job.created_at, self._clock()) if job.session else job.created_at
        return _Waiting(job, prepared, start + self._max_queue)

    def _insert(self, item: _Waiting) -> None:
        line = self._lines.setdefault(item.job.tenant, deque())
        # Arrivals come in create-time order almost always: append without searching.
        if not line or line[-1].key <= item.key:
            line.append(item)
        else:
            line.insert(bisect.bisect_left(line, item.key, key=lambda w: w.key), item)
        self._waiting[item.job.id] = item

    def _hand_out(self, job: Job, prepared: PreparedJob | None, now: datetime) -> Claim:
        claim = Claim(job, prepared, self.owner, now + self._lease)
        self._claims.issue(claim)
        self._ordinal += 1
        self._last_claim[job.tenant] = self._ordinal
        return claim

    def _scan(self, now: datetime) -> tuple[Claim | None, dict[str, int]]:
        """The oldest lapsed claim (create time, then id), and the live claims per tenant with
        the extra ones. One pass: claim runs it for every job, over the ~40 claims of 64
        clients."""
        oldest: Claim | None = None
        oldest_key: tuple[datetime, str] | None = None
        live: dict[str, int] = {}
        for c in self._claims.claims():
            if c.lease_expires_at <= now:
                key = (c.job.created_at, c.job.id)
                if oldest_key is None or key < oldest_key:
                    oldest, oldest_key = c, key
            else:
                live[c.job.tenant] = live.get(c.job.tenant, 0) + 1
        for holder, count in self.extra_claims().items():
            live[holder] = live.get(holder, 0) + count
        return oldest, live
