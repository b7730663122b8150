"""Store contract, from a hand mutation review of the store: each test here fails on a
plausible wrong implementation (a swapped column, a dropped filter term, a lost field on
write) that the rest of the contract suite let pass. Runs on each implementation of
tests/contract/stores.py."""

from __future__ import annotations

import dataclasses
import hashlib
from datetime import UTC, datetime, timedelta

import pytest

from gateway.domain.errors import Code, reason_code
from gateway.domain.job_filter import Comparison, FilterField, FilterOp, JobFilter
from gateway.domain.jobs import ExecutionInfo, Job, JobError, JobState, JobTimings
from gateway.domain.pricing import Cost, Usage
from gateway.store.base import NewJob, QuotaCharge, Store, StoredTenant, TenantUsageRecord
from tests.contract.stores import StoreOpener

pytestmark = pytest.mark.anyio

T0 = datetime(2026, 11, 2, 9, 30, 0, 123456, tzinfo=UTC)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
SECOND = timedelta(seconds=1)
US = timedelta(microseconds=1)


def new_job(
    job_id: str,
    *,
    tenant: str = "acme",
    backend: str = "aer",
    placement: str = "",
    created_at: datetime = T0,
    request_id: str = "",
    trace_context: str = "",
) -> NewJob:
    return NewJob(
        id=job_id,
        tenant=tenant,
        request_id=request_id,
        request_hash=hashlib.sha256(job_id.encode()).digest(),
        backend=backend,
        spec=job_id.encode(),
        num_pubs=1,
        seed=7,
        created_at=created_at,
        placement=placement,
        trace_context=trace_context,
    )


def _ns(at: datetime) -> int:
    return (at - EPOCH) // US * 1000


async def _get(store: Store, job_id: str) -> Job:
    job = await store.get_job(job_id)
    assert job is not None
    return job


async def _ids(store: Store, clauses: tuple[tuple[Comparison, ...], ...]) -> list[str]:
    page = await store.list_jobs("acme", filter=JobFilter(clauses), limit=100)
    return [job.id for job in page.jobs]


# -- usage and cost: every field stored and read back in its own place ------------------------


async def test_usage_and_cost_come_back_field_for_field(store_factory: StoreOpener) -> None:
    # Every numeric field a distinct value, so a swapped or defaulted column shows.
    execution = ExecutionInfo(
        backend="ibm-fez",
        seed=2**63 + 5,
        sdk_versions={"qiskit": "2.6.2", "qiskit-ibm-runtime": "0.43.0"},
        layouts=((3, 1), (0, 2, 4)),
        attempts=3,
        usage=Usage(
            shots=4096, execution_seconds=1.75, provider_cost=0.5, provider_unit="USD", tasks=4
        ),
        cost=Cost(amount=2.25, unit="credits"),
    )
    timings = JobTimings(queued_s=0.5, transpile_s=0.25, execute_s=4.0)
    store = await store_factory()
    await store.create_job(new_job("j"))
    await store.mark_running("j", T0 + SECOND)
    done = await store.finish_job(
        "j", JobState.SUCCEEDED, ended_at=T0 + 2 * SECOND, execution=execution, timings=timings
    )
    assert done is not None
    assert done.execution == execution
    assert done.timings == timings
    listed = (await store.list_jobs("acme")).jobs
    assert [job.execution for job in listed] == [execution]
    # Read by another handle (another process): what is on disk, not what was handed in.
    other = await store_factory()
    assert (await _get(other, "j")).execution == execution
    assert (await _get(other, "j")).timings == timings


async def test_usage_without_a_provider_cost_keeps_its_defaults(store: Store) -> None:
    execution = ExecutionInfo(backend="aer", seed=None, usage=Usage(10, 0.0))
    await store.create_job(new_job("j"))
    await store.finish_job("j", JobState.SUCCEEDED, ended_at=T0, execution=execution)
    got = (await _get(store, "j")).execution
    assert got == execution
    assert got is not None and got.usage is not None
    assert got.usage.provider_cost is None and got.usage.tasks == 1 and got.seed is None


