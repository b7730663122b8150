"""Certificate identities and the authenticator's order, in process: `[[auth.mtls]]` rules by
subject or SAN, XFCC parsing, XFCC believed only from a peer whose own certificate is a
trusted proxy (never by address), bearer tokens told apart (qgw_ keys, JWTs), and the reasons
of every refusal."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import grpc
import pytest
from pydantic import ValidationError

from gateway.config import GatewayConfig
from gateway.domain.errors import Unauthenticated
from gateway.interceptors.auth import AuthInterceptor
from gateway.security.api_keys import KeyRing, KeyVerifier, generate_key
from gateway.security.authenticator import (
    Authenticator,
    bearer_token,
    claimed_key_prefix,
    refused_principal,
)
from gateway.security.mtls import (
    CertMapper,
    CertMatch,
    CertRule,
    PeerCert,
    XfccMalformed,
    parse_xfcc,
    peer_cert,
)
from gateway.security.principals import ANONYMOUS, Role, current_principal

pytestmark = pytest.mark.anyio
ALICE_CTX = {
    "x509_subject": [b"O=acme,CN=alice"],
    "x509_subject_alternative_name": [b"spiffe://acme/alice", b"alice.acme.test"],
    "transport_security_type": [b"ssl"],
}
PROXY_CTX = {
    "x509_subject": [b"CN=sidecar"],
    "x509_subject_alternative_name": [b"spiffe://mesh/ns/edge/sa/envoy"],
}
RULES = [
    CertRule(san="spiffe://acme/*", tenant="acme", role=Role.TENANT_ADMIN),
    CertRule(subject="*CN=bob", tenant="globex"),
]
PROXIES = [CertMatch(san="spiffe://mesh/ns/edge/sa/*")]
KEY = generate_key("keyco")


def _auth(**kw: object) -> Authenticator:
    return Authenticator(
        KeyVerifier(KeyRing([KEY.config])),
        certs=CertMapper(RULES),
        trusted_proxies=PROXIES,
        **kw,  # type: ignore[arg-type]
    )


def _md(*pairs: tuple[str, str]) -> Sequence[tuple[str, str]]:
    return pairs


async def _refused(auth: Authenticator, md: Sequence[tuple[str, str]], ctx: object) -> str:
    with pytest.raises(Unauthenticated) as caught:
        await auth.authenticate(md, ctx)  # type: ignore[arg-type]
    return caught.value.reason


def test_rules_match_subject_or_san_first_rule_wins() -> None:
    mapper = CertMapper(RULES)
    alice = peer_cert(ALICE_CTX)
    assert alice == PeerCert("O=acme,CN=alice", ("spiffe://acme/alice", "alice.acme.test"))
    principal = mapper.principal(alice)
    assert principal is not None
    assert (principal.tenant, principal.role, principal.id) == (
        "acme",
        Role.TENANT_ADMIN,
        "cert/O=acme,CN=alice",
    )
    bob = mapper.principal(PeerCert("O=other,CN=bob"))
    assert bob is not None and (bob.tenant, bob.role) == ("globex", Role.USER)
    # Patterns match whole values, case-sensitively.
    assert mapper.principal(PeerCert("CN=bobby")) is None
    assert mapper.principal(PeerCert("", ("spiffe://ACME/alice",))) is None
    assert peer_cert({"transport_security_type": [b"ssl"]}) is None
    with pytest.raises(ValidationError, match="exactly one"):
        CertRule(tenant="x")
    with pytest.raises(ValidationError, match="exactly one"):
        CertMatch(subject="a", san="b")


def test_xfcc_is_parsed_from_the_nearest_proxys_element() -> None:
    header = (
        'By=spiffe://mesh/a;Hash=abc;Subject="CN=outer,O=far";URI=spiffe://far/x,'
        'By=spiffe://mesh/b;Hash=def;Subject="O=acme,CN=alice";URI=spiffe://acme/alice;'
        "DNS=alice.acme.test"
    )
    assert parse_xfcc(header) == PeerCert(
        "O=acme,CN=alice", ("spiffe://acme/alice", "alice.acme.test")
    )
    quoted = 'Subject="CN=a\\"b,O=x;y";URI=spiffe://q'
    assert parse_xfcc(quoted) == PeerCert('CN=a"b,O=x;y', ("spiffe://q",))
    assert parse_xfcc("Hash=abc") is None
    assert parse_xfcc("") is None


def test_an_escaped_separator_in_a_subject_never_passes_for_a_real_one() -> None:
    # gRPC and Envoy print a certificate whose only field is CN "ci,O=acme" as
    # CN=ci\,O=acme (RFC 2253). The forwarded header's parser dropped the backslash, and a
    # subject wildcard matched it: anyone the CA issues a certificate with a chosen CN became
    # acme's tenant admin.
    forged = PeerCert("CN=ci\\,O=acme")
    assert parse_xfcc('Subject="CN=ci\\,O=acme"') == forged
    exact = CertMapper([CertRule(subject="CN=ci,O=acme", tenant="acme")])
    wildcard = CertMapper([CertRule(subject="CN=*,O=acme", tenant="acme")])
    suffix = CertMapper([CertRule(subject="*,O=acme", tenant="acme")])
    for mapper in (exact, wildcard, suffix):
        assert mapper.principal(forged) is None
        assert mapper.principal(PeerCert("CN=ci,O=acme")) is not None
    # A wildcard still takes escaped characters whole, and a quote is still unescaped.
    assert wildcard.principal(PeerCert("CN=a\\,b,O=acme")) is not None
    assert parse_xfcc('Subject="CN=a\\"b"') == PeerCert('CN=a"b')


async def test_xfcc_counts_only_from_a_trusted_proxy_certificate() -> None:
    auth = _auth()
    xfcc = ("x-forwarded-client-cert", 'Subject="O=acme,CN=alice";URI=spiffe://acme/alice')
    forwarded = await auth.authenticate(_md(xfcc), PROXY_CTX)
    assert forwarded.tenant == "acme" and forwarded.id == "cert/O=acme,CN=alice"
    # From a client with its own (mapped) certificate, a plaintext peer, or a claimed proxy
    # address: refused, never believed.
    bob_ctx = {"x509_subject": [b"CN=bob"]}
    assert await _refused(auth, _md(xfcc), bob_ctx) == "FORWARDED_IDENTITY_UNTRUSTED"
    assert await _refused(auth, _md(xfcc), {}) == "FORWARDED_IDENTITY_UNTRUSTED"
    spoof = {"x509_subject": [b"CN=sidecar"], "peer_ip": [b"10.0.0.1"]}  # subject, no SAN
    assert await _refused(auth, _md(xfcc), spoof) == "FORWARDED_IDENTITY_UNTRUSTED"
    # Even a valid key does not rescue a call carrying an untrusted XFCC header.
    bearer = ("authorization", f"Bearer {KEY.key}")
    assert await _refused(auth, _md(xfcc, bearer), {}) == "FORWARDED_IDENTITY_UNTRUSTED"
    # A forwarded certificate no rule maps: the caller may still bring a key.
    unknown = ("x-forwarded-client-cert", 'Subject="CN=nobody"')
    assert await _refused(auth, _md(unknown), PROXY_CTX) == "CERTIFICATE_NOT_MAPPED"
    assert (await auth.authenticate(_md(unknown, bearer), PROXY_CTX)).tenant == "keyco"


async def test_a_client_written_xfcc_element_cannot_hide_the_proxys() -> None:
    # Behind an appending proxy (Envoy APPEND_FORWARD) the client writes the header's start: an
    # unbalanced quote there made the lenient split take the client's own Subject/URI as the
    # proxy's (last) element.
    auth = _auth()
    forged = 'Subject="O=acme,CN=root";URI=spiffe://acme/root;x="'
    envoy = ',By=spiffe://gw;Hash=abc;Subject="CN=mallory";URI=spiffe://mallory'
    with pytest.raises(XfccMalformed):
        parse_xfcc(forged + envoy)
    header = ("x-forwarded-client-cert", forged + envoy)
    assert await _refused(auth, _md(header), PROXY_CTX) == "FORWARDED_IDENTITY_INVALID"
    for bad in ('Subject="CN=a"b', 'Subject="CN=a', "Subject=a\\b", "Subject", "=x", "a b=c"):
        with pytest.raises(XfccMalformed):
            parse_xfcc(bad)
    # Two headers: which one the proxy wrote is unknowable.
    twice = (header[0], 'Subject="O=acme,CN=alice"')
    assert await _refused(auth, _md(twice, twice), PROXY_CTX) == "FORWARDED_IDENTITY_INVALID"
    # A forwarded header naming no certificate is not the proxy's own identity.
    proxy_mapped = Authenticator(
        KeyVerifier(KeyRing([KEY.config])),
        certs=CertMapper([CertRule(subject="CN=sidecar", tenant="mesh", role=Role.ADMIN)]),
        trusted_proxies=PROXIES,
    )
    only_hash = ("x-forwarded-client-cert", "By=spiffe://gw;Hash=abc")
    assert await _refused(proxy_mapped, _md(only_hash), PROXY_CTX) == "API_KEY_MISSING"
    # Nor is it when the proxy forwards no header at all (Envoy's SANITIZE_SET, for a client
    # without a certificate): the caller is left to its bearer credential.
    assert await _refused(proxy_mapped, _md(), PROXY_CTX) == "API_KEY_MISSING"
    bearer = ("authorization", f"Bearer {KEY.key}")
    assert (await proxy_mapped.authenticate(_md(bearer), PROXY_CTX)).tenant == KEY.config.tenant


async def test_the_order_certificate_then_bearer_and_the_reasons_without() -> None:
    auth = _auth()
    assert (await auth.authenticate((), ALICE_CTX)).tenant == "acme"
    bearer = ("authorization", f"Bearer {KEY.key}")
    assert (await auth.authenticate(_md(bearer), ALICE_CTX)).tenant == "acme"  # cert first
    by_key = await auth.authenticate(_md(bearer), {})
    assert (by_key.tenant, by_key.key_prefix) == ("keyco", KEY.config.prefix)
    assert await _refused(auth, (), {}) == "API_KEY_MISSING"
    assert await _refused(auth, (), {"x509_subject": [b"CN=eve"]}) == "CERTIFICATE_NOT_MAPPED"
    assert await _refused(auth, _md(("authorization", "Basic x")), {}) == "AUTHORIZATION_INVALID"
    assert await _refused(auth, _md(("authorization", "Bearer ")), {}) == "AUTHORIZATION_INVALID"
    # Two credentials: the first one won, so the identity hung on header order.
    other = ("authorization", f"Bearer {generate_key('otherco').key}")
    assert await _refused(auth, _md(bearer, other), {}) == "AUTHORIZATION_INVALID"
    assert await _refused(auth, _md(bearer, bearer), {}) == "AUTHORIZATION_INVALID"
    # Without [auth.jwt], a token that is not a qgw_ key is just an invalid key.
    jwt_like = ("authorization", "Bearer aaa.bbb.ccc")
    assert await _refused(auth, _md(jwt_like), {}) == "API_KEY_INVALID"
    off = Authenticator(KeyVerifier(KeyRing([])), anonymous=ANONYMOUS)
    assert not off.required and await off.authenticate((), {}) is ANONYMOUS


def test_bearer_parsing_and_the_claimed_prefix_for_audit() -> None:
    assert bearer_token(_md(("authorization", "Bearer  qgw_ab12_x "))) == "qgw_ab12_x"
    assert bearer_token(_md(("authorization", "Basic qgw_ab12_x"))) == ""
    assert bearer_token(()) is None
    assert claimed_key_prefix(_md(("authorization", f"bearer {KEY.key}"))) == KEY.config.prefix
    assert claimed_key_prefix(_md(("authorization", "Bearer eyJ.x.y"))) == ""
    assert claimed_key_prefix(()) == ""


def test_certificate_rules_need_mtls_and_anonymous_admin_needs_no_auth(tmp_path: Path) -> None:
    rule = {"san": "spiffe://a/*", "tenant": "a"}
    with pytest.raises(ValidationError, match="client_auth = 'require'"):
        GatewayConfig(auth={"mtls": [rule]})
    with pytest.raises(ValidationError, match="optional"):
        GatewayConfig(
            server={"tls": {"cert_file": "c", "key_file": "k", "client_auth": "optional"}}
        )
    with pytest.raises(ValidationError, match="anonymous_admin"):
        GatewayConfig(auth={"anonymous_admin": True, "required": True})
    assert not GatewayConfig().auth.enabled
    assert GatewayConfig(auth={"required": True}).auth.enabled


def test_a_gateway_without_authentication_says_so_loudly(caplog: pytest.LogCaptureFixture) -> None:
    from types import SimpleNamespace

    from gateway.server import _log_security

    keyless = SimpleNamespace(config=GatewayConfig(), address="0.0.0.0:50051", health_port=0)
    with caplog.at_level("INFO", logger="gateway"):
        _log_security(keyless)  # type: ignore[arg-type]
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("AUTHENTICATION IS OFF" in w and "0.0.0.0:50051" in w for w in warnings)
    caplog.clear()
    keyed = SimpleNamespace(
        config=GatewayConfig(auth={"required": True}),
        address="0.0.0.0:50051",
        health_port=0,
    )
    with caplog.at_level("INFO", logger="gateway"):
        _log_security(keyed)  # type: ignore[arg-type]
    assert not any("AUTHENTICATION IS OFF" in r.getMessage() for r in caplog.records)


def test_san_wildcards_stay_inside_one_name_or_path_segment() -> None:
    dns = CertMatch(san="*.acme.test")
    assert dns.matches(PeerCert("", ("alice.acme.test",))) == "alice.acme.test"
    # Neither a URI nor an e-mail address that merely ends like the DNS pattern.
    assert dns.matches(PeerCert("", ("spiffe://cluster/ns/x/sa/y.acme.test",))) is None
    assert dns.matches(PeerCert("", ("eve@x.acme.test",))) is None
    uri = CertMatch(san="spiffe://acme/*")
    assert uri.matches(PeerCert("", ("spiffe://acme/alice",))) == "spiffe://acme/alice"
    assert uri.matches(PeerCert("", ("spiffe://acme/alice/admin",))) is None
    assert uri.matches(PeerCert("", ("spiffe://acme.evil/alice",))) is None


async def test_a_refused_certificate_is_named_in_its_audit_record() -> None:
    # The record of a CERTIFICATE_NOT_MAPPED refusal named no one: the verified subject was
    # lost (a refused key at least leaves its prefix).
    from gateway.domain.errors import Code
    from gateway.interceptors.audit import AuditInterceptor
    from gateway.security.principals import AuthFailure

    with pytest.raises(Unauthenticated) as caught:
        await _auth().authenticate((), {"x509_subject": [b"CN=eve"]})
    assert refused_principal(caught.value) == "cert/CN=eve"
    with pytest.raises(Unauthenticated) as caught:
        await _auth().authenticate((), {})
    assert refused_principal(caught.value) == ""
    written: list[Any] = []

    class Writer:
        def auth_failed(self, record: Any) -> None:
            written.append(record)

    AuditInterceptor(Writer()).auth_failed(  # type: ignore[arg-type]
        AuthFailure(
            method="/qgateway.v1.JobService/ListJobs",
            peer="ipv4:127.0.0.1:5000",
            reason="CERTIFICATE_NOT_MAPPED",
            code=Code.UNAUTHENTICATED,
            principal="cert/CN=eve",
        )
    )
    assert written[0].principal == "cert/CN=eve"


async def test_xfcc_is_believed_from_no_one_when_no_proxy_is_trusted() -> None:
    # With no trusted proxies configured, a client with a certificate of its own is no proxy:
    # its XFCC header naming another (mapped) certificate is refused, not believed.
    auth = Authenticator(KeyVerifier(KeyRing([KEY.config])), certs=CertMapper(RULES))
    xfcc = ("x-forwarded-client-cert", 'Subject="O=acme,CN=alice";URI=spiffe://acme/alice')
    for ctx in (PROXY_CTX, {"x509_subject": [b"CN=bob"]}, {}):
        assert await _refused(auth, _md(xfcc), ctx) == "FORWARDED_IDENTITY_UNTRUSTED"


def test_the_first_matching_rule_wins_over_a_later_wider_one() -> None:
    mapper = CertMapper(
        [
            CertRule(san="spiffe://acme/ci", tenant="acme"),
            CertRule(san="spiffe://acme/*", tenant="acme", role=Role.ADMIN),
        ]
    )
    ci = mapper.principal(PeerCert("", ("spiffe://acme/ci",)))
    assert ci is not None and ci.role is Role.USER
    other = mapper.principal(PeerCert("", ("spiffe://acme/ops",)))
    assert other is not None and other.role is Role.ADMIN


class _Jwt:
    """A JWT verifier that accepts nothing: only bearer tokens that are not keys reach it."""

    def __init__(self) -> None:
        self.tokens: list[str] = []

    async def verify(self, token: str) -> Any:
        self.tokens.append(token)
        raise Unauthenticated("JWT_INVALID", "not accepted")


async def test_a_qgw_key_is_a_key_even_when_jwts_are_accepted() -> None:
    jwt = _Jwt()
    auth = _auth(jwt=jwt)
    key = await auth.authenticate(_md(("authorization", f"Bearer {KEY.key}")), {})
    assert key.tenant == "keyco"
    assert await _refused(auth, _md(("authorization", "Bearer ey.x.y")), {}) == "JWT_INVALID"
    assert jwt.tokens == ["ey.x.y"]


class _Context:
    def __init__(self, auth_context: dict[str, list[bytes]]) -> None:
        self._auth_context = auth_context

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return ()

    def auth_context(self) -> dict[str, list[bytes]]:
        return self._auth_context

    def peer(self) -> str:
        return "ipv4:10.0.0.7:5555"


async def test_the_auth_interceptor_reads_the_connections_certificate() -> None:
    # With certificate rules the interceptor hands the connection's auth context over: a
    # mapped client certificate is the caller without any bearer credential.
    async def whoami(request: Any, context: Any) -> tuple[str, Role]:
        principal = current_principal.get()
        return principal.tenant, principal.role

    async def continuation(details: Any) -> grpc.RpcMethodHandler:
        return grpc.unary_unary_rpc_method_handler(whoami)

    interceptor = AuthInterceptor(_auth(), uses_certificates=True)
    details = SimpleNamespace(method="/qgateway.v1.JobService/GetJob", invocation_metadata=())
    handler = await interceptor.intercept_service(continuation, details)
    assert await handler.unary_unary(b"", _Context(ALICE_CTX)) == ("acme", Role.TENANT_ADMIN)
    with pytest.raises(Unauthenticated) as caught:
        await handler.unary_unary(b"", _Context({"x509_subject": [b"CN=nobody"]}))
    assert caught.value.reason == "CERTIFICATE_NOT_MAPPED"


def test_an_xfcc_header_past_64_kib_is_malformed() -> None:
    # Well-formed but huge: parsed on the event loop for every call that sends it.
    header = 'Subject="CN=' + "a" * (64 * 1024) + '"'
    with pytest.raises(XfccMalformed, match="64 KiB"):
        parse_xfcc(header)
    assert parse_xfcc('Subject="CN=' + "a" * 1024 + '"') == PeerCert("CN=" + "a" * 1024)
