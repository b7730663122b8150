"""Refusals of a tenant's period quota and queued-job limit: RESOURCE_EXHAUSTED with QuotaFailure
and RetryInfo, since the same request can pass later (when the period ends, or a job leaves the
queue)."""

from __future__ import annotations

from datetime import datetime

from gateway.domain.errors import QuotaViolation, ResourceExhausted
from gateway.domain.timestamps import rfc3339


def quota_exceeded(
    tenant: str,
    what: str,
    *,
    asked: float,
    held: float,
    limit: float,
    unit: str,
    period_end: datetime,
    now: datetime,
) -> ResourceExhausted:
    """A job's shots (`what` = "shots") or cost (`what` = "cost") do not fit in what is left of
    the tenant's quota this period; `held` is what the period's jobs used and reserve."""
    retry = max(0.001, (period_end - now).total_seconds())
    reason = "SHOT_QUOTA_EXCEEDED" if what == "shots" else "COST_QUOTA_EXCEEDED"
    left = max(0.0, limit - held)
    amount = f"{unit} " if unit else ""
    # An estimate of 0 is a job priced by its run time, known only after it ran.
    needs = f"this job needs {asked:g}" if asked > 0 else "this job is charged by its run time"
    return ResourceExhausted(
        reason,
        f"tenant {tenant} has {amount}{left:g} {what} left of its quota of {limit:g} this "
        f"period and {needs}; the quota refills at {rfc3339(period_end)}",
        metadata={
            "tenant": f"tenants/{tenant}",
            "limit": f"quota.{what}",
            "quota": f"{limit:g}",
            "used": f"{held:g}",
            "requested": f"{asked:g}",
            "periodEndTime": rfc3339(period_end),
            **({"unit": unit} if unit else {}),
        },
        quota_violations=[
            QuotaViolation(f"tenants/{tenant}", f"{what} quota of {limit:g} per period")
        ],
        retry_after=retry,
    )


def too_many_queued(tenant: str, queued: int, limit: int) -> ResourceExhausted:
    return ResourceExhausted(
        "TENANT_QUEUE_FULL",
        f"tenant {tenant} has {queued} queued jobs, its limit of {limit}; nothing was accepted, "
        "retry when some have started",
        metadata={
            "tenant": f"tenants/{tenant}",
            "limit": "max_queued_jobs",
            "maxQueuedJobs": str(limit),
            "queuedJobs": str(queued),
        },
        quota_violations=[QuotaViolation(f"tenants/{tenant}", f"at most {limit} queued jobs")],
        retry_after=1.0,
    )
