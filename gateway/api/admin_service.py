"""qgateway.v1.AdminService: API keys, tenants and policies, usage, and the audit log.

Each RPC checks its scope first (gateway.security.admin_scope), then translates between
messages and the security and store layers. Methods not defined here answer UNIMPLEMENTED
(grpc's generated base class).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from qgateway.v1 import admin_service_pb2_grpc

from gateway.api.admin_audit import AuditRpcs
from gateway.api.admin_keys import ApiKeyRpcs
from gateway.api.admin_tenants import TenantRpcs
from gateway.api.paging import DEFAULT_MAX_RESPONSE_BYTES, PageTokens
from gateway.security.api_keys import KeyVerifier
from gateway.security.policies import PolicyBook
from gateway.store.base import Store

SERVICE_NAME = "qgateway.v1.AdminService"


def _now() -> datetime:
    return datetime.now(UTC)


class AdminServicer(TenantRpcs, AuditRpcs, ApiKeyRpcs, admin_service_pb2_grpc.AdminServiceServicer):
    """The AdminService.

    Args:
        store: The gateway's store (keys, tenants, usage and audit records live there).
        policies: Every tenant's policy (tenant RPCs update it on every change).
        page_tokens: Seals list page tokens.
        keys: The gateway's API-key verifier (RevokeApiKey drops its cached record).
        clock: The current time (UTC).
        max_response_bytes: The largest response sent (`server.max_response_bytes`): list
            pages are cut by bytes as well as by count.
    """

    def __init__(
        self,
        store: Store,
        *,
        policies: PolicyBook | None = None,
        page_tokens: PageTokens | None = None,
        clock: Callable[[], datetime] = _now,
        keys: KeyVerifier | None = None,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
    ) -> None:
        self._store = store
        self._max_response = max_response_bytes
        self._keys = keys
        self._policies = policies if policies is not None else PolicyBook()
        self._page_tokens = page_tokens if page_tokens is not None else PageTokens(bytes(32))
        self._clock = clock
        self._tenant_updates = {}
