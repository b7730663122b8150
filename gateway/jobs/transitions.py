"""Every change of a job's state goes through here: committed to the store, then published to
watchers (event-bus port) and to lifecycle hooks, in that order, so nobody hears of a change
that is not durable."""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from collections.abc import Callable
from datetime import datetime, timedelta

from gateway.domain.jobs import ExecutionInfo, Job, JobError, JobState, JobTimings
from gateway.jobs.events import EventBus
from gateway.jobs.hooks import Hooks, Transition
from gateway.runtime.breaker import BreakerMove
from gateway.store.base import Store

WallClock = Callable[[], datetime]
# Jobs whose last committed state is kept (Run answers a job it just created without a read).
LATEST_JOBS = 4096


class Transitions:
    def __init__(
        self,
        store: Store,
        bus: EventBus,
        hooks: Hooks,
        clock: WallClock,
        result_retention_s: float,
    ) -> None:
        self.store = store
        self.bus = bus
        self.hooks = hooks
        self.clock = clock
        # A SUCCEEDED job's result is kept this long after it ends (Job.expire_at).
        self.result_retention_s = result_retention_s
        # The last committed state of the jobs this process changed most recently.
        self._latest: OrderedDict[str, Job] = OrderedDict()

    def latest(self, job_id: str) -> Job | None:
        """The job as this process last committed it, if it did recently. Only the whole
        truth while this process is the store's only writer."""
        return self._latest.get(job_id)

    def committed(
        self, job: Job, previous: JobState | None, breaker: BreakerMove | None = None
    ) -> None:
        """Tells watchers and hooks about a change the store has committed."""
        latest = self._latest
        latest[job.id] = job
        latest.move_to_end(job.id)
        if len(latest) > LATEST_JOBS:
            latest.popitem(last=False)
        self.bus.publish(job)
        self.hooks.notify(Transition(job, previous, job.updated_at or self.clock(), breaker))

    async def submitting(self, job: Job) -> Job | None:
        changed = await self.store.mark_submitting(job.id, self.clock())
        if changed is not None:
            self.committed(changed, job.state)
        return changed

    async def queued_again(self, job: Job, breaker: BreakerMove | None = None) -> Job | None:
        """SUBMITTING -> QUEUED: the provider refused the submit and created nothing."""
        changed = await self.store.mark_queued_again(job.id, self.clock())
        if changed is not None:
            self.committed(changed, job.state, breaker)
        return changed

    async def running(
        self, job: Job, remote_id: str | None = None, *, started_at: datetime | None = None
    ) -> Job | None:
        """-> RUNNING, started now or at `started_at` (a local run whose write was delayed)."""
        # A RUNNING job handed to a new holder (its previous holder's lease lapsed) runs again.
        rerun = job.state is JobState.RUNNING
        at = self.clock() if started_at is None else started_at
        changed = await self.store.mark_running(job.id, at, remote_id, rerun=rerun)
        if changed is not None:
            self.committed(changed, job.state)
        return changed

    async def cancelling(self, job: Job) -> Job | None:
        changed = await self.store.mark_cancelling(job.id, self.clock())
        if changed is not None:
            self.committed(changed, job.state)
        return changed

    async def finish(
        self,
        job: Job,
        state: JobState,
        *,
        error: JobError | None = None,
        execution: ExecutionInfo | None = None,
        timings: JobTimings | None = None,
        result: bytes | None = None,
        started_at: datetime | None = None,
        breaker: BreakerMove | None = None,
    ) -> Job | None:
        """Moves a job to a final state; None if it already was in one (or does not exist).

        `started_at`: the job ran from then without its RUNNING state written (a short local
        run); RUNNING commits with the end, and watchers and hooks hear of both, in order.
        `breaker`: the job's outcome moved its backend's breaker (hooks hear it with the end)."""
        ended = self.clock()
        # Retention is fixed when the job ends (a later configuration change keeps it).
        expires = (
            ended + timedelta(seconds=self.result_retention_s)
            if state is JobState.SUCCEEDED
            else None
        )
        # Once a final state is decided it is written even if the caller goes away: the store
        # queues the write before its first await, and runs what it queued.
        finished = await self.store.finish_job(
            job.id,
            state,
            ended_at=ended,
            error=error,
            execution=execution,
            timings=timings,
            result=result,
            result_expires_at=expires,
            started_at=started_at,
        )
        if finished is None:
            return None
        if started_at is None:
            self.committed(finished, job.state, breaker)
        else:
            self.committed(_as_running(finished), job.state)
            self.committed(finished, JobState.RUNNING, breaker)
        return finished


def _as_running(finished: Job) -> Job:
    """The job as it entered RUNNING, from its record finished in the same transaction."""
    return dataclasses.replace(
        finished,
        state=JobState.RUNNING,
        ended_at=None,
        error=None,
        execution=None,
        timings=None,
        expire_at=None,
        updated_at=finished.started_at,
        state_history=finished.state_history[:-1],
    )
