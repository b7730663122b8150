"""API keys: `qgw_<prefix>_<secret>`, stored as SHA-256 hashes only, compared in constant time.

The prefix identifies the key (it is safe to log); the secret never leaves the caller. A key is
sent as gRPC metadata `authorization: Bearer qgw_...`.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

from gateway.domain.errors import Unauthenticated
from gateway.security.principals import Principal, Role

KEY_PREFIX = "qgw"
METADATA_KEY = "authorization"
_PREFIX_BYTES = 6
_SECRET_BYTES = 24


class ApiKeyConfig(BaseModel):
    """One key in the configuration: its public prefix, the hash of the whole key, its tenant."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prefix: str = Field(pattern=r"^[a-z0-9]{4,32}$")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    tenant: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    name: str = ""
    role: Role = Role.USER


@dataclass(frozen=True)
class NewKey:
    key: str  # shown once to its owner, never stored
    config: ApiKeyConfig


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def generate_key(tenant: str, name: str = "", *, role: Role = Role.USER) -> NewKey:
    prefix = secrets.token_hex(_PREFIX_BYTES)
    key = f"{KEY_PREFIX}_{prefix}_{secrets.token_urlsafe(_SECRET_BYTES)}"
    return NewKey(
        key,
        ApiKeyConfig(prefix=prefix, sha256=hash_key(key), tenant=tenant, name=name, role=role),
    )


class KeyRing:
    """The configured keys, looked up by prefix."""

    def __init__(self, keys: Iterable[ApiKeyConfig]) -> None:
        self._by_prefix: Mapping[str, ApiKeyConfig] = {k.prefix: k for k in keys}

    def __bool__(self) -> bool:
        return bool(self._by_prefix)

    def authenticate(self, metadata: Iterable[tuple[str, str | bytes]]) -> Principal:
        header = next((v for k, v in metadata if k == METADATA_KEY), None)
        if header is None:
            raise Unauthenticated(
                "API_KEY_MISSING",
                "this gateway requires an API key: send metadata 'authorization: Bearer qgw_...'",
            )
        value = header.decode(errors="replace") if isinstance(header, bytes) else header
        scheme, _, key = value.partition(" ")
        parts = key.split("_", 2)  # the secret may itself contain "_"
        invalid = Unauthenticated("API_KEY_INVALID", "the API key is not valid")
        if scheme.lower() != "bearer" or len(parts) != 3 or parts[0] != KEY_PREFIX:
            raise invalid
        entry = self._by_prefix.get(parts[1])
        # Compare against a dummy hash when the prefix is unknown, so timing tells nothing.
        expected = entry.sha256 if entry is not None else "0" * 64
        if not hmac.compare_digest(hash_key(key), expected) or entry is None:
            raise invalid
        return Principal(
            tenant=entry.tenant,
            id=f"apiKeys/{entry.prefix}",
            role=entry.role,
            key_prefix=entry.prefix,
        )
