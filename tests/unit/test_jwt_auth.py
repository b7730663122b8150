"""JWT bearer tokens in process: signature, issuer, audience, expiry with and without leeway,
algorithm confusion ("none", HS256 with the public key), unknown key ids, claims to roles, and
key sets from a file (re-read when it changes) or a URL (re-fetched, rate-limited)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from pydantic import ValidationError

from gateway.domain.errors import Unauthenticated
from gateway.security.jwt_auth import JwksSource, JwtConfig, JwtVerifier
from gateway.security.principals import Role

pytestmark = pytest.mark.anyio
ISSUER, AUDIENCE = "https://idp.example", "qgateway"
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())
OTHER_RSA = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _jwks(**keys: Any) -> dict[str, Any]:
    out = []
    for kid, key in keys.items():
        if isinstance(key, rsa.RSAPrivateKey):
            jwk = RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
            jwk["alg"] = "RS256"
        else:
            jwk = ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
        jwk["kid"] = kid
        out.append(jwk)
    return {"keys": out}


@pytest.fixture
def jwks_file(tmp_path: Path) -> Path:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(_jwks(r1=RSA_KEY, e1=EC_KEY)))
    return path


def _config(jwks_file: Path, **changes: Any) -> JwtConfig:
    return JwtConfig(issuer=ISSUER, audience=AUDIENCE, jwks_file=jwks_file, **changes)


def _token(key: Any = RSA_KEY, alg: str = "RS256", kid: str | None = "r1", **claims: Any) -> str:
    now = int(time.time())
    payload = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "alice",
        "tenant": "acme",
        "iat": now,
        "exp": now + 300,
        **claims,
    }
    payload = {k: v for k, v in payload.items() if v is not None}
    headers = {"kid": kid} if kid is not None else {}
    return jwt.encode(payload, key, algorithm=alg, headers=headers)


async def _refused(verifier: JwtVerifier, token: str) -> Unauthenticated:
    with pytest.raises(Unauthenticated) as caught:
        await verifier.verify(token)
    assert token not in str(caught.value)
    return caught.value


async def test_a_good_token_names_its_tenant_subject_and_role(jwks_file: Path) -> None:
    verifier = JwtVerifier(_config(jwks_file))
    principal = await verifier.verify(_token(role="tenant-admin"))
    assert principal.tenant == "acme"
    assert principal.id == f"jwt/{ISSUER}#alice"
    assert principal.role is Role.TENANT_ADMIN
    ec_principal = await verifier.verify(_token(EC_KEY, "ES256", "e1"))
    assert (ec_principal.tenant, ec_principal.role) == ("acme", Role.USER)


async def test_a_tokens_principal_expires_with_it(jwks_file: Path) -> None:
    # CreateApiKey bounds the keys a principal creates by this.
    verifier = JwtVerifier(_config(jwks_file))
    exp = int(time.time()) + 300
    principal = await verifier.verify(_token(exp=exp))
    assert principal.expires_at == datetime.fromtimestamp(exp, UTC)
    # pyjwt accepts an exp past year 9999 (it only takes int(exp)): as good as never.
    far = await verifier.verify(_token(exp=10**12))
    assert far.expires_at == datetime.max.replace(tzinfo=UTC)


@pytest.mark.parametrize(
    ("claims", "why"),
    [
        ({"iss": "https://evil.example"}, "issuer"),
        ({"aud": "someone-else"}, "audience"),
        ({"tenant": None}, "tenant"),
        ({"tenant": "../etc"}, "tenant"),
        ({"tenant": "acme\n"}, "tenant"),
        ({"tenant": "-"}, "tenant"),  # "tenants/-" names every tenant
        ({"sub": None}, "'sub' missing"),
        ({"sub": "\ud800"}, "'sub' is not"),
        ({"sub": "a" * 256}, "'sub' is not"),
        ({"exp": None}, "'exp' missing"),
        ({"nbf": int(time.time()) + 3600}, "not valid yet"),
    ],
)
async def test_wrong_claims_are_invalid(jwks_file: Path, claims: dict[str, Any], why: str) -> None:
    error = await _refused(JwtVerifier(_config(jwks_file)), _token(**claims))
    assert error.reason == "JWT_INVALID" and why in error.message


async def test_expiry_honours_the_leeway_and_nothing_more(jwks_file: Path) -> None:
    ten_seconds_ago = int(time.time()) - 10
    token = _token(exp=ten_seconds_ago, iat=ten_seconds_ago - 60)
    strict = JwtVerifier(_config(jwks_file, leeway_s=0))
    assert (await _refused(strict, token)).reason == "JWT_EXPIRED"
    lenient = JwtVerifier(_config(jwks_file, leeway_s=30))
    assert (await lenient.verify(token)).tenant == "acme"
    long_gone = _token(exp=int(time.time()) - 120)
    assert (await _refused(lenient, long_gone)).reason == "JWT_EXPIRED"


async def test_signatures_algorithms_and_key_ids_are_checked(jwks_file: Path) -> None:
    verifier = JwtVerifier(_config(jwks_file))
    forged = _token(OTHER_RSA)  # right kid, wrong key
    assert "bad signature" in (await _refused(verifier, forged)).message
    unsigned = jwt.encode(
        {"iss": ISSUER, "aud": AUDIENCE, "sub": "x", "tenant": "acme", "exp": 2**40},
        key="",
        algorithm="none",
        headers={"kid": "r1"},
    )
    assert "algorithm" in (await _refused(verifier, unsigned)).message
    # Algorithm confusion: an HMAC "signed" with the public key must not verify.
    public_pem = RSA_KEY.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    payload = {"iss": ISSUER, "aud": AUDIENCE, "sub": "x", "tenant": "acme", "exp": 2**40}
    header = jwt.utils.base64url_encode(json.dumps({"alg": "HS256", "kid": "r1"}).encode())
    body = jwt.utils.base64url_encode(json.dumps(payload).encode())
    mac = hmac.new(public_pem, header + b"." + body, hashlib.sha256).digest()
    confused = (header + b"." + body + b"." + jwt.utils.base64url_encode(mac)).decode()
    assert "algorithm" in (await _refused(verifier, confused)).message
    # An EC key named by an RS256 token, and a kid no key has.
    assert (await _refused(verifier, _token(kid="e1"))).reason == "JWT_INVALID"
    assert "unknown signing key" in (await _refused(verifier, _token(kid="nope"))).message
    assert "malformed" in (await _refused(verifier, "not.a.jwt")).message


@pytest.mark.parametrize("crit", [["x"], [], "x"])
async def test_a_crit_header_is_a_malformed_token(jwks_file: Path, crit: Any) -> None:
    # pyjwt refuses any `crit` it does not support with InvalidTokenError, not DecodeError:
    # it escaped as INTERNAL (a gateway bug), unaudited. No key is needed to send one.
    header = jwt.utils.base64url_encode(
        json.dumps({"alg": "ES256", "kid": "e1", "crit": crit}).encode()
    )
    token = (header + b".e30.AA").decode()
    error = await _refused(JwtVerifier(_config(jwks_file)), token)
    assert (error.reason, error.message) == (
        "JWT_INVALID",
        "the bearer token is not accepted: malformed",
    )


def test_the_configuration_accepts_asymmetric_algorithms_only(jwks_file: Path) -> None:
    for bad in (["none"], ["HS256"], ["RS256", "HS512"]):
        with pytest.raises(ValidationError, match="only asymmetric"):
            _config(jwks_file, algorithms=bad)
    with pytest.raises(ValidationError, match="exactly one"):
        JwtConfig(issuer=ISSUER, audience=AUDIENCE)


def test_keys_are_fetched_over_https_or_from_this_host_only() -> None:
    # Keys fetched in plaintext across a network can be swapped for an attacker's, who then
    # signs admin tokens.
    for bad in ("http://idp.example/jwks", "ftp://idp.example/jwks", "https:///jwks"):
        with pytest.raises(ValidationError, match="must be an https"):
            JwtConfig(issuer=ISSUER, audience=AUDIENCE, jwks_url=bad)
    for good in ("https://idp.example/jwks", "http://127.0.0.1:8080/jwks", "http://[::1]/k"):
        assert JwtConfig(issuer=ISSUER, audience=AUDIENCE, jwks_url=good).jwks_url == good


async def test_claims_map_to_roles(jwks_file: Path) -> None:
    mapped = JwtVerifier(
        _config(
            jwks_file, role_claim="groups", roles={"qgw-admins": Role.ADMIN, "ops": "tenant-admin"}
        )
    )
    assert (await mapped.verify(_token(groups=["dev", "qgw-admins"]))).role is Role.ADMIN
    assert (await mapped.verify(_token(groups=["ops"]))).role is Role.TENANT_ADMIN
    assert (await mapped.verify(_token(groups="dev"))).role is Role.USER
    # Without a mapping only a role's own name counts; anything else is a user.
    plain = JwtVerifier(_config(jwks_file))
    assert (await plain.verify(_token(role="superuser"))).role is Role.USER
    # ... and never "admin": global scope needs an explicit mapping of the claim's value.
    assert (await plain.verify(_token(role="admin"))).role is Role.USER
    assert (await plain.verify(_token(role=["admin", "tenant-admin"]))).role is Role.TENANT_ADMIN


async def test_a_rotated_key_file_is_read_again(jwks_file: Path) -> None:
    now = [0.0]
    config = _config(jwks_file)
    verifier = JwtVerifier(config, JwksSource(config, clock=lambda: now[0]))
    new_key = ec.generate_private_key(ec.SECP256R1())
    token = _token(new_key, "ES256", "e2")
    assert "unknown" in (await _refused(verifier, token)).message
    jwks_file.write_text(json.dumps(_jwks(e2=new_key)))
    now[0] += 2
    assert (await verifier.verify(token)).tenant == "acme"


async def test_a_key_set_url_is_cached_and_unknown_kids_refetch_at_most_so_often() -> None:
    fetches: list[str] = []
    document = [_jwks(r1=RSA_KEY)]

    def fetch(url: str) -> bytes:
        fetches.append(url)
        return json.dumps(document[0]).encode()

    now = [0.0]
    config = JwtConfig(
        issuer=ISSUER, audience=AUDIENCE, jwks_url="https://idp.example/jwks", jwks_min_refetch_s=30
    )
    verifier = JwtVerifier(config, JwksSource(config, fetch=fetch, clock=lambda: now[0]))
    for _ in range(20):
        await verifier.verify(_token())
    assert len(fetches) == 1
    for i in range(20):  # made-up key ids cannot make the gateway hammer the provider
        await _refused(verifier, _token(kid=f"made-up-{i}"))
    assert len(fetches) == 1
    new_key = ec.generate_private_key(ec.SECP256R1())
    document[0] = _jwks(r1=RSA_KEY, e9=new_key)
    now[0] += 31
    assert (await verifier.verify(_token(new_key, "ES256", "e9"))).tenant == "acme"
    assert len(fetches) == 2


async def test_a_due_key_set_refresh_does_not_hold_calls_up() -> None:
    # Every call awaited the scheduled re-fetch (up to its 10 s timeout, and again every
    # min-refetch interval while the provider was down) although its key was cached.
    release, refetching = threading.Event(), threading.Event()
    fetches: list[str] = []

    def fetch(url: str) -> bytes:
        fetches.append(url)
        if len(fetches) > 1:
            refetching.set()
            release.wait(10)
        return json.dumps(_jwks(r1=RSA_KEY)).encode()

    now = [0.0]
    config = JwtConfig(issuer=ISSUER, audience=AUDIENCE, jwks_url="https://idp.example/jwks")
    source = JwksSource(config, fetch=fetch, clock=lambda: now[0])
    verifier = JwtVerifier(config, source)
    assert (await verifier.verify(_token())).tenant == "acme"
    now[0] += config.jwks_refresh_s + 1
    try:
        for _ in range(3):
            principal = await asyncio.wait_for(verifier.verify(_token()), timeout=2)
            assert principal.tenant == "acme"
        # The re-fetch runs on a thread of its own, which may start after the calls answered.
        assert await asyncio.to_thread(refetching.wait, 10)
        assert len(fetches) == 2  # one background re-fetch, not one per call
    finally:
        release.set()
    assert source._refreshing is not None
    await source._refreshing


async def test_a_token_uses_an_algorithm_both_the_configuration_and_its_key_accept(
    jwks_file: Path,
) -> None:
    # The configuration's list binds even where the key could verify the token ...
    es_only = JwtVerifier(_config(jwks_file, algorithms=["ES256"]))
    assert "not accepted" in (await _refused(es_only, _token())).message
    assert (await es_only.verify(_token(EC_KEY, "ES256", kid="e1"))).tenant == "acme"
    # ... and so does the algorithm a key declares ("alg": "RS256"): PS256 by the same key no.
    both = JwtVerifier(_config(jwks_file, algorithms=["RS256", "PS256"]))
    error = await _refused(both, _token(alg="PS256"))
    assert "does not match the key" in error.message
    assert (await both.verify(_token())).tenant == "acme"


async def test_the_highest_mapped_role_wins_whatever_the_claims_order(jwks_file: Path) -> None:
    mapped = JwtVerifier(
        _config(jwks_file, role_claim="groups", roles={"qgw-admins": Role.ADMIN, "ops": "user"})
    )
    for groups in (["qgw-admins", "ops"], ["ops", "qgw-admins"]):
        assert (await mapped.verify(_token(groups=groups))).role is Role.ADMIN


async def test_a_token_without_a_key_id_needs_a_key_set_of_one(
    jwks_file: Path, tmp_path: Path
) -> None:
    # With several keys, which one a token without "kid" meant is unknowable: never the first.
    several = JwtVerifier(_config(jwks_file))
    assert "unknown signing key" in (await _refused(several, _token(kid=None))).message
    single = tmp_path / "single.json"
    single.write_text(json.dumps(_jwks(r1=RSA_KEY)))
    assert (await JwtVerifier(_config(single)).verify(_token(kid=None))).tenant == "acme"


async def test_a_token_past_16_kib_is_refused_unparsed(jwks_file: Path) -> None:
    padded = _token(pad="x" * 16 * 1024)
    assert len(padded) > 16 * 1024
    error = await _refused(JwtVerifier(_config(jwks_file)), padded)
    assert error.message == "the bearer token is not accepted: too long"
