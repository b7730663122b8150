"""Blocking provider calls (gateway.runtime.blocking): a thread keeps its slot until its call
returns, also after its caller gave up on it. anyio freed the slot at once, so probes and
lookups against a provider that accepts connections and never answers (qiskit-ibm-runtime
reads without a read timeout) left one more stuck thread behind each time, without bound."""

from __future__ import annotations

import threading

import anyio
import pytest

from gateway.runtime.blocking import run_blocking

pytestmark = pytest.mark.anyio


async def test_stuck_calls_keep_their_slots_and_no_more_threads_start() -> None:
    limiter = anyio.CapacityLimiter(2)
    answer = threading.Event()
    started: list[int] = []

    def unanswered() -> int:
        started.append(1)
        answer.wait(30)
        return 1

    for _ in range(5):  # callers that give up after their own timeout
        with pytest.raises(TimeoutError):
            with anyio.fail_after(0.05):
                await run_blocking(unanswered, limiter)
    assert len(started) == 2 and limiter.borrowed_tokens == 2
    answer.set()  # the provider answers at last: the threads end and give their slots back
    with anyio.fail_after(10):
        assert await run_blocking(lambda: 7, limiter) == 7
        while limiter.borrowed_tokens:
            await anyio.sleep(0.01)
    assert len(started) == 2


async def test_a_call_returns_its_value_and_raises_its_error() -> None:
    limiter = anyio.CapacityLimiter(1)
    assert await run_blocking(lambda: "ok", limiter) == "ok"

    def fails() -> None:
        raise ConnectionResetError("reset")

    with pytest.raises(ConnectionResetError):
        await run_blocking(fails, limiter)
    with anyio.fail_after(10):
        while limiter.borrowed_tokens:
            await anyio.sleep(0.01)
