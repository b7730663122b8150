"""The audit log's records and their keyed hash chain (pure: the store computes the MACs, so
this lives in the domain).

Each record's MAC is HMAC-SHA256(key, previous MAC || canonical(record)); the first record
after the chain's start chains from its anchor (32 zero bytes, or the last expired record's
sequence and MAC once retention removed the oldest records). The key lives outside the database,
so whoever can write the database cannot recompute the chain; the head (newest sequence and
MAC) is exported outside it too, so deleting the newest records shows as well.

A mutating call's record is committed in the same transaction as the call's effect: the audit
interceptor puts a `PendingRecord` in `pending_record` for the call, and the store's mutating
operations take it (`take_pending`) into their own transaction. Layers that know more about
the call than its request (the backend it runs on, the shots it asked for) `note` it.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections.abc import Callable, Iterable
from contextvars import ContextVar
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from enum import Enum
from typing import Any, Final

MAC_BYTES: Final = 32
KEY_BYTES: Final = 32
GENESIS_MAC: Final = bytes(MAC_BYTES)
_RECORD_TAG: Final = b"qgw-audit-record-v1"
_ANCHOR_TAG: Final = b"qgw-audit-anchor-v1"
_HEAD_TAG: Final = b"qgw-audit-head-v1"
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_INT: Final = struct.Struct(">q")
_LEN: Final = struct.Struct(">I")
_MICROSECOND: Final = timedelta(microseconds=1)


@dataclass(frozen=True)
class AuditRecord:
    """One call (or, with count > 1, several failed authentications from one peer).

    Attributes:
        sequence: Position in the chain from 1, without gaps; 0 until the store chains it.
        time: When the call was received (UTC).
        end_time: When it ended, or when its effect committed.
        principal: Who ("apiKeys/<prefix>", "anonymous", ...); "" when authentication failed.
        tenant: The caller's tenant; "" when authentication failed.
        key_prefix: The public prefix of the API key used. Never the key.
        peer: The caller's address (for aggregated failures, its host).
        service: Full service name, e.g. "qgateway.v1.JobService".
        method: Method name, e.g. "SubmitJob".
        resource: The resource acted on, e.g. "jobs/<id>".
        backend: The backend the call named or ran on.
        circuit_digest: SHA-256 (hex) of the submitted request's circuits and options.
        shots: Shots a submission asked for.
        code: The outcome, a google.rpc.Code number.
        reason: The error's reason (ErrorInfo.reason) when it failed.
        request_id: The client's request_id.
        trace_id: The W3C trace id (from `traceparent`) when the client sent one.
        count: Calls this record stands for.
        mac: The chain MAC; b"" until chained.
    """

    time: datetime
    end_time: datetime
    service: str
    method: str
    principal: str = ""
    tenant: str = ""
    key_prefix: str = ""
    peer: str = ""
    resource: str = ""
    backend: str = ""
    circuit_digest: str = ""
    shots: int = 0
    code: int = 0
    reason: str = ""
    request_id: str = ""
    trace_id: str = ""
    count: int = 1
    sequence: int = 0
    mac: bytes = b""


@dataclass(frozen=True)
class ChainPoint:
    """A position in the chain: a record's sequence and MAC (the head, or an anchor)."""

    sequence: int
    mac: bytes


START: Final = ChainPoint(0, GENESIS_MAC)


def _us(dt: datetime) -> int:
    if dt.tzinfo is None:
        raise ValueError(f"naive datetime {dt!r}: audit times are UTC instants")
    return (dt - _EPOCH) // _MICROSECOND


def _text(value: str) -> bytes:
    data = value.encode("utf-8")
    return _LEN.pack(len(data)) + data


def canonical(record: AuditRecord) -> bytes:
    """The record's bytes under the MAC: every field but the MAC, in a fixed order, integers
    as 8-byte big-endian, strings length-prefixed (so no two records share an encoding)."""
    return _canonical(record, record.sequence, record.end_time)


