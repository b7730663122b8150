"""AdminService's API-key RPCs: CreateApiKey, ListApiKeys, RevokeApiKey (a mixin of the
servicer in gateway.api.admin_service).

A key's secret exists only in CreateApiKey's response: the store keeps its SHA-256. Tenant
admins manage their own tenant's keys with roles up to tenant-admin, and a key they create
expires no later than the credential they created it with; only admins create or revoke admin
keys, and only admins list every tenant's keys ("tenants/-"). Keys are made and listed only for
tenants that exist (admin_tenants.require_known_tenant).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from datetime import UTC, datetime

from qgateway.v1 import admin_pb2, admin_service_pb2

from gateway.api import paging
from gateway.api.admin_tenants import require_known_tenant
from gateway.api.context import Context
from gateway.domain.api_keys import MAX_KEYS_PER_TENANT, ApiKeyRecord, KeyState
from gateway.domain.errors import (
    FieldViolation,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceInfo,
)
from gateway.domain.timestamps import rfc3339
from gateway.runtime.shielded import to_the_end
from gateway.security.admin_scope import require_admin, require_tenant_admin
from gateway.security.api_keys import KeyVerifier, generate_key
from gateway.security.policies import PolicyBook
from gateway.security.principals import (
    EVERY_TENANT,
    KEY_PREFIX_PATTERN,
    TENANT_ID_PATTERN,
    Principal,
    Role,
    current_principal,
)
from gateway.store.base import Store

log = logging.getLogger("gateway.admin")

API_KEY_TYPE = "qgateway.dev/ApiKey"
MAX_DISPLAY_NAME = 256
_PARENT = re.compile(rf"tenants/({TENANT_ID_PATTERN})")  # fullmatch: `$` allows a final newline
_NAME = re.compile(rf"tenants/({TENANT_ID_PATTERN})/apiKeys/({KEY_PREFIX_PATTERN})")
_ROLES = {
    admin_pb2.ROLE_UNSPECIFIED: Role.USER,
    admin_pb2.ROLE_USER: Role.USER,
    admin_pb2.ROLE_TENANT_ADMIN: Role.TENANT_ADMIN,
    admin_pb2.ROLE_ADMIN: Role.ADMIN,
}
_ROLE_PB = {
    Role.USER: admin_pb2.ROLE_USER,
    Role.TENANT_ADMIN: admin_pb2.ROLE_TENANT_ADMIN,
    Role.ADMIN: admin_pb2.ROLE_ADMIN,
}
_STATE_PB = {
    KeyState.ACTIVE: admin_pb2.API_KEY_STATE_ACTIVE,
    KeyState.EXPIRED: admin_pb2.API_KEY_STATE_EXPIRED,
    KeyState.REVOKED: admin_pb2.API_KEY_STATE_REVOKED,
}


def _bad(field: str, problem: str) -> InvalidArgument:
    return InvalidArgument(
        "INVALID_API_KEY", f"{field}: {problem}", field_violations=[FieldViolation(field, problem)]
    )


def key_name(record: ApiKeyRecord) -> str:
    return f"tenants/{record.tenant}/apiKeys/{record.prefix}"


def encode_key(record: ApiKeyRecord, now: datetime) -> admin_pb2.ApiKey:
    out = admin_pb2.ApiKey(
        name=key_name(record),
        display_name=record.display_name,
        role=_ROLE_PB[Role(record.role)],
        state=_STATE_PB[record.state(now)],
    )
    out.create_time.FromDatetime(record.created_at)
    if record.expires_at is not None:
        out.expire_time.FromDatetime(record.expires_at)
    if record.revoked_at is not None:
        out.revoke_time.FromDatetime(record.revoked_at)
    if record.last_used_at is not None:
        out.last_use_time.FromDatetime(record.last_used_at)
    return out


def _parent_tenant(parent: str) -> str:
    match = _PARENT.fullmatch(parent)
    if match is None:
        raise _bad("parent", "must be tenants/{tenant}")
    return match.group(1)


def _role_not_grantable(role: Role) -> PermissionDenied:
    return PermissionDenied(
        "ROLE_NOT_GRANTABLE",
        "only admins create or revoke keys with the admin role",
        metadata={"role": str(role)},
    )


def _check_lifetime(principal: Principal, expires: datetime | None) -> None:
    """A key made by a credential that expires must expire no later: otherwise a short-lived
    credential (a JWT, an expiring key) could leave itself a permanent one. Admins are exempt:
    they may create admin keys anyway."""
    ceiling = principal.expires_at
    if principal.role is Role.ADMIN or ceiling is None:
        return
    if expires is None or expires > ceiling:
        raise PermissionDenied(
            "EXPIRY_NOT_GRANTABLE",
            f"this credential expires at {rfc3339(ceiling)}: a key it creates needs an "
            "expire_time no later than that",
            metadata={
                "credentialExpireTime": rfc3339(ceiling),
                "expireTime": "" if expires is None else rfc3339(expires),
            },
        )


class ApiKeyRpcs:
    """The key RPCs, mixed into AdminServicer, which sets these attributes.

    Attributes:
        _store: Where keys live.
        _policies: The configured tenants (a key's tenant is configured, stored, the caller's
            own or `default`).
        _page_tokens: Seals ListApiKeys cursors.
        _keys: The gateway's key verifier: a revoke drops its cached record (effective at once
            on this gateway; other replicas within their `auth.key_cache_s`). None: no cache.
        _clock: The current time (UTC).
    """

    _store: Store
    _policies: PolicyBook
    _page_tokens: paging.PageTokens
    _keys: KeyVerifier | None
    _clock: Callable[[], datetime]

    async def CreateApiKey(
        self, request: admin_service_pb2.CreateApiKeyRequest, context: Context
    ) -> admin_service_pb2.CreateApiKeyResponse:
        principal = current_principal.get()
        tenant = _parent_tenant(request.parent)
        require_tenant_admin(principal, tenant, request.parent)
        await require_known_tenant(self._store, self._policies, principal, tenant)
        asked = request.api_key
        role = _ROLES.get(asked.role)
        if role is None:
            raise _bad("api_key.role", f"unknown role {asked.role}")
        if role is Role.ADMIN and principal.role is not Role.ADMIN:
            raise _role_not_grantable(role)
        if len(asked.display_name) > MAX_DISPLAY_NAME:
            raise _bad("api_key.display_name", f"at most {MAX_DISPLAY_NAME} characters")
        now = self._clock()
        expires = None
        if asked.HasField("expire_time"):
            try:
                expires = asked.expire_time.ToDatetime(tzinfo=UTC)
            except ValueError:  # outside 0001..9999: the client's input, not a gateway bug
                raise _bad("api_key.expire_time", "not a valid timestamp") from None
            if expires <= now:
                raise _bad("api_key.expire_time", "must be in the future")
        _check_lifetime(principal, expires)
        new = generate_key(tenant, role=role)
        record = await self._store.create_api_key(
            ApiKeyRecord(
                prefix=new.config.prefix,
                tenant=tenant,
                sha256=new.config.sha256,
                display_name=asked.display_name,
                role=str(role),
                created_at=now,
                expires_at=expires,
            ),
            max_unrevoked=MAX_KEYS_PER_TENANT,
        )
        log.info("API key %s created by %s", key_name(record), principal.id)
        return admin_service_pb2.CreateApiKeyResponse(api_key=encode_key(record, now), key=new.key)

    async def ListApiKeys(
        self, request: admin_service_pb2.ListApiKeysRequest, context: Context
    ) -> admin_service_pb2.ListApiKeysResponse:
        principal = current_principal.get()
        tenant: str | None
        if request.parent == f"tenants/{EVERY_TENANT}":
            require_admin(principal)
            tenant = None
        else:
            tenant = _parent_tenant(request.parent)
            require_tenant_admin(principal, tenant, request.parent)
            await require_known_tenant(self._store, self._policies, principal, tenant)
        limit = paging.page_size(request.page_size)
        where = {
            "kind": "apiKeys",
            "tenant": principal.tenant,
            "query": f"{request.parent}\n{int(request.show_inactive)}",
        }
        sealed = self._page_tokens.open(request.page_token, **where)
        after = None
        if sealed is not None:
            cursor_tenant, sep, prefix = sealed.decode(errors="replace").partition("\n")
            if not sep:
                raise paging.invalid_page_token()
            after = (cursor_tenant, prefix)
        now = self._clock()
        page = await self._store.list_api_keys(
            tenant, active_at=None if request.show_inactive else now, after=after, limit=limit
        )
        token = ""
        if page.next_cursor is not None:
            cursor = f"{page.next_cursor[0]}\n{page.next_cursor[1]}".encode()
            token = self._page_tokens.seal(cursor, **where)
        return admin_service_pb2.ListApiKeysResponse(
            api_keys=[encode_key(k, now) for k in page.keys], next_page_token=token
        )

    async def RevokeApiKey(
        self, request: admin_service_pb2.RevokeApiKeyRequest, context: Context
    ) -> admin_service_pb2.RevokeApiKeyResponse:
        principal = current_principal.get()
        match = _NAME.fullmatch(request.name)
        if match is None:
            raise InvalidArgument(
                "INVALID_API_KEY_NAME",
                "name must be tenants/{tenant}/apiKeys/{api_key}",
                field_violations=[FieldViolation("name", "not tenants/{tenant}/apiKeys/{key}")],
            )
        tenant, prefix = match.groups()
        require_tenant_admin(principal, tenant, request.name)
        record = await self._store.get_api_key(prefix)
        if record is None or record.tenant != tenant:
            raise NotFound(
                "API_KEY_NOT_FOUND",
                f"{request.name} not found",
                metadata={"apiKey": request.name},
                resource_info=ResourceInfo(API_KEY_TYPE, request.name),
            )
        if Role(record.role) is Role.ADMIN and principal.role is not Role.ADMIN:
            raise _role_not_grantable(Role.ADMIN)
        now = self._clock()
        keys = self._keys

        async def revoke() -> ApiKeyRecord | None:
            revoked = await self._store.revoke_api_key(prefix, now)
            if keys is not None:
                keys.forget(prefix)
            return revoked

        revoked = await to_the_end(revoke())
        assert revoked is not None  # keys are never deleted
        log.info("API key %s revoked by %s", request.name, principal.id)
        return admin_service_pb2.RevokeApiKeyResponse(api_key=encode_key(revoked, now))
