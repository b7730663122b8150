"""Decoding a large request in pieces, so that no single parse holds the GIL for long.

upb parses a message in one C call that holds the GIL: 16 MiB of empty PUBs took ~0.23 s, and
16 MiB of one-byte packed qubit indices ~0.14 s, during which the event loop, and every other
tenant's call, waited; a thread alone does not help. A request above `piece_bytes` is merged
into its message piece by piece instead (merging concatenated messages is what parsing their
concatenation does): consecutive fields up to `piece_bytes` at once; a larger message field
into its (sub)message the same way, recursively; a larger packed field in runs of whole
elements (packed occurrences append); a larger string or bytes field on its own (a copy, not
millions of objects: ~20 ms for 16 MiB of text). Between pieces the GIL can change hands.

Finding the pieces walks fields in Python, so a message walked here may hold at most so many
occurrences of one field: the job's element limits for the fields they bound (`LIMITS`), else
DEFAULT_OCCURRENCES. Past that the request is refused before the rest of it is read: 16 MiB of
empty PUBs is refused after its 1001st, instead of being parsed whole and then refused.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final, TypeVar, cast

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from gateway.api import codec
from gateway.api.wire_format import LEN, fields, length_delimited
from gateway.domain.errors import FieldViolation, InvalidArgument

# Largest piece merged at once: ~1 ms of the GIL for pieces of the smallest messages.
PIECE_BYTES: Final = 64 << 10
# Occurrences of a field in one message walked here, unless LIMITS says otherwise: far more
# than any field without a limit of its own holds (labels: 64, shape dimensions: 32).
DEFAULT_OCCURRENCES: Final = 1 << 16
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
    """At most `limit` occurrences of a field in one message; `refuse(field, count)` is the
    refusal once `count` (the first past the limit) are seen: the error the job's own check
    raises for its element limit (the rest is never counted).
    `at_holder`: the refusal names the message holding the field, as that check does (an
    observable's terms are counted over `observables`), not the field itself."""

    limit: int
    refuse: Callable[[str, int], InvalidArgument]
    at_holder: bool = False


def _too_many(reason: str, what: str, limit: int) -> Callable[[str, int], InvalidArgument]:
    return lambda field, count: codec.too_many(reason, field, what, limit)


# The fields a job may hold many of, bounded by the job's own element limits (which
# gateway.api.codec.check_counts checks over the whole job once it is decoded): a request
# past one in a single message is past it in the job.
LIMITS: Final[Mapping[str, Occurrences]] = {
    "qgateway.v1.JobSpec.pubs": Occurrences(
        codec.MAX_PUBS, lambda field, count: codec.too_many_pubs(field, None)
    ),
    "qgateway.v1.EstimatorPub.observables": Occurrences(
        codec.MAX_TERMS, _too_many("TOO_MANY_TERMS", "Pauli terms", codec.MAX_TERMS)
    ),
    "qgateway.v1.Observable.terms": Occurrences(
        codec.MAX_TERMS,
        _too_many("TOO_MANY_TERMS", "Pauli terms", codec.MAX_TERMS),
        at_holder=True,
    ),
    "qgateway.v1.PauliTerm.qubits": Occurrences(
        codec.MAX_SPARSE_QUBITS,
        _too_many("TOO_MANY_TERMS", "qubit indices of sparse Pauli terms", codec.MAX_SPARSE_QUBITS),
    ),
    "qgateway.v1.BindingsArray.parameters": Occurrences(
        codec.MAX_PARAMETERS,
        _too_many("TOO_MANY_PARAMETERS", "parameter names", codec.MAX_PARAMETERS),
        at_holder=True,
    ),
    # Only lifts the default: 16 MiB holds ~1.9 million unpacked doubles.
    "qgateway.v1.BindingsArray.values": Occurrences(
        codec.MAX_BINDINGS_ELEMENTS,
        _too_many("INVALID_PARAMETER_VALUES", "parameter values", codec.MAX_BINDINGS_ELEMENTS),
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
        # Up to this many occurrences no field's limit is looked up.
        self._least = min([bound.limit for bound in limits.values()], default=DEFAULT_OCCURRENCES)

    def merge(self, message: Message, data: memoryview, path: str, depth: int) -> None:
        if len(data) <= self._piece or depth >= MAX_DEPTH:
            _merge(message, bytes(data))
            return
        by_number = message.DESCRIPTOR.fields_by_number
        seen: dict[int, int] = {}
        run_start = field_start = 0
        for number, wire_type, start, end in fields(data):  # type: ignore[arg-type]
            seen[number] = count = seen.get(number, 0) + 1
            # (upb's descriptors are typed apart from the protocol's in the stubs.)
            field = cast("FieldDescriptor | None", by_number.get(number))
            if count > DEFAULT_OCCURRENCES or (count > self._least and field is not None):
                self._check_occurrences(field, count, path)
            big = wire_type == LEN and end - start > self._piece and field is not None
            if not big or _is_map(field):  # type: ignore[arg-type]
                if end - run_start > self._piece and field_start > run_start:
                    _merge(message, bytes(data[run_start:field_start]))
                    run_start = field_start
                field_start = end
                continue
            if field_start > run_start:
                _merge(message, bytes(data[run_start:field_start]))
            assert field is not None
            self._big_field(message, field, data[field_start:end], data[start:end], path, depth)
            run_start = field_start = end
        if field_start > run_start:
            _merge(message, bytes(data[run_start:field_start]))

    def _check_occurrences(self, field: FieldDescriptor | None, count: int, path: str) -> None:
        bound = self._limits.get("" if field is None else field.full_name)
        limit = DEFAULT_OCCURRENCES if bound is None else bound.limit
        if count <= limit:
            return
        name = "(unknown field)" if field is None else field.name
        if bound is not None:
            where = _unindexed(path) if bound.at_holder else _path(path, name)
            raise bound.refuse(where, count)
        where = _path(path, name)
        description = f"occurs more than {limit} times"
        raise InvalidArgument(
            "MALFORMED_REQUEST",
            f"{where}: {description}",
            metadata={"limit": str(limit)},
            field_violations=[FieldViolation(where, description)],
        )

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


def _is_map(field: FieldDescriptor) -> bool:
    entry = field.message_type
    return entry is not None and entry.GetOptions().map_entry


def _path(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _unindexed(path: str) -> str:
    """`path` without the index of its last element: the field it is an element of."""
    return path[: path.rindex("[")] if path.endswith("]") else path
