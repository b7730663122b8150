"""A stored JobResult split into its registers' packed samples and counts and the rest, the
samples and counts never parsed.

Parsing a result copies every sample byte into the parsed message, and protobuf's upb runtime
keeps a cleared field's memory until the whole message goes: a stream of a 150 MB result held
~300 MB while its budget charged the 150 MB stored. Parsed, each count took an int64 in a
growable array (15 MiB of counts stored held 66 MiB), and a stream serialised a binding's counts
again to cut them, ~10 ms of protobuf's C holding the GIL for 500,000 outcomes. Here each
register's samples, and each binding's Counts message, stay slices of the stored bytes, and only
the rest (headers, estimator values) is parsed: a stream holds the stored bytes once. A binding's
Counts is kept as two offsets, its view made when asked for: a view held per binding (~190 bytes)
took 24x the stored size of a result of 100,000 small Counts.

The walk follows the protobuf wire format along one path, JobResult.pub_results (1) ->
PubResult.sampler (1) -> SamplerPubResult.registers (3) -> RegisterResult.samples (3) and
RegisterResult.counts (4), and copies every other field as it is. Stored results are written
canonically (each field once, in field order), so a second sampler in one PUB or second samples
in one register is refused, not merged.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterator
from typing import Final, NamedTuple

from google.protobuf.message import DecodeError
from qgateway.v1 import job_pb2

from gateway.api.wire_format import encode_varint, read_varint

_PATH: Final = (1, 1, 3)
_REGISTER_DEPTH: Final = len(_PATH)
_SAMPLES, _COUNTS = 3, 4  # RegisterResult's fields
_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5


class BindingCounts:
    """One register's stored Counts messages, one per binding, as views of the stored bytes."""

    def __init__(self, register: memoryview) -> None:
        self._register = register  # the register's stored message
        # Each binding's Counts: start, end (in `register`; a stored result is at most 900 MiB).
        self._bounds = array("I")

    def add(self, start: int, end: int) -> None:
        self._bounds.extend((start, end))

    def __len__(self) -> int:
        return len(self._bounds) // 2

    def __getitem__(self, binding: int) -> memoryview:
        if not 0 <= binding < len(self):
            raise IndexError(f"binding {binding} of {len(self)}")
        return self._register[self._bounds[2 * binding] : self._bounds[2 * binding + 1]]

    def __iter__(self) -> Iterator[memoryview]:
        return (self[binding] for binding in range(len(self)))


class Split(NamedTuple):
    """A stored result: `result` without its samples and counts; per PUB, per register, its
    `samples` (a view of the stored bytes; empty when stored without) and its `counts` (each
    binding's stored Counts message; none when stored without). An estimator PUB has no
    registers."""

    result: job_pb2.JobResult
    samples: list[list[memoryview]]
    counts: list[list[BindingCounts]]


def split_result(data: bytes) -> Split:
    """`data`, a stored JobResult, split (Split).

    Raises:
        ValueError: `data` is not a canonically stored JobResult.
    """
    samples: list[list[memoryview]] = []
    counts: list[list[BindingCounts]] = []
    rest = _strip(memoryview(data), 0, samples, counts)
    try:
        result = job_pb2.JobResult.FromString(rest)
    except DecodeError as exc:
        raise ValueError(f"the stored result does not parse: {exc}") from None
    for pub in result.pub_results:
        # Empty unless a samples or counts field came after a later field, which no canonical
        # serialisation writes (the walk stops at the first field past its path's).
        if any(reg.samples or reg.counts for reg in pub.sampler.registers):
            raise ValueError("a register's data is out of order: not stored canonically")
    return Split(result, samples, counts)


def _strip(
    message: memoryview,
    depth: int,
    samples: list[list[memoryview]],
    counts: list[list[BindingCounts]],
) -> bytes:
    """`message`, at `depth` along _PATH, re-encoded without the samples and counts it holds.

    Fields come in ascending order (canonical serialisation), so the walk ends at the first
    field numbered past the path's and copies the rest whole; in a register it walks one field
    per binding (its Counts), never into one.
    """
    out = bytearray()
    copied = 0  # message[copied:] is not in `out` yet
    pos = 0
    seen = False
    last = _COUNTS if depth == _REGISTER_DEPTH else _PATH[depth]
    while pos < len(message):
        start = pos
        key, pos = read_varint(message, pos)
        number, wire = key >> 3, key & 7
        if number > last:
            break
        if wire == _VARINT:
            _, pos = read_varint(message, pos)
            continue
        if wire == _I64:
            pos += 8
            continue
        if wire == _I32:
            pos += 4
            continue
        if wire != _LEN:
            raise ValueError(f"wire type {wire} has no place in a JobResult")
        length, pos = read_varint(message, pos)
        end = pos + length
        if end > len(message):
            raise ValueError("a field runs past its message")
        if depth == _REGISTER_DEPTH and number in (_SAMPLES, _COUNTS):
            out += message[copied:start]
            copied = end
            if number == _COUNTS:
                counts[-1][-1].add(pos, end)
            elif seen or counts[-1][-1]:  # canonically, samples come once, before counts
                raise ValueError(
                    "a samples field appears twice or after counts: the result is not stored "
                    "canonically"
                )
            else:
                seen = True
                samples[-1][-1] = message[pos:end]
        elif number == last:
            inner_message = message[pos:end]
            _enter(depth, seen, samples, counts, inner_message)
            seen = True
            out += message[copied:start]
            inner = _strip(inner_message, depth + 1, samples, counts)
            out += encode_varint(key) + encode_varint(len(inner)) + inner
            copied = end
        pos = end
    if pos > len(message):
        raise ValueError("a field runs past its message")
    out += message[copied:]
    return bytes(out)


def _enter(
    depth: int,
    seen: bool,
    samples: list[list[memoryview]],
    counts: list[list[BindingCounts]],
    message: memoryview,
) -> None:
    """Bookkeeping for one field along the path (`message`): a PUB, its sampler, a register."""
    if depth == 0:  # each pub_results entry is a PUB
        samples.append([])
        counts.append([])
    elif depth == 2:  # each registers entry is a register
        samples[-1].append(memoryview(b""))
        counts[-1].append(BindingCounts(message))
    elif seen:  # repeated only as merges, which a canonical result never needs
        raise ValueError("a sampler field appears twice: the result is not stored canonically")
