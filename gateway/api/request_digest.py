"""The canonical digest of a job request: what "the same request" means for request_id (AIP-155).

Deterministic protobuf serialisation is not a canonical form (its bytes differ across languages
and library versions, and "aer" and "backends/aer" are different bytes for the same request),
so the digest is computed over a canonical JSON text this module defines:

* The request is the JobSpec (SubmitJob and Run with the same request_id name the same job, so
  the RPC is not part of it). The text is the UTF-8 bytes of
  `{"spec":<JobSpec>,"v":1}`; the digest is its SHA-256.
* A message is a JSON object whose keys are field NUMBERS as decimal strings (numbers, unlike
  names, are part of the wire contract), sorted as strings; JSON is written with no whitespace
  and every non-ASCII character escaped as \\uXXXX (Python's `json.dumps(..., sort_keys=True,
  separators=(",", ":"), ensure_ascii=True)`).
* Fields holding their proto default are omitted, so an unset field and a field set to its
  default hash the same, and a field added to the proto later changes no existing digest:
  scalars equal to 0, "", false or enum value 0; empty repeated fields and maps; a singular
  message field (outside a oneof) whose own encoding is empty ({}). Fields with explicit presence
  (proto3 `optional`, oneof members) are kept whenever they are set, even to 0 ("seed 0 is a
  seed"); a oneof member message is kept even when empty.
* Documented defaults of the proto are applied, never configured ones: JobOptions.sampler_output
  SAMPLER_OUTPUT_SAMPLES_AND_COUNTS is written as the default SAMPLER_OUTPUT_UNSPECIFIED (the
  proto says they mean the same). Defaults that depend on configuration (a backend's default
  shots) are not resolved: an unset value stays unset.
* Resource names are written in full form: JobSpec.backend and JobOptions.fallback_backend as
  "backends/{backend}", JobSpec.session as "sessions/{session}" (the prefix is added when the
  caller sent a bare id).
* Values: integers as JSON integers; bools as true/false; strings as JSON strings; bytes as
  standard padded base64; enums as their number; a double as the 16 lowercase hex digits of its
  IEEE-754 binary64 big-endian bits, with -0.0 written as 0.0 and every NaN as 0x7ff8000000000000;
  a repeated double as ONE string, the base64 of the concatenated big-endian binary64 values
  (normalised the same way), because sweeps can hold hundreds of thousands of values; other
  repeated fields as JSON arrays in order; maps as JSON objects keyed by the map key as a
  string (so map order is irrelevant).
* Unknown fields are not part of the request: only fields of the descriptor are read.

The digest is computed before validation (a retry must find its job even if the request would
no longer validate), so it accepts any message that decoded and does work linear in its size.
"""

from __future__ import annotations

import base64
import hashlib
import json
import struct
from collections.abc import Iterator
from typing import Any

import numpy as np
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from qgateway.v1 import job_pb2

DIGEST_VERSION = 1

_BACKEND_FIELDS = frozenset(
    {"qgateway.v1.JobSpec.backend", "qgateway.v1.JobOptions.fallback_backend"}
)
_SESSION_FIELDS = frozenset({"qgateway.v1.JobSpec.session"})
_SAMPLER_OUTPUT = "qgateway.v1.JobOptions.sampler_output"
_DEFAULT_SAMPLER_OUTPUTS = (
    job_pb2.SAMPLER_OUTPUT_UNSPECIFIED,
    job_pb2.SAMPLER_OUTPUT_SAMPLES_AND_COUNTS,
)
_CANONICAL_NAN = b"\x7f\xf8\x00\x00\x00\x00\x00\x00"
# Array elements written per json.dumps call (see _pieces).
_SLICE = 1000


def _full_name(value: str, prefix: str) -> str:
    return value if value.startswith(prefix) else prefix + value


def _double(value: float) -> str:
    if value != value:  # NaN: one encoding for every payload
        return _CANONICAL_NAN.hex()
    return struct.pack(">d", value + 0.0).hex()  # + 0.0 turns -0.0 into 0.0


def _doubles(values: Any) -> str:
    arr = np.asarray(values, dtype=np.float64) + 0.0
    arr[np.isnan(arr)] = np.nan
    return base64.b64encode(arr.astype(">f8").tobytes()).decode("ascii")


