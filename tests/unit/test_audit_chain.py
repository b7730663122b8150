"""The audit chain: verify proves it intact or names the first altered, inserted or missing
record; the exported head catches deleting the newest records; retention keeps it verifiable.
Store-level tests run on a real SQLite file."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import json
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from gateway.domain import audit
from gateway.domain.audit import (
    AuditRecord,
    ChainPoint,
    Effect,
    PendingRecord,
    Problem,
    chain,
    verify,
)
from gateway.domain.errors import DataLoss
from gateway.security import audit_files
from gateway.security.audit_log import AuditKeyMismatch, AuditLog
from gateway.store import sqlite_audit
from gateway.store.sqlite import SqliteStore
from gateway.store.sqlite_time import to_us

KEY = bytes(range(32))
T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def _records(n: int, start: int = 0) -> list[AuditRecord]:
    return [
        AuditRecord(
            time=T0 + timedelta(seconds=i),
            end_time=T0 + timedelta(seconds=i, milliseconds=5),
            service="qgateway.v1.JobService",
            method="GetJob",
            principal="apiKeys/abc",
            tenant="acme",
            key_prefix="abc",
            peer="ipv4:127.0.0.1:5000",
            resource=f"jobs/{i}",
        )
        for i in range(start, start + n)
    ]


def _head(records: list[AuditRecord]) -> ChainPoint:
    return ChainPoint(records[-1].sequence, records[-1].mac)


def test_an_intact_chain_verifies_with_its_count_and_head() -> None:
    records = chain(KEY, audit.START, _records(5))
    verdict = verify(records, KEY, _head(records))
    assert verdict.ok
    assert verdict.count == 5
    assert verdict.head == _head(records)
    assert [r.sequence for r in records] == [1, 2, 3, 4, 5]


def test_an_edited_field_is_named() -> None:
    records = chain(KEY, audit.START, _records(5))
    records[2] = replace(records[2], tenant="other")
    verdict = verify(records, KEY, _head(records))
    assert (verdict.problem, verdict.sequence) == (Problem.ALTERED, 3)
    assert verdict.count == 2


def test_deleting_the_newest_records_shows_against_the_exported_head() -> None:
    records = chain(KEY, audit.START, _records(6))
    head = _head(records)
    truncated = records[:4]
    assert verify(truncated, KEY).ok  # without the head nothing can tell
    verdict = verify(truncated, KEY, head)
    assert (verdict.problem, verdict.sequence) == (Problem.MISSING, 5)


def test_deleted_newest_then_new_records_chained_shows_against_the_head() -> None:
    records = chain(KEY, audit.START, _records(6))
    head = _head(records)
    # The gateway went on after the newest two were deleted: sequences 5 and 6 exist again.
    regrown = records[:4] + chain(KEY, _head(records[:4]), _records(3))
    verdict = verify(regrown, KEY, head)
    assert (verdict.problem, verdict.sequence) == (Problem.ALTERED, 6)


def test_a_middle_record_deleted_is_named_missing() -> None:
    records = chain(KEY, audit.START, _records(6))
    del records[2]
    verdict = verify(records, KEY, _head(records))
    assert (verdict.problem, verdict.sequence) == (Problem.MISSING, 3)


def test_a_middle_record_deleted_and_the_rest_renumbered_is_named_missing() -> None:
    records = chain(KEY, audit.START, _records(6))
    renumbered = records[:2] + [replace(r, sequence=r.sequence - 1) for r in records[3:]]
    verdict = verify(renumbered, KEY)
    assert (verdict.problem, verdict.sequence) == (Problem.MISSING, 3)


def test_an_inserted_record_is_named() -> None:
    records = chain(KEY, audit.START, _records(5))
    forged = replace(records[1], resource="jobs/forged", sequence=3, mac=bytes(32))
    inserted = records[:2] + [forged] + [replace(r, sequence=r.sequence + 1) for r in records[2:]]
    verdict = verify(inserted, KEY)
    assert (verdict.problem, verdict.sequence) == (Problem.INSERTED, 3)
    # Appended at the end with a made-up MAC.
    appended = [*records, replace(records[0], sequence=6, mac=bytes(32))]
    verdict = verify(appended, KEY)
    assert (verdict.problem, verdict.sequence) == (Problem.ALTERED, 6)


def test_a_chain_recomputed_without_the_key_fails_at_the_first_changed_record() -> None:
    records = chain(KEY, audit.START, _records(5))
    edited = [*records[:3], replace(records[3], shots=10**6), records[4]]
    # Whoever can write the database but lacks the key re-chains from the edit with a guess.
    forged = edited[:3] + chain(b"\x00" * 32, _head(edited[:3]), edited[3:])
    verdict = verify(forged, KEY, _head(forged))
    assert (verdict.problem, verdict.sequence) == (Problem.ALTERED, 4)


def test_the_mac_covers_every_field() -> None:
    record = chain(KEY, audit.START, _records(1))[0]
    changes: dict[str, Any] = {
        "time": T0 + timedelta(microseconds=1),
        "end_time": T0,
        "service": "x",
        "method": "x",
        "principal": "x",
        "tenant": "x",
        "key_prefix": "x",
        "peer": "x",
        "resource": "x",
        "backend": "x",
        "circuit_digest": "x",
        "shots": 7,
        "code": 3,
        "reason": "x",
        "request_id": "x",
        "trace_id": "x",
        "count": 2,
    }
    for field, value in changes.items():
        assert not verify([replace(record, **{field: value})], KEY).ok, field


def test_a_pending_record_is_written_exactly_once() -> None:
    draft = _records(1)[0]
    pending = PendingRecord(draft, frozenset({Effect.CREATE_JOB}))
    assert pending.take(Effect.SAVE_SESSION) is None  # not this call's effect
    assert pending.take(Effect.CREATE_JOB) == draft
    assert pending.take(Effect.CREATE_JOB) is None
    pending.give_back()  # the operation rolled back
    assert pending.take(Effect.CREATE_JOB) == draft
    assert pending.close() is None  # taken and committed: the interceptor writes nothing
    other = PendingRecord(draft, frozenset({Effect.CREATE_JOB}))
    assert other.close() == draft  # nothing took it: the interceptor writes it
    assert other.take(Effect.CREATE_JOB) is None  # a task the call started comes too late


def test_trace_ids_come_from_traceparent() -> None:
    tid = "4bf92f3577b34da6a3ce929d0e0e4736"
    assert audit.trace_id(f"00-{tid}-00f067aa0ba902b7-01") == tid
    assert audit.trace_id("garbage") == ""
    assert audit.trace_id(f"00-{'0' * 32}-00f067aa0ba902b7-01") == ""


# --- the SQLite repository -----------------------------------------------------------------


@contextlib.asynccontextmanager
async def _opened(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    """The audited store in tmp_path/q.db, open, closed on the way out."""
    store = SqliteStore(tmp_path / "q.db")
    store.enable_audit(KEY)
    await store.open()
    try:
        yield store
    finally:
        await store.close()


async def _anchored(store: SqliteStore) -> None:
    """Four records, the first two expired: record 2 is the retention anchor."""
    await store.append_audit(_records(4))
    await store.expire_audit(T0 + timedelta(seconds=1, milliseconds=500), 1000)


def _anchored_head(tmp_path: Path) -> ChainPoint:
    """The head of an anchored chain (`_anchored`) in tmp_path/q.db, the store closed."""

    async def main() -> ChainPoint:
        async with _opened(tmp_path) as store:
            await _anchored(store)
            return await store.audit_head()

    return asyncio.run(main())


def _verify_file(path: Path, head: ChainPoint | None) -> audit.Verdict:
    conn = sqlite_audit.open_readonly(path)
    try:
        return verify(sqlite_audit.read_records(conn), KEY, head, sqlite_audit.read_anchor(conn))
    finally:
        conn.close()


def test_the_store_chains_batches_and_retention_keeps_the_chain_verifiable(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        async with _opened(tmp_path) as store:
            await store.append_audit(_records(3))
            head = await store.append_audit(_records(4, start=3))
            assert head.sequence == 7
            assert await store.audit_head() == head
            # Records 1..5 ended before T0+4.5s.
            cutoff = T0 + timedelta(seconds=4, milliseconds=500)
            assert await store.expire_audit(cutoff, 2) == 2  # the oldest two, at most
            assert (await store.list_audit(limit=10)).records[0].sequence == 3
            assert await store.expire_audit(cutoff, 1000) == 3
            newer = await store.append_audit(_records(1, start=7))
            assert newer.sequence == 8
            page = await store.list_audit(limit=10)
            assert [r.sequence for r in page.records] == [6, 7, 8]
        verdict = _verify_file(tmp_path / "q.db", newer)
        assert verdict.ok, verdict.detail
        assert verdict.count == 3

    asyncio.run(main())


def test_the_store_refuses_edits_and_a_forged_anchor_shows(tmp_path: Path) -> None:
    head = _anchored_head(tmp_path)
    conn = sqlite3.connect(tmp_path / "q.db")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        conn.execute("UPDATE audit_records SET tenant = 'x' WHERE seq = 3")
    with pytest.raises(sqlite3.IntegrityError, match="retention"):
        conn.execute("DELETE FROM audit_records WHERE seq = 4")
    # Whoever drops the triggers and edits anyway is caught by the MAC.
    conn.execute("DROP TRIGGER audit_records_no_update")
    conn.execute("UPDATE audit_records SET tenant = 'x' WHERE seq = 3")
    conn.commit()
    verdict = _verify_file(tmp_path / "q.db", head)
    assert (verdict.problem, verdict.sequence) == (Problem.ALTERED, 3)
    # A MAC rewritten as text is the record altered too (it raised a TypeError in verify).
    conn.execute("UPDATE audit_records SET tenant = 'acme', mac = hex(mac) WHERE seq = 3")
    conn.commit()
    verdict = _verify_file(tmp_path / "q.db", head)
    assert (verdict.problem, verdict.sequence) == (Problem.ALTERED, 3)
    # Moving the anchor past records one wants gone does not verify.
    conn.execute("UPDATE audit_anchor SET seq = 3")
    conn.commit()
    verdict = _verify_file(tmp_path / "q.db", head)
    assert verdict.problem is Problem.BAD_ANCHOR
    conn.close()


def test_a_page_examines_a_bounded_window_of_records(tmp_path: Path) -> None:
    # A filter matching nothing scanned the whole log (the tenant's, for a tenant admin) in
    # one statement on the store's only thread; each page now examines at most `scan`
    # records and says where to go on.
    async def main() -> None:
        async with _opened(tmp_path) as store:
            records = _records(30)
            records[25] = replace(records[25], principal="apiKeys/rare")
            await store.append_audit(records)
            await store.append_audit([replace(_records(1)[0], tenant="other")])
            rare = audit.AuditFilter(((audit.AuditComparison("principal", "=", "apiKeys/rare"),),))
            seen: list[int] = []
            after, pages = 0, 0
            while True:
                page = await store.list_audit(
                    tenant="acme", query=rare, after=after, limit=2, scan=10
                )
                pages += 1
                seen += [r.sequence for r in page.records]
                if page.next_after is None:
                    break
                after = page.next_after
            assert seen == [26]
            # Windows 1-10, 11-20, 21-30 (acme's records only), then an empty look past 30.
            assert pages == 4
            # Without a filter a page is full, and paging goes on from its last record.
            page = await store.list_audit(tenant="acme", after=0, limit=4, scan=10)
            assert [r.sequence for r in page.records] == [1, 2, 3, 4]
            assert page.next_after == 4
            last = await store.list_audit(tenant="other", after=0, limit=4, scan=10)
            assert [r.sequence for r in last.records] == [31] and last.next_after is None

    asyncio.run(main())


def _audit_log(
    store: SqliteStore,
    tmp_path: Path,
    retention_s: float = 1e10,
    key: bytes | None = KEY,
    **clocks: Any,
) -> AuditLog:
    """The audit log of `store`, its key file holding `key` (None: left as it is, or absent);
    `clocks`: its `clock` and `monotonic`, when not the system's."""
    if key is not None:
        (tmp_path / "audit.key").write_bytes(key)
    return AuditLog(
        store,
        tmp_path / "audit.key",
        tmp_path / "audit-head.json",
        head_interval_s=3600.0,
        retention_s=retention_s,
        flush_interval_s=1.0,
        failure_window_s=60.0,
        max_failure_peers=100,
        **clocks,
    )


