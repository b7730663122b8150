"""Circuit breaker per backend: closed -> open after N failures within a window -> half-open
(one trial) after a cool-down -> closed on the trial's success, open again on its failure.

Pure logic with an injectable clock; the scheduler asks it before dispatching and admission asks
it before accepting. Client errors (a bad circuit) are never recorded as failures.
"""

from __future__ import annotations

import enum
import time
from collections import Counter, deque
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


@dataclass(frozen=True)
class Permit:
    """Leave to run one job, handed out by `try_dispatch` and given back with its outcome.

    `trial` marks the half-open trial; `token` tells this trial from any other, so only the
    trial's own outcome can close (or reopen) the breaker.
    """

    trial: bool
    token: int


@dataclass(frozen=True)
class BreakerMove:
    """A job's outcome moved the breaker: observers tie the change to that job."""

    before: BreakerState
    after: BreakerState


class CircuitBreaker:
    def __init__(self, policy: BreakerPolicy, clock: Callable[[], float] = time.monotonic) -> None:
        self.policy = policy
        self._clock = clock
        self._failures: deque[float] = deque()
        self._opened_at: float | None = None
        # The token of the half-open trial in flight, if one is.
        self._trial: int | None = None
        self._tokens = 0
        # The last token handed out when it last opened: a job started by then failing later
        # proves nothing about the backend now, in any state (counted again once a trial had
        # closed it, jobs in flight through an outage reopened a recovered breaker).
        self._opened_after: int | None = None
        self.times_opened = 0
        # How often it entered each state (the transitions metric): counted here, where every
        # change happens, not by observers that may miss one between two looks (a half-open
        # trial failing within a sample interval). HALF_OPEN, which comes with time, counts
        # when it is first seen after its cool-down.
        self.entered: Counter[BreakerState] = Counter()
        self._half_open_seen: float | None = None

    @property
    def state(self) -> BreakerState:
        if self._opened_at is None:
            return BreakerState.CLOSED
        if self._clock() - self._opened_at >= self.policy.cooldown_s:
            if self._half_open_seen != self._opened_at:
                self._half_open_seen = self._opened_at
                self.entered[BreakerState.HALF_OPEN] += 1
            return BreakerState.HALF_OPEN
        return BreakerState.OPEN

    @property
    def trial_running(self) -> bool:
        """The half-open trial is out: a job placed here now waits for its outcome."""
        return self._trial is not None

    def retry_after(self) -> float:
        """Seconds until the breaker half-opens (0 when it is not open)."""
        if self._opened_at is None:
            return 0.0
        return max(0.0, self._opened_at + self.policy.cooldown_s - self._clock())

    def try_dispatch(self) -> Permit | None:
        """Leave for a job to start now, or None. Half-open lets exactly one trial through."""
        self._tokens += 1
        state = self.state
        if state is BreakerState.CLOSED:
            return Permit(trial=False, token=self._tokens)
        if state is BreakerState.HALF_OPEN and self._trial is None:
            self._trial = self._tokens
            return Permit(trial=True, token=self._tokens)
        return None

    def _is_current_trial(self, permit: Permit) -> bool:
        return permit.trial and permit.token == self._trial

    def record_success(self, permit: Permit) -> BreakerMove | None:
        """The job run under `permit` succeeded; the move it caused, if any."""
        # Only the half-open trial closes the breaker. A job that started before the breaker
        # opened and succeeds meanwhile proves nothing about the backend now.
        if not self._is_current_trial(permit):
            return None
        before = self.state
        self._trial = None
        self._opened_at = None
        self._failures.clear()
        self.entered[BreakerState.CLOSED] += 1
        return BreakerMove(before, BreakerState.CLOSED)

    def record_failure(self, permit: Permit) -> BreakerMove | None:
        """A backend fault of the job run under `permit`; the move it caused, if any."""
        now = self._clock()
        before = self.state
        if self._opened_at is not None:
            if self._is_current_trial(permit):  # the trial failed: cool down again
                self._trial = None
                self._opened_at = now
                self._opened_after = self._tokens
                self.entered[BreakerState.OPEN] += 1
                return BreakerMove(before, BreakerState.OPEN)
            # A job that started before the breaker opened: already accounted for.
            return None
        if self._opened_after is not None and permit.token <= self._opened_after:
            return None  # started before the last opening, failing after the recovery
        self._failures.append(now)
        while self._failures and now - self._failures[0] > self.policy.window_s:
            self._failures.popleft()
        if len(self._failures) < self.policy.failure_threshold:
            return None
        self._opened_at = now
        self._opened_after = self._tokens
        self._failures.clear()
        self.times_opened += 1
        self.entered[BreakerState.OPEN] += 1
        return BreakerMove(before, BreakerState.OPEN)

    def release(self, permit: Permit) -> None:
        """The job ended without telling success from failure (cancelled, the client's own
        error or time limit, never started): a trial's place goes to the next job."""
        if self._is_current_trial(permit):
            self._trial = None
