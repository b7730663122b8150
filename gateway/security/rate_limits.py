"""Request and submit rates per tenant: token buckets on an injectable clock.

One bucket per (tenant, kind), created full at the first call. A policy that changes the rate
keeps the tokens left, capped at the new burst (rebuilt full, a tenant throttled just after
spending its burst got a new one at once). Buckets live in this process: behind several
replicas each enforces its own share (a tenant's limit is per replica).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Literal

from gateway.domain.errors import QuotaViolation, ResourceExhausted
from gateway.security.tenant_policy import RateLimit

Kind = Literal["request", "submit"]

# Buckets of idle tenants are forgotten once this many are kept: every tenant id a JWT names,
# and every tenant deleted since, kept its buckets for the life of the process.
MAX_IDLE_BUCKETS = 1024


class TokenBucket:
    """`rate.per_second` tokens refill each second, up to `rate.burst`; starts full."""

    def __init__(self, rate: RateLimit, clock: Callable[[], float]) -> None:
        self.rate = rate
        self._clock = clock
        self._tokens = float(rate.burst)
        self._at = clock()

    def _refill(self) -> None:
        now = self._clock()
        elapsed = max(0.0, now - self._at)
        self._at = now
        self._tokens = min(float(self.rate.burst), self._tokens + elapsed * self.rate.per_second)

    def set_rate(self, rate: RateLimit) -> None:
        """From now on refills at `rate`, from the tokens left (refilled at the old rate until
        now), capped at its burst."""
        self._refill()
        self.rate = rate
        self._tokens = min(float(rate.burst), self._tokens)

    def full(self) -> bool:
        """Whether the bucket holds its whole burst (it is then what a new one would be)."""
        self._refill()
        return self._tokens >= self.rate.burst

    def take(self) -> float:
        """Takes a token: 0.0 when there was one, else the seconds until one refills (nothing
        is taken then)."""
        self._refill()
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return 0.0
        return (1.0 - self._tokens) / self.rate.per_second


class RateLimiter:
    """The buckets of every tenant."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._buckets: dict[tuple[str, Kind], TokenBucket] = {}
        # Full buckets are looked for once this many are kept, then at twice as many as were
        # left: while more than MAX_IDLE_BUCKETS are busy (none full, none dropped), a scan at
        # every new key cost each new tenant's request O(tenants) (3.3 ms at 5000).
        self._drop_at = MAX_IDLE_BUCKETS

    def check(self, tenant: str, kind: Kind, rate: RateLimit | None) -> None:
        """Takes a token of the tenant's `kind` bucket; no limit when `rate` is None.

        Raises:
            ResourceExhausted: RATE_LIMITED, with QuotaFailure and RetryInfo saying when a token
                refills.
        """
        key = (tenant, kind)
        if rate is None:
            self._buckets.pop(key, None)
            return
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self._drop_at:
                self._drop_full()
                self._drop_at = max(MAX_IDLE_BUCKETS, 2 * len(self._buckets))
            bucket = self._buckets[key] = TokenBucket(rate, self._clock)
        elif bucket.rate != rate:
            bucket.set_rate(rate)
        wait = bucket.take()
        if wait > 0.0:
            what = "requests" if kind == "request" else "job submissions"
            raise ResourceExhausted(
                "RATE_LIMITED",
                f"tenant {tenant} is over its rate of {rate.per_second:g} {what} per second "
                f"(burst {rate.burst}); retry in {wait:.2f}s",
                metadata={
                    "tenant": f"tenants/{tenant}",
                    "limit": f"{kind}_rate",
                    "perSecond": f"{rate.per_second:g}",
                    "burst": str(rate.burst),
                    "retryDelaySeconds": f"{wait:.3f}",
                },
                quota_violations=[
                    QuotaViolation(
                        f"tenants/{tenant}",
                        f"{kind}_rate: {rate.per_second:g}/s, burst {rate.burst}",
                    )
                ],
                retry_after=wait,
            )

    def _drop_full(self) -> None:
        # A full bucket is what a new one would be: forgetting it changes no answer.
        for key, bucket in list(self._buckets.items()):
            if bucket.full():
                del self._buckets[key]
