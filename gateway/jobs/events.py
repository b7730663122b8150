"""In-process publication of job state changes to watchers (WatchJob, Run)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from gateway.domain.jobs import Job


@dataclass(frozen=True)
class WatchEvent:
    """One event of a watch: the job after a change, or again as a heartbeat (nothing changed
    for the heartbeat interval; its queue position may have)."""

    job: Job
    heartbeat: bool = False


class JobEvents:
    def __init__(self) -> None:
        self._subscribers: dict[str, set[asyncio.Queue[Job]]] = {}

    @contextmanager
    def subscribe(self, job_id: str) -> Iterator[asyncio.Queue[Job]]:
        """Every change published for job_id while the block runs lands in the queue."""
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
