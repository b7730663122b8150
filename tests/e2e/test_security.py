"""Identities and transport security over real gRPC, with certificates made at test time.

Two gateways for the module: `mesh` requires mTLS (client certificates mapped to tenants,
XFCC believed only from the trusted proxy's certificate, a plaintext health-only port, a
server certificate rotated under it), and `keys` serves TLS to bearer credentials (a TOML
admin key, stored keys created, listed and revoked through AdminService and the CLI, JWTs).
Every deny path answers UNAUTHENTICATED with its reason, and no secret reaches a log.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import re
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from jwt.algorithms import ECAlgorithm
from qgateway import AsyncClient
from qgateway.v1 import (
    admin_pb2,
    admin_service_pb2,
    admin_service_pb2_grpc,
    job_service_pb2,
    job_service_pb2_grpc,
)

from gateway import cli
from gateway.security.api_keys import generate_key
from gateway.security.principals import Role
from tests.certs import Issued, issue, make_ca
from tests.gateway_process import GatewayProcess
from tests.rpc import status_of

UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED
ISSUER, AUDIENCE = "https://idp.test", "qgateway-e2e"
ADMIN = generate_key("ops", role=Role.ADMIN)
JWT_KEY = ec.generate_private_key(ec.SECP256R1())
# A fresh connection per channel: grpc would otherwise share one across channels to a target,
# and a rotation or a different client certificate would go unseen.
OPTIONS = [("grpc.use_local_subchannel_pool", 1), ("grpc.ssl_target_name_override", "localhost")]


@dataclass
class Pki:
    ca: Issued
    ca2: Issued  # signs the rotated server certificate
    alice: Issued  # mapped: spiffe://acme/alice -> tenant acme, tenant-admin
    stranger: Issued  # matches no rule
    proxy: Issued  # the trusted sidecar


@pytest.fixture(scope="module")
def pki() -> Pki:
    ca, ca2 = make_ca("test CA"), make_ca("rotation CA")
    return Pki(
        ca=ca,
        ca2=ca2,
        alice=issue(ca, "alice", org="acme", uris=("spiffe://acme/alice",)),
        stranger=issue(ca, "stranger"),
        proxy=issue(ca, "sidecar", uris=("spiffe://mesh/proxy",)),
    )


def _start(root: Path, text: str) -> GatewayProcess:
    config = root / "g.toml"
    config.write_text(f'data_dir = "{root / "data"}"\nbackends = {{}}\n' + text)
    return GatewayProcess.start(config, root / "gateway.log")


def _health_address(gw: GatewayProcess) -> str:
    match = re.search(r"plaintext health-only port on (\S+)", gw.log_path.read_text())
    assert match is not None, gw.log_path.read_text()[-2000:]
    return match.group(1)


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[GatewayProcess]:
    root = tmp_path_factory.mktemp("mesh")
    server = issue(pki.ca, "localhost", dns=("localhost",), ips=("127.0.0.1",), server=True)
    cert, key = server.write(root, "server")
    ca = root / "ca.pem"
    ca.write_bytes(pki.ca.cert_pem)
    gw = _start(
        root,
        f"""
[server]
listen = "127.0.0.1:0"
health_listen = "127.0.0.1:0"

[server.tls]
cert_file = "{cert}"
key_file = "{key}"
client_ca_file = "{ca}"
client_auth = "require"
reload_check_s = 0

[compiler]
workers = 1

[[auth.mtls]]
san = "spiffe://acme/*"
tenant = "acme"
role = "tenant-admin"

