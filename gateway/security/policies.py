"""What a principal may see and use: its tenant's policy (gateway.security.tenant_policy).

Everything that lists or names a backend asks here, so a policy changes what each caller sees
everywhere at once. The PolicyBook holds every tenant's policy in memory: the RPC path never
reads the store for it. Tenants come from two places, by one rule: a tenant declared in the
TOML file (`[tenants.<id>]`) is managed by the configuration (AdminService shows it, and
UpdateTenant refuses it FAILED_PRECONDITION); any other tenant is created and changed through
AdminService and kept in the store (loaded at start, updated here on every change). A tenant
named by neither gets the configuration's `default_policy` (by default every backend, no limit
beyond the backends' own: the behaviour of a gateway with no tenants).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from gateway.domain.backends import BackendKind, BackendLimits
from gateway.domain.errors import PermissionDenied
from gateway.security.principals import Principal
from gateway.security.tenant_policy import UNRESTRICTED, Tenant, TenantPolicy


@dataclass(frozen=True)
class TenantsRead:
    """A read of the stored tenants, from when it began (`PolicyBook.begin_read`)."""

    # PolicyBook.version then: puts after it are newer than what the read may have seen.
    version: int
    # Reads begun before it, and it: a read that began earlier holds older tenants.
    number: int


class PolicyBook:
    """Every tenant's policy, by tenant id.

    Args:
        configured: Tenants declared in the configuration (managed_by_config).
        default: The policy of a tenant named nowhere.
    """

    def __init__(
        self, configured: Iterable[Tenant] = (), default: TenantPolicy = UNRESTRICTED
    ) -> None:
        self.configured: Mapping[str, Tenant] = {t.id: t for t in configured}
        self.default = default
        self._stored: dict[str, TenantPolicy] = {}
        # Counts puts; the version each stored tenant was last put at (see `load`).
        self.version = 0
        self._put_at: dict[str, int] = {}
        # Reads begun, and the number of the last one loaded (see `load`).
        self._reads = 0
        self._loaded = 0
        # Told of every put (a change this process made): replicas sharing the store signal
        # it to each other (gateway.server), so it applies there at their next call as here.
        self.on_put: Callable[[str], None] | None = None
        self._update_rate_limited()

    def _update_rate_limited(self) -> None:
        policies = [self.default, *(t.policy for t in self.configured.values())]
        policies += self._stored.values()
        # Whether any tenant has a request or submit rate: without one the rate-limit
        # interceptor stays out of every call.
        self.rate_limited = any(p.request_rate or p.submit_rate for p in policies)

    def policy(self, tenant: str) -> TenantPolicy:
        """The tenant's policy (a dict lookup: this runs on every RPC)."""
        found = self.configured.get(tenant)
        if found is not None:
            return found.policy
        return self._stored.get(tenant, self.default)

    def put(self, tenant: str, policy: TenantPolicy) -> None:
        """A stored tenant was created or changed (or loaded at start)."""
        self.version += 1
        self._stored[tenant] = policy
        self._put_at[tenant] = self.version
        self._update_rate_limited()
        if self.on_put is not None:
            self.on_put(tenant)

    def begin_read(self) -> TenantsRead:
        """Called as a read of the stored tenants begins; its tenants go to `load` with it."""
        self._reads += 1
        return TenantsRead(version=self.version, number=self._reads)

    def load(self, tenants: Iterable[Tenant], read: TenantsRead | None = None) -> None:
        """Replaces the stored tenants' policies (at start, or a refresh from the store) with
        those `read` found (None: a read that began just now).

        A tenant put since the read began was changed by this process after the read may
        have seen it: its put policy is kept (the refresh put the old one back until the next
        refresh). A read that began before the last one loaded holds older tenants and is
        dropped: the periodic refresh and a peer's signal read concurrently, and the slower,
        older read put back what the newer one had replaced, a put it missed included (no
        longer remembered once the newer load read past it), until the next refresh."""
        read = read or self.begin_read()
        if read.number < self._loaded:
            return
        self._loaded = read.number
        stored = {t.id: t.policy for t in tenants}
        newer = {tid: at for tid, at in self._put_at.items() if at > read.version}
        stored.update({tid: self._stored[tid] for tid in newer})
        self._stored = stored
        self._put_at = newer
        self._update_rate_limited()

    def visible_backends(
        self, principal: Principal, backends: Mapping[str, BackendKind]
    ) -> list[str]:
        """The backends (ids, no "backends/") `principal` may use, in name order.

        Any other backend answers NOT_FOUND to this caller in listings and lookups, exactly as
        one that does not exist.
        """
        policy = self.policy(principal.tenant)
        return sorted(name for name, kind in backends.items() if policy.allows(name, kind))

    def check_job(self, tenant: str, backend: str, qubits: int, shots: int) -> None:
        """Per-job limits of the tenant's policy, on a compiled and prepared job: no RetryInfo,
        since repeating the same job can never pass.

        Raises:
            PermissionDenied: QUBIT_LIMIT_EXCEEDED or SHOT_LIMIT_EXCEEDED, the limit in metadata.
        """
        policy = self.policy(tenant)
        if policy.max_qubits is not None and qubits > policy.max_qubits:
            raise PermissionDenied(
                "QUBIT_LIMIT_EXCEEDED",
                f"a circuit of this job uses {qubits} qubits; tenant {tenant} may use at most "
                f"{policy.max_qubits} per circuit",
                metadata={
                    "tenant": f"tenants/{tenant}",
                    "backend": f"backends/{backend}",
                    "limit": "max_qubits",
                    "maxQubits": str(policy.max_qubits),
                    "qubits": str(qubits),
                },
            )
        if policy.max_shots_per_job is not None and shots > policy.max_shots_per_job:
            raise PermissionDenied(
                "SHOT_LIMIT_EXCEEDED",
                f"this job runs {shots} shots; tenant {tenant} may run at most "
                f"{policy.max_shots_per_job} per job",
                metadata={
                    "tenant": f"tenants/{tenant}",
                    "backend": f"backends/{backend}",
                    "limit": "max_shots_per_job",
                    "maxShotsPerJob": str(policy.max_shots_per_job),
                    "shots": str(shots),
                },
            )


def backend_limits(principal: Principal, backend: str, limits: BackendLimits) -> BackendLimits:
    """A backend's admission limits as they apply to `principal` (the backend's own; a policy's
    per-job limits are checked at admission and shown by GetTenantUsage)."""
    return limits


def may_read_operations(principal: Principal) -> bool:
    """Whether `principal` may see backends' operational detail (health, breaker, pool): the
    FULL view. Admin callers only."""
    return principal.admin
