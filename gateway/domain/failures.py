"""How a job failed, as a kind the job core acts on (never by sorting reason strings).

Every ExecutionError carries one. Only BACKEND_FAULT says something about the backend, so only
it counts for the circuit breaker; the kind also tells a runner whether the instance that ran the
job can be reused.
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
    # The backend failed: a crashed worker, a simulator error, a provider's own failure, a
    # job that ran past the backend's limit. The breaker counts these.
    BACKEND_FAULT = "BACKEND_FAULT"
    # One big job ran out of the memory its backend may use: a property of the job.
    OUT_OF_MEMORY = "OUT_OF_MEMORY"
    # The job ran past its own max_execution_time: the client's choice.
    TIMEOUT = "TIMEOUT"
    CANCELLED = "CANCELLED"

    @property
    def counts_for_breaker(self) -> bool:
        return self is FailureKind.BACKEND_FAULT or self is FailureKind.TRANSIENT
