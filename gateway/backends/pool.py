"""A fixed-size pool of warm worker processes for one simulator backend.

A worker that dies (crash, kill, cancellation) is replaced when it is returned to the pool.
"""

from __future__ import annotations

import asyncio
import logging

from gateway.backends.base import AdapterContext
from gateway.backends.worker import WorkerProcess

log = logging.getLogger(__name__)


class WorkerPool:
    def __init__(self, adapter_name: str, context: AdapterContext, size: int) -> None:
        self._adapter_name = adapter_name
        self._context = context
        self.size = size
        self._idle: asyncio.Queue[WorkerProcess] = asyncio.Queue()
        self._all: set[WorkerProcess] = set()
        self._closed = False
        self._replacing: set[asyncio.Task[None]] = set()

    @property
    def in_use(self) -> int:
        return len(self._all) - self._idle.qsize()

    @property
    def idle(self) -> int:
        return self._idle.qsize()

    def pids(self) -> list[int]:
        return sorted(w.pid for w in self._all)

    async def start(self) -> None:
        workers = await asyncio.gather(*(self._spawn() for _ in range(self.size)))
        for worker in workers:
            self._idle.put_nowait(worker)

    async def _spawn(self) -> WorkerProcess:
        worker = await WorkerProcess.start(self._adapter_name, self._context)
        self._all.add(worker)
        return worker

    async def checkout(self) -> WorkerProcess:
        """An idle worker, waiting (not polling) until one is free."""
        return await self._idle.get()

    def checkin(self, worker: WorkerProcess) -> None:
        """Returns a worker; a dead one is replaced in the background."""
        if worker.alive:
            self._idle.put_nowait(worker)
            return
        self._all.discard(worker)
        if not self._closed:
            task = asyncio.get_running_loop().create_task(self._replace(worker))
            self._replacing.add(task)
            task.add_done_callback(self._replacing.discard)

    async def _replace(self, dead: WorkerProcess) -> None:
        await dead.wait()
        while not self._closed:
            try:
                self._idle.put_nowait(await self._spawn())
                return
            except Exception:
                log.exception("could not start a %s worker; retrying", self._context.name)
                await asyncio.sleep(1.0)  # back off between failed process starts

    async def close(self) -> None:
        self._closed = True
        for task in list(self._replacing):
            task.cancel()
        await asyncio.gather(*(w.stop() for w in list(self._all)), return_exceptions=True)
        self._all.clear()
