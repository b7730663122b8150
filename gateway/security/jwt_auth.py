"""JWT bearer tokens (pyjwt): signature from a key set (JWKS file or URL), issuer, audience,
expiry with clock-skew leeway, and claims mapped to a tenant and a role.

Only asymmetric algorithms are accepted (a shared secret would let every verifier mint tokens);
"none" and HS* are refused by the configuration itself, and a token's `alg` header must be one
the configuration lists before anything else is looked at. Key sets are cached: a file is read
again when it changes, a URL every `jwks_refresh_s` seconds, and a token naming an unknown key
id fetches the URL again at most once per `jwks_min_refetch_s` (a flood of made-up key ids
cannot make the gateway hammer the identity provider).
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import logging
import os
import socket
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jwt
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from gateway.domain.errors import Unauthenticated
from gateway.security.peers import is_loopback_host
from gateway.security.principals import Principal, Role, is_tenant_id
from gateway.setting_bounds import MAX_SECONDS

log = logging.getLogger("gateway.auth")

# Asymmetric JWS algorithms pyjwt (with cryptography) verifies.
ASYMMETRIC_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
_MAX_TOKEN_BYTES = 16 * 1024
_MAX_JWKS_BYTES = 1 << 20
# One key-set fetch, connect to last byte (each socket operation too).
_JWKS_FETCH_S = 10.0
_MAX_SUBJECT = 255


class JwtConfig(BaseModel):
    """`[auth.jwt]`: which tokens are accepted and what their claims mean."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    issuer: str = Field(min_length=1)
    audience: str = Field(min_length=1)
    # Exactly one: a JWKS document on disk, or an https URL serving one.
    jwks_file: Path | None = None
    jwks_url: str | None = None
    algorithms: list[str] = Field(default_factory=lambda: ["RS256", "ES256"], min_length=1)
    # Clock skew tolerated on exp, nbf and iat.
    leeway_s: float = Field(default=30.0, ge=0, le=600)
    # The claim naming the caller's tenant (required in every token).
    tenant_claim: str = "tenant"
    # The claim naming its role (a string or a list of strings); "" gives every token `user`.
    role_claim: str = "role"
    # Claim value -> role, e.g. { "qgw-admins" = "admin" }; empty: the claim holds a role name,
    # "user" or "tenant-admin" (admin is granted only through this mapping).
    # A token whose claim matches several values gets the highest role; none: `user`.
    roles: dict[str, Role] = Field(default_factory=dict)
    jwks_refresh_s: float = Field(default=300.0, gt=0, le=MAX_SECONDS)
    jwks_min_refetch_s: float = Field(default=30.0, gt=0, le=MAX_SECONDS)

    @field_validator("algorithms")
    @classmethod
    def _asymmetric_only(cls, value: list[str]) -> list[str]:
        bad = [a for a in value if a not in ASYMMETRIC_ALGORITHMS]
        if bad:
            raise ValueError(
                f"not accepted: {', '.join(bad)} (only asymmetric algorithms: "
                f"{', '.join(sorted(ASYMMETRIC_ALGORITHMS))}; never 'none' or HS*)"
            )
        return value

    @model_validator(mode="after")
    def _one_key_source(self) -> JwtConfig:
        if (self.jwks_file is None) == (self.jwks_url is None):
            raise ValueError("set exactly one of jwks_file and jwks_url")
        if self.jwks_url is not None:
            url = urllib.parse.urlsplit(self.jwks_url)
            # Keys fetched in plaintext can be replaced by anyone on the path, who could then
            # sign any token, admin included: http only to this host (a local key server).
            local = url.hostname is not None and is_loopback_host(url.hostname)
            if not url.hostname or not (url.scheme == "https" or (url.scheme == "http" and local)):
                raise ValueError(
                    "jwks_url must be an https:// URL (http:// only to this host: localhost, "
                    "127.0.0.0/8 or [::1])"
                )
        return self


