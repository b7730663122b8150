"""Writes whose in-process follow-up must not be lost with the caller."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

# What runs on after its caller went away (the loop itself keeps only weak references).
_carried_on: set[asyncio.Future[Any]] = set()


async def to_the_end(work: Coroutine[Any, Any, T]) -> T:
    """Runs `work` to its end even if the caller is cancelled (its deadline passed, it went
    away): a store write commits regardless, and what this process must do once it has (stop
    a cancelled job's worker, apply a tenant's policy, drop a revoked key from the cache) would
    otherwise be skipped, leaving the stored change unenforced here until a restart; a retry
    finds nothing left to change."""
    task = asyncio.ensure_future(work)
    _carried_on.add(task)
    task.add_done_callback(_carried_on.discard)
    return await asyncio.shield(task)
