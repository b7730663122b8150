"""Who is calling. Until authentication is configured every caller is tenant "default"."""

from __future__ import annotations

from contextvars import ContextVar

from gateway.api.context import Context
from gateway.security.api_keys import Principal

DEFAULT_TENANT = "default"
ANONYMOUS = Principal(tenant=DEFAULT_TENANT, key_prefix="")

# Set by the auth interceptor for the duration of one call.
current_principal: ContextVar[Principal] = ContextVar("current_principal", default=ANONYMOUS)


def tenant_of(context: Context) -> str:
    """The caller's tenant."""
    return current_principal.get().tenant
