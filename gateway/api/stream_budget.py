"""Memory held by open StreamJobResult calls.

A result stream keeps its stored result until the caller has read it all or gone away, and a
caller decides how slowly it reads. Counting streams is not enough: a tenant's 1000 streams of
one 256 MiB result would hold 256 GiB. So each stream holds its result's stored size against
two budgets, the tenant's and the process's, from before the result is read until the stream
ends (its samples and counts stay in the stored bytes, gateway.api.result_views, so that is
what it holds, and 8 bytes per binding's counts); one past either is RESOURCE_EXHAUSTED
STREAM_MEMORY_EXHAUSTED.

A budget with nothing held against it takes any one result, so a result larger than a budget
is still readable, one stream at a time. Counted per process, like stream counts and rate
limits.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from gateway.domain.errors import QuotaViolation, ResourceExhausted
from gateway.runtime.shielded import when_caller_left

T = TypeVar("T")

# How soon a refused caller should look again: streams of large results take seconds to read.
RETRY_AFTER_S = 2.0


class StreamBudget:
    """Stored-result bytes that open streams hold, per tenant and in total.

    Args:
        per_tenant_bytes: What one tenant's open streams may hold together.
        total_bytes: What every open stream of this process may hold together.
    """

    def __init__(self, per_tenant_bytes: int, total_bytes: int) -> None:
        if per_tenant_bytes < 1 or total_bytes < 1:
            raise ValueError("stream budgets are at least one byte")
        self.per_tenant_bytes = per_tenant_bytes
        self.total_bytes = total_bytes
        self._held: dict[str, int] = {}
        self._total = 0

    @contextmanager
    def hold(self, tenant: str, size: int) -> Iterator[Holding]:
        """Holds `size` bytes for `tenant` for the duration of the block.

        Raises:
            ResourceExhausted: STREAM_MEMORY_EXHAUSTED, when either budget cannot take `size`
                more bytes (nothing is held then).
        """
        self._take(tenant, size)
        holding = Holding(size)
        try:
            yield holding
        finally:
            kept_by = holding.kept_by
            if kept_by is not None and not kept_by.done():
                kept_by.add_done_callback(lambda _: self._release(tenant, holding.size))
            else:
                self._release(tenant, holding.size)

    def _release(self, tenant: str, size: int) -> None:
        self._total -= size
        left = self._held[tenant] - size
        if left:
            self._held[tenant] = left
        else:  # no entry kept for a tenant with nothing open
            del self._held[tenant]

    def _take(self, tenant: str, size: int) -> None:
        """Takes `size` bytes for a new stream of `tenant`: refused past a budget unless the
        budget holds nothing else."""
        held = self._held.get(tenant, 0)
        if held > 0 and held + size > self.per_tenant_bytes:
            raise _exhausted(tenant, "tenant", held, size, self.per_tenant_bytes)
        if self._total > 0 and self._total + size > self.total_bytes:
            raise _exhausted(tenant, "process", self._total, size, self.total_bytes)
        self._held[tenant] = held + size
        self._total += size

    def held(self, tenant: str | None = None) -> int:
        """Bytes held by `tenant`'s streams, or by every stream when tenant is None."""
        return self._total if tenant is None else self._held.get(tenant, 0)


class Holding:
    """What one open stream holds against the budgets."""

    def __init__(self, size: int) -> None:
        self.size = size
        # Work that still holds the stream's bytes after its block ends (a read or parse
        # thread its cancelled caller left running): released when it ends, not before.
        self.kept_by: asyncio.Future[Any] | None = None

    async def through(self, work: Awaitable[T]) -> T:
        """`work`'s result, what it holds charged until it ends: a caller cancelled meanwhile
        leaves at once (gRPC cancels a handler natively, which abandons an awaited thread),
        and the bytes the work goes on holding stay held until it ends."""
        task = asyncio.ensure_future(work)
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            self.kept_by = task
            when_caller_left(task, lambda _: None)
            raise


def _exhausted(tenant: str, scope: str, held: int, size: int, limit: int) -> ResourceExhausted:
    whose = (
        f"tenant {tenant}'s open result streams"
        if scope == "tenant"
        else ("this gateway process's open result streams")
    )
    setting = (
        "server.max_streamed_result_mb_per_tenant"
        if scope == "tenant"
        else "server.max_streamed_result_mb"
    )
    subject = f"tenants/{tenant}" if scope == "tenant" else "server"
    return ResourceExhausted(
        "STREAM_MEMORY_EXHAUSTED",
        f"{whose} hold {held} bytes of results; this result's {size} bytes would pass the "
        f"limit of {limit} ({setting}); finish or close a stream, or retry",
        metadata={
            "scope": scope,
            "limit": setting,
            "limitBytes": str(limit),
            "heldBytes": str(held),
            "resultBytes": str(size),
        },
        quota_violations=[QuotaViolation(subject, f"at most {limit} bytes of streamed results")],
        retry_after=RETRY_AFTER_S,
    )