def _canonical(record: AuditRecord, sequence: int, end_time: datetime) -> bytes:
    """canonical(replace(record, sequence=sequence, end_time=end_time)), without building
    that copy (a replace of this dataclass costs as much as the encoding)."""
    return b"".join(
        (
            _RECORD_TAG,
            _INT.pack(sequence),
            _INT.pack(_us(record.time)),
            _INT.pack(_us(end_time)),
            _text(record.principal),
            _text(record.tenant),
            _text(record.key_prefix),
            _text(record.peer),
            _text(record.service),
            _text(record.method),
            _text(record.resource),
            _text(record.backend),
            _text(record.circuit_digest),
            _INT.pack(record.shots),
            _INT.pack(record.code),
            _text(record.reason),
            _text(record.request_id),
            _text(record.trace_id),
            _INT.pack(record.count),
        )
    )


def record_mac(key: bytes, previous: bytes, record: AuditRecord) -> bytes:
    return _mac_as(key, previous, record, record.sequence, record.end_time)


def _mac_as(
    key: bytes, previous: bytes, record: AuditRecord, sequence: int, end_time: datetime
) -> bytes:
    """record_mac of `record` with that sequence and end time (its MAC is not under it)."""
    return hmac.new(key, previous + _canonical(record, sequence, end_time), hashlib.sha256).digest()


def chain(
    key: bytes,
    previous: ChainPoint,
    records: Iterable[AuditRecord],
    *,
    end_time: datetime | None = None,
) -> list[AuditRecord]:
    """`records` numbered and MAC'd after `previous` (sequences and MACs they carry ignored),
    each ended at `end_time` when given."""
    sealed = []
    sequence, mac = previous.sequence, previous.mac
    for record in records:
        sequence += 1
        ended = record.end_time if end_time is None else end_time
        # One copy per record, made once its MAC is known (on the store's writer thread).
        mac = _mac_as(key, mac, record, sequence, ended)
        sealed.append(replace(record, sequence=sequence, end_time=ended, mac=mac))
    return sealed


def anchor_mac(key: bytes, point: ChainPoint) -> bytes:
    """The MAC of an anchor row, so a forged anchor cannot hide deleted oldest records."""
    return hmac.new(
        key, _ANCHOR_TAG + _INT.pack(point.sequence) + point.mac, hashlib.sha256
    ).digest()


def head_seal(key: bytes, point: ChainPoint) -> bytes:
    """The MAC of an exported head: whoever can write the head file but not read the key
    cannot make it name an older record (to hide the deletion of the newest ones)."""
    return hmac.new(key, _HEAD_TAG + _INT.pack(point.sequence) + point.mac, hashlib.sha256).digest()


@dataclass(frozen=True)
class Unreadable:
    """A stored record holding a value no gateway writes (a time out of range, text in a
    number): the database was edited, so verify names it altered."""

    sequence: int


class Problem(Enum):
    ALTERED = "altered"
    INSERTED = "inserted"
    MISSING = "missing"
    BAD_ANCHOR = "bad anchor"


@dataclass(frozen=True)
class Verdict:
    """What `verify` found.

    Attributes:
        count: Records checked (up to the first bad one).
        head: The last good position.
        problem: None when the chain is intact.
        sequence: The first bad record (for MISSING, the first missing sequence).
        detail: One line for people.
    """

    count: int
    head: ChainPoint
    problem: Problem | None = None
    sequence: int = 0
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.problem is None


def _intact(key: bytes, previous: bytes, record: AuditRecord, sequence: int) -> bool:
    expected = _mac_as(key, previous, record, sequence, record.end_time)
    return hmac.compare_digest(expected, record.mac)


def chained_from(key: bytes, previous: bytes, record: AuditRecord) -> bool:
    """Whether `record` carries the MAC `key` gives it after a record whose MAC is `previous`."""
    return _intact(key, previous, record, record.sequence)


