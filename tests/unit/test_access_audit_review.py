"""Hostile review of access control and the audit log: a refusal after authentication was
recorded without its caller, a refused AdminService call without the tenant it aimed at; an
older head file put back hides deleted records from `verify` (a known limit, strict xfail)."""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import grpc
import pytest
from google.protobuf.message import DecodeError
from qgateway.v1 import admin_service_pb2

from gateway import audit_tool
from gateway.api.admin_service import AdminServicer
from gateway.domain.audit import AuditRecord, ChainPoint
from gateway.domain.errors import NotFound
from gateway.interceptors.audit import AuditInterceptor
from gateway.interceptors.auth import AuthInterceptor
from gateway.interceptors.boundary import ErrorBoundaryInterceptor
from gateway.interceptors.decode import DecodeInterceptor
from gateway.interceptors.request_reads import RequestReads
from gateway.security import audit_files
from gateway.security.api_keys import METADATA_KEY, KeyRing, KeyVerifier, generate_key
from gateway.security.audit_writer import AuditWriter
from gateway.security.authenticator import Authenticator
from gateway.security.principals import Principal, Role, current_principal
from gateway.store.sqlite import SqliteStore
from tests.unit.test_audit_pending import Ctx

AUDIT_KEY = bytes(range(32))
T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
ACME = generate_key("acme")


class _Sink:
    def __init__(self) -> None:
        self.records: list[AuditRecord] = []

    async def append_audit(self, records: Sequence[AuditRecord]) -> ChainPoint:
        self.records.extend(records)
        return ChainPoint(len(self.records), b"")


# --- 1. a refusal in the decode step forgets who the (authenticated) caller was -------------


@pytest.fixture
async def decode_served() -> AsyncIterator[tuple[grpc.aio.Channel, AuditWriter, _Sink]]:
    """The gateway's interceptor chain (server.py's order and audit wiring), around a probe
    method whose request a 0xff byte makes undecodable."""
    sink = _Sink()
    writer = AuditWriter(sink, flush_interval_s=3600, failure_window_s=3600)
    audit = AuditInterceptor(writer, clock=lambda: T0)

    def deserialize(data: bytes) -> bytes:
        if data.startswith(b"\xff"):
            raise DecodeError("not a message")
        return data

    async def echo(request: Any, context: Any) -> bytes:
        return bytes(request)

    handler = grpc.method_handlers_generic_handler(
        "qgateway.v1.Probe",
        {
            "Echo": grpc.unary_unary_rpc_method_handler(
                echo, request_deserializer=deserialize, response_serializer=bytes
            )
        },
    )
    server = grpc.aio.server(
        interceptors=[
            ErrorBoundaryInterceptor(1 << 20, on_rejected=audit.rejected),
            AuthInterceptor(
                Authenticator(KeyVerifier(KeyRing([ACME.config]))), on_failure=audit.auth_failed
            ),
            DecodeInterceptor(RequestReads(4, 5.0), on_rejected=audit.rejected),
            audit,
        ]
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield channel, writer, sink
    finally:
        await server.stop(None)


@pytest.mark.anyio
async def test_a_refusal_after_authentication_names_the_caller_in_its_record(
    decode_served: tuple[grpc.aio.Channel, AuditWriter, _Sink],
) -> None:
    channel, writer, sink = decode_served
    call = channel.unary_unary("/qgateway.v1.Probe/Echo")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call(b"\xff\x00", metadata=((METADATA_KEY, f"Bearer {ACME.key}"),), timeout=10)
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    await writer.close()
    refused = [r for r in sink.records if r.reason == "MALFORMED_REQUEST"]
    assert len(refused) == 1
    record = refused[0]
    assert (record.principal, record.tenant, record.key_prefix) == (
        f"apiKeys/{ACME.config.prefix}",
        "acme",
        ACME.config.prefix,
    )


# --- 2. a refused AdminService call does not say which tenant it was aimed at ---------------


@pytest.mark.anyio
async def test_a_refused_create_api_key_records_the_tenant_it_was_aimed_at(
    tmp_path: Path,
) -> None:
    store = SqliteStore(tmp_path / "q.db")
    await store.open()
    sink = _Sink()
    writer = AuditWriter(sink, flush_interval_s=3600)
    token = current_principal.set(Principal("acme", "apiKeys/ta", Role.TENANT_ADMIN))
    try:
        servicer = AdminServicer(store, clock=lambda: T0)

        async def continuation(details: Any) -> grpc.RpcMethodHandler:
            return grpc.unary_unary_rpc_method_handler(servicer.CreateApiKey)

        handler = await AuditInterceptor(writer, clock=lambda: T0).intercept_service(
            continuation, SimpleNamespace(method="/qgateway.v1.AdminService/CreateApiKey")
        )
        request = admin_service_pb2.CreateApiKeyRequest(parent="tenants/globex")
        with pytest.raises(NotFound):
            await handler.unary_unary(request, Ctx())
        await writer.close()
    finally:
        current_principal.reset(token)
        await store.close()
    [record] = sink.records
    assert record.method == "CreateApiKey" and record.reason == "TENANT_NOT_FOUND"
    assert "tenants/globex" in record.resource


# --- 3. an older sealed head file, put back, hides the deletion of the newest records --------


def _append(path: Path, count: int, start: int) -> ChainPoint:
    async def run() -> ChainPoint:
        store = SqliteStore(path)
        store.enable_audit(AUDIT_KEY)
        await store.open()
        try:
            return await store.append_audit(
                [
                    AuditRecord(
                        time=T0 + timedelta(seconds=i),
                        end_time=T0 + timedelta(seconds=i),
                        service="qgateway.v1.AdminService",
                        method="CreateApiKey",
                        principal="apiKeys/abcd",
                        tenant="acme",
                        resource=f"tenants/acme/apiKeys/k{i}",
                    )
                    for i in range(start, start + count)
                ]
            )
        finally:
            await store.close()

    return asyncio.run(run())


@pytest.mark.xfail(
    strict=True,
    reason="a known limit (README, Audit): the head file's seal has no freshness, so a copy of "
    "an earlier head file, put back after deleting the newest records, passes `qgateway audit "
    "verify`; only the logged heads (`audit head sequence=...`), kept off the machine, show it",
)
def test_an_older_sealed_head_put_back_does_not_hide_deleted_records(tmp_path: Path) -> None:
    db = tmp_path / audit_tool.DB_FILE
    head_file = tmp_path / "audit-head.json"
    (tmp_path / "audit.key").write_bytes(AUDIT_KEY)
    args = argparse.Namespace(
        config=None, data_dir=tmp_path, key_file=None, head_file=None, no_head=False
    )
    # The gateway exports its head (sequence 5); anyone who can read the file keeps a copy.
    audit_files.write_head(head_file, _append(db, 5, 0), AUDIT_KEY)
    old_copy = head_file.read_bytes()
    # Later records (keys created in another tenant's name, say), and their head exported.
    audit_files.write_head(head_file, _append(db, 5, 5), AUDIT_KEY)
    assert audit_tool._cmd_verify(args) == 0
    # With write access to the database and the head file (not the key): the newest five
    # records deleted, and the old head file put back.
    conn = sqlite3.connect(db)
    conn.execute("DROP TRIGGER audit_records_no_delete")
    conn.execute("DELETE FROM audit_records WHERE seq > 5")
    conn.commit()
    conn.close()
    head_file.write_bytes(old_copy)
    assert audit_tool._cmd_verify(args) == 1
