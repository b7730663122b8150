"""Page tokens refuse whatever a client makes up; Run's wait ends just before the deadline."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime

import pytest

from gateway.api.job_service import _job_cursor, _job_cursor_from, run_wait_timeout
from gateway.api.paging import MAX_TOKEN_LENGTH, PageTokens
from gateway.domain.errors import InvalidArgument
from gateway.store.base import JobCursor

TOKENS = PageTokens(bytes(range(32)))


def _token(data: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")


@pytest.mark.parametrize(
    "token",
    [
        # What the old readable tokens looked like: no longer accepted, whatever they hold.
        _token({"c": 2**63, "f": "2d711642b726b044"}),
        _token({"c": -(2**63) - 1, "f": "2d711642b726b044"}),
        _token({"c": 1, "f": "\u00e9"}),
        _token({"c": True, "f": "2d711642b726b044"}),
        base64.urlsafe_b64encode(b"[" * 5000).decode(),
        "A" * (MAX_TOKEN_LENGTH + 1),
        "not base64 at all!",
    ],
    ids=["2**63", "below-int64", "non-ascii-digest", "bool", "nested", "long", "garbage"],
)
def test_malformed_tokens_are_invalid_page_token(token: str) -> None:
    with pytest.raises(InvalidArgument) as exc:
        TOKENS.open(token, kind="jobs", tenant="t", query="x")
    assert exc.value.reason == "INVALID_PAGE_TOKEN"


@pytest.mark.parametrize(
    "cursor",
    [
        JobCursor(datetime(1, 1, 1, tzinfo=UTC), "a"),
        JobCursor(datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC), "f" * 32),
        JobCursor(datetime(2026, 1, 1, tzinfo=UTC), "é-id"),
    ],
)
def test_job_cursors_round_trip_through_sealed_tokens(cursor: JobCursor) -> None:
    token = TOKENS.seal(_job_cursor(cursor), kind="jobs", tenant="t", query="x")
    sealed = TOKENS.open(token, kind="jobs", tenant="t", query="x")
    assert sealed is not None and _job_cursor_from(sealed) == cursor


@pytest.mark.parametrize(
    "data", [b"", b"\x00" * 8, (2**63 - 1).to_bytes(8, "big") + b"x", b"\x00" * 8 + b"\xff"]
)
def test_cursor_bytes_we_never_seal_are_invalid_page_token(data: bytes) -> None:
    with pytest.raises(InvalidArgument) as exc:
        _job_cursor_from(data)
    assert exc.value.reason == "INVALID_PAGE_TOKEN"


@pytest.mark.parametrize(
    ("remaining", "expected"),
    [(0.03, 0.027), (0.05, 0.045), (0.5, 0.45), (10.0, 9.95), (0.0, 0.0)],
)
def test_run_waits_until_just_before_the_deadline(remaining: float, expected: float) -> None:
    assert run_wait_timeout(remaining, 60.0) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("remaining", "expected"), [(None, 60.0), (3600.0, 60.0), (60.0, 59.95), (60.06, 60.0)]
)
def test_run_waits_at_most_the_server_limit(remaining: float | None, expected: float) -> None:
    # No deadline, or a longer one, still answers once the server's Run wait limit passes.
    assert run_wait_timeout(remaining, 60.0) == pytest.approx(expected)
