"""How a job failed, as a kind the job core acts on (never by sorting reason strings).

Every ExecutionError carries one. Only BACKEND_FAULT, TRANSIENT, CREDENTIALS and THROTTLED say
something about the backend, and SDK_ERROR while the backend fails its health probe, so only
they count for the circuit breaker (counts_for_breaker); the kind also tells a runner whether
the instance that ran the job can be reused.
"""

from __future__ import annotations

import enum


class FailureKind(enum.Enum):
    # The job itself is at fault (a spec that no longer validates, a circuit the backend
    # refuses when it runs): retrying it elsewhere would fail the same way.
    CLIENT_ERROR = "CLIENT_ERROR"
    # A provider call failed in a way that may pass on retry (connection reset, throttling,
    # 5xx); runners retry these under their policy, and one that reaches the core failed
    # after its retries.
    TRANSIENT = "TRANSIENT"
    # The backend failed: a crashed worker, a provider's own failure, a job that ran past the
    # backend's limit. The breaker counts these.
    BACKEND_FAULT = "BACKEND_FAULT"
    # A local simulator's SDK raised on this job while its worker stayed up: either a circuit
    # that trips an SDK bug (one tenant could open the breaker every tenant shares with five
    # such jobs) or a backend gone bad, which then fails its health probe too. The breaker
    # counts these only while the backend's probe fails.
    SDK_ERROR = "SDK_ERROR"
    # The provider refused the backend's credentials (an expired or revoked key) on a call
    # that creates nothing (a submit's create, opening a provider session): the job goes back
    # to the queue and waits (up to its queue time limit) while the backend is out; the
    # breaker counts it like BACKEND_FAULT. Refusals while following a job the provider has
    # are TRANSIENT instead (the job goes on there).
    CREDENTIALS = "CREDENTIALS"
    # The provider throttled every attempt of a create (HTTP 429: it made nothing): the job
    # goes back to the queue as with CREDENTIALS and is submitted again later, instead of an
    # accepted job failing because the account's rate was spent for a few seconds; the
    # breaker counts it, so a backend throttled for long fails fast meanwhile.
    THROTTLED = "THROTTLED"
    # One big job ran out of the memory its backend may use: a property of the job.
    OUT_OF_MEMORY = "OUT_OF_MEMORY"
    # The job ran past its own max_execution_time: the client's choice.
    TIMEOUT = "TIMEOUT"
    CANCELLED = "CANCELLED"

    def counts_for_breaker(self, backend_serving: bool) -> bool:
        """Whether a job's failure of this kind tells the breaker the backend is sick, given
        whether the backend passes its health probe (which decides for SDK_ERROR alone)."""
        if self is FailureKind.SDK_ERROR:
            return not backend_serving
        return self in (
            FailureKind.BACKEND_FAULT,
            FailureKind.TRANSIENT,
            FailureKind.CREDENTIALS,
            FailureKind.THROTTLED,
        )
