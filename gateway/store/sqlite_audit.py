"""The audit repository of the SQLite store (migration 11): a mixin of SqliteStore.

Records are numbered and MAC'd on the store's writer thread, inside the transaction that
inserts them: the chain continues from the newest row (or the anchor) as the transaction sees
it, so it cannot fork, and a rolled-back operation takes its records with it. A mutating call's
record (gateway.domain.audit.PendingRecord) is inserted by the very operation that commits
the call's effect (`_audited`): no acknowledged change without its record, and no second commit.

The table is append-only by trigger; retention deletes the oldest records only after moving the
anchor (the last expired record's sequence and MAC, itself MAC'd) past them.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import pathlib
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final, TypeVar

from gateway.domain import audit
from gateway.domain.api_keys import ApiKeyRecord
from gateway.domain.audit import AuditFilter, AuditPage, AuditRecord, ChainPoint, Effect
from gateway.domain.errors import DataLoss
from gateway.domain.jobs import Job
from gateway.domain.sessions import Session
from gateway.store.base import CreateOutcome
from gateway.store.sqlite_time import from_us, to_us

T = TypeVar("T")

# The newest records the start checks against the audit key: a wrong key verifies none, and an
# attacker who edited the newest few does not make a right one look wrong.
KEY_CHECK_RECORDS: Final = 16


MIGRATION_SQL: Final = """
    CREATE TABLE audit_records (
        seq INTEGER PRIMARY KEY,
        time INTEGER NOT NULL,
        end_time INTEGER NOT NULL,
        principal TEXT NOT NULL,
        tenant TEXT NOT NULL,
        key_prefix TEXT NOT NULL,
        peer TEXT NOT NULL,
        service TEXT NOT NULL,
        method TEXT NOT NULL,
        resource TEXT NOT NULL,
        backend TEXT NOT NULL,
        circuit_digest TEXT NOT NULL,
        shots INTEGER NOT NULL,
        code INTEGER NOT NULL,
        reason TEXT NOT NULL,
        request_id TEXT NOT NULL,
        trace_id TEXT NOT NULL,
        count INTEGER NOT NULL,
        mac BLOB NOT NULL
    );
    CREATE INDEX audit_records_tenant ON audit_records (tenant, seq);
    CREATE INDEX audit_records_time ON audit_records (time);
    -- Where the chain starts once retention removed its oldest records: the last expired
    -- record's sequence and MAC, and a MAC over both (a forged anchor does not verify).
    CREATE TABLE audit_anchor (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        seq INTEGER NOT NULL,
        mac BLOB NOT NULL,
        anchor_mac BLOB NOT NULL
    );
    -- Append-only: no record changes; only records at or below the anchor may be deleted.
    CREATE TRIGGER audit_records_no_update BEFORE UPDATE ON audit_records
    BEGIN SELECT RAISE(ABORT, 'audit records are append-only'); END;
    CREATE TRIGGER audit_records_no_delete BEFORE DELETE ON audit_records
    WHEN old.seq > coalesce((SELECT seq FROM audit_anchor WHERE id = 1), 0)
    BEGIN SELECT RAISE(ABORT, 'audit records are deleted by retention only'); END;
