"""Page tokens refuse whatever a client makes up; Run's wait ends just before the deadline."""

from __future__ import annotations

import base64
import json

import pytest

from gateway.api.job_service import run_wait_timeout
from gateway.api.paging import MAX_TOKEN_LENGTH, decode_token, encode_token
from gateway.domain.errors import InvalidArgument


def _token(data: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")


def _digest_of(filters: str) -> str:
    data = json.loads(base64.urlsafe_b64decode(encode_token(0, filters) + "=="))
    digest: str = data["f"]
    return digest


@pytest.mark.parametrize(
    "token",
    [
        _token({"c": 2**63, "f": _digest_of("x")}),
        _token({"c": -(2**63) - 1, "f": _digest_of("x")}),
        _token({"c": 1, "f": "\u00e9"}),
        _token({"c": True, "f": _digest_of("x")}),
        base64.urlsafe_b64encode(b"[" * 5000).decode(),
        "A" * (MAX_TOKEN_LENGTH + 1),
        "not base64 at all!",
    ],
    ids=["2**63", "below-int64", "non-ascii-digest", "bool", "nested", "long", "garbage"],
)
def test_malformed_tokens_are_invalid_page_token(token: str) -> None:
    with pytest.raises(InvalidArgument) as exc:
        decode_token(token, "x")
    assert exc.value.reason == "INVALID_PAGE_TOKEN"


def test_issued_tokens_round_trip_at_the_int64_edges() -> None:
    for cursor in (2**63 - 1, -(2**63), 0, "name"):
        assert decode_token(encode_token(cursor, "x"), "x") == cursor


@pytest.mark.parametrize(
    ("remaining", "expected"),
    [(None, None), (0.03, 0.027), (0.05, 0.045), (0.5, 0.45), (10.0, 9.95), (0.0, 0.0)],
)
def test_run_waits_until_just_before_the_deadline(
    remaining: float | None, expected: float | None
) -> None:
    got = run_wait_timeout(remaining)
    assert got == expected if expected is None else got == pytest.approx(expected)
