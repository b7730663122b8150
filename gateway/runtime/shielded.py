"""Writes whose in-process follow-up must not be lost with the caller."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from gateway.domain.errors import GatewayError, StoreUnavailable

T = TypeVar("T")

log = logging.getLogger(__name__)

# What runs on after its caller went away (the loop itself keeps only weak references).
_carried_on: set[asyncio.Future[Any]] = set()


async def to_the_end(work: Coroutine[Any, Any, T]) -> T:
    """Runs `work` to its end even if the caller is cancelled (its deadline passed, it went
    away): a store write commits regardless, and what this process must do once it has (stop
    a cancelled job's worker, open a session here, apply a tenant's policy, drop a revoked key
    from the cache) would otherwise be skipped, leaving the stored change unenforced here
    until a restart; a retry finds nothing left to change."""
    task = asyncio.ensure_future(work)
    _carried_on.add(task)
    task.add_done_callback(_carried_on.discard)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        task.add_done_callback(_unheard)
        raise


async def carried_on(timeout: float) -> None:
    """Waits (up to `timeout` seconds) for work still carried on for callers that left: at a
    stop, before the store closes under it."""
    if not _carried_on:
        return
    _, left = await asyncio.wait(set(_carried_on), timeout=timeout)
    if left:
        log.warning("%d writes for callers that left were still going at the stop", len(left))


# Work whose caller left, held until it ends (the loop keeps only weak references to tasks).
_left_behind: set[asyncio.Future[Any]] = set()


def when_caller_left(task: asyncio.Future[T], use: Callable[[T], None]) -> None:
    """For work whose caller left: `use` its result once it ends; a failure is said as for
    to_the_end's. The task is held until then."""
    _left_behind.add(task)
    task.add_done_callback(_left_behind.discard)

    def ended(done: asyncio.Future[T]) -> None:
        _unheard(done)
        if not done.cancelled() and done.exception() is None:
            use(done.result())

    task.add_done_callback(ended)


def _unheard(task: asyncio.Future[Any]) -> None:
    """The outcome of work whose caller left: a refusal (a cancel of a job that had finished)
    is nobody's concern; a store that could not write is said; anything else is logged once,
    not as asyncio's "never retrieved"."""
    if task.cancelled():
        return
    exc = task.exception()
    if isinstance(exc, StoreUnavailable):
        log.warning("a write for a caller that left was not stored: %s", exc)
    elif exc is not None and not isinstance(exc, GatewayError):
        log.error("work carried on after its caller left failed", exc_info=exc)
