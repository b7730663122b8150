"""The instance pool, with an in-memory factory (the worker factory is covered end to end)."""

from __future__ import annotations

import asyncio
import math
import time

import anyio
import pytest

from gateway.config import PoolConfig
from gateway.runtime.pool import Pool, PoolLimits


class Factory:
    def __init__(self, create_delay: float = 0.0) -> None:
        self.created = 0
        self.destroyed: list[int] = []
        self.broken: set[int] = set()
        self.create_delay = create_delay
        self.gate = anyio.Event()
        self.destroy_gate: anyio.Event | None = None
        self.clock: Clock | None = None
        self.created_at: list[float] = []

    async def create(self) -> int:
        if self.create_delay:
            await self.gate.wait()  # held until the test releases it
        self.created += 1
        if self.clock is not None:
            self.created_at.append(self.clock.now)
        return self.created

    async def check(self, instance: int) -> bool:
        return instance not in self.broken

    async def destroy(self, instance: int) -> None:
        if self.destroy_gate is not None:
            await self.destroy_gate.wait()  # a process that takes its time to exit
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
async def test_max_age_counts_from_creation_not_from_the_last_use() -> None:
    # An instance in constant use is still recycled once it is older than max_age_s.
    factory, clock = Factory(), Clock()
    pool = Pool(factory, PoolLimits(min_instances=1, max_instances=1, max_age_s=10), clock)
    await pool.start()
    one = await pool.acquire()
    clock.now = 9.5
    await pool.release(one)  # last used at 9.5, created at 0
    clock.now = 10.5
    two = await pool.acquire()
    assert two != one and one in factory.destroyed


@pytest.mark.anyio
async def test_idle_eviction_keeps_the_minimum_without_recreating_it() -> None:
    factory, clock = Factory(), Clock()
    pool = Pool(factory, PoolLimits(min_instances=1, max_instances=2, idle_timeout_s=5), clock)
    await pool.start()
    clock.now += 6
    await pool.maintain()  # the one idle instance is the minimum: kept, not churned
    assert (factory.created, factory.destroyed, pool.stats().idle) == (1, [], 1)


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


@pytest.mark.anyio
async def test_an_instance_ready_as_the_acquire_deadline_passes_is_kept() -> None:
    # Its "ready" and the acquire's deadline came due in one loop iteration (the loop busy just
    # before): the lock taken after the creation raised the timeout, and the instance, in
    # neither list, kept its place and its process for good (the pool one smaller each time).
    class ReadyAtTheDeadline(Factory):
        async def create(self) -> int:
            loop = asyncio.get_running_loop()
            deadline = anyio.current_effective_deadline()
            loop.call_at(deadline - 0.010, time.sleep, 0.02)  # the loop busy past the deadline
            ready: asyncio.Future[None] = loop.create_future()
            loop.call_at(deadline - 0.003, ready.set_result, None)
            await ready
            return await super().create()

    pool = Pool(ReadyAtTheDeadline(), PoolLimits(min_instances=0, max_instances=1))
    instance = await pool.acquire(timeout=0.2)
    await pool.release(instance)
    assert await pool.acquire(timeout=0.2) == instance  # still the pool's one instance


@pytest.mark.anyio
async def test_start_counts_instances_dispatchers_already_created() -> None:
    # After a restart with a backlog, dispatchers acquire (and create) before start() runs.
    factory = Factory()
    pool = Pool(factory, PoolLimits(min_instances=2, max_instances=2))
    held = [await pool.acquire(), await pool.acquire()]
    await pool.start()
    assert factory.created == 2
    stats = pool.stats()
    assert (stats.in_use, stats.idle, stats.high_water) == (2, 0, 2)
    for instance in held:
        await pool.release(instance)
    assert pool.stats().high_water == 2


@pytest.mark.anyio
async def test_start_counts_instances_still_being_created() -> None:
    factory = Factory(create_delay=1.0)
    pool = Pool(factory, PoolLimits(min_instances=2, max_instances=2))
    got: list[int] = []
    async with anyio.create_task_group() as tg:

        async def dispatcher() -> None:
            got.append(await pool.acquire(timeout=math.inf))

        tg.start_soon(dispatcher)
        await anyio.wait_all_tasks_blocked()  # its instance is being created
        tg.start_soon(pool.start)
        await anyio.wait_all_tasks_blocked()
        factory.gate.set()
    stats = pool.stats()
    assert factory.created == 2 and stats.high_water == 2
    assert (stats.in_use, stats.idle) == (1, 1)