def _invalid(why: str) -> Unauthenticated:
    return Unauthenticated("JWT_INVALID", f"the bearer token is not accepted: {why}")


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """Refuses a redirect (an HTTPError): jwks_url was checked (https, or http to this host),
    where it points was not; a loopback key server redirecting to http://another-host had the
    gateway trust keys anyone on the path could write."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


# The deadline of the fetch running on this thread (each runs on a thread of its own).
_fetch = threading.local()


def _shut_at_deadline(sock: socket.socket) -> None:
    """Shuts the fetch's socket down at its deadline: urllib's timeout bounds each socket
    operation only, so a server answering a header line or a byte at a time held the fetch,
    and every JWT call waiting for keys, as long as it liked. A shut socket ends a read that
    is waiting in another thread."""
    timer = threading.Timer(max(0.0, _fetch.deadline - time.monotonic()), _shut, (sock,))
    timer.daemon = True
    timer.start()
    _fetch.timers.append(timer)


def _shut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


class _HTTPConnection(http.client.HTTPConnection):
    """A connection whose socket is shut at its fetch's deadline."""

    def connect(self) -> None:
        super().connect()  # for TLS, the TLS socket (HTTPSConnection.connect, next in line)
        _shut_at_deadline(self.sock)


class _HTTPSConnection(_HTTPConnection, http.client.HTTPSConnection):
    pass


class _HTTPHandler(urllib.request.HTTPHandler):
    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(_HTTPConnection, req)


class _HTTPSHandler(urllib.request.HTTPSHandler):
    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(_HTTPSConnection, req)


# No $http_proxy for plain http (allowed only to this host, whose traffic "crosses no network"):
# urllib's default opener sends even http://127.0.0.1 to the proxy, which then chooses the keys.
# https keeps the environment's proxy (CONNECT: TLS to the key server itself).
_PLAIN_OPENER = urllib.request.build_opener(
    urllib.request.ProxyHandler({}), _NoRedirects(), _HTTPHandler()
)
_TLS_OPENER = urllib.request.build_opener(_NoRedirects(), _HTTPHandler(), _HTTPSHandler())


def _fetch_url(url: str) -> bytes:
    """The key set at `url`, within _JWKS_FETCH_S from connect to last byte."""
    opener = _TLS_OPENER if urllib.parse.urlsplit(url).scheme == "https" else _PLAIN_OPENER
    _fetch.deadline = time.monotonic() + _JWKS_FETCH_S
    _fetch.timers = []
    chunks: list[bytes] = []
    size = 0
    try:
        with opener.open(url, timeout=_JWKS_FETCH_S) as response:
            while chunk := response.read1(1 << 16):
                size += len(chunk)
                if size > _MAX_JWKS_BYTES:
                    raise ValueError("JWKS document larger than 1 MiB")
                chunks.append(chunk)
        if time.monotonic() > _fetch.deadline:  # what a shut socket left may look whole
            raise TimeoutError(f"JWKS fetch took longer than {_JWKS_FETCH_S:g}s")
    finally:
        for timer in _fetch.timers:
            timer.cancel()
    return b"".join(chunks)


# A key and the algorithms it may verify: the one its JWK declares ("alg"), else every
# accepted algorithm of its key type.
_Key = tuple[jwt.PyJWK, frozenset[str]]
_BY_KEY_TYPE = {
    "RSA": frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"}),
    "EC": frozenset({"ES256", "ES384", "ES512"}),
    "OKP": frozenset({"EdDSA"}),
}


def _parse_jwks(data: bytes) -> dict[str, _Key]:
    """Key id -> key; keys that are not asymmetric signing keys are skipped."""
    document = json.loads(data)
    # A document of another shape is refused whole (ValueError: the keys held are kept), as
    # a file rewritten as {"keys": null} had every JWT call end INTERNAL.
    entries = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise ValueError("not a JWK set: an object whose 'keys' is a list of objects")
    keys: dict[str, _Key] = {}
    for entry in entries:
        if entry.get("use", "sig") != "sig" or entry.get("kty") == "oct":
            continue
        try:
            key = jwt.PyJWK(entry)
        except (jwt.PyJWKError, jwt.InvalidKeyError) as exc:
            log.warning("JWKS: skipping key %r: %s", entry.get("kid"), exc)
            continue
        declared = entry.get("alg")
        allowed = _BY_KEY_TYPE.get(str(entry.get("kty")), frozenset())
        if isinstance(declared, str):
            allowed &= {declared}
        keys[str(entry.get("kid", ""))] = (key, allowed)
    return keys


