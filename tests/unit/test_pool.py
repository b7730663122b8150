"""The instance pool, with an in-memory factory (the worker factory is covered end to end)."""

from __future__ import annotations

import math

import anyio
import pytest

from gateway.backends.pool import Pool, PoolLimits


class Factory:
    def __init__(self, create_delay: float = 0.0) -> None:
        self.created = 0
        self.destroyed: list[int] = []
        self.broken: set[int] = set()
        self.create_delay = create_delay
        self.gate = anyio.Event()

    async def create(self) -> int:
        if self.create_delay:
            await self.gate.wait()  # held until the test releases it
        self.created += 1
        return self.created

    async def check(self, instance: int) -> bool:
        return instance not in self.broken

    async def destroy(self, instance: int) -> None:
        self.destroyed.append(instance)


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.anyio
async def test_min_max_and_waiting() -> None:
    factory = Factory()
    pool = Pool(factory, PoolLimits(min_instances=1, max_instances=2, acquire_timeout_s=5))
    await pool.start()
    assert pool.stats().idle == 1
    a = await pool.acquire()
    b = await pool.acquire()
    assert {a, b} == {1, 2} and pool.stats().in_use == 2
    got: list[int] = []
    async with anyio.create_task_group() as tg:

        async def third() -> None:
            got.append(await pool.acquire())

        tg.start_soon(third)
        await anyio.wait_all_tasks_blocked()
        assert pool.stats().waiting == 1
        await pool.release(a)
    assert got == [a]
    with pytest.raises(TimeoutError):
        await pool.acquire(timeout=0.05)


@pytest.mark.anyio
async def test_checkout_check_and_max_age_replace_instances() -> None:
    factory, clock = Factory(), Clock()
    pool = Pool(factory, PoolLimits(min_instances=1, max_instances=1, max_age_s=10), clock)
    await pool.start()
    one = await pool.acquire()
    await pool.release(one)
    factory.broken.add(one)
    two = await pool.acquire()  # the broken one is destroyed, a new one created
    assert two != one and one in factory.destroyed
    await pool.release(two)
    clock.now += 11
    three = await pool.acquire()  # too old
    assert three not in (one, two) and two in factory.destroyed


@pytest.mark.anyio
async def test_broken_release_and_idle_eviction_keep_the_minimum() -> None:
    factory, clock = Factory(), Clock()
    pool = Pool(factory, PoolLimits(min_instances=1, max_instances=3, idle_timeout_s=5), clock)
    await pool.start()
    held = [await pool.acquire() for _ in range(3)]
    await pool.release(held[0], broken=True)
    assert held[0] in factory.destroyed
    await pool.release(held[1])
    await pool.release(held[2])
    clock.now += 6
    await pool.maintain()
    stats = pool.stats()
    assert stats.idle == 1 and stats.in_use == 0  # evicted down to min_instances


@pytest.mark.anyio
async def test_a_timeout_during_creation_does_not_leak_capacity() -> None:
    factory = Factory(create_delay=1.0)
    pool = Pool(factory, PoolLimits(min_instances=0, max_instances=1))
    with pytest.raises(TimeoutError):
        await pool.acquire(timeout=0.05)  # gives up while the instance is being created
    factory.gate.set()
    instance = await pool.acquire(timeout=math.inf)  # capacity was given back
    assert instance == 1
