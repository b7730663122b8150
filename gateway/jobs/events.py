"""The event-bus port: how watchers (WatchJob, Run) hear of a job's changes.

Publishers are the job core's transitions (gateway.jobs.transitions), after each change is
committed. `MemoryEventBus` serves one process; processes sharing a store need a bus that
delivers every change committed by any of them (gateway.jobs.peer_events on one host's SQLite
store; PostgreSQL LISTEN/NOTIFY for replicas on several).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Protocol

from gateway.domain.jobs import Job


@dataclass(frozen=True)
class WatchEvent:
    """One event of a watch: the job after a change, or again as a heartbeat (nothing changed
    for the heartbeat interval; its queue position may have)."""

    job: Job
    heartbeat: bool = False


class EventBus(Protocol):
    def subscribe(self, job_id: str) -> AbstractContextManager[asyncio.Queue[Job]]:
        """Every change published for job_id while the block runs lands in the queue."""

    def publish(self, job: Job) -> None:
        """A committed change of `job`, to every subscriber of its id."""


class MemoryEventBus:
    """The bus of a single gateway process."""

    def __init__(self) -> None:
        self._subscribers: dict[str, set[asyncio.Queue[Job]]] = {}

    @contextmanager
    def subscribe(self, job_id: str) -> Iterator[asyncio.Queue[Job]]:
        queue: asyncio.Queue[Job] = asyncio.Queue()
        self._subscribers.setdefault(job_id, set()).add(queue)
        try:
            yield queue
        finally:
            subs = self._subscribers.get(job_id)
            if subs is not None:
                subs.discard(queue)
                if not subs:
                    del self._subscribers[job_id]

    def publish(self, job: Job) -> None:
        for queue in self._subscribers.get(job.id, ()):
            queue.put_nowait(job)

    def has_subscribers(self, job_id: str) -> bool:
        return job_id in self._subscribers
