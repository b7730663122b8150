"""What a worker sends back, as data: msgpack with explicitly registered types, never a pickle.

A compile worker parses hostile circuits. Were a parser bug ever to let a circuit run code in
it, a pickled reply would run that code again in the gateway, which holds every tenant's jobs
and keys: `pickle.loads` calls whatever its bytes name, and even an Unpickler restricted to
named classes lets the bytes set attributes on those classes (a review turned that into code
execution). A reply is decoded here into plain values (None, bool, int, float, str, bytes,
tuples, frozensets, dicts with str keys), NumPy arrays of numeric dtypes, `Counts`, and
instances of the dataclasses and enums registered with `register`, built through their own
constructors; anything else is refused (`RefusedReply`).

msgpack bounds every length it reads by the bytes it was given, so a short reply cannot ask for
a large allocation.
"""

from __future__ import annotations

import dataclasses
import enum
import re
from collections.abc import Mapping
from typing import Any

import msgpack  # type: ignore[import-untyped, unused-ignore]
import numpy as np

from gateway.backends.base import ExecutionOutcome
from gateway.domain.bitarray import Counts, RegisterSpec, _counts_from_bytes
from gateway.domain.circuits import CircuitFeature
from gateway.domain.jobs import EstimatorResult, JobResult, RegisterResult, SamplerResult

_OBJECT, _ENUM, _FROZENSET, _ARRAY, _COUNTS, _SCALAR = 1, 2, 3, 4, 5, 6
# Numeric dtypes only: an object dtype would make the array's bytes pointers.
_DTYPES = frozenset(
    np.dtype(name).str for name in ("bool", "uint8", "int32", "int64", "float64", "complex128")
)
_TYPES: dict[str, type] = {}
# Each level is a C stack frame of msgpack's: ~200 of them overran the stack (a segfault, from a
# 722-byte reply). A result nests 5 deep (outcome, job result, PUB, register, counts).
_MAX_DEPTH = 16
# Wider than any register a circuit may declare (its clbits are bounded far below this).
_MAX_BITS = 1 << 24
# The header of any msgpack extension of type -1, which msgpack decodes as a timestamp itself:
# fixext 1/2/4/8/16 (0xd4-0xd8), or ext 8/16/32 (0xc7-0xc9 and a 1-, 2- or 4-byte length),
# then the type byte 0xff. An extension's payload is part of the bytes of the reply holding it,
# so a reply without this pattern anywhere holds no timestamp at any level, and the walk of
# each level's values (half of a result's decoding) is skipped. A match (a timestamp, or these
# bytes by chance inside a string or an array) walks every level as before. Written as 0xff
# and then what precedes it, so that the regex engine scans for that one byte (~0.5 us for a
# 1.3 kB result; the plain alternation tried each position, ~20 us).
_TIMESTAMP_HEADER = re.compile(
    rb"\xff(?:(?<=[\xd4-\xd8]\xff)|(?<=\xc7.\xff)|(?<=\xc8..\xff)|(?<=\xc9....\xff))", re.DOTALL
)


class RefusedReply(ValueError):
    """The bytes are not a reply a worker sends."""


def register(*classes: type) -> None:
    """Lets replies hold instances of these dataclasses or enums. Called by the modules that
    define them, which the gateway and its workers both import before any reply is read."""
    for cls in classes:
        if not (dataclasses.is_dataclass(cls) or issubclass(cls, enum.Enum)):
            raise TypeError(f"{cls.__qualname__} is neither a dataclass nor an enum")
        _TYPES[_tag(cls)] = cls


def encode(reply: tuple[Any, ...]) -> bytes:
    """The worker's side. Raises TypeError for a value of a type no reply may hold."""
    return _pack(reply)


def decode(data: bytes) -> tuple[Any, ...]:
    """The gateway's side: a tagged tuple ("ok", ...). Raises RefusedReply for anything else."""
    try:
        reply = _unpack(data, 0, _TIMESTAMP_HEADER.search(data) is not None)
    except RefusedReply:
        raise
    except Exception as exc:  # whatever malformed bytes make msgpack or a constructor raise
        raise RefusedReply(f"{type(exc).__name__}: {exc}") from None
    if not isinstance(reply, tuple) or not reply or not isinstance(reply[0], str):
        raise RefusedReply("a reply is a tuple tagged with a string")
    return reply