def verify(
    records: Iterable[AuditRecord | Unreadable],
    key: bytes,
    head: ChainPoint | None = None,
    anchor: tuple[ChainPoint, bytes] | None = None,
) -> Verdict:
    """Proves the chain or names its first altered, inserted or missing record.

    Args:
        records: The stored records in sequence order (streamed: one pass, one record of
            look-ahead); Unreadable for one whose values could not be read.
        key: The audit key.
        head: The exported head: records up to it must be present, the one at its sequence
            with its MAC, which catches the deletion of the newest records. None: unchecked.
        anchor: (point, its MAC) when retention expired the oldest records.
    """
    previous = START
    if anchor is not None:
        point, mac = anchor
        if not hmac.compare_digest(anchor_mac(key, point), mac):
            return Verdict(
                0, START, Problem.BAD_ANCHOR, point.sequence, "the anchor's MAC is wrong"
            )
        previous = point
    count = 0
    iterator = iter(records)
    current = next(iterator, None)
    while current is not None:
        following = next(iterator, None)
        expected = previous.sequence + 1
        if current.sequence > expected:
            return Verdict(
                count,
                previous,
                Problem.MISSING,
                expected,
                f"records {expected}..{current.sequence - 1} are missing",
            )
        if current.sequence < expected:
            return Verdict(
                count,
                previous,
                Problem.INSERTED,
                current.sequence,
                f"record {current.sequence} is out of order after {previous.sequence}",
            )
        if isinstance(current, Unreadable):
            return Verdict(
                count,
                previous,
                Problem.ALTERED,
                expected,
                f"record {expected} was altered (it holds a value no gateway writes)",
            )
        readable = following if isinstance(following, AuditRecord) else None
        if not _intact(key, previous.mac, current, expected):
            # Tell an insertion (the next record chains from the previous one when numbered
            # here) and a removal with renumbering (the next record chains from this one when
            # numbered one on) from an edit.
            if readable is not None and _intact(key, previous.mac, readable, expected):
                problem, detail = Problem.INSERTED, f"record {expected} was inserted"
            elif readable is not None and _intact(
                key, current.mac, readable, readable.sequence + 1
            ):
                problem = Problem.MISSING
                detail = f"record {expected} is missing (later records renumbered)"
            else:
                problem, detail = Problem.ALTERED, f"record {expected} was altered (MAC mismatch)"
            return Verdict(count, previous, problem, expected, detail)
        if (
            head is not None
            and current.sequence == head.sequence
            and not hmac.compare_digest(current.mac, head.mac)
        ):
            # A valid MAC, but not the one exported: the newest records were deleted and
            # the gateway has chained new ones since.
            return Verdict(
                count,
                previous,
                Problem.ALTERED,
                current.sequence,
                f"record {current.sequence} does not match the exported head: records up to "
                "it were deleted and replaced",
            )
        previous = ChainPoint(current.sequence, current.mac)
        count += 1
        current = following
    if head is not None and head.sequence > previous.sequence:
        first = previous.sequence + 1
        return Verdict(
            count,
            previous,
            Problem.MISSING,
            first,
            f"records {first}..{head.sequence} are missing (the exported head is "
            f"{head.sequence}): the newest records were deleted",
        )
    return Verdict(count, previous)


# --- the pending record of a mutating call ------------------------------------------------


class _State(Enum):
    OPEN = 0
    TAKEN = 1
    CLOSED = 2
    CLOSED_TAKEN = 3  # the call ended while an operation that took the record was running


class Effect(Enum):
    """Store operations that commit a mutating call's record with their change."""

    CREATE_JOB = "create_job"
    CANCEL_JOB = "cancel_job"  # mark_cancelling, or finish_job to CANCELLED
    CREATE_SESSION = "create_session"
    SAVE_SESSION = "save_session"
    ADMIN = "admin"  # the key and tenant repositories' writes


# Mutating methods ("/package.Service/Method") and the effects that commit their record. Other
# store writes the call causes (a session's activity time during a submit) do not take it.
MUTATING: Final[dict[str, frozenset[Effect]]] = {
    "/qgateway.v1.JobService/SubmitJob": frozenset({Effect.CREATE_JOB}),
    "/qgateway.v1.JobService/Run": frozenset({Effect.CREATE_JOB}),
    "/qgateway.v1.JobService/CancelJob": frozenset({Effect.CANCEL_JOB}),
    "/qgateway.v1.SessionService/CreateSession": frozenset({Effect.CREATE_SESSION}),
    "/qgateway.v1.SessionService/CloseSession": frozenset({Effect.SAVE_SESSION}),
    "/qgateway.v1.SessionService/CancelSession": frozenset({Effect.SAVE_SESSION}),
    "/qgateway.v1.AdminService/CreateApiKey": frozenset({Effect.ADMIN}),
    "/qgateway.v1.AdminService/RevokeApiKey": frozenset({Effect.ADMIN}),
    "/qgateway.v1.AdminService/CreateTenant": frozenset({Effect.ADMIN}),
    "/qgateway.v1.AdminService/UpdateTenant": frozenset({Effect.ADMIN}),
}