class JwksSource:
    """A cached key set from a file (re-read when it changes) or a URL (re-fetched)."""

    def __init__(
        self,
        config: JwtConfig,
        *,
        fetch: Callable[[str], bytes] = _fetch_url,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._config = config
        self._fetch = fetch
        self._clock = clock
        self._keys: dict[str, _Key] = {}
        self._loaded_at: float | None = None
        self._failed = False
        self._file_stamp: tuple[int, int] | None = None
        self._lock = asyncio.Lock()
        self._refreshing: asyncio.Future[None] | None = None
        if config.jwks_file is not None:
            self._load_file()  # at start: a missing or broken file is a configuration error

    def _load_file(self) -> None:
        path = self._config.jwks_file
        assert path is not None
        stat = path.stat()
        self._keys = _parse_jwks(path.read_bytes())
        self._file_stamp = (stat.st_mtime_ns, stat.st_size)
        self._loaded_at = self._clock()

    def _refresh_file(self) -> None:
        path = self._config.jwks_file
        assert path is not None
        if self._loaded_at is not None and self._clock() - self._loaded_at < 1.0:
            return
        try:
            stat = os.stat(path)
            if (stat.st_mtime_ns, stat.st_size) != self._file_stamp:
                self._load_file()
            else:
                self._loaded_at = self._clock()
        except (OSError, ValueError) as exc:  # keep the keys we have
            log.warning("JWKS file %s could not be read again: %s", path, exc)

    async def _refresh_url(self, *, unknown_kid: bool) -> None:
        url = self._config.jwks_url
        assert url is not None
        async with self._lock:
            now = self._clock()
            if self._loaded_at is not None:
                wait = (
                    self._config.jwks_min_refetch_s
                    if unknown_kid or self._failed
                    else self._config.jwks_refresh_s
                )
                if now - self._loaded_at < wait:
                    return
            self._loaded_at = now  # an attempt: a failing URL is tried once per min_refetch
            try:
                self._keys = _parse_jwks(await asyncio.to_thread(self._fetch, url))
            except Exception as exc:  # keep the keys we have
                self._failed = True
                log.warning("JWKS %s could not be fetched: %s", url, exc)
                return
            self._failed = False

    def _pick(self, kid: str | None) -> _Key | None:
        if kid is None:
            return next(iter(self._keys.values())) if len(self._keys) == 1 else None
        return self._keys.get(kid)

    async def key(self, kid: str | None) -> _Key | None:
        """The key a token names (no kid: the set's only key)."""
        if self._config.jwks_file is not None:
            self._refresh_file()
            return self._pick(kid)
        if self._loaded_at is None or self._clock() - self._loaded_at >= (
            self._config.jwks_refresh_s
        ):
            if not self._keys:
                await self._refresh_url(unknown_kid=False)
            elif self._refreshing is None or self._refreshing.done():
                # Calls go on with the keys they have while the set is fetched again: waiting
                # on it stalled every JWT call for the fetch (up to its 10 s timeout, every
                # min-refetch interval while the provider is down).
                self._refreshing = asyncio.ensure_future(self._refresh_url(unknown_kid=False))
        found = self._pick(kid)
        if found is None:
            await self._refresh_url(unknown_kid=True)
            found = self._pick(kid)
        return found


_ROLE_RANK = {Role.USER: 0, Role.TENANT_ADMIN: 1, Role.ADMIN: 2}


class JwtVerifier:
    """Verifies a JWT and maps its claims to a principal."""

    def __init__(self, config: JwtConfig, keys: JwksSource | None = None) -> None:
        self._config = config
        self._keys = keys if keys is not None else JwksSource(config)
        self._algorithms = frozenset(config.algorithms)

    def _role(self, claims: Mapping[str, Any]) -> Role:
        name = self._config.role_claim
        if not name or name not in claims:
            return Role.USER
        raw = claims[name]
        values = [raw] if isinstance(raw, str) else raw if isinstance(raw, list) else []
        roles = [Role.USER]
        for value in values:
            if not isinstance(value, str):
                continue
            if self._config.roles:
                if value in self._config.roles:
                    roles.append(self._config.roles[value])
            elif value in Role._value2member_map_ and value != Role.ADMIN:
                # Global admin only through an explicit mapping: an identity provider that
                # lets users shape their own claims must not make them admins by default.
                roles.append(Role(value))
        return max(roles, key=_ROLE_RANK.__getitem__)

    async def verify(self, token: str) -> Principal:
        """The principal of a signed token.

        Raises:
            Unauthenticated: JWT_EXPIRED past exp (plus leeway), else JWT_INVALID naming the
                failed check (never the token or its claims).
        """
        if len(token) > _MAX_TOKEN_BYTES:
            raise _invalid("too long")
        try:
            header = jwt.get_unverified_header(token)
        except (jwt.InvalidTokenError, TypeError, ValueError):
            # Not only DecodeError: a `crit` header pyjwt does not support is InvalidTokenError,
            # which escaped as a gateway bug (INTERNAL, a traceback per call, no audit record).
            raise _invalid("malformed") from None
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self._algorithms:
            raise _invalid("signing algorithm not accepted")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise _invalid("malformed key id")
        found = await self._keys.key(kid)
        if found is None:
            raise _invalid("unknown signing key")
        key, allowed = found
        if alg not in allowed:
            raise _invalid("signing algorithm does not match the key")
        config = self._config
        try:
            claims = jwt.decode(
                token,
                key=key.key,
                algorithms=[alg],
                audience=config.audience,
                issuer=config.issuer,
                leeway=config.leeway_s,
                options={"require": ["exp", "iss", "aud", "sub"]},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthenticated("JWT_EXPIRED", "the bearer token has expired") from None
        except jwt.InvalidIssuerError:
            raise _invalid("issuer not accepted") from None
        except jwt.InvalidAudienceError:
            raise _invalid("audience not accepted") from None
        except jwt.InvalidSignatureError:
            raise _invalid("bad signature") from None
        except jwt.ImmatureSignatureError:
            raise _invalid("not valid yet") from None
        except jwt.MissingRequiredClaimError as exc:
            raise _invalid(f"claim {exc.claim!r} missing") from None
        except jwt.InvalidTokenError:
            raise _invalid("malformed") from None
        except (TypeError, ValueError):  # pyjwt's own checks of odd inputs
            raise _invalid("malformed") from None
        tenant = claims.get(config.tenant_claim)
        if not isinstance(tenant, str) or not is_tenant_id(tenant):
            raise _invalid(f"claim {config.tenant_claim!r} missing or not a tenant id")
        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject:
            raise _invalid("claim 'sub' missing")
        # The principal id goes into every audit record: OIDC's bound (255 ASCII characters)
        # keeps it small, and a lone surrogate (JSON's "\\ud800") could not be encoded there,
        # failing the whole batch of records it was written with.
        if len(subject) > _MAX_SUBJECT or not subject.isascii() or not subject.isprintable():
            raise _invalid("claim 'sub' is not a subject identifier (at most 255 ASCII characters)")
        return Principal(
            tenant=tenant,
            id=f"jwt/{config.issuer}#{subject}",
            role=self._role(claims),
            expires_at=_expiry(claims["exp"]),
        )


def _expiry(exp: Any) -> datetime:
    """When a token whose `exp` pyjwt accepted expires (it took `int(exp)`; leeway aside, which
    is for clock skew, not a longer life)."""
    try:
        return datetime.fromtimestamp(int(exp), UTC)
    except (OverflowError, OSError, ValueError):  # past year 9999: as good as never
        return datetime.max.replace(tzinfo=UTC)
