"""The circuit breaker in-process, on an injected clock: opening, the half-open trial, and that
only the trial's own outcome closes (or reopens) it."""

from __future__ import annotations

from gateway.runtime.breaker import (
    BreakerMove,
    BreakerPolicy,
    BreakerState,
    CircuitBreaker,
    Permit,
)


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


def _permit(breaker: CircuitBreaker) -> Permit:
    permit = breaker.try_dispatch()
    assert permit is not None
    return permit


def _open(breaker: CircuitBreaker) -> None:
    for _ in range(3):
        breaker.record_failure(_permit(breaker))
    assert breaker.state is BreakerState.OPEN


def test_opens_after_threshold_failures_within_the_window() -> None:
    breaker, clock = _breaker()
    breaker.record_failure(_permit(breaker))
    clock.now += 11  # outside the window: forgotten
    breaker.record_failure(_permit(breaker))
    breaker.record_failure(_permit(breaker))
    assert breaker.state is BreakerState.CLOSED
    opened = breaker.record_failure(_permit(breaker))
    assert opened == BreakerMove(BreakerState.CLOSED, BreakerState.OPEN)
    assert breaker.state is BreakerState.OPEN
    assert breaker.retry_after() == 5
    assert breaker.try_dispatch() is None
    assert breaker.times_opened == 1


def test_half_open_allows_one_trial_and_closes_on_its_success() -> None:
    breaker, clock = _breaker()
    _open(breaker)
    clock.now += 5
    assert breaker.state is BreakerState.HALF_OPEN
    trial = _permit(breaker)
    assert trial.trial
    assert breaker.try_dispatch() is None  # a single trial
    closed = breaker.record_success(trial)
    assert closed == BreakerMove(BreakerState.HALF_OPEN, BreakerState.CLOSED)
    assert breaker.state is BreakerState.CLOSED
    assert breaker.try_dispatch() and breaker.try_dispatch()


def test_failed_trial_reopens_for_another_cooldown() -> None:
    breaker, clock = _breaker()
    _open(breaker)
    clock.now += 6
    trial = _permit(breaker)
    reopened = breaker.record_failure(trial)
    assert reopened == BreakerMove(BreakerState.HALF_OPEN, BreakerState.OPEN)
    assert breaker.state is BreakerState.OPEN
    assert breaker.retry_after() == 5
    clock.now += 5
    assert breaker.state is BreakerState.HALF_OPEN


def test_successes_between_failures_do_not_hide_them() -> None:
    breaker, _ = _breaker()
    for _ in range(3):
        failing, succeeding = _permit(breaker), _permit(breaker)
        breaker.record_failure(failing)
        breaker.record_success(succeeding)
    assert breaker.state is BreakerState.OPEN


def test_a_job_started_before_the_breaker_opened_cannot_close_it() -> None:
    # The bug found in review: a job dispatched while CLOSED, still running when the breaker
    # opened, succeeded while the half-open trial ran and closed the breaker.
    breaker, clock = _breaker()
    early = _permit(breaker)  # a long job starts while all is well
    _open(breaker)
    clock.now += 5
    trial = _permit(breaker)
    assert breaker.record_success(early) is None  # the early job finishes first, successfully
    assert breaker.state is BreakerState.HALF_OPEN
    assert breaker.try_dispatch() is None  # and the trial is still the only one in flight
    breaker.record_failure(trial)  # the trial's own outcome decides
    assert breaker.state is BreakerState.OPEN


def test_a_job_started_before_the_breaker_opened_neither_reopens_nor_ends_the_trial() -> None:
    breaker, clock = _breaker()
    early = _permit(breaker)
    _open(breaker)
    clock.now += 5
    trial = _permit(breaker)
    assert breaker.record_failure(early) is None
    assert breaker.state is BreakerState.HALF_OPEN
    assert breaker.try_dispatch() is None
    breaker.record_success(trial)
    assert breaker.state is BreakerState.CLOSED