class PendingRecord:
    """A mutating call's record until an effect commits it (or the call ends without one).

    Exactly one of them writes it: the first store operation of an accepted kind that `take`s
    it commits it in its own transaction; otherwise the interceptor, at the end of the call
    (`close`), or, when the call ended while such an operation ran and that operation then
    committed nothing, `late` (the record as the call ended).
    """

    def __init__(
        self,
        draft: AuditRecord,
        effects: frozenset[Effect],
        late: Callable[[AuditRecord], None] | None = None,
    ) -> None:
        self.draft = draft
        self.effects = effects
        self._late = late
        self._state = _State.OPEN

    def note(self, **fields: Any) -> None:
        """Adds what a layer below the API knows (backend, shots, resource)."""
        if self._state is _State.OPEN:
            self.draft = replace(self.draft, **fields)

    def take(self, effect: Effect) -> AuditRecord | None:
        """The record, for a store operation to commit with its effect; None if taken or if
        this call's record belongs to another kind of effect."""
        if self._state is not _State.OPEN or effect not in self.effects:
            return None
        self._state = _State.TAKEN
        return self.draft

    def give_back(self) -> None:
        """The operation that took it failed and committed nothing."""
        if self._state is _State.TAKEN:
            self._state = _State.OPEN
        elif self._state is _State.CLOSED_TAKEN:
            self._state = _State.CLOSED
            if self._late is not None:
                self._late(self.draft)

    def close(self) -> AuditRecord | None:
        """At the end of the call: the record if nothing committed it (the caller writes it);
        None when an effect did or may still. Later takers (tasks the call started) get
        nothing."""
        state = self._state
        self._state = _State.CLOSED_TAKEN if state is _State.TAKEN else _State.CLOSED
        return self.draft if state is _State.OPEN else None


# Set by the audit interceptor for mutating calls only; tasks a call starts inherit it.
pending_record: ContextVar[PendingRecord | None] = ContextVar("pending_record", default=None)


def take_pending(effect: Effect) -> PendingRecord | None:
    """The current call's pending record, taken for `effect` (None for reads, other contexts,
    other effects, or when an earlier operation of the call already took it)."""
    pending = pending_record.get()
    if pending is None or pending.take(effect) is None:
        return None
    return pending


def note(**fields: Any) -> None:
    """Adds fields to the current call's record (a no-op outside a mutating call)."""
    pending = pending_record.get()
    if pending is not None:
        pending.note(**fields)


def trace_id(traceparent: str) -> str:
    """The trace id of a W3C `traceparent` header ("" if it is malformed or all zeros)."""
    parts = traceparent.strip().split("-")
    if len(parts) < 4 or len(parts[1]) != 32:
        return ""
    candidate = parts[1].lower()
    if any(c not in "0123456789abcdef" for c in candidate) or candidate == "0" * 32:
        return ""
    return candidate


# --- queries (AdminService.ListAuditRecords) ----------------------------------------------

FILTER_TEXT_FIELDS: Final = ("tenant", "principal", "method", "service")
FILTER_TIME_FIELD: Final = "time"


@dataclass(frozen=True)
class AuditComparison:
    """`field op value`: a text field with "=" or "!=", or "time" with "<", "<=", ">", ">="
    against microseconds since the epoch."""

    field: str
    op: str
    value: str | int

    def text(self) -> str:
        if isinstance(self.value, int):
            return f"{self.field} {self.op} {self.value}us"
        return f"{self.field} {self.op} {self.value!r}"


@dataclass(frozen=True)
class AuditFilter:
    """AND over `clauses`; each clause an OR over comparisons on one field. Empty: all."""

    clauses: tuple[tuple[AuditComparison, ...], ...] = ()

    def canonical(self) -> str:
        """Equal for filters that differ only in spelling or order (page tokens bind to it)."""
        return " AND ".join(
            sorted(
                "(" + " OR ".join(sorted(c.text() for c in clause)) + ")" for clause in self.clauses
            )
        )


@dataclass(frozen=True)
class AuditPage:
    """One page of ListAuditRecords: records by sequence."""

    records: list[AuditRecord]
    # The sequence to continue after, or None on the last page.
    next_after: int | None
