"""Configured API keys through the authenticator every call goes through."""

from __future__ import annotations

import pytest

from gateway.domain.errors import Unauthenticated
from gateway.security.api_keys import ApiKeyConfig, KeyRing, KeyVerifier, generate_key, hash_key
from gateway.security.authenticator import Authenticator
from gateway.security.principals import Principal

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def _authenticate(keys: list[ApiKeyConfig], metadata: list[tuple[str, str]]) -> Principal:
    return await Authenticator(KeyVerifier(KeyRing(keys))).authenticate(metadata, {})


def _md(value: str) -> list[tuple[str, str]]:
    return [("user-agent", "x"), ("authorization", value)]


async def test_generated_keys_authenticate_to_their_tenant() -> None:
    keys = [generate_key("acme"), generate_key("globex")]
    configs = [k.config for k in keys]
    for _ in range(50):  # secrets may contain "_": every generated key must still parse
        extra = generate_key("acme")
        principal = await _authenticate([extra.config], _md(f"Bearer {extra.key}"))
        assert principal.tenant == "acme"
    assert (await _authenticate(configs, _md(f"Bearer {keys[1].key}"))).tenant == "globex"
    assert keys[0].key.startswith(f"qgw_{keys[0].config.prefix}_")
    assert keys[0].config.sha256 == hash_key(keys[0].key)
    assert keys[0].key not in repr(keys[0].config)  # only the hash is kept


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        (None, "API_KEY_MISSING"),
        ("Basic abc", "AUTHORIZATION_INVALID"),
        ("Bearer qgw_nope_secret", "API_KEY_INVALID"),
        ("Bearer notakey", "API_KEY_INVALID"),
    ],
)
async def test_missing_and_invalid_keys(header: str | None, reason: str) -> None:
    with pytest.raises(Unauthenticated) as exc:
        await _authenticate([generate_key("acme").config], _md(header) if header else [])
    assert exc.value.reason == reason


async def test_right_prefix_wrong_secret_is_invalid() -> None:
    good = generate_key("acme")
    forged = f"qgw_{good.config.prefix}_" + "A" * 32
    with pytest.raises(Unauthenticated) as exc:
        await _authenticate([good.config], _md(f"Bearer {forged}"))
    assert exc.value.reason == "API_KEY_INVALID"
    assert forged not in exc.value.message
