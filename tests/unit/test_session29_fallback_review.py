"""Review of JobOptions.fallback_backend (session 29): what a job meets on its fallback that it
would not have met on its own backend. In process, on the job-core harness (real SQLite store,
scripted runners, a hand-moved clock). Each finding was a strict xfail until fixed."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from gateway.backends.base import PreparedJob
from gateway.domain.errors import GatewayError, PermissionDenied, Unavailable
from gateway.domain.failures import FailureKind
from gateway.domain.jobs import JobSpec
from gateway.domain.pricing import Price
from gateway.runtime.breaker import BreakerPolicy, BreakerState
from gateway.security.policies import PolicyBook
from gateway.security.tenant_policy import PeriodQuota, TenantPolicy
from gateway.store.sqlite import SqliteStore
from tests.core_harness import Core, ScriptedRunner, build_core, make_queue, spec

pytestmark = pytest.mark.anyio

# `main` and its fallback `spare`: breakers open at one backend fault and half-open 30 s later.
ONE_FAULT_OPENS = BreakerPolicy(failure_threshold=1, window_s=60, cooldown_s=30)
# The tenant may run at most this many shots per job.
MAX_SHOTS = 1000


def _shots_of(core: Core, backend: str, shots: int) -> None:
    """`backend` prepares every job as `shots` shots: a PUB that sets none runs the backend's
    own `default_shots`, which is configured per backend (aer 1024, another 4000)."""
    adapter = core.backends[backend].adapter
    prepare = adapter.prepare

    def preparing(job_spec: JobSpec, seed: int, circuits: Any) -> PreparedJob:
        return dataclasses.replace(prepare(job_spec, seed, circuits), shots=shots)

    adapter.prepare = preparing  # type: ignore[method-assign,assignment]


async def _core(store: SqliteStore) -> Core:
    """`main` runs a job as 100 shots, `spare` as 5000, over the tenant's per-job limit."""
    policies = PolicyBook(default=TenantPolicy(max_shots_per_job=MAX_SHOTS))
    runners = {"main": ScriptedRunner(slots=2), "spare": ScriptedRunner(slots=1)}
    core = await build_core(store, "memory", runners, breaker=ONE_FAULT_OPENS, policies=policies)
    _shots_of(core, "main", 100)
    _shots_of(core, "spare", 5 * MAX_SHOTS)
    return core


async def _open_main(core: Core) -> None:
    """Opens `main`'s breaker with one backend fault (its probe passes)."""
    core.backends["main"].health.serving = True
    job = await core.submit("alice", spec("main", text="fault"))
    await core.until("alice", job.id, "RUNNING")
    core.runners["main"].fail(job.id, FailureKind.BACKEND_FAULT)
    await core.until("alice", job.id, "FAILED")
    assert core.backends["main"].breaker.state is BreakerState.OPEN


async def test_a_fallback_over_the_tenants_limits_leaves_the_job_behind_a_half_open_trial(
    store: SqliteStore,
) -> None:
    # README: "A fallback that cannot run the job ... leaves it on its backend while that is
    # half-open". A job the tenant may run on its backend (100 shots) but not on the fallback
    # (5000: its default_shots) was refused PERMISSION_DENIED SHOT_LIMIT_EXCEEDED, "repeating
    # the job can never pass", while the same job naming no fallback queues behind the trial:
    # naming a fallback made it worse than naming none.
    core = await _core(store)
    runtime = core.backends["main"]
    try:
        await _open_main(core)
        core.clock.advance(30)
        trial = await core.submit("bob", spec("main", text="trial"))
        await core.until("bob", trial.id, "RUNNING")
        assert runtime.breaker.trial_running
        plain = await core.submit("bob", spec("main", text="plain"))
        assert plain.placement == "main"
        named = await core.submit("bob", spec("main", text="named", fallback_backend="spare"))
        assert named.placement == "main"
    finally:
        await core.manager.close()


