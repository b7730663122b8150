from __future__ import annotations

import pytest

from gateway.domain.errors import Unauthenticated
from gateway.security.api_keys import KeyRing, generate_key, hash_key


def _md(value: str) -> list[tuple[str, str]]:
    return [("user-agent", "x"), ("authorization", value)]


def test_generated_keys_authenticate_to_their_tenant() -> None:
    keys = [generate_key("acme"), generate_key("globex")]
    ring = KeyRing(k.config for k in keys)
    for _ in range(50):  # secrets may contain "_": every generated key must still parse
        extra = generate_key("acme")
        assert KeyRing([extra.config]).authenticate(_md(f"Bearer {extra.key}")).tenant == "acme"
    assert ring.authenticate(_md(f"Bearer {keys[1].key}")).tenant == "globex"
    assert keys[0].key.startswith(f"qgw_{keys[0].config.prefix}_")
    assert keys[0].config.sha256 == hash_key(keys[0].key)
    assert keys[0].key not in repr(keys[0].config)  # only the hash is kept


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        (None, "API_KEY_MISSING"),
        ("Basic abc", "API_KEY_INVALID"),
        ("Bearer qgw_nope_secret", "API_KEY_INVALID"),
        ("Bearer notakey", "API_KEY_INVALID"),
    ],
)
def test_missing_and_invalid_keys(header: str | None, reason: str) -> None:
    ring = KeyRing([generate_key("acme").config])
    with pytest.raises(Unauthenticated) as exc:
        ring.authenticate(_md(header) if header else [])
    assert exc.value.reason == reason


def test_right_prefix_wrong_secret_is_invalid() -> None:
    good = generate_key("acme")
    ring = KeyRing([good.config])
    forged = f"qgw_{good.config.prefix}_" + "A" * 32
    with pytest.raises(Unauthenticated) as exc:
        ring.authenticate(_md(f"Bearer {forged}"))
    assert exc.value.reason == "API_KEY_INVALID"
    assert forged not in exc.value.message
