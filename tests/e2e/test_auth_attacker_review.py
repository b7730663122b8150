"""Attacker review of authentication and authorization over real gRPC (127.0.0.1, plaintext).

One gateway for the module: a configured admin key (tenant ops), tenant admins of acme and
globex (stored keys made through AdminService), and JWTs from a key set on disk. Probes that
held; the review's findings (the key set's fetch and file) are tested in process, in
tests/unit/test_auth_attacker_review.py.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm
from qgateway.v1 import admin_pb2, admin_service_pb2, admin_service_pb2_grpc

from gateway.security.api_keys import generate_key
from gateway.security.principals import Role
from tests.gateway_process import GatewayProcess, keys_toml, write_config
from tests.rpc import status_of

ISSUER, AUDIENCE = "https://idp.review", "qgateway-review"
ADMIN = generate_key("ops", role=Role.ADMIN)
JWT_KEY = ec.generate_private_key(ec.SECP256R1())


def _jwks_text() -> str:
    jwk = ECAlgorithm.to_jwk(JWT_KEY.public_key(), as_dict=True)
    return json.dumps({"keys": [{**jwk, "kid": "k1", "alg": "ES256"}]})


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[GatewayProcess, Path]]:
    root = tmp_path_factory.mktemp("authreview")
    jwks = root / "jwks.json"
    jwks.write_text(_jwks_text())
    rest = (
        "[tenants.acme]\n[tenants.globex]\n\n[auth]\nkey_cache_s = 0\n\n"
        + keys_toml(ADMIN)
        + f'\n[auth.jwt]\nissuer = "{ISSUER}"\naudience = "{AUDIENCE}"\n'
        f'jwks_file = "{jwks}"\nalgorithms = ["ES256"]\n'
    )
    config = write_config(root / "g.toml", root / "data", rest)
    process = GatewayProcess.start(config, root / "gateway.log")
    yield process, jwks
    assert process.terminate() == 0, process.log_path.read_text()[-3000:]


def _bearer(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


def _token(**claims: Any) -> str:
    now = int(time.time())
    payload = {"iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "tenant": "acme", "exp": now + 300}
    payload.update(claims)
    return jwt.encode(payload, JWT_KEY, algorithm="ES256", headers={"kid": "k1"})


def _admin(channel: grpc.Channel) -> Any:
    return admin_service_pb2_grpc.AdminServiceStub(channel)  # type: ignore[no-untyped-call]


def _error(call: Any) -> Any:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return status_of(caught.value)


def _tenant_admin_key(channel: grpc.Channel, tenant: str) -> tuple[str, str]:
    made = _admin(channel).CreateApiKey(
        admin_service_pb2.CreateApiKeyRequest(
            parent=f"tenants/{tenant}",
            api_key=admin_pb2.ApiKey(role=admin_pb2.ROLE_TENANT_ADMIN),
        ),
        timeout=10,
        metadata=_bearer(ADMIN.key),
    )
    return made.api_key.name, made.key


# ------------------------------------------------------------------ probes that held


def test_a_tenant_admin_learns_nothing_of_another_tenants_keys_or_tenant(
    gw: tuple[GatewayProcess, Path],
) -> None:
    process, _ = gw
    with grpc.insecure_channel(process.address) as channel:
        globex_key_name, _ = _tenant_admin_key(channel, "globex")
        _, acme = _tenant_admin_key(channel, "acme")
        admin = _admin(channel)
        prefix = globex_key_name.rsplit("/", 1)[1]

        def revoke(name: str) -> Any:
            return _error(
                lambda: admin.RevokeApiKey(
                    admin_service_pb2.RevokeApiKeyRequest(name=name),
                    timeout=10,
                    metadata=_bearer(acme),
                )
            )

        real, made_up = revoke(globex_key_name), revoke("tenants/nosuch/apiKeys/abcdef012345")
        assert (real.code, real.reason) == (made_up.code, made_up.reason)
        assert real.code == grpc.StatusCode.NOT_FOUND
        # Its own tenant's name with globex's prefix: the same NOT_FOUND as a made-up prefix.
        mine = revoke(f"tenants/acme/apiKeys/{prefix}")
        mine_made_up = revoke("tenants/acme/apiKeys/abcdef012345")
        assert (mine.code, mine.reason, mine.metadata.keys()) == (
            mine_made_up.code,
            mine_made_up.reason,
            mine_made_up.metadata.keys(),
        )

        def get(name: str) -> Any:
            return _error(
                lambda: admin.GetTenant(
                    admin_service_pb2.GetTenantRequest(name=name),
                    timeout=10,
                    metadata=_bearer(acme),
                )
            )

        exists, absent = get("tenants/globex"), get("tenants/nosuch")
        assert (exists.code, exists.reason) == (absent.code, absent.reason)
        assert exists.message.replace("globex", "X") == absent.message.replace("nosuch", "X")
        # Audit records: the filter is AND-ed with the caller's tenant.
        records = admin.ListAuditRecords(
            admin_service_pb2.ListAuditRecordsRequest(filter='tenant = "globex"'),
            timeout=10,
            metadata=_bearer(acme),
        )
        assert list(records.audit_records) == []
        every = admin.ListAuditRecords(
            admin_service_pb2.ListAuditRecordsRequest(page_size=1000),
            timeout=10,
            metadata=_bearer(acme),
        )
        assert {r.tenant for r in every.audit_records} <= {"acme"}


def test_a_jwt_naming_a_configured_tenant_in_another_case_is_another_tenant(
    gw: tuple[GatewayProcess, Path],
) -> None:
    process, _ = gw
    with grpc.insecure_channel(process.address) as channel:
        admin = _admin(channel)
        usage = _error(
            lambda: admin.GetTenantUsage(
                admin_service_pb2.GetTenantUsageRequest(name="tenants/acme/usage"),
                timeout=10,
                metadata=_bearer(_token(tenant="ACME")),
            )
        )
        assert usage.code == grpc.StatusCode.NOT_FOUND