async def test_a_fallback_over_the_tenants_limits_is_the_open_backends_unavailability(
    store: SqliteStore,
) -> None:
    # README: while the backend is open, "one the backend could run is refused with the
    # backend's retryable BACKEND_UNAVAILABLE (naming the fallback and its reason), one
    # neither can run (or over the tenant's per-job limits) with the backend's own refusal".
    # A job within the tenant's limits on `main` was refused for the fallback's shots with a
    # PERMISSION_DENIED that names the fallback as the backend and has no RetryInfo: the
    # client gives up on a job `main` runs once its breaker closes.
    core = await _core(store)
    try:
        await _open_main(core)
        with pytest.raises(Unavailable) as refused:
            await core.submit("bob", spec("main", text="named", fallback_backend="spare"))
        error = refused.value
        assert error.reason == "BACKEND_UNAVAILABLE"
        assert error.metadata["backend"] == "backends/main"
        assert error.metadata["fallbackBackend"] == "backends/spare"
        assert error.metadata["fallbackReason"] == "SHOT_LIMIT_EXCEEDED"
        assert error.retry_after is not None and error.retry_after > 0
    finally:
        await core.manager.close()


async def test_a_job_over_the_tenants_limits_on_both_keeps_the_backends_own_refusal(
    store: SqliteStore,
) -> None:
    # The other half of the README rule: over the limit on `main` too, the answer is `main`'s
    # own refusal. It was the fallback's PERMISSION_DENIED, naming `spare` (and its shots):
    # the caller was told to fix a job for a backend it never asked for.
    core = await _core(store)
    try:
        await _open_main(core)
        _shots_of(core, "main", 2 * MAX_SHOTS)
        with pytest.raises(PermissionDenied) as refused:
            await core.submit("bob", spec("main", text="named", fallback_backend="spare"))
        assert refused.value.reason == "SHOT_LIMIT_EXCEEDED"
        assert refused.value.metadata["backend"] == "backends/main"
    finally:
        await core.manager.close()


async def _paid_spare_core(store: SqliteStore) -> Core:
    """`main` is free, `spare` costs 1 USD a shot (10 shots a job), and every tenant has 5 USD
    a day."""
    quota = PeriodQuota(cost=5.0, cost_unit="USD")
    policies = PolicyBook(default=TenantPolicy(quota=quota))
    runners = {"main": ScriptedRunner(slots=2), "spare": ScriptedRunner(slots=1)}
    core = await build_core(store, "memory", runners, breaker=ONE_FAULT_OPENS, policies=policies)
    spare = core.backends["spare"]
    spare.settings = dataclasses.replace(spare.settings, price=Price(per_shot=1.0))
    _shots_of(core, "spare", 10)
    return core


async def test_a_fallback_priced_over_the_tenants_quota_leaves_the_job_behind_a_half_open_trial(
    store: SqliteStore,
) -> None:
    # `main` is free, `spare` costs 1 USD a shot, and the tenant has 5 USD a day left. While
    # `main`'s trial is out, a job naming `spare` was placed there and refused
    # COST_QUOTA_EXCEEDED (retry at the period's end, hours away), while the same job naming
    # no fallback queues behind the trial and costs nothing: the fallback is only preferred
    # to waiting, and one the tenant cannot pay for does not take the job.
    core = await _paid_spare_core(store)
    runtime = core.backends["main"]
    try:
        await _open_main(core)
        core.clock.advance(30)
        trial = await core.submit("bob", spec("main", text="trial"))
        await core.until("bob", trial.id, "RUNNING")
        assert runtime.breaker.trial_running
        plain = await core.submit("bob", spec("main", text="plain"))
        assert plain.placement == "main"
        named = await core.submit("bob", spec("main", text="named", fallback_backend="spare"))
        assert named.placement == "main"
    finally:
        await core.manager.close()


