"""Every change of a job's state goes through here: committed to the store, then published to
watchers (event-bus port) and to lifecycle hooks, in that order, so nobody hears of a change
that is not durable."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
from collections import OrderedDict
from collections.abc import Callable, Coroutine
from datetime import datetime, timedelta
from typing import Any

from gateway.domain.jobs import ExecutionInfo, Job, JobError, JobState, JobTimings
from gateway.jobs.events import EventBus
from gateway.jobs.hooks import Hooks, Transition
from gateway.runtime import shielded
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
        # Writes in flight; settle() waits for those whose callers went away.
        self._in_flight: set[asyncio.Future[Any]] = set()

    def latest(self, job_id: str) -> Job | None:
        """The job as this process last committed it, if it did recently. Only the whole
        truth while this process is the store's only writer."""
        return self._latest.get(job_id)

    def committed(
        self, job: Job, previous: JobState | None, breaker: BreakerMove | None = None
    ) -> None:
        """Tells watchers and hooks about a change the store has committed, unless a later one
        of the job was told already: a change whose caller left is published when it commits,
        which can be before the caller of an earlier one resumes (a stop cancelling steps)."""
        latest = self._latest
        told = latest.get(job.id)
        if told is not None and len(told.state_history) > len(job.state_history):
            return
        latest[job.id] = job
        latest.move_to_end(job.id)
        if len(latest) > LATEST_JOBS:
            latest.popitem(last=False)
        self.bus.publish(job)
        self.hooks.notify(Transition(job, previous, job.updated_at or self.clock(), breaker))

    async def submitting(self, job: Job, holder: str | None = None) -> Job | None:
        """QUEUED -> SUBMITTING, by `holder` (the claim's owner): None if another holds it."""
        write = self.store.mark_submitting(job.id, self.clock(), holder=holder)
        return await self._change(job, write)

    async def queued_again(
        self, job: Job, breaker: BreakerMove | None = None, holder: str | None = None
    ) -> Job | None:
        """SUBMITTING -> QUEUED: the provider refused the submit and created nothing; None if
        another holds the job's lease."""
        write = self.store.mark_queued_again(job.id, self.clock(), holder=holder)
        return await self._change(job, write, breaker)

    async def running(
        self,
        job: Job,
        remote_id: str | None = None,
        *,
        started_at: datetime | None = None,
        holder: str | None = None,
    ) -> Job | None:
        """-> RUNNING, started now or at `started_at` (a local run whose write was delayed), by
        `holder` (the claim's owner): None if another holds the job's lease."""
        # A RUNNING job handed to a new holder (its previous holder's lease lapsed) runs again.
        rerun = job.state is JobState.RUNNING
        at = self.clock() if started_at is None else started_at
        write = self.store.mark_running(job.id, at, remote_id, rerun=rerun, holder=holder)
        return await self._change(job, write)

    async def cancelling(self, job: Job) -> Job | None:
        return await self._change(job, self.store.mark_cancelling(job.id, self.clock()))

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
        holder: str | None = None,
    ) -> Job | None:
        """Moves a job to a final state, by `holder` (the claim's owner); None if it already
        was in one (or does not exist), or if another holds the job's lease.

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
        write = self.store.finish_job(
            job.id,
            state,
            ended_at=ended,
            error=error,
            execution=execution,
            timings=timings,
            result=result,
            result_expires_at=expires,
            started_at=started_at,
            holder=holder,
        )

        def publish(finished: Job) -> None:
            if started_at is None:
                self.committed(finished, job.state, breaker)
            else:
                self.committed(_as_running(finished), job.state)
                self.committed(finished, JobState.RUNNING, breaker)

        return await self._commit(write, publish)

    async def _change(
        self,
        job: Job,
        write: Coroutine[Any, Any, Job | None],
        breaker: BreakerMove | None = None,
    ) -> Job | None:
        """Commits `write`, a change of `job`, and publishes what it changed."""

        def publish(changed: Job) -> None:
            self.committed(changed, job.state, breaker)

        return await self._commit(write, publish)

    async def _commit(
        self, write: Coroutine[Any, Any, Job | None], publish: Callable[[Job], None]
    ) -> Job | None:
        # The write runs to its end even when the caller goes away (a CancelJob whose client
        # left, a step cancelled at close), as the store commits it regardless: a change
        # committed but never published left Run and WaitJob waiting and hooks blind to it.
        # The caller publishes, so it goes on before anything the publication wakes (a
        # session's hook expects the step to have given its claim back); if it left, the
        # change is published when it commits.
        writing = asyncio.ensure_future(write)
        self._in_flight.add(writing)
        writing.add_done_callback(self._in_flight.discard)
        try:
            changed = await asyncio.shield(writing)
        except asyncio.CancelledError:
            shielded.when_caller_left(writing, functools.partial(_publish_if_changed, publish))
            raise
        _publish_if_changed(publish, changed)
        return changed

    async def settle(self) -> None:
        """Waits for changes still being written for callers that went away (at close, before
        the store closes)."""
        while self._in_flight:
            await asyncio.gather(*self._in_flight, return_exceptions=True)


def _publish_if_changed(publish: Callable[[Job], None], changed: Job | None) -> None:
    if changed is not None:
        publish(changed)


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
