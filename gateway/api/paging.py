"""AIP-158 paging: page sizes and opaque page tokens bound to the request's filters."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json

from gateway.domain.errors import FieldViolation, InvalidArgument

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000


def page_size(requested: int) -> int:
    if requested < 0:
        raise InvalidArgument(
            "INVALID_PAGE_SIZE",
            "page_size must not be negative",
            field_violations=[FieldViolation("page_size", "must be >= 0")],
        )
    return min(requested or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def _filter_digest(filters: str) -> str:
    return hashlib.sha256(filters.encode()).hexdigest()[:16]


def encode_token(cursor: str | int, filters: str) -> str:
    raw = json.dumps({"c": cursor, "f": _filter_digest(filters)}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_token(token: str, filters: str) -> str | int | None:
    """The cursor in `token` ("" -> None); INVALID_ARGUMENT if it is not ours or the filters
    changed since it was issued."""
    if not token:
        return None
    bad = InvalidArgument(
        "INVALID_PAGE_TOKEN",
        "page_token is not a token from a previous response with the same filters",
        field_violations=[FieldViolation("page_token", "invalid or from other filters")],
    )
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise bad from None
    if not isinstance(data, dict) or not hmac.compare_digest(
        str(data.get("f", "")), _filter_digest(filters)
    ):
        raise bad
    cursor = data.get("c")
    if isinstance(cursor, bool) or not isinstance(cursor, (int, str)):
        raise bad
    return cursor
