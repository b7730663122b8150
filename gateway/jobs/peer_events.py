"""The event bus of gateway processes that share a store: every committed change reaches the
watchers of every process, and wakes the schedulers that could claim work because of it.

A process's own changes go to its watchers at once (MemoryEventBus) and, through `send`, to
its peers as a signal naming the job, its backend and its new state. A signal heard from a
peer is only a hint: the job is read from the store (once, however many signals arrive
meanwhile) and published to this process's watchers of it, and a job queued or claimed
elsewhere wakes this process's scheduler of its backend (a job to claim now, or a lease whose
lapse to wait for: a replica that died sends nothing more, so the survivor must already know).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from gateway.domain.jobs import Job, JobState
from gateway.jobs.events import MemoryEventBus
from gateway.store.base import Store

log = logging.getLogger(__name__)

# (job id, backend, state name): tells the peers of a committed change.
Send = Callable[[str, str, str], None]
# States that make a job claimable, or claimed under a lease another process may take over.
_WAKING = frozenset({JobState.QUEUED.value, JobState.RUNNING.value})


class PeerEventBus:
    """Args:
    store: Where a peer's change is read from.
    send: Tells the peers of this process's changes (gateway.store.peer_signals).
    """

    def __init__(self, store: Store, send: Send) -> None:
        self._local = MemoryEventBus()
        self._store = store
        self._send = send
        self._wakers: dict[str, Callable[[], None]] = {}
        # Jobs being read for this process's watchers: True when a signal came during the
        # read (it may have read the state before that change: read again).
        self._reading: dict[str, bool] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    @contextmanager
    def subscribe(self, job_id: str) -> Iterator[asyncio.Queue[Job]]:
        with self._local.subscribe(job_id) as queue:
            yield queue

    def publish(self, job: Job) -> None:
        self._local.publish(job)
        self._send(job.id, job.placement or job.backend, job.state.value)

    def wake_on_changes(self, backend: str, wake: Callable[[], None]) -> None:
        """`wake` runs whenever a peer queues or claims a job on `backend`."""
        self._wakers[backend] = wake

    def heard(self, job_id: str, backend: str, state: str) -> None:
        """A peer's signal (gateway.store.peer_signals' on_signal)."""
        if state in _WAKING:
            wake = self._wakers.get(backend)
            if wake is not None:
                wake()
        if not self._local.has_subscribers(job_id):
            return
        if job_id in self._reading:
            self._reading[job_id] = True
            return
        self._reading[job_id] = False
        task = asyncio.create_task(self._read(job_id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _read(self, job_id: str) -> None:
        try:
            while True:
                try:
                    job = await self._store.get_job(job_id)
                except Exception:
                    log.exception("peer events: reading job %s failed", job_id)
                    return
                if job is not None:
                    self._local.publish(job)
                if not self._reading.get(job_id):
                    return
                self._reading[job_id] = False
        finally:
            self._reading.pop(job_id, None)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
