"""Adversarial review of access control (issue 11): in-process checks of AdminService inputs
that a caller controls."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from qgateway.v1 import admin_pb2, admin_service_pb2

from gateway import audit_tool
from gateway.api import admin_keys
from gateway.api.admin_service import AdminServicer
from gateway.api.errors import status_proto
from gateway.domain.audit import AuditRecord, ChainPoint
from gateway.domain.errors import (
    Code,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    ResourceInfo,
)
from gateway.interceptors.audit import AuditInterceptor
from gateway.security import audit_files
from gateway.security.audit_writer import AuditWriter
from gateway.security.policies import PolicyBook, may_read_operations
from gateway.security.principals import Principal, Role, current_principal
from gateway.security.tenant_policy import Tenant, TenantPolicy, etag_of
from gateway.store.base import CreateOutcome, NewJob
from gateway.store.sqlite import SqliteStore
from tests.core_harness import ScriptedRunner, build_core, spec

pytestmark = pytest.mark.anyio
T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
async def admin(tmp_path: Path) -> AsyncIterator[AdminServicer]:
    store = SqliteStore(tmp_path / "q.db")
    await store.open()
    token = current_principal.set(Principal("acme", "apiKeys/ta", Role.TENANT_ADMIN))
    yield AdminServicer(store, clock=lambda: T0)
    current_principal.reset(token)
    await store.close()


async def test_a_key_expiry_outside_timestamps_range_is_invalid_argument(
    admin: AdminServicer,
) -> None:
    # Timestamp.ToDatetime raised ValueError for seconds past year 9999: INTERNAL, for input.
    request = admin_service_pb2.CreateApiKeyRequest(
        parent="tenants/acme",
        api_key=admin_pb2.ApiKey(expire_time=Timestamp(seconds=1 << 40)),
    )
    with pytest.raises(InvalidArgument) as caught:
        await admin.CreateApiKey(request, None)
    assert caught.value.code == Code.INVALID_ARGUMENT
    assert caught.value.reason == "INVALID_API_KEY"


@pytest.mark.parametrize("parent", ["tenants/acme\n", "tenants/acme/", "xtenants/acme"])
async def test_a_parent_is_the_whole_name_not_a_prefix_of_it(
    admin: AdminServicer, parent: str
) -> None:
    # `$` matches before a final newline: "tenants/acme\n" was read as tenant acme.
    request = admin_service_pb2.CreateApiKeyRequest(parent=parent, api_key=admin_pb2.ApiKey())
    with pytest.raises(InvalidArgument):
        await admin.CreateApiKey(request, None)
    listing = admin_service_pb2.ListApiKeysRequest(parent=parent)
    with pytest.raises(InvalidArgument):
        await admin.ListApiKeys(listing, None)


async def _create_key(
    admin: AdminServicer, caller: Principal, expires: datetime | None, role: int
) -> admin_service_pb2.CreateApiKeyResponse:
    asked = admin_pb2.ApiKey(role=role)  # type: ignore[arg-type]
    if expires is not None:
        asked.expire_time.FromDatetime(expires)
    token = current_principal.set(caller)
    try:
        request = admin_service_pb2.CreateApiKeyRequest(parent="tenants/acme", api_key=asked)
        return await admin.CreateApiKey(request, None)
    finally:
        current_principal.reset(token)


async def test_a_key_never_outlives_the_credential_that_created_it(
    admin: AdminServicer,
) -> None:
    # A tenant-admin key expiring in seconds (or a JWT lasting minutes) created a tenant-admin
    # key that never expired, and kept the tenant after its own credential was gone.
    ends = T0 + timedelta(hours=1)
    short = Principal("acme", "apiKeys/ta", Role.TENANT_ADMIN, expires_at=ends)
    for expires in (None, ends + timedelta(seconds=1)):
        for role in (admin_pb2.ROLE_TENANT_ADMIN, admin_pb2.ROLE_USER):
            with pytest.raises(PermissionDenied) as caught:
                await _create_key(admin, short, expires, role)
            assert caught.value.reason == "EXPIRY_NOT_GRANTABLE"
            assert caught.value.metadata["credentialExpireTime"] == "2026-12-01T13:00:00Z"
    for expires in (ends, ends - timedelta(minutes=59)):
        made = await _create_key(admin, short, expires, admin_pb2.ROLE_TENANT_ADMIN)
        assert made.api_key.expire_time.ToDatetime(tzinfo=UTC) == expires
    # A credential that never expires (a configured or unexpiring key, a mapped certificate)
    # may create keys that never expire; so may an admin, whatever its credential.
    lasting = Principal("acme", "apiKeys/tb", Role.TENANT_ADMIN)
    ops = Principal("acme", "jwt/idp#ops", Role.ADMIN, expires_at=ends)
    for caller in (lasting, ops):
        made = await _create_key(admin, caller, None, admin_pb2.ROLE_TENANT_ADMIN)
        assert not made.api_key.HasField("expire_time")


async def test_keys_are_made_and_listed_only_for_tenants_that_exist(tmp_path: Path) -> None:
    # CreateApiKey tenants/acem-typo succeeded, and the key worked with the default policy,
    # while GetTenant of the same name answered NOT_FOUND; ListApiKeys of a tenant that exists
    # nowhere answered an empty page.
    store = SqliteStore(tmp_path / "keys.db")
    await store.open()
    configured = TenantPolicy()
    book = PolicyBook(
        [Tenant("cfg", "", configured, etag_of("", configured), managed_by_config=True)]
    )
    admin = AdminServicer(store, policies=book, clock=lambda: T0)
    token = current_principal.set(Principal("ops", "apiKeys/ops", Role.ADMIN))
    try:
        await admin.CreateTenant(
            admin_service_pb2.CreateTenantRequest(tenant_id="stored", tenant=admin_pb2.Tenant()),
            None,
        )
        # Configured, stored, the caller's own, and `default` (every caller's without auth).
        for tenant in ("cfg", "stored", "ops", "default"):
            parent = f"tenants/{tenant}"
            await admin.CreateApiKey(
                admin_service_pb2.CreateApiKeyRequest(parent=parent, api_key=admin_pb2.ApiKey()),
                None,
            )
            listed = await admin.ListApiKeys(
                admin_service_pb2.ListApiKeysRequest(parent=parent), None
            )
            assert len(listed.api_keys) == 1
        typo = "tenants/acem-typo"
        calls = (
            lambda: admin.CreateApiKey(
                admin_service_pb2.CreateApiKeyRequest(parent=typo, api_key=admin_pb2.ApiKey()),
                None,
            ),
            lambda: admin.ListApiKeys(admin_service_pb2.ListApiKeysRequest(parent=typo), None),
        )
        for call in calls:
            with pytest.raises(NotFound) as caught:
                await call()
            assert caught.value.reason == "TENANT_NOT_FOUND"
            assert caught.value.resource_info == ResourceInfo(
                "qgateway.dev/Tenant", "tenants/acem-typo", "no such tenant"
            )
        every = await admin.ListApiKeys(
            admin_service_pb2.ListApiKeysRequest(parent="tenants/-"), None
        )
        assert sorted(k.name.split("/")[1] for k in every.api_keys) == [
            "cfg", "default", "ops", "stored"
        ]  # fmt: skip
    finally:
        current_principal.reset(token)
        await store.close()


async def test_create_api_key_stops_at_the_tenants_key_limit(
    admin: AdminServicer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(admin_keys, "MAX_KEYS_PER_TENANT", 2)
    lasting = Principal("acme", "apiKeys/ta", Role.TENANT_ADMIN)
    for _ in range(2):
        await _create_key(admin, lasting, None, admin_pb2.ROLE_USER)
    with pytest.raises(ResourceExhausted) as full:
        await _create_key(admin, lasting, None, admin_pb2.ROLE_USER)
    assert full.value.reason == "API_KEY_LIMIT_REACHED"


async def test_another_tenants_resources_are_not_found_with_resource_info(
    admin: AdminServicer,
) -> None:
    # DESIGN: ResourceInfo with every NOT_FOUND. It names the tenant, exactly as for a tenant
    # that does not exist, so a tenant admin still cannot tell whether globex exists.
    token = current_principal.set(Principal("ops", "apiKeys/ops", Role.ADMIN))
    try:
        await admin.CreateTenant(
            admin_service_pb2.CreateTenantRequest(tenant_id="globex", tenant=admin_pb2.Tenant()),
            None,
        )
    finally:
        current_principal.reset(token)

    def calls(tenant: str) -> list[Callable[[], Awaitable[object]]]:
        return [
            lambda: admin.GetTenant(
                admin_service_pb2.GetTenantRequest(name=f"tenants/{tenant}"), None
            ),
            lambda: admin.ListApiKeys(
                admin_service_pb2.ListApiKeysRequest(parent=f"tenants/{tenant}"), None
            ),
            lambda: admin.RevokeApiKey(
                admin_service_pb2.RevokeApiKeyRequest(name=f"tenants/{tenant}/apiKeys/abcd1234"),
                None,
            ),
            lambda: admin.GetTenantUsage(
                admin_service_pb2.GetTenantUsageRequest(name=f"tenants/{tenant}/usage"), None
            ),
        ]

    for real, none in zip(calls("globex"), calls("nosuch"), strict=True):
        seen = []
        for call, tenant in ((real, "globex"), (none, "nosuch")):
            with pytest.raises(NotFound) as caught:
                await call()
            err = caught.value
            assert err.reason == "TENANT_NOT_FOUND"
            assert err.resource_info == ResourceInfo(
                "qgateway.dev/Tenant", f"tenants/{tenant}", "no such tenant"
            )
            seen.append(str(status_proto(err)).replace(tenant, "<t>"))
        assert seen[0] == seen[1]


async def test_verify_refuses_records_without_their_exported_head(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Removing the head file and the newest records passed verify ("OK ... unchecked").
    key = audit_files.load_or_create_key(tmp_path / "audit.key")
    store = SqliteStore(tmp_path / audit_tool.DB_FILE)
    store.enable_audit(key)
    await store.open()
    record = AuditRecord(time=T0, end_time=T0, service="s", method="GetJob", tenant="acme")
    head = await store.append_audit([record, record])
    await store.close()
    args = argparse.Namespace(
        config=None,
        data_dir=tmp_path,
        key_file=tmp_path / "audit.key",
        head_file=tmp_path / "audit.head",
        no_head=False,
    )
    assert audit_tool._cmd_verify(args) == 1
    assert "no exported head" in capsys.readouterr().err
    assert audit_tool._cmd_verify(argparse.Namespace(**{**vars(args), "no_head": True})) == 0
    audit_files.write_head(tmp_path / "audit.head", head, key)
    assert audit_tool._cmd_verify(args) == 0


class _GatedStore(SqliteStore):
    """create_job's commit goes on when its caller is cancelled (as SqliteStore._call's), and
    the caller waits at a gate first, so a test can cancel it mid-commit."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.gate: asyncio.Event | None = None
        self.reached = asyncio.Event()
        self.creates: list[asyncio.Future[CreateOutcome]] = []

    async def create_job(self, new: NewJob) -> CreateOutcome:
        commit = asyncio.ensure_future(super().create_job(new))
        self.creates.append(commit)
        if self.gate is not None:
            self.reached.set()
            await self.gate.wait()
        return await commit


