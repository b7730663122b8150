"""Processes sharing a store hear each other's changes (gateway.store.peer_signals,
gateway.jobs.peer_events), in process: two signal ends on real Unix datagram sockets, and the
bus on a real SQLite store."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.domain.jobs import JobState
from gateway.jobs.peer_events import PeerEventBus
from gateway.store.peer_signals import _DATAGRAM, PeerSignals, _datagrams
from gateway.store.sqlite import SqliteStore
from tests.core_harness import Clock, ScriptedRunner, build_core, spec

pytestmark = pytest.mark.anyio


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    store = SqliteStore(tmp_path / "q.db")
    await store.open()
    yield store
    await store.close()


async def test_a_signal_reaches_every_peer_and_a_dead_one_is_forgotten(tmp_path: Path) -> None:
    heard: asyncio.Queue[tuple[str, str, str]] = asyncio.Queue()
    register = tmp_path / "peers"
    a, b, gone = PeerSignals(register), PeerSignals(register), PeerSignals(register)
    a.start(lambda *signal: None)
    b.start(lambda *signal: heard.put_nowait(signal))
    gone.start(lambda *signal: None)
    gone_file = register / gone.name
    gone._socket.close()  # type: ignore[union-attr]  # as a SIGKILL leaves it: file, no socket
    gone._socket = None
    # Only the gateway's user may send to the sockets (abstract ones could be flooded by any
    # local user, and did not cross network namespaces).
    assert register.stat().st_mode & 0o077 == 0
    try:
        a.send("j1", "aer", "QUEUED")
        a.send("j2", "my backend é", "RUNNING")  # a configuration key may hold spaces
        async with asyncio.timeout(5):
            assert await heard.get() == ("j1", "aer", "QUEUED")
            assert await heard.get() == ("j2", "my backend é", "RUNNING")
        assert not gone_file.exists()  # its name refused the datagram: dropped
        assert sorted(p.name for p in register.iterdir()) == sorted([a.name, b.name])
        for _ in range(600):  # one loop turn's burst: one datagram
            a.send("j3", "aer", "QUEUED")
        async with asyncio.timeout(5):
            for _ in range(600):
                assert await heard.get() == ("j3", "aer", "QUEUED")
        # A peer busy elsewhere: its socket queues only a few datagrams (max_dgram_qlen, 10 by
        # default); the rest wait at the sender and arrive later, in order (they were lost).
        loop = asyncio.get_running_loop()
        assert b._socket is not None
        loop.remove_reader(b._socket.fileno())
        for turn in range(40):
            a.send(f"k{turn}", "aer", "RUNNING")
            await asyncio.sleep(0)  # a loop turn each: forty datagrams
        assert heard.empty()
        loop.add_reader(b._socket.fileno(), b._readable)
        async with asyncio.timeout(5):
            got = [(await heard.get())[0] for _ in range(40)]
        assert got == [f"k{turn}" for turn in range(40)]
    finally:
        a.close()
        b.close()
        gone.close()
    assert list(register.iterdir()) == []


async def test_a_peers_change_reaches_watchers_and_wakes_the_scheduler(
    store: SqliteStore,
) -> None:
    runner = ScriptedRunner(slots=1)
    core = await build_core(store, "memory", {"sim": runner}, clock=Clock())
    sent: list[tuple[str, str, str]] = []
    bus = PeerEventBus(store, lambda *signal: sent.append(signal))
    woken: list[str] = []
    bus.wake_on_changes("sim", lambda: woken.append("sim"))
    try:
        job = await core.submit("alice", spec("sim"))
        with bus.subscribe(job.id) as events:
            # The peer's change is in the store; its signal only names it. Signals during the
            # read are not lost: the job is read again.
            bus.heard(job.id, "sim", "RUNNING")
            bus.heard(job.id, "sim", "RUNNING")
            async with asyncio.timeout(5):
                seen = await events.get()
            assert seen.id == job.id and seen.state is JobState.QUEUED
        assert woken == ["sim", "sim"]
        bus.heard(job.id, "sim", "SUCCEEDED")  # a final state wakes no scheduler
        bus.heard("nobody-watches", "other", "QUEUED")  # no waker, no watcher: nothing
        assert woken == ["sim", "sim"]
        bus.publish(job)  # this process's own change goes to its peers
        assert sent == [(job.id, "sim", "QUEUED")]
    finally:
        await bus.close()
        runner.succeed(job.id)
        await core.until("alice", job.id, "SUCCEEDED")
        await core.manager.close()


def test_datagrams_fill_up_to_the_size_limit_exactly() -> None:
    # A receiver reads at most _DATAGRAM bytes: lines joined up to exactly that fit in one
    # datagram, and one byte more must start another, or the tail of the batch is cut off.
    line = "x" * 99
    count = (_DATAGRAM + 1) // (len(line) + 1)
    lines = [line] * count
    last = _DATAGRAM - (count * (len(line) + 1))
    exact = [*lines, "y" * last]
    assert [len(d) for d in _datagrams(exact)] == [_DATAGRAM]
    over = [*lines, "y" * (last + 1)]
    sizes = [len(d) for d in _datagrams(over)]
    assert len(sizes) == 2 and max(sizes) <= _DATAGRAM
    assert b"\n".join(_datagrams(over)).split(b"\n") == [s.encode() for s in over]