@pytest.mark.anyio
async def test_a_broken_instance_holds_its_place_until_destroyed() -> None:
    factory = Factory()
    pool = Pool(factory, PoolLimits(min_instances=1, max_instances=1))
    await pool.start()
    one = await pool.acquire()
    factory.destroy_gate = anyio.Event()
    got: list[int] = []
    created_while_exiting = -1
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: pool.release(one, broken=True))

        async def replacement() -> None:
            got.append(await pool.acquire(timeout=math.inf))

        tg.start_soon(replacement)
        await anyio.wait_all_tasks_blocked()
        created_while_exiting = factory.created
        factory.destroy_gate.set()  # before asserting: a shielded destroy would wait for ever
    # The old process was still exiting: no second one may exist beside it.
    assert created_while_exiting == 1
    assert got == [2] and factory.destroyed == [1]
    assert pool.stats().high_water == 1


@pytest.mark.anyio
async def test_maintain_tops_up_without_passing_the_maximum() -> None:
    factory, clock = Factory(), Clock()
    pool = Pool(factory, PoolLimits(min_instances=2, max_instances=2, max_age_s=10), clock)
    await pool.start()
    held = await pool.acquire()
    clock.now += 11  # the idle one is too old: replaced; the one in use is not touched
    await pool.maintain()
    stats = pool.stats()
    assert (stats.in_use, stats.idle, stats.high_water) == (1, 1, 2)
    await pool.release(held)


class SleepingClock(Clock):
    """A clock that only moves when the pool sleeps: waits are exact and recorded."""

    def __init__(self) -> None:
        self.sleeps: list[float] = []

    async def sleep(self, delay: float) -> None:
        self.sleeps.append(delay)
        self.now += delay
        await anyio.sleep(0)


def _paced_pool(
    min_instances: int, max_instances: int, per_s: float
) -> tuple[Pool[int], Factory, SleepingClock]:
    """A pool creating at most `per_s` instances a second, on a clock the test moves."""
    clock = SleepingClock()
    factory = Factory()
    factory.clock = clock
    limits = PoolLimits(
        min_instances=min_instances, max_instances=max_instances, max_creations_per_s=per_s
    )
    return Pool(factory, limits, clock, sleep=clock.sleep), factory, clock


@pytest.mark.anyio
async def test_creations_past_the_burst_are_spaced_at_the_configured_rate() -> None:
    pool, factory, clock = _paced_pool(3, 3, 4.0)
    await pool.start()  # the first min_instances creations are within the burst
    assert factory.created_at == [0.0, 0.0, 0.0] and clock.sleeps == []
    for _ in range(3):
        # Every job kills its worker: each replacement waits for a token (the first round runs
        # on the instances start() made).
        held = [await pool.acquire() for _ in range(3)]
        for instance in held:
            await pool.release(instance, broken=True)
    assert factory.created_at == [0.0, 0.0, 0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5]
    assert clock.sleeps == [0.25] * 6  # one wait per creation, never a busy loop


@pytest.mark.anyio
async def test_concurrent_creations_wait_their_turn_for_a_token() -> None:
    pool, factory, clock = _paced_pool(0, 4, 2.0)
    got: list[int] = []
    async with anyio.create_task_group() as tg:
        for _ in range(4):
            tg.start_soon(lambda: _acquire_into(pool, got))
    clock.now = 10.0  # the bucket refills to its burst (max_instances), not beyond
    for instance in got:
        await pool.release(instance, broken=True)
    async with anyio.create_task_group() as tg:
        for _ in range(4):
            tg.start_soon(lambda: _acquire_into(pool, got))
    assert factory.created_at == [0.0] * 4 + [10.0] * 4
    assert pool.stats().high_water == 4


async def _acquire_into(pool: Pool[int], out: list[int]) -> None:
    out.append(await pool.acquire())


@pytest.mark.anyio
async def test_a_timeout_while_waiting_for_a_token_gives_the_place_back() -> None:
    factory = Factory()
    pool = Pool(factory, PoolLimits(min_instances=0, max_instances=1, max_creations_per_s=0.5))
    one = await pool.acquire()  # the burst's only token
    await pool.release(one, broken=True)
    with pytest.raises(TimeoutError):
        await pool.acquire(timeout=0.05)  # the next token comes in 2 s
    stats = pool.stats()
    assert (stats.in_use, stats.idle, factory.created) == (0, 0, 1)


def test_pool_config_carries_the_creation_rate() -> None:
    limits = PoolConfig(min_instances=1, max_instances=3, max_creations_per_s=0.5).limits()
    assert limits.max_creations_per_s == 0.5
    assert PoolConfig().limits().max_creations_per_s > 0


@pytest.mark.anyio
async def test_broken_instances_are_counted_as_restarts() -> None:
    # Telemetry's qgateway.worker.restarts reads this count.
    pool = Pool(Factory(), PoolLimits(min_instances=1, max_instances=2, acquire_timeout_s=5))
    await pool.start()
    first = await pool.acquire()
    await pool.release(first)  # healthy: reused, not a restart
    assert pool.discarded == 0
    again = await pool.acquire()
    await pool.release(again, broken=True)
    assert pool.discarded == 1
    assert pool.stats().discarded == 1  # what metrics read through any wrapping runner
    await pool.close()