async def test_a_submit_cancelled_mid_commit_leaves_no_job_stranded(tmp_path: Path) -> None:
    # The caller's cancellation (a client deadline) cancelled the create and took the stand-in
    # out of the memory queue, while the store committed the job anyway: QUEUED, holding its
    # quota and queued-job count, in no queue, never run until a restart.
    store = _GatedStore(tmp_path / "q.db")
    await store.open()
    runner = ScriptedRunner(slots=1)
    core = await build_core(store, "memory", {"sim": runner})
    try:
        first = await core.submit("alice", spec("sim", "a"))
        await core.until("alice", first.id, "RUNNING")
        store.gate = asyncio.Event()
        submitting = asyncio.ensure_future(core.submit("alice", spec("sim", "b"), "r1"))
        await store.reached.wait()
        submitting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await submitting
        store.gate.set()
        outcome = await store.creates[-1]
        assert outcome.created  # the store committed it: the job exists
        runner.succeed(first.id)
        await core.until("alice", outcome.job.id, "RUNNING", timeout=3)
    finally:
        await core.manager.close()
        await store.close()


async def test_calls_refused_for_their_rate_are_aggregated_per_principal() -> None:
    # A caller over its request rate still got one audit record per refused call: the rate
    # limit bounded its work but not the log's growth.
    batches: list[list[AuditRecord]] = []

    class Sink:
        async def append_audit(self, records: Sequence[AuditRecord]) -> ChainPoint:
            batches.append(list(records))
            return ChainPoint(0, b"")

    writer = AuditWriter(Sink(), flush_interval_s=3600, failure_window_s=3600)
    interceptor = AuditInterceptor(writer, clock=lambda: T0)
    for principal in ("apiKeys/a", "apiKeys/b"):
        draft = AuditRecord(
            time=T0,
            end_time=T0,
            service="qgateway.v1.JobService",
            method="GetJob",
            principal=principal,
            tenant="acme",
            peer="ipv4:10.0.0.1:5000",
        )
        for _ in range(100):
            interceptor._finish(draft, int(Code.RESOURCE_EXHAUSTED), "RATE_LIMITED")
    interceptor._finish(draft, int(Code.OK), "")
    await writer.close()
    records = [r for b in batches for r in b]
    limited = [(r.principal, r.count) for r in records if r.reason == "RATE_LIMITED"]
    assert sorted(limited) == [
        ("apiKeys/a", 1),
        ("apiKeys/a", 99),
        ("apiKeys/b", 1),
        ("apiKeys/b", 99),
    ]
    assert [r.code for r in records if r.reason == ""] == [int(Code.OK)]


