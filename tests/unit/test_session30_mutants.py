"""Tests that kill hand mutants of policies, rate limits, fair sharing, sessions, pricing, queue
shares and the breaker which no other test caught.

Each test names the decision it pins; all run in-process, deterministic (injected clocks, no
sleeps, no wall clock)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from gateway.domain import sessions as domain
from gateway.domain.errors import ResourceExhausted
from gateway.domain.pricing import Cost, Price, Usage, charge_time, estimate
from gateway.domain.sessions import EndReason, FailurePolicy, Session, SessionMode, SessionState
from gateway.runtime.breaker import BreakerPolicy, BreakerState, CircuitBreaker, Permit
from gateway.runtime.fair_share import FairShare
from gateway.security.policies import PolicyBook
from gateway.security.rate_limits import RateLimiter
from gateway.security.tenant_policy import RateLimit, Tenant, TenantPolicy

T0 = datetime(2026, 11, 2, 9, 30, tzinfo=UTC)


# ---------------------------------------------------------------------------- policies


def test_a_configured_submit_rate_alone_turns_rate_limiting_on() -> None:
    # Without it the rate-limit interceptor stays out of every call, and a tenant whose
    # policy sets only a submit rate submits as fast as it likes.
    only_submit = TenantPolicy(submit_rate=RateLimit(per_second=1.0, burst=1))
    book = PolicyBook([Tenant("acme", "Acme", only_submit, etag="e")])
    assert book.rate_limited


def test_a_default_policy_with_a_rate_turns_rate_limiting_on() -> None:
    # The default policy applies to every tenant named nowhere: its rate must be enforced
    # though no tenant is configured or stored.
    book = PolicyBook(default=TenantPolicy(request_rate=RateLimit(per_second=1.0, burst=1)))
    assert book.rate_limited


def test_a_stored_tenants_rate_loaded_from_the_store_turns_rate_limiting_on() -> None:
    # Another replica's UpdateTenant reaches this one through `load`: a rate it set must
    # bring the interceptor in here too.
    book = PolicyBook()
    assert not book.rate_limited
    rated = TenantPolicy(request_rate=RateLimit(per_second=1.0, burst=1))
    book.load([Tenant("acme", "Acme", rated, etag="e")])
    assert book.rate_limited
    book.load([])
    assert not book.rate_limited


def test_a_put_tells_the_replicas_hook_which_tenant_changed() -> None:
    # The hook is how peers sharing the store hear of the change at once (gateway.server).
    book = PolicyBook()
    heard: list[str] = []
    book.on_put = heard.append
    book.put("acme", TenantPolicy(max_qubits=3))
    assert heard == ["acme"]


def test_a_refresh_that_began_before_a_put_and_ends_last_does_not_undo_it() -> None:
    # The periodic refresh and a peer's signal both run load_tenants, concurrently: the read
    # that began first may end last. (It put the old policy back: the newer load had already
    # forgotten the put.)
    old, new = TenantPolicy(max_qubits=5), TenantPolicy(max_qubits=7)
    book = PolicyBook()
    book.load([Tenant("acme", "Acme", old, etag="1")])
    stale = book.begin_read()  # the periodic refresh begins reading: the store holds `old`
    book.put("acme", new)  # UpdateTenant on this replica (the store was written first)
    fresh = book.begin_read()  # a peer's signal starts a second read, which sees `new`
    book.load([Tenant("acme", "Acme", new, etag="2")], fresh)
    book.load([Tenant("acme", "Acme", old, etag="1")], stale)  # ends last
    assert book.policy("acme") == new


def test_a_read_begun_later_at_the_same_version_is_the_newer_one() -> None:
    # Another replica's UpdateTenant (no put here, so no version change) lands between the
    # starts of two reads: the later read saw it, and the earlier one ending last must not
    # undo it until the next refresh.
    old, new = TenantPolicy(max_qubits=5), TenantPolicy(max_qubits=7)
    book = PolicyBook()
    book.load([Tenant("acme", "Acme", old, etag="1")])
    stale = book.begin_read()
    fresh = book.begin_read()  # after the other replica's commit: sees `new`
    assert stale.version == fresh.version
    book.load([Tenant("acme", "Acme", new, etag="2")], fresh)
    book.load([Tenant("acme", "Acme", old, etag="1")], stale)
    assert book.policy("acme") == new
    book.load([Tenant("acme", "Acme", old, etag="3")])  # a later read: it applies
    assert book.policy("acme") == old


# ---------------------------------------------------------------------------- rate limits


class _Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _refused(limiter: RateLimiter, rate: RateLimit) -> bool:
    try:
        limiter.check("acme", "request", rate)
    except ResourceExhausted:
        return True
    return False


def test_a_clock_stepping_back_takes_no_tokens_away() -> None:
    clock = _Clock()
    limiter = RateLimiter(clock)
    rate = RateLimit(per_second=1.0, burst=2)
    assert not _refused(limiter, rate)  # the bucket is made (full) and one token taken
    clock.now -= 100.0
    assert not _refused(limiter, rate)  # the token left is still there
    assert _refused(limiter, rate)


def test_a_rate_change_credits_the_tokens_refilled_at_the_old_rate_until_then() -> None:
    clock = _Clock()
    limiter = RateLimiter(clock)
    fast, slow = RateLimit(per_second=1.0, burst=2), RateLimit(per_second=0.5, burst=2)
    assert not _refused(limiter, fast) and not _refused(limiter, fast)
    clock.now += 1.0  # one token refilled at the old rate
    assert not _refused(limiter, slow)
    assert _refused(limiter, slow)


def test_a_rate_removed_and_set_again_starts_from_a_full_bucket() -> None:
    # Without a rate the bucket is forgotten (an unlimited tenant keeps none), so a rate set
    # again later is the first call's: created full.
    clock = _Clock()
    limiter = RateLimiter(clock)
    rate = RateLimit(per_second=0.001, burst=1)
    assert not _refused(limiter, rate) and _refused(limiter, rate)
    limiter.check("acme", "request", None)
    assert not _refused(limiter, rate)


# ---------------------------------------------------------------------------- fair share


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


@pytest.mark.anyio
async def test_a_release_skipping_a_cancelled_waiter_grants_the_next_one() -> None:
    # The cancelled waiter's future is passed over; the freed slot must still go to the next
    # waiter in the same release, or it stays free with a waiter queued until another release.
    fair = FairShare(1)
    gates = {t: asyncio.Event() for t in ("alice", "bob", "carol")}
    entered: list[str] = []

    async def hold(tenant: str) -> None:
        async with fair.slot(tenant):
            entered.append(tenant)
            await gates[tenant].wait()

    holder = asyncio.create_task(hold("alice"))
    await _settle()
    bob = asyncio.create_task(hold("bob"))
    await _settle()
    carol = asyncio.create_task(hold("carol"))
    await _settle()
    assert fair.waiting == 2
    gates["alice"].set()  # alice's release runs in the next turn ...
    bob.cancel()  # ... after bob's future (ahead of carol's) is already cancelled
    await _settle()
    assert entered == ["alice", "carol"] and fair.held("carol") == 1
    gates["carol"].set()
    done = await asyncio.gather(holder, bob, carol, return_exceptions=True)
    assert isinstance(done[1], asyncio.CancelledError)


# ---------------------------------------------------------------------------- sessions


def _session(**changes: object) -> Session:
    base = Session(
        id="s1",
        tenant="acme",
        backend="aer",
        mode=SessionMode.DEDICATED,
        state=SessionState.PENDING,
        failure_policy=FailurePolicy.CONTINUE,
        max_ttl_s=60.0,
        idle_ttl_s=600.0,
        created_at=T0,
    )
    return Session(**{**base.__dict__, **changes})


def test_a_session_without_a_first_job_has_no_max_ttl_deadline() -> None:
    # The max TTL counts from the first job: a PENDING session ends only by its idle TTL,
    # and not at all while it has work.
    pending = _session()
    assert domain.deadline(pending, has_work=False) == (
        T0 + timedelta(seconds=600),
        EndReason.IDLE_TTL,
    )
    assert domain.deadline(pending, has_work=True) is None
    assert domain.expire(pending, T0 + timedelta(seconds=61), has_work=False) is None


def test_a_succeeded_job_does_not_fail_an_abort_session() -> None:
    active = _session(
        state=SessionState.ACTIVE, failure_policy=FailurePolicy.ABORT, first_job_at=T0
    )
    later = T0 + timedelta(seconds=5)
    after = domain.job_ended(active, False, later, has_work=False)
    assert after.state is SessionState.ACTIVE and after.end_reason is None
    assert after.last_activity_at == later


def test_a_drained_closing_session_records_its_last_jobs_end_as_last_activity() -> None:
    # last_activity_at is "a job accepted or a job ended": the job that drains a CLOSING
    # session ended too.
    closing = _session(state=SessionState.CLOSING, first_job_at=T0, last_activity_at=T0)
    later = T0 + timedelta(seconds=5)
    closed = domain.job_ended(closing, False, later, has_work=False)
    assert closed.state is SessionState.CLOSED and closed.end_reason is EndReason.CLOSED
    assert closed.last_activity_at == later and closed.ended_at == later


def test_a_jobs_end_leaves_an_ended_session_as_it_is() -> None:
    # A job cancelled with its session ends after the session did: under ABORT its failure
    # must not turn a CANCELLED session into a FAILED one, nor touch its record.
    cancelled = domain.cancel(
        _session(state=SessionState.ACTIVE, failure_policy=FailurePolicy.ABORT, first_job_at=T0),
        T0,
    )
    later = T0 + timedelta(seconds=5)
    assert domain.job_ended(cancelled, True, later, has_work=False) is cancelled
    assert domain.job_ended(cancelled, False, later, has_work=False) is cancelled


def test_a_retried_create_session_with_labels_in_another_order_is_the_same_request() -> None:
    # Labels are a map: a client (or a proto map) may iterate them in any order.
    one = _session(labels={"a": "1", "b": "2"})
    other = _session(labels={"b": "2", "a": "1"})
    assert domain.request_digest(one) == domain.request_digest(other)


# ---------------------------------------------------------------------------- pricing


def test_a_failed_jobs_bill_in_another_unit_is_not_its_cost_when_there_is_a_price() -> None:
    # As in `charge`: a provider bill in a unit the price table does not use would be summed
    # into the tenant's quota as if it were in the price's unit.
    price = Price(per_second=2.0, unit="USD")
    usage = Usage(shots=10, execution_seconds=3.0, provider_cost=7.0, provider_unit="credits")
    assert charge_time(price, usage) == Cost(6.0, "USD")


def test_a_failed_jobs_provider_bill_in_the_price_unit_is_its_cost() -> None:
    price = Price(per_second=2.0, unit="USD")
    usage = Usage(shots=10, execution_seconds=3.0, provider_cost=7.0, provider_unit="USD")
    assert charge_time(price, usage) == Cost(7.0, "USD")
    assert charge_time(None, usage) == Cost(7.0, "USD")


def test_a_failed_job_is_charged_its_time_only() -> None:
    price = Price(per_task=5.0, per_shot=1.0, per_second=2.0, unit="USD")
    assert charge_time(price, Usage(shots=10, execution_seconds=3.0)) == Cost(6.0, "USD")


def test_a_provider_cost_that_is_not_a_finite_amount_is_refused() -> None:
    with pytest.raises(ValueError):
        Usage(shots=1, execution_seconds=0.0, provider_cost=float("nan"))
    with pytest.raises(ValueError):
        Usage(shots=1, execution_seconds=0.0, provider_cost=-1.0)


def test_an_estimate_without_a_price_excludes_no_per_second_charge() -> None:
    assert estimate(None, 100, 1).per_second_excluded is False


# ---------------------------------------------------------------------------- breaker


def test_retry_after_is_zero_once_the_cooldown_has_passed() -> None:
    # It becomes a RetryInfo delay: never negative.
    clock = _Clock()
    breaker = CircuitBreaker(BreakerPolicy(failure_threshold=1, cooldown_s=30.0), clock)
    permit = breaker.try_dispatch()
    assert permit is not None
    breaker.record_failure(permit)
    clock.now += 10.0
    assert breaker.retry_after() == 20.0
    clock.now += 100.0
    assert breaker.retry_after() == 0.0


def _breaker(threshold: int, clock: _Clock) -> CircuitBreaker:
    return CircuitBreaker(
        BreakerPolicy(failure_threshold=threshold, window_s=60.0, cooldown_s=30.0), clock
    )


def _dispatch(breaker: CircuitBreaker) -> Permit:
    permit = breaker.try_dispatch()
    assert permit is not None
    return permit


def test_a_failure_exactly_one_window_old_still_counts() -> None:
    clock = _Clock()
    breaker = _breaker(2, clock)
    breaker.record_failure(_dispatch(breaker))
    clock.now += 60.0
    breaker.record_failure(_dispatch(breaker))
    assert breaker.state is BreakerState.OPEN


def test_the_last_job_started_before_it_opened_does_not_reopen_it_after_recovery() -> None:
    clock = _Clock()
    breaker = _breaker(1, clock)
    first, last_before = _dispatch(breaker), _dispatch(breaker)
    breaker.record_failure(first)  # opens: `last_before` was the last permit handed out
    clock.now += 30.0
    breaker.record_success(_dispatch(breaker))  # the trial closes it
    assert breaker.record_failure(last_before) is None
    assert breaker.state is BreakerState.CLOSED


def test_a_released_trials_late_failure_after_a_failed_trial_and_recovery_is_ignored() -> None:
    # A failed trial reopens the breaker: every permit handed out by then (the released
    # trial's too) started before that opening, and proves nothing once a later trial closed
    # it.
    clock = _Clock()
    breaker = _breaker(1, clock)
    breaker.record_failure(_dispatch(breaker))
    clock.now += 30.0
    released = _dispatch(breaker)
    breaker.release(released)
    breaker.record_failure(_dispatch(breaker))  # the next trial fails: open again
    clock.now += 30.0
    breaker.record_success(_dispatch(breaker))
    assert breaker.state is BreakerState.CLOSED
    assert breaker.record_failure(released) is None
    assert breaker.state is BreakerState.CLOSED
