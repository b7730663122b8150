"""What a principal may see and use. The one place the policies of the security issue plug in.

Today there are no per-tenant policies: every caller may use every backend under the backend's
own limits, and only the admin flag (of a key, or of the anonymous caller by configuration)
separates callers. Everything that lists or names a backend asks here, so a policy added later
changes what each caller sees everywhere at once.
"""

from __future__ import annotations

from collections.abc import Iterable

from gateway.domain.backends import BackendLimits
from gateway.security.principals import Principal


def visible_backends(principal: Principal, backends: Iterable[str]) -> list[str]:
    """The backends (ids, no "backends/") `principal` may use, in name order.

    Any other backend answers NOT_FOUND to this caller, exactly as one that does not exist.
    """
    return sorted(backends)


def backend_limits(principal: Principal, backend: str, limits: BackendLimits) -> BackendLimits:
    """A backend's admission limits as they apply to `principal` (today: the backend's own)."""
    return limits


def may_read_operations(principal: Principal) -> bool:
    """Whether `principal` may see backends' operational detail (health, breaker, pool): the
    FULL view. Admin callers only."""
    return principal.admin
