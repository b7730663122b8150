"""Audit: exactly one record per call of the gateway's own services (health and reflection
are not audited).

Sits inside authentication (it reads the caller from `current_principal`) and outside rate
limiting (a throttled call is recorded too). A mutating call (gateway.domain.audit.MUTATING)
carries a PendingRecord that the store operation committing its effect takes into the same
transaction; whatever was not taken (reads, streams, failures, calls that changed nothing) is
written in batches by the AuditWriter when the call ends. Failed authentications never reach
this interceptor: the auth interceptor reports them to `auth_failed`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import grpc

from gateway.api.context import Context
from gateway.domain import audit
from gateway.domain.audit import AuditRecord, PendingRecord
from gateway.domain.errors import Code, GatewayError
from gateway.interceptors.handlers import (
    Stream,
    Unary,
    failed_call,
    is_gateway_method,
    rewrap,
)
from gateway.security.audit_writer import AuditWriter
from gateway.security.principals import AuthFailure, current_principal
from gateway.telemetry import active as telemetry


def split_method(full: str) -> tuple[str, str]:
    """ "/qgateway.v1.JobService/SubmitJob" -> ("qgateway.v1.JobService", "SubmitJob")."""
    service, _, method = full.lstrip("/").partition("/")
    return service, method


# A client's own strings (a name, a request id) are kept to this many characters: an
# authenticated caller must not grow the log by megabytes per call.
MAX_CLIENT_TEXT = 256
# Refusals written aggregated (count per window), not one record per call.
AGGREGATED_REASONS = frozenset(
    {"RATE_LIMITED", "TOO_MANY_STREAMS", "TOO_MANY_SLOW_REQUESTS", "STREAM_MEMORY_EXHAUSTED"}
)


def _text_field(message: Any, name: str) -> str:
    value = getattr(message, name, "")
    return value[:MAX_CLIENT_TEXT] if isinstance(value, str) else ""


def _request_fields(request: Any) -> dict[str, str]:
    """What every request says about itself, read by field name (no proto types needed)."""
    # What the call is about: a name, else the parent it creates or lists under, else the
    # tenant it creates or updates (so a refused call says what it aimed at, too).
    tenant = getattr(request, "tenant", None)
    tenant_id = _text_field(request, "tenant_id")
    fields = {
        "request_id": _text_field(request, "request_id"),
        "resource": _text_field(request, "name")
        or _text_field(request, "parent")
        or (f"tenants/{tenant_id}"[:MAX_CLIENT_TEXT] if tenant_id else "")
        or (_text_field(tenant, "name") if tenant is not None else ""),
    }
    spec = getattr(request, "spec", None)
    backend = _text_field(spec, "backend") if spec is not None else ""
    # The bare id, as the store records it ("backends/aer" -> "aer").
    fields["backend"] = (backend or _text_field(request, "backend")).removeprefix("backends/")
    return fields


def _metadata(context: Context) -> dict[str, str]:
    found: dict[str, str] = {}
    for key, value in context.invocation_metadata() or ():
        if key in ("traceparent", "x-request-id") and isinstance(value, str):
            found[key] = value
    return found


class AuditInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Records every call of qgateway.v1 services.

    Args:
        writer: Where records that no effect committed go.
        clock: UTC now.
    """

    def __init__(
        self, writer: AuditWriter, clock: Callable[[], datetime] = lambda: datetime.now(UTC)
    ) -> None:
        self._writer = writer
        self._clock = clock

    def auth_failed(self, failure: AuthFailure) -> None:
        """The auth interceptor's on_failure: an aggregated, rate-limited record."""
        now = self._clock()
        service, method = split_method(failure.method)
        self._writer.auth_failed(
            AuditRecord(
                time=now,
                end_time=now,
                service=service,
                method=method,
                key_prefix=failure.key_prefix[:MAX_CLIENT_TEXT],
                principal=failure.principal[:MAX_CLIENT_TEXT],
                peer=failure.peer,
                code=int(failure.code),
                reason=failure.reason,
            )
        )

    def rejected(self, full_method: str, peer: str, error: GatewayError) -> None:
        """The error boundary's and the decode step's on_rejected: a request refused before
        this interceptor saw it (too large, not decodable, or its message too slow to arrive);
        counted per peer and caller like failed authentications. Told when the request is
        read, which is inside authentication: the record names the caller."""
        now = self._clock()
        service, method = split_method(full_method)
        principal = current_principal.get()
        self._writer.auth_failed(
            AuditRecord(
                time=now,
                end_time=now,
                service=service,
                method=method,
                principal=principal.id,
                tenant=principal.tenant,
                key_prefix=principal.key_prefix,
                peer=peer,
                code=int(error.code),
                reason=error.reason,
            )
        )

    def refused_unread(self, full_method: str, context: Context, error: GatewayError) -> None:
        """The rate limit's on_refused: an authenticated call refused before its request was
        read, so the record has no request fields."""
        self._finish(self._draft(full_method, None, context), int(error.code), error.reason)

    def _draft(self, full_method: str, request: Any, context: Context) -> AuditRecord:
        principal = current_principal.get()
        service, method = split_method(full_method)
        meta = _metadata(context)
        fields = _request_fields(request)
        now = self._clock()
        return AuditRecord(
            time=now,
            end_time=now,
            service=service,
            method=method,
            principal=principal.id,
            tenant=principal.tenant,
            key_prefix=principal.key_prefix,
            peer=context.peer() or "",
            resource=fields["resource"],
            backend=fields["backend"],
            request_id=fields["request_id"] or meta.get("x-request-id", "")[:MAX_CLIENT_TEXT],
            # The call's own span when tracing is on (the caller's trace, or the one the
            # gateway started for it); else the caller's traceparent, if it sent one.
            trace_id=audit.trace_id(telemetry.traceparent() or meta.get("traceparent", "")),
        )

    def _finish(self, record: AuditRecord | None, code: int, reason: str) -> None:
        if record is None:
            return
        ended = replace(record, end_time=self._clock(), code=code, reason=reason)
        if reason in AGGREGATED_REASONS:
            # Refused before the servicer ran, at whatever rate the caller sends: aggregated
            # per peer host, principal and window like failed authentications, or a caller
            # over its rate grows the log by one record per refused call.
            self._writer.auth_failed(ended)
        else:
            self._writer.add(ended)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        full_method: str = handler_call_details.method
        if not is_gateway_method(handler, full_method):
            return handler
        effects = audit.MUTATING.get(full_method)

        def wrap_unary(unary: Unary) -> Unary:
            async def handle(request: Any, context: Context) -> Any:
                draft = self._draft(full_method, request, context)
                code, reason = int(Code.OK), ""

                def late(record: AuditRecord) -> None:
                    # An operation the call left running committed nothing: the record is
                    # written with how the call ended.
                    self._finish(record, code, reason)

                pending = None if effects is None else PendingRecord(draft, effects, late)
                token = audit.pending_record.set(pending)
                try:
                    return await unary(request, context)
                except BaseException as exc:
                    code, reason = failed_call(exc, context)
                    raise
                finally:
                    audit.pending_record.reset(token)
                    # Written here only when no effect committed it.
                    self._finish(draft if pending is None else pending.close(), code, reason)

            return handle

        def wrap_stream(stream: Stream) -> Stream:
            async def handle(request: Any, context: Context) -> AsyncIterator[Any]:
                # One record per stream, written when it ends (how it ended included).
                draft = self._draft(full_method, request, context)
                code, reason = int(Code.OK), ""
                try:
                    async for item in stream(request, context):
                        yield item
                except BaseException as exc:
                    code, reason = failed_call(exc, context)
                    raise
                finally:
                    self._finish(draft, code, reason)

            return handle

        return rewrap(handler, wrap_unary, wrap_stream)
