"""AIP-158 paging: page sizes, pages cut to the response limit, and sealed page tokens.

A page token (PageTokens) is opaque, authenticated and bound to what it was issued for:

    token  = base64url(version || nonce || AES-256-GCM(key, nonce, plaintext, aad)), no padding
    version = 0x02; nonce = 12 random bytes
    plaintext = issued_at (uint64 big-endian, Unix seconds) || cursor (the list's own bytes)
    aad = version || the list kind, the tenant and the SHA-256 of the normalised query, each
          length-prefixed
    key = 32 random bytes in the data directory

Authenticated encryption (the `cryptography` package's AESGCM, not a home-made construction):
the tag binds the token to its list, tenant and query and is checked before anything is used;
the cursor holds nothing but the tenant's own data (the last item of the page it was issued
with), and the encryption keeps even that unreadable (AIP-158: tokens are opaque). With 96-bit
random nonces one key seals far more than 2**32 tokens before a collision becomes plausible; a
deployment that issues more rotates the key file. A token is valid for TOKEN_TTL_S after it was
issued; a
tampered, foreign (another tenant, list or query), expired or malformed token is
INVALID_ARGUMENT, reason INVALID_PAGE_TOKEN.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import os
import secrets
import struct
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from google.protobuf.message import Message

from gateway.domain.errors import FieldViolation, InvalidArgument

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
# server.max_response_bytes' default: what a list servicer built without it cuts pages at.
DEFAULT_MAX_RESPONSE_BYTES = 4 * 1024 * 1024 - 64 * 1024
# Room kept in a list response for its page token and framing.
PAGE_FRAMING_BYTES = 1024
# A repeated message field's tag and length prefix.
_FIELD_FRAMING_BYTES = 6
M = TypeVar("M", bound=Message)
# Tokens we issue are under 200 characters; anything longer is refused before decoding.
MAX_TOKEN_LENGTH = 1024


def page_size(requested: int) -> int:
    if requested < 0:
        raise InvalidArgument(
            "INVALID_PAGE_SIZE",
            "page_size must not be negative",
            field_violations=[FieldViolation("page_size", "must be >= 0")],
        )
    return min(requested or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


_Item = TypeVar("_Item")
_Cursor = TypeVar("_Cursor")


def within_response(
    items: Sequence[_Item],
    next_cursor: _Cursor | None,
    max_response: int,
    encode: Callable[[_Item], M],
    cursor_after: Callable[[_Item], _Cursor],
) -> tuple[list[M], _Cursor | None]:
    """The page's items, encoded, that fit a response of `max_response` bytes (at least one),
    and the cursor to go on from: after the last one sent when the page was cut, else the
    store's `next_cursor`. An item can carry 64 labels (a job also a layout per PUB), so a
    page of 1000 outgrew the largest message the gateway sends (gRPC would fail it with a
    bare RESOURCE_EXHAUSTED). Nothing past the cut is encoded."""
    budget = max_response - PAGE_FRAMING_BYTES
    encoded: list[M] = []
    used = 0
    for index, item in enumerate(items):
        message = encode(item)
        size = message.ByteSize() + _FIELD_FRAMING_BYTES
        if encoded and used + size > budget:
            return encoded, cursor_after(items[index - 1])
        encoded.append(message)
        used += size
    return encoded, next_cursor


# ----------------------------------------------------------------------------- sealed tokens

TOKEN_TTL_S = 24 * 3600
KEY_FILE = "page-token.key"
KEY_BYTES = 32
_VERSION = b"\x02"
_NONCE_BYTES = 12
_TAG_BYTES = 16
_ISSUED = struct.Struct(">Q")
_MIN_RAW = len(_VERSION) + _NONCE_BYTES + _ISSUED.size + _TAG_BYTES


class PageTokenKeyInvalid(Exception):
    """The data directory's page-token key is not one (its operator's to fix)."""


def load_or_create_key(data_dir: Path) -> bytes:
    """The page-token key in `data_dir`, created (32 random bytes, mode 0600) on first start.

    The key is written to a temporary file and linked into place, so a crash can never leave a
    truncated key behind and two processes starting at once agree on one key.

    Raises:
        RuntimeError: When the key file exists with the wrong size (it was not written by us).
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / KEY_FILE
    if not path.exists():
        tmp = data_dir / f".{KEY_FILE}.{os.getpid()}.{secrets.token_hex(4)}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(secrets.token_bytes(KEY_BYTES))
                out.flush()
                os.fsync(out.fileno())
            with contextlib.suppress(FileExistsError):  # another process won the race
                os.link(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        dir_fd = os.open(data_dir, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    key = path.read_bytes()
    if len(key) != KEY_BYTES:
        raise PageTokenKeyInvalid(
            f"{path}: a page-token key is {KEY_BYTES} bytes, found {len(key)}; delete the file "
            "to make a new one (outstanding page tokens become invalid)"
        )
    return key


def invalid_page_token(problem: str = "invalid") -> InvalidArgument:
    return InvalidArgument(
        "INVALID_PAGE_TOKEN",
        "page_token is not a token from a previous response to this caller for the same query "
        f"({problem}); list again without a page_token",
        field_violations=[FieldViolation("page_token", problem)],
    )


def _prefixed(*parts: bytes) -> bytes:
    return b"".join(struct.pack(">I", len(p)) + p for p in parts)


class PageTokens:
    """Seals list cursors into page tokens and opens them again.

    Args:
        key: 32 secret bytes (load_or_create_key).
        clock: Seconds since the epoch (injectable for tests of expiry).
    """

    def __init__(self, key: bytes, *, clock: Callable[[], float] = time.time) -> None:
        if len(key) != KEY_BYTES:
            raise ValueError(f"a page-token key is {KEY_BYTES} bytes")
        self._aead = AESGCM(key)
        self._clock = clock

    @staticmethod
    def _aad(kind: str, tenant: str, query: str) -> bytes:
        return _VERSION + _prefixed(
            kind.encode(), tenant.encode(), hashlib.sha256(query.encode()).digest()
        )

    def seal(self, cursor: bytes, *, kind: str, tenant: str, query: str) -> str:
        """A token for `cursor`, valid only for this list kind, tenant and normalised query."""
        nonce = secrets.token_bytes(_NONCE_BYTES)
        plain = _ISSUED.pack(int(self._clock())) + cursor
        sealed = self._aead.encrypt(nonce, plain, self._aad(kind, tenant, query))
        return base64.urlsafe_b64encode(_VERSION + nonce + sealed).decode("ascii").rstrip("=")

    def open(self, token: str, *, kind: str, tenant: str, query: str) -> bytes | None:
        """The cursor sealed in `token` ("" -> None: the first page).

        Raises:
            InvalidArgument: reason INVALID_PAGE_TOKEN, for anything but an unexpired token
                sealed by this key for this kind, tenant and query.
        """
        if not token:
            return None
        if len(token) > MAX_TOKEN_LENGTH or not token.isascii():
            raise invalid_page_token()
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        except (binascii.Error, ValueError):
            raise invalid_page_token() from None
        # urlsafe_b64decode skips characters outside the alphabet: re-encode to refuse them.
        if base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=") != token:
            raise invalid_page_token()
        if len(raw) < _MIN_RAW or raw[:1] != _VERSION:
            raise invalid_page_token()
        nonce, sealed = raw[1 : 1 + _NONCE_BYTES], raw[1 + _NONCE_BYTES :]
        try:
            plain = self._aead.decrypt(nonce, sealed, self._aad(kind, tenant, query))
        except InvalidTag:
            raise invalid_page_token() from None
        (issued,) = _ISSUED.unpack_from(plain)
        now = self._clock()
        if now - issued > TOKEN_TTL_S:
            raise invalid_page_token("expired: tokens are valid for 24 hours")
        # A token from the future: a replica's clock ahead, or this clock stepped back (an
        # NTP correction) since it was issued, mid-listing; refused (with only 300 s allowed)
        # that made the caller's own next page INVALID_PAGE_TOKEN. Accepted within a day, as
        # a token that old is: a forged clock still cannot make one live for ever.
        if issued > now + TOKEN_TTL_S:
            raise invalid_page_token()
        return plain[_ISSUED.size :]