"""

_COLUMNS: Final = (
    "seq, time, end_time, principal, tenant, key_prefix, peer, service, method, resource,"
    " backend, circuit_digest, shots, code, reason, request_id, trace_id, count, mac"
)
_INSERT: Final = f"INSERT INTO audit_records ({_COLUMNS}) VALUES ({', '.join('?' * 19)})"
_TIME_SQL: Final = {">": "time > ?", ">=": "time >= ?", "<": "time < ?", "<=": "time <= ?"}


def _row(row: sqlite3.Row | tuple[object, ...]) -> AuditRecord:
    """The record a row holds.

    Raises:
        DataLoss: AUDIT_RECORD_CORRUPT, a value no gateway writes (a time out of range, text
            in a number column): someone edited the database.
    """
    r = tuple(row)
    try:
        return AuditRecord(
            sequence=int(str(r[0])),
            time=from_us(int(str(r[1]))),
            end_time=from_us(int(str(r[2]))),
            principal=str(r[3]),
            tenant=str(r[4]),
            key_prefix=str(r[5]),
            peer=str(r[6]),
            service=str(r[7]),
            method=str(r[8]),
            resource=str(r[9]),
            backend=str(r[10]),
            circuit_digest=str(r[11]),
            shots=int(str(r[12])),
            code=int(str(r[13])),
            reason=str(r[14]),
            request_id=str(r[15]),
            trace_id=str(r[16]),
            count=int(str(r[17])),
            mac=_mac(r[18]),
        )
    except (OverflowError, TypeError, ValueError) as exc:
        raise DataLoss(
            "AUDIT_RECORD_CORRUPT",
            f"audit record {r[0]} holds a value no gateway writes ({type(exc).__name__}): the "
            "database was edited; run `qgateway audit verify`",
            metadata={"sequence": str(r[0])},
        ) from None


def _mac(value: object) -> bytes:
    # A MAC stored as anything but a blob was written by someone else: an empty MAC, which
    # verify reports as the record altered, and which no new record can chain from unnoticed.
    return bytes(value) if isinstance(value, bytes | memoryview) else b""


def _values(r: AuditRecord) -> tuple[object, ...]:
    return (
        r.sequence,
        to_us(r.time),
        to_us(r.end_time),
        r.principal,
        r.tenant,
        r.key_prefix,
        r.peer,
        r.service,
        r.method,
        r.resource,
        r.backend,
        r.circuit_digest,
        r.shots,
        r.code,
        r.reason,
        r.request_id,
        r.trace_id,
        r.count,
        r.mac,
    )


def _head(conn: sqlite3.Connection) -> ChainPoint:
    """The chain's newest point as this transaction sees it."""
    row = conn.execute("SELECT seq, mac FROM audit_records ORDER BY seq DESC LIMIT 1").fetchone()
    if row is not None:
        return ChainPoint(int(row[0]), _mac(row[1]))
    anchor = conn.execute("SELECT seq, mac FROM audit_anchor WHERE id = 1").fetchone()
    return audit.START if anchor is None else ChainPoint(int(anchor[0]), bytes(anchor[1]))


def append_records(
    conn: sqlite3.Connection,
    key: bytes,
    records: Sequence[AuditRecord],
    *,
    end_time: datetime | None = None,
) -> ChainPoint:
    """Chains and inserts `records` (each ended at `end_time` when given) in the caller's
    transaction; returns the new head."""
    sealed = audit.chain(key, _head(conn), records, end_time=end_time)
    conn.executemany(_INSERT, [_values(r) for r in sealed])
    return ChainPoint(sealed[-1].sequence, sealed[-1].mac) if sealed else _head(conn)


# --- what an effect adds to its call's record ------------------------------------------------


def job_created(digest: bytes) -> Callable[[CreateOutcome, AuditRecord], AuditRecord]:
    """create_job: the job (created, or found by its request_id) and the request's digest."""

    def describe(outcome: CreateOutcome, draft: AuditRecord) -> AuditRecord:
        job = outcome.job
        return replace(
            draft, resource=f"jobs/{job.id}", backend=job.backend, circuit_digest=digest.hex()
        )

    return describe


def job_changed(job: Job | None, draft: AuditRecord) -> AuditRecord | None:
    """A cancel: the job, or None when it was not changed (already final or cancelling)."""
    if job is None:
        return None
    return replace(draft, resource=f"jobs/{job.id}", backend=job.backend)


def session_created(value: tuple[Session, bool], draft: AuditRecord) -> AuditRecord:
    session = value[0]
    return replace(draft, resource=f"sessions/{session.id}", backend=session.backend)


def session_saved(session: Session | None, draft: AuditRecord) -> AuditRecord | None:
    if session is None:
        return None
    return replace(draft, resource=f"sessions/{session.id}", backend=session.backend)


def admin_changed(resource: str) -> Callable[[object, AuditRecord], AuditRecord | None]:
    """An AdminService write of `resource`: None when it changed nothing (None or False)."""

    def describe(value: object, draft: AuditRecord) -> AuditRecord | None:
        if value is None or value is False:
            return None
        return replace(draft, resource=resource)

    return describe


def api_key_changed(key: ApiKeyRecord | None, draft: AuditRecord) -> AuditRecord | None:
    if key is None:
        return None
    return replace(draft, resource=f"tenants/{key.tenant}/apiKeys/{key.prefix}")