async def test_a_failure_keeps_its_own_status_code_not_its_reason_s(store: Store) -> None:
    # An execution error may carry a code other than its reason's registered one.
    error = JobError(
        code=Code.DEADLINE_EXCEEDED,
        reason="PROVIDER_ERROR",
        message="the provider timed out",
        metadata={"providerJobId": "p-9"},
    )
    assert reason_code(error.reason) is not error.code
    await store.create_job(new_job("j"))
    await store.finish_job("j", JobState.FAILED, ended_at=T0, error=error)
    assert (await _get(store, "j")).error == error
    assert [job.error for job in (await store.list_jobs("acme")).jobs] == [error]


# -- listing: create-time bounds that tie on one instant --------------------------------------


async def test_of_a_strict_and_a_loose_lower_bound_at_one_instant_the_strict_one_holds(
    store: Store,
) -> None:
    # create_time >= X AND create_time > X is create_time > X, in either order.
    for job_id, at in (("before", T0 - US), ("at", T0), ("after", T0 + US)):
        await store.create_job(new_job(job_id, created_at=at))
    ge = Comparison(FilterField.CREATE_TIME, FilterOp.GE, _ns(T0))
    gt = Comparison(FilterField.CREATE_TIME, FilterOp.GT, _ns(T0))
    assert await _ids(store, ((ge,), (gt,))) == ["after"]
    assert await _ids(store, ((gt,), (ge,))) == ["after"]


async def test_of_a_strict_and_a_loose_upper_bound_at_one_instant_the_strict_one_holds(
    store: Store,
) -> None:
    for job_id, at in (("before", T0 - US), ("at", T0), ("after", T0 + US)):
        await store.create_job(new_job(job_id, created_at=at))
    le = Comparison(FilterField.CREATE_TIME, FilterOp.LE, _ns(T0))
    lt = Comparison(FilterField.CREATE_TIME, FilterOp.LT, _ns(T0))
    assert await _ids(store, ((le,), (lt,))) == ["before"]
    assert await _ids(store, ((lt,), (le,))) == ["before"]


# -- fields written at creation -----------------------------------------------------------------


async def test_trace_context_and_placement_are_stored_with_the_job(
    store_factory: StoreOpener,
) -> None:
    traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    store = await store_factory()
    made = await store.create_job(
        new_job("j", placement="aer-fallback", trace_context=traceparent, request_id="r")
    )
    assert made.job.trace_context == traceparent
    assert (made.job.backend, made.job.placement) == ("aer", "aer-fallback")
    other = await store_factory()
    got = await _get(other, "j")
    assert (got.trace_context, got.placement, got.request_id) == (traceparent, "aer-fallback", "r")
    assert [job.trace_context for job in (await other.list_jobs("acme")).jobs] == [traceparent]


# -- tenants ----------------------------------------------------------------------------------


def _tenant(tenant_id: str, *, etag: str = "e1", name: str = "", at: datetime = T0) -> StoredTenant:
    return StoredTenant(
        id=tenant_id,
        display_name=name or f"{tenant_id} inc",
        policy_json=f'{{"maxShotsPerJob": {len(tenant_id)}}}',
        etag=etag,
        created_at=at,
        updated_at=at + SECOND,
    )


async def test_tenants_page_by_id_after_a_cursor(store: Store) -> None:
    for tenant_id in ("c", "a", "d", "b"):
        assert await store.create_tenant(_tenant(tenant_id))
    assert [t.id for t in await store.list_tenants(limit=2)] == ["a", "b"]
    assert [t.id for t in await store.list_tenants(after="b", limit=2)] == ["c", "d"]
    assert [t.id for t in await store.list_tenants(after="d", limit=2)] == []
    assert await store.list_tenants(after="a", limit=1) == [_tenant("b")]


async def test_a_second_create_of_a_tenant_changes_nothing(store: Store) -> None:
    first = _tenant("t", name="first")
    assert await store.create_tenant(first)
    assert not await store.create_tenant(_tenant("t", name="second", etag="e2"))
    assert await store.get_tenant("t") == first
    assert await store.get_tenant("missing") is None


