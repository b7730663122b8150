"""Tenants' policies in process: token buckets and quota periods on injected clocks, the policy
book's backends and per-job limits, the quota ledger (reserve at create, settle or release at
finish, exactly once, across a store restart), update masks and etags on AdminService."""

from __future__ import annotations

import fnmatch
import hashlib
import pathlib
import sqlite3
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from google.protobuf import field_mask_pb2
from google.rpc.error_details_pb2 import RetryInfo
from qgateway.v1 import admin_pb2, admin_service_pb2

from gateway.api import admin_tenants, tenant_codec
from gateway.api.admin_service import AdminServicer
from gateway.api.errors import status_proto
from gateway.config import GatewayConfig
from gateway.domain.backends import BackendKind
from gateway.domain.errors import (
    Aborted,
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    PermissionDenied,
    ResourceExhausted,
)
from gateway.domain.jobs import ExecutionInfo, JobState
from gateway.domain.pricing import Cost, Usage
from gateway.security.policies import PolicyBook
from gateway.security.principals import Principal, Role, current_principal
from gateway.security.rate_limits import RateLimiter, TokenBucket
from gateway.security.tenant_policy import (
    MIN_PER_SECOND,
    PeriodQuota,
    RateLimit,
    Tenant,
    TenantPolicy,
    etag_of,
    period_at,
    policy_from_json,
    policy_to_json,
    validate_policy,
)
from gateway.store.base import NewJob, QuotaCharge
from gateway.store.sqlite import SqliteStore

