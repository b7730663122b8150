"""Blocking provider calls on threads, under a limit that holds while the thread runs.

A caller that stops waiting for a call (its timeout, its cancellation) cannot stop the thread:
an SDK reading an answer without a read timeout (qiskit-ibm-runtime's GET and cancel) waits on
the socket for as long as the provider keeps it open. anyio frees its limiter's slot when the
caller gives up, so against a provider that accepts connections and never answers, every probe
and lookup left one more thread behind, without bound. Here the slot is the thread's until
its call returns: past the limit, new calls wait (and time out as their callers decide), and a
call whose caller gave up before its thread started never runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import threading
from collections.abc import Callable
from typing import TypeVar

import anyio

T = TypeVar("T")


async def run_blocking(fn: Callable[[], T], limiter: anyio.CapacityLimiter) -> T:
    """fn() on a worker thread, holding a slot of `limiter` until fn returns."""
    token = object()
    await limiter.acquire_on_behalf_of(token)
    loop = asyncio.get_running_loop()
    lock = threading.Lock()
    started = False
    given_up = False

    def release() -> None:
        limiter.release_on_behalf_of(token)

    def call() -> T:
        nonlocal started
        with lock:
            if given_up:  # the caller left before this thread picked the call up
                raise asyncio.CancelledError
            started = True
        try:
            return fn()
        finally:
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(release)

    try:
        # `limiter` is the bound: anyio's default one (shared with every offload) is not used.
        unbounded = anyio.CapacityLimiter(math.inf)
        return await anyio.to_thread.run_sync(call, abandon_on_cancel=True, limiter=unbounded)
    except BaseException:
        with lock:
            if not started:
                given_up = True
        if given_up:
            release()
        raise
