"""AdminService.ListAuditRecords (a mixin of AdminServicer): the audit log, by sequence.

Admins read every tenant's records; a tenant admin reads its own tenant's only (the filter is
AND-ed with its tenant, so another tenant's records are never seen, not even as a count); other
callers get PERMISSION_DENIED.
"""

from __future__ import annotations

import struct

from qgateway.v1 import admin_pb2, admin_service_pb2

from gateway.api import codec, paging
from gateway.api.audit_filter import parse_audit_filter
from gateway.api.context import Context
from gateway.domain.audit import AuditRecord
from gateway.domain.errors import PermissionDenied
from gateway.security.principals import Role, current_principal
from gateway.store.base import Store

DEFAULT_PAGE_SIZE = 100
_CURSOR = struct.Struct(">q")


def encode_record(record: AuditRecord) -> admin_pb2.AuditRecord:
    return admin_pb2.AuditRecord(
        name=f"auditRecords/{record.sequence}",
        sequence=record.sequence,
        time=codec.timestamp(record.time),
        end_time=codec.timestamp(record.end_time),
        principal=record.principal,
        tenant=record.tenant,
        key_prefix=record.key_prefix,
        peer=record.peer,
        service=record.service,
        method=record.method,
        resource=record.resource,
        backend=record.backend,
        circuit_digest=record.circuit_digest,
        shots=record.shots,
        code=record.code,
        reason=record.reason,
        request_id=record.request_id,
        trace_id=record.trace_id,
        count=record.count,
        mac=record.mac.hex(),
    )


class AuditRpcs:
    _store: Store
    _page_tokens: paging.PageTokens

    async def ListAuditRecords(
        self, request: admin_service_pb2.ListAuditRecordsRequest, context: Context
    ) -> admin_service_pb2.ListAuditRecordsResponse:
        principal = current_principal.get()
        if principal.role is Role.ADMIN:
            tenant: str | None = None
        elif principal.role is Role.TENANT_ADMIN:
            tenant = principal.tenant
        else:
            raise PermissionDenied(
                "TENANT_ADMIN_ROLE_REQUIRED",
                "reading audit records needs the tenant-admin or admin role",
                metadata={"role": str(principal.role)},
            )
        size = request.page_size or DEFAULT_PAGE_SIZE
        limit = paging.page_size(size)
        query = parse_audit_filter(request.filter)
        # The token binds the caller's tenant scope and the normalised filter.
        scope = tenant if tenant is not None else "*"
        cursor = self._page_tokens.open(
            request.page_token, kind="audit", tenant=scope, query=query.canonical()
        )
        after = 0
        if cursor is not None:
            if len(cursor) != _CURSOR.size:
                raise paging.invalid_page_token()
            (after,) = _CURSOR.unpack(cursor)
        page = await self._store.list_audit(tenant=tenant, query=query, after=after, limit=limit)
        token = ""
        if page.next_after is not None:
            token = self._page_tokens.seal(
                _CURSOR.pack(page.next_after), kind="audit", tenant=scope, query=query.canonical()
            )
        return admin_service_pb2.ListAuditRecordsResponse(
            audit_records=[encode_record(r) for r in page.records], next_page_token=token
        )
