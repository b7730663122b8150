"""Sessions in the job core: ordering, lifecycle and TTLs (the decisions are
gateway.domain.sessions'; this module applies them to the store and the queues).

- Order: a session's jobs run one at a time, in submission (create-time) order. SessionQueue
  wraps a backend's queue: it lets one job per session into the inner queue and holds the
  others until that one is done (so several pool instances never run two jobs of a session at
  once, or out of order). Fair share across tenants is the inner queue's, unchanged.
- Lifecycle: a lifecycle hook sees every job of a session created (the first one starts the
  max TTL) and end; a CLOSING session with nothing left becomes CLOSED; under the ABORT policy
  a FAILED job fails the session and its other jobs are cancelled (the session is halted
  synchronously in the hook, so the queue never lets the next job in first).
- TTLs: one timer task wakes at the earliest deadline of the open sessions (or when a session
  changes): event-driven, the store is never polled.
- Restart: sessions are stored; at start the open ones and their unfinished jobs are loaded
  again, and recovery re-queues those jobs oldest first through the SessionQueue, so they run
  in order.

Sessions order jobs through the in-memory queue (server.queue = "memory"); with the store's
claim queue (several replicas) the store hands jobs out itself and order within a session is
not enforced yet.

Provider sessions (IBM Runtime sessions and batches) hook in through Runner.open_session /
Runner.close_session (gateway.backends.runner). The runner step asks this core
(`provider_session`) before a session's job goes to a REMOTE runner: the first time in this
process it calls open_session (which opens the provider's session, or re-uses the stored
provider_session_id after a restart) and stores the id it returns; close_session is called when
a session that has a provider session ends.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import dataclasses
import functools
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from gateway.backends.base import PreparedJob
from gateway.backends.runner import Runner
from gateway.domain import sessions as domain
from gateway.domain.deletion_clock import DeletionClock
from gateway.domain.errors import (
    FailedPrecondition,
    FieldViolation,
    GatewayError,
    InvalidArgument,
    NotFound,
)
from gateway.domain.job_filter import JobFilter
from gateway.domain.jobs import Job, JobSpec, JobState
from gateway.domain.pricing import Totals
from gateway.domain.sessions import (
    FailurePolicy,
    Session,
    SessionMode,
    SessionState,
)
from gateway.jobs.hooks import Transition
from gateway.jobs.manager import JobManager
from gateway.jobs.queue_port import Claim, JobQueue
from gateway.runtime.shielded import to_the_end
from gateway.store.base import CreateOutcome, JobCursor, SessionPage, Store

log = logging.getLogger(__name__)

# The longest wait between two tries at closing a provider session.
PROVIDER_CLOSE_MAX_RETRY_S = 60.0

# A TTL sweep that failed (a store error) runs again after this, doubling up to the maximum.
SWEEP_RETRY_S = 1.0
SWEEP_RETRY_MAX_S = 30.0

Clock = Callable[[], datetime]


def _now() -> datetime:
    return datetime.now(UTC)


# ---------------------------------------------------------------------------- the queue


@dataclass(eq=False)
class _Line:
    tenant: str
    # A DEDICATED session holding one of the backend's slots (a pinned worker) while it has
    # work.
    pinned: bool = False
    # The job let in (waiting to be claimed, or running); None when none is.
    current: str | None = None
    held: list[tuple[tuple[datetime, str], Job, PreparedJob | None]] = field(default_factory=list)


# Claims of pinned sessions' jobs are this queue's own and never lapse: nothing but this
# process hands them out, and it ends each one when its job ends (or gives it back).
_PINNED_LEASE = timedelta(days=3650)


class SessionQueue:
    """A JobQueue that lets one job per session in at a time, oldest first, and keeps one of
    the backend's slots for each DEDICATED session while it has work.

    Jobs without a session go straight to `inner`; so do the jobs of BATCH sessions, one at a
    time. A DEDICATED session with work is pinned: one slot of the backend's capacity is its
    own (other jobs may use at most capacity minus the pinned sessions), its next job is
    handed out first, from this queue rather than `inner`, and the runner keeps one worker for
    it (Runner.pin_session). At most capacity - 1 sessions are pinned at once, so jobs
    outside pinned sessions always keep a slot; a dedicated session beyond that runs like a
    batch until its work is done. A pin counts as a claim of its tenant in `inner`'s fair
    share (MemoryQueue.extra_claims). One tenant pins at most half of the capacity - 1
    (at least one), so one tenant's sessions cannot take every other tenant's slots.

    Set by the SessionCore: `halted(session_id)` (a session that must not start another job:
    ended or aborting; its held jobs stay until cancelled), `dedicated(session_id)`,
    `capacity()`, `wake()` (the backend's scheduler), and `on_pin`/`on_unpin` (the runner).
    """

    def __init__(self, inner: JobQueue) -> None:
        self.inner = inner
        self.queues_before_commit = inner.queues_before_commit
        self.halted: Callable[[str], bool] = lambda _session: False
        self.dedicated: Callable[[str], bool] = lambda _session: False
        self.capacity: Callable[[], int] = lambda: 1 << 30
        # A job let in when another ends arrives after the scheduler looked (the in-memory
        # queue is watched through the backend's wake event).
        self.wake: Callable[[], None] = lambda: None
        self.on_pin: Callable[[str], None] = lambda _session: None
        self.on_unpin: Callable[[str], None] = lambda _session: None
        self._lines: dict[str, _Line] = {}
        self._held: dict[str, str] = {}  # job id -> session id, for held jobs
        # Pinned sessions' current jobs waiting to be claimed, and their claims out.
        self._ready: dict[str, tuple[Job, PreparedJob | None]] = {}
        self._own: dict[str, Claim] = {}
        # Jobs claimed from `inner` and not ended or given back.
        self._inner_out: set[str] = set()
        if hasattr(inner, "extra_claims"):
            inner.extra_claims = self.pinned_by_tenant

    # ------------------------------------------------------------------ sessions

    def has_work(self, session_id: str) -> bool:
        return session_id in self._lines

    def sessions(self) -> list[str]:
        """The sessions with jobs here (queued, held or running)."""
        return list(self._lines)

    def pinned_by_tenant(self) -> dict[str, int]:
        """Pinned sessions per tenant (each holds a worker: a claim in fair share)."""
        counts: dict[str, int] = {}
        for line in self._lines.values():
            if line.pinned:
                counts[line.tenant] = counts.get(line.tenant, 0) + 1
        return counts

    def _pins(self) -> int:
        return sum(1 for line in self._lines.values() if line.pinned)

    def _open_line(self, session_id: str, tenant: str) -> _Line:
        line = _Line(tenant)
        pinnable = self.capacity() - 1
        # One tenant pins at most half the pinnable slots (at least one): its dedicated
        # sessions past that run like batches, so several tenants can each keep one.
        per_tenant = max(1, pinnable // 2)
        if (
            self.dedicated(session_id)
            and self._pins() < pinnable
            and self.pinned_by_tenant().get(tenant, 0) < per_tenant
        ):
            line.pinned = True
            self.on_pin(session_id)
        self._lines[session_id] = line
        return line

    def _close_line(self, session_id: str) -> None:
        line = self._lines.pop(session_id)
        if line.pinned:
            self.on_unpin(session_id)
            self.wake()  # its slot is free for others

    async def _let_in(
        self, line: _Line, session_id: str, job: Job, prepared: PreparedJob | None
    ) -> None:
        line.current = job.id
        if line.pinned:
            self._ready[session_id] = (job, prepared)
        else:
            await self.inner.put(job, prepared)
        self.wake()

    async def _advance(self, session_id: str) -> None:
        """The session's current job is done (or gone): lets its next held job in, unless the
        session is halted; a session with nothing left gives up its pin."""
        line = self._lines.get(session_id)
        if line is None:
            return
        line.current = None
        self._ready.pop(session_id, None)
        if not line.held:
            self._close_line(session_id)
            return
        if self.halted(session_id):
            return
        _, job, prepared = line.held.pop(0)
        del self._held[job.id]
        await self._let_in(line, session_id, job, prepared)

    # ------------------------------------------------------------------ the port

    async def put(self, job: Job, prepared: PreparedJob | None) -> None:
        session_id = job.session
        if not session_id:
            await self.inner.put(job, prepared)
            return
        line = self._lines.get(session_id) or self._open_line(session_id, job.tenant)
        if line.current == job.id:
            # Let in already: a job put back after its expiry could not be stored goes back
            # to the inner queue (a no-op there while it waits or is claimed there; a pinned
            # session's job waits in _ready or runs under its own claim instead).
            if session_id not in self._ready and job.id not in self._own:
                await self.inner.put(job, prepared)
            return
        if job.id in self._held:
            return
        if line.current is None and not line.held and not self.halted(session_id):
            await self._let_in(line, session_id, job, prepared)
            return
        key = (job.created_at, job.id)
        bisect.insort(line.held, (key, job, prepared), key=lambda item: item[0])
        self._held[job.id] = session_id

    async def claim(self) -> Claim | None:
        """A pinned session's waiting job first (its slot is its own); else the inner queue's
        next job while fewer than capacity minus the pins run from it."""
        # A halted session's job waits in _ready (cancelled with its session, or claimed once
        # the session goes on after its end could not be saved).
        ready = [item for item in self._ready.items() if not self.halted(item[0])]
        if ready:
            session_id, (job, prepared) = min(
                ready, key=lambda item: (item[1][0].created_at, item[1][0].id)
            )
            del self._ready[session_id]
            own = Claim(job, prepared, f"session:{session_id}", job.created_at + _PINNED_LEASE)
            self._own[job.id] = own
            return own
        pins = self._pins()
        # Without pins the scheduler's own slot count is the only limit.
        if pins and len(self._inner_out) >= self.capacity() - pins:
            return None
        while True:
            claim = await self.inner.claim()
            if claim is None:
                return None
            job = claim.job
            if job.session and job.state is JobState.QUEUED and self.halted(job.session):
                # Let in before its session began to end (CancelSession, a TTL: halted while
                # the end is saved, its jobs cancelled after): held back, not started.
                await self._hold_back(claim)
                continue
            self._inner_out.add(job.id)
            return claim

    async def _hold_back(self, claim: Claim) -> None:
        """Takes a halted session's job out of `inner` and back to the head of its line."""
        await self.inner.done(claim)
        job, session_id = claim.job, claim.job.session
        line = self._lines.get(session_id) or self._open_line(session_id, job.tenant)
        if line.current == job.id:
            line.current = None
        key = (job.created_at, job.id)
        bisect.insort(line.held, (key, job, claim.prepared), key=lambda item: item[0])
        self._held[job.id] = session_id

    async def resume(self, session_id: str) -> None:
        """The session is no longer halted (its end could not be saved): its next job is let
        in if none is, and a pinned one waiting in _ready can be claimed again."""
        line = self._lines.get(session_id)
        if line is None or self.halted(session_id):
            return
        if line.current is None and line.held:
            _, job, prepared = line.held.pop(0)
            del self._held[job.id]
            await self._let_in(line, session_id, job, prepared)
        self.wake()

    def adopt(self, job: Job) -> None:
        """A session's job recovered in flight is its session's current one: the next waits
        for its end instead of running beside it."""
        self.inner.adopt(job)
        if not job.session:
            return
        line = self._lines.get(job.session) or self._open_line(job.session, job.tenant)
        if line.current is None:
            line.current = job.id

    async def renew(self, claim: Claim) -> Claim | None:
        if claim.job.id in self._own:
            return self._own[claim.job.id]
        return await self.inner.renew(claim)

    async def done(self, claim: Claim) -> None:
        job_id = claim.job.id
        if self._own.pop(job_id, None) is None:
            try:
                await self.inner.done(claim)
            finally:
                # Not out any more even when ending the claim failed (a store error): it
                # lapses and is claimed again, counted anew. Kept, it took one of the slots
                # left beside pinned sessions for good.
                self._inner_out.discard(job_id)
            if self._pins():
                self.wake()  # the slot gate in `claim` may have turned the scheduler away
        session_id = claim.job.session
        line = self._lines.get(session_id) if session_id else None
        if line is not None and line.current == job_id:
            await self._advance(session_id)

    async def release(self, claim: Claim, job: Job | None = None) -> None:
        own = self._own.pop(claim.job.id, None)
        if own is not None:
            self._ready[claim.job.session] = (job or own.job, own.prepared)
            return
        try:
            await self.inner.release(claim, job)
        finally:
            self._inner_out.discard(claim.job.id)

    async def remove(self, job_id: str, tenant: str) -> bool:
        session_id = self._held.get(job_id)
        if session_id is not None:
            line = self._lines[session_id]
            for index, (_, job, _p) in enumerate(line.held):
                if job.id == job_id and job.tenant == tenant:
                    del line.held[index]
                    del self._held[job_id]
                    if line.current is None and not line.held:
                        self._close_line(session_id)
                    return True
            return False
        for session_id, (job, _p) in list(self._ready.items()):
            if job.id == job_id and job.tenant == tenant:
                await self._advance(session_id)
                return True
        removed = await self.inner.remove(job_id, tenant)
        if removed:
            await self._current_gone(job_id)
        return removed

    async def _current_gone(self, job_id: str) -> None:
        for session_id, line in list(self._lines.items()):
            if line.current == job_id:
                await self._advance(session_id)
                return

    async def take_expired(self) -> list[Job]:
        # The session's next job waits for expired_ended: the expired job's FAILED commit is
        # what halts an ABORT session, and the next must not be let in before it.
        return await self.inner.take_expired()

    async def expired_ended(self, job: Job) -> None:
        await self.inner.expired_ended(job)
        if job.session:
            await self._current_gone(job.id)

    async def next_wakeup(self, *, leases: bool = True) -> datetime | None:
        return await self.inner.next_wakeup(leases=leases)

    async def wait_changed(self) -> None:
        await self.inner.wait_changed()

    async def depth(self) -> int:
        return await self.inner.depth() + len(self._held) + len(self._ready)

    async def waiting_by_tenant(self) -> dict[str, int]:
        """The inner queue's waiting jobs and the sessions' held and ready ones, per tenant."""
        counts = await self.inner.waiting_by_tenant()
        for session_id, line in self._lines.items():
            held = len(line.held) + (1 if session_id in self._ready else 0)
            if held:
                counts[line.tenant] = counts.get(line.tenant, 0) + held
        return counts

    async def position(self, job_id: str, tenant: str) -> int | None:
        if any(job.id == job_id for job, _p in self._ready.values()):
            return 0
        session_id = self._held.get(job_id)
        if session_id is None:
            return await self.inner.position(job_id, tenant)
        # Behind every job of its session ahead of it, and behind the session's current job.
        line = self._lines[session_id]
        index = next(i for i, (_, job, _p) in enumerate(line.held) if job.id == job_id)
        ahead = 0
        if line.current is not None:
            current = None
            if session_id not in self._ready:
                current = await self.inner.position(line.current, tenant)
            ahead = 0 if current is None else current + 1  # None: it already runs (or is next)
        return ahead + index

    async def claims_by_tenant(self) -> dict[str, int]:
        """The inner queue's claims, the pins included (a pinned session's running job is its
        pin's)."""
        return await self.inner.claims_by_tenant()


# ---------------------------------------------------------------------------- the core


async def _retried(
    attempt: Callable[[], Awaitable[None]],
    what: str,
    again: Callable[[], bool] = lambda: True,
) -> None:
    """`attempt`, again after an error (a store error) with the sweep's back-off while
    `again()` says it is still needed."""
    retry = SWEEP_RETRY_S
    while True:
        try:
            await attempt()
            return
        except Exception:
            log.exception("%s failed", what)
        if not again():
            return
        await asyncio.sleep(retry)
        retry = min(retry * 2, SWEEP_RETRY_MAX_S)


def _check_accepts(session: Session, spec: JobSpec) -> None:
    """SESSION_CLOSED, or SESSION_BACKEND_MISMATCH for a job naming another backend, its
    fallback backend included: a session's jobs run on its backend, one at a time, and a job
    placed on a fallback would run beside the session's others, outside its order."""
    if not session.state.accepts_jobs:
        raise domain.session_closed(session)
    for backend in (spec.backend, spec.options.fallback_backend):
        if backend and backend != session.backend:
            raise domain.session_backend_mismatch(session, backend)


@dataclass(eq=False)
class _SessionLock:
    """One session's lock, and how many calls hold or wait for it."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0


@dataclass(frozen=True)
class SessionLimits:
    """server.max_sessions_per_tenant, server.session_max_ttl_s, server.session_idle_ttl_s."""

    max_sessions_per_tenant: int = 10
    max_ttl_s: float = 8 * 3600.0
    idle_ttl_s: float = 300.0


@dataclass(frozen=True)
class NewSession:
    backend: str
    mode: SessionMode = SessionMode.DEDICATED
    failure_policy: FailurePolicy = FailurePolicy.CONTINUE
    # None: the configured maximum / default.
    max_ttl_s: float | None = None
    idle_ttl_s: float | None = None
    labels: Mapping[str, str] = field(default_factory=dict)


def _ttl(value: float | None, default: float, limit: float, name: str) -> float:
    if value is None:
        return min(default, limit)
    if not 0 < value <= limit:
        raise InvalidArgument(
            "INVALID_SESSION",
            f"{name} must be more than 0 and at most {limit:g}s",
            metadata={"field": name, "maxSeconds": f"{limit:g}"},
            field_violations=[FieldViolation(name, f"more than 0 and at most {limit:g}s")],
        )
    return value


class SessionCore:
    """Creates, finds, closes and cancels sessions, admits their jobs, and ends them by TTL.

    Register it as a lifecycle hook of the manager (`hooks.add(core)`) and wrap every backend
    queue in a SessionQueue before the manager is built.
    """

    def __init__(
        self,
        store: Store,
        manager: JobManager,
        limits: SessionLimits,
        *,
        clock: Clock = _now,
        monotonic: Callable[[], float] = time.monotonic,
        provider_close_retry_s: float = 1.0,
    ) -> None:
        self._store = store
        # First wait before a provider session that would not close is asked again (doubles,
        # to PROVIDER_CLOSE_MAX_RETRY_S).
        self._provider_close_retry_s = provider_close_retry_s
        self._manager = manager
        self._limits = limits
        self.clock = clock
        # TTLs end sessions for good: by the clock, but never past what can have elapsed
        # since the start (a clock stepped forward ended every open session at once).
        self._ttl_clock = DeletionClock(
            clock, monotonic, what="sessions end by TTL", warn=log.warning
        )
        self._queues: dict[str, SessionQueue] = {}
        for name, runtime in manager.backends.items():
            queue = runtime.queue
            if isinstance(queue, SessionQueue):
                queue.halted = self.halted
                queue.dedicated = self._dedicated
                queue.wake = runtime.wake.set
                queue.capacity = functools.partial(_capacity, runtime.runner)
                queue.on_pin = runtime.runner.pin_session
                queue.on_unpin = runtime.runner.unpin_session
                self._queues[name] = queue
            runtime.provider_session = self.provider_session
        # Sessions not ended, as last stored; the unfinished jobs of each.
        self._open: dict[str, Session] = {}
        self._work: dict[str, set[str]] = {}
        # Sessions that must not start another job (ended, or failing under ABORT).
        self._halted: set[str] = set()
        self._loaded = False
        self._locks: dict[str, _SessionLock] = {}
        self._changed = asyncio.Event()
        self._timer: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        # Closed: transitions still published as the manager closes start nothing here.
        self._closed = False
        # CancelSession's job cancellations under way, by session.
        self._cancelling: dict[str, asyncio.Task[None]] = {}
        # New jobs being recorded in their sessions, by job.
        self._accepting: dict[str, asyncio.Task[None]] = {}
        # TTL ends waiting for a session's lock (a submission compiling): by session id.
        self._expiring: dict[str, asyncio.Task[None]] = {}
        # Sessions whose runner has their provider session in this process (opened or
        # re-used): open_session is not asked again.
        self._provider_ready: set[str] = set()

    # ------------------------------------------------------------------ lifecycle

    async def load_sessions(self) -> None:
        """Loads the open sessions (before the manager recovers their jobs into the queues,
        which pin dedicated ones)."""
        for session in await self._store.open_sessions():
            self._open[session.id] = session
        # From now on a job of a session that is not open (it ended, and the gateway stopped
        # before its jobs were cancelled) is held, never started.
        self._loaded = True

    async def load(self) -> None:
        """Loads the open sessions' unfinished jobs (after the manager recovered its jobs,
        before scheduling starts); cancels the jobs recovered for sessions that had ended; ends
        the sessions whose TTL passed while the gateway was down."""
        if not self._loaded:
            await self.load_sessions()
        aborted: list[str] = []
        for session in list(self._open.values()):
            # Ended jobs are read only where one can matter: an ABORT session's failure.
            abort = session.failure_policy is FailurePolicy.ABORT
            jobs = await self._store.session_jobs(session.id, include_final=abort)
            self._work[session.id] = {j.id for j in jobs if not j.state.is_final}
            if abort and any(j.state is JobState.FAILED for j in jobs):
                aborted.append(session.id)  # the gateway stopped before the failure applied
        for queue in self._queues.values():
            for session_id in queue.sessions():
                if session_id not in self._open:
                    ended = await self._store.get_session(session_id)
                    if ended is not None:
                        self._spawn(self._cancel_all_jobs(ended))
        for session_id in aborted:
            # Held back from now (its jobs never start), failed in a task: a store that
            # cannot write must not hold the start for as long as it lasts.
            self._halted.add(session_id)
            self._spawn(self._job_ended(session_id, failed=True))
        for session_id in list(self._open):
            await self._settle(session_id)
        await self.expire_due()

    def start(self) -> None:
        """Starts the TTL timer."""
        self._timer = asyncio.create_task(self._run_timer())

    async def close(self) -> None:
        self._closed = True
        tasks = [t for t in (self._timer, *self._tasks) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def halted(self, session_id: str) -> bool:
        """Whether the session must not start another job: it is ending, has ended, or (once
        the open sessions are loaded) is not open."""
        return session_id in self._halted or (self._loaded and session_id not in self._open)

    def _dedicated(self, session_id: str) -> bool:
        session = self._open.get(session_id)
        return session is not None and session.mode is SessionMode.DEDICATED

    @contextlib.asynccontextmanager
    async def _locked(self, session_id: str) -> AsyncIterator[None]:
        # Kept only while someone holds or waits for it: any well-formed id reaches here
        # before the session is looked up, and a lock per id ever named would grow without
        # bound.
        entry = self._locks.get(session_id)
        if entry is None:
            entry = self._locks[session_id] = _SessionLock()
        entry.users += 1
        try:
            async with entry.lock:
                yield
        finally:
            entry.users -= 1
            if not entry.users:
                del self._locks[session_id]

    # ------------------------------------------------------------------ queries

    async def get(self, tenant: str, session_id: str) -> Session:
        session = await self._store.get_session(session_id, tenant)
        if session is None:
            raise domain.session_not_found(session_id)
        return session

    async def totals(self, sessions: Sequence[Session]) -> dict[str, Totals]:
        """What each session's finished jobs used and cost so far, by session id."""
        return await self._store.session_totals([s.id for s in sessions])

    async def list(
        self, tenant: str, *, filter: JobFilter, after: JobCursor | None, limit: int
    ) -> SessionPage:
        return await self._store.list_sessions(tenant, filter=filter, after=after, limit=limit)

    # ------------------------------------------------------------------ commands

    async def create(self, tenant: str, request_id: str, new: NewSession) -> tuple[Session, bool]:
        """A new PENDING session (or the one an earlier request with this request_id made).

        Raises:
            InvalidArgument: REQUEST_ID_REUSED, when an earlier, different request used the
                request_id; INVALID_SESSION for a TTL out of range.
            NotFound: BACKEND_NOT_FOUND.
            FailedPrecondition: SESSIONS_UNAVAILABLE, with server.queue = "store".
            ResourceExhausted: SESSION_LIMIT_REACHED, at the tenant's cap of open sessions.
        """
        # Looked up before validating: a retry gets its session even after its backend was
        # removed or a limit lowered.
        if request_id:
            found = await self._store.find_session_request(tenant, request_id, self.clock())
            if found is not None:
                existing, digest = found
                # A TTL the retry leaves unset is the one its session got (the default then,
                # which may not be the default now).
                asked = dataclasses.replace(
                    existing,
                    backend=new.backend,
                    mode=new.mode,
                    failure_policy=new.failure_policy,
                    max_ttl_s=existing.max_ttl_s if new.max_ttl_s is None else new.max_ttl_s,
                    idle_ttl_s=existing.idle_ttl_s if new.idle_ttl_s is None else new.idle_ttl_s,
                    labels=new.labels,
                )
                if domain.request_digest(asked) != digest:
                    raise domain.request_id_reused(request_id, existing.id)
                return existing, False
        self._manager.check_allowed(tenant, new.backend, "session.backend")
        self._check_ordered(new.backend)
        lim = self._limits
        # The tenant's policy, where it sets max_sessions, supersedes the server's cap.
        max_open = self._manager.policies.policy(tenant).max_sessions
        if max_open is None:
            max_open = lim.max_sessions_per_tenant
        session = Session(
            id=uuid.uuid4().hex,
            tenant=tenant,
            backend=new.backend,
            mode=new.mode,
            state=SessionState.PENDING,
            failure_policy=new.failure_policy,
            max_ttl_s=_ttl(new.max_ttl_s, lim.max_ttl_s, lim.max_ttl_s, "session.max_ttl"),
            idle_ttl_s=_ttl(new.idle_ttl_s, lim.idle_ttl_s, lim.max_ttl_s, "session.idle_ttl"),
            created_at=self.clock(),
            request_id=request_id,
            labels=dict(new.labels),
            last_activity_at=None,
        )
        # A session past its TTL that the sweep has not ended yet counts no more.
        await self._expire_due_of(tenant)
        return await to_the_end(self._create(session, max_open))

    async def _expire_due_of(self, tenant: str) -> None:
        now = self._ttl_now()
        for session_id, session in list(self._open.items()):
            if session.tenant != tenant or session_id in self._locks:
                continue  # a locked one (a submission compiling) is the sweep's
            if domain.expire(session, now, has_work=self._has_work(session_id)) is not None:
                await self._expire(session_id)

    async def _create(self, session: Session, max_open: int) -> tuple[Session, bool]:
        # The store counts and creates in one transaction: two creates cannot both pass the
        # cap, and a concurrent twin (same request_id) gets the session the other created.
        # Run to its end (to_the_end) even if the caller goes away: the store commits the
        # session regardless, and one committed but not open here cancelled every job sent
        # into it right after SubmitJob answered (its retry got it back, still not open).
        stored, was_new = await self._store.create_session(
            session, domain.request_digest(session), max_open=max_open
        )
        if was_new:
            self._open[stored.id] = stored
            self._work[stored.id] = set()
            self._changed.set()
        return stored, was_new

    async def submit(
        self,
        tenant: str,
        request_id: str,
        spec: JobSpec,
        spec_bytes: bytes,
        digest: bytes,
        *,
        position: bool = True,
    ) -> CreateOutcome:
        """Admits a job into its session (spec.session) and queues it like any job.

        Raises:
            NotFound: SESSION_NOT_FOUND (also for another tenant's session).
            FailedPrecondition: SESSION_CLOSED when the session accepts no more jobs;
                SESSION_BACKEND_MISMATCH when the job names another backend;
                SESSIONS_UNAVAILABLE with server.queue = "store".
        """
        session_id = spec.session
        async with self._locked(session_id):
            session = self._open.get(session_id)
            if session is None or session.tenant != tenant:
                session = await self.get(tenant, session_id)
            session = await self._expired_now(session)
            _check_accepts(session, spec)
            self._manager.check_allowed(tenant, session.backend, "spec.session")
            self._check_ordered(session.backend)
            outcome = await self._manager.submit(
                tenant, request_id, spec, spec_bytes, digest, position=position
            )
            # The hook started a task to record the job in its session (on_transition), for
            # a caller that goes away during the commit. This caller is here: it records the
            # job itself, under the lock it holds, so the session is ACTIVE once SubmitJob
            # answers. Awaiting the task made the answer wait behind the next submission,
            # first in line for the lock, and its whole compile.
            accepting = self._accepting.get(outcome.job.id) if outcome.created else None
            recorded = True
            if accepting is not None and accepting.cancel():
                try:
                    recorded = await self._record_accepted(outcome.job)
                except Exception:
                    # Recorded again in a task: unrecorded, the session stays PENDING with
                    # its job running, and its max TTL never starts.
                    log.exception("session %s: recording job %s failed", session_id, outcome.job.id)
                    self._spawn(self._job_accepted(outcome.job))
        if not recorded:
            await self._cancel_unrecorded(outcome.job)
        return outcome

    async def check_accepts(self, tenant: str, spec: JobSpec) -> None:
        """What `submit` checks of the session before admitting a job (validate_only)."""
        session = await self.get(tenant, spec.session)
        if domain.expire(session, self._ttl_now(), has_work=self._has_work(session.id)):
            raise domain.session_closed(session)  # ended by the SubmitJob it checks for
        _check_accepts(session, spec)
        self._manager.check_allowed(tenant, session.backend, "spec.session")
        self._check_ordered(session.backend)

    def _check_ordered(self, backend: str) -> None:
        """Only the in-memory queue lets a session's jobs in one at a time: with the store's
        claim queue they would run side by side, ABORT would not halt the rest and DEDICATED
        would pin nothing. Checked for new jobs too: a session opened before the gateway
        moved to the claim queue took jobs and ran them together."""
        if backend not in self._queues:
            raise FailedPrecondition(
                "SESSIONS_UNAVAILABLE",
                f"backends/{backend} cannot keep a session's jobs in order on this gateway: "
                'sessions need server.queue = "memory"',
                metadata={"backend": f"backends/{backend}"},
            )

    async def close_session(self, tenant: str, session_id: str) -> Session:
        """CloseSession: no more jobs; CLOSING until its jobs are done, then CLOSED."""
        async with self._locked(session_id):
            session = await self.get(tenant, session_id)
            updated = domain.close(session, self.clock(), has_work=self._has_work(session_id))
            if updated is session:
                return session
            return await self._save(updated)

    async def cancel_session(self, tenant: str, session_id: str) -> Session:
        """CancelSession: ends it now (CLOSED) and cancels its queued and running jobs. On a
        session that has already ended it cancels whichever of its jobs are still unfinished
        (an earlier call that failed part-way)."""
        # To its end even if the caller goes away (its deadline, a disconnect): the session's
        # end commits regardless, and an ended session's held jobs are never let in, so jobs
        # left uncancelled stayed QUEUED (and running ones ran on) for ever.
        return await to_the_end(self._cancel_session(tenant, session_id))

    async def _cancel_session(self, tenant: str, session_id: str) -> Session:
        async with self._locked(session_id):
            session = await self.get(tenant, session_id)
            updated = domain.cancel(session, self.clock())
            if updated is not session:
                session = await self._halted_save(updated)
        await self._cancel_jobs_once(session)
        return session

    # ------------------------------------------------------------------ jobs ending

    def on_transition(self, transition: Transition) -> None:
        """Lifecycle hook: keeps each session's unfinished jobs and reacts to one ending."""
        job = transition.job
        session_id = job.session
        if not session_id or self._closed:
            return
        if not job.state.is_final:
            if transition.previous is None:
                self._work.setdefault(session_id, set()).add(job.id)
                # Here, where every created job passes, and in a task of this core: recorded
                # in SubmitJob's own call, it was lost when the caller was cancelled while the
                # job's commit was in flight (the commit goes on), and the session stayed
                # PENDING with no max TTL running.
                task = asyncio.get_running_loop().create_task(self._job_accepted(job))
                self._accepting[job.id] = task
                self._tasks.add(task)
                task.add_done_callback(functools.partial(self._accepted, job.id))
            return
        work = self._work.get(session_id)
        if work is not None:
            work.discard(job.id)
        if job.state is JobState.FAILED and job.remote_id is None:
            # The provider never took it: its provider session may have ended on the
            # provider's side (expired, closed from its console). The next job asks the runner
            # again (open_session checks it and opens a new one), instead of every later job
            # failing the same way until a restart.
            self._provider_ready.discard(session_id)
        session = self._open.get(session_id)
        if (
            job.state is JobState.FAILED
            and session is not None
            and session.failure_policy is FailurePolicy.ABORT
        ):
            # Before the queue lets the next job in (that happens when the claim ends).
            self._halted.add(session_id)
        self._spawn(self._job_ended(session_id, failed=job.state is JobState.FAILED))

    async def _job_accepted(self, job: Job) -> None:
        async def record() -> None:
            async with self._locked(job.session):
                recorded = await self._record_accepted(job)
            if not recorded:
                await self._cancel_unrecorded(job)

        await _retried(record, f"session {job.session}: recording job {job.id}")

    async def _record_accepted(self, job: Job) -> bool:
        """Under the session's lock: the session is ACTIVE with the job; False when it has
        ended (the job's commit was in flight meanwhile, its caller gone, the lock free)."""
        session = self._open.get(job.session)
        if session is None:
            return False
        await self._save(domain.job_accepted(session, self.clock()))
        return True

    async def _cancel_unrecorded(self, job: Job) -> None:
        # Its session's jobs were cancelled without this one.
        with contextlib.suppress(GatewayError):
            await self._manager.cancel(job.tenant, job.id)

    def _accepted(self, job_id: str, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        del self._accepting[job_id]

    async def _job_ended(self, session_id: str, *, failed: bool) -> None:
        async def update() -> None:
            async with self._locked(session_id):
                session = self._open.get(session_id)
                if session is None:
                    return
                updated = domain.job_ended(
                    session, failed, self.clock(), has_work=self._has_work(session_id)
                )
                saved = await self._save(updated)
            if saved.state is SessionState.FAILED:
                self._spawn(self._cancel_all_jobs(saved))

        def open_here() -> bool:
            # Saved again while the session is open: an ABORT failure not saved holds its jobs
            # back while it takes jobs that never run; a CLOSING one whose last job ended
            # stays CLOSING (counted against the tenant's cap) until its max TTL.
            return session_id in self._open

        await _retried(update, f"session {session_id}: updating after a job ended", open_here)

    # ------------------------------------------------------------------ TTLs

    async def expire_due(self) -> datetime | None:
        """Ends every open session whose TTL has passed; returns the next deadline."""
        now = self._ttl_clock.bounded()  # warns while it holds TTLs back
        next_at: datetime | None = None
        for session_id, session in list(self._open.items()):
            due = domain.deadline(session, has_work=self._has_work(session_id))
            if due is None:
                continue
            if due[0] > now:
                next_at = due[0] if next_at is None else min(next_at, due[0])
                continue
            if session_id in self._expiring:
                continue
            if session_id in self._locks:
                # Held (a submission compiling, up to its PUBs' compile limits): ended when it
                # is free, in a task, so the sweep goes on to every other tenant's sessions.
                task = asyncio.get_running_loop().create_task(self._expire_when_free(session_id))
                self._expiring[session_id] = task
                self._tasks.add(task)
                task.add_done_callback(functools.partial(self._expired, session_id))
                continue
            await self._expire(session_id)
        return next_at

    async def _expire(self, session_id: str) -> None:
        async with self._locked(session_id):
            current = self._open.get(session_id)
            if current is not None:
                await self._expired_now(current)

    async def _expired_now(self, session: Session) -> Session:
        """Under the session's lock: the session, ended and saved if a TTL of it has passed
        (its jobs then cancelled in a task). The sweep ends sessions soon after their
        deadlines, but not always at once (behind a compiling submission, backing off after
        a store error): a session past its TTL takes no job meanwhile."""
        ended = domain.expire(session, self._ttl_now(), has_work=self._has_work(session.id))
        if ended is None:
            return session
        saved = await self._halted_save(ended)
        log.info("session %s ended: %s", session.id, ended.end_reason)
        self._spawn(self._cancel_all_jobs(saved))
        return saved

    async def _expire_when_free(self, session_id: str) -> None:
        # Tried again here until it is saved: sweeps skip a session this task ends, and
        # nothing else would sweep again (the session's deadline is past, not the next one).
        await _retried(
            lambda: self._expire(session_id), f"session {session_id}: ending it at its TTL"
        )

    def _expired(self, session_id: str, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        del self._expiring[session_id]

    async def _run_timer(self) -> None:
        retry = SWEEP_RETRY_S
        while True:
            self._changed.clear()
            timeout: float | None = None
            try:
                next_at = await self.expire_due()
                retry = SWEEP_RETRY_S
            except Exception:
                # A store error: swept again after a back-off. Waiting for the next change
                # instead stopped every tenant's TTLs until some session happened to change.
                log.exception("session TTL sweep failed; again in %gs", retry)
                next_at = None
                timeout = retry
                retry = min(retry * 2, SWEEP_RETRY_MAX_S)
            if next_at is not None:
                # A little past the deadline: the clock must read past it when we look again.
                timeout = max(0.0, (next_at - self._ttl_now()).total_seconds()) + 0.01
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._changed.wait()

    # ------------------------------------------------------------------ internals

    def _ttl_now(self) -> datetime:
        """The instant TTLs are enforced at (gateway.domain.deletion_clock)."""
        return self._ttl_clock.now()[0]

    def _has_work(self, session_id: str) -> bool:
        if self._work.get(session_id):
            return True
        return any(q.has_work(session_id) for q in self._queues.values())

    async def _halted_save(self, ended: Session) -> Session:
        """Saves a session that has just ended, holding its jobs back from the moment it is
        decided; if the save fails the session is still open, and runs its jobs again."""
        held_already = ended.id in self._halted  # (an ABORT failure, not yet saved)
        self._halted.add(ended.id)
        try:
            return await self._save(ended)
        except Exception:  # not a caller gone: the save goes on to its end (to_the_end)
            if not held_already:
                self._halted.discard(ended.id)
                # Its jobs held back meanwhile run again.
                self._spawn(self._resume(ended.id))
            raise

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """`work` in a task of this core (cancelled by close; not started once closed)."""
        if self._closed:
            work.close()
            return
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _resume(self, session_id: str) -> None:
        try:
            for queue in self._queues.values():
                await queue.resume(session_id)
        except Exception:
            log.exception("session %s: letting its jobs in again failed", session_id)

    async def _save(self, session: Session) -> Session:
        # To its end even if the caller goes away (a CloseSession whose client left): the
        # store commits the change regardless, and the sessions open here must follow it.
        return await to_the_end(self._saved(session))

    async def _saved(self, session: Session) -> Session:
        saved = await self._store.save_session(session)
        if saved is None:  # it had already ended
            stored = await self._store.get_session(session.id)
            assert stored is not None
            saved = stored
        if saved.state.is_final:
            self._open.pop(saved.id, None)
            self._work.pop(saved.id, None)
            # Not open is halted once the open sessions are loaded: every ended session kept
            # here would grow the set for the life of the process.
            if self._loaded:
                self._halted.discard(saved.id)
            else:
                self._halted.add(saved.id)
            await self._close_provider_session(saved)
        else:
            self._open[saved.id] = saved
        self._changed.set()
        return saved

    async def _settle(self, session_id: str) -> None:
        """At start: a CLOSING session whose jobs all ended meanwhile is CLOSED."""
        # Under the session's lock: a job end heard at start (one recovery cancelled) closes
        # it too, and the provider session was closed twice.
        async with self._locked(session_id):
            session = self._open.get(session_id)
            closing = session is not None and session.state is SessionState.CLOSING
            if session is not None and closing and not self._has_work(session_id):
                await self._save(
                    domain.end(session, SessionState.CLOSED, domain.EndReason.CLOSED, self.clock())
                )

    def _cancel_jobs_once(self, session: Session) -> asyncio.Task[None]:
        """The task cancelling the session's jobs: the one already at it, else a new one."""
        task = self._cancelling.get(session.id)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._cancel_jobs(session))
            self._cancelling[session.id] = task
            self._tasks.add(task)
            task.add_done_callback(functools.partial(self._cancelled_jobs, session.id))
        return task

    def _cancelled_jobs(self, session_id: str, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        del self._cancelling[session_id]
        # Its caller may have gone; the error must not pass unseen (a retry cancels the rest).
        if not task.cancelled() and task.exception() is not None:
            log.error(
                "session %s: cancelling its jobs failed", session_id, exc_info=task.exception()
            )

    async def _cancel_jobs(self, session: Session) -> None:
        """Cancels the session's unfinished jobs (queued ones end now, running ones are
        stopped). Every job is tried; the first error (a store that cannot write) is raised
        after: a job not cancelled would otherwise stay QUEUED in no queue, holding its
        tenant's queue slot and quota, and the caller must know to try again.
        """
        failure: GatewayError | None = None
        for job in await self._store.session_jobs(session.id):
            try:
                await self._manager.cancel(session.tenant, job.id)
            except (FailedPrecondition, NotFound):  # it finished meanwhile, or is gone
                continue
            except GatewayError as exc:  # the store, not the job: tried again
                log.error("session %s: cancelling job %s failed: %s", session.id, job.id, exc)
                failure = failure or exc
        if failure is not None:
            raise failure

    async def _cancel_all_jobs(self, session: Session) -> None:
        """`_cancel_jobs` of a session that ended without a caller (a TTL, an ABORT
        failure), again after a failure until every job is cancelled."""
        await _retried(
            lambda: self._cancel_jobs(session), f"session {session.id}: cancelling its jobs"
        )

    async def provider_session(self, runner: Runner, job: Job) -> None:
        """Before the job of a session goes to a REMOTE runner: the runner has the session's
        provider session (opened now for its first job, re-used after a restart), and its id
        is stored. The job's own failure when the provider refuses (ExecutionError)."""
        session_id = job.session
        if session_id in self._provider_ready:
            return
        # To its end, lock held, even if the job's step is cancelled (a stop): the provider
        # may open the session regardless (an IBM open runs on a thread), and one whose id is
        # not stored is never closed; a dedicated one holds the device until its max time.
        await to_the_end(self._provider_session(runner, session_id))

    async def _provider_session(self, runner: Runner, session_id: str) -> None:
        async with self._locked(session_id):
            session = self._open.get(session_id)
            if session is None or session_id in self._provider_ready:
                return  # ended: its job is being cancelled, or runs on its own
            provider_id = await runner.open_session(session)
            if provider_id and provider_id != session.provider_session_id:
                if session.provider_session_id:
                    log.info(
                        "session %s: its provider session %s had ended; opened %s",
                        session_id,
                        session.provider_session_id,
                        provider_id,
                    )
                await self._save(_with_provider_id(session, provider_id))
            self._provider_ready.add(session_id)

    async def _close_provider_session(self, session: Session) -> None:
        self._provider_ready.discard(session.id)
        runtime = self._manager.backends.get(session.backend)
        if runtime is None or not session.provider_session_id:
            return
        try:
            await runtime.runner.close_session(session)
        except Exception:
            log.exception("session %s: closing it at the provider failed", session.id)
            self._spawn(self._close_provider_session_later(runtime.runner, session))

    async def _close_provider_session_later(self, runner: Runner, session: Session) -> None:
        """Asks the provider again, with back-off, while it may still hold the session: it
        ends the session itself only at its max TTL, and a DEDICATED one keeps the device (and
        its billed time) until then. Not across a restart of this process."""
        # A provider session lives at most max_ttl_s from its opening, which came before the
        # gateway session ended (one opened again after the provider ended the first, too).
        until = (session.ended_at or self.clock()) + timedelta(seconds=session.max_ttl_s)
        delay = self._provider_close_retry_s
        while self.clock() < until:
            await asyncio.sleep(delay)
            try:
                await runner.close_session(session)
            except Exception as exc:
                log.warning(
                    "session %s: closing it at the provider failed again: %s",
                    session.id,
                    type(exc).__name__,
                )
                delay = min(delay * 2, PROVIDER_CLOSE_MAX_RETRY_S)
                continue
            log.info("session %s: closed at the provider after a retry", session.id)
            return
        log.error(
            "session %s: its provider session %s could not be closed; the provider ends it at "
            "its max TTL",
            session.id,
            session.provider_session_id,
        )


def _capacity(runner: Runner) -> int:
    return runner.capacity


def _with_provider_id(session: Session, provider_id: str) -> Session:
    return dataclasses.replace(session, provider_session_id=provider_id)