@pytest.mark.anyio
async def test_a_long_idle_spell_banks_no_more_tokens_than_the_burst() -> None:
    pool, factory, clock = _paced_pool(0, 2, 2.0)
    clock.now = 100.0  # long idle: the bucket is full, with max_instances tokens, not 200
    for _ in range(2):
        held = [await pool.acquire() for _ in range(2)]
        for instance in held:
            await pool.release(instance, broken=True)
    assert factory.created_at == [100.0, 100.0, 100.5, 101.0]


@pytest.mark.anyio
async def test_an_instance_that_died_while_idle_is_not_handed_to_a_waiter() -> None:
    factory = Factory()
    pool = Pool(factory, PoolLimits(min_instances=1, max_instances=1, acquire_timeout_s=5))
    await pool.start()
    first = await pool.acquire()
    got: list[int] = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(_acquire_into, pool, got)
        await anyio.wait_all_tasks_blocked()
        assert pool.stats().waiting == 1
        factory.broken.add(first)  # the worker dies as it is given back
        await pool.release(first)
    assert got == [2] and first in factory.destroyed


class RaisingCheckFactory(Factory):
    async def check(self, instance: int) -> bool:
        if instance in self.broken:
            raise ConnectionResetError("the worker's pipe is gone")
        return True


@pytest.mark.anyio
async def test_an_instance_whose_check_raises_is_replaced() -> None:
    factory = RaisingCheckFactory()
    pool = Pool(factory, PoolLimits(min_instances=1, max_instances=1))
    await pool.start()
    one = await pool.acquire()
    await pool.release(one)
    factory.broken.add(one)
    two = await pool.acquire()
    assert two != one and one in factory.destroyed


@pytest.mark.anyio
async def test_idle_time_counts_from_the_last_release() -> None:
    factory, clock = Factory(), Clock()
    limits = PoolLimits(min_instances=0, max_instances=1, idle_timeout_s=5, max_age_s=100)
    pool = Pool(factory, limits, clock)
    one = await pool.acquire()
    clock.now = 4.0
    await pool.release(one)  # idle since 4, created at 0
    clock.now = 6.0
    await pool.maintain()
    assert factory.destroyed == [] and pool.stats().idle == 1
    clock.now = 9.5
    await pool.maintain()
    assert factory.destroyed == [one] and pool.stats().idle == 0


@pytest.mark.anyio
async def test_maintain_replaces_an_idle_instance_past_its_max_age() -> None:
    factory, clock = Factory(), Clock()
    pool = Pool(factory, PoolLimits(min_instances=1, max_instances=1, max_age_s=10), clock)
    await pool.start()
    clock.now = 11.0
    await pool.maintain()  # recycled in the background, not at the next checkout
    assert factory.destroyed == [1] and factory.created == 2 and pool.stats().idle == 1


@pytest.mark.anyio
async def test_idle_eviction_keeps_the_most_recently_used_instances() -> None:
    factory, clock = Factory(), Clock()
    pool = Pool(factory, PoolLimits(min_instances=1, max_instances=2, idle_timeout_s=5), clock)
    a, b = await pool.acquire(), await pool.acquire()
    await pool.release(a)  # idle since 0
    clock.now = 4.0
    await pool.release(b)  # idle since 4
    clock.now = 6.0  # a is stale, b is not: the pool shrinks to its minimum, keeping b
    await pool.maintain()
    assert factory.destroyed == [a] and pool.stats().idle == 1


@pytest.mark.anyio
async def test_maintain_restores_every_missing_instance_of_the_minimum() -> None:
    factory = Factory()
    pool = Pool(factory, PoolLimits(min_instances=3, max_instances=3))
    await pool.start()
    held = [await pool.acquire() for _ in range(3)]
    for instance in held:
        await pool.release(instance, broken=True)
    await pool.maintain()
    assert pool.stats().idle == 3 and factory.created == 6


@pytest.mark.anyio
async def test_close_destroys_the_instances_in_use_too() -> None:
    factory = Factory()
    pool = Pool(factory, PoolLimits(min_instances=2, max_instances=2))
    await pool.start()
    held = await pool.acquire()
    await pool.close()
    assert sorted(factory.destroyed) == [1, 2] and held in factory.destroyed


@pytest.mark.anyio
async def test_checkout_takes_the_most_recently_used_instance() -> None:
    # Last in, first out: the others stay idle long enough to be evicted when load drops.
    factory = Factory()
    pool = Pool(factory, PoolLimits(min_instances=0, max_instances=2))
    a, b = await pool.acquire(), await pool.acquire()
    await pool.release(a)
    await pool.release(b)
    assert await pool.acquire() == b
