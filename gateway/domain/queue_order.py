"""The order in which a backend's queue hands out jobs: fair across tenants, FIFO within one.

One rule for every queue implementation (the in-memory queue, the store's claim queue) and for
their position estimates, so they cannot disagree:

1. the waiting tenant holding the fewest live claims on the backend goes first (under contention
   no tenant holds more than its share of the backend's workers);
2. among equals, the tenant claimed from least recently (a history kept while a tenant has
   nothing queued: a tenant whose jobs arrive one at a time does not win every tie);
3. among tenants never claimed from, the one whose oldest waiting job is oldest;
4. within a tenant, its jobs in order of (create time, id).
"""

from __future__ import annotations

import heapq
from collections.abc import Hashable, Mapping, Sequence
from typing import Any, Protocol, TypeVar


class _Ordered(Protocol):
    def __lt__(self, other: Any, /) -> bool: ...


K = TypeVar("K", bound=_Ordered)


def next_tenant(
    heads: Mapping[str, K], claims: Mapping[str, int], last_claim: Mapping[str, int]
) -> str:
    """The tenant served next.

    Args:
        heads: Per waiting tenant, the order key of its oldest waiting job (create time, id,
            or anything ordered the same way across tenants).
        claims: Live claims each tenant holds on the backend (absent: none).
        last_claim: Per tenant, the ordinal of its latest claim (larger: more recent; absent:
            never claimed from).

    Raises:
        ValueError: When no tenant is waiting.
    """
    if not heads:
        raise ValueError("no tenant is waiting")
    return min(heads, key=lambda t: (claims.get(t, 0), last_claim.get(t, 0), heads[t]))


J = TypeVar("J", bound=Hashable)


def position(
    lines: Mapping[str, Sequence[tuple[K, J]]],
    claims: Mapping[str, int],
    last_claim: Mapping[str, int],
    job: J,
    tenant: str,
) -> int | None:
    """How many jobs are handed out before `job` (0: it is next), or None when it is not in
    `tenant`'s line.

    Replays the order on copies, counting every job handed out as a live claim of its tenant
    and no claim as ending meanwhile. Fair share makes it an estimate, not a promise: a tenant
    that submits later, or whose claims end, can be served first, so a position can also grow.
    O(jobs ahead x log waiting tenants): it runs on the event loop for every GetJob and
    WatchJob heartbeat of a queued job.

    Args:
        lines: Per waiting tenant, its waiting jobs in order as (order key, job).
        claims: As for next_tenant.
        last_claim: As for next_tenant.
        job: The job asked about.
        tenant: Its tenant.
    """
    line = lines.get(tenant)
    if line is None:
        return None
    index = next((i for i, (_, j) in enumerate(line) if j == job), None)
    if index is None or len(lines) == 1:
        return index
    # next_tenant's rule as a heap: only the chosen tenant's key changes at each step.
    ordinal = max(last_claim.values(), default=0)
    heap = [(claims.get(t, 0), last_claim.get(t, 0), ln[0][0], t) for t, ln in lines.items()]
    heapq.heapify(heap)
    taken = dict.fromkeys(lines, 0)
    ahead = 0
    while True:
        count, _, _, chosen = heapq.heappop(heap)
        if chosen == tenant and taken[tenant] == index:
            return ahead
        ahead += 1
        taken[chosen] += 1
        ordinal += 1
        rest = lines[chosen]
        if taken[chosen] < len(rest):
            heapq.heappush(heap, (count + 1, ordinal, rest[taken[chosen]][0], chosen))
