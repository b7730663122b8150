"""How much of a backend's queue one tenant may fill.

A backend's queue holds at most its max_queued_jobs. Without a per-tenant rule, one tenant
submitting as fast as it can fills the queue, and every other tenant is refused QUEUE_FULL
until that backlog drains (fair claiming does not help a job that was never accepted). So:

- while the queue is less than half full, anyone may queue;
- from half full on, a tenant may have at most an equal share of the limit with the other
  tenants waiting and one tenant more: limit // (others + 2), and at least one job. The
  "one more" keeps room for a tenant that has nothing queued yet: a tenant alone stops at half
  the queue, two stop at a third each, and a newcomer always finds room while the queue has
  any (a tenant with nothing waiting is only ever refused by the limit itself).

Operators who want a hard per-tenant bound over all backends set the tenant policy's
max_queued_jobs (TENANT_QUEUE_FULL); this rule needs no configuration.
"""

from __future__ import annotations

from collections.abc import Mapping


def tenant_share(limit: int, others: int) -> int:
    """The most jobs one tenant may have waiting once the queue is half full.

    Args:
        limit: The backend's max_queued_jobs.
        others: How many other tenants have jobs waiting on the backend.
    """
    return max(1, limit // (others + 2))


def over_share(limit: int, depth: int, waiting: Mapping[str, int], tenant: str) -> int | None:
    """The tenant's share when one more job would take it past it (refuse the job); None when
    the rule admits it. `depth` counts every waiting job (and submissions being admitted);
    `waiting` is per tenant (tenants with none absent)."""
    if 2 * depth < limit:
        return None
    own = waiting.get(tenant, 0)
    share = tenant_share(limit, len(waiting) - (1 if own else 0))
    return share if own >= share else None
