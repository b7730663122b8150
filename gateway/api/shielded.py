"""Admin writes whose in-process follow-up must not be lost with the caller."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


async def to_the_end(work: Coroutine[Any, Any, T]) -> T:
    """Runs `work` to its end even if the caller is cancelled (its deadline passed, it went
    away): a store write commits regardless, and what this process must do once it has (apply a
    tenant's policy, drop a revoked key from the cache) would otherwise be skipped, leaving the
    stored change unenforced here until a restart; a retry finds nothing left to change."""
    return await asyncio.shield(asyncio.ensure_future(work))
