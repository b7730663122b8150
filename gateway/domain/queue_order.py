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

from collections.abc import Mapping
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


def position(
    lengths: Mapping[str, int],
    heads: Mapping[str, K],
    claims: Mapping[str, int],
    last_claim: Mapping[str, int],
    tenant: str,
    index: int,
) -> int:
    """How many jobs are handed out before the job at `index` of `tenant`'s line (0: next),
    if nothing else changes.

    Exact for next_tenant's rule, in O(waiting tenants): it runs on the event loop for every
    SubmitJob, GetJob and WatchJob heartbeat of a queued job (replaying the order job by job
    took 11 ms with 10,000 queued). Fair share makes it an estimate, not a promise: a tenant
    that submits later, or whose claims end, can be served first, so a position can also grow.

    Why it is exact: a tenant holding c live claims makes its picks at "levels" c, c+1, ...
    (its claim count when picked), and every pick at one level comes before any at the next.
    Within a level, a tenant's first pick comes before repeat picks (its last claim is older
    than any made meanwhile); first picks go by next_tenant's ties (last claim, oldest job), and
    repeat picks keep the order of the level before. So a level is ordered by the level each
    tenant started at, latest first, then by those ties.

    Args:
        lengths: Per waiting tenant, how many jobs it has waiting.
        heads: Per waiting tenant, the order key of its oldest waiting job.
        claims: As for next_tenant.
        last_claim: As for next_tenant.
        tenant: The job's tenant.
        index: The job's place in its tenant's line (0: its oldest).
    """
    level = claims.get(tenant, 0) + index
    own = (claims.get(tenant, 0), last_claim.get(tenant, 0), heads[tenant])
    ahead = index
    for other, length in lengths.items():
        if other == tenant:
            continue
        start = claims.get(other, 0)
        ahead += min(max(level - start, 0), length)  # its picks at the levels below
        # It also picks at this level: before us when it started at a later level, or at ours
        # and wins next_tenant's ties.
        picks_here = start <= level < start + length
        if picks_here and (
            start > own[0]
            or (start == own[0] and (last_claim.get(other, 0), heads[other]) < own[1:])
        ):
            ahead += 1
    return ahead
