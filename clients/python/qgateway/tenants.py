"""Tenants and usage in the Python client: the `Tenant` and `TenantUsage` records and the calls
`Client` and `AsyncClient` inherit (get_tenant_usage, get_tenant, list_tenants, create_tenant,
update_tenant).

Any principal may read its own tenant's usage and limits; managing tenants needs the admin role
(a tenant admin may read its own tenant). A policy is a dict in the proto's JSON form with field
names as in the proto, e.g. {"allowed_simulators": ["aer*"], "max_qubits": 20,
"quota": {"shots": 100000, "period": "86400s"}, "submit_rate": {"per_second": 5, "burst": 10}}.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from google.protobuf import field_mask_pb2, json_format

from qgateway._calls import channel_stub, deadline, timestamp
from qgateway.results import Cost
from qgateway.v1 import admin_pb2, admin_service_pb2, admin_service_pb2_grpc

_AdminStub: Any = admin_service_pb2_grpc.AdminServiceStub
_PREFIX = "tenants/"


def tenant_name(name: str) -> str:
    """'acme' or 'tenants/acme' -> 'tenants/acme'."""
    return name if name.startswith(_PREFIX) else _PREFIX + name


def _policy_dict(msg: admin_pb2.TenantPolicy) -> dict[str, Any]:
    return json_format.MessageToDict(msg, preserving_proto_field_name=True)


@dataclass(frozen=True)
class Tenant:
    """A tenant: its name ("tenants/{id}"), display name, policy (proto JSON form) and etag."""

    name: str
    display_name: str
    etag: str
    policy: Mapping[str, Any] = field(default_factory=dict)
    create_time: datetime | None = None
    update_time: datetime | None = None

    @classmethod
    def from_proto(cls, msg: admin_pb2.Tenant) -> Tenant:
        return cls(
            name=msg.name,
            display_name=msg.display_name,
            etag=msg.etag,
            policy=_policy_dict(msg.policy),
            create_time=timestamp(msg.create_time, msg.HasField("create_time")),
            update_time=timestamp(msg.update_time, msg.HasField("update_time")),
        )


@dataclass(frozen=True)
class TenantUsage:
    """What a tenant used and holds in the current quota period, and its limits.

    Attributes:
        shots_used: Shots of the period's finished jobs.
        shots_reserved: Shots held by admitted jobs that have not finished.
        cost_used, cost_reserved: The same in the cost quota's unit (None without one).
        policy: The tenant's policy (proto JSON form): the limits these count against.
    """

    name: str
    period_start: datetime | None
    period_end: datetime | None
    shots_used: int
    shots_reserved: int
    cost_used: Cost | None
    cost_reserved: Cost | None
    queued_jobs: int
    open_sessions: int
    policy: Mapping[str, Any] = field(default_factory=dict)

    @property
    def shots_left(self) -> int | None:
        """Shots the tenant may still reserve this period; None without a shot quota."""
        quota = self.policy.get("quota", {}).get("shots")
        if quota is None:
            return None
        return max(0, int(quota) - self.shots_used - self.shots_reserved)

    @classmethod
    def from_proto(cls, msg: admin_pb2.TenantUsage) -> TenantUsage:
        return cls(
            name=msg.name,
            period_start=timestamp(msg.period_start_time, msg.HasField("period_start_time")),
            period_end=timestamp(msg.period_end_time, msg.HasField("period_end_time")),
            shots_used=msg.shots_used,
            shots_reserved=msg.shots_reserved,
            cost_used=Cost.from_proto(msg.cost_used) if msg.HasField("cost_used") else None,
            cost_reserved=(
                Cost.from_proto(msg.cost_reserved) if msg.HasField("cost_reserved") else None
            ),
            queued_jobs=msg.queued_jobs,
            open_sessions=msg.open_sessions,
            policy=_policy_dict(msg.policy),
        )


_ROLES = {admin_pb2.ROLE_USER: "user", admin_pb2.ROLE_TENANT_ADMIN: "tenant-admin"}
_ROLES[admin_pb2.ROLE_ADMIN] = "admin"
_ROLE_VALUES = {text: value for value, text in _ROLES.items()}
_KEY_STATES = {
    admin_pb2.API_KEY_STATE_ACTIVE: "active",
    admin_pb2.API_KEY_STATE_EXPIRED: "expired",
    admin_pb2.API_KEY_STATE_REVOKED: "revoked",
}


@dataclass(frozen=True)
class ApiKey:
    """An API key as AdminService shows it ("tenants/{t}/apiKeys/{prefix}"); never its secret."""

    name: str
    display_name: str
    role: str  # "user", "tenant-admin" or "admin"
    state: str  # "active", "expired" or "revoked"
    create_time: datetime | None = None
    expire_time: datetime | None = None
    revoke_time: datetime | None = None
    last_use_time: datetime | None = None

    @classmethod
    def from_proto(cls, msg: admin_pb2.ApiKey) -> ApiKey:
        return cls(
            name=msg.name,
            display_name=msg.display_name,
            role=_ROLES.get(msg.role, "user"),
            state=_KEY_STATES.get(msg.state, "unknown"),
            create_time=timestamp(msg.create_time, msg.HasField("create_time")),
            expire_time=timestamp(msg.expire_time, msg.HasField("expire_time")),
            revoke_time=timestamp(msg.revoke_time, msg.HasField("revoke_time")),
            last_use_time=timestamp(msg.last_use_time, msg.HasField("last_use_time")),
        )


def create_request(
    tenant_id: str, display_name: str, policy: Mapping[str, Any] | None
) -> admin_service_pb2.CreateTenantRequest:
    tenant = admin_pb2.Tenant(display_name=display_name)
    if policy is not None:
        json_format.ParseDict(dict(policy), tenant.policy)
    return admin_service_pb2.CreateTenantRequest(tenant_id=tenant_id, tenant=tenant)


def update_request(
    name: str,
    display_name: str | None,
    policy: Mapping[str, Any] | None,
    etag: str,
    replace_policy: bool,
) -> admin_service_pb2.UpdateTenantRequest:
    """Only what is given changes: display_name if not None; each key of `policy` (the whole
    policy with `replace_policy`)."""
    tenant = admin_pb2.Tenant(name=tenant_name(name), etag=etag)
    paths: list[str] = []
    if display_name is not None:
        tenant.display_name = display_name
        paths.append("display_name")
    if policy is not None:
        json_format.ParseDict(dict(policy), tenant.policy)
        paths += ["policy"] if replace_policy else [f"policy.{_field(key)}" for key in policy]
    if not paths:
        raise ValueError("update_tenant: give display_name or policy")
    return admin_service_pb2.UpdateTenantRequest(
        tenant=tenant, update_mask=field_mask_pb2.FieldMask(paths=paths)
    )


def _field(key: str) -> str:
    """A TenantPolicy field's proto name, from its proto or JSON (lowerCamelCase) name: ParseDict
    takes either, a FieldMask path only the first."""
    fields = admin_pb2.TenantPolicy.DESCRIPTOR.fields_by_camelcase_name
    field = fields.get(key)
    return field.name if field is not None else key


def create_key_request(
    tenant: str, display_name: str, role: str, expire_time: datetime | None
) -> admin_service_pb2.CreateApiKeyRequest:
    if role not in _ROLE_VALUES:
        raise ValueError(f"role must be one of {sorted(_ROLE_VALUES)}, not {role!r}")
    api_key = admin_pb2.ApiKey(display_name=display_name, role=_ROLE_VALUES[role])
    if expire_time is not None:
        api_key.expire_time.FromDatetime(expire_time)
    return admin_service_pb2.CreateApiKeyRequest(parent=tenant_name(tenant), api_key=api_key)


class TenantCalls:
    """The tenant calls of `Client` (mixed in; uses its `_unary` and `channel`)."""

    _unary: Any
    channel: Any

    @property
    def _admin(self) -> Any:
        return channel_stub(self, "_admin_stub", _AdminStub)

    def get_tenant_usage(self, tenant: str, *, timeout: float | None = None) -> TenantUsage:
        """What `tenant` used and holds this period, and its limits (its own principals and
        admins may ask)."""
        request = admin_service_pb2.GetTenantUsageRequest(name=f"{tenant_name(tenant)}/usage")
        response = self._unary(
            self._admin.GetTenantUsage, request, deadline=deadline(timeout), retry=True
        )
        return TenantUsage.from_proto(response.usage)

    def get_tenant(self, name: str, *, timeout: float | None = None) -> Tenant:
        request = admin_service_pb2.GetTenantRequest(name=tenant_name(name))
        response = self._unary(
            self._admin.GetTenant, request, deadline=deadline(timeout), retry=True
        )
        return Tenant.from_proto(response.tenant)

    def list_tenants(self, *, page_size: int = 0, timeout: float | None = None) -> Iterator[Tenant]:
        """Every tenant (paged as it is iterated); a tenant admin sees its own."""
        token = ""
        while True:
            request = admin_service_pb2.ListTenantsRequest(page_size=page_size, page_token=token)
            page = self._unary(
                self._admin.ListTenants, request, deadline=deadline(timeout), retry=True
            )
            yield from (Tenant.from_proto(t) for t in page.tenants)
            token = page.next_page_token
            if not token:
                return

    def create_tenant(
        self,
        tenant_id: str,
        *,
        display_name: str = "",
        policy: Mapping[str, Any] | None = None,
        timeout: float | None = None,
    ) -> Tenant:
        """Creates a tenant (admins); without `policy` it gets the gateway's default policy."""
        request = create_request(tenant_id, display_name, policy)
        response = self._unary(
            self._admin.CreateTenant, request, deadline=deadline(timeout), retry=False
        )
        return Tenant.from_proto(response.tenant)

    def update_tenant(
        self,
        name: str,
        *,
        display_name: str | None = None,
        policy: Mapping[str, Any] | None = None,
        etag: str = "",
        replace_policy: bool = False,
        timeout: float | None = None,
    ) -> Tenant:
        """Changes what is given (each key of `policy`, or the whole policy with
        `replace_policy`); with `etag`, only if the tenant did not change since (else
        AbortedError)."""
        request = update_request(name, display_name, policy, etag, replace_policy)
        response = self._unary(
            self._admin.UpdateTenant, request, deadline=deadline(timeout), retry=False
        )
        return Tenant.from_proto(response.tenant)

    def create_api_key(
        self,
        tenant: str,
        *,
        display_name: str = "",
        role: str = "user",
        expire_time: datetime | None = None,
        timeout: float | None = None,
    ) -> tuple[ApiKey, str]:
        """Creates a key for `tenant`: the key's record and the whole key, shown this once."""
        request = create_key_request(tenant, display_name, role, expire_time)
        response = self._unary(
            self._admin.CreateApiKey, request, deadline=deadline(timeout), retry=False
        )
        return ApiKey.from_proto(response.api_key), str(response.key)

    def list_api_keys(
        self, tenant: str = "-", *, show_inactive: bool = False, timeout: float | None = None
    ) -> Iterator[ApiKey]:
        """A tenant's keys ("-": every tenant's, admins only), paged as it is iterated."""
        token = ""
        while True:
            request = admin_service_pb2.ListApiKeysRequest(
                parent=tenant_name(tenant), page_token=token, show_inactive=show_inactive
            )
            page = self._unary(
                self._admin.ListApiKeys, request, deadline=deadline(timeout), retry=True
            )
            yield from (ApiKey.from_proto(k) for k in page.api_keys)
            token = page.next_page_token
            if not token:
                return

    def revoke_api_key(self, name: str, *, timeout: float | None = None) -> ApiKey:
        """Revokes "tenants/{t}/apiKeys/{prefix}" at once."""
        request = admin_service_pb2.RevokeApiKeyRequest(name=name)
        response = self._unary(
            self._admin.RevokeApiKey, request, deadline=deadline(timeout), retry=True
        )
        return ApiKey.from_proto(response.api_key)


