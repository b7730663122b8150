"""Client certificates as identities: the direct peer's (mTLS) or one a trusted mesh sidecar
forwards in `x-forwarded-client-cert` (XFCC, Envoy's format).

Rules (`[[auth.mtls]]`) match a certificate's subject (RFC 2253 string, e.g. "O=acme,CN=ci",
as gRPC and Envoy both print it) or any of its subject alternative names (DNS names, URIs such
as SPIFFE ids, e-mail addresses, IPs) with a shell-style pattern, and name the tenant and role
it acts as; the first matching rule wins. XFCC is believed only when the direct peer's own
certificate matches `auth.trusted_proxies`; the peer's address is never trusted.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field, model_validator

from gateway.security.principals import Principal, Role, TenantId

XFCC_HEADER = "x-forwarded-client-cert"
_MAX_XFCC_BYTES = 64 * 1024


@dataclass(frozen=True)
class PeerCert:
    """What identifies a certificate: its subject and its subject alternative names."""

    subject: str
    sans: tuple[str, ...] = ()


@functools.lru_cache(maxsize=256)
@functools.lru_cache(maxsize=256)
def _glob(pattern: str, one: str) -> re.Pattern[str]:
    """A shell-style pattern whose "?" is the regex `one` and "*" any run of it."""
    parts = []
    for char in pattern:
        if char == "*":
            parts.append(f"(?:{one})*")
        elif char == "?":
            parts.append(f"(?:{one})")
        else:
            parts.append(re.escape(char))
    return re.compile("".join(parts), re.DOTALL)


def _san_pattern(pattern: str) -> re.Pattern[str]:
    """A SAN pattern: "*" and "?" never match "/", "@" or ":", so a wildcard stays inside one
    DNS name or one URI path segment ("*.acme.test" is no URI or e-mail address ending in
    ".acme.test"; "spiffe://acme/*" is not "spiffe://acme/x/admin")."""
    return _glob(pattern, "[^/@:]")


def _subject_pattern(pattern: str) -> re.Pattern[str]:
    """A subject pattern (RFC 2253 text, as gRPC and Envoy print it): "*" and "?" take an
    escaped character with its backslash, never the backslash alone, so the pattern's own
    separators only meet the subject's ("CN=*,O=acme" matched "CN=ci\\,O=acme", one CN of
    "ci,O=acme" that any holder of a certificate from the CA could choose)."""
    return _glob(pattern, r"\\.|[^\\]")


class CertMatch(BaseModel):
    """A pattern on a certificate: `subject` or `san` (exactly one), shell-style ("*", "?");
    in a SAN pattern the wildcards never cross "/", "@" or ":" (see _san_pattern), in a subject
    pattern never split an escaped character (see _subject_pattern)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    subject: str | None = Field(default=None, min_length=1)
    san: str | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _exactly_one(self) -> CertMatch:
        if (self.subject is None) == (self.san is None):
            raise ValueError("set exactly one of subject and san")
        return self

    def matches(self, cert: PeerCert) -> str | None:
        """What matched (the subject or the SAN), or None."""
        if self.subject is not None:
            matched = cert.subject and _subject_pattern(self.subject).fullmatch(cert.subject)
            return cert.subject if matched else None
        assert self.san is not None
        pattern = _san_pattern(self.san)
        return next((s for s in cert.sans if pattern.fullmatch(s)), None)


class CertRule(CertMatch):
    """`[[auth.mtls]]`: certificates matching this act as `tenant` with `role`."""

    tenant: TenantId
    role: Role = Role.USER


def _text(values: Sequence[bytes] | None) -> list[str]:
    return [v.decode(errors="replace") for v in values or ()]


def peer_cert(auth_context: Mapping[str, Sequence[bytes]]) -> PeerCert | None:
    """The direct peer's verified client certificate (gRPC's auth context), if any."""
    subjects = _text(auth_context.get("x509_subject"))
    sans = _text(auth_context.get("x509_subject_alternative_name"))
    if not subjects and not sans:
        return None
    return PeerCert(subjects[0] if subjects else "", tuple(sans))


