"""Who is calling. Until authentication is configured every caller is tenant "default"."""

from __future__ import annotations

from gateway.api.context import Context

DEFAULT_TENANT = "default"


def tenant_of(context: Context) -> str:
    """The caller's tenant."""
    return DEFAULT_TENANT
