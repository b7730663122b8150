"""Who is calling. Until authentication is configured every caller is tenant "default"."""

from __future__ import annotations

from typing import Any

import grpc

DEFAULT_TENANT = "default"


def tenant_of(context: grpc.aio.ServicerContext[Any, Any]) -> str:
    """The caller's tenant."""
    return DEFAULT_TENANT