async def test_a_job_placed_on_the_fallback_stays_there_after_a_restart_at_its_price(
    store: SqliteStore,
) -> None:
    # Held: recovered after a restart (in which `main`'s breaker starts closed again), a job
    # placed on `spare` is queued, prepared and run on `spare` with its seed, and reports and
    # is charged as run there (ExecutionInfo.backend, spare's price), not as `main`.
    first = await build_core(
        store,
        "memory",
        {"main": ScriptedRunner(slots=1), "spare": ScriptedRunner(slots=0)},
        breaker=ONE_FAULT_OPENS,
    )
    await _open_main(first)
    placed = await first.submit("bob", spec("main", text="named", fallback_backend="spare"))
    assert placed.placement == "spare"
    await first.manager.close()
    runners = {"main": ScriptedRunner(slots=1), "spare": ScriptedRunner(slots=1)}
    core = await build_core(store, "memory", runners, clock=first.clock)
    spare = core.backends["spare"]
    spare.settings = dataclasses.replace(spare.settings, price=Price(per_task=2.5))
    try:
        await core.until("bob", placed.id, "RUNNING")
        assert runners["main"].started.is_set() is False
        runners["spare"].succeed(placed.id)
        done = await core.until("bob", placed.id, "SUCCEEDED")
        assert done.placement == "spare" and done.backend == "main"
        assert done.execution is not None
        assert done.execution.backend == "spare"
        assert done.execution.seed == placed.seed
        assert done.execution.cost is not None and done.execution.cost.amount == 2.5
    finally:
        await core.manager.close()


async def test_cancelling_a_job_queued_on_its_fallback_takes_it_out_of_that_queue(
    store: SqliteStore,
) -> None:
    # Held: CancelJob finds a queued job on its placement's queue (the fallback's), not on the
    # backend it named.
    core = await build_core(
        store,
        "memory",
        {"main": ScriptedRunner(slots=1), "spare": ScriptedRunner(slots=0)},
        breaker=ONE_FAULT_OPENS,
    )
    try:
        await _open_main(core)
        placed = await core.submit("bob", spec("main", text="named", fallback_backend="spare"))
        assert await core.backends["spare"].queue.depth() == 1
        cancelled = await core.manager.cancel("bob", placed.id)
        assert cancelled.state.value == "CANCELLED"
        assert await core.backends["spare"].queue.depth() == 0
    finally:
        await core.manager.close()


async def test_another_replica_claims_a_fallback_job_from_the_fallbacks_shared_queue(
    store: SqliteStore,
) -> None:
    # Held: with the store's claim queue, a job placed on `spare` is claimed by a replica's
    # `spare` queue, never by one serving `main`, the backend it named.
    core = await build_core(
        store,
        "store",
        {"main": ScriptedRunner(slots=1), "spare": ScriptedRunner(slots=0)},
        breaker=ONE_FAULT_OPENS,
    )
    try:
        await _open_main(core)
        placed = await core.submit("bob", spec("main", text="named", fallback_backend="spare"))
        assert placed.placement == "spare"
        other_main = make_queue("store", store, "main", "replica-2", core.clock, 3600.0)
        assert await other_main.claim() is None
        other_spare = make_queue("store", store, "spare", "replica-2", core.clock, 3600.0)
        claim = await other_spare.claim()
        assert claim is not None and claim.job.id == placed.id
    finally:
        await core.manager.close()


async def test_a_fallback_priced_over_quota_while_the_backend_is_open_is_its_unavailability(
    store: SqliteStore,
) -> None:
    # README (0eff8bc): a fallback that cannot take the job ("a price its quota cannot pay
    # this period") leaves it on its backend; "while the backend is open ... one the backend
    # could run is refused with the backend's retryable BACKEND_UNAVAILABLE (naming the
    # fallback and its reason)". `main` is free: the same job naming no fallback gets
    # BACKEND_UNAVAILABLE and runs once `main` closes. Found as a surviving mutant: the quota
    # refusal went through only while the backend was usable, and answered COST_QUOTA_EXCEEDED
    # (not retryable until the period's end) while it was open.
    core = await _paid_spare_core(store)
    try:
        await _open_main(core)
        with pytest.raises(Unavailable) as plain:
            await core.submit("bob", spec("main", text="plain"))
        assert plain.value.reason == "BACKEND_UNAVAILABLE"
        with pytest.raises(GatewayError) as named:
            await core.submit("bob", spec("main", text="named", fallback_backend="spare"))
        assert named.value.reason == "BACKEND_UNAVAILABLE", named.value.reason
        assert named.value.metadata["fallbackReason"] == "COST_QUOTA_EXCEEDED"
    finally:
        await core.manager.close()