[[auth.trusted_proxies]]
san = "spiffe://mesh/proxy"
""",
    )
    yield gw
    assert gw.terminate() == 0, gw.log_path.read_text()[-3000:]


@pytest.fixture(scope="module")
def keys_gw(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[GatewayProcess]:
    root = tmp_path_factory.mktemp("keys")
    server = issue(pki.ca, "localhost", dns=("localhost",), ips=("127.0.0.1",), server=True)
    cert, key = server.write(root, "server")
    jwk = ECAlgorithm.to_jwk(JWT_KEY.public_key(), as_dict=True)
    jwks = root / "jwks.json"
    jwks.write_text(json.dumps({"keys": [{**jwk, "kid": "k1", "alg": "ES256"}]}))
    c = ADMIN.config
    gw = _start(
        root,
        f"""
[server]
listen = "127.0.0.1:0"

[server.tls]
cert_file = "{cert}"
key_file = "{key}"

[compiler]
workers = 1

# Keys are made only for tenants that exist somewhere.
[tenants.acme]

[auth]
# Every call reads a stored key again: the test edits the database under the gateway.
key_cache_s = 0

[[auth.api_keys]]
prefix = "{c.prefix}"
sha256 = "{c.sha256}"
tenant = "{c.tenant}"
role = "admin"