def _delete_newest(path: Path, after: int) -> None:
    """What someone with write access to the database does: the trigger dropped first."""
    conn = sqlite3.connect(path)
    conn.execute("DROP TRIGGER audit_records_no_delete")
    conn.execute("DELETE FROM audit_records WHERE seq > ?", (after,))
    conn.commit()
    conn.close()


def test_a_missing_or_unreadable_head_file_is_said_loudly_and_kept(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A restart replaced a garbled head file after one ERROR line, and a removed one without
    # a word: the check that records exist without a head was undone quietly.
    head_file = tmp_path / "audit-head.json"

    async def restart() -> None:
        store = SqliteStore(tmp_path / "q.db")
        log = _audit_log(store, tmp_path)
        await store.open()
        try:
            await log.start()
            await store.append_audit(_records(2, start=100))
        finally:
            await log.close()
            await store.close()

    asyncio.run(restart())  # records, and their head
    assert head_file.exists()
    caplog.clear()
    head_file.unlink()
    asyncio.run(restart())
    assert [r.levelname for r in caplog.records if "no head file" in r.message] == ["CRITICAL"]
    caplog.clear()
    head_file.write_text("garbled")
    asyncio.run(restart())
    assert [r.levelname for r in caplog.records if "unreadable" in r.message] == ["CRITICAL"]
    kept = tmp_path / "audit-head.json.unreadable"
    assert kept.read_text() == "garbled"  # the evidence, beside the new head
    assert audit_files.read_head(head_file, KEY) is not None


def test_a_full_disk_neither_stops_a_start_nor_fails_a_drain(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # After a SIGKILL the database is ahead of the exported head, and the start exports it:
    # on a full disk that raised, and the gateway exited and restarted for as long as the disk
    # stayed full (no reads either); a drain exited 1, leaving the head's temporary file.
    head_file = tmp_path / "audit-head.json"

    async def run(killed: bool) -> None:
        store = SqliteStore(tmp_path / "q.db")
        log = _audit_log(store, tmp_path)
        await store.open()
        try:
            if killed:  # records committed, the process gone before their head's export
                await store.append_audit(_records(2, start=10))
                return
            await log.start()
            await store.append_audit(_records(2, start=100))
            await log.close()
        finally:
            await store.close()

    asyncio.run(run(killed=False))
    exported = head_file.read_text()
    asyncio.run(run(killed=True))

    def no_space(src: Any, dst: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(audit_files.os, "replace", no_space)
    caplog.clear()
    asyncio.run(run(killed=False))  # starts, records, drains: no exception
    failed = [r.message for r in caplog.records if r.levelname == "ERROR"]
    assert len(failed) == 2 and "at start" in failed[0] and "final head" in failed[1]
    assert head_file.read_text() == exported  # the last export still anchors the chain
    assert sorted(p.name for p in tmp_path.iterdir() if "audit-head" in p.name) == [
        "audit-head.json"
    ]


def test_the_gateway_never_exports_a_head_its_database_no_longer_reaches(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    head_file = tmp_path / "audit-head.json"

    async def run(deleted_after: int | None) -> ChainPoint:
        store = SqliteStore(tmp_path / "q.db")
        log = _audit_log(store, tmp_path)
        await store.open()
        try:
            await log.start()
            if deleted_after is not None:
                _delete_newest(tmp_path / "q.db", deleted_after)
            await store.append_audit(_records(2, start=100))  # traffic goes on
            return await log.export_head()
        finally:
            await log.close()
            await store.close()

    async def first() -> ChainPoint:
        store = SqliteStore(tmp_path / "q.db")
        log = _audit_log(store, tmp_path)
        await store.open()
        try:
            await log.start()
            await store.append_audit(_records(8))
            return await log.export_head()
        finally:
            await log.close()
            await store.close()

    exported = asyncio.run(first())
    assert exported.sequence == 8 and audit_files.read_head(head_file, KEY) == exported
    # The newest three deleted while running: the next export keeps the old head.
    asyncio.run(run(deleted_after=5))
    assert audit_files.read_head(head_file, KEY) == exported
    assert "no longer holds the exported head" in caplog.text
    assert not _verify_file(tmp_path / "q.db", exported).ok
    # And at the next start too.
    caplog.clear()
    asyncio.run(run(deleted_after=None))
    assert audit_files.read_head(head_file, KEY) == exported
    assert "no longer holds the exported head" in caplog.text


def test_records_deleted_before_their_head_was_exported_are_found(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The newest records, written since the last export, were deleted; the gateway chained
    # on from what was left and exported that head: verify then passed, the deletion gone.
    head_file = tmp_path / "audit-head.json"

    async def main() -> tuple[ChainPoint, ChainPoint]:
        store = SqliteStore(tmp_path / "q.db")
        log = _audit_log(store, tmp_path)
        await store.open()
        try:
            await log.start()
            await store.append_audit(_records(2))
            await log.export_head()
            written = await store.append_audit(_records(2, start=100))  # an admin's changes
            _delete_newest(tmp_path / "q.db", 2)
            await store.append_audit(_records(1, start=200))  # chains on as sequence 3
            return written, await log.export_head()
        finally:
            await log.close()
            await store.close()

    written, exported = asyncio.run(main())
    assert written.sequence == 4 and exported == written
    assert audit_files.read_head(head_file, KEY) == written
    assert "records this gateway committed were deleted" in caplog.text
    assert not _verify_file(tmp_path / "q.db", written).ok


def test_a_head_expired_by_retention_is_still_reached(tmp_path: Path) -> None:
    async def main() -> tuple[ChainPoint, ChainPoint]:
        store = SqliteStore(tmp_path / "q.db")
        log = _audit_log(store, tmp_path, retention_s=1.0)
        await store.open()
        try:
            await store.append_audit(_records(4))  # long past their retention
            await log.start()  # swept first, then the anchor's head exported
            first = audit_files.read_head(tmp_path / "audit-head.json", KEY)
            await store.append_audit(_records(1, start=10))
            return first or audit.START, await log.export_head()
        finally:
            await log.close()
            await store.close()

    first, head = asyncio.run(main())
    assert first.sequence == 4 and head.sequence == 5
    assert audit_files.read_head(tmp_path / "audit-head.json", KEY) == head


def test_verify_reads_the_anchor_and_the_records_from_one_snapshot(tmp_path: Path) -> None:
    # A retention sweep committing between verify's two reads made a valid log look truncated.
    async def main(step: str) -> None:
        async with _opened(tmp_path) as store:
            if step == "write":
                await store.append_audit(_records(6))
            else:
                await store.expire_audit(T0 + timedelta(seconds=3, milliseconds=500), 1000)

    asyncio.run(main("write"))
    conn = sqlite_audit.open_readonly(tmp_path / "q.db")
    try:
        anchor = sqlite_audit.read_anchor(conn)  # none yet
        asyncio.run(main("sweep"))  # records 1..4 expire, the anchor moves
        verdict = verify(sqlite_audit.read_records(conn), KEY, None, anchor)
    finally:
        conn.close()
    assert verdict.ok, verdict.detail
    assert verdict.count == 6


def test_retention_deletes_in_bounded_batches_and_the_chain_still_verifies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One store transaction per batch: the store has one writer thread, and one delete of
    200k expired records held every other write for 0.6 s."""
    from gateway.security import audit_log

    monkeypatch.setattr(audit_log, "EXPIRE_BATCH", 2)
    batches: list[tuple[int, int]] = []

    async def main() -> ChainPoint:
        store = SqliteStore(tmp_path / "q.db")
        original = store.expire_audit

        async def counted(before: datetime, limit: int) -> int:
            deleted = await original(before, limit)
            batches.append((limit, deleted))
            return deleted

        monkeypatch.setattr(store, "expire_audit", counted)
        await store.open()
        log = _audit_log(store, tmp_path, retention_s=1.0)
        try:
            store.enable_audit(KEY)
            await store.append_audit(_records(7))
            await log.start()  # sweeps once at start: every record is past retention
            assert (await store.list_audit(limit=10)).records == []
            return await store.audit_head()
        finally:
            await log.close()
            await store.close()

    head = asyncio.run(main())
    assert batches == [(2, 2), (2, 2), (2, 2), (2, 1)]
    verdict = _verify_file(tmp_path / "q.db", head)
    assert verdict.ok, verdict.detail
    assert verdict.count == 0


def _edit(path: Path, sql: str) -> None:
    """What someone with write access to the database does: the edit trigger dropped first."""
    conn = sqlite3.connect(path)
    conn.execute("DROP TRIGGER audit_records_no_update")
    conn.execute(sql)
    conn.commit()
    conn.close()


def _appended(path: Path, *batches: list[AuditRecord]) -> ChainPoint:
    """Appends each batch to the database at `path` (chained with KEY); the head after them."""

    async def append() -> ChainPoint:
        store = SqliteStore(path)
        store.enable_audit(KEY)
        await store.open()
        head = audit.START
        try:
            for batch in batches:
                head = await store.append_audit(batch)
            return head
        finally:
            await store.close()

    return asyncio.run(append())


async def _started_once(tmp_path: Path, db: str = "q.db", key: bytes | None = KEY) -> None:
    store = SqliteStore(tmp_path / db)
    log = _audit_log(store, tmp_path, key=key)
    await store.open()
    try:
        await log.start()
    finally:
        await log.close()
        await store.close()


def test_a_start_with_a_key_that_did_not_write_the_records_is_refused(tmp_path: Path) -> None:
    # A lost or replaced key file was taken (or made) silently: new records chained on with
    # it, and from then on no key verified the log.
    _appended(tmp_path / "q.db", _records(20))
    key_file = tmp_path / "audit.key"

    async def restart_with(key: bytes | None) -> None:
        if key is None:
            key_file.unlink(missing_ok=True)
        await _started_once(tmp_path, key=key)

    with pytest.raises(AuditKeyMismatch, match="did not write the newest audit records"):
        asyncio.run(restart_with(bytes(32)))
    with pytest.raises(AuditKeyMismatch, match="is missing"):
        asyncio.run(restart_with(None))
    assert not key_file.exists()  # the next start says so again
    # Someone who edited the newest records does not make the right key look wrong.
    _edit(tmp_path / "q.db", "UPDATE audit_records SET method = 'x' WHERE seq > 15")
    asyncio.run(restart_with(KEY))
    assert not _verify_file(tmp_path / "q.db", None).ok


def test_a_head_file_written_without_the_key_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The head was a sequence and a MAC already stored in the database: whoever could write
    # the data directory deleted the newest records and wrote the head of what was left.
    from gateway import audit_tool

    head = _appended(tmp_path / audit_tool.DB_FILE, _records(8))
    head_file = tmp_path / "audit-head.json"
    audit_files.write_head(head_file, head, KEY)
    (tmp_path / "audit.key").write_bytes(KEY)
    args = argparse.Namespace(
        config=None, data_dir=tmp_path, key_file=None, head_file=None, no_head=False
    )
    assert audit_tool._cmd_verify(args) == 0
    _delete_newest(tmp_path / audit_tool.DB_FILE, 5)
    assert audit_tool._cmd_verify(args) == 1
    conn = sqlite3.connect(tmp_path / audit_tool.DB_FILE)
    mac5 = bytes(conn.execute("SELECT mac FROM audit_records WHERE seq = 5").fetchone()[0])
    conn.close()
    forged = {"sequence": 5, "mac": mac5.hex()}
    for seal in (None, "00" * 32, audit.head_seal(bytes(32), ChainPoint(5, mac5)).hex()):
        head_file.write_text(json.dumps(forged if seal is None else {**forged, "seal": seal}))
        capsys.readouterr()
        assert audit_tool._cmd_verify(args) == 1
        assert "BAD" in capsys.readouterr().err
    for bad in ({"sequence": -5, "mac": "00"}, {"sequence": 0, "mac": "00"}):
        head_file.write_text(json.dumps(bad))
        assert audit_tool._cmd_verify(args) == 1
    with pytest.raises(ValueError, match="not an audit head file"):
        audit_files.read_head(head_file, KEY)


def test_no_head_file_is_bad_even_with_no_records(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Every record deleted and the head removed verified "OK: 0 records".
    from gateway import audit_tool

    asyncio.run(_started_once(tmp_path, audit_tool.DB_FILE))
    args = argparse.Namespace(
        config=None, data_dir=tmp_path, key_file=None, head_file=None, no_head=False
    )
    assert audit_tool._cmd_verify(args) == 0
    (tmp_path / "audit-head.json").unlink()
    assert audit_tool._cmd_verify(args) == 1
    assert "no exported head" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["9000000000000000000", "'abc'"])
def test_a_record_holding_a_value_no_gateway_writes_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], value: str
) -> None:
    # verify and export died with a traceback (OverflowError), and ListAuditRecords answered
    # INTERNAL for every page holding the row; none named the record.
    from gateway import audit_tool

    head = _appended(tmp_path / audit_tool.DB_FILE, _records(12))
    audit_files.write_head(tmp_path / "audit-head.json", head, KEY)
    (tmp_path / "audit.key").write_bytes(KEY)
    _edit(tmp_path / audit_tool.DB_FILE, f"UPDATE audit_records SET time = {value} WHERE seq = 10")
    args = argparse.Namespace(
        config=None, data_dir=tmp_path, key_file=None, head_file=None, no_head=False
    )
    assert audit_tool._cmd_verify(args) == 1
    assert "record 10 was altered (it holds a value" in capsys.readouterr().err
    export = audit_tool.guarded(audit_tool._cmd_export)
    assert export(argparse.Namespace(**vars(args), output=str(tmp_path / "out.jsonl"))) == 2
    assert "audit record 10 holds a value no gateway writes" in capsys.readouterr().err

    async def listed() -> None:
        reopened = SqliteStore(tmp_path / audit_tool.DB_FILE)
        reopened.enable_audit(KEY)
        await reopened.open()
        try:
            await reopened.list_audit(limit=50)
        finally:
            await reopened.close()

    with pytest.raises(DataLoss) as caught:
        asyncio.run(listed())
    assert caught.value.reason == "AUDIT_RECORD_CORRUPT"
    assert caught.value.metadata == {"sequence": "10"}


def test_an_edited_mac_among_expired_records_neither_stops_a_start_nor_hides(
    tmp_path: Path,
) -> None:
    # The retention sweep read the MAC with bytes(): a MAC edited to text raised TypeError,
    # and the start failed (the hourly sweep would have failed every time).
    now = datetime.now(UTC)
    young = [replace(r, time=now, end_time=now) for r in _records(2, start=50)]

    _appended(tmp_path / "q.db", _records(6), young)  # the six long past a day's retention
    _edit(tmp_path / "q.db", "UPDATE audit_records SET mac = 'x' WHERE seq = 6")

    async def start() -> None:
        store = SqliteStore(tmp_path / "q.db")
        log = _audit_log(store, tmp_path, retention_s=86400.0)
        await store.open()
        try:
            await log.start()
            assert [r.sequence for r in (await store.list_audit(limit=10)).records] == [7, 8]
        finally:
            await log.close()
            await store.close()

    asyncio.run(start())
    verdict = _verify_file(tmp_path / "q.db", None)
    assert (verdict.ok, verdict.sequence) == (False, 7)  # chained from the MAC that was edited


def test_an_unsealed_head_from_an_earlier_version_is_checked_then_sealed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The first start after upgrading took the earlier version's head for a forgery: a new head
    # from the database, and records deleted before the upgrade could no longer be found.
    head_file = tmp_path / "audit-head.json"

    old = _appended(tmp_path / "q.db", _records(5))
    head_file.write_text(json.dumps({"sequence": old.sequence, "mac": old.mac.hex()}))
    with pytest.raises(audit_files.UnsealedHead):
        audit_files.read_head(head_file, KEY)
    asyncio.run(_started_once(tmp_path))
    assert "not sealed" in caplog.text and "CRITICAL" not in caplog.text
    assert audit_files.read_head(head_file, KEY) == old  # sealed now, same point
    # The earlier version's head names a record deleted before the upgrade: kept, and said.
    _delete_newest(tmp_path / "q.db", 3)
    head_file.write_text(json.dumps({"sequence": old.sequence, "mac": old.mac.hex()}))
    caplog.clear()
    asyncio.run(_started_once(tmp_path))
    assert "no longer holds the exported head" in caplog.text
    with pytest.raises(audit_files.UnsealedHead):  # the evidence, as it was
        audit_files.read_head(head_file, KEY)


def test_a_record_repeated_out_of_order_is_named_at_its_own_sequence() -> None:
    records = chain(KEY, audit.START, _records(4))
    repeated = [*records[:3], records[1], records[3]]
    verdict = verify(repeated, KEY, _head(records))
    assert (verdict.problem, verdict.sequence, verdict.count) == (Problem.INSERTED, 2, 3)
    assert "out of order after 3" in verdict.detail


def test_a_head_file_with_its_sequence_edited_is_refused(tmp_path: Path) -> None:
    # The seal binds the sequence too: a head moved back to 0 (keeping its MAC and seal)
    # would check nothing, and hide the deletion of every record.
    records = chain(KEY, audit.START, _records(6))
    head_file = tmp_path / "audit-head.json"
    audit_files.write_head(head_file, _head(records), KEY)
    assert audit_files.read_head(head_file, KEY) == _head(records)
    data = json.loads(head_file.read_text())
    for sequence in (0, 4):
        head_file.write_text(json.dumps({**data, "sequence": sequence}))
        with pytest.raises(ValueError, match="seal"):
            audit_files.read_head(head_file, KEY)


def test_an_anchor_whose_mac_was_edited_is_a_bad_anchor(tmp_path: Path) -> None:
    head = _anchored_head(tmp_path)
    assert _verify_file(tmp_path / "q.db", head).ok
    conn = sqlite3.connect(tmp_path / "q.db")
    conn.execute("UPDATE audit_anchor SET mac = zeroblob(32)")
    conn.commit()
    conn.close()
    verdict = _verify_file(tmp_path / "q.db", head)
    assert (verdict.problem, verdict.sequence) == (Problem.BAD_ANCHOR, 2)


def test_retention_keeps_a_record_that_ended_exactly_at_the_cutoff(tmp_path: Path) -> None:
    async def main() -> None:
        async with _opened(tmp_path) as store:
            records = _records(4)
            await store.append_audit(records)
            # Only records that ended before the cutoff go: the third ended at it.
            assert await store.expire_audit(records[2].end_time, 1000) == 2
            page = await store.list_audit(limit=10)
            assert [r.sequence for r in page.records] == [3, 4]

    asyncio.run(main())


def test_an_exported_head_is_reached_through_the_anchor_only_if_it_is_the_anchors(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        async with _opened(tmp_path) as store:
            sealed = chain(KEY, audit.START, _records(4))
            await _anchored(store)
            anchor = ChainPoint(2, sealed[1].mac)
            assert await store.audit_holds(anchor)
            assert await store.audit_holds(ChainPoint(1, sealed[0].mac))  # expired before it
            assert await store.audit_holds(_head(sealed))
            # The anchor's sequence with another MAC: a chain that was replaced, then expired.
            assert not await store.audit_holds(ChainPoint(2, bytes(32)))
            # A head past every stored record: the newest records were deleted.
            assert not await store.audit_holds(ChainPoint(9, bytes(32)))

    asyncio.run(main())


def test_an_anchor_does_not_vouch_for_a_key_that_did_not_write_it(tmp_path: Path) -> None:
    async def main() -> None:
        async with _opened(tmp_path) as store:
            await _anchored(store)
            assert await store.audit_key_wrote_chain()
            store.enable_audit(bytes(32))
            assert not await store.audit_key_wrote_chain()

    asyncio.run(main())


@pytest.mark.parametrize(
    ("comparison", "expected"),
    [
        (audit.AuditComparison("tenant", "!=", "acme"), [5]),
        (audit.AuditComparison("tenant", "=", "acme"), [1, 2, 3, 4]),
        # Records keep microseconds: ">" a record's own time excludes it, ">=" includes it.
        (audit.AuditComparison("time", ">", 2_000_000), [4, 5]),
        (audit.AuditComparison("time", ">=", 2_000_000), [3, 4, 5]),
        (audit.AuditComparison("time", "<", 2_000_000), [1, 2]),
        (audit.AuditComparison("time", "<=", 2_000_000), [1, 2, 3]),
    ],
)
def test_a_filter_bound_is_exact(
    tmp_path: Path, comparison: audit.AuditComparison, expected: list[int]
) -> None:
    base = to_us(T0)
    if isinstance(comparison.value, int):
        comparison = replace(comparison, value=base + comparison.value)

    async def main() -> list[int]:
        async with _opened(tmp_path) as store:
            records = _records(5)
            records[4] = replace(records[4], tenant="globex")
            await store.append_audit(records)
            page = await store.list_audit(query=audit.AuditFilter(((comparison,),)), limit=10)
            return [r.sequence for r in page.records]

    assert asyncio.run(main()) == expected


def test_verify_and_export_exit_2_when_they_cannot_read_their_inputs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Exit 1 says the chain is bad; 2 says nothing was checked (no key, no database, not a
    # database): a script must be able to tell tampering from a wrong path.
    from gateway import audit_tool

    verify = audit_tool.guarded(audit_tool._cmd_verify)
    export = audit_tool.guarded(audit_tool._cmd_export)
    args = argparse.Namespace(
        config=None, data_dir=tmp_path, key_file=None, head_file=None, no_head=True
    )
    assert verify(args) == 2  # no key file
    (tmp_path / "audit.key").write_bytes(KEY[:16])
    assert verify(args) == 2  # a key of the wrong length
    assert "error:" in capsys.readouterr().err
    (tmp_path / "audit.key").write_bytes(KEY)
    assert verify(args) == 2  # no database
    assert export(argparse.Namespace(**vars(args), output="-")) == 2
    (tmp_path / audit_tool.DB_FILE).write_bytes(b"not a database" * 512)
    for command in (verify, export):
        capsys.readouterr()
        assert command(argparse.Namespace(**vars(args), output="-")) == 2
        assert "error:" in capsys.readouterr().err


def test_verify_with_no_head_ignores_the_head_file_and_says_what_it_left_unchecked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # --no-head is the way to verify the records a damaged or foreign head file would
    # otherwise hide behind "BAD: not an audit head file": that file must not be read at all.
    from gateway import audit_tool

    _appended(tmp_path / audit_tool.DB_FILE, _records(4))
    (tmp_path / "audit.key").write_bytes(KEY)
    (tmp_path / "audit-head.json").write_text("{not json")
    args = argparse.Namespace(
        config=None, data_dir=tmp_path, key_file=None, head_file=None, no_head=True
    )
    assert audit_tool._cmd_verify(args) == 0
    out = capsys.readouterr().out
    assert out.startswith("OK: 4 records") and "newest records unchecked" in out


def test_export_to_dash_writes_json_lines_to_stdout(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # "-o -" is stdout, as for most tools: not a file named "-" in the working directory.
    from gateway import audit_tool

    head = _appended(tmp_path / audit_tool.DB_FILE, _records(3))
    monkeypatch.chdir(tmp_path)
    args = argparse.Namespace(
        config=None, data_dir=tmp_path, key_file=None, head_file=None, output="-"
    )
    assert audit_tool._cmd_export(args) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert not (tmp_path / "-").exists()
    assert [r["sequence"] for r in lines] == [1, 2, 3]
    assert [r["resource"] for r in lines] == ["jobs/0", "jobs/1", "jobs/2"]
    last = lines[-1]
    assert (last["time"], last["end_time"]) == (
        "2026-12-01T12:00:02Z",
        "2026-12-01T12:00:02.005000Z",
    )
    assert last["count"] == 1 and last["mac"] == head.mac.hex()
