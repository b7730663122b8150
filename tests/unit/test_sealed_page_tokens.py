"""Sealed page tokens: opaque, bound to tenant, list and query, expiring; a key that survives
restarts."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

import pytest

from gateway.api.paging import (
    KEY_FILE,
    MAX_TOKEN_LENGTH,
    TOKEN_TTL_S,
    PageTokenKeyInvalid,
    PageTokens,
    load_or_create_key,
)
from gateway.domain.errors import InvalidArgument

KEY = bytes(range(32))
CURSOR = b"\x00\x06\x3b\x4a\x00\x00\x00\x2ajob-cursor-0123456789abcdef"


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def _refused(tokens: PageTokens, token: str, **where: str) -> InvalidArgument:
    where = {"kind": "jobs", "tenant": "alice", "query": "", **where}
    with pytest.raises(InvalidArgument) as exc:
        tokens.open(token, **where)
    assert exc.value.reason == "INVALID_PAGE_TOKEN"
    assert [v.field for v in exc.value.field_violations] == ["page_token"]
    return exc.value


def test_a_token_opens_to_its_cursor_for_the_same_tenant_list_and_query() -> None:
    tokens = PageTokens(KEY)
    token = tokens.seal(CURSOR, kind="jobs", tenant="alice", query="state = RUNNING")
    assert tokens.open(token, kind="jobs", tenant="alice", query="state = RUNNING") == CURSOR
    assert tokens.open("", kind="jobs", tenant="alice", query="x") is None
    # Another PageTokens with the same key (a restarted gateway) opens it too.
    assert PageTokens(KEY).open(token, kind="jobs", tenant="alice", query="state = RUNNING")


def test_a_token_is_refused_for_another_tenant_list_query_or_key() -> None:
    tokens = PageTokens(KEY)
    token = tokens.seal(CURSOR, kind="jobs", tenant="alice", query="q")
    _refused(tokens, token, tenant="bob", query="q")
    _refused(tokens, token, tenant="alice", query="q2")
    _refused(tokens, token, kind="backends", query="q")
    _refused(PageTokens(bytes(32)), token, query="q")
    # Length-prefixed context: moving bytes between tenant and query changes the tag.
    t2 = tokens.seal(CURSOR, kind="jobs", tenant="ab", query="c")
    _refused(tokens, t2, tenant="a", query="bc")


def test_every_edited_byte_and_every_truncation_is_refused() -> None:
    tokens = PageTokens(KEY)
    token = tokens.seal(CURSOR, kind="jobs", tenant="alice", query="")
    raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    for i in range(len(raw)):
        for flip in (0x01, 0x80):
            edited = bytearray(raw)
            edited[i] ^= flip
            _refused(tokens, base64.urlsafe_b64encode(bytes(edited)).decode().rstrip("="))
    for n in range(1, len(raw)):  # (n = 0 is the empty token: the first page)
        _refused(tokens, base64.urlsafe_b64encode(raw[:n]).decode().rstrip("="))
    _refused(tokens, token + "A")
    _refused(tokens, token + "=")
    _refused(tokens, token[:-1] + ("B" if token[-1] != "B" else "C"))


@pytest.mark.parametrize(
    "token",
    [
        "garbage!",
        "A" * (MAX_TOKEN_LENGTH + 1),
        "é" * 40,
        "e30",
        base64.urlsafe_b64encode(b'{"c": 1, "f": "x"}').decode(),  # the old readable format
        "AA\nAA",
        "\x00",
    ],
)
def test_garbage_is_refused(token: str) -> None:
    _refused(PageTokens(KEY), token)


def test_tokens_expire_after_24_hours() -> None:
    clock = Clock()
    tokens = PageTokens(KEY, clock=clock)
    token = tokens.seal(CURSOR, kind="jobs", tenant="alice", query="")
    clock.now += TOKEN_TTL_S
    assert tokens.open(token, kind="jobs", tenant="alice", query="") == CURSOR
    clock.now += 1
    assert "expired" in _refused(tokens, token).message
    # A token issued far in the future (a forged clock) is no good either; one issued before
    # the clock stepped back by less than a day still opens (test_clock_steps_review).
    clock.now -= 2 * TOKEN_TTL_S + 3600
    _refused(tokens, token)


def test_tokens_are_opaque_and_reveal_nothing_but_their_size() -> None:
    tokens = PageTokens(KEY)
    a = tokens.seal(CURSOR, kind="jobs", tenant="alice", query="")
    b = tokens.seal(CURSOR, kind="jobs", tenant="alice", query="")
    assert a != b and len(a) == len(b)  # a fresh nonce per token
    for token in (a, b):
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        for piece in (CURSOR[:4], CURSOR[4:8], b"job-cursor"):
            assert piece not in raw
    # Cursors of the same size give tokens of the same size whatever their value.
    c = tokens.seal(bytes(len(CURSOR)), kind="jobs", tenant="alice", query="")
    assert len(c) == len(a)


def test_the_key_is_created_private_once_and_reused(tmp_path: Path) -> None:
    data = tmp_path / "data"
    key = load_or_create_key(data)
    path = data / KEY_FILE
    assert len(key) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_key(data) == key
    assert sorted(p.name for p in data.iterdir()) == [KEY_FILE]  # no temporary file left
    other = tmp_path / "other"
    assert load_or_create_key(other) != key


def test_a_damaged_key_file_stops_the_start(tmp_path: Path) -> None:
    (tmp_path / KEY_FILE).write_bytes(b"short")
    with pytest.raises(PageTokenKeyInvalid, match="32 bytes"):
        load_or_create_key(tmp_path)


def test_a_key_is_created_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        load_or_create_key(tmp_path)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / KEY_FILE).stat().st_mode) == 0o600
