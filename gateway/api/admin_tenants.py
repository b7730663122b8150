"""AdminService's tenant and usage RPCs (a mixin of AdminServicer).

Tenants come from two places, by one rule (gateway.security.policies): those declared in the
TOML file are managed by it (listed and readable here, UpdateTenant refuses them
FAILED_PRECONDITION TENANT_MANAGED_BY_CONFIG, CreateTenant of their id is ALREADY_EXISTS); the
others are created and changed here and kept in the store. Every change updates the gateway's
PolicyBook at once, so the RPC path never reads a policy from the store.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import datetime

from qgateway.v1 import admin_service_pb2

from gateway.api import paging, tenant_codec
from gateway.api.context import Context
from gateway.domain.errors import (
    Aborted,
    AlreadyExists,
    FailedPrecondition,
    NotFound,
    ResourceInfo,
)
from gateway.runtime.shielded import to_the_end
from gateway.security.admin_scope import (
    TENANT_RESOURCE,
    require_admin,
    require_tenant_admin,
    require_tenant_member,
)
from gateway.security.policies import PolicyBook
from gateway.security.principals import DEFAULT_TENANT, Principal, current_principal
from gateway.security.tenant_policy import (
    Tenant,
    TenantPolicy,
    etag_of,
    policy_from_json,
    policy_to_json,
)
from gateway.store.base import Store, StoredTenant


def tenant_from_stored(stored: StoredTenant) -> Tenant:
    """A stored tenant with its policy decoded (AdminService reads, and the policy book)."""
    return Tenant(
        id=stored.id,
        display_name=stored.display_name,
        policy=policy_from_json(stored.policy_json),
        etag=stored.etag,
        created_at=stored.created_at,
        updated_at=stored.updated_at,
    )


def _stored(tenant: Tenant, created_at: datetime, updated_at: datetime) -> StoredTenant:
    return StoredTenant(
        id=tenant.id,
        display_name=tenant.display_name,
        policy_json=policy_to_json(tenant.policy),
        etag=tenant.etag,
        created_at=created_at,
        updated_at=updated_at,
    )


def tenant_not_found(tenant: str) -> NotFound:
    name = f"tenants/{tenant}"
    return NotFound(
        "TENANT_NOT_FOUND",
        f"{name} not found",
        metadata={"resource": name},
        resource_info=ResourceInfo(TENANT_RESOURCE, name, "no such tenant"),
    )


async def require_known_tenant(
    store: Store, policies: PolicyBook, principal: Principal, tenant: str
) -> None:
    """Refuses a tenant declared nowhere: neither in the configuration, nor in the store, nor
    the caller's own (its identity provider or key names it), nor `default` (every caller's
    before authentication is configured). A key made for such a tenant would work with the
    default policy, under a name GetTenant does not know.

    Raises:
        NotFound: TENANT_NOT_FOUND, with ResourceInfo.
    """
    if tenant in (principal.tenant, DEFAULT_TENANT) or tenant in policies.configured:
        return
    if await store.get_tenant(tenant) is None:
        raise tenant_not_found(tenant)


# Attempts of an UpdateTenant without an etag, each losing a race with another update.
UPDATE_ATTEMPTS = 8


@dataclass
class _Turn:
    """One tenant's updates in this process, one at a time; `users` hold or wait for it."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0


