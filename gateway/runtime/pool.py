"""A pool of backend instances: warm simulator workers, provider clients or provider sessions.

min/max instances, a health check when an instance is checked out, a maximum instance age, idle
eviction, an acquire timeout and a creation rate limit. Callers wait on a condition for an
instance, never in a busy loop; the backend's concurrency limit is max_instances.

An instance holds its place in the pool from the moment its creation is reserved until its
destruction has finished, so the number of live instances (processes, sessions) never exceeds
max_instances, not even while a broken one is still exiting.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

import anyio

from gateway.domain.backends import InstanceStats

log = logging.getLogger(__name__)

T = TypeVar("T")


class InstanceFactory(Protocol[T]):
    async def create(self) -> T:
        """A new, ready instance."""

    async def check(self, instance: T) -> bool:
        """Is the instance still usable? Called at every checkout."""

    async def destroy(self, instance: T) -> None:
        """Releases the instance's resources (stops a process, closes a session)."""


@dataclass(frozen=True)
class PoolLimits:
    min_instances: int = 1
    max_instances: int = 1
    max_age_s: float = 3600.0
    idle_timeout_s: float = 600.0
    acquire_timeout_s: float = 30.0
    # Instance creations per second once a burst of max_instances is spent (inf: no limit), so
    # a client whose every job kills its worker cannot make the pool respawn faster than this.
    max_creations_per_s: float = math.inf


@dataclass(eq=False)
class _Slot(Generic[T]):
    instance: T
    created_at: float
    last_used: float


class _CreationBucket:
    """A token bucket for instance creations: `burst` at once, then `rate` per second.

    Callers that find it empty sleep until their token is due (in arrival order, behind a fair
    lock), so a flood of replacements is spaced out instead of spinning."""

    def __init__(
        self,
        rate: float,
        burst: int,
        clock: Callable[[], float],
        sleep: Callable[[float], Awaitable[None]],
    ) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._tokens = float(burst)
        self._clock = clock
        self._sleep = sleep
        self._stamp = clock()
        self._lock = anyio.Lock()

    async def take(self) -> None:
        if math.isinf(self._rate):
            return
        async with self._lock:
            while True:
                now = self._clock()
                elapsed = max(0.0, now - self._stamp)
                self._tokens = min(self._burst, self._tokens + elapsed * self._rate)
                self._stamp = now
                # The tolerance absorbs float rounding after a sleep of exactly the deficit.
                if self._tokens >= 1.0 - 1e-9:
                    self._tokens -= 1.0
                    return
                await self._sleep((1.0 - self._tokens) / self._rate)


