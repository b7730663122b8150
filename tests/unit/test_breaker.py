from __future__ import annotations

from gateway.runtime.breaker import BreakerPolicy, BreakerState, CircuitBreaker


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _breaker() -> tuple[CircuitBreaker, Clock]:
    clock = Clock()
    return CircuitBreaker(
        BreakerPolicy(failure_threshold=3, window_s=10, cooldown_s=5), clock
    ), clock


def test_opens_after_threshold_failures_within_the_window() -> None:
    breaker, clock = _breaker()
    breaker.record_failure()
    clock.now += 11  # outside the window: forgotten
    breaker.record_failure()
    breaker.record_failure()
    assert breaker.state is BreakerState.CLOSED
    breaker.record_failure()
    assert breaker.state is BreakerState.OPEN
    assert breaker.retry_after() == 5
    assert not breaker.try_dispatch()
    assert breaker.times_opened == 1


def test_half_open_allows_one_trial_and_closes_on_success() -> None:
    breaker, clock = _breaker()
    for _ in range(3):
        breaker.record_failure()
    clock.now += 5
    assert breaker.state is BreakerState.HALF_OPEN
    assert breaker.try_dispatch()
    assert not breaker.try_dispatch()  # a single trial
    breaker.record_success()
    assert breaker.state is BreakerState.CLOSED
    assert breaker.try_dispatch() and breaker.try_dispatch()


def test_failed_trial_reopens_for_another_cooldown() -> None:
    breaker, clock = _breaker()
    for _ in range(3):
        breaker.record_failure()
    clock.now += 6
    assert breaker.try_dispatch()
    breaker.record_failure()
    assert breaker.state is BreakerState.OPEN
    assert breaker.retry_after() == 5
    clock.now += 5
    assert breaker.state is BreakerState.HALF_OPEN


def test_successes_between_failures_do_not_hide_them() -> None:
    breaker, _ = _breaker()
    for _ in range(3):
        breaker.record_failure()
        breaker.record_success()
    assert breaker.state is BreakerState.OPEN
