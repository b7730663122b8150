"""The scheduler of one backend: claims jobs from its queue port while the backend has a free
slot and the breaker gives leave, and hands each to the runner step; fails jobs that waited past
the queue-time limit.

Event-driven: it waits on the backend's wake event (a slot freed, a job queued, the breaker,
drain), on the queue's own change notification (jobs queued by other processes) and on a timer
for the next known deadline (a queue deadline, a lease that lapses, the breaker's cool-down).
Nothing polls the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import timedelta

from gateway.domain.jobs import Job, JobError, JobState
from gateway.jobs.backend import BackendRuntime, RunningJob
from gateway.jobs.queue_port import Claim
from gateway.jobs.runner_step import RunnerStep
from gateway.jobs.transitions import Transitions
from gateway.runtime.breaker import BreakerState, Permit

log = logging.getLogger(__name__)

# After a failed turn the scheduler tries again after this, doubling per failure in a row.
ERROR_BACKOFF_S = 0.05
ERROR_BACKOFF_MAX_S = 5.0


class Scheduler:
    def __init__(
        self,
        runtime: BackendRuntime,
        step: RunnerStep,
        transitions: Transitions,
        draining: asyncio.Event,
    ) -> None:
        self._rt = runtime
        self._step = step
        self._t = transitions
        self._draining = draining

    def start_job(self, claim: Claim, permit: Permit) -> RunningJob:
        """Runs a claimed job in its own task. No await between registering the job and
        creating its task: CancelJob finds it in `running` from this moment on."""
        current = self._rt.running.get(claim.job.id)
        if current is not None:
            # This process's own step still runs the job: its claim lapsed (a slow compile or
            # provider call, a clock step) and came back here. The step keeps the job under
            # the new claim; a second step would run it twice.
            self._rt.breaker.release(permit)
            if self._rt.queue.queues_before_commit:
                # The in-memory queue's claim carries the job as queued, and nobody else
                # runs it.
                current.claim = claim
            else:
                # A shared queue's claim carries the job as stored: another holder may have
                # run it meanwhile (this process paused past its lease, then the other's
                # lapsed), and ending it here ended the job with an earlier run's result over
                # the other's start. The step then lets go and gives the claim back, to start
                # afresh (RunningJob.claim_came_back).
                current.claim_came_back(claim)
            return current
        running = RunningJob(claim, permit)
        self._rt.running[claim.job.id] = running
        running.task = asyncio.create_task(self._step.run(self._rt, running))
        return running

    async def run(self) -> None:
        if self._rt.queue.queues_before_commit:
            # This process alone feeds the queue, and every local change sets the wake event.
            await self._loop()
            return
        # A shared queue's own notifications (jobs queued by another process) wake the loop
        # like a local event; one task for the scheduler's life, not one per wait.
        forward = asyncio.create_task(self._forward_queue_changes())
        try:
            await self._loop()
        finally:
            forward.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await forward

    async def _forward_queue_changes(self) -> None:
        while True:
            await self._rt.queue.wait_changed()
            self._rt.wake.set()

    async def _loop(self) -> None:
        failures = 0
        while not self._draining.is_set():
            try:
                if not await self._turn():
                    return
                failures = 0
            except Exception:
                # A store or queue call failed (SQLITE_BUSY past the busy timeout, a full
                # disk): the backend's only scheduler must outlive it, or every later job of
                # the backend stays QUEUED with nothing to run or expire it.
                failures += 1
                delay = min(ERROR_BACKOFF_MAX_S, ERROR_BACKOFF_S * 2 ** min(failures - 1, 16))
                log.exception(
                    "scheduler of backends/%s: a turn failed; next in %.2fs", self._rt.name, delay
                )
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._draining.wait()

    async def _turn(self) -> bool:
        """Starts at most one job, or waits for a reason to try again; False once draining."""
        rt = self._rt
        rt.wake.clear()
        if not rt.has_free_slot():
            await self._wait(can_claim=False)
            return True
        permit = rt.breaker.try_dispatch()
        if permit is None:
            # Open: wake when the cool-down ends; half-open: when the trial finishes.
            delay = rt.breaker.retry_after()
            await self._wait(delay if delay > 0 else None, can_claim=False)
            return True
        try:
            claim = await rt.queue.claim()
        except BaseException:
            rt.breaker.release(permit)  # a half-open trial's token must not be lost
            raise
        if claim is None:
            rt.breaker.release(permit)
            await self._wait()
            return True
        if self._draining.is_set():
            rt.breaker.release(permit)
            await rt.queue.release(claim)
            return False
        if claim.job.id not in rt.running and self._past_deadline(claim.job):
            # A claim that lapsed and came back after the job's queue time was over. Not a job
            # this process's step still runs: its lapsed claim (a clock step, a slow provider
            # call) carries the job as it was queued, and start_job gives the claim back to
            # that step; failing it QUEUE_TIMEOUT threw away a job that was running.
            rt.breaker.release(permit)
            holder = None if rt.queue.queues_before_commit else claim.owner
            await self._t.finish(
                claim.job, JobState.FAILED, error=self._expired_error(), holder=holder
            )
            await rt.queue.done(claim)
            return True
        self.start_job(claim, permit)
        return True

    def _past_deadline(self, job: Job) -> bool:
        # A session's job is bounded by its session's TTLs (and its queue time counts from
        # when its turn came, MemoryQueue), not from its creation.
        limit = timedelta(seconds=self._rt.settings.max_queue_time_s)
        return (
            job.state is JobState.QUEUED
            and not job.session
            and self._t.clock() >= job.created_at + limit
        )

    async def _wait(self, timeout: float | None = None, *, can_claim: bool = True) -> None:
        """Waits for the wake event, `timeout`, or the queue's next deadline (and lease
        expiry, when the scheduler could claim a lapsed job); then fails the jobs whose queue
        time is over."""
        wakeup = await self._rt.queue.next_wakeup(leases=can_claim)
        if wakeup is not None:
            due = max(0.0, (wakeup - self._t.clock()).total_seconds())
            timeout = due if timeout is None else min(timeout, due)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._rt.wake.wait()
        if wakeup is not None and self._t.clock() >= wakeup:
            await self._expire()

    async def _expire(self) -> None:
        queue = self._rt.queue
        failure: Exception | None = None
        for job in await queue.take_expired():
            if failure is None:
                try:
                    if job.state is JobState.QUEUED:
                        await self._t.finish(job, JobState.FAILED, error=self._expired_error())
                except Exception as exc:
                    failure = exc
                else:
                    await queue.expired_ended(job)
                    continue
            # Taken out of the queue but still QUEUED in the store (the store failed): put
            # back, to expire after the scheduler's back-off, not lost until a restart; its
            # session does not let the next job in meanwhile.
            await queue.put(job, None)
        if failure is not None:
            raise failure

    def _expired_error(self) -> JobError:
        rt = self._rt
        if rt.breaker.state is BreakerState.CLOSED:
            limit = f"{rt.settings.max_queue_time_s:g}"
            return JobError.of(
                "QUEUE_TIMEOUT",
                f"the job waited in the queue past its limit of {limit}s",
                {"backend": f"backends/{rt.name}", "limitSeconds": limit},
            )
        return JobError.of(
            "BACKEND_UNAVAILABLE",
            f"backend backends/{rt.name} stayed unavailable (circuit breaker "
            f"{rt.breaker.state.value}) past the job's queue time limit",
            {"backend": f"backends/{rt.name}", "breakerState": rt.breaker.state.value},
        )
