"""A mutating call's record: committed by its effect, or written by the call, exactly once
(gateway.domain.audit.PendingRecord), also when the caller goes away mid-operation."""

from __future__ import annotations

import asyncio
import threading
import uuid
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import grpc
import pytest

from gateway.domain.audit import AuditRecord, Effect, PendingRecord
from gateway.domain.errors import Code, InvalidArgument
from gateway.interceptors.audit import AuditInterceptor
from gateway.security.audit_writer import AuditWriter
from gateway.security.principals import Principal, current_principal
from gateway.store.base import NewJob
from gateway.store.sqlite import SqliteStore

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
DRAFT = AuditRecord(
    time=T0,
    end_time=T0,
    service="qgateway.v1.JobService",
    method="SubmitJob",
    principal="anonymous",
    tenant="default",
    key_prefix="",
    peer="ipv4:10.1.2.3:5555",
    resource="",
)


def test_a_record_given_back_after_the_call_ended_is_written_late_once() -> None:
    late: list[AuditRecord] = []
    pending = PendingRecord(DRAFT, frozenset({Effect.CREATE_JOB}), late.append)
    assert pending.take(Effect.CREATE_JOB) == DRAFT
    assert pending.close() is None  # the operation may still commit it
    pending.give_back()  # it committed nothing
    pending.give_back()
    assert late == [DRAFT]
    # An operation that committed it: never written again.
    committed: list[AuditRecord] = []
    other = PendingRecord(DRAFT, frozenset({Effect.CREATE_JOB}), committed.append)
    other.take(Effect.CREATE_JOB)
    assert other.close() is None and committed == []
    # Given back before the call ended: the call writes it itself.
    early = PendingRecord(DRAFT, frozenset({Effect.CREATE_JOB}), committed.append)
    early.take(Effect.CREATE_JOB)
    early.give_back()
    assert early.close() == DRAFT and committed == []


class Ctx:
    """A servicer context with no metadata, from one peer."""

    def invocation_metadata(self) -> tuple[()]:
        return ()

    def peer(self) -> str:
        return "ipv4:10.1.2.3:5555"

    def code(self) -> None:
        return None


def _new(request_id: str, digest: bytes) -> NewJob:
    return NewJob(
        id=uuid.uuid4().hex,
        tenant="default",
        request_id=request_id,
        request_hash=digest,
        backend="aer",
        spec=b"spec",
        num_pubs=1,
        seed=1,
        created_at=datetime.now(UTC),
    )


@pytest.mark.parametrize("cancel", [False, True])
def test_a_refused_submission_has_its_record_even_when_its_caller_went_away(
    tmp_path: Path, cancel: bool
) -> None:
    # The client cancels while the create is queued on the store's thread; the create then
    # fails (REQUEST_ID_REUSED): the call still has exactly one record.
    async def main() -> list[tuple[str, int, str]]:
        store = SqliteStore(tmp_path / "q.db")
        store.enable_audit(bytes(32))
        await store.open()
        writer = AuditWriter(store, flush_interval_s=0.05)
        try:
            await store.create_job(_new("rid-1", b"a" * 32))

            async def submit(request: Any, context: Any) -> Any:
                return await store.create_job(_new("rid-1", b"b" * 32))

            async def continuation(details: Any) -> grpc.RpcMethodHandler:
                return grpc.unary_unary_rpc_method_handler(submit)

            handler = await AuditInterceptor(writer).intercept_service(
                continuation, SimpleNamespace(method="/qgateway.v1.JobService/SubmitJob")
            )
            gate, holding = threading.Event(), threading.Event()

            def hold(conn: object) -> None:
                holding.set()
                gate.wait(10)

            busy = asyncio.ensure_future(store._call(hold))
            # The writer holds its batch before the create arrives, so the create waits alone.
            assert await asyncio.to_thread(holding.wait, 10)
            request = SimpleNamespace(request_id="rid-1", name="")
            call = asyncio.ensure_future(handler.unary_unary(request, Ctx()))
            for _ in range(10_000):  # until the create waits behind the busy operation
                if store._queue.qsize() == 1:
                    break
                await asyncio.sleep(0.001)
            assert store._queue.qsize() == 1 and not call.done()
            if cancel:
                call.cancel()
            gate.set()
            with pytest.raises((asyncio.CancelledError, Exception)):
                await call
            await busy
            await store._call(lambda conn: None)  # the create has run and been answered
        finally:
            await writer.close()
        rows = await store._call(
            lambda conn: conn.execute(
                "SELECT method, code, reason FROM audit_records ORDER BY seq"
            ).fetchall()
        )
        await store.close()
        return [tuple(row) for row in rows]

    rows = asyncio.run(main())
    expected = (
        (int(Code.CANCELLED), "") if cancel else (int(Code.INVALID_ARGUMENT), "REQUEST_ID_REUSED")
    )
    assert rows == [("SubmitJob", *expected)]


