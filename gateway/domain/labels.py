"""Job labels (JobSpec.labels): the documented limits, checked before anything is stored."""

from __future__ import annotations

import re
from collections.abc import Mapping

from gateway.domain.errors import FieldViolation, InvalidArgument

MAX_LABELS = 64
LABEL_KEY = re.compile(r"[a-z][a-z0-9_-]{0,62}")
LABEL_VALUE = re.compile(r"[a-z0-9_-]{0,63}")
# Client text quoted in an error is clipped: a key may be megabytes long.
_QUOTE_CHARS = 64


def _quote(text: str) -> str:
    return repr(text if len(text) <= _QUOTE_CHARS else text[:_QUOTE_CHARS] + "...")


def validate_labels(labels: Mapping[str, str], field: str = "spec.labels") -> dict[str, str]:
    """The labels as a plain dict, or INVALID_ARGUMENT (INVALID_LABELS) naming the first problem:
    more than MAX_LABELS labels, a key outside [a-z][a-z0-9_-]{0,62}, a value outside
    [a-z0-9_-]{0,63}. Keys are checked in sorted order, so the error does not depend on the
    order the client sent them in."""
    if len(labels) > MAX_LABELS:
        raise InvalidArgument(
            "INVALID_LABELS",
            f"{field}: {len(labels)} labels; at most {MAX_LABELS}",
            metadata={"labelCount": str(len(labels)), "limit": str(MAX_LABELS)},
            field_violations=[FieldViolation(field, f"at most {MAX_LABELS} labels")],
        )
    for key in sorted(labels):
        value = labels[key]
        if not LABEL_KEY.fullmatch(key):
            raise InvalidArgument(
                "INVALID_LABELS",
                f"{field}: label key {_quote(key)} does not match [a-z][a-z0-9_-]{{0,62}}",
                metadata={"labelKey": key[:_QUOTE_CHARS]},
                field_violations=[
                    FieldViolation(field, f"key {_quote(key)}: must match [a-z][a-z0-9_-]{{0,62}}")
                ],
            )
        if not LABEL_VALUE.fullmatch(value):
            raise InvalidArgument(
                "INVALID_LABELS",
                f"{field}: the value of label {key!r} does not match [a-z0-9_-]{{0,63}}",
                metadata={"labelKey": key},
                field_violations=[
                    FieldViolation(field, f"value of {key!r}: must match [a-z0-9_-]{{0,63}}")
                ],
            )
    return dict(labels)
