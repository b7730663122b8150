"""Reading an authenticated caller's request message, with limits on the slow ones.

gRPC holds a request's bytes as they arrive, before the message is complete: a caller that
sends headers and most of a large body, then goes silent, keeps them in the gateway's memory
(tens of MiB a stream, up to `max_concurrent_streams` streams a connection) until its
connection is cut. Callers without credentials are refused before their body is read (the
error boundary); this bounds what an authenticated one can hold:

  * a read still unfinished after `SLOW_READ_S` counts as slow, and one tenant may have at most
    `max_slow_reads` slow reads at once on this process; one more is refused RESOURCE_EXHAUSTED
    TOO_MANY_SLOW_REQUESTS (with RetryInfo), which ends its stream and frees what it sent;
  * no read lasts longer than `timeout_s`: then the call is DEADLINE_EXCEEDED
    REQUEST_READ_TIMEOUT.

A request whose message arrives with its headers, as nearly all do, is read long before it
could count as slow, however many of them one tenant sends at once: only a body still missing
after `SLOW_READ_S` is counted, so bursts of small calls are never refused here.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from gateway.domain.errors import DeadlineExceeded, QuotaViolation, ResourceExhausted
from gateway.interceptors.boundary import PendingRequest

# Far beyond a message that arrives with its headers (microseconds), even on a loop held up
# by other calls; a body still missing by then is being sent slowly, or not at all.
SLOW_READ_S = 1.0


@dataclass
class _Read:
    tenant: str
    slow: bool = False
    refused: bool = False


class RequestReads:
    """Request messages being read, per tenant.

    Args:
        max_slow_reads: Slow reads one tenant may have at once.
        timeout_s: Longest a message may take to arrive after the call's headers.
        slow_after_s: When a read counts as slow (tests shorten it).
    """

    def __init__(
        self, max_slow_reads: int, timeout_s: float, slow_after_s: float = SLOW_READ_S
    ) -> None:
        if max_slow_reads < 1:
            raise ValueError("a slow-read limit is at least 1")
        if not 0 < slow_after_s < timeout_s:
            raise ValueError("a read counts as slow before it times out")
        self.max_slow_reads = max_slow_reads
        self.timeout_s = timeout_s
        self._slow_after_s = slow_after_s
        self._slow: dict[str, int] = {}

    async def read(self, request: PendingRequest, tenant: str) -> bytes:
        """`request`'s bytes, read within the limits.

        Raises:
            ResourceExhausted: TOO_MANY_SLOW_REQUESTS, when the read turns slow while the
                tenant has `max_slow_reads` slow reads already.
            DeadlineExceeded: REQUEST_READ_TIMEOUT, when the message has not arrived within
                `timeout_s`.
        """
        read = _Read(tenant)
        try:
            async with asyncio.timeout(self.timeout_s) as deadline:
                timer = asyncio.get_running_loop().call_later(
                    self._slow_after_s, self._turned_slow, read, deadline
                )
                try:
                    return await request.read()
                finally:
                    timer.cancel()
                    if read.slow:
                        self._release(tenant)
        except TimeoutError:
            if read.refused:
                raise self._too_many(tenant) from None
            raise DeadlineExceeded(
                "REQUEST_READ_TIMEOUT",
                f"the request message did not arrive within {self.timeout_s:g} s of the call's "
                "headers",
                metadata={"timeoutSeconds": f"{self.timeout_s:g}"},
            ) from None

    def slow_reads(self, tenant: str) -> int:
        return self._slow.get(tenant, 0)

    def _turned_slow(self, read: _Read, deadline: asyncio.Timeout) -> None:
        held = self._slow.get(read.tenant, 0)
        if held >= self.max_slow_reads:
            read.refused = True
            deadline.reschedule(asyncio.get_running_loop().time())  # ends the read now
            return
        self._slow[read.tenant] = held + 1
        read.slow = True

    def _release(self, tenant: str) -> None:
        held = self._slow.get(tenant, 0) - 1
        if held > 0:
            self._slow[tenant] = held
        else:  # no entry kept for a tenant with no slow read
            self._slow.pop(tenant, None)

    def _too_many(self, tenant: str) -> ResourceExhausted:
        """The refusal of one slow read too many; `tenant` "" stands for every caller of the
        methods that need no credentials (gateway.interceptors.public_calls)."""
        limit = self.max_slow_reads
        whose, subject = f"tenant {tenant} has", f"tenants/{tenant}"
        if not tenant:
            whose, subject = "callers of health and reflection have", "server"
        return ResourceExhausted(
            "TOO_MANY_SLOW_REQUESTS",
            f"{whose} {limit} requests whose message is still arriving after "
            f"{self._slow_after_s:g} s, the limit; finish sending those, or retry",
            metadata={
                "tenant" if tenant else "scope": subject,
                "limit": "max_slow_requests_per_tenant" if tenant else "health_and_reflection",
                "maxSlowRequests": str(limit),
            },
            quota_violations=[QuotaViolation(subject, f"at most {limit} slow requests")],
            retry_after=1.0,
        )
