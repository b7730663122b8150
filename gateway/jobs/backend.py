"""A configured backend at run time: its compiler (the adapter), runner, breaker, queue and
health, as the job core sees them."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime

from gateway.backends.base import BackendAdapter
from gateway.backends.runner import RunHandle, Runner
from gateway.domain.backends import BackendInfo, BackendStatus
from gateway.domain.errors import Unavailable
from gateway.domain.jobs import Job
from gateway.domain.pricing import Price
from gateway.jobs.queue_port import Claim, JobQueue
from gateway.runtime.breaker import CircuitBreaker, Permit
from gateway.runtime.health import HealthState


@dataclass(frozen=True)
class BackendSettings:
    max_run_time_s: float
    max_queue_time_s: float
    health_interval_s: float
    probe_timeout_s: float
    # How long a claim lasts unless its holder renews it (renewed every third of it).
    lease_s: float = 30.0
    # First back-off before re-attaching to a provider job after losing touch (doubles, to 60).
    remote_retry_s: float = 1.0
    # What its jobs are charged by (None: no price table).
    price: Price | None = None
    # The run-time limit of a job with a while loop on a LOCAL runner (JOB_TIMEOUT, the job's
    # fault): a loop's iterations cannot be estimated before it runs.
    max_loop_run_time_s: float = 60.0


@dataclass(eq=False)
class RunningJob:
    claim: Claim
    permit: Permit
    cancel_requested: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    # The runner is done with the job (its result is being stored): its slot is free, but the
    # job stays listed here until its final state is committed, so CancelJob still finds it.
    slot_freed: bool = False
    # What the runner step awaits while the job runs; resolved to wake it early.
    poke: asyncio.Future[None] | None = None
    # The job went back to the queue unstarted (its claim was released, not done).
    released: bool = False
    # A local run started then and its RUNNING state is not written yet: it is written with
    # the job's end if that comes within the runner step's delay, else when the delay is over.
    unwritten_start: datetime | None = None
    # The runner's handle once it has the job: what is stopped if the step itself fails.
    handle: RunHandle | None = None
    # The claim a renewal found lost to another holder (a shared queue): the step lets go.
    lost_claim: Claim | None = None
    # The limit that stops its run (seconds): the most a provider's report of it is charged.
    run_limit_s: float | None = None
    # The job's attempts count as this step last read or wrote it (None: as claimed). A claim
    # of the job that comes back to this process with another count was run by another holder
    # meanwhile (Scheduler.start_job): this step's run is no longer the job's.
    attempts: int | None = None
    # A write of this step that starts a run (attempts + 1) is in flight: a claim of the job
    # that comes back meanwhile may carry that write's count before the step has seen it.
    starting: bool = False
    # Such a claim: (the claim it replaced, the attempts it carried, known_attempts then),
    # judged once the write returns (start_written).
    came_back: tuple[Claim, int, int] | None = None

    @property
    def known_attempts(self) -> int:
        return self.claim.job.attempts if self.attempts is None else self.attempts

    def claim_came_back(self, claim: Claim) -> None:
        """Scheduler.start_job on a shared queue: `claim` (this job's, handed to this process
        again) replaces the step's. One that carries another attempts count was run by another
        holder meanwhile, and the step lets go; while the step's own start write is in flight
        it is judged when that write returns (it may carry that write's count)."""
        attempts = claim.job.attempts
        if self.lost_claim is None and attempts != self.known_attempts:
            if self.starting:
                if self.came_back is None:
                    self.came_back = (self.claim, attempts, self.known_attempts)
            else:
                self.lose_claim(self.claim)
        self.claim = claim

    def start_written(self, started: Job | None) -> None:
        """The step's start write returned `started` (None: refused or failed)."""
        self.starting = False
        if started is not None:
            self.attempts = started.attempts
        if self.came_back is None:
            return
        replaced, attempts, before = self.came_back
        self.came_back = None
        # Read before that write committed, or after it: either is this step's own count.
        if attempts == before or attempts == self.attempts:
            return
        if self.lost_claim is None:
            self.lose_claim(replaced)

    @property
    def stopping(self) -> bool:
        """CancelJob asked for it, or its claim is lost: the runner step ends its run."""
        return self.cancel_requested.is_set() or self.lost_claim is not None

    def request_cancel(self) -> None:
        """CancelJob: the runner step stops the job (its worker, or at the provider)."""
        self.cancel_requested.set()
        self._wake()

    def lose_claim(self, claim: Claim) -> None:
        """A renewal found `claim` lost: the job is another holder's now."""
        self.lost_claim = claim
        self._wake()

    def _wake(self) -> None:
        if self.poke is not None and not self.poke.done():
            self.poke.set_result(None)


@dataclass(eq=False)
class BackendRuntime:
    name: str
    adapter: BackendAdapter
    info: BackendInfo
    runner: Runner
    breaker: CircuitBreaker
    settings: BackendSettings
    queue: JobQueue
    # Why the provider's description of the backend is not fetched yet ("" once it is):
    # `info` is then info_without_target(), jobs are refused and each health probe fetches
    # it first.
    target_pending: str = ""
    running: dict[str, RunningJob] = field(default_factory=dict)
    health: HealthState = field(default_factory=HealthState)
    ready: bool = False
    # Set when something the scheduler waits for may have changed (a free slot, the breaker,
    # drain).
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    # Before a session's job goes to a REMOTE runner: gives the runner the session's provider
    # session (gateway.jobs.sessions.SessionCore.provider_session); None without sessions.
    provider_session: Callable[[Runner, Job], Awaitable[None]] | None = None
    # Submissions past the queue-depth check and not yet queued (compiling, committing), per
    # tenant: they count against max_queued_jobs and the tenant's share of the queue, or
    # concurrent submissions all pass the same check.
    admitting: Counter[str] = field(default_factory=Counter)

    def target_pending_error(self) -> Unavailable:
        """What a job or GetBackendTarget gets while `target_pending`."""
        retry = self.settings.health_interval_s
        return Unavailable(
            "BACKEND_UNAVAILABLE",
            f"backend backends/{self.name} is not described by its provider yet "
            f"({self.target_pending}); nothing was accepted, retry in {retry:g}s",
            metadata={
                "backend": f"backends/{self.name}",
                "targetFetched": "false",
                "retryDelaySeconds": f"{retry:g}",
            },
            retry_after=retry,
        )

    def has_free_slot(self) -> bool:
        busy = sum(1 for r in self.running.values() if not r.slot_freed)
        return busy < self.runner.capacity

    async def status(self) -> BackendStatus:
        stats = self.runner.stats()
        return BackendStatus(
            ready=self.ready,
            serving=self.health.serving,
            last_probe=self.health.last_probe,
            last_error=self.health.last_error,
            breaker_state=self.breaker.state.value,
            queue_depth=await self.queue.depth(),
            running=len(self.running),
            pool_in_use=stats.in_use if stats else len(self.running),
            pool_idle=stats.idle if stats else 0,
            pool_waiting=stats.waiting if stats else 0,
            pool_min=stats.min_instances if stats else 0,
            pool_max=stats.max_instances if stats else self.runner.capacity,
            pool_peak=stats.high_water if stats else 0,
        )
