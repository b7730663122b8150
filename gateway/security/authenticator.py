"""Who is calling, from what arrives with a call: the mTLS identity (the direct peer's, or one
a trusted proxy forwards in XFCC), then a bearer credential (a JWT, or a `qgw_` API key).

Order, and why:
1. `x-forwarded-client-cert` present: believed only when the direct peer's own certificate
   matches `auth.trusted_proxies`; from anyone else the call is refused
   FORWARDED_IDENTITY_UNTRUSTED (refused, not ignored: a client that sends the header expects
   it to count, and a refusal shows the misconfiguration or the attempt in the audit log).
   A forwarded certificate that an `[[auth.mtls]]` rule maps is the caller.
2. The direct peer's certificate, when a rule maps it.
3. `authorization: Bearer <token>`: a token starting `qgw_` is an API key, anything else a JWT
   (when `[auth.jwt]` is configured). Two such headers, another scheme or an empty token:
   AUTHORIZATION_INVALID.
4. Nothing: API_KEY_MISSING, or CERTIFICATE_NOT_MAPPED when a certificate came without a rule.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from gateway.domain.errors import GatewayError, Unauthenticated
from gateway.security.api_keys import KEY_PREFIX, METADATA_KEY, KeyVerifier, key_prefix
from gateway.security.jwt_auth import JwtVerifier
from gateway.security.mtls import (
    XFCC_HEADER,
    CertMapper,
    CertMatch,
    PeerCert,
    XfccMalformed,
    is_trusted,
    parse_xfcc,
    peer_cert,
)
from gateway.security.principals import Principal

Metadata = Iterable[tuple[str, str | bytes]]
AuthContext = Mapping[str, Sequence[bytes]]


def _header(metadata: Metadata, name: str) -> str | None:
    for key, value in metadata:
        if key == name:
            return value.decode(errors="replace") if isinstance(value, bytes) else value
    return None


def bearer_token(metadata: Metadata) -> str | None:
    """The token of `authorization: Bearer <token>`; "" for another scheme; None: no header."""
    header = _header(metadata, METADATA_KEY)
    if header is None:
        return None
    scheme, _, token = header.strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def claimed_key_prefix(metadata: Metadata) -> str:
    """The prefix a `qgw_` bearer key claims ("" otherwise): safe to log and audit."""
    token = bearer_token(metadata)
    return (key_prefix(token) or "") if token else ""


def refused_principal(error: GatewayError) -> str:
    """Who a verified but refused credential names, for the audit record ("" for none)."""
    certificate = error.metadata.get("certificate")
    return f"cert/{certificate}" if certificate else ""


class Authenticator:
    """Resolves a call's principal.

    Args:
        keys: API keys (configured and stored).
        jwt: JWT verification; None: bearer tokens must be API keys.
        certs: `[[auth.mtls]]` rules.
        trusted_proxies: Peers whose XFCC header is believed (by their own certificate).
        anonymous: Every caller's principal when authentication is off; None: it is on.
    """

    def __init__(
        self,
        keys: KeyVerifier,
        *,
        jwt: JwtVerifier | None = None,
        certs: CertMapper | None = None,
        trusted_proxies: Sequence[CertMatch] = (),
        anonymous: Principal | None = None,
    ) -> None:
        self.keys = keys
        self._jwt = jwt
        self._certs = certs or CertMapper(())
        self._trusted = tuple(trusted_proxies)
        self.anonymous = anonymous

    @property
    def required(self) -> bool:
        return self.anonymous is None

    def _from_certificates(self, metadata: Metadata, context: AuthContext) -> PeerCert | None:
        """The mapped principal's certificate source, or raises for an untrusted XFCC."""
        direct = peer_cert(context)
        forwarded = [v for k, v in metadata if k == XFCC_HEADER]
        if forwarded:
            if not is_trusted(direct, self._trusted):
                raise Unauthenticated(
                    "FORWARDED_IDENTITY_UNTRUSTED",
                    f"{XFCC_HEADER} is accepted only from a trusted proxy (by its own client "
                    "certificate); send the call without it",
                )
            # One header, well-formed: with two, which one the proxy wrote is unknowable, and
            # a malformed one may hide a client-written element (see mtls._elements).
            try:
                if len(forwarded) != 1:
                    raise XfccMalformed("more than one header")
                value = forwarded[0]
                text = value.decode(errors="replace") if isinstance(value, bytes) else value
                # The proxy's own certificate is never its clients' identity: a forwarded
                # header naming none leaves the caller to its bearer credential.
                return parse_xfcc(text)
            except XfccMalformed as exc:
                raise Unauthenticated(
                    "FORWARDED_IDENTITY_INVALID",
                    f"the trusted proxy's {XFCC_HEADER} header is not well-formed ({exc})",
                ) from None
        if is_trusted(direct, self._trusted):
            # Nor when the proxy forwards no header: a proxy that sanitises the header (Envoy's
            # SANITIZE_SET) sends none for a client without a certificate.
            return None
        return direct

    async def authenticate(
        self, metadata: Metadata, context: AuthContext, peer: str = ""
    ) -> Principal:
        """The caller's principal.

        Args:
            metadata: The call's invocation metadata.
            context: gRPC's auth context of the connection (x509_* properties under mTLS).
            peer: gRPC's peer string of the connection ("ipv4:10.0.0.7:51234").

        Raises:
            Unauthenticated: No credential, or one that is not accepted (its reason says why).
        """
        if self.anonymous is not None:
            return self.anonymous
        metadata = tuple(metadata)
        cert = self._from_certificates(metadata, context)
        if cert is not None and self._certs:
            principal = self._certs.principal(cert)
            if principal is not None:
                return principal
        if sum(1 for key, _ in metadata if key == METADATA_KEY) > 1:
            # Which one a client or a proxy meant is unknowable: the first one would win.
            raise Unauthenticated(
                "AUTHORIZATION_INVALID", "more than one 'authorization' header: send one"
            )
        token = bearer_token(metadata)
        if token == "":
            raise Unauthenticated(
                "AUTHORIZATION_INVALID", "the 'authorization' header must be 'Bearer <token>'"
            )
        if token is None:
            if cert is not None and self._certs:
                raise Unauthenticated(
                    "CERTIFICATE_NOT_MAPPED",
                    "the client certificate matches no [[auth.mtls]] rule; send a bearer "
                    "credential or have a rule added",
                    # The caller's own, verified certificate: the audit record names it.
                    metadata={"certificate": cert.subject or ",".join(cert.sans)},
                )
            raise Unauthenticated(
                "API_KEY_MISSING",
                "this gateway requires credentials: send metadata 'authorization: Bearer "
                f"{KEY_PREFIX}_...'"
                + (" or a bearer JWT" if self._jwt is not None else "")
                + (" or a mapped client certificate" if self._certs else ""),
            )
        if token.startswith(KEY_PREFIX + "_") or self._jwt is None:
            return await self.keys.verify(token, peer)
        return await self._jwt.verify(token)