async def test_a_tenant_update_is_a_compare_and_set_on_its_etag(store: Store) -> None:
    created = _tenant("t", name="before")
    await store.create_tenant(created)
    update = StoredTenant(
        id="t",
        display_name="after",
        policy_json='{"maxQubits": 5}',
        etag="e2",
        created_at=T0 + 100 * SECOND,  # not written: a tenant keeps its create time
        updated_at=T0 + 5 * SECOND,
    )
    assert await store.update_tenant(update, expected_etag="stale") is None
    assert await store.get_tenant("t") == created
    updated = await store.update_tenant(update, expected_etag="e1")
    expected = StoredTenant(
        id="t",
        display_name="after",
        policy_json='{"maxQubits": 5}',
        etag="e2",
        created_at=T0,
        updated_at=T0 + 5 * SECOND,
    )
    assert updated == expected
    assert await store.get_tenant("t") == expected
    # The old etag no longer matches; a gone tenant is not created by an update.
    assert await store.update_tenant(update, expected_etag="e1") is None
    assert await store.update_tenant(_tenant("nobody"), expected_etag="e1") is None
    assert await store.get_tenant("nobody") is None


async def test_usage_of_a_tenant_with_no_charge_in_the_period_still_counts_queued_jobs(
    store: Store,
) -> None:
    period = (T0 - 3600 * SECOND, T0 + 3600 * SECOND)
    await store.create_job(new_job("q1"))
    await store.create_job(new_job("q2"))
    await store.create_job(new_job("other", tenant="someone-else"))
    await store.mark_running("q2", T0)
    assert await store.tenant_usage("acme", *period) == TenantUsageRecord(queued_jobs=1)
    charge = QuotaCharge(period_start=period[0], period_end=period[1], shots=300, max_shots=1000)
    await store.create_job(dataclasses.replace(new_job("charged"), charge=charge))
    usage = await store.tenant_usage("acme", *period)
    assert usage == TenantUsageRecord(shots_reserved=300, queued_jobs=2)


# -- retention ----------------------------------------------------------------------------------


async def test_the_expiry_sweep_counts_only_results_it_deleted(store: Store) -> None:
    # Walked: every job whose result expired; deleted: only results still stored (one already
    # deleted when it was read after its expiry, one job that succeeded with no result).
    expires = T0 + SECOND
    for job_id, result in (("kept", b"r"), ("read-late", b"r"), ("none", None)):
        await store.create_job(new_job(job_id))
        await store.finish_job(
            job_id, JobState.SUCCEEDED, ended_at=T0, result=result, result_expires_at=expires
        )
    assert await store.delete_result("read-late")
    assert await store.delete_expired_results(None, expires, 10) == (1, 3, (expires, "read-late"))
    assert await store.get_result("kept") is None


async def test_the_retention_sweep_deletes_the_oldest_ended_jobs_first(store: Store) -> None:
    for job_id, ended in (("newer", T0 + 2 * SECOND), ("oldest", T0), ("middle", T0 + SECOND)):
        await store.create_job(new_job(job_id))
        await store.finish_job(job_id, JobState.SUCCEEDED, ended_at=ended)
    cutoff = T0 + 10 * SECOND
    assert await store.delete_ended_jobs(cutoff, 1) == (1, 0)
    assert await store.get_job("oldest") is None
    assert await store.get_job("middle") is not None and await store.get_job("newer") is not None
    assert await store.delete_ended_jobs(cutoff, 1) == (1, 0)
    assert await store.get_job("middle") is None
    assert await store.get_job("newer") is not None


# -- recovery ---------------------------------------------------------------------------------


async def test_a_cancel_completed_by_recovery_releases_its_quota_reservation(
    store: Store,
) -> None:
    period = (T0 - 3600 * SECOND, T0 + 3600 * SECOND)
    charge = QuotaCharge(period_start=period[0], period_end=period[1], shots=300, max_shots=1000)
    for job_id in ("cancelled", "requeued"):
        await store.create_job(dataclasses.replace(new_job(job_id), charge=charge))
        await store.mark_running(job_id, T0 + SECOND)
    await store.mark_cancelling("cancelled", T0 + 2 * SECOND)
    await store.recover(T0 + 10 * SECOND)
    assert (await _get(store, "cancelled")).state is JobState.CANCELLED
    # The cancelled job holds nothing any more; the re-queued one still holds its shots.
    usage = await store.tenant_usage("acme", *period)
    assert (usage.shots_reserved, usage.shots_used) == (300, 0)
    # ... so the freed shots admit another job under the limit.
    more = dataclasses.replace(new_job("more"), charge=dataclasses.replace(charge, shots=700))
    assert (await store.create_job(more)).created
