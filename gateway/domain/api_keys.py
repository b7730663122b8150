"""Stored API keys: a key's public record (never its secret) and its lifecycle.

A key is `qgw_<prefix>_<secret>`; the store keeps the prefix (its id), the SHA-256 of the whole
key, its tenant and role, and when it was created, expires, was revoked and was last used.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from gateway.domain.errors import QuotaViolation, ResourceExhausted

# Keys a tenant may hold that are not revoked (expired ones included, until revoked): listing
# its active keys walks these, so they bound what one page costs the store.
MAX_KEYS_PER_TENANT = 1000


class KeyState(StrEnum):
    ACTIVE = "ACTIVE"
    EXPIRED = "EXPIRED"
    REVOKED = "REVOKED"


@dataclass(frozen=True)
class ApiKeyRecord:
    """One stored key.

    Attributes:
        prefix: Public id of the key (safe to log).
        tenant: Tenant the key acts for.
        sha256: Hex SHA-256 of the whole key.
        display_name: Free text naming its owner or use.
        role: A gateway.security.principals.Role value ("user", "tenant-admin", "admin").
        created_at: When it was created (UTC).
        expires_at: When it stops being accepted; None: never.
        revoked_at: When it was revoked; None: it was not.
        last_used_at: When it was last accepted (recorded at most about once a minute).
    """

    prefix: str
    tenant: str
    sha256: str
    display_name: str
    role: str
    created_at: datetime
    expires_at: datetime | None = None
    revoked_at: datetime | None = None
    last_used_at: datetime | None = None

    def state(self, now: datetime) -> KeyState:
        """Revocation wins over expiry: a revoked key says so even after it expired."""
        if self.revoked_at is not None:
            return KeyState.REVOKED
        if self.expires_at is not None and now >= self.expires_at:
            return KeyState.EXPIRED
        return KeyState.ACTIVE


@dataclass(frozen=True)
class ApiKeyPage:
    keys: list[ApiKeyRecord]
    # (tenant, prefix) of the last key of this page, for the next page's `after`; None at the end.
    next_cursor: tuple[str, str] | None


def too_many_keys(tenant: str, limit: int) -> ResourceExhausted:
    return ResourceExhausted(
        "API_KEY_LIMIT_REACHED",
        f"tenant {tenant} already has {limit} API keys that are not revoked, its limit (expired "
        "keys count until revoked); revoke one first",
        metadata={"tenant": f"tenants/{tenant}", "limit": str(limit)},
        quota_violations=[
            QuotaViolation(f"tenants/{tenant}", f"at most {limit} API keys not revoked")
        ],
    )