# Records one ListAuditRecords page examines at most (a few milliseconds of the store thread).
MAX_SCAN = 10_000


def _filter_sql(query: AuditFilter) -> tuple[list[str], list[object]]:
    where: list[str] = []
    params: list[object] = []
    for clause in query.clauses:
        parts = []
        for c in clause:
            if c.field == audit.FILTER_TIME_FIELD:
                parts.append(_TIME_SQL[c.op])
            elif c.field in audit.FILTER_TEXT_FIELDS:
                # Field names come from the fixed list above, values are bound.
                parts.append(f"{c.field} {'=' if c.op == '=' else '!='} ?")
            else:
                raise ValueError(f"audit records cannot be filtered by {c.field}")
            params.append(c.value)
        where.append("(" + " OR ".join(parts) + ")")
    return where, params


class SqliteAudit:
    """Audit methods of SqliteStore (writes on its writer thread, reads on its reader
    threads); the other repositories build on `_audited` (a mutating call's record commits in
    its effect's transaction)."""

    _audit_key: bytes | None = None
    # The newest chain point this store committed (audit_committed).
    _audit_committed: ChainPoint | None = None

    if TYPE_CHECKING:

        async def _call(
            self, fn: Callable[[sqlite3.Connection], T], *, readonly: bool = False
        ) -> T: ...

        def _enqueue(
            self,
            fn: Callable[[sqlite3.Connection], T],
            *,
            after: Callable[[Any, BaseException | None], None] | None = None,
        ) -> asyncio.Future[T]: ...

    def enable_audit(self, key: bytes) -> None:
        """Turns record writing on with the chain's key (kept outside the database)."""
        if len(key) != audit.KEY_BYTES:
            raise ValueError(f"an audit key is {audit.KEY_BYTES} bytes")
        self._audit_key = key

    async def _audited(
        self,
        effect: Effect,
        op: Callable[[sqlite3.Connection], T],
        describe: Callable[[T, AuditRecord], AuditRecord | None],
    ) -> T:
        """Runs `op`, committing the current call's pending record in the same transaction.

        `describe` completes the record from the operation's result (the job it created), or
        returns None when the operation changed nothing: then the record stays with the call,
        whose interceptor writes it with the call's outcome. Without a pending record for
        `effect` (a read, a background task, audit off) this is `_call(op)`.
        """
        key = self._audit_key
        pending = audit.take_pending(effect) if key is not None else None
        if pending is None or key is None:
            return await self._call(op)
        draft = pending.draft
        recorded: list[ChainPoint] = []

        def with_record(conn: sqlite3.Connection) -> T:
            recorded.clear()  # a batch SQLite rolled back whole runs its operations again
            value = op(conn)
            record = describe(value, draft)
            if record is not None:
                point = append_records(conn, key, [record], end_time=datetime.now(UTC))
                recorded.append(point)
            return value

        def after(value: object, error: BaseException | None) -> None:
            # On the loop once the transaction ended, before the caller resumes, and also when
            # the caller went away meanwhile (then the call has ended and writes the record
            # itself: PendingRecord.give_back after close). Awaiting the future directly, not
            # through a shield, keeps the job's QUEUED published before an end committed in
            # the same batch.
            if error is not None or not recorded:
                pending.give_back()  # rolled back, or nothing changed: the call records it
            else:
                self._committed_audit(recorded[0])

        try:
            committing = self._enqueue(with_record, after=after)
        except BaseException:
            pending.give_back()  # never queued
            raise
        return await committing

    async def append_audit(self, records: Sequence[AuditRecord]) -> ChainPoint:
        """Chains and commits `records` (a batch of reads, failures, aggregates) in one
        transaction; returns the new head.

        Raises:
            RuntimeError: When audit writing is not enabled.
        """
        key = self._audit_key
        if key is None:
            raise RuntimeError("audit is not enabled on this store")
        batch = list(records)

        def op(conn: sqlite3.Connection) -> ChainPoint:
            return append_records(conn, key, batch)

        head = await self._call(op)
        self._committed_audit(head)
        return head

    def _committed_audit(self, point: ChainPoint) -> None:
        # Commits answer in order; a later one may be seen first only through another path.
        if self._audit_committed is None or point.sequence > self._audit_committed.sequence:
            self._audit_committed = point

    def audit_committed(self) -> ChainPoint | None:
        """The newest chain point this store has committed since it opened (None: none). The
        database must go on holding it: records deleted after it was written, before the next
        head export, are found by checking it (AuditLog.export_head)."""
        return self._audit_committed

    async def audit_head(self) -> ChainPoint:
        """The newest record's sequence and MAC (the anchor, or 0, when there is none)."""
        return await self._call(_head, readonly=True)

    async def audit_key_wrote_chain(self) -> bool:
        """Whether the enabled key wrote the stored chain: the anchor's MAC, or one of the
        newest records' after its predecessor, verifies under it (True when there is no chain
        yet). False for a lost or replaced key file, whose records no key could verify.

        Raises:
            RuntimeError: When audit writing is not enabled.
        """
        key = self._audit_key
        if key is None:
            raise RuntimeError("audit is not enabled on this store")

        def op(conn: sqlite3.Connection) -> bool:
            return key_wrote_chain(conn, key)

        return await self._call(op, readonly=True)

    async def audit_holds(self, point: ChainPoint) -> bool:
        """Whether the chain still reaches `point` (an exported head): the record at its
        sequence has its MAC, or retention expired it (at or below a well-MAC'd anchor).
        False when the newest records were deleted or rewritten since it was exported.

        Raises:
            RuntimeError: When audit writing is not enabled (the anchor needs the key).
        """
        key = self._audit_key
        if key is None:
            raise RuntimeError("audit is not enabled on this store")

        def op(conn: sqlite3.Connection) -> bool:
            if point == audit.START:
                return True
            row = conn.execute(
                "SELECT mac FROM audit_records WHERE seq = ?", (point.sequence,)
            ).fetchone()
            if row is not None:
                return hmac.compare_digest(bytes(row[0]), point.mac)
            found = read_anchor(conn)
            if found is None:
                return False
            anchor, mac = found
            if not hmac.compare_digest(audit.anchor_mac(key, anchor), mac):
                return False
            if anchor.sequence == point.sequence:
                return hmac.compare_digest(anchor.mac, point.mac)
            return point.sequence < anchor.sequence

        return await self._call(op, readonly=True)

    async def list_audit(
        self,
        *,
        tenant: str | None = None,
        query: AuditFilter | None = None,
        after: int = 0,
        limit: int = 100,
        scan: int = MAX_SCAN,
    ) -> AuditPage:
        """Records matching `query` (and `tenant` when given) by sequence, after `after`.

        One page examines at most `scan` records (of the tenant's, in sequence order): a
        filter that matches few or none must not scan the whole log on the store's only
        thread, holding every write behind it. A page may therefore hold fewer than `limit`
        records, or none, and still have a next page (AIP-158).
        """
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        scan = max(scan, limit + 1)
        scope = ["seq > ?"]
        scope_params: list[object] = [after]
        if tenant is not None:
            scope.insert(0, "tenant = ?")
            scope_params.insert(0, tenant)
        # The last sequence of the window (None: fewer than `scan` records remain).
        window_sql = (
            f"SELECT seq FROM audit_records WHERE {' AND '.join(scope)}"
            " ORDER BY seq LIMIT 1 OFFSET ?"
        )
        where, params = _filter_sql(query or AuditFilter())

        def op(conn: sqlite3.Connection) -> AuditPage:
            # Without a filter every record in scope matches: the first limit + 1 are the page
            # and tell whether another follows; no window is needed.
            end = conn.execute(window_sql, [*scope_params, scan - 1]).fetchone() if where else None
            bound = ["seq <= ?"] if end is not None else []
            bound_params = [end[0]] if end is not None else []
            sql = (
                f"SELECT {_COLUMNS} FROM audit_records"
                f" WHERE {' AND '.join([*scope, *bound, *where])} ORDER BY seq LIMIT ?"
            )
            rows = conn.execute(sql, [*scope_params, *bound_params, *params, limit + 1])
            found = rows.fetchall()
            records = [_row(r) for r in found[:limit]]
            if len(found) > limit:
                return AuditPage(records, records[-1].sequence)
            return AuditPage(records, None if end is None else int(end[0]))

        return await self._call(op, readonly=True)

    async def expire_audit(self, before: datetime, limit: int) -> int:
        """Deletes the oldest records up to the newest one that ended before `before`, at
        most `limit` of them, after moving the anchor to the last one deleted (so the rest
        still verifies); returns how many went."""
        if limit < 1:
            raise ValueError("limit must be positive")
        key = self._audit_key
        if key is None:
            raise RuntimeError("audit is not enabled on this store")
        cutoff = to_us(before)

        def op(conn: sqlite3.Connection) -> int:
            # Records are in time order only roughly (a stream's record is written when it
            # ends): expire the prefix of the chain whose every record is old enough.
            young = conn.execute(
                "SELECT min(seq) FROM audit_records WHERE end_time >= ?", (cutoff,)
            ).fetchone()[0]
            # The last of the oldest `limit` expired records: at most `limit` per transaction
            # (the store has one writer thread, and 200k expired records in one delete held
            # every other write for 0.6 s).
            bound = conn.execute(
                "SELECT seq, mac FROM (SELECT seq, mac FROM audit_records"
                " WHERE seq < coalesce(?, 9223372036854775807) ORDER BY seq LIMIT ?)"
                " ORDER BY seq DESC LIMIT 1",
                (young, limit),
            ).fetchone()
            if bound is None:
                return 0
            # An edited MAC (text) anchors as empty: the record after it then fails verify,
            # so the edit still shows once its record is gone.
            point = ChainPoint(int(bound[0]), _mac(bound[1]))
            conn.execute(
                "INSERT INTO audit_anchor (id, seq, mac, anchor_mac) VALUES (1, ?, ?, ?)"
                " ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, mac = excluded.mac,"
                " anchor_mac = excluded.anchor_mac",
                (point.sequence, point.mac, audit.anchor_mac(key, point)),
            )
            return conn.execute(
                "DELETE FROM audit_records WHERE seq <= ?", (point.sequence,)
            ).rowcount

        return await self._call(op)


