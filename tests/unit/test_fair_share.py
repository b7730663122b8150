"""FairShare: compile-worker slots shared across tenants (in process, deterministic)."""

from __future__ import annotations

import asyncio

import pytest

from gateway.runtime.fair_share import FairShare


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


@pytest.mark.anyio
async def test_a_lone_tenant_may_use_every_slot() -> None:
    fair = FairShare(3)
    entered = 0
    release = asyncio.Event()

    async def hold() -> None:
        nonlocal entered
        async with fair.slot("alice"):
            entered += 1
            await release.wait()

    tasks = [asyncio.create_task(hold()) for _ in range(4)]
    await _settle()
    assert entered == 3 and fair.held("alice") == 3 and fair.waiting == 1
    release.set()
    await asyncio.gather(*tasks)
    assert entered == 4 and fair.held("alice") == 0


@pytest.mark.anyio
async def test_a_freed_slot_goes_to_the_tenant_holding_fewest() -> None:
    fair = FairShare(2)
    order: list[str] = []
    gates = {name: asyncio.Event() for name in ("a1", "a2", "a3", "a4", "b1", "c1")}

    async def job(name: str) -> None:
        async with fair.slot(name[0]):
            order.append(name)
            await gates[name].wait()

    tasks = [asyncio.create_task(job(n)) for n in ("a1", "a2", "a3", "a4")]
    await _settle()
    tasks += [asyncio.create_task(job(n)) for n in ("b1", "c1")]
    await _settle()
    assert order == ["a1", "a2"]
    gates["a1"].set()
    await _settle()
    # b and c hold nothing and a holds one: b (first in turn) gets the slot, not a3.
    assert order == ["a1", "a2", "b1"]
    gates["a2"].set()
    await _settle()
    assert order == ["a1", "a2", "b1", "c1"]
    gates["b1"].set()
    await _settle()
    assert order[-1] == "a3"
    for gate in gates.values():
        gate.set()
    await asyncio.gather(*tasks)
    assert fair.waiting == 0 and fair.held("a") == 0


@pytest.mark.anyio
async def test_a_cancelled_waiter_gives_its_place_back() -> None:
    fair = FairShare(1)
    release = asyncio.Event()

    async def hold(tenant: str) -> None:
        async with fair.slot(tenant):
            await release.wait()

    holder = asyncio.create_task(hold("a"))
    await _settle()
    waiter = asyncio.create_task(hold("b"))
    await _settle()
    assert fair.waiting == 1
    waiter.cancel()
    await asyncio.gather(waiter, return_exceptions=True)
    assert fair.waiting == 0
    release.set()
    await holder
    # The slot is free again: a new tenant gets it at once.
    async with fair.slot("c"):
        assert fair.held("c") == 1


@pytest.mark.anyio
async def test_a_waiter_cancelled_as_a_slot_frees_neither_takes_it_nor_breaks_the_release() -> None:
    # Cancelling a task cancels the future it awaits at once, before its except clause runs: a
    # release in the same loop turn found that future still queued and granted it the slot
    # (set_result raised in the releasing holder, and the slot was never given back).
    fair = FairShare(1)
    release = asyncio.Event()

    async def hold(tenant: str) -> None:
        async with fair.slot(tenant):
            await release.wait()

    holder = asyncio.create_task(hold("alice"))
    await _settle()
    waiter = asyncio.create_task(hold("bob"))
    await _settle()
    assert fair.waiting == 1
    release.set()  # the holder's release runs in the next turn ...
    waiter.cancel()  # ... after the waiter's future is already cancelled
    done = await asyncio.gather(holder, waiter, return_exceptions=True)
    assert done[0] is None and isinstance(done[1], asyncio.CancelledError)
    assert fair.held("alice") == fair.held("bob") == 0 and fair.waiting == 0
    async with fair.slot("carol"):  # the one slot is free again
        assert fair.held("carol") == 1


@pytest.mark.anyio
async def test_fewest_held_wins_over_least_recently_served() -> None:
    # b was served more recently than a, but holds nothing while a holds two: the freed slot
    # goes to b (fewest held is the first rule, recency only breaks ties).
    fair = FairShare(3)
    order: list[str] = []
    gates = {name: asyncio.Event() for name in ("a1", "a2", "b1", "a3", "b2")}

    async def job(name: str) -> None:
        async with fair.slot(name[0]):
            order.append(name)
            await gates[name].wait()

    tasks = [asyncio.create_task(job(n)) for n in ("a1", "a2", "b1")]
    await _settle()
    tasks += [asyncio.create_task(job(n)) for n in ("a3", "b2")]
    await _settle()
    assert order == ["a1", "a2", "b1"] and fair.waiting == 2
    gates["b1"].set()
    await _settle()
    assert order == ["a1", "a2", "b1", "b2"]
    for gate in gates.values():
        gate.set()
    await asyncio.gather(*tasks)


@pytest.mark.anyio
async def test_a_waiter_granted_then_cancelled_before_it_runs_gives_the_slot_back() -> None:
    # The release grants the waiter's future, then its task is cancelled before it resumes:
    # the slot it was given must be released, or it leaks for good.
    fair = FairShare(1)
    holding = fair.slot("alice")
    await holding.__aenter__()

    async def hold(tenant: str) -> None:
        async with fair.slot(tenant):
            await asyncio.Event().wait()

    waiter = asyncio.create_task(hold("bob"))
    await _settle()
    assert fair.waiting == 1
    await holding.__aexit__(None, None, None)  # grants bob's future, no loop turn
    assert fair.held("bob") == 1
    waiter.cancel()  # before bob's task resumes
    done = await asyncio.gather(waiter, return_exceptions=True)
    assert isinstance(done[0], asyncio.CancelledError)
    assert fair.held("bob") == 0 and fair.waiting == 0
    async with fair.slot("carol"):  # the one slot is free again
        assert fair.held("carol") == 1


@pytest.mark.anyio
async def test_a_tenant_holds_at_most_per_tenant_slots_even_alone() -> None:
    fair = FairShare(2, per_tenant=1)
    holding: list[str] = []
    release = asyncio.Event()

    async def hold(tenant: str) -> None:
        async with fair.slot(tenant):
            holding.append(tenant)
            await release.wait()

    tasks = [asyncio.create_task(hold("alice")) for _ in range(3)]
    await _settle()
    assert holding == ["alice"]  # a slot free, but alice holds her one
    tasks.append(asyncio.create_task(hold("bob")))
    await _settle()
    assert holding == ["alice", "bob"]  # the free slot, at once
    release.set()
    await asyncio.gather(*tasks)
    assert holding == ["alice", "bob", "alice", "alice"]
    with pytest.raises(ValueError):
        FairShare(2, per_tenant=0)