class XfccMalformed(ValueError):
    """An XFCC header that does not follow Envoy's grammar (or is too long)."""


def _elements(header: str) -> list[list[tuple[str, str]]]:
    """XFCC's elements, each a list of (lower-case key, value) pairs, parsed strictly:
    element := pair (";" pair)*, elements joined by ","; pair := key "=" value; a value is
    either unquoted (no `,;"\\`) or a whole double-quoted string (a backslash escapes the next
    character) followed by a separator or the end.

    Strict on purpose: behind a proxy that appends its element to one the client sent
    (Envoy's APPEND_FORWARD), a lenient split lets a client's unbalanced quote swallow the
    proxy's element and leave the client's own Subject/URI as the "last" element.

    Raises:
        XfccMalformed: Anything else.
    """
    elements: list[list[tuple[str, str]]] = []
    pairs: list[tuple[str, str]] = []
    i, n = 0, len(header)
    while True:
        eq = header.find("=", i)
        if eq < 0:
            raise XfccMalformed("a pair without '='")
        key = header[i:eq].strip()
        if not key or any(c in key for c in ',;"\\ '):
            raise XfccMalformed("a bad key")
        i = eq + 1
        if i < n and header[i] == '"':
            out: list[str] = []
            i += 1
            while True:
                if i >= n:
                    raise XfccMalformed("an unterminated quoted value")
                ch = header[i]
                if ch == "\\":
                    if i + 1 >= n:
                        raise XfccMalformed("a dangling escape")
                    # Only a quote is unescaped: the rest is the subject's own RFC 2253 text
                    # ("CN=ci\\,O=acme" is one CN; unescaped, it read as the subject CN=ci,O=acme).
                    if header[i + 1] != '"':
                        out.append(ch)
                    out.append(header[i + 1])
                    i += 2
                elif ch == '"':
                    i += 1
                    break
                else:
                    out.append(ch)
                    i += 1
            value = "".join(out)
        else:
            j = i
            while j < n and header[j] not in ",;":
                if header[j] in '"\\':
                    raise XfccMalformed("a quote or escape inside an unquoted value")
                j += 1
            value, i = header[i:j], j
        pairs.append((key.lower(), value))
        while i < n and header[i] == " ":
            i += 1
        if i >= n:
            elements.append(pairs)
            return elements
        sep = header[i]
        if sep not in ",;":
            raise XfccMalformed("text after a quoted value")
        i += 1
        if sep == ",":
            elements.append(pairs)
            pairs = []


def parse_xfcc(header: str) -> PeerCert | None:
    """The client certificate the nearest proxy forwarded: XFCC's last element (Envoy appends
    its own element last), from its Subject, URI and DNS fields. None when it names none.

    Raises:
        XfccMalformed: The header is not well-formed XFCC (or longer than 64 KiB).
    """
    if len(header) > _MAX_XFCC_BYTES:
        raise XfccMalformed("longer than 64 KiB")
    if not header.strip():
        return None
    subject, sans = "", []
    for key, value in _elements(header)[-1]:
        if key == "subject":
            subject = value
        elif key in ("uri", "dns"):
            sans.append(value)
    if not subject and not sans:
        return None
    return PeerCert(subject, tuple(sans))


class CertMapper:
    """Maps certificates to principals by the first matching rule."""

    def __init__(self, rules: Iterable[CertRule]) -> None:
        self._rules = tuple(rules)

    def __bool__(self) -> bool:
        return bool(self._rules)

    def principal(self, cert: PeerCert) -> Principal | None:
        for rule in self._rules:
            matched = rule.matches(cert)
            if matched is not None:
                who = cert.subject or matched
                return Principal(tenant=rule.tenant, id=f"cert/{who}", role=rule.role)
        return None


def is_trusted(cert: PeerCert | None, proxies: Sequence[CertMatch]) -> bool:
    """Whether the direct peer is a proxy whose XFCC header is believed."""
    return cert is not None and any(p.matches(cert) is not None for p in proxies)
