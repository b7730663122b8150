"""Configured API keys through the authenticator every call goes through."""

from __future__ import annotations

import pytest

from gateway.domain.errors import Unauthenticated
from gateway.security.api_keys import ApiKeyConfig, KeyRing, KeyVerifier, generate_key, hash_key
from gateway.security.authenticator import Authenticator, claimed_key_prefix
from gateway.security.principals import Principal

pytestmark = pytest.mark.anyio


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


class _CountingStore:
    def __init__(self) -> None:
        self.reads: list[str] = []

    async def get_api_key(self, prefix: str) -> None:
        self.reads.append(prefix)

    async def touch_api_keys(self, used: object) -> None:
        pass


@pytest.mark.parametrize(
    "token",
    ["qgw_ABCD_secret", "qgw_ab_secret", "qgw_abc\ndef_secret", "qgw_" + "a" * 33 + "_secret"],
)
async def test_a_prefix_no_key_can_have_is_invalid_unread_and_unaudited(token: str) -> None:
    # Only a prefix of a key's own form reaches the cache, the store or the audit log: any
    # other (upper case, too short or long, a newline) cost a store read and was logged as is.
    store = _CountingStore()
    verifier = KeyVerifier(KeyRing([]), store)
    with pytest.raises(Unauthenticated) as caught:
        await verifier.verify(token, "ipv4:10.0.0.7:5555")
    assert caught.value.reason == "API_KEY_INVALID"
    assert store.reads == []
    assert claimed_key_prefix([("authorization", f"Bearer {token}")]) == ""
