"""Who may administer what (AdminService): admins every tenant, tenant admins their own.

Another tenant's resources answer NOT_FOUND to a caller without global scope, exactly as one
that does not exist, so a tenant admin learns nothing of other tenants; a known caller without
the role gets PERMISSION_DENIED.
"""

from __future__ import annotations

from gateway.domain.errors import NotFound, PermissionDenied, ResourceInfo
from gateway.security.principals import Principal, Role

TENANT_RESOURCE = "qgateway.dev/Tenant"


def _hidden(tenant: str, resource: str) -> NotFound:
    """Another tenant's resource, answered exactly as one of a tenant that does not exist
    (admin_tenants.tenant_not_found's ResourceInfo): NOT_FOUND names what was not found."""
    return NotFound(
        "TENANT_NOT_FOUND",
        f"{resource} not found",
        metadata={"resource": resource},
        resource_info=ResourceInfo(TENANT_RESOURCE, f"tenants/{tenant}", "no such tenant"),
    )


def require_admin(principal: Principal) -> None:
    """Global scope: creating tenants, changing policies, every tenant at once."""
    if principal.role is not Role.ADMIN:
        raise PermissionDenied(
            "ADMIN_ROLE_REQUIRED",
            "this call needs the admin role",
            metadata={"role": str(principal.role)},
        )


def require_tenant_admin(principal: Principal, tenant: str, resource: str) -> None:
    """Administering `tenant` (its keys, usage, audit records): admins, or its tenant admins.

    Args:
        resource: The resource name the caller asked for, for the NOT_FOUND message.
    """
    if principal.role is Role.ADMIN:
        return
    if principal.tenant != tenant:
        raise _hidden(tenant, resource)
    if principal.role is not Role.TENANT_ADMIN:
        raise PermissionDenied(
            "TENANT_ADMIN_ROLE_REQUIRED",
            "this call needs the tenant-admin or admin role",
            metadata={"role": str(principal.role)},
        )


def require_tenant_member(principal: Principal, tenant: str, resource: str) -> None:
    """Reading what every principal of `tenant` may read about it (its usage): admins, or any
    principal of that tenant."""
    if principal.role is not Role.ADMIN and principal.tenant != tenant:
        raise _hidden(tenant, resource)