async def test_roles_are_never_widened_to_the_next_one(admin: AdminServicer) -> None:
    # A user may not manage its own tenant's keys; a tenant admin may not create tenants, see
    # other tenants in ListTenants, or read backends' operational detail.
    user = Principal("acme", "apiKeys/us", Role.USER)
    with pytest.raises(PermissionDenied) as caught:
        await _create_key(admin, user, None, admin_pb2.ROLE_USER)
    assert caught.value.reason == "TENANT_ADMIN_ROLE_REQUIRED"
    for tid in ("acme", "globex"):
        with pytest.raises(PermissionDenied) as denied:
            await admin.CreateTenant(
                admin_service_pb2.CreateTenantRequest(tenant_id=tid, tenant=admin_pb2.Tenant()),
                None,
            )
        assert denied.value.reason == "ADMIN_ROLE_REQUIRED"
    token = current_principal.set(Principal("acme", "jwt/idp#ops", Role.ADMIN))
    try:
        for tid in ("acme", "globex"):
            await admin.CreateTenant(
                admin_service_pb2.CreateTenantRequest(tenant_id=tid, tenant=admin_pb2.Tenant()),
                None,
            )
    finally:
        current_principal.reset(token)
    listed = await admin.ListTenants(admin_service_pb2.ListTenantsRequest(), None)
    assert [t.name for t in listed.tenants] == ["tenants/acme"]
    tenant_admin = Principal("acme", "apiKeys/ta", Role.TENANT_ADMIN)
    assert not tenant_admin.admin
    assert not may_read_operations(tenant_admin)
    assert may_read_operations(Principal("acme", "jwt/idp#ops", Role.ADMIN))


