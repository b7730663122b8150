"""The LOCAL runner: prepared jobs run on a pool of supervised simulator worker processes.

The handle of a running job is its worker. The worker goes back to the pool the moment
execution ends, before the job core stores the result, so the next job need not wait for this
one's bookkeeping; it is recycled (destroyed and replaced) when the process died or was killed,
or ran out of memory (its heap may be fragmented), and reused otherwise. Nothing survives a
gateway crash: `reattach` finds nothing and the job runs again.

A stopped job's (cancelled, or past a time limit) worker is killed only once the job has run
KILL_AFTER_S: a kill costs a replacement worker's start (its imports alone take 0.8-1.7 s, and
the backend has a worker fewer meanwhile), so a job stopped sooner is let finish until then,
its result discarded and its worker reused. Otherwise a client could make every tenant pay a
replacement per request with jobs it cancels at once or limits to a nanosecond. `wait`
answers CANCELLED only once the worker is free: until then the job keeps its slot, its
tenant's share and its running time, as a job still running does.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable

from gateway.backends.base import ExecutionOutcome, PreparedJob
from gateway.backends.runner import (
    ExecutionModel,
    ProbeSkipped,
    RunHandle,
    Runner,
    cancelled_error,
)
from gateway.domain.backends import InstanceStats
from gateway.domain.errors import ExecutionError
from gateway.domain.failures import FailureKind
from gateway.domain.jobs import Job
from gateway.runtime.pool import Pool
from gateway.runtime.worker import WORKER_CRASHED, WorkerCrashed, WorkerProcess

__all__ = ["KILL_AFTER_S", "WorkerPoolRunner", "WorkerRunHandle"]

log = logging.getLogger(__name__)

# How long a stopped job may have run before its worker is killed: about what replacing the
# worker costs (FIELD-NOTES: a fresh worker's imports alone take 0.8 s for Qiskit and Aer,
# 1.5-1.7 s for PennyLane or Braket's simulator).
KILL_AFTER_S = 1.0


class WorkerRunHandle(RunHandle):
    """A job running on one worker process.

    Attributes:
        worker: The process running the job; back in the pool once `ended`.
        ended: Execution is over (result, failure or kill): the worker is no longer this job's
            and must never be killed on its behalf.
        cancel_requested: `cancel` stopped the job.
        started: When execution began, on the runner's clock.
    """

    def __init__(
        self, job_id: str, worker: WorkerProcess, started: float, session: str = ""
    ) -> None:
        super().__init__(job_id)
        self.worker = worker
        # The job's session: its worker stays with the session afterwards while it is pinned.
        self.session = session
        self.started = started
        self.ended = False
        self.cancel_requested = False
        self.execution: asyncio.Task[ExecutionOutcome] | None = None
        self.kill_timer: asyncio.TimerHandle | None = None


def _recycle(error: ExecutionError) -> bool:
    """Whether the worker that raised `error` must be replaced rather than reused."""
    return isinstance(error, WorkerCrashed) or error.kind is FailureKind.OUT_OF_MEMORY


def _kill_unless_ended(handle: WorkerRunHandle) -> None:
    if not handle.ended:
        handle.worker.kill()


def _retrieve(task: asyncio.Task[ExecutionOutcome]) -> None:
    # A job nobody waits for any more (its waiter was cancelled) still fails quietly.
    if not task.cancelled():
        task.exception()


class WorkerPoolRunner(Runner):
    """Runs jobs on the simulator workers of `pool`; its capacity is the pool's max_instances.

    Args:
        pool: Worker processes of one simulator backend (WorkerFactory(SimulatorRole(...))).
        kill_after_s: How long a stopped job may have run before its worker is killed.
        clock: Monotonic seconds (injected by tests).
    """

    model = ExecutionModel.LOCAL

    def __init__(
        self,
        pool: Pool[WorkerProcess],
        *,
        kill_after_s: float = KILL_AFTER_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._pool = pool
        self._kill_after_s = kill_after_s
        self._clock = clock
        # Pinned (DEDICATED) sessions, and the worker each keeps between its jobs.
        self._pinned: set[str] = set()
        self._kept: dict[str, WorkerProcess] = {}
        self._returns: set[asyncio.Task[None]] = set()

    @property
    def pool(self) -> Pool[WorkerProcess]:
        return self._pool

    @property
    def capacity(self) -> int:
        return self._pool.limits.max_instances

    async def start(self) -> None:
        await self._pool.start()

    async def close(self) -> None:
        for session in list(self._kept):
            self.unpin_session(session)
        await asyncio.gather(*self._returns, return_exceptions=True)
        await self._pool.close()

    async def maintain(self) -> None:
        await self._pool.maintain()

    def stats(self) -> InstanceStats:
        return self._pool.stats()

    def pin_session(self, session_id: str) -> None:
        """The session's jobs run on one worker: the one that ran its previous job, kept out of
        the pool between them (the job core keeps a slot for the session meanwhile)."""
        self._pinned.add(session_id)

    def unpin_session(self, session_id: str) -> None:
        """The worker kept for the session goes back to the pool."""
        self._pinned.discard(session_id)
        worker = self._kept.pop(session_id, None)
        if worker is not None:
            task = asyncio.get_running_loop().create_task(
                self._pool.release(worker, broken=not worker.alive)
            )
            self._returns.add(task)
            task.add_done_callback(self._returns.discard)

    def pinned_worker(self, session_id: str) -> WorkerProcess | None:
        """The worker kept for a pinned session between its jobs, if any."""
        return self._kept.get(session_id)

    async def _take_worker(self, job: Job) -> WorkerProcess:
        kept = self._kept.pop(job.session, None) if job.session else None
        if kept is not None:
            if kept.alive:
                return kept
            await self._pool.release(kept, broken=True)
        return await self._pool.acquire(timeout=math.inf)

    async def submit(self, prepared: PreparedJob, job: Job) -> RunHandle:
        """Takes a worker (a pinned session's own, else one from the pool) and starts the job
        on it. Waits without a limit: the scheduler submits only into a free slot, but that
        slot's worker may still be starting (a replacement for a recycled one)."""
        try:
            worker = await self._take_worker(job)
        except ExecutionError:
            # The worker it was given died on the way (killed from outside): that is the
            # job's failure, with the signal that ended it.
            raise
        except Exception as exc:
            log.warning("no worker for job %s: %s: %s", job.id, type(exc).__name__, exc)
            raise ExecutionError(
                WORKER_CRASHED,
                "no worker process could be started",
                kind=FailureKind.BACKEND_FAULT,
            ) from None
        handle = WorkerRunHandle(job.id, worker, self._clock(), job.session)
        execution = asyncio.get_running_loop().create_task(
            self._execute(handle, prepared.payload), name=f"execute {job.id}"
        )
        execution.add_done_callback(_retrieve)
        handle.execution = execution
        return handle

    async def _execute(self, handle: WorkerRunHandle, payload: object) -> ExecutionOutcome:
        """Runs the payload and gives the worker back as soon as it has finished."""
        worker = handle.worker
        recycle = True
        try:
            if handle.cancel_requested:  # stopped before the worker took it: nothing ran
                recycle = False
                raise cancelled_error()
            outcome = await worker.execute(payload)
            recycle = False
            if handle.cancel_requested:  # stopped while it ran: its result is discarded
                raise cancelled_error()
            return outcome
        except ExecutionError as error:
            recycle = _recycle(error)
            if handle.cancel_requested and isinstance(error, WorkerCrashed):
                # The kill was ours: the job was cancelled, the worker did not crash.
                raise cancelled_error() from None
            raise
        except asyncio.CancelledError:
            worker.kill()  # stopped mid-protocol: the process cannot serve another job
            raise
        finally:
            # Killed (a cancel after the answer arrived included) or broken: replaced.
            handle.ended = True
            if handle.kill_timer is not None:
                handle.kill_timer.cancel()
            broken = recycle or not worker.alive
            session = handle.session
            # A stopped job's worker goes back to the pool: the session's next job may already
            # wait there for a worker (a pool of one would never give it one).
            keep = session in self._pinned and not handle.cancel_requested
            if keep and not broken and session not in self._kept:
                self._kept[session] = worker  # the pinned session's next job runs here
            else:
                await self._pool.release(worker, broken=broken)

    def _handle(self, handle: RunHandle) -> WorkerRunHandle:
        if not isinstance(handle, WorkerRunHandle) or handle.execution is None:
            raise TypeError(f"not a handle of this runner: {handle!r}")
        return handle

    async def wait(self, handle: RunHandle) -> ExecutionOutcome:
        """The job's outcome; CANCELLED for a job `cancel` stopped before it ended, once its
        worker is free (see the module's docstring). If the awaiting task is cancelled (the
        gateway is closing), the job is stopped too: its worker is killed and given back
        before this returns."""
        own = self._handle(handle)
        execution = own.execution
        assert execution is not None
        try:
            return await asyncio.shield(execution)
        except asyncio.CancelledError:
            if not own.ended:
                own.worker.kill()
            # The execution sees the kill and returns the worker; a second cancellation of
            # this task leaves that to the execution alone.
            await asyncio.wait({execution})
            raise

    async def cancel(self, handle: RunHandle) -> None:
        own = self._handle(handle)
        if own.ended:  # finished first: its worker may already run another job
            return
        own.cancel_requested = True
        left = self._kill_after_s - (self._clock() - own.started)
        if left <= 0:
            own.worker.kill()
        elif own.kill_timer is None:
            own.kill_timer = asyncio.get_running_loop().call_later(left, _kill_unless_ended, own)

    async def probe(self, prepared: PreparedJob, timeout: float) -> None:
        try:
            worker = await self._pool.acquire(timeout=timeout)
        except TimeoutError:
            raise ProbeSkipped("every worker is busy") from None
        recycle = True
        try:
            async with asyncio.timeout(timeout):
                await worker.execute(prepared.payload)
            recycle = False
        except TimeoutError:
            worker.kill()  # a probe past its time is stopped like a job
            raise
        except asyncio.CancelledError:
            worker.kill()
            raise
        except ExecutionError as error:
            recycle = _recycle(error)
            raise
        finally:
            await self._pool.release(worker, broken=recycle or not worker.alive)
