"""The pace of StreamJobResult messages, per tenant.

A stream sends a message per binding and register of a sampler PUB (the v1 framing), and each
costs the event loop ~40 us whatever its size: a result of 100,000 bindings x 10 one-bit
registers is 2,000,000 messages, over a minute of the loop's CPU, and a tenant may repeat the
call. A result's bytes are bounded (max_result_mb, the stream memory budget); its messages
were not. So each tenant's streams together send at most `per_second` messages a second (a
burst of as many), and wait for the rest: what a tenant's streams cost the loop is bounded
whatever the result's shape. A stream of large chunks sends a message per chunk and rarely
waits. Counted per process, like the other stream limits.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

# Tenants whose streams are idle are forgotten once this many are remembered.
MAX_IDLE_TENANTS = 1024


@dataclass
class _Allowance:
    """Messages a tenant may send now (negative: owed, being waited out), as of `at`."""

    messages: float
    at: float


class StreamPace:
    """Messages a second each tenant's result streams may send together.

    Args:
        per_second: Messages a second per tenant; also the burst.
        clock: Seconds, monotonic (injected by tests).
        sleep: Waits that many seconds (injected by tests).
    """

    def __init__(
        self,
        per_second: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if per_second <= 0:
            raise ValueError("the pace is a positive number of messages a second")
        self._rate = per_second
        self._burst = max(1.0, per_second)
        self._clock = clock
        self._sleep = sleep
        self._tenants: dict[str, _Allowance] = {}

    async def next_message(self, tenant: str) -> None:
        """Returns when the tenant's streams may send one more message. Concurrent streams of
        a tenant each take theirs at once and wait out what they owe, so they share the pace
        in turn."""
        now = self._clock()
        allowance = self._tenants.get(tenant)
        if allowance is None:
            if len(self._tenants) >= MAX_IDLE_TENANTS:
                self._drop_idle(now)
            allowance = self._tenants[tenant] = _Allowance(self._burst, now)
        else:
            allowance.messages = self._refilled(allowance, now)
            allowance.at = now
        allowance.messages -= 1.0
        if allowance.messages < 0.0:
            await self._sleep(-allowance.messages / self._rate)

    def _refilled(self, allowance: _Allowance, now: float) -> float:
        """What the allowance holds at `now`."""
        refill = max(0.0, now - allowance.at) * self._rate
        return min(self._burst, allowance.messages + refill)

    def _drop_idle(self, now: float) -> None:
        # A tenant whose allowance has refilled to the burst is what a new one would be:
        # forgetting it changes nothing.
        for tenant, allowance in list(self._tenants.items()):
            if self._refilled(allowance, now) >= self._burst:
                del self._tenants[tenant]