async def test_a_keys_display_name_and_expiry_bounds_are_exact(admin: AdminServicer) -> None:
    # The bounds are inclusive of the longest name and exclusive of the present instant: a key
    # that expires as it is made would be created already EXPIRED.
    longest = admin_pb2.ApiKey(display_name="n" * admin_keys.MAX_DISPLAY_NAME)
    made = await admin.CreateApiKey(
        admin_service_pb2.CreateApiKeyRequest(parent="tenants/acme", api_key=longest), None
    )
    assert made.api_key.display_name == longest.display_name
    assert made.api_key.state == admin_pb2.API_KEY_STATE_ACTIVE
    assert made.api_key.role == admin_pb2.ROLE_USER  # unspecified: the least role
    too_long = admin_pb2.ApiKey(display_name="n" * (admin_keys.MAX_DISPLAY_NAME + 1))
    expiring_now = admin_pb2.ApiKey()
    expiring_now.expire_time.FromDatetime(T0)
    for asked, field in (
        (too_long, "api_key.display_name"),
        (expiring_now, "api_key.expire_time"),
    ):
        with pytest.raises(InvalidArgument) as caught:
            await admin.CreateApiKey(
                admin_service_pb2.CreateApiKeyRequest(parent="tenants/acme", api_key=asked),
                None,
            )
        assert caught.value.reason == "INVALID_API_KEY"
        assert [v.field for v in caught.value.field_violations] == [field]


async def test_a_key_page_token_serves_only_its_own_caller_and_query(
    admin: AdminServicer,
) -> None:
    # A cursor is bound to the caller's tenant, the parent and show_inactive: replayed with
    # another filter or by another tenant's caller it is refused, not read as a position.
    ops = current_principal.set(Principal("ops", "apiKeys/ops", Role.ADMIN))
    try:  # stored, so that an admin of another tenant may list it too
        await admin.CreateTenant(
            admin_service_pb2.CreateTenantRequest(tenant_id="acme", tenant=admin_pb2.Tenant()),
            None,
        )
    finally:
        current_principal.reset(ops)
    lasting = Principal("acme", "apiKeys/ta", Role.TENANT_ADMIN)
    for _ in range(2):
        await _create_key(admin, lasting, None, admin_pb2.ROLE_USER)

    def listing(token: str, show_inactive: bool) -> admin_service_pb2.ListApiKeysRequest:
        return admin_service_pb2.ListApiKeysRequest(
            parent="tenants/acme", page_size=1, page_token=token, show_inactive=show_inactive
        )

    first = await admin.ListApiKeys(listing("", True), None)
    token = first.next_page_token
    assert token
    second = await admin.ListApiKeys(listing(token, True), None)
    assert len(second.api_keys) == 1 and second.api_keys[0].name != first.api_keys[0].name
    with pytest.raises(InvalidArgument) as other_query:
        await admin.ListApiKeys(listing(token, False), None)
    assert other_query.value.reason == "INVALID_PAGE_TOKEN"
    ops = current_principal.set(Principal("ops", "apiKeys/ops", Role.ADMIN))
    try:
        with pytest.raises(InvalidArgument) as other_caller:
            await admin.ListApiKeys(listing(token, True), None)
    finally:
        current_principal.reset(ops)
    assert other_caller.value.reason == "INVALID_PAGE_TOKEN"