def _tag(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def _pack(value: object) -> bytes:
    # strict_types: a subclass of a type msgpack knows goes to `_default` too, so a NumPy
    # float64 (a float subclass) keeps its type instead of reading back as a float.
    packed: bytes = msgpack.packb(value, default=_default, use_bin_type=True, strict_types=True)
    return packed


def _default(value: object) -> object:
    """What msgpack packs in place of a value it does not know (packed again in turn)."""
    if type(value) is tuple:
        return list(value)  # read back as a tuple (use_list=False)
    if isinstance(value, Counts):
        counts = [value.num_bits, value.outcomes.tobytes(), value.counts.tobytes()]
        return msgpack.ExtType(_COUNTS, _pack(counts))
    if isinstance(value, np.ndarray):
        if value.dtype.str not in _DTYPES:
            raise TypeError(f"a reply holds no array of dtype {value.dtype}")
        array = [value.dtype.str, list(value.shape), np.ascontiguousarray(value).tobytes()]
        return msgpack.ExtType(_ARRAY, _pack(array))
    if isinstance(value, np.generic):
        # Kept a NumPy scalar (an estimator's value of shape () is one).
        if value.dtype.str not in _DTYPES:
            raise TypeError(f"a reply holds no scalar of dtype {value.dtype}")
        return msgpack.ExtType(_SCALAR, _pack([value.dtype.str, value.tobytes()]))
    if isinstance(value, frozenset | set):
        return msgpack.ExtType(_FROZENSET, _pack(list(value)))
    if isinstance(value, Mapping):
        return dict(value)
    cls = type(value)
    if _TYPES.get(_tag(cls)) is not cls:
        raise TypeError(f"a reply holds no {cls.__qualname__} (not registered)")
    if isinstance(value, enum.Enum):
        return msgpack.ExtType(_ENUM, _pack([_tag(cls), value.value]))
    fields = [getattr(value, f.name) for f in dataclasses.fields(value) if f.init]  # type: ignore[arg-type]
    return msgpack.ExtType(_OBJECT, _pack([_tag(cls), fields]))


def _unpack(data: bytes, depth: int, timestamps: bool) -> Any:
    """`timestamps`: whether the reply's bytes may hold one (_TIMESTAMP_HEADER)."""
    if depth > _MAX_DEPTH:
        raise RefusedReply(f"extension types nested deeper than {_MAX_DEPTH}")
    value = msgpack.unpackb(
        data,
        ext_hook=lambda code, inner: _ext(code, inner, depth + 1, timestamps),
        use_list=False,
        raw=False,
        strict_map_key=True,
        timestamp=0,
    )
    if timestamps:
        _refuse_timestamps(value)
    return value


def _refuse_timestamps(value: object) -> None:
    """msgpack reads its own timestamp extension (-1) without asking ext_hook, and no setting
    turns that off: found in the plain values of this level (extensions were checked at
    theirs), it is refused like any type no worker sends."""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, msgpack.Timestamp):
            raise RefusedReply("a reply holds a msgpack timestamp")
        if isinstance(item, tuple):
            pending.extend(item)
        elif isinstance(item, dict):
            pending.extend(item.values())


def _ext(code: int, data: bytes, depth: int, timestamps: bool) -> object:
    value = _unpack(data, depth, timestamps)
    if code == _COUNTS:
        num_bits, outcomes, counts = value
        if not (isinstance(num_bits, int) and 0 <= num_bits <= _MAX_BITS):
            raise RefusedReply(f"counts of {num_bits!r} bits")
        if not (isinstance(outcomes, bytes) and isinstance(counts, bytes)):
            raise RefusedReply("malformed counts")
        read = _counts_from_bytes(num_bits, outcomes, counts)
        if not bool((read.counts > 0).all()):  # the method: np.all adds ~2 us of dispatch
            raise RefusedReply("counts that are not positive")
        return read
    if code == _ARRAY:
        dtype, shape, raw = value
        if dtype not in _DTYPES or not all(isinstance(n, int) and n >= 0 for n in shape):
            raise RefusedReply(f"an array of dtype {dtype!r}, shape {shape!r}")
        return np.frombuffer(raw, dtype=np.dtype(dtype)).reshape(shape)
    if code == _SCALAR:
        dtype, raw = value
        if dtype not in _DTYPES or not isinstance(raw, bytes):
            raise RefusedReply(f"a scalar of dtype {dtype!r}")
        return np.frombuffer(raw, dtype=np.dtype(dtype), count=1)[0]
    if code == _FROZENSET:
        return frozenset(value)
    if code == _OBJECT:
        tag, fields = value
        cls = _TYPES.get(tag)
        if cls is None or isinstance(cls, enum.EnumMeta) or not isinstance(fields, tuple):
            raise RefusedReply(f"a reply holds no {tag!r}")
        return cls(*fields)
    if code == _ENUM:
        tag, enum_value = value
        cls = _TYPES.get(tag)
        if cls is None or not isinstance(cls, enum.EnumMeta):
            raise RefusedReply(f"a reply holds no enum {tag!r}")
        return cls(enum_value)
    raise RefusedReply(f"unknown extension type {code}")


register(
    ExecutionOutcome,
    JobResult,
    SamplerResult,
    EstimatorResult,
    RegisterResult,
    RegisterSpec,
    CircuitFeature,
)
