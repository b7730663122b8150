"""Decoding a large request in pieces, so that no single parse holds the GIL for long.

upb parses a message in one C call that holds the GIL: 16 MiB of empty PUBs took ~0.23 s, and
16 MiB of one-byte packed qubit indices ~0.14 s, during which the event loop, and every other
tenant's call, waited; a thread alone does not help. A request above `piece_bytes` is merged
into its message piece by piece instead (merging concatenated messages is what parsing their
concatenation does): consecutive fields up to `piece_bytes` at once; a larger message field
into its (sub)message the same way, recursively; a larger map entry's message value into the
map's value of its key, cleared first (a later entry replaces, it does not merge); a larger
packed field in runs of whole elements (packed occurrences append); a larger string or bytes
field on its own (a copy, not millions of objects: 4-20 ms for 16 MiB of text). A piece holds the
GIL ~1 ms, more when it grows a repeated field's array past its capacity (a copy of the array:
~13 ms at 16 M elements). Between pieces the GIL can change hands.

Finding the pieces walks fields in Python (~1.7 us each), so it is bounded: a field of LIMITS
(the job's element limits) occurs at most its limit over the request, refused with the error
the job's own check gives; any other field, and the unknown fields together, at most
DEFAULT_OCCURRENCES times in one message (MALFORMED_REQUEST); and at most MAX_WALKED_FIELDS
fields are walked in all (REQUEST_TOO_LARGE). 16 MiB of empty PUBs is refused after its
1001st, instead of being parsed whole and then refused.

What is not exactly protobuf's parse: a group (wire types 3 and 4) is refused, as is a map
entry larger than a piece holding a field other than its key and value (protobuf parses it whole
and keeps it as an unknown field); and a message merged into a submessage gets upb's nesting
budget (100) afresh, so nesting a few levels past it (only Struct values nest that deep) is
accepted here and refused later by the request's own limits (provider options: 8 levels).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final, TypeVar, cast

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from gateway.api import codec
from gateway.api.wire_format import (
    I32,
    I64,
    LEN,
    VARINT,
    fields,
    length_delimited,
    read_varint,
)
from gateway.domain.errors import FieldViolation, InvalidArgument

# Largest piece merged at once: ~1 ms of the GIL for pieces of the smallest messages.
PIECE_BYTES: Final = 64 << 10
# Occurrences of a field in one message walked here, unless LIMITS says otherwise, and of
# unknown fields together: far more than any field without a limit of its own holds (labels:
# 64, shape dimensions: 32; a repeated number's elements come packed, many to an occurrence).
DEFAULT_OCCURRENCES: Final = 1 << 16
# Fields walked in Python for one request (~1.7 us each: ~3.5 s of CPU at most). A job at its
# element limits walks at most about a million terms (or observables) and a million parameter
# names; the rest of this bound is for everything else.
MAX_WALKED_FIELDS: Final = 1 << 21
# Message nesting walked here (deeper, a message is merged whole; the schema nests ~6 deep).
MAX_DEPTH: Final = 32

_FIXED_WIDTH: Final = {
    FieldDescriptor.TYPE_DOUBLE: 8,
    FieldDescriptor.TYPE_FIXED64: 8,
    FieldDescriptor.TYPE_SFIXED64: 8,
    FieldDescriptor.TYPE_FLOAT: 4,
    FieldDescriptor.TYPE_FIXED32: 4,
    FieldDescriptor.TYPE_SFIXED32: 4,
}
# The wire type of each field type (a varint otherwise; a packed field's: LEN too).
_WIRE_TYPE: Final = {
    **{kind: I64 if width == 8 else I32 for kind, width in _FIXED_WIDTH.items()},
    FieldDescriptor.TYPE_STRING: LEN,
    FieldDescriptor.TYPE_BYTES: LEN,
    FieldDescriptor.TYPE_MESSAGE: LEN,
    FieldDescriptor.TYPE_GROUP: 3,
}
_NOT_PACKABLE: Final = frozenset(
    {
        FieldDescriptor.TYPE_STRING,
        FieldDescriptor.TYPE_BYTES,
        FieldDescriptor.TYPE_MESSAGE,
        FieldDescriptor.TYPE_GROUP,
    }
)


@dataclass(frozen=True)
class Occurrences:
    """At most `limit` occurrences of a field in the whole request (counted in the messages
    walked); `refuse(field)` is the refusal at the first past the limit: the error the job's
    own check raises for its element limit, a total over the job (the rest is never counted).
    `at_holder`: the refusal names the message holding the field, as that check does (an
    observable's terms are counted over `observables`), not the field itself."""

    limit: int
    refuse: Callable[[str], InvalidArgument]
    at_holder: bool = False


def _too_many(reason: str, what: str, limit: int) -> Callable[[str], InvalidArgument]:
    return lambda field: codec.too_many(reason, field, what, limit)


# The fields a job may hold many of, bounded by the job's own element limits (which
# gateway.api.codec.check_counts checks over the whole job once it is decoded): a request holds
# one job, so a request past one is past it in the job.
LIMITS: Final[Mapping[str, Occurrences]] = {
    "qgateway.v1.JobSpec.pubs": Occurrences(
        codec.MAX_PUBS, lambda field: codec.too_many_pubs(field, None)
    ),
    "qgateway.v1.EstimatorPub.observables": Occurrences(
        codec.MAX_TERMS, _too_many("TOO_MANY_TERMS", "Pauli terms", codec.MAX_TERMS)
    ),
    "qgateway.v1.Observable.terms": Occurrences(
        codec.MAX_TERMS,
        _too_many("TOO_MANY_TERMS", "Pauli terms", codec.MAX_TERMS),
        at_holder=True,
    ),
    "qgateway.v1.BindingsArray.parameters": Occurrences(
        codec.MAX_PARAMETERS,
        _too_many("TOO_MANY_PARAMETERS", "parameter names", codec.MAX_PARAMETERS),
        at_holder=True,
    ),
}

M = TypeVar("M", bound=Message)


def _merge(message: Message, piece: bytes) -> None:
    """One C parse of at most a piece (or one string field): the GIL is held throughout."""
    message.MergeFromString(piece)


def parse(
    message_class: type[M],
    data: bytes,
    *,
    piece_bytes: int = PIECE_BYTES,
    limits: Mapping[str, Occurrences] = LIMITS,
) -> M:
    """`data` parsed as a `message_class`, exactly as `message_class.FromString` would.

    Raises:
        InvalidArgument: A field occurs more often than its limit allows (its reason, the
            field's path).
        ValueError, google.protobuf.message.DecodeError: `data` is not valid protobuf.
    """
    message = message_class()
    _Pieces(piece_bytes, limits).merge(message, memoryview(data), "", 0)
    return message


class _Pieces:
    def __init__(self, piece_bytes: int, limits: Mapping[str, Occurrences]) -> None:
        self._piece = piece_bytes
        self._limits = limits
        self._walked = 0
        # Occurrences of each field in LIMITS, over the request.
        self._totals: dict[str, int] = {}

    def merge(self, message: Message, data: memoryview, path: str, depth: int) -> None:
        if len(data) <= self._piece or depth >= MAX_DEPTH:
            _merge(message, bytes(data))
            return
        by_number = message.DESCRIPTOR.fields_by_number
        # The field a key (number and wire type) is an occurrence of, and its limit; None: an
        # unknown field, as protobuf keeps one of a known number but another wire type.
        known: dict[int, tuple[FieldDescriptor | None, Occurrences | None]] = {}
        seen: dict[int, int] = {}
        run_start = field_start = 0
        for number, wire_type, start, end in fields(data):  # type: ignore[arg-type]
            tag = number << 3 | wire_type
            try:
                field, bound = known[tag]
            except KeyError:
                # (upb's descriptors are typed apart from the protocol's in the stubs.)
                field = cast("FieldDescriptor | None", by_number.get(number))
                if field is not None and not _carries(field, wire_type):
                    field = None
                bound = None if field is None else self._limits.get(field.full_name)
                known[tag] = field, bound
            self._walk_one()
            if bound is not None:
                assert field is not None
                self._count_limited(field, bound, path)
            else:
                # Occurrences in this message (0: of every unknown field together).
                key = number if field is not None else 0
                seen[key] = count = seen.get(key, 0) + 1
                if count > DEFAULT_OCCURRENCES:
                    _refuse_occurrences(field, path)
            big = wire_type == LEN and end - start > self._piece and field is not None
            if not big:
                if end - run_start > self._piece and field_start > run_start:
                    _merge(message, bytes(data[run_start:field_start]))
                    run_start = field_start
                field_start = end
                continue
            if field_start > run_start:
                _merge(message, bytes(data[run_start:field_start]))
            assert field is not None
            _check_prefix(data, field_start, start)
            self._big_field(message, field, data[field_start:end], data[start:end], path, depth)
            run_start = field_start = end
        if field_start > run_start:
            _merge(message, bytes(data[run_start:field_start]))

    def _walk_one(self) -> None:
        self._walked += 1
        if self._walked > MAX_WALKED_FIELDS:
            description = (
                f"a request decoded in pieces holds at most {MAX_WALKED_FIELDS} fields in its "
                "messages over 64 KiB"
            )
            raise InvalidArgument(
                "REQUEST_TOO_LARGE",
                description,
                metadata={"limitFields": str(MAX_WALKED_FIELDS)},
            )

    def _count_limited(self, field: FieldDescriptor, bound: Occurrences, path: str) -> None:
        """Counts an occurrence of a field of LIMITS, refused past its limit over the request."""
        name = field.full_name
        total = self._totals[name] = self._totals.get(name, 0) + 1
        if total > bound.limit:
            where = _unindexed(path) if bound.at_holder else _path(path, field.name)
            raise bound.refuse(where)

    def _big_field(
        self,
        message: Message,
        field: FieldDescriptor,
        whole: memoryview,
        payload: memoryview,
        path: str,
        depth: int,
    ) -> None:
        """A length-delimited field larger than a piece (`whole`: with its key and length)."""
        if _is_map(field):
            self._map_entry(message, field, whole, payload, path, depth)
            return
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            container = getattr(message, field.name)
            if field.is_repeated:
                where = f"{_path(path, field.name)}[{len(container)}]"
                self.merge(container.add(), payload, where, depth + 1)
            else:
                self.merge(container, payload, _path(path, field.name), depth + 1)
            return
        if field.is_repeated and field.type not in _NOT_PACKABLE:
            for piece in _packed_runs(payload, _FIXED_WIDTH.get(field.type), self._piece):
                _merge(message, length_delimited(field.number, piece))
            return
        _merge(message, bytes(whole))  # a string or bytes value: one copy

    def _map_entry(
        self,
        message: Message,
        field: FieldDescriptor,
        whole: memoryview,
        payload: memoryview,
        path: str,
        depth: int,
    ) -> None:
        """A map entry larger than a piece: its value merged in pieces into the map's value of
        its key (cleared first: a later entry of a key replaces the value, not merges into it,
        as protobuf's parse does). Only a message value under a string key (a Struct's fields:
        8 M empty Values in one entry were one 0.24 s parse); any other entry is merged whole.

        Raises:
            ValueError: The entry holds a field other than its key and value, or a key or
                length longer than 5 bytes.
        """
        entry = field.message_type
        assert entry is not None  # a map field's
        key_field, value_field = entry.fields_by_number[1], entry.fields_by_number[2]
        if (
            value_field.type != FieldDescriptor.TYPE_MESSAGE
            or key_field.type != FieldDescriptor.TYPE_STRING
        ):
            _merge(message, bytes(whole))
            return
        key = memoryview(b"")
        values: list[tuple[int, int]] = []  # (payload start, end)
        field_start = 0
        for number, wire_type, start, end in fields(payload):  # type: ignore[arg-type]
            self._walk_one()
            # Read here, never by protobuf: refused where its parse refuses them.
            _check_prefix(payload, field_start, start)
            if wire_type != LEN or number not in (1, 2):
                # protobuf parses such an entry whole and keeps it out of the map, as an
                # unknown field of `message`: no serialiser writes one.
                raise ValueError("a large map entry holds a field other than its key and value")
            if number == 1:
                key = payload[start:end]
            else:
                values.append((start, end))
            field_start = end
        name = bytes(key).decode("utf-8")  # protobuf refuses a key that is not UTF-8 too
        target = getattr(message, field.name)[name]
        target.Clear()
        for start, end in values:
            where = f"{_path(path, field.name)}[{name!r}]"
            self.merge(target, payload[start:end], where, depth + 1)


def _refuse_occurrences(field: FieldDescriptor | None, path: str) -> None:
    """MALFORMED_REQUEST: a field without a limit of its own (or the unknown fields) occurs
    more than DEFAULT_OCCURRENCES times in one message."""
    where = _path(path, "(unknown field)" if field is None else field.name)
    description = f"occurs more than {DEFAULT_OCCURRENCES} times"
    raise InvalidArgument(
        "MALFORMED_REQUEST",
        f"{where}: {description}",
        metadata={"limit": str(DEFAULT_OCCURRENCES)},
        field_violations=[FieldViolation(where, description)],
    )


def _packed_runs(payload: memoryview, width: int | None, piece_bytes: int) -> list[bytes]:
    """`payload` (packed elements, fixed `width` or varints) cut between elements into runs of
    about `piece_bytes`. A cut that would fall inside a malformed tail is left to the parse."""
    runs: list[bytes] = []
    at = 0
    while len(payload) - at > piece_bytes:
        cut = at + piece_bytes
        if width is not None:
            cut = at + max(width, piece_bytes - piece_bytes % width)
        else:
            after = _varint_end(payload, cut)
            if after is None:
                break
            cut = after
        runs.append(bytes(payload[at:cut]))
        at = cut
    runs.append(bytes(payload[at:]))
    return runs


def _varint_end(payload: memoryview, at: int) -> int | None:
    """Just after the first byte at or past `at` that ends a varint (below 0x80), if any
    within a varint's length."""
    for position in range(at, min(at + 10, len(payload))):
        if payload[position] < 0x80:
            return position + 1
    return None


def _check_prefix(data: memoryview, field_start: int, payload_start: int) -> None:
    """A field whose key and length protobuf never reads (a large message or packed field, a
    field of a large map entry) is refused where protobuf's parse refuses it for them: a key or
    a length longer than 5 bytes (upb reads both as 32-bit varints; Python's walk reads 10
    bytes). A field without a length has only its key checked.

    Raises:
        ValueError: The key or the length is longer than 5 bytes.
    """
    _, key_end = read_varint(data, field_start)
    if key_end - field_start > 5 or payload_start - key_end > 5:
        raise ValueError("a field's key or length is longer than 5 bytes")


def _carries(field: FieldDescriptor, wire_type: int) -> bool:
    """Whether a field of `wire_type` is an occurrence of `field` (else an unknown field)."""
    if wire_type == _WIRE_TYPE.get(field.type, VARINT):
        return True
    return wire_type == LEN and field.is_repeated and field.type not in _NOT_PACKABLE


def _is_map(field: FieldDescriptor) -> bool:
    entry = field.message_type
    return entry is not None and entry.GetOptions().map_entry


def _path(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _unindexed(path: str) -> str:
    """`path` without the index of its last element: the field it is an element of."""
    return path[: path.rindex("[")] if path.endswith("]") else path