async def test_the_wildcard_tenant_id_cannot_be_created(admin: AdminServicer) -> None:
    # A tenant named "-" got keys its own tenant admin could never list: ListApiKeys of
    # tenants/- is the admins-only listing of every tenant's keys (PERMISSION_DENIED).
    token = current_principal.set(Principal("ops", "apiKeys/ops", Role.ADMIN))
    try:
        with pytest.raises(InvalidArgument) as caught:
            await admin.CreateTenant(
                admin_service_pb2.CreateTenantRequest(tenant_id="-", tenant=admin_pb2.Tenant()),
                None,
            )
    finally:
        current_principal.reset(token)
    assert caught.value.reason == "INVALID_TENANT_ID"


async def test_a_revoked_keys_times_and_state_are_shown(admin: AdminServicer) -> None:
    # Listing inactive keys is how a tenant admin audits its keys: when each was last used
    # and when it was revoked.
    lasting = Principal("acme", "apiKeys/ta", Role.TENANT_ADMIN)
    made = await _create_key(admin, lasting, None, admin_pb2.ROLE_USER)
    prefix = made.api_key.name.rsplit("/", 1)[1]
    used = T0 - timedelta(minutes=1)  # the fixture's clock stands still at T0
    await admin._store.touch_api_keys({prefix: used})
    revoked = await admin.RevokeApiKey(
        admin_service_pb2.RevokeApiKeyRequest(name=made.api_key.name), None
    )
    assert revoked.api_key.state == admin_pb2.API_KEY_STATE_REVOKED
    assert revoked.api_key.revoke_time.ToDatetime(tzinfo=UTC) == T0
    listed = await admin.ListApiKeys(
        admin_service_pb2.ListApiKeysRequest(parent="tenants/acme", show_inactive=True), None
    )
    assert [k.name for k in listed.api_keys] == [made.api_key.name]
    assert listed.api_keys[0].last_use_time.ToDatetime(tzinfo=UTC) == used
    assert listed.api_keys[0].revoke_time.ToDatetime(tzinfo=UTC) == T0
    active = await admin.ListApiKeys(
        admin_service_pb2.ListApiKeysRequest(parent="tenants/acme"), None
    )
    assert list(active.api_keys) == []


async def test_only_admins_update_tenants_and_read_usage_of_tenants_that_exist(
    admin: AdminServicer,
) -> None:
    # A tenant admin may read its tenant but never change its policy (its own quota); an
    # admin asking for the usage of a tenant declared nowhere is told so, not shown zeros.
    ops = current_principal.set(Principal("ops", "apiKeys/ops", Role.ADMIN))
    try:
        await admin.CreateTenant(
            admin_service_pb2.CreateTenantRequest(tenant_id="acme", tenant=admin_pb2.Tenant()),
            None,
        )
        with pytest.raises(NotFound) as unknown:
            await admin.GetTenantUsage(
                admin_service_pb2.GetTenantUsageRequest(name="tenants/nosuch/usage"), None
            )
        assert unknown.value.reason == "TENANT_NOT_FOUND"
    finally:
        current_principal.reset(ops)
    raise_quota = admin_service_pb2.UpdateTenantRequest(
        tenant=admin_pb2.Tenant(
            name="tenants/acme", policy=admin_pb2.TenantPolicy(max_shots_per_job=10**6)
        ),
    )
    with pytest.raises(PermissionDenied) as denied:
        await admin.UpdateTenant(raise_quota, None)
    assert denied.value.reason == "ADMIN_ROLE_REQUIRED"
    got = await admin.GetTenant(admin_service_pb2.GetTenantRequest(name="tenants/acme"), None)
    assert not got.tenant.policy.HasField("max_shots_per_job")
