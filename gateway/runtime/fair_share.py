"""Fair sharing of a fixed number of slots (compile workers, prepare threads) across tenants.

While tenants wait, a freed slot goes to the waiting tenant that holds the fewest slots (among
equals, the one served least recently), so no tenant holds more than its share of a contended
resource; a tenant alone may use every slot, or `per_tenant` of them when that is set. Slots are
never taken back from a holder: a newcomer gets the next one to free.
"""

from __future__ import annotations

import asyncio
import math
import threading
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TypeVar

import anyio

from gateway.runtime.shielded import when_caller_left

T = TypeVar("T")


class FairShare:
    def __init__(self, capacity: int, *, per_tenant: int | None = None) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        if per_tenant is not None and per_tenant < 1:
            raise ValueError("per_tenant must be at least 1")
        self.capacity = capacity
        # Slots one tenant may hold at once, whoever else waits.
        self._per_tenant = capacity if per_tenant is None else per_tenant
        self._free = capacity
        self._held: Counter[str] = Counter()
        # Per tenant, its waiters in arrival order.
        self._waiting: dict[str, deque[asyncio.Future[None]]] = {}
        # When each tenant holding or waiting was last given a slot (a grant counter).
        self._served: dict[str, int] = {}
        self._grants = 0

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

    async def run_blocking(self, tenant: str, fn: Callable[[], T]) -> T:
        """fn() on a worker thread in one of `tenant`'s slots, held until fn returns.

        A thread cannot be stopped: freed with its caller, a tenant cancelling its calls ran
        any number at once. A call whose caller leaves while it still waits for a slot gives
        its place to the next, and one whose thread has not started fn yet never runs it; what
        a thread left behind raises is logged (gateway.runtime.shielded).
        """
        holding = False
        # Set when the caller leaves: a thread that has not started fn by then never runs it
        # (its slot frees at once), as gateway.runtime.blocking does for provider calls.
        left = threading.Event()

        def call() -> T:
            if left.is_set():
                raise asyncio.CancelledError
            return fn()

        async def in_slot() -> T:
            nonlocal holding
            async with self.slot(tenant):
                holding = True
                # The slots are the bound. anyio's default limiter (40 threads, shared with every
                # offload) capped prepare_threads above it and queued a slot's holder, first
                # come first served, behind other work.
                unbounded = anyio.CapacityLimiter(math.inf)
                return await anyio.to_thread.run_sync(call, limiter=unbounded)

        work = asyncio.ensure_future(in_slot())
        try:
            return await asyncio.shield(work)
        except asyncio.CancelledError:
            if holding:
                left.set()
                when_caller_left(work, lambda _: None)
            else:
                work.cancel()
            raise

    async def _acquire(self, tenant: str) -> None:
        if self._free and not self._waiting and self._held[tenant] < self._per_tenant:
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
        self._grants += 1
        self._served[tenant] = self._grants

    def _release(self, tenant: str) -> None:
        self._held[tenant] -= 1
        if not self._held[tenant]:
            del self._held[tenant]
            if tenant not in self._waiting:
                self._served.pop(tenant, None)  # idle now: no history to keep
        self._free += 1
        self._grant()

    def _forget(self, tenant: str, future: asyncio.Future[None]) -> None:
        queue = self._waiting.get(tenant)
        if queue is not None and future in queue:
            queue.remove(future)
        if queue is not None and not queue:
            del self._waiting[tenant]
        if tenant not in self._waiting and not self._held[tenant]:
            self._served.pop(tenant, None)

    def _grant(self) -> None:
        while self._free:
            eligible = [t for t in self._waiting if self._held[t] < self._per_tenant]
            if not eligible:
                return
            tenant = min(eligible, key=lambda t: (self._held[t], self._served.get(t, 0)))
            queue = self._waiting[tenant]
            future = queue.popleft()
            if not queue:
                del self._waiting[tenant]
            if future.done():
                # Its caller was cancelled and has not run yet (cancelling a task cancels the
                # future it awaits at once): it will find itself gone. Granting it would leak
                # the slot, and set_result would raise here, in whoever released.
                continue
            self._take(tenant)
            future.set_result(None)
