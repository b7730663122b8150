"""Who is calling: a principal of a tenant, with a role. Until authentication is configured
every caller is the anonymous principal of tenant "default"."""

from __future__ import annotations

import re
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Annotated

from pydantic import AfterValidator

from gateway.api.context import Context
from gateway.domain.errors import Code

DEFAULT_TENANT = "default"
# The spelling of a tenant id (API keys, JWT claims, mTLS rules, configuration, AdminService)
# and of an API key's prefix; anchor them where a whole value must match.
TENANT_ID_PATTERN = r"[A-Za-z0-9_.-]{1,64}"
KEY_PREFIX_PATTERN = r"[a-z0-9]{4,32}"
# AIP-159: "tenants/-" names every tenant (ListApiKeys), so no tenant may be called "-": its
# keys could never be listed by its own tenant admin.
EVERY_TENANT = "-"
TENANT_ID = re.compile(TENANT_ID_PATTERN)


def is_tenant_id(value: str) -> bool:
    """True for an id a tenant may have (AdminService, the configuration, keys, certificate
    rules and JWT claims alike). fullmatch: `$` also matches before a final newline, and
    "acme\n" passed a JWT's tenant claim that way."""
    return TENANT_ID.fullmatch(value) is not None and value != EVERY_TENANT


def _tenant_id(value: str) -> str:
    if not is_tenant_id(value):
        raise ValueError(f"a tenant id is 1-64 of [A-Za-z0-9_.-], not '-' alone: {value!r}")
    return value


# A tenant id in a configuration model.
TenantId = Annotated[str, AfterValidator(_tenant_id)]


class Role(StrEnum):
    """What a principal may do (the config spelling is the value)."""

    USER = "user"  # its own tenant's jobs and sessions
    TENANT_ADMIN = "tenant-admin"  # also its own tenant's keys, usage and audit records
    ADMIN = "admin"  # every tenant, key, policy and audit record; backends' operational view


@dataclass(frozen=True)
class Principal:
    """An authenticated caller.

    Attributes:
        tenant: The tenant it acts for.
        id: Who it is, safe to log and audit: "apiKeys/<prefix>", "jwt/<issuer>#<subject>",
            "cert/<subject>" or "anonymous". Never a secret.
        role: What it may do.
        key_prefix: The public prefix of the API key it used; "" for other credentials.
        expires_at: When its credential stops being accepted (a stored key's expire_time, a
            JWT's exp); None: never (configured keys, certificates, anonymous). A key it
            creates may not outlive it.
    """

    tenant: str
    id: str
    role: Role = Role.USER
    key_prefix: str = ""
    expires_at: datetime | None = None

    @property
    def admin(self) -> bool:
        return self.role is Role.ADMIN


ANONYMOUS = Principal(tenant=DEFAULT_TENANT, id="anonymous")


@dataclass(frozen=True)
class AuthFailure:
    """A call refused by authentication, as the auth interceptor reports it (to audit).

    Attributes:
        method: The full method, "/qgateway.v1.JobService/SubmitJob".
        peer: The caller's address as gRPC gives it.
        reason: The error's reason, e.g. "API_KEY_INVALID".
        code: The status the call ended with: UNAUTHENTICATED, or RESOURCE_EXHAUSTED when the
            host had spent its key lookups.
        key_prefix: The public prefix of the key presented, when it had one. Never a key.
        principal: Who a verified but refused credential names ("cert/<subject>" for a
            certificate no rule maps), else "".
    """

    method: str
    peer: str
    reason: str
    code: Code
    key_prefix: str = ""
    principal: str = ""


# Set by the auth interceptor for the duration of one call.
current_principal: ContextVar[Principal] = ContextVar("current_principal", default=ANONYMOUS)


def tenant_of(context: Context) -> str:
    """The caller's tenant."""
    return current_principal.get().tenant