class _Sink:
    def __init__(self) -> None:
        self.records: list[AuditRecord] = []

    async def append_audit(self, records: Any) -> Any:
        self.records.extend(records)
        return None


def test_a_read_without_a_request_id_takes_the_x_request_id_header() -> None:
    class Metadata(Ctx):
        def invocation_metadata(self) -> tuple[tuple[str, str], ...]:  # type: ignore[override]
            return (
                ("x-request-id", "req-7"),
                ("traceparent", "00-" + "ab" * 16 + "-" + "cd" * 8 + "-01"),
            )

    async def get_job(request: Any, context: Any) -> str:
        return "ok"

    async def main() -> list[AuditRecord]:
        sink = _Sink()
        writer = AuditWriter(sink, flush_interval_s=3600)
        interceptor = AuditInterceptor(writer, clock=lambda: T0)

        async def continuation(details: Any) -> Any:
            return grpc.unary_unary_rpc_method_handler(get_job)

        details = SimpleNamespace(method="/qgateway.v1.JobService/GetJob")
        handler = await interceptor.intercept_service(continuation, details)
        request = SimpleNamespace(name="jobs/j1")
        assert await handler.unary_unary(request, Metadata()) == "ok"
        await writer.close()
        return sink.records

    (record,) = asyncio.run(main())
    assert (record.method, record.resource, record.code) == ("GetJob", "jobs/j1", 0)
    assert (record.request_id, record.trace_id) == ("req-7", "ab" * 16)
    assert (record.principal, record.tenant) == ("anonymous", "default")


def test_a_request_refused_before_it_was_read_is_recorded_per_peer_host() -> None:
    async def main() -> list[AuditRecord]:
        sink = _Sink()
        writer = AuditWriter(sink, flush_interval_s=3600, failure_window_s=3600)
        interceptor = AuditInterceptor(writer, clock=lambda: T0)
        # Told inside authentication, where the request is read: the caller is known.
        token = current_principal.set(Principal("acme", "apiKeys/abcd", key_prefix="abcd"))
        try:
            for port in (5555, 5556):
                interceptor.rejected(
                    "/qgateway.v1.JobService/SubmitJob",
                    f"ipv4:10.1.2.3:{port}",
                    InvalidArgument("MALFORMED_REQUEST", "not a SubmitJobRequest"),
                )
        finally:
            current_principal.reset(token)
        await writer.close()
        return sink.records

    first, counted = asyncio.run(main())
    assert (first.service, first.method) == ("qgateway.v1.JobService", "SubmitJob")
    assert (first.peer, first.code, first.reason) == (
        "ipv4:10.1.2.3",
        int(Code.INVALID_ARGUMENT),
        "MALFORMED_REQUEST",
    )
    assert (first.time, first.principal, first.tenant, first.key_prefix, first.count) == (
        T0,
        "apiKeys/abcd",
        "acme",
        "abcd",
        1,
    )
    assert (counted.reason, counted.count) == ("MALFORMED_REQUEST", 1)
