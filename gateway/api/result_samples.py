"""A stored JobResult split into its packed samples and the rest, the samples never parsed.

Parsing a result copies every sample byte into the parsed message, and protobuf's upb runtime
keeps a cleared field's memory until the whole message goes: a stream of a 150 MB result held
~300 MB while its budget charged the 150 MB stored. Here each register's samples stay a slice of
the stored bytes, and only the rest (headers, counts, estimator values) is parsed: a stream holds
the stored bytes once, plus what its counts take parsed.

The walk follows the protobuf wire format along one path, JobResult.pub_results (1) ->
PubResult.sampler (1) -> SamplerPubResult.registers (3) -> RegisterResult.samples (3), and
copies every other field as it is. Stored results are written canonically (each field once),
so a second sampler in one PUB or second samples in one register is refused, not merged.
"""

from __future__ import annotations

from typing import Final

from google.protobuf.message import DecodeError
from qgateway.v1 import job_pb2

from gateway.api.wire_format import encode_varint, read_varint

_PATH: Final = (1, 1, 3, 3)
_SAMPLES_DEPTH: Final = len(_PATH) - 1
_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5


def split_samples(data: bytes) -> tuple[job_pb2.JobResult, list[list[memoryview]]]:
    """The result without its samples, and per PUB its registers' samples (views of `data`;
    empty for a register stored without samples; no entries for an estimator PUB).

    Raises:
        ValueError: `data` is not a canonically stored JobResult.
    """
    samples: list[list[memoryview]] = []
    rest = _strip(memoryview(data), 0, samples)
    try:
        result = job_pb2.JobResult.FromString(rest)
    except DecodeError as exc:
        raise ValueError(f"the stored result does not parse: {exc}") from None
    for pub in result.pub_results:
        # Empty unless a samples field came after a later field, which no canonical
        # serialisation writes (the walk stops at the first field past its path's).
        if any(reg.samples for reg in pub.sampler.registers):
            raise ValueError("a register's samples are out of order: not stored canonically")
    return result, samples


def _strip(message: memoryview, depth: int, samples: list[list[memoryview]]) -> bytes:
    """`message`, at `depth` along _PATH, re-encoded without the samples it holds.

    Fields come in ascending order (canonical serialisation), so the walk ends at the first
    field numbered past the path's and copies the rest whole: a register's counts (one field
    per binding) are never walked in Python.
    """
    out = bytearray()
    copied = 0  # message[copied:] is not in `out` yet
    pos = 0
    seen = False
    wanted = _PATH[depth]
    while pos < len(message):
        start = pos
        key, pos = read_varint(message, pos)
        number, wire = key >> 3, key & 7
        if number > wanted:
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
        if number == wanted:
            _enter(depth, seen, samples)
            seen = True
            out += message[copied:start]
            if depth == _SAMPLES_DEPTH:
                samples[-1][-1] = message[pos:end]
            else:
                inner = _strip(message[pos:end], depth + 1, samples)
                out += encode_varint(key) + encode_varint(len(inner)) + inner
            copied = end
        pos = end
    if pos > len(message):
        raise ValueError("a field runs past its message")
    out += message[copied:]
    return bytes(out)


def _enter(depth: int, seen: bool, samples: list[list[memoryview]]) -> None:
    """Bookkeeping for one field along the path: a PUB, its sampler, a register, samples."""
    if depth == 0:
        samples.append([])  # each pub_results entry is a PUB
    elif depth == 2:
        samples[-1].append(memoryview(b""))  # each registers entry is a register
    elif seen:  # repeated only as merges, which a canonical result never needs
        what = "sampler" if depth == 1 else "samples"
        raise ValueError(f"a {what} field appears twice: the result is not stored canonically")
