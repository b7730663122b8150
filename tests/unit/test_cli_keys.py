"""`qgateway keys toml`: offline, a key shown once and a configuration entry holding only its
hash, which the gateway's configuration loads and accepts the key by."""

from __future__ import annotations

import asyncio
import tomllib

import pytest

from gateway import cli
from gateway.config import GatewayConfig
from gateway.security.api_keys import KeyRing, KeyVerifier
from gateway.security.principals import Role


def test_keys_toml_prints_a_loadable_entry_and_the_key_once(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert cli.main(["keys", "toml", "--tenant", "ops", "--role", "admin", "--name", "boot"]) == 0
    out = capsys.readouterr().out
    key = next(line.strip() for line in out.splitlines() if line.strip().startswith("qgw_"))
    entry = out[out.index("[[auth.api_keys]]") :]
    assert key not in entry  # the entry holds the hash, never the key
    config = GatewayConfig(**tomllib.loads(entry))
    (configured,) = config.auth.api_keys
    assert (configured.tenant, configured.role, configured.name) == ("ops", Role.ADMIN, "boot")
    principal = asyncio.run(KeyVerifier(KeyRing(config.auth.api_keys)).verify(key))
    assert principal.role is Role.ADMIN and config.auth.enabled
    assert out.count(key) == 1