class AsyncTenantCalls:
    """The tenant calls of `AsyncClient`, as coroutines."""

    _unary: Any
    channel: Any

    @property
    def _admin(self) -> Any:
        return channel_stub(self, "_admin_stub", _AdminStub)

    async def get_tenant_usage(self, tenant: str, *, timeout: float | None = None) -> TenantUsage:
        """See `Client.get_tenant_usage`."""
        request = admin_service_pb2.GetTenantUsageRequest(name=f"{tenant_name(tenant)}/usage")
        response = await self._unary(
            self._admin.GetTenantUsage, request, deadline=deadline(timeout), retry=True
        )
        return TenantUsage.from_proto(response.usage)

    async def get_tenant(self, name: str, *, timeout: float | None = None) -> Tenant:
        request = admin_service_pb2.GetTenantRequest(name=tenant_name(name))
        response = await self._unary(
            self._admin.GetTenant, request, deadline=deadline(timeout), retry=True
        )
        return Tenant.from_proto(response.tenant)

    async def create_tenant(
        self,
        tenant_id: str,
        *,
        display_name: str = "",
        policy: Mapping[str, Any] | None = None,
        timeout: float | None = None,
    ) -> Tenant:
        request = create_request(tenant_id, display_name, policy)
        response = await self._unary(
            self._admin.CreateTenant, request, deadline=deadline(timeout), retry=False
        )
        return Tenant.from_proto(response.tenant)

    async def update_tenant(
        self,
        name: str,
        *,
        display_name: str | None = None,
        policy: Mapping[str, Any] | None = None,
        etag: str = "",
        replace_policy: bool = False,
        timeout: float | None = None,
    ) -> Tenant:
        request = update_request(name, display_name, policy, etag, replace_policy)
        response = await self._unary(
            self._admin.UpdateTenant, request, deadline=deadline(timeout), retry=False
        )
        return Tenant.from_proto(response.tenant)

    async def list_tenants(
        self, *, page_size: int = 0, timeout: float | None = None
    ) -> AsyncIterator[Tenant]:
        """See `Client.list_tenants`."""
        token = ""
        while True:
            request = admin_service_pb2.ListTenantsRequest(page_size=page_size, page_token=token)
            page = await self._unary(
                self._admin.ListTenants, request, deadline=deadline(timeout), retry=True
            )
            for tenant in page.tenants:
                yield Tenant.from_proto(tenant)
            token = page.next_page_token
            if not token:
                return

    async def create_api_key(
        self,
        tenant: str,
        *,
        display_name: str = "",
        role: str = "user",
        expire_time: datetime | None = None,
        timeout: float | None = None,
    ) -> tuple[ApiKey, str]:
        """See `Client.create_api_key`."""
        request = create_key_request(tenant, display_name, role, expire_time)
        response = await self._unary(
            self._admin.CreateApiKey, request, deadline=deadline(timeout), retry=False
        )
        return ApiKey.from_proto(response.api_key), str(response.key)

    async def list_api_keys(
        self, tenant: str = "-", *, show_inactive: bool = False, timeout: float | None = None
    ) -> AsyncIterator[ApiKey]:
        """See `Client.list_api_keys`."""
        token = ""
        while True:
            request = admin_service_pb2.ListApiKeysRequest(
                parent=tenant_name(tenant), page_token=token, show_inactive=show_inactive
            )
            page = await self._unary(
                self._admin.ListApiKeys, request, deadline=deadline(timeout), retry=True
            )
            for api_key in page.api_keys:
                yield ApiKey.from_proto(api_key)
            token = page.next_page_token
            if not token:
                return

    async def revoke_api_key(self, name: str, *, timeout: float | None = None) -> ApiKey:
        """See `Client.revoke_api_key`."""
        request = admin_service_pb2.RevokeApiKeyRequest(name=name)
        response = await self._unary(
            self._admin.RevokeApiKey, request, deadline=deadline(timeout), retry=True
        )
        return ApiKey.from_proto(response.api_key)
