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
from collections.abc import Awaitable, Callable

from gateway.domain.jobs import JobError, JobState
from gateway.jobs.backend import BackendRuntime, RunningJob
from gateway.jobs.queue_port import Claim
from gateway.jobs.runner_step import RunnerStep
from gateway.jobs.transitions import Transitions
from gateway.runtime.breaker import BreakerState, Permit

log = logging.getLogger(__name__)


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
        running = RunningJob(claim, permit)
        self._rt.running[claim.job.id] = running
        running.task = asyncio.create_task(self._step.run(self._rt, running))
        return running

    async def run(self) -> None:
        rt = self._rt
        while not self._draining.is_set():
            rt.wake.clear()
            if not rt.has_free_slot():
                await self._wait(rt.wake.wait)
                continue
            permit = rt.breaker.try_dispatch()
            if permit is None:
                # Open: wake when the cool-down ends; half-open: when the trial finishes.
                delay = rt.breaker.retry_after()
                await self._wait(rt.wake.wait, timeout=delay if delay > 0 else None)
                continue
            claim = await rt.queue.claim()
            if claim is None:
                rt.breaker.release(permit)
                await self._wait(rt.wake.wait, rt.queue.wait_changed)
                continue
            if self._draining.is_set():
                rt.breaker.release(permit)
                await rt.queue.release(claim)
                return
            self.start_job(claim, permit)

    async def _wait(
        self, *waits: Callable[[], Awaitable[object]], timeout: float | None = None
    ) -> None:
        """Waits for any of `waits`, `timeout`, or the queue's next deadline; then fails the
        jobs whose queue time is over."""
        wakeup = await self._rt.queue.next_wakeup()
        if wakeup is not None:
            due = max(0.0, (wakeup - self._t.clock()).total_seconds())
            timeout = due if timeout is None else min(timeout, due)
        tasks = [asyncio.ensure_future(wait()) for wait in waits]
        try:
            await asyncio.wait(tasks, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self._expire()

    async def _expire(self) -> None:
        rt = self._rt
        for job in await rt.queue.take_expired():
            if job.state is not JobState.QUEUED:
                continue
            if rt.breaker.state is BreakerState.CLOSED:
                limit = f"{rt.settings.max_queue_time_s:g}"
                error = JobError.of(
                    "QUEUE_TIMEOUT",
                    f"the job waited in the queue past its limit of {limit}s",
                    {"backend": f"backends/{rt.name}", "limitSeconds": limit},
                )
            else:
                error = JobError.of(
                    "BACKEND_UNAVAILABLE",
                    f"backend backends/{rt.name} stayed unavailable (circuit breaker "
                    f"{rt.breaker.state.value}) past the job's queue time limit",
                    {"backend": f"backends/{rt.name}", "breakerState": rt.breaker.state.value},
                )
            await self._t.finish(job, JobState.FAILED, error=error)
