"""Fair sharing of a fixed number of slots (compile workers) across tenants.

While tenants wait, a freed slot goes to the waiting tenant that holds the fewest slots (in turn
among equals), so no tenant holds more than its share of a contended resource; a tenant alone may
use every slot. Slots are never taken back from a holder: a newcomer gets the next one to free.
"""

from __future__ import annotations

import asyncio
from collections import Counter, deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class FairShare:
    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self._free = capacity
        self._held: Counter[str] = Counter()
        # Per tenant, its waiters in arrival order; dict order is the tenants' turn order.
        self._waiting: dict[str, deque[asyncio.Future[None]]] = {}

    def held(self, tenant: str) -> int:
        return self._held[tenant]

    @property
    def waiting(self) -> int:
        return sum(len(q) for q in self._waiting.values())

    @asynccontextmanager
    async def slot(self, tenant: str) -> AsyncIterator[None]:
        """Holds one slot for `tenant` while the block runs."""
        await self._acquire(tenant)
        try:
            yield
        finally:
            self._release(tenant)

    async def _acquire(self, tenant: str) -> None:
        if self._free and not self._waiting:
            self._take(tenant)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(tenant, deque()).append(future)
        self._grant()
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self._release(tenant)  # granted just as the caller went away: give it back
            else:
                self._forget(tenant, future)
            raise

    def _take(self, tenant: str) -> None:
        self._free -= 1
        self._held[tenant] += 1

    def _release(self, tenant: str) -> None:
        self._held[tenant] -= 1
        if not self._held[tenant]:
            del self._held[tenant]
        self._free += 1
        self._grant()

    def _forget(self, tenant: str, future: asyncio.Future[None]) -> None:
        queue = self._waiting.get(tenant)
        if queue is None:
            return
        if future in queue:
            queue.remove(future)
        if not queue:
            del self._waiting[tenant]

    def _grant(self) -> None:
        while self._free and self._waiting:
            # The first tenant in turn order among those holding the fewest slots.
            tenant = min(self._waiting, key=lambda t: self._held[t])
            queue = self._waiting.pop(tenant)
            future = queue.popleft()
            if queue:
                self._waiting[tenant] = queue  # re-inserted last: its next turn comes after others
            self._take(tenant)
            future.set_result(None)
