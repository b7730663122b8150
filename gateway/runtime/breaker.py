"""Circuit breaker per backend: closed -> open after N failures within a window -> half-open
(one trial) after a cool-down -> closed on the trial's success, open again on its failure.

Pure logic with an injectable clock; the scheduler asks it before dispatching and admission asks
it before accepting. Client errors (a bad circuit) are never recorded as failures.
"""

from __future__ import annotations

import enum
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass


class BreakerState(enum.Enum):
    CLOSED = "CLOSED"
    OPEN = "OPEN"
    HALF_OPEN = "HALF_OPEN"


@dataclass(frozen=True)
class BreakerPolicy:
    failure_threshold: int = 5
    window_s: float = 60.0
    cooldown_s: float = 30.0


class CircuitBreaker:
    def __init__(self, policy: BreakerPolicy, clock: Callable[[], float] = time.monotonic) -> None:
        self.policy = policy
        self._clock = clock
        self._failures: deque[float] = deque()
        self._opened_at: float | None = None
        self._trial_in_flight = False
        self.times_opened = 0

    @property
    def state(self) -> BreakerState:
        if self._opened_at is None:
            return BreakerState.CLOSED
        if self._clock() - self._opened_at >= self.policy.cooldown_s:
            return BreakerState.HALF_OPEN
        return BreakerState.OPEN

    def retry_after(self) -> float:
        """Seconds until the breaker half-opens (0 when it is not open)."""
        if self._opened_at is None:
            return 0.0
        return max(0.0, self._opened_at + self.policy.cooldown_s - self._clock())

    def try_dispatch(self) -> bool:
        """May a job start now? Half-open lets exactly one trial through at a time."""
        state = self.state
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.HALF_OPEN and not self._trial_in_flight:
            self._trial_in_flight = True
            return True
        return False

    def record_success(self) -> None:
        # Only the half-open trial closes the breaker; while closed the breaker counts failures
        # in a window, and a job that started before it opened proves nothing.
        if self._trial_in_flight:
            self._trial_in_flight = False
            self._opened_at = None
            self._failures.clear()

    def record_failure(self) -> None:
        now = self._clock()
        if self._opened_at is not None:
            # The half-open trial failed (or a job started before opening): cool down again.
            self._trial_in_flight = False
            self._opened_at = now
            return
        self._failures.append(now)
        while self._failures and now - self._failures[0] > self.policy.window_s:
            self._failures.popleft()
        if len(self._failures) >= self.policy.failure_threshold:
            self._opened_at = now
            self._failures.clear()
            self.times_opened += 1

    def release_trial(self) -> None:
        """The trial ended without telling success from failure (e.g. it was cancelled)."""
        self._trial_in_flight = False