class Pool(Generic[T]):
    def __init__(
        self,
        factory: InstanceFactory[T],
        limits: PoolLimits,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
    ) -> None:
        self._factory = factory
        self.limits = limits
        self._clock = clock
        self._cond = anyio.Condition()
        self._idle: list[_Slot[T]] = []
        self._in_use: dict[int, _Slot[T]] = {}
        self._size = 0  # idle + in use + being created + being destroyed
        self._high_water = 0
        self._waiting = 0
        self._closed = False
        # Instances discarded as broken (crashed, killed, failed a check): worker restarts,
        # observed by telemetry (qgateway.worker.restarts).
        self.discarded = 0
        self._bucket = _CreationBucket(
            limits.max_creations_per_s, max(1, limits.max_instances), clock, sleep
        )

    def stats(self) -> InstanceStats:
        return InstanceStats(
            in_use=len(self._in_use),
            idle=len(self._idle),
            waiting=self._waiting,
            min_instances=self.limits.min_instances,
            max_instances=self.limits.max_instances,
            high_water=self._high_water,
            discarded=self.discarded,
        )

    async def start(self) -> None:
        """Tops the pool up to min_instances, creating concurrently. Instances that already
        exist or are being created count: after a restart with a backlog, dispatchers acquire
        (and create) before start() runs."""
        async with anyio.create_task_group() as tg:
            for _ in range(self.limits.min_instances):
                tg.start_soon(self._top_up_one)

    def _reserve(self) -> None:
        """Takes a place for an instance about to be created; the caller holds the lock."""
        self._size += 1
        self._high_water = max(self._high_water, self._size)

    async def _top_up_one(self) -> bool:
        """Creates one idle instance if the pool is below min_instances; False if it is not.
        The place is reserved under the lock, so concurrent top-ups and acquirers never
        together pass the limits."""
        async with self._cond:
            if self._closed or self._size >= self.limits.min_instances:
                return False
            self._reserve()
        slot = await self._create_slot()
        with anyio.CancelScope(shield=True):  # see _create_in_use
            async with self._cond:
                self._idle.append(slot)
                self._cond.notify()
        return True

    async def acquire(self, timeout: float | None = None) -> T:
        """An instance, waiting up to `timeout` (default: the pool's acquire timeout; math.inf
        waits for ever). Raises TimeoutError when none became free in time."""
        # The common case, an idle instance and nobody waiting ahead, needs no lock: every
        # change of the pool's lists happens between awaits on the one event loop.
        if self._idle and not self._waiting and not self._closed:
            warm = self._idle.pop()  # most recently used: warmest
            self._in_use[id(warm.instance)] = warm
            if await self._usable(warm):
                return warm.instance
            await self._discard(warm)
        limit = self.limits.acquire_timeout_s if timeout is None else timeout
        with anyio.fail_after(None if math.isinf(limit) else limit):
            while True:
                slot, create = await self._take_or_reserve()
                if create:
                    return await self._create_in_use()
                assert slot is not None
                if await self._usable(slot):
                    return slot.instance
                await self._discard(slot)

    async def _take_or_reserve(self) -> tuple[_Slot[T] | None, bool]:
        async with self._cond:
            self._waiting += 1
            try:
                while True:
                    if self._closed:
                        raise RuntimeError("pool is closed")
                    if self._idle:
                        slot = self._idle.pop()  # most recently used: warmest
                        self._in_use[id(slot.instance)] = slot
                        return slot, False
                    if self._size < self.limits.max_instances:
                        self._reserve()
                        return None, True
                    await self._cond.wait()
            finally:
                self._waiting -= 1

    async def _free_place(self) -> None:
        """Gives back the place of an instance that was never created or is destroyed now."""
        # Shielded: this runs while a timeout or cancellation is unwinding the caller, and the
        # count must be right or the pool believes in an instance that never came.
        with anyio.CancelScope(shield=True):
            async with self._cond:
                self._size -= 1
                self._cond.notify()

    async def _create_in_use(self) -> T:
        slot = await self._create_slot()
        # Shielded: a deadline that passes as the instance comes up must not lose it. The
        # lock is a cancellation point even when free, and an instance created but in neither
        # list kept its place counted and its process running for good (a compile pool of 2
        # lost to two such timeouts refused every uncached compile).
        with anyio.CancelScope(shield=True):
            async with self._cond:
                self._in_use[id(slot.instance)] = slot
        return slot.instance

    async def _create_slot(self) -> _Slot[T]:
        """Creates an instance for a place already reserved; gives the place back on failure
        (also when the caller times out while waiting for a creation token)."""
        try:
            await self._bucket.take()
            instance = await self._factory.create()
        except BaseException:
            await self._free_place()
            raise
        now = self._clock()
        return _Slot(instance, now, now)

    async def _usable(self, slot: _Slot[T]) -> bool:
        if self._clock() - slot.created_at > self.limits.max_age_s:
            return False
        try:
            return await self._factory.check(slot.instance)
        except Exception:
            log.exception("instance check failed")
            return False

    async def _discard(self, slot: _Slot[T]) -> None:
        with anyio.CancelScope(shield=True):
            async with self._cond:
                self._in_use.pop(id(slot.instance), None)
            await self._destroy(slot.instance)
            await self._free_place()

    async def _destroy(self, instance: T) -> None:
        try:
            await self._factory.destroy(instance)
        except Exception:
            log.exception("could not destroy a pool instance")

    async def release(self, instance: T, *, broken: bool = False) -> None:
        """Returns an instance; a broken one (crashed, killed, recycled) is destroyed instead."""
        if not (broken or self._closed or self._waiting):
            # The common case needs no lock and no notification (see acquire).
            slot = self._in_use.pop(id(instance), None)
            if slot is not None:
                slot.last_used = self._clock()
                self._idle.append(slot)
            return
        with anyio.CancelScope(shield=True):
            await self._release(instance, broken)

    async def _release(self, instance: T, broken: bool) -> None:
        async with self._cond:
            slot = self._in_use.pop(id(instance), None)
            if slot is None:
                return
            if not (broken or self._closed):
                slot.last_used = self._clock()
                self._idle.append(slot)
                self._cond.notify()
                return
            if broken:
                self.discarded += 1
        await self._destroy(instance)
        await self._free_place()

    async def maintain(self) -> None:
        """Evicts instances idle too long or too old (keeping min_instances), then tops the pool
        up to min_instances. Called periodically by the owner."""
        now = self._clock()
        evicted: list[_Slot[T]] = []
        async with self._cond:
            keep: list[_Slot[T]] = []
            for slot in sorted(self._idle, key=lambda s: s.last_used, reverse=True):
                expired = now - slot.created_at > self.limits.max_age_s
                stale = now - slot.last_used > self.limits.idle_timeout_s
                if expired or (stale and len(keep) >= self.limits.min_instances):
                    evicted.append(slot)
                else:
                    keep.append(slot)
            self._idle = keep
        with anyio.CancelScope(shield=True):
            for slot in evicted:
                await self._destroy(slot.instance)
                await self._free_place()
        while True:
            try:
                if not await self._top_up_one():
                    break
            except Exception:
                log.exception("could not top the pool up to its minimum")
                break

    async def close(self) -> None:
        async with self._cond:
            self._closed = True
            idle, self._idle = self._idle, []
            self._cond.notify_all()
        for slot in idle:
            await self._destroy(slot.instance)
            await self._free_place()
        for slot in list(self._in_use.values()):
            await self._destroy(slot.instance)