def _scalar(field: FieldDescriptor, value: Any) -> Any:
    t = field.type
    if t in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return _double(float(value))
    if t == FieldDescriptor.TYPE_BYTES:
        return base64.b64encode(value).decode("ascii")
    if t == FieldDescriptor.TYPE_STRING:
        if field.full_name in _BACKEND_FIELDS and value:
            return _full_name(value, "backends/")
        if field.full_name in _SESSION_FIELDS and value:
            return _full_name(value, "sessions/")
        return value
    if t == FieldDescriptor.TYPE_BOOL:
        return bool(value)
    return int(value)  # integers and enums (by number)


def _is_zero(field: FieldDescriptor, value: Any) -> bool:
    """Whether an implicit-presence scalar holds its proto default (-0.0 counts as 0.0)."""
    if field.type in (FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_BYTES):
        return len(value) == 0
    return bool(value == 0)


def _in_real_oneof(field: FieldDescriptor) -> bool:
    """A member of a declared oneof; proto3 `optional` fields sit in a synthetic oneof of one
    member named "_<field>", which protobuf's Python API does not flag otherwise."""
    oneof = field.containing_oneof
    if oneof is None:
        return False
    return not (len(oneof.fields) == 1 and oneof.name == "_" + field.name)


def _value(field: FieldDescriptor, value: Any) -> Any:
    if field.type in (FieldDescriptor.TYPE_MESSAGE, FieldDescriptor.TYPE_GROUP):
        return _message(value)
    return _scalar(field, value)


def _message(msg: Message) -> dict[str, Any]:
    out: dict[str, Any] = {}
    # ListFields: only the fields that are set (implicit-presence scalars: only non-zero ones),
    # and only fields of the descriptor (unknown fields never appear).
    for field, value in msg.ListFields():
        key = str(field.number)
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            key_field = field.message_type.fields_by_name["key"]
            value_field = field.message_type.fields_by_name["value"]
            entries = {str(_scalar(key_field, k)): _value(value_field, v) for k, v in value.items()}
            if entries:
                out[key] = entries
        elif field.is_repeated:
            if len(value) == 0:
                continue
            if field.type in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
                # Read as an array straight from the container: a list of 1.9M floats first
                # cost 0.17 s (0.05 s without), holding the interpreter lock throughout.
                out[key] = _doubles(value)
            else:
                out[key] = [_value(field, v) for v in value]
        elif field.type in (FieldDescriptor.TYPE_MESSAGE, FieldDescriptor.TYPE_GROUP):
            encoded = _message(value)
            # An empty message is the field's default, except as the chosen member of a oneof
            # (Pub.sampler set to an empty SamplerPub is not "no PUB kind").
            if encoded or _in_real_oneof(field):
                out[key] = encoded
        elif field.full_name == _SAMPLER_OUTPUT and value in _DEFAULT_SAMPLER_OUTPUTS:
            continue  # the proto documents SAMPLES_AND_COUNTS as what UNSPECIFIED means
        elif field.has_presence or not _is_zero(field, value):
            out[key] = _scalar(field, value)
    return out


def _dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def _pieces(value: Any) -> Iterator[str]:
    """`_dumps(value)` in pieces that concatenate to exactly its text. One json.dumps of a
    request holding 500,000 Pauli terms held the interpreter lock for ~0.35 s (one C call, so
    even in a thread it stopped the event loop); long arrays are written in slices instead."""
    if isinstance(value, dict):
        yield "{"
        for i, key in enumerate(sorted(value)):
            yield f"{',' if i else ''}{_dumps(key)}:"
            yield from _pieces(value[key])
        yield "}"
    elif isinstance(value, list):
        yield "["
        if len(value) > _SLICE:
            for start in range(0, len(value), _SLICE):
                # "[a,b]" less its brackets is the slice's part of the array's text.
                yield ("," if start else "") + _dumps(value[start : start + _SLICE])[1:-1]
        else:
            for i, item in enumerate(value):
                if i:
                    yield ","
                yield from _pieces(item)
        yield "]"
    else:
        yield _dumps(value)


def _canonical_pieces(spec: job_pb2.JobSpec) -> Iterator[str]:
    return _pieces({"spec": _message(spec), "v": DIGEST_VERSION})


def canonical_spec(spec: job_pb2.JobSpec) -> bytes:
    """The canonical text of a JobSpec (see the module docstring), as UTF-8 bytes."""
    return "".join(_canonical_pieces(spec)).encode("ascii")


def request_digest(spec: job_pb2.JobSpec) -> bytes:
    """SHA-256 of the canonical text of the request's JobSpec (32 bytes)."""
    digest = hashlib.sha256()
    for piece in _canonical_pieces(spec):
        digest.update(piece.encode("ascii"))
    return digest.digest()