class TenantRpcs:
    """CreateTenant, GetTenant, ListTenants, UpdateTenant and GetTenantUsage."""

    _store: Store
    _policies: PolicyBook
    _page_tokens: paging.PageTokens
    _clock: Callable[[], datetime]
    _max_response: int
    _tenant_updates: dict[str, _Turn]

    async def _find(self, tenant: str) -> Tenant | None:
        configured = self._policies.configured.get(tenant)
        if configured is not None:
            return configured
        stored = await self._store.get_tenant(tenant)
        return None if stored is None else tenant_from_stored(stored)

    async def CreateTenant(
        self, request: admin_service_pb2.CreateTenantRequest, context: Context
    ) -> admin_service_pb2.CreateTenantResponse:
        require_admin(current_principal.get())
        tid = tenant_codec.check_tenant_id(request.tenant_id)
        policy: TenantPolicy = self._policies.default
        if request.tenant.HasField("policy"):
            policy = tenant_codec.decode_policy(request.tenant.policy, created=True)
        display_name = tenant_codec.check_display_name(request.tenant.display_name)
        now = self._clock()
        tenant = Tenant(tid, display_name, policy, etag_of(display_name, policy), now, now)

        async def create() -> bool:
            created = await self._store.create_tenant(_stored(tenant, now, now))
            if created:
                self._policies.put(tid, policy)
            return created

        if tid in self._policies.configured or not await to_the_end(create()):
            raise AlreadyExists(
                "TENANT_ALREADY_EXISTS",
                f"tenants/{tid} already exists",
                metadata={"tenant": f"tenants/{tid}"},
                resource_info=ResourceInfo(TENANT_RESOURCE, f"tenants/{tid}", "exists"),
            )
        return admin_service_pb2.CreateTenantResponse(tenant=tenant_codec.encode_tenant(tenant))

    async def GetTenant(
        self, request: admin_service_pb2.GetTenantRequest, context: Context
    ) -> admin_service_pb2.GetTenantResponse:
        tid = tenant_codec.tenant_id(request.name)
        require_tenant_admin(current_principal.get(), tid, f"tenants/{tid}")
        tenant = await self._find(tid)
        if tenant is None:
            raise tenant_not_found(tid)
        return admin_service_pb2.GetTenantResponse(tenant=tenant_codec.encode_tenant(tenant))

    async def ListTenants(
        self, request: admin_service_pb2.ListTenantsRequest, context: Context
    ) -> admin_service_pb2.ListTenantsResponse:
        principal = current_principal.get()
        limit = paging.page_size(request.page_size)
        if not principal.admin:
            # A tenant admin lists its own tenant only (if it is declared anywhere).
            require_tenant_admin(principal, principal.tenant, f"tenants/{principal.tenant}")
            own = await self._find(principal.tenant)
            tenants = [] if own is None else [tenant_codec.encode_tenant(own)]
            return admin_service_pb2.ListTenantsResponse(tenants=tenants)
        where = {"kind": "tenants", "tenant": principal.tenant, "query": ""}
        sealed = self._page_tokens.open(request.page_token, **where)
        after = None if sealed is None else sealed.decode(errors="replace")
        # Configured and stored tenants, merged by id; a stored tenant shadowed by a configured
        # one of the same id is not shown twice.
        stored = await self._store.list_tenants(after=after, limit=limit + 1)
        configured = self._policies.configured
        merged = {t.id: tenant_from_stored(t) for t in stored if t.id not in configured}
        merged.update({tid: t for tid, t in configured.items() if after is None or tid > after})
        ids = sorted(merged)
        # Past the stored page's last id, a stored tenant may be missing: stop there.
        if len(stored) > limit:
            ids = [tid for tid in ids if tid <= stored[limit - 1].id]
        page = ids[:limit]
        more = len(ids) > limit or len(stored) > limit
        # A tenant's policy can hold 512 patterns: a page is cut by bytes as well.
        tenants, cursor = paging.within_response(
            page,
            page[-1] if more and page else None,
            self._max_response,
            lambda tid: tenant_codec.encode_tenant(merged[tid]),
            lambda tid: tid,
        )
        return admin_service_pb2.ListTenantsResponse(
            tenants=tenants,
            next_page_token=self._page_tokens.seal(cursor.encode(), **where) if cursor else "",
        )

    async def UpdateTenant(
        self, request: admin_service_pb2.UpdateTenantRequest, context: Context
    ) -> admin_service_pb2.UpdateTenantResponse:
        require_admin(current_principal.get())
        tid = tenant_codec.tenant_id(request.tenant.name, "tenant.name")
        if tid in self._policies.configured:
            raise FailedPrecondition(
                "TENANT_MANAGED_BY_CONFIG",
                f"tenants/{tid} is declared in the gateway's configuration file; change it there",
                metadata={"tenant": f"tenants/{tid}"},
            )
        # Without an etag the caller asked for its change whatever the tenant holds: an update
        # that lost a race with another (its compare-and-set on the etag it read) is applied
        # again to what that one wrote, never refused for an etag the caller did not send.
        # This process's updates of a tenant take turns, so only another process sharing the
        # store (or a write carried on for a caller that left) can come in between: 16 admins
        # updating one tenant at once each lost 8 rounds of that race here (one winner a
        # round). Turns are per tenant: one tenant's slow write holds no other's update.
        async with self._tenant_turn(tid):
            for _ in range(UPDATE_ATTEMPTS):
                done = await self._update_once(tid, request)
                if done is not None:
                    return done
                if request.tenant.etag:
                    raise _etag_mismatch(tid, request.tenant.etag)
        raise _etag_mismatch(tid, "")

    @contextlib.asynccontextmanager
    async def _tenant_turn(self, tid: str) -> AsyncIterator[None]:
        """Holds the tenant's turn for updates; the lock is dropped once nobody waits for it."""
        turn = self._tenant_updates.get(tid)
        if turn is None:
            turn = self._tenant_updates[tid] = _Turn()
        turn.users += 1
        try:
            async with turn.lock:
                yield
        finally:
            turn.users -= 1
            if turn.users == 0:
                del self._tenant_updates[tid]

    async def _update_once(
        self, tid: str, request: admin_service_pb2.UpdateTenantRequest
    ) -> admin_service_pb2.UpdateTenantResponse | None:
        """One read, apply and compare-and-set; None when another update came in between."""
        stored = await self._store.get_tenant(tid)
        if stored is None:
            raise tenant_not_found(tid)
        current = tenant_from_stored(stored)
        if request.tenant.etag and request.tenant.etag != current.etag:
            raise _etag_mismatch(tid, request.tenant.etag)
        display_name, policy = tenant_codec.apply_update(
            current, request.tenant, list(request.update_mask.paths)
        )
        now = self._clock()
        updated = Tenant(
            tid, display_name, policy, etag_of(display_name, policy), current.created_at, now
        )
        if updated.etag == current.etag:
            return admin_service_pb2.UpdateTenantResponse(
                tenant=tenant_codec.encode_tenant(current)
            )
        assert current.created_at is not None
        created_at = current.created_at

        async def update() -> StoredTenant | None:
            # Compare and set on the etag read: a concurrent update in between is seen.
            written = await self._store.update_tenant(
                _stored(updated, created_at, now), current.etag
            )
            if written is not None:
                self._policies.put(tid, policy)
            return written

        written = await to_the_end(update())
        if written is None:
            return None
        return admin_service_pb2.UpdateTenantResponse(
            tenant=tenant_codec.encode_tenant(tenant_from_stored(written))
        )

    async def GetTenantUsage(
        self, request: admin_service_pb2.GetTenantUsageRequest, context: Context
    ) -> admin_service_pb2.GetTenantUsageResponse:
        principal = current_principal.get()
        tid = tenant_codec.usage_tenant_id(request.name)
        require_tenant_member(principal, tid, f"tenants/{tid}/usage")
        await require_known_tenant(self._store, self._policies, principal, tid)
        policy = self._policies.policy(tid)
        period = policy.period(self._clock())
        unit = policy.quota.cost_unit if policy.quota is not None else ""
        usage = await self._store.tenant_usage(tid, period.start, period.end, unit)
        return admin_service_pb2.GetTenantUsageResponse(
            usage=tenant_codec.encode_usage(tid, usage, policy, period.start, period.end)
        )


def _etag_mismatch(tenant: str, sent: str) -> Aborted:
    """`sent`: the etag the caller sent; "" when it sent none and every attempt lost a race."""
    why = f"etag {sent[:40]!r}" if sent else "updated by others at every attempt"
    return Aborted(
        "ETAG_MISMATCH",
        f"tenants/{tenant} changed since it was read ({why}); read it again and repeat the update",
        metadata={"tenant": f"tenants/{tenant}"},
    )