# --- offline reading (qgateway audit verify / export) ---------------------------------------


def open_readonly(path: pathlib.Path) -> sqlite3.Connection:
    """The database, read-only (the gateway may be running: WAL readers do not block it), in
    one read transaction: the anchor and the records come from one snapshot, so a retention
    sweep committing between the two reads cannot look like missing records."""
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such database")
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, isolation_level=None)
    conn.execute("BEGIN")
    return conn


def key_wrote_chain(conn: sqlite3.Connection, key: bytes) -> bool:
    """SqliteAudit.audit_key_wrote_chain on a connection (the store tool's restore asks it of
    a backup before restoring it)."""
    found = read_anchor(conn)
    if found is not None and hmac.compare_digest(audit.anchor_mac(key, found[0]), found[1]):
        return True
    rows = conn.execute(
        f"SELECT {_COLUMNS} FROM audit_records ORDER BY seq DESC LIMIT ?",
        (KEY_CHECK_RECORDS,),
    ).fetchall()
    if not rows:
        return found is None
    macs = {0: audit.GENESIS_MAC}
    records = []
    for row in rows:
        with contextlib.suppress(DataLoss):  # an edited record proves nothing
            records.append(_row(row))
        macs[int(row[0])] = _mac(row[-1])
    return any(
        audit.chained_from(key, macs[r.sequence - 1], r) for r in records if r.sequence - 1 in macs
    )


def read_anchor(conn: sqlite3.Connection) -> tuple[ChainPoint, bytes] | None:
    row = conn.execute("SELECT seq, mac, anchor_mac FROM audit_anchor WHERE id = 1").fetchone()
    return None if row is None else (ChainPoint(int(row[0]), bytes(row[1])), bytes(row[2]))


def read_records(conn: sqlite3.Connection) -> Iterator[AuditRecord]:
    """Every stored record by sequence, streamed.

    Raises:
        DataLoss: At a record holding a value no gateway writes.
    """
    for row in conn.execute(f"SELECT {_COLUMNS} FROM audit_records ORDER BY seq"):
        yield _row(row)


def read_records_to_verify(conn: sqlite3.Connection) -> Iterator[AuditRecord | audit.Unreadable]:
    """As read_records, with a record holding a value no gateway writes as Unreadable: verify
    names it instead of stopping."""
    for row in conn.execute(f"SELECT {_COLUMNS} FROM audit_records ORDER BY seq"):
        try:
            yield _row(row)
        except DataLoss:
            yield audit.Unreadable(int(row[0]))