pytestmark = pytest.mark.anyio
T0 = datetime(2026, 11, 2, 9, 30, 0, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


# ------------------------------------------------------------------------------ rate limits


def test_token_bucket_spends_its_burst_then_refills_at_its_rate() -> None:
    clock = Clock()
    bucket = TokenBucket(RateLimit(per_second=2.0, burst=3), clock)
    assert [bucket.take() for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take() == pytest.approx(0.5)  # one token refills in 1/2 s
    clock.now += 0.25
    assert bucket.take() == pytest.approx(0.25)
    clock.now += 0.25
    assert bucket.take() == 0.0
    clock.now += 100  # refills only up to the burst
    assert [bucket.take() for _ in range(4)][-1] > 0


def test_rate_limiter_refuses_with_quota_failure_and_retry_info() -> None:
    clock = Clock()
    limiter = RateLimiter(clock)
    rate = RateLimit(per_second=1.0, burst=1)
    limiter.check("acme", "submit", rate)
    with pytest.raises(ResourceExhausted) as caught:
        limiter.check("acme", "submit", rate)
    err = caught.value
    assert err.reason == "RATE_LIMITED"
    assert err.retry_after == pytest.approx(1.0)
    assert err.quota_violations[0].subject == "tenants/acme"
    assert err.metadata["limit"] == "submit_rate"
    limiter.check("other", "submit", rate)  # buckets are per tenant
    limiter.check("acme", "request", rate)  # and per kind
    # A changed policy keeps the tokens left (none here), refilled at its rate; no policy:
    # no limit.
    looser = RateLimit(per_second=2.0, burst=2)
    with pytest.raises(ResourceExhausted) as caught:
        limiter.check("acme", "submit", looser)
    assert caught.value.retry_after == pytest.approx(0.5)
    clock.now += 1.0
    limiter.check("acme", "submit", looser)
    limiter.check("acme", "submit", looser)
    for _ in range(5):
        limiter.check("acme", "submit", None)


def test_a_rate_slower_than_a_token_per_366_days_is_invalid() -> None:
    # 1e-300 per second passed as positive and finite; its retry delay then overflowed
    # building RetryInfo (UNKNOWN OverflowError instead of RATE_LIMITED), and 1e-12 gave a
    # delay past Duration's range.
    for tiny in (1e-300, 1e-12, MIN_PER_SECOND * 0.99):
        msg = admin_pb2.TenantPolicy(submit_rate=admin_pb2.RateLimit(per_second=tiny, burst=1))
        with pytest.raises(InvalidArgument) as caught:
            tenant_codec.decode_policy(msg)
        assert caught.value.reason == "INVALID_POLICY"
        assert [v.field for v in caught.value.field_violations] == [
            "tenant.policy.submit_rate.per_second"
        ]
        rate = {"per_second": tiny, "burst": 1}
        with pytest.raises(ValueError, match="per_second"):
            GatewayConfig(tenants={"acme": {"policy": {"request_rate": rate}}})
    slowest = RateLimit(per_second=MIN_PER_SECOND, burst=1)
    msg = admin_pb2.TenantPolicy(
        request_rate=admin_pb2.RateLimit(per_second=MIN_PER_SECOND, burst=1)
    )
    assert tenant_codec.decode_policy(msg).request_rate == slowest
    limiter = RateLimiter(Clock())
    limiter.check("acme", "request", slowest)
    with pytest.raises(ResourceExhausted) as limited:
        limiter.check("acme", "request", slowest)
    assert limited.value.reason == "RATE_LIMITED"
    assert limited.value.retry_after == pytest.approx(366 * 86400)
    retry = [d for d in status_proto(limited.value).details if d.Is(RetryInfo.DESCRIPTOR)]
    assert len(retry) == 1


def test_periods_are_aligned_to_the_epoch() -> None:
    period = period_at(T0, 3600.0)
    assert period.start == datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
    assert period.end == datetime(2026, 11, 2, 10, 0, tzinfo=UTC)
    day = period_at(T0, 86400.0)
    assert day.start == datetime(2026, 11, 2, tzinfo=UTC)
    assert period_at(period.end, 3600.0).start == period.end


# ------------------------------------------------------------------------------ the book


def book() -> PolicyBook:
    limited = TenantPolicy(
        allowed_simulators=("aer*",),
        allowed_hardware=("ibm-brisbane",),
        max_qubits=4,
        max_shots_per_job=1000,
    )
    return PolicyBook([Tenant("acme", "", limited, etag_of("", limited), managed_by_config=True)])


KINDS = {
    "aer": BackendKind.SIMULATOR,
    "aer-mps": BackendKind.SIMULATOR,
    "braket-sv": BackendKind.SIMULATOR,
    "ibm-brisbane": BackendKind.HARDWARE,
    "ibm-kyiv": BackendKind.HARDWARE,
}


def test_backends_outside_the_policy_are_invisible_and_refused() -> None:
    policies = book()
    acme = Principal("acme", "apiKeys/a")
    assert policies.visible_backends(acme, KINDS) == ["aer", "aer-mps", "ibm-brisbane"]
    # A tenant named nowhere keeps today's behaviour: every backend.
    anyone = Principal("default", "anonymous")
    assert policies.visible_backends(anyone, KINDS) == sorted(KINDS)
    acme_policy = policies.policy("acme")
    assert acme_policy.allows("aer", BackendKind.SIMULATOR)
    assert not acme_policy.allows("braket-sv", BackendKind.SIMULATOR)
    # Hardware is allowed separately: a simulator pattern does not admit a QPU of that name.
    assert not acme_policy.allows("aer-qpu", BackendKind.HARDWARE)


def test_per_job_limits_name_the_limit_and_carry_no_retry_info() -> None:
    policies = book()
    policies.check_job("acme", "aer", qubits=4, shots=1000)
    with pytest.raises(PermissionDenied) as qubits:
        policies.check_job("acme", "aer", qubits=5, shots=10)
    assert qubits.value.reason == "QUBIT_LIMIT_EXCEEDED"
    assert qubits.value.metadata["maxQubits"] == "4"
    assert qubits.value.retry_after is None
    with pytest.raises(PermissionDenied) as shots:
        policies.check_job("acme", "aer", qubits=1, shots=1001)
    assert shots.value.reason == "SHOT_LIMIT_EXCEEDED"
    assert shots.value.metadata["maxShotsPerJob"] == "1000"
    assert shots.value.retry_after is None
    policies.check_job("someone-else", "aer", qubits=60, shots=10**7)
    # Only a book with some rate makes the rate-limit interceptor wrap calls.
    assert not policies.rate_limited
    policies.put("chatty", TenantPolicy(request_rate=RateLimit(1.0, 1)))
    assert policies.rate_limited


def test_policies_round_trip_through_json_and_the_wire() -> None:
    policy = TenantPolicy(
        allowed_simulators=("aer",),
        allowed_hardware=(),
        max_qubits=3,
        quota=PeriodQuota(shots=100, cost=2.5, cost_unit="USD", period_s=1.5),
        submit_rate=RateLimit(2.0, 4),
        max_sessions=2,
    )
    assert policy_from_json(policy_to_json(policy)) == policy
    assert tenant_codec.decode_policy(tenant_codec.encode_policy(policy)) == policy


def test_toml_tenants_become_config_managed_policies() -> None:
    config = GatewayConfig(
        tenants={
            "acme": {"policy": {"max_qubits": 2, "submit_rate": {"per_second": 1, "burst": 1}}}
        }
    )
    tenant = config.tenants["acme"].tenant("acme")
    assert tenant.managed_by_config and tenant.policy.max_qubits == 2
    assert tenant.policy.allowed_hardware == ()  # a declared tenant gets no hardware unless named
    assert config.default_policy.policy().allowed_hardware == ("*",)
    with pytest.raises(ValueError, match="max_quibts"):
        GatewayConfig(tenants={"acme": {"policy": {"max_quibts": 2}}})
    with pytest.raises(ValueError, match="cost_unit"):
        GatewayConfig(tenants={"acme": {"policy": {"quota": {"cost": 5}}}})


def test_policy_lists_and_display_names_are_bounded() -> None:
    # 60,001 patterns were accepted (a 7.4 MB policy): each allows() check then took seconds
    # on the event loop, for every backend of ListBackends and every submission.
    most = [f"sim-{i:03d}-*" for i in range(256)]
    ok = tenant_codec.decode_policy(admin_pb2.TenantPolicy(allowed_hardware=most))
    assert ok.allows("sim-255-x", BackendKind.HARDWARE)
    for field in ("allowed_simulators", "allowed_hardware"):
        msg = admin_pb2.TenantPolicy()
        getattr(msg, field).extend([*most, "one-too-many"])
        with pytest.raises(InvalidArgument) as caught:
            tenant_codec.decode_policy(msg)
        assert caught.value.reason == "INVALID_POLICY"
        assert [v.field for v in caught.value.field_violations] == [f"tenant.policy.{field}"]
        with pytest.raises(ValueError, match=f"{field}: at most 256 patterns"):
            GatewayConfig(tenants={"acme": {"policy": {field: [*most, "x"]}}})
    # One violation per list, not one per bad pattern.
    many_bad = admin_pb2.TenantPolicy(allowed_simulators=["x" * 129] * 200)
    with pytest.raises(InvalidArgument) as bad:
        tenant_codec.decode_policy(many_bad)
    assert len(bad.value.field_violations) == 1
    assert GatewayConfig(tenants={"acme": {"display_name": "d" * 256}})
    with pytest.raises(ValueError, match="display_name"):
        GatewayConfig(tenants={"acme": {"display_name": "d" * 257}})


def test_a_policy_matches_as_fnmatchcase_does() -> None:
    # allows() matches one expression compiled per policy instead of fnmatchcase per pattern.
    patterns = ("aer", "aer-*", "braket-?v", "[ip]bm-*", "[!x]ennylane", "a*b*c", "lit.[*]")
    policy = TenantPolicy(allowed_simulators=patterns, allowed_hardware=())
    names = [
        "aer", "aerx", "aer-mps", "braket-sv", "braket-dmv", "ibm-kyiv", "pbm-x", "xbm-x",
        "pennylane", "xennylane", "abc", "a-b-c-", "lit.*", "lit.x", "AER", "aer\n",
    ]  # fmt: skip
    for name in names:
        expected = any(fnmatch.fnmatchcase(name, p) for p in patterns)
        assert policy.allows(name, BackendKind.SIMULATOR) is expected, name
        assert not policy.allows(name, BackendKind.HARDWARE)


# ------------------------------------------------------------------------------ the ledger


@pytest.fixture
def db_path(tmp_path: pathlib.Path) -> pathlib.Path:
    return tmp_path / "gateway.db"


@pytest.fixture
async def store(db_path: pathlib.Path) -> AsyncIterator[SqliteStore]:
    s = SqliteStore(db_path)
    await s.open()
    yield s
    await s.close()


def charge(
    shots: int,
    *,
    max_shots: int | None = 100,
    cost: float = 0.0,
    priced: bool = True,
    **kw: object,
) -> QuotaCharge:
    period = period_at(T0, 60.0)
    return QuotaCharge(
        period_start=period.start,
        period_end=period.end,
        shots=shots,
        cost=cost,
        cost_unit="USD",
        priced=priced,
        max_shots=max_shots,
        **kw,  # type: ignore[arg-type]
    )


def new_job(quota: QuotaCharge, tenant: str = "acme") -> NewJob:
    return NewJob(
        id=uuid.uuid4().hex,
        tenant=tenant,
        request_id="",
        request_hash=hashlib.sha256(b"x").digest(),
        backend="aer",
        spec=b"spec",
        num_pubs=1,
        seed=1,
        created_at=T0,
        charge=quota,
    )


async def usage(store: SqliteStore, tenant: str = "acme") -> tuple[int, int]:
    period = period_at(T0, 60.0)
    figures = await store.tenant_usage(tenant, period.start, period.end)
    return figures.shots_used, figures.shots_reserved


def ran(shots: int) -> ExecutionInfo:
    return ExecutionInfo(
        backend="aer",
        seed=1,
        usage=Usage(shots=shots, execution_seconds=0.1),
        cost=Cost(0.5, "USD"),
    )


async def test_quota_is_reserved_at_create_and_refused_past_the_limit(store: SqliteStore) -> None:
    await store.create_job(new_job(charge(60)))
    assert await usage(store) == (0, 60)
    with pytest.raises(ResourceExhausted) as caught:
        await store.create_job(new_job(charge(41)))
    err = caught.value
    assert err.reason == "SHOT_QUOTA_EXCEEDED"
    assert err.quota_violations and err.metadata["quota"] == "100"
    # RetryInfo: when the period ends (T0 is 9:30:00, periods of a minute).
    assert err.retry_after == pytest.approx(60.0)
    assert await usage(store) == (0, 60)  # the refused job reserved nothing
    await store.create_job(new_job(charge(40)))
    assert await usage(store) == (0, 100)
    # Another tenant's figures are its own.
    await store.create_job(new_job(charge(100), tenant="other"))


async def test_settled_once_with_what_the_job_used(store: SqliteStore) -> None:
    job = new_job(charge(50))
    await store.create_job(job)
    finished = await store.finish_job(
        job.id, JobState.SUCCEEDED, ended_at=T0, execution=ran(30), result=b"r"
    )
    assert finished is not None
    assert await usage(store) == (30, 0)
    # A second finish changes nothing, the ledger included.
    assert await store.finish_job(job.id, JobState.FAILED, ended_at=T0) is None
    assert await usage(store) == (30, 0)
    # A job that succeeded with no shot count (re-attached, its prepared job gone) is charged
    # what it reserved.
    reattached = new_job(charge(20))
    await store.create_job(reattached)
    await store.finish_job(reattached.id, JobState.SUCCEEDED, ended_at=T0, execution=ran(0))
    assert await usage(store) == (50, 0)


async def test_failed_and_cancelled_jobs_release_their_reservation(store: SqliteStore) -> None:
    failed, cancelled = new_job(charge(50)), new_job(charge(50))
    await store.create_job(failed)
    await store.create_job(cancelled)
    await store.finish_job(failed.id, JobState.FAILED, ended_at=T0)
    await store.finish_job(cancelled.id, JobState.CANCELLED, ended_at=T0)
    assert await usage(store) == (0, 0)
    await store.create_job(new_job(charge(100)))  # the whole quota is free again


async def test_an_ended_job_gives_back_the_cost_it_reserved(store: SqliteStore) -> None:
    # The cost reserved at admission is what settling takes off again: a failed job holds
    # none of it, a succeeded one holds what it used (its execution record's cost).
    period = period_at(T0, 60.0)
    priced = charge(1, max_shots=None, cost=0.75, max_cost=1.0)
    failed, succeeded = new_job(priced), new_job(priced)
    await store.create_job(failed)
    await store.finish_job(failed.id, JobState.FAILED, ended_at=T0)
    figures = await store.tenant_usage("acme", period.start, period.end)
    assert (figures.cost_reserved, figures.cost_used) == (0.0, 0.0)
    await store.create_job(succeeded)
    await store.finish_job(succeeded.id, JobState.SUCCEEDED, ended_at=T0, execution=ran(1))
    figures = await store.tenant_usage("acme", period.start, period.end)
    assert (figures.cost_reserved, figures.cost_used) == (0.0, 0.5)
    await store.create_job(new_job(charge(1, max_shots=None, cost=0.5, max_cost=1.0)))


async def test_usage_shows_no_float_residue_of_released_cost(store: SqliteStore) -> None:
    # 0.1 + 0.2 reserved and both released leaves 2.8e-17 in the running sum: usage must
    # say 0, not a reservation no job holds.
    period = period_at(T0, 60.0)
    jobs = [new_job(charge(1, max_shots=None, cost=c, max_cost=1.0)) for c in (0.1, 0.2)]
    for job in jobs:
        await store.create_job(job)
    for job in jobs:
        await store.finish_job(job.id, JobState.FAILED, ended_at=T0)
    figures = await store.tenant_usage("acme", period.start, period.end)
    assert figures.cost_reserved == 0.0


async def test_a_reservation_survives_a_restart_and_settles_once(db_path: pathlib.Path) -> None:
    first = SqliteStore(db_path)
    await first.open()
    job = new_job(charge(70))
    await first.create_job(job)
    cancelling = new_job(charge(20))
    await first.create_job(cancelling)
    await first.mark_running(cancelling.id, T0)
    await first.mark_cancelling(cancelling.id, T0)
    await first.close()

    second = SqliteStore(db_path)
    await second.open()
    try:
        assert await usage(second) == (0, 90)
        # Recovery ends the accepted cancel: its reservation is released in that transaction.
        await second.recover(T0 + timedelta(seconds=1))
        assert await usage(second) == (0, 70)
        await second.finish_job(job.id, JobState.SUCCEEDED, ended_at=T0, execution=ran(70))
        await second.finish_job(job.id, JobState.SUCCEEDED, ended_at=T0, execution=ran(70))
        assert await usage(second) == (70, 0)
    finally:
        await second.close()
    with sqlite3.connect(db_path) as conn:
        states = dict(conn.execute("SELECT job_id, state FROM quota_ledger").fetchall())
    assert states == {job.id: "SETTLED", cancelling.id: "RELEASED"}


async def test_cost_quota_and_queued_job_limit(store: SqliteStore) -> None:
    await store.create_job(new_job(charge(1, max_shots=None, cost=0.75, max_cost=1.0)))
    with pytest.raises(ResourceExhausted) as cost:
        await store.create_job(new_job(charge(1, max_shots=None, cost=0.5, max_cost=1.0)))
    assert cost.value.reason == "COST_QUOTA_EXCEEDED"
    assert cost.value.metadata["unit"] == "USD"
    with pytest.raises(ResourceExhausted) as queued:
        await store.create_job(new_job(charge(1, max_shots=None, max_queued_jobs=1)))
    assert queued.value.reason == "TENANT_QUEUE_FULL"
    assert queued.value.retry_after is not None


async def test_the_queued_job_limit_counts_only_the_tenant_s_own_jobs(store: SqliteStore) -> None:
    # Another tenant's queue is not this tenant's: counted together, one busy tenant would
    # refuse every other tenant's jobs TENANT_QUEUE_FULL.
    for _ in range(3):
        await store.create_job(new_job(charge(1, max_shots=None), tenant="other"))
    limited = charge(1, max_shots=None, max_queued_jobs=2)
    await store.create_job(new_job(limited))
    await store.create_job(new_job(limited))
    with pytest.raises(ResourceExhausted) as queued:
        await store.create_job(new_job(limited))
    assert queued.value.reason == "TENANT_QUEUE_FULL"
    assert queued.value.metadata["queuedJobs"] == "2"
    period = period_at(T0, 60.0)
    assert (await store.tenant_usage("acme", period.start, period.end)).queued_jobs == 2


async def test_the_queued_job_limit_counts_only_jobs_still_waiting(store: SqliteStore) -> None:
    # A job handed to its provider (SUBMITTING), running or cancelling no longer waits in the
    # tenant's queue: it frees its place at once.
    limited = charge(1, max_shots=None, max_queued_jobs=1)
    for step in ("submitting", "running", "cancelling"):
        job = new_job(limited)
        await store.create_job(job)
        if step == "submitting":
            await store.mark_submitting(job.id, T0)
        else:
            await store.mark_running(job.id, T0)
            if step == "cancelling":
                await store.mark_cancelling(job.id, T0)
    await store.create_job(new_job(limited))
    with pytest.raises(ResourceExhausted) as queued:
        await store.create_job(new_job(limited))
    assert queued.value.reason == "TENANT_QUEUE_FULL"
    period = period_at(T0, 60.0)
    assert (await store.tenant_usage("acme", period.start, period.end)).queued_jobs == 1


async def test_a_job_priced_only_per_second_is_refused_once_the_cost_quota_is_spent(
    store: SqliteStore,
) -> None:
    # Its estimate is 0 (per-second prices are known after the run): it passes while some of
    # the quota is left, and not once none is, however many such jobs were admitted before.
    timed = charge(1, max_shots=None, cost=0.0, max_cost=1.0)
    await store.create_job(new_job(timed))
    await store.create_job(new_job(charge(1, max_shots=None, cost=1.0, max_cost=1.0)))
    with pytest.raises(ResourceExhausted) as spent:
        await store.create_job(new_job(timed))
    assert spent.value.reason == "COST_QUOTA_EXCEEDED"
    # A backend that charges nothing in the quota's unit is not held back by it.
    await store.create_job(new_job(charge(1, max_shots=None, priced=False, max_cost=1.0)))


# --------------------------------------------------------------------- AdminService tenants


ADMIN = Principal("ops", "apiKeys/admin", Role.ADMIN)


@pytest.fixture
async def admin(store: SqliteStore) -> AsyncIterator[AdminServicer]:
    configured = TenantPolicy(max_qubits=2)
    policies = PolicyBook(
        [Tenant("cfg", "", configured, etag_of("", configured), None, None, True)]
    )
    token = current_principal.set(ADMIN)
    yield AdminServicer(store, policies=policies, clock=lambda: T0)
    current_principal.reset(token)


async def test_a_tenant_write_whose_caller_went_away_is_still_enforced(
    admin: AdminServicer, store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The policy was applied to the process's book only after the store's write returned: an
    # admin call cut off by its deadline meanwhile committed the tenant, never applied it, and
    # a retry found it existing (ALREADY_EXISTS) or unchanged. The tenant was checked against
    # the default policy (unrestricted by default) until the next start.
    import asyncio

    writing, release = asyncio.Event(), asyncio.Event()

    def gated(write: Any) -> Any:
        async def call(*args: Any, **kwargs: Any) -> Any:
            writing.set()
            await release.wait()
            return await write(*args, **kwargs)

        return call

    async def cut_off(call: Any) -> None:
        writing.clear()
        release.clear()
        task = asyncio.ensure_future(call)
        await writing.wait()  # the handler is waiting for its write now
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        release.set()  # the write commits after its caller has gone
        for _ in range(50):
            await asyncio.sleep(0.01)

    monkeypatch.setattr(store, "create_tenant", gated(store.create_tenant))
    monkeypatch.setattr(store, "update_tenant", gated(store.update_tenant))
    policies = admin._policies
    limited = admin_pb2.TenantPolicy(max_shots_per_job=10)
    await cut_off(
        admin.CreateTenant(
            admin_service_pb2.CreateTenantRequest(
                tenant_id="acme", tenant=admin_pb2.Tenant(policy=limited)
            ),
            None,
        )
    )
    assert policies.policy("acme").max_shots_per_job == 10
    update = admin_pb2.Tenant(
        name="tenants/acme", policy=admin_pb2.TenantPolicy(max_shots_per_job=3)
    )
    mask = field_mask_pb2.FieldMask(paths=["policy.max_shots_per_job"])
    await cut_off(
        admin.UpdateTenant(
            admin_service_pb2.UpdateTenantRequest(tenant=update, update_mask=mask), None
        )
    )
    assert policies.policy("acme").max_shots_per_job == 3


async def test_updates_without_an_etag_are_applied_however_they_race(
    admin: AdminServicer,
) -> None:
    # Each read the tenant, then compared and set on the etag it read: all but one of updates
    # sent at once failed ABORTED ETAG_MISMATCH, naming an etag their callers never sent.
    import asyncio

    await admin.CreateTenant(
        admin_service_pb2.CreateTenantRequest(tenant_id="acme", tenant=admin_pb2.Tenant()), None
    )
    fields = {
        "max_qubits": 5,
        "max_shots_per_job": 6,
        "max_queued_jobs": 7,
        "max_sessions": 8,
    }

    def update(field: str, value: int) -> Any:
        return admin.UpdateTenant(
            admin_service_pb2.UpdateTenantRequest(
                tenant=admin_pb2.Tenant(
                    name="tenants/acme", policy=admin_pb2.TenantPolicy(**{field: value})
                ),
                update_mask=field_mask_pb2.FieldMask(paths=[f"policy.{field}"]),
            ),
            None,
        )

    await asyncio.gather(*(update(f, v) for f, v in fields.items()))
    got = await admin.GetTenant(admin_service_pb2.GetTenantRequest(name="tenants/acme"), None)
    assert {f: getattr(got.tenant.policy, f) for f in fields} == fields


async def test_more_updates_at_once_than_attempts_are_all_applied(admin: AdminServicer) -> None:
    # Each compare-and-set round had one winner, so of 16 updates sent at once (a race review,
    # over gRPC) those that lost 8 rounds were refused ABORTED ETAG_MISMATCH though they sent
    # no etag; this process's updates take turns now.
    import asyncio

    from gateway.api import admin_tenants

    await admin.CreateTenant(
        admin_service_pb2.CreateTenantRequest(tenant_id="acme", tenant=admin_pb2.Tenant()), None
    )
    values = range(1, 2 * admin_tenants.UPDATE_ATTEMPTS + 1)
    answers = await asyncio.gather(
        *(
            admin.UpdateTenant(
                admin_service_pb2.UpdateTenantRequest(
                    tenant=admin_pb2.Tenant(
                        name="tenants/acme", policy=admin_pb2.TenantPolicy(max_qubits=value)
                    ),
                    update_mask=field_mask_pb2.FieldMask(paths=["policy.max_qubits"]),
                ),
                None,
            )
            for value in values
        )
    )
    assert sorted(a.tenant.policy.max_qubits for a in answers) == list(values)
    got = await admin.GetTenant(admin_service_pb2.GetTenantRequest(name="tenants/acme"), None)
    assert got.tenant.policy.max_qubits == answers[-1].tenant.policy.max_qubits


async def test_a_tenant_created_with_only_a_limit_may_use_every_simulator(
    admin: AdminServicer,
) -> None:
    # A repeated field cannot tell unset from empty: a policy naming only a limit allowed no
    # backend at all (every submission BACKEND_NOT_FOUND), unlike the same policy in the file.
    created = await admin.CreateTenant(
        admin_service_pb2.CreateTenantRequest(
            tenant_id="acme", tenant=admin_pb2.Tenant(policy=admin_pb2.TenantPolicy(max_qubits=20))
        ),
        None,
    )
    assert list(created.tenant.policy.allowed_simulators) == ["*"]
    assert admin._policies.policy("acme").allowed_simulators == ("*",)
    # None, if asked for: UpdateTenant with the field masked and no patterns.
    none = await admin.UpdateTenant(
        admin_service_pb2.UpdateTenantRequest(
            tenant=admin_pb2.Tenant(name="tenants/acme"),
            update_mask=field_mask_pb2.FieldMask(paths=["policy.allowed_simulators"]),
        ),
        None,
    )
    assert list(none.tenant.policy.allowed_simulators) == []


async def test_update_masks_change_only_the_named_fields(admin: AdminServicer) -> None:
    created = await admin.CreateTenant(
        admin_service_pb2.CreateTenantRequest(
            tenant_id="acme",
            tenant=admin_pb2.Tenant(
                display_name="Acme",
                policy=admin_pb2.TenantPolicy(allowed_simulators=["aer"], max_qubits=5),
            ),
        ),
        None,
    )
    tenant = created.tenant
    assert tenant.name == "tenants/acme" and tenant.etag
    update = admin_pb2.Tenant(
        name="tenants/acme",
        etag=tenant.etag,
        display_name="ignored: not in the mask",
        policy=admin_pb2.TenantPolicy(max_shots_per_job=100, quota=admin_pb2.PeriodQuota(shots=9)),
    )
    mask = field_mask_pb2.FieldMask(paths=["policy.max_shots_per_job", "policy.quota.shots"])
    out = (
        await admin.UpdateTenant(
            admin_service_pb2.UpdateTenantRequest(tenant=update, update_mask=mask),
            None,
        )
    ).tenant
    assert out.display_name == "Acme"
    assert list(out.policy.allowed_simulators) == ["aer"] and out.policy.max_qubits == 5
    assert out.policy.max_shots_per_job == 100 and out.policy.quota.shots == 9
    assert out.etag != tenant.etag
    assert admin._policies.policy("acme").max_shots_per_job == 100  # the cache, at once

    # The old etag is stale now: ABORTED, nothing changed.
    stale = admin_pb2.Tenant(name="tenants/acme", etag=tenant.etag, display_name="X")
    with pytest.raises(Aborted) as aborted:
        await admin.UpdateTenant(
            admin_service_pb2.UpdateTenantRequest(
                tenant=stale, update_mask=field_mask_pb2.FieldMask(paths=["display_name"])
            ),
            None,
        )
    assert aborted.value.reason == "ETAG_MISMATCH"
    # A masked field left unset in the request is cleared.
    cleared = (
        await admin.UpdateTenant(
            admin_service_pb2.UpdateTenantRequest(
                tenant=admin_pb2.Tenant(name="tenants/acme"),
                update_mask=field_mask_pb2.FieldMask(paths=["policy.max_qubits"]),
            ),
            None,
        )
    ).tenant
    assert not cleared.policy.HasField("max_qubits") and cleared.policy.max_shots_per_job == 100
    for bad in (["policy.no_such_field"], ["etag"], ["policy.max_qubits.x"]):
        with pytest.raises(InvalidArgument) as invalid:
            await admin.UpdateTenant(
                admin_service_pb2.UpdateTenantRequest(
                    tenant=admin_pb2.Tenant(name="tenants/acme"),
                    update_mask=field_mask_pb2.FieldMask(paths=bad),
                ),
                None,
            )
        assert invalid.value.reason == "INVALID_UPDATE_MASK"


async def test_an_update_that_changes_nothing_writes_nothing(
    admin: AdminServicer, store: SqliteStore
) -> None:
    # Re-applying what the tenant holds (a CLI run twice) keeps its etag and update time, so
    # a reader holding the etag does not see a conflict for a change nobody made.
    created = await admin.CreateTenant(
        admin_service_pb2.CreateTenantRequest(
            tenant_id="acme",
            tenant=admin_pb2.Tenant(
                display_name="Acme", policy=admin_pb2.TenantPolicy(max_qubits=5)
            ),
        ),
        None,
    )
    later = AdminServicer(store, policies=admin._policies, clock=lambda: T0 + timedelta(hours=1))
    same = admin_pb2.Tenant(
        name="tenants/acme",
        etag=created.tenant.etag,
        display_name="Acme",
        policy=admin_pb2.TenantPolicy(max_qubits=5),
    )
    mask = field_mask_pb2.FieldMask(paths=["display_name", "policy.max_qubits"])
    out = await later.UpdateTenant(
        admin_service_pb2.UpdateTenantRequest(tenant=same, update_mask=mask), None
    )
    assert out.tenant.etag == created.tenant.etag
    assert out.tenant.update_time == created.tenant.update_time
    stored = await store.get_tenant("acme")
    assert stored is not None and stored.updated_at == T0


async def test_a_tenants_display_name_is_bounded(admin: AdminServicer) -> None:
    # 100,000 characters were accepted, where an API key's display name stops at 256.
    created = await admin.CreateTenant(
        admin_service_pb2.CreateTenantRequest(
            tenant_id="named", tenant=admin_pb2.Tenant(display_name="n" * 256)
        ),
        None,
    )
    long = admin_pb2.Tenant(display_name="n" * 257)
    with pytest.raises(InvalidArgument) as create:
        await admin.CreateTenant(
            admin_service_pb2.CreateTenantRequest(tenant_id="long", tenant=long), None
        )
    long.name, long.etag = "tenants/named", created.tenant.etag
    with pytest.raises(InvalidArgument) as update:
        await admin.UpdateTenant(admin_service_pb2.UpdateTenantRequest(tenant=long), None)
    for caught in (create, update):
        assert caught.value.reason == "INVALID_TENANT"
        assert [v.field for v in caught.value.field_violations] == ["tenant.display_name"]


async def test_config_tenants_are_read_only_and_ids_unique(admin: AdminServicer) -> None:
    with pytest.raises(FailedPrecondition) as managed:
        await admin.UpdateTenant(
            admin_service_pb2.UpdateTenantRequest(
                tenant=admin_pb2.Tenant(name="tenants/cfg", display_name="x")
            ),
            None,
        )
    assert managed.value.reason == "TENANT_MANAGED_BY_CONFIG"
    for tid in ("cfg", "cfg"):
        request = admin_service_pb2.CreateTenantRequest(tenant_id=tid, tenant=admin_pb2.Tenant())
        with pytest.raises(AlreadyExists):
            await admin.CreateTenant(request, None)
    for tid in ("b", "a", "c"):
        await admin.CreateTenant(
            admin_service_pb2.CreateTenantRequest(tenant_id=tid, tenant=admin_pb2.Tenant()),
            None,
        )
    names, token = [], ""
    while True:
        page = await admin.ListTenants(
            admin_service_pb2.ListTenantsRequest(page_size=2, page_token=token),
            None,
        )
        names += [t.name for t in page.tenants]
        token = page.next_page_token
        if not token:
            break
    assert names == ["tenants/a", "tenants/b", "tenants/c", "tenants/cfg"]
    user = current_principal.set(Principal("a", "apiKeys/u"))
    try:
        with pytest.raises(PermissionDenied):
            await admin.CreateTenant(
                admin_service_pb2.CreateTenantRequest(tenant_id="z", tenant=admin_pb2.Tenant()),
                None,
            )
        # Any principal of a tenant reads its own usage.
        own = await admin.GetTenantUsage(
            admin_service_pb2.GetTenantUsageRequest(name="tenants/a/usage"),
            None,
        )
        assert own.usage.name == "tenants/a/usage" and own.usage.shots_used == 0
    finally:
        current_principal.reset(user)


async def test_list_tenants_pages_one_by_one_through_stored_and_configured_ids(
    admin: AdminServicer,
) -> None:
    # Pages of one merge the configured "cfg" between stored ids: a page may end on a
    # configured id (the next must not repeat it) or on the last stored id of its read (it
    # must still be shown, not cut off with the ids past it).
    for tid in ("z", "a", "d"):
        await admin.CreateTenant(
            admin_service_pb2.CreateTenantRequest(tenant_id=tid, tenant=admin_pb2.Tenant()),
            None,
        )
    names: list[str] = []
    token = ""
    for _ in range(6):  # bounded: a cursor that repeats an id would never end
        page = await admin.ListTenants(
            admin_service_pb2.ListTenantsRequest(page_size=1, page_token=token), None
        )
        names += [t.name for t in page.tenants]
        token = page.next_page_token
        if not token:
            break
    assert names == [f"tenants/{t}" for t in ("a", "cfg", "d", "z")]


async def test_list_tenants_pages_are_cut_by_bytes(
    admin: AdminServicer, store: SqliteStore
) -> None:
    # A tenant's policy holds up to 2 x 256 patterns of 128 characters: 1000 of them on one
    # page outgrew the largest response, and the whole page failed.
    wide = admin_pb2.TenantPolicy(allowed_simulators=[f"s{i:03d}-" + "x" * 123 for i in range(256)])
    for tid in ("t1", "t2", "t3", "t4", "t5"):
        request = admin_service_pb2.CreateTenantRequest(
            tenant_id=tid, tenant=admin_pb2.Tenant(policy=wide)
        )
        await admin.CreateTenant(request, None)
    one = wide.ByteSize()
    small = AdminServicer(
        store, policies=admin._policies, clock=lambda: T0, max_response_bytes=2 * one + 2048
    )
    names, sizes, token = [], [], ""
    while True:
        page = await small.ListTenants(
            admin_service_pb2.ListTenantsRequest(page_size=1000, page_token=token), None
        )
        names += [t.name for t in page.tenants]
        sizes.append(page.ByteSize())
        token = page.next_page_token
        if not token:
            break
    assert names == [f"tenants/{t}" for t in ("cfg", "t1", "t2", "t3", "t4", "t5")]
    assert len(sizes) == 3 and max(sizes) <= 2 * one + 2048


async def test_stored_tenants_are_loaded_into_the_book(store: SqliteStore) -> None:
    from gateway.server import load_tenants

    policy = TenantPolicy(allowed_simulators=("aer",), max_qubits=7)
    tenant = Tenant("acme", "Acme", policy, etag_of("Acme", policy), T0, T0)
    assert await store.create_tenant(admin_tenants._stored(tenant, T0, T0))
    assert not await store.create_tenant(admin_tenants._stored(tenant, T0, T0))  # ids unique
    book = PolicyBook()
    await load_tenants(store, book)
    assert book.policy("acme") == policy
    assert book.policy("someone-else") == PolicyBook().default


async def test_a_refresh_keeps_an_update_made_while_it_read(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # With a shared store every replica re-reads its tenants every 10 s. An UpdateTenant
    # answered on this replica while a refresh was reading put the refresh's older policy back:
    # the replica enforced the old limits until the next refresh.
    import asyncio

    from gateway.server import load_tenants

    old = TenantPolicy(max_qubits=30)
    tenant = Tenant("acme", "Acme", old, etag_of("Acme", old), T0, T0)
    assert await store.create_tenant(admin_tenants._stored(tenant, T0, T0))
    book = PolicyBook()
    await load_tenants(store, book)
    reading, go_on = asyncio.Event(), asyncio.Event()
    list_tenants = store.list_tenants

    async def gated(*args: object, **kwargs: object) -> object:
        page = await list_tenants(*args, **kwargs)  # type: ignore[arg-type]
        reading.set()
        await go_on.wait()
        return page

    monkeypatch.setattr(store, "list_tenants", gated)
    refresh = asyncio.create_task(load_tenants(store, book))
    await reading.wait()
    new = TenantPolicy(max_qubits=2)
    book.put("acme", new)  # as UpdateTenant does once the store has it
    go_on.set()
    await refresh
    assert book.policy("acme") == new
    # The next refresh reads what the store holds again.
    monkeypatch.setattr(store, "list_tenants", list_tenants)
    await load_tenants(store, book)
    assert book.policy("acme") == old  # this test never wrote `new` to the store


def test_a_policy_update_in_json_names_masks_the_proto_fields() -> None:
    """The CLI takes TenantPolicy's JSON form, whose canonical names are lowerCamelCase:
    ParseDict read them, but the update mask kept them, and the gateway refused the path."""
    from qgateway.tenants import update_request

    request = update_request(
        "acme", None, {"maxQubits": 5, "max_shots_per_job": 100}, "etag-1", False
    )
    assert list(request.update_mask.paths) == ["policy.max_qubits", "policy.max_shots_per_job"]
    assert request.tenant.policy.max_qubits == 5
    assert request.tenant.policy.max_shots_per_job == 100


def test_masking_a_quota_field_of_a_tenant_without_a_quota_creates_none() -> None:
    # Descending the path set every message on it: a tenant without a quota got an empty one
    # (period 86400 s, no limit), a changed policy and etag for nothing.
    current = Tenant("acme", "Acme", TenantPolicy(max_qubits=5), "etag-1", T0, T0)
    for path in ("policy.quota.shots", "policy.quota.period"):
        _, policy = tenant_codec.apply_update(current, admin_pb2.Tenant(), [path])
        assert policy == current.policy, path
    # A path naming no field is still refused, whatever is set.
    with pytest.raises(InvalidArgument) as refused:
        tenant_codec.apply_update(current, admin_pb2.Tenant(), ["policy.quota.bogus"])
    assert refused.value.reason == "INVALID_UPDATE_MASK"
    # Setting a quota field through the mask still creates the quota.
    asked = admin_pb2.Tenant(policy=admin_pb2.TenantPolicy(quota=admin_pb2.PeriodQuota(shots=9)))
    _, policy = tenant_codec.apply_update(current, asked, ["policy.quota.shots"])
    assert policy.quota is not None and policy.quota.shots == 9


def test_a_wildcard_mask_stands_alone_and_a_duration_has_no_mask_subfields() -> None:
    # "*" replaces display name and policy whole; combined with other paths it is ambiguous.
    # A Duration is one value: masking its seconds alone would keep the old nanos.
    quota = PeriodQuota(shots=5, period_s=3600.5)
    current = Tenant("acme", "Acme", TenantPolicy(quota=quota), "etag-1", T0, T0)
    asked = admin_pb2.Tenant(display_name="New", policy=admin_pb2.TenantPolicy(max_qubits=3))
    name, policy = tenant_codec.apply_update(current, asked, ["*"])
    assert (name, policy.max_qubits, policy.quota) == ("New", 3, None)
    for paths in (["*", "display_name"], ["policy.quota.period.seconds"]):
        with pytest.raises(InvalidArgument) as refused:
            tenant_codec.apply_update(current, asked, paths)
        assert refused.value.reason == "INVALID_UPDATE_MASK", paths


def test_a_zero_shot_quota_is_kept_not_read_as_no_limit() -> None:
    # A quota of 0 shots suspends a tenant's submissions; read as unset it would lift the
    # limit altogether.
    asked = admin_pb2.TenantPolicy(quota=admin_pb2.PeriodQuota(shots=0))
    policy = tenant_codec.decode_policy(asked)
    assert policy.quota is not None and policy.quota.shots == 0
    wire = tenant_codec.encode_policy(policy)
    assert wire.quota.HasField("shots") and wire.quota.shots == 0


def test_a_pattern_matches_a_whole_backend_id_never_its_tail() -> None:
    policy = TenantPolicy(allowed_simulators=("aer*",), allowed_hardware=("ibm-kyiv",))
    assert policy.allows("aer-mps", BackendKind.SIMULATOR)
    assert policy.allows("ibm-kyiv", BackendKind.HARDWARE)
    for name in ("xaer", "my-aer-mps"):
        assert not policy.allows(name, BackendKind.SIMULATOR), name
    assert not policy.allows("old-ibm-kyiv", BackendKind.HARDWARE)
    # A policy that names no hardware allows none.
    assert not TenantPolicy().allows("ibm-kyiv", BackendKind.HARDWARE)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"request_rate": RateLimit(per_second=1.0, burst=0)}, "request_rate.burst"),
        ({"submit_rate": RateLimit(per_second=1.0, burst=0)}, "submit_rate.burst"),
        ({"max_qubits": 0}, "max_qubits"),
        ({"max_shots_per_job": 0}, "max_shots_per_job"),
    ],
)
def test_a_zero_limit_or_burst_is_invalid(changes: dict[str, Any], field: str) -> None:
    assert [name for name, _ in validate_policy(TenantPolicy(**changes))] == [field]
