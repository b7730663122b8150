"""AIP-158 paging: page sizes and opaque page tokens bound to the request's filters."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json

from gateway.domain.errors import FieldViolation, InvalidArgument

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
# Tokens we issue are under 100 characters; the bound keeps decoding linear and shallow (a
# token of deeply nested JSON would make json.loads recurse until RecursionError).
MAX_TOKEN_LENGTH = 1024
# Integer cursors are store positions: SQLite integers are signed 64-bit.
_CURSOR_MIN, _CURSOR_MAX = -(2**63), 2**63 - 1


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
    """The cursor in `token` ("" -> None); INVALID_ARGUMENT (INVALID_PAGE_TOKEN) for anything
    that is not a token we issued for these filters, whatever its content."""
    if not token:
        return None
    bad = InvalidArgument(
        "INVALID_PAGE_TOKEN",
        "page_token is not a token from a previous response with the same filters",
        field_violations=[FieldViolation("page_token", "invalid or from other filters")],
    )
    if len(token) > MAX_TOKEN_LENGTH:
        raise bad
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise bad from None
    # Compared as bytes: compare_digest refuses str with non-ASCII characters (TypeError).
    if not isinstance(data, dict) or not hmac.compare_digest(
        str(data.get("f", "")).encode(), _filter_digest(filters).encode()
    ):
        raise bad
    cursor = data.get("c")
    if isinstance(cursor, bool) or not isinstance(cursor, (int, str)):
        raise bad
    if isinstance(cursor, int) and not _CURSOR_MIN <= cursor <= _CURSOR_MAX:
        raise bad
    return cursor
