"""Review: an administrator changing things while work is in flight (UpdateTenant during a
submission, a quota's unit changed mid-period, a rate tightened mid-burst). In process, a real
SQLite store, injected clocks; each finding is a strict xfail until fixed."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from datetime import UTC, datetime

import pytest

from gateway.backends.base import BackendAdapter
from gateway.domain.circuits import CircuitSource
from gateway.domain.errors import NotFound, ResourceExhausted
from gateway.domain.jobs import ExecutionInfo, JobState
from gateway.domain.pricing import Cost
from gateway.security.policies import PolicyBook
from gateway.security.rate_limits import RateLimiter
from gateway.security.tenant_policy import RateLimit, TenantPolicy, period_at
from gateway.store.base import NewJob, QuotaCharge
from gateway.store.sqlite import SqliteStore
from tests.core_harness import ScriptedRunner, build_core, spec

pytestmark = pytest.mark.anyio
T0 = datetime(2026, 11, 2, 9, 30, 0, tzinfo=UTC)


# --- 1. a backend removed from the policy while a submission compiles is still admitted ------


class GatedCompiler:
    """Compiles as DirectCompiler does, once `go` is set; `entered` when a compile began."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.go = asyncio.Event()

    async def compile(
        self, tenant: str, backend: str, adapter: BackendAdapter, source: CircuitSource, field: str
    ) -> object:
        self.entered.set()
        await self.go.wait()
        return adapter.compile_circuit(source)


async def test_a_backend_removed_while_a_submission_compiles_is_refused(
    store: SqliteStore,
) -> None:
    policies = PolicyBook()
    policies.put("acme", TenantPolicy(allowed_simulators=("aer",)))
    core = await build_core(store, "memory", {"aer": ScriptedRunner()}, policies=policies)
    gate = GatedCompiler()
    core.manager._admission._compiler = gate
    try:
        submitting = asyncio.ensure_future(core.submit("acme", spec("aer")))
        await gate.entered.wait()
        # The admin's UpdateTenant commits and applies here (AdminService puts the new policy).
        policies.put("acme", TenantPolicy(allowed_simulators=()))
        gate.go.set()
        with pytest.raises(NotFound) as refused:
            await submitting
        assert refused.value.reason == "BACKEND_NOT_FOUND"
    finally:
        await core.manager.close()


# --- 2. a cost quota's unit changed mid-period counts the old unit's spending --------------


def _job(charge: QuotaCharge) -> NewJob:
    return NewJob(
        id=uuid.uuid4().hex,
        tenant="acme",
        request_id="",
        request_hash=hashlib.sha256(b"x").digest(),
        backend="aer",
        spec=b"spec",
        num_pubs=1,
        seed=1,
        created_at=T0,
        charge=charge,
    )


def _charge(cost: float, unit: str, max_cost: float | None) -> QuotaCharge:
    period = period_at(T0, 3600.0)
    return QuotaCharge(
        period_start=period.start,
        period_end=period.end,
        shots=1,
        cost=cost,
        cost_unit=unit,
        priced=True,
        max_cost=max_cost,
    )


# Fixed: quota_totals summed cost per (tenant, period) whatever its unit: after an admin moved
# a tenant's cost quota from USD to EUR mid-period, the USD the period's jobs spent or held
# counted against the EUR quota (a job that fit was refused COST_QUOTA_EXCEEDED) and
# GetTenantUsage reported those dollars as euros. The totals' sums are now in one unit.
async def test_a_cost_quota_unit_changed_mid_period_counts_only_its_own_unit(
    store: SqliteStore,
) -> None:
    # Admitted under {cost = 100, cost_unit = "USD"}: 90 USD held.
    dollars = _job(_charge(90.0, "USD", 100.0))
    await store.create_job(dollars)
    # UpdateTenant: {cost = 100, cost_unit = "EUR"}, same period. A 50 EUR job fits.
    await store.create_job(_job(_charge(50.0, "EUR", 100.0)))
    period = period_at(T0, 3600.0)
    usage = await store.tenant_usage("acme", period.start, period.end)
    assert usage.cost_reserved == pytest.approx(50.0)  # the EUR held, not 140 "EUR"
    assert usage.shots_reserved == 2  # shots count whatever the unit
    # The dollar job ends: its cost leaves the euro sums alone.
    execution = ExecutionInfo(backend="aer", seed=1, cost=Cost(80.0, "USD"))
    await store.finish_job(dollars.id, JobState.SUCCEEDED, ended_at=T0, execution=execution)
    usage = await store.tenant_usage("acme", period.start, period.end, "EUR")
    assert (usage.cost_reserved, usage.cost_used) == (pytest.approx(50.0), 0.0)
    assert usage.shots_used == 1
    # Asked in dollars (nothing is held in them any more): none.
    dollars_now = await store.tenant_usage("acme", period.start, period.end, "USD")
    assert (dollars_now.cost_reserved, dollars_now.cost_used) == (0.0, 0.0)
    # A 60 EUR job is past the euro quota (50 + 60 > 100), whatever the dollars did.
    with pytest.raises(ResourceExhausted) as refused:
        await store.create_job(_job(_charge(60.0, "EUR", 100.0)))
    assert refused.value.reason == "COST_QUOTA_EXCEEDED"


# --- 3. tightening a tenant's rate hands it a fresh, full bucket ----------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _takes(limiter: RateLimiter, rate: RateLimit, calls: int) -> int:
    passed = 0
    for _ in range(calls):
        try:
            limiter.check("acme", "request", rate)
            passed += 1
        except ResourceExhausted:
            pass
    return passed


def test_tightening_a_rate_does_not_refill_the_bucket() -> None:
    clock = Clock()
    limiter = RateLimiter(clock)
    loose = RateLimit(per_second=1.0, burst=100)
    assert _takes(limiter, loose, 100) == 100  # the burst, spent at one instant
    assert _takes(limiter, loose, 1) == 0
    tight = RateLimit(per_second=1.0, burst=10)  # UpdateTenant, no time passes
    assert _takes(limiter, tight, 10) == 0
    clock.now += 3.0  # refills at the new rate from what was left
    assert _takes(limiter, tight, 10) == 3
