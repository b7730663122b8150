"""Client certificates as identities: the direct peer's (mTLS) or one a trusted mesh sidecar
forwards in `x-forwarded-client-cert` (XFCC, Envoy's format).

Rules (`[[auth.mtls]]`) match a certificate's subject (RFC 2253 string, e.g. "O=acme,CN=ci",
as gRPC and Envoy both print it) or any of its subject alternative names (DNS names, URIs such
as SPIFFE ids, e-mail addresses, IPs) with a shell-style pattern, and name the tenant and role
it acts as; the first matching rule wins. XFCC is believed only when the direct peer's own
certificate matches `auth.trusted_proxies`; the peer's address is never trusted.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase

from pydantic import BaseModel, ConfigDict, Field, model_validator

from gateway.security.principals import Principal, Role

XFCC_HEADER = "x-forwarded-client-cert"
_MAX_XFCC_BYTES = 64 * 1024


@dataclass(frozen=True)
class PeerCert:
    """What identifies a certificate: its subject and its subject alternative names."""

    subject: str
    sans: tuple[str, ...] = ()


class CertMatch(BaseModel):
    """A pattern on a certificate: `subject` or `san` (exactly one), shell-style ("*", "?")."""

    model_config = ConfigDict(extra="forbid", frozen=True)

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
            return (
                cert.subject if cert.subject and fnmatchcase(cert.subject, self.subject) else None
            )
        assert self.san is not None
        return next((s for s in cert.sans if fnmatchcase(s, self.san)), None)


class CertRule(CertMatch):
    """`[[auth.mtls]]`: certificates matching this act as `tenant` with `role`."""

    tenant: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
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


def _split(text: str, sep: str) -> list[str]:
    """Splits at `sep` outside double quotes (a backslash escapes the next character)."""
    parts, current, quoted, escaped = [], [], False, False
    for ch in text:
        if escaped:
            current.append(ch)
            escaped = False
        elif ch == "\\":
            current.append(ch)
            escaped = True
        elif ch == '"':
            current.append(ch)
            quoted = not quoted
        elif ch == sep and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return parts


def _unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        value = value[1:-1]
        out, escaped = [], False
        for ch in value:
            if escaped or ch != "\\":
                out.append(ch)
                escaped = False
            else:
                escaped = True
        return "".join(out)
    return value


def parse_xfcc(header: str) -> PeerCert | None:
    """The client certificate the nearest proxy forwarded: XFCC's last element (Envoy appends
    its own element last), from its Subject, URI and DNS fields. None when it names none."""
    if len(header) > _MAX_XFCC_BYTES:
        return None
    elements = [e for e in _split(header, ",") if e.strip()]
    if not elements:
        return None
    subject, sans = "", []
    for pair in _split(elements[-1], ";"):
        key, sep, value = pair.partition("=")
        if not sep:
            continue
        key = key.strip().lower()
        if key == "subject":
            subject = _unquote(value)
        elif key in ("uri", "dns"):
            sans.append(_unquote(value))
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