def test_a_released_trial_lets_the_next_job_be_the_trial() -> None:
    breaker, clock = _breaker()
    _open(breaker)
    clock.now += 5
    trial = _permit(breaker)
    breaker.release(Permit(trial=True, token=-1))  # a stale permit: not the trial
    assert breaker.try_dispatch() is None
    breaker.release(trial)  # e.g. cancelled: no verdict
    second = _permit(breaker)
    assert second.trial and second.token != trial.token
    breaker.record_success(trial)  # the released trial's late success counts for nothing
    assert breaker.state is BreakerState.HALF_OPEN
    breaker.record_success(second)
    assert breaker.state is BreakerState.CLOSED


def test_each_opening_has_its_own_trial_after_a_trial_closed_it() -> None:
    # The trial that closes the breaker must end its trial too: a breaker that opens again
    # later needs a fresh trial, or it stays half-open with no job ever let through.
    breaker, clock = _breaker()
    _open(breaker)
    clock.now += 5
    assert breaker.record_success(_permit(breaker)) is not None
    _open(breaker)
    clock.now += 5
    assert breaker.state is BreakerState.HALF_OPEN
    second = breaker.try_dispatch()
    assert second is not None and second.trial
    breaker.record_success(second)
    assert breaker.state is BreakerState.CLOSED


def test_after_a_failed_trial_the_next_cooldown_lets_a_new_trial_through() -> None:
    breaker, clock = _breaker()
    _open(breaker)
    clock.now += 5
    breaker.record_failure(_permit(breaker))
    clock.now += 5
    assert breaker.state is BreakerState.HALF_OPEN
    retrial = breaker.try_dispatch()
    assert retrial is not None and retrial.trial
    breaker.record_success(retrial)
    assert breaker.state is BreakerState.CLOSED


def test_failures_of_jobs_started_before_it_opened_do_not_extend_the_cooldown() -> None:
    # Jobs dispatched while CLOSED that fail after the breaker opened were already counted:
    # they neither open it again (a longer cool-down) nor count as a new opening.
    breaker, clock = _breaker()
    early = [_permit(breaker) for _ in range(3)]
    _open(breaker)
    clock.now += 2
    for permit in early:
        assert breaker.record_failure(permit) is None
    assert breaker.state is BreakerState.OPEN
    assert breaker.retry_after() == 3
    assert breaker.times_opened == 1
    clock.now += 3
    assert breaker.state is BreakerState.HALF_OPEN


def test_a_released_trials_late_failure_neither_reopens_nor_ends_the_next_trial() -> None:
    breaker, clock = _breaker()
    _open(breaker)
    clock.now += 5
    trial = _permit(breaker)
    breaker.release(trial)  # e.g. cancelled: no verdict
    second = _permit(breaker)
    assert breaker.record_failure(trial) is None  # its late failure counts for nothing
    assert breaker.state is BreakerState.HALF_OPEN
    breaker.record_success(second)
    assert breaker.state is BreakerState.CLOSED


def test_jobs_started_before_it_opened_do_not_reopen_it_once_its_trial_closed_it() -> None:
    # Found in review: once a trial had closed the breaker, the failures of jobs in flight
    # through the outage counted again, and as many as the threshold reopened a recovered
    # backend for another cool-down.
    breaker, clock = _breaker()
    early = [_permit(breaker) for _ in range(3)]
    _open(breaker)
    clock.now += 5
    assert breaker.record_success(_permit(breaker)) == BreakerMove(
        BreakerState.HALF_OPEN, BreakerState.CLOSED
    )
    for permit in early:
        assert breaker.record_failure(permit) is None
    assert breaker.state is BreakerState.CLOSED
    # Jobs started after the recovery count as before: three failures open it again.
    for _ in range(3):
        breaker.record_failure(_permit(breaker))
    assert breaker.state is BreakerState.OPEN


def test_an_adopted_jobs_failure_counts_until_the_breaker_first_opens() -> None:
    # A job re-attached after a restart runs under Permit(token=0): its failure is the
    # backend's, as long as no opening happened since (then it started before it).
    breaker, _ = _breaker()
    adopted = Permit(trial=False, token=0)
    for _ in range(3):
        breaker.record_failure(adopted)
    assert breaker.state is BreakerState.OPEN