[auth.jwt]
issuer = "{ISSUER}"
audience = "{AUDIENCE}"
jwks_file = "{jwks}"
algorithms = ["ES256"]
leeway_s = 5
""",
    )
    yield gw
    assert gw.terminate() == 0, gw.log_path.read_text()[-3000:]


def _channel(address: str, root: bytes, client: Issued | None = None) -> grpc.Channel:
    creds = grpc.ssl_channel_credentials(
        root,
        None if client is None else client.key_pem,
        None if client is None else client.cert_pem,
    )
    return grpc.secure_channel(address, creds, options=OPTIONS)


def _admin(channel: grpc.Channel) -> Any:
    return admin_service_pb2_grpc.AdminServiceStub(channel)  # type: ignore[no-untyped-call]


def _jobs(channel: grpc.Channel) -> Any:
    return job_service_pb2_grpc.JobServiceStub(channel)  # type: ignore[no-untyped-call]


def _list_keys(channel: grpc.Channel, parent: str, md: Any = ()) -> Any:
    request = admin_service_pb2.ListApiKeysRequest(parent=parent, show_inactive=True)
    return _admin(channel).ListApiKeys(request, timeout=10, metadata=md)


def _reason(call: Any) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    info = status_of(caught.value)
    return info.code, info.reason


def _bearer(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


# ------------------------------------------------------------------------------ mTLS and XFCC


def test_the_plaintext_health_port_answers_while_tls_is_on(mesh: GatewayProcess) -> None:
    with grpc.insecure_channel(_health_address(mesh), options=OPTIONS) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "qgateway.v1.JobService"):
            reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        # Health only: nothing else is served there.
        code, _ = _reason(lambda: _jobs(channel).ListJobs(job_service_pb2.ListJobsRequest()))
        assert code is grpc.StatusCode.UNIMPLEMENTED
    # The main port speaks TLS only.
    with grpc.insecure_channel(mesh.address, options=OPTIONS) as plain:
        code, _ = _reason(
            lambda: _jobs(plain).ListJobs(job_service_pb2.ListJobsRequest(), timeout=5)
        )
        assert code is grpc.StatusCode.UNAVAILABLE


def test_mtls_is_required_and_a_mapped_certificate_is_its_tenant(
    mesh: GatewayProcess, pki: Pki
) -> None:
    with _channel(mesh.address, pki.ca.cert_pem) as anonymous:
        code, _ = _reason(lambda: _list_keys(anonymous, "tenants/acme"))
        assert code is grpc.StatusCode.UNAVAILABLE  # no certificate: no handshake
    with _channel(mesh.address, pki.ca.cert_pem, pki.alice) as alice:
        assert list(_list_keys(alice, "tenants/acme").api_keys) == []  # acme's tenant admin
        code, reason = _reason(lambda: _list_keys(alice, "tenants/globex"))
        assert (code, reason) == (grpc.StatusCode.NOT_FOUND, "TENANT_NOT_FOUND")
    with _channel(mesh.address, pki.ca.cert_pem, pki.stranger) as stranger:
        assert _reason(lambda: _list_keys(stranger, "tenants/acme")) == (
            UNAUTHENTICATED,
            "CERTIFICATE_NOT_MAPPED",
        )


def test_forwarded_identities_count_only_from_the_trusted_proxy(
    mesh: GatewayProcess, pki: Pki
) -> None:
    xfcc = [
        (
            "x-forwarded-client-cert",
            'By=spiffe://mesh/proxy;Hash=00;Subject="O=acme,CN=alice";URI=spiffe://acme/alice',
        )
    ]
    with _channel(mesh.address, pki.ca.cert_pem, pki.stranger) as stranger:
        assert _reason(lambda: _list_keys(stranger, "tenants/acme", xfcc)) == (
            UNAUTHENTICATED,
            "FORWARDED_IDENTITY_UNTRUSTED",
        )
    with _channel(mesh.address, pki.ca.cert_pem, pki.proxy) as proxy:
        assert list(_list_keys(proxy, "tenants/acme", xfcc).api_keys) == []
        # Without the header the proxy's own certificate is not the caller's identity (a
        # sanitising proxy forwards none for a client without a certificate): no credential.
        assert _reason(lambda: _list_keys(proxy, "tenants/acme")) == (
            UNAUTHENTICATED,
            "API_KEY_MISSING",
        )


def test_a_rotated_server_certificate_is_served_without_a_restart(
    mesh: GatewayProcess, pki: Pki
) -> None:
    def served_by_ca2() -> bool:
        with _channel(mesh.address, pki.ca2.cert_pem, pki.alice) as channel:
            try:
                _list_keys(channel, "tenants/acme")
            except grpc.RpcError as err:
                assert err.code() is grpc.StatusCode.UNAVAILABLE
                return False
            return True

    pid = mesh.pid
    assert not served_by_ca2()
    root = mesh.log_path.parent
    rotated = issue(pki.ca2, "localhost", dns=("localhost",), ips=("127.0.0.1",), server=True)
    # Key first, then certificate: a connection in between keeps the old pair (they differ).
    (root / "server.key").write_bytes(rotated.key_pem)
    (root / "server.crt").write_bytes(rotated.cert_pem)
    assert served_by_ca2()
    assert mesh.pid == pid and mesh.process.poll() is None
    with _channel(mesh.address, pki.ca.cert_pem, pki.alice) as old_trust:
        code, _ = _reason(lambda: _list_keys(old_trust, "tenants/acme"))
        assert code is grpc.StatusCode.UNAVAILABLE
    assert "TLS certificate reloaded" in mesh.log_path.read_text()


# ---------------------------------------------------------------------- keys, CLI and JWTs


def _cli(gw: GatewayProcess, ca_file: Path, key: str, *argv: str) -> str:
    """`qgateway --ca CA ... ` in process, as an operator holding `key` would run it."""
    out, err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(cli.ENV_API_KEY, key)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            status = cli.main(["--target", gw.address, "--ca", str(ca_file), *argv])
    assert status == 0, err.getvalue()
    return out.getvalue()


def test_key_lifecycle_through_the_cli_and_every_deny_path(
    keys_gw: GatewayProcess, pki: Pki, tmp_path: Path
) -> None:
    ca_file = tmp_path / "ca.pem"
    ca_file.write_bytes(pki.ca.cert_pem)
    target_gw = keys_gw  # its certificate names 127.0.0.1, the CLI's target
    created = _cli(
        target_gw,
        ca_file,
        ADMIN.key,
        "keys",
        "create",
        "--tenant",
        "acme",
        "--name",
        "ci",
        "--role",
        "tenant-admin",
    )
    match = re.search(r"API key (tenants/acme/apiKeys/(\w+)) .*\n\s+(qgw_\S+)", created)
    assert match is not None, created
    name, prefix, secret = match.groups()
    listed = _cli(target_gw, ca_file, ADMIN.key, "keys", "list", "--tenant", "acme")
    assert name in listed and "tenant-admin" in listed and "active" in listed
    assert secret not in listed

    with _channel(keys_gw.address, pki.ca.cert_pem) as channel:
        acme = _bearer(secret)
        assert [k.name for k in _list_keys(channel, "tenants/acme", acme).api_keys] == [name]
        # A tenant admin: its own tenant's user keys, never an admin key, never every tenant.
        user_key = _admin(channel).CreateApiKey(
            admin_service_pb2.CreateApiKeyRequest(
                parent="tenants/acme", api_key=admin_pb2.ApiKey(role=admin_pb2.ROLE_USER)
            ),
            timeout=10,
            metadata=acme,
        )
        assert user_key.key.startswith("qgw_") and user_key.api_key.state == 1
        grant_admin = admin_service_pb2.CreateApiKeyRequest(
            parent="tenants/acme", api_key=admin_pb2.ApiKey(role=admin_pb2.ROLE_ADMIN)
        )
        assert _reason(
            lambda: _admin(channel).CreateApiKey(grant_admin, timeout=10, metadata=acme)
        ) == (grpc.StatusCode.PERMISSION_DENIED, "ROLE_NOT_GRANTABLE")
        assert _reason(lambda: _list_keys(channel, "tenants/-", acme)) == (
            grpc.StatusCode.PERMISSION_DENIED,
            "ADMIN_ROLE_REQUIRED",
        )
        assert _reason(lambda: _list_keys(channel, "tenants/globex", acme)) == (
            grpc.StatusCode.NOT_FOUND,
            "TENANT_NOT_FOUND",
        )

        # Deny paths: none, bad, expired, revoked.
        assert _reason(lambda: _list_keys(channel, "tenants/acme")) == (
            UNAUTHENTICATED,
            "API_KEY_MISSING",
        )
        bad = _bearer(f"qgw_{prefix}_wrong-secret")
        assert _reason(lambda: _list_keys(channel, "tenants/acme", bad)) == (
            UNAUTHENTICATED,
            "API_KEY_INVALID",
        )
        user_prefix = user_key.api_key.name.rsplit("/", 1)[1]
        past = datetime.now(UTC) - timedelta(minutes=1)
        with sqlite3.connect(keys_gw.log_path.parent / "data" / "qgateway.db", timeout=10) as db:
            db.execute(
                "UPDATE api_keys SET expires_at = ? WHERE prefix = ?",
                (
                    (past - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1),
                    user_prefix,
                ),
            )
        assert _reason(
            lambda: _jobs(channel).ListJobs(
                job_service_pb2.ListJobsRequest(), timeout=10, metadata=_bearer(user_key.key)
            )
        ) == (UNAUTHENTICATED, "API_KEY_EXPIRED")

    revoked = _cli(target_gw, ca_file, ADMIN.key, "keys", "revoke", name)
    assert f"revoked {name}" in revoked
    with _channel(keys_gw.address, pki.ca.cert_pem) as channel:
        assert _reason(lambda: _list_keys(channel, "tenants/acme", _bearer(secret))) == (
            UNAUTHENTICATED,
            "API_KEY_REVOKED",
        )
        everything = _list_keys(channel, "tenants/-", _bearer(ADMIN.key))
        states = {k.name: k.state for k in everything.api_keys}
        assert states[name] == admin_pb2.API_KEY_STATE_REVOKED
        assert states[user_key.api_key.name] == admin_pb2.API_KEY_STATE_EXPIRED
    _assert_no_secret_anywhere(keys_gw, secret, user_key.key, ADMIN.key)


def test_the_async_client_manages_keys_as_the_sync_one_does(
    keys_gw: GatewayProcess, pki: Pki
) -> None:
    async def lifecycle() -> None:
        async with AsyncClient(
            keys_gw.address,
            credentials=grpc.ssl_channel_credentials(pki.ca.cert_pem),
            metadata=[("authorization", f"Bearer {ADMIN.key}")],
        ) as client:
            record, secret = await client.create_api_key("acme", display_name="async")
            assert record.name.startswith("tenants/acme/apiKeys/") and secret.startswith("qgw_")
            assert (record.display_name, record.role, record.state) == ("async", "user", "active")
            assert record.name in [k.name async for k in client.list_api_keys("acme")]
            revoked = await client.revoke_api_key(record.name)
            assert revoked.state == "revoked" and revoked.revoke_time is not None
            assert record.name not in [k.name async for k in client.list_api_keys("acme")]
            every = {k.name: k.state async for k in client.list_api_keys(show_inactive=True)}
            assert every[record.name] == "revoked"
            with pytest.raises(ValueError):
                await client.create_api_key("acme", role="root")

    asyncio.run(lifecycle())


def test_health_and_reflection_need_no_credential(keys_gw: GatewayProcess, pki: Pki) -> None:
    with _channel(keys_gw.address, pki.ca.cert_pem) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        reply = health.Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        services = set(ProtoReflectionDescriptorDatabase(channel).get_services())
        assert {"qgateway.v1.AdminService", "qgateway.v1.JobService"} <= services
        # ... while the services behind them do.
        assert _reason(lambda: _list_keys(channel, "tenants/acme")) == (
            UNAUTHENTICATED,
            "API_KEY_MISSING",
        )


def _jwt(**claims: Any) -> str:
    now = int(time.time())
    payload = {"iss": ISSUER, "aud": AUDIENCE, "sub": "svc-1", "tenant": "acme", "exp": now + 60}
    payload.update(claims)
    return jwt.encode(payload, JWT_KEY, algorithm="ES256", headers={"kid": "k1"})


def test_jwt_bearer_tokens(keys_gw: GatewayProcess, pki: Pki) -> None:
    good = _jwt(role="tenant-admin")
    expired = _jwt(exp=int(time.time()) - 60)
    foreign = _jwt(aud="someone-else")
    with _channel(keys_gw.address, pki.ca.cert_pem) as channel:
        assert (
            list(
                _list_keys(
                    channel, "tenants/globex", _bearer(_jwt(tenant="globex", role="tenant-admin"))
                ).api_keys
            )
            == []
        )
        assert _reason(lambda: _list_keys(channel, "tenants/globex", _bearer(good))) == (
            grpc.StatusCode.NOT_FOUND,
            "TENANT_NOT_FOUND",
        )
        reply = _list_keys(channel, "tenants/acme", _bearer(good))
        assert all(k.name.startswith("tenants/acme/") for k in reply.api_keys)
        assert _reason(lambda: _list_keys(channel, "tenants/acme", _bearer(expired))) == (
            UNAUTHENTICATED,
            "JWT_EXPIRED",
        )
        assert _reason(lambda: _list_keys(channel, "tenants/acme", _bearer(foreign))) == (
            UNAUTHENTICATED,
            "JWT_INVALID",
        )
    _assert_no_secret_anywhere(keys_gw, good, expired, foreign)


def _assert_no_secret_anywhere(gw: GatewayProcess, *secrets: str) -> None:
    """No secret in the log, nor in any file of the data directory (the database and its WAL,
    audit records included)."""
    log = gw.log_path.read_text()
    assert "AUTHENTICATION IS OFF" not in log
    data = gw.log_path.parent / "data"
    stored = {p.name: p.read_bytes() for p in data.iterdir() if p.is_file()}
    assert any(name.startswith("qgateway.db") for name in stored)
    for secret in secrets:
        # Nor the secret part of a key, nor a token's signature, alone.
        part = secret.split("_", 2)[2] if secret.startswith("qgw_") else secret.rsplit(".")[-1]
        assert len(part) >= 16
        for text in (secret, part):
            assert text not in log
            for name, content in stored.items():
                assert text.encode() not in content, f"a secret in {name}"
