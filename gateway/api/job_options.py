"""JobOptions.provider_options, which needs more than a range check.

It is bounded here, at the API edge, in linear time on what the client sent: a
provider_options Struct must serialise to at most MAX_PROVIDER_OPTIONS_BYTES and nest at most
MAX_PROVIDER_OPTIONS_DEPTH levels, with finite numbers only. What the keys mean is each
backend's business: its adapter validates the decoded options against its own schema
(BackendAdapter.provider_options_model).
"""

from __future__ import annotations

import json
import math
import re

from google.protobuf import struct_pb2

from gateway.domain.errors import FieldViolation, InvalidArgument

__all__ = [
    "MAX_PROVIDER_OPTIONS_BYTES",
    "MAX_PROVIDER_OPTIONS_DEPTH",
    "decode_provider_options",
    "option_field",
]

MAX_PROVIDER_OPTIONS_BYTES = 16 * 1024
# The options Struct itself is level 1; each nested Struct or list adds one.
MAX_PROVIDER_OPTIONS_DEPTH = 8
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
_MAX_KEY_CHARS = 64


def _invalid(reason: str, message: str, field: str, **metadata: object) -> InvalidArgument:
    return InvalidArgument(
        reason,
        message,
        metadata={key: str(value) for key, value in metadata.items()},
        field_violations=[FieldViolation(field, message)],
    )


def option_field(field: str, key: str) -> str:
    """The field path of one option: `field.key`, or `field["key"]` when the key is not an
    identifier (quoted as JSON, so no client text can break the path); long keys clipped."""
    if _IDENTIFIER.fullmatch(key):
        return f"{field}.{key}"
    quoted = json.dumps(key[:_MAX_KEY_CHARS] + ("..." if len(key) > _MAX_KEY_CHARS else ""))
    return f"{field}[{quoted}]"


def _too_deep(field: str) -> InvalidArgument:
    return _invalid(
        "INVALID_PROVIDER_OPTIONS",
        f"provider_options nest deeper than {MAX_PROVIDER_OPTIONS_DEPTH} levels",
        field,
        limit="max_provider_options_depth",
        maximum=MAX_PROVIDER_OPTIONS_DEPTH,
    )


def _value(msg: struct_pb2.Value, field: str, depth: int) -> object:
    kind = msg.WhichOneof("kind")
    if kind == "null_value":
        return None
    if kind == "bool_value":
        return msg.bool_value
    if kind == "string_value":
        return msg.string_value
    if kind == "number_value":
        number = msg.number_value
        if not math.isfinite(number):
            raise _invalid(
                "INVALID_PROVIDER_OPTIONS", "provider option numbers must be finite", field
            )
        return number
    if kind == "struct_value":
        return _struct(msg.struct_value, field, depth + 1)
    if kind == "list_value":
        if depth + 1 > MAX_PROVIDER_OPTIONS_DEPTH:
            raise _too_deep(field)
        return [
            _value(item, f"{field}[{i}]", depth + 1) for i, item in enumerate(msg.list_value.values)
        ]
    raise _invalid("INVALID_PROVIDER_OPTIONS", "a provider option value has no kind set", field)


def _struct(msg: struct_pb2.Struct, field: str, depth: int) -> dict[str, object]:
    # Checked before descending: the recursion is at most MAX_PROVIDER_OPTIONS_DEPTH deep.
    if depth > MAX_PROVIDER_OPTIONS_DEPTH:
        raise _too_deep(field)
    return {
        key: _value(value, option_field(field, key), depth) for key, value in msg.fields.items()
    }


def decode_provider_options(msg: struct_pb2.Struct, field: str) -> dict[str, object]:
    """The options as JSON values (dict, list, str, float, bool, None).

    Raises:
        InvalidArgument: INVALID_PROVIDER_OPTIONS above the size or depth limit (metadata
            `limit`, `value`, `maximum`), or for a non-finite number or an unset value.
    """
    # ByteSize is computed by the protobuf runtime on a message it already parsed (its own
    # recursion limit bounds how deep that can be), so it is safe before the depth check.
    size = msg.ByteSize()
    if size > MAX_PROVIDER_OPTIONS_BYTES:
        raise _invalid(
            "INVALID_PROVIDER_OPTIONS",
            f"provider_options are {size} bytes serialised; the limit is "
            f"{MAX_PROVIDER_OPTIONS_BYTES}",
            field,
            limit="max_provider_options_bytes",
            value=size,
            maximum=MAX_PROVIDER_OPTIONS_BYTES,
        )
    return _struct(msg, field, 1)
