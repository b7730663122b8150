"""A tenant's policy as the gateway uses it: which backends, how large a job, how much per period,
how fast. Frozen values, free of gRPC and of the store; gateway.config reads them from TOML,
gateway.api.tenant_codec from and to the wire, gateway.store keeps them as JSON.

An unset limit (None) is no limit beyond the backend's own.
"""

from __future__ import annotations

import fnmatch
import functools
import hashlib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from gateway.domain.backends import BackendKind

DAY_S = 86400.0
# The longest quota period, and the longest a rate may take to refill one token: a slower
# rate's retry delay would be no use to a caller (and 1e-300 per second overflowed it).
MAX_PERIOD_S = 366 * DAY_S
MIN_PER_SECOND = 1 / MAX_PERIOD_S
# Bounds on what AdminService and the configuration accept: every ListBackends and submission
# of the tenant matches its patterns on the event loop, and every GetTenant, ListTenants and
# GetTenantUsage response carries them.
MAX_PATTERNS = 256
MAX_PATTERN_CHARS = 128
MAX_DISPLAY_NAME = 256
# The widest each limit can be reported as (TenantPolicy's fields in the v1 API): a policy
# from the configuration file past them made GetTenantUsage and GetTenant fail INTERNAL.
_MAX_BY_FIELD = {
    "max_qubits": 2**31 - 1,
    "max_shots_per_job": 2**63 - 1,
    "max_queued_jobs": 2**31 - 1,
    "max_sessions": 2**31 - 1,
}
_MAX_BURST = 2**31 - 1
_MAX_QUOTA_SHOTS = 2**63 - 1
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class RateLimit:
    """A token bucket: `per_second` tokens refill each second, up to `burst`."""

    per_second: float
    burst: int


@dataclass(frozen=True)
class PeriodQuota:
    """Shots and cost per period; periods are UTC, aligned to the Unix epoch."""

    shots: int | None = None
    cost: float | None = None
    # A job priced in another unit does not count against `cost`.
    cost_unit: str = ""
    period_s: float = DAY_S


@dataclass(frozen=True)
class Period:
    start: datetime
    end: datetime


def period_at(now: datetime, period_s: float) -> Period:
    """The period holding `now`: [k * period_s, (k + 1) * period_s) seconds after the epoch."""
    # Whole microseconds, so a period's start is the same value every time it is computed.
    period_us = max(1, round(period_s * 1e6))
    now_us = (now - _EPOCH) // timedelta(microseconds=1)
    start_us = now_us // period_us * period_us
    start = _EPOCH + timedelta(microseconds=start_us)
    return Period(start, start + timedelta(microseconds=period_us))


@dataclass(frozen=True)
class TenantPolicy:
    """What a tenant's principals may use.

    Attributes:
        allowed_simulators: Simulator backends, as ids or shell-style patterns ("aer*", "*").
        allowed_hardware: Hardware backends, the same way; empty: none.
        max_qubits: The most qubits one circuit may use.
        max_shots_per_job: The most shots one job may run (over its PUBs and bindings).
        quota: Shots and cost per period; None: no period quota (usage is still counted, per
            day).
        request_rate: Every RPC of the tenant's principals.
        submit_rate: SubmitJob and Run calls.
        max_queued_jobs: Jobs the tenant may have QUEUED at once, over all backends.
        max_sessions: Sessions the tenant may have open at once; None: the server's default.
    """

    allowed_simulators: tuple[str, ...] = ("*",)
    allowed_hardware: tuple[str, ...] = ()
    max_qubits: int | None = None
    max_shots_per_job: int | None = None
    quota: PeriodQuota | None = None
    request_rate: RateLimit | None = None
    submit_rate: RateLimit | None = None
    max_queued_jobs: int | None = None
    max_sessions: int | None = None

    def allows(self, backend: str, kind: BackendKind) -> bool:
        """Whether the policy lets the tenant use `backend` (a backend id) of `kind`."""
        matcher = self._hardware if kind is BackendKind.HARDWARE else self._simulators
        return matcher.match(backend) is not None

    # Compiled once per policy, on first use (never for a policy that fails validation):
    # fnmatchcase's shared cache of compiled patterns (32768) thrashes once every tenant's
    # patterns together pass it, and each miss recompiles.
    @functools.cached_property
    def _simulators(self) -> re.Pattern[str]:
        return _compile(self.allowed_simulators)

    @functools.cached_property
    def _hardware(self) -> re.Pattern[str]:
        return _compile(self.allowed_hardware)

    @property
    def period_s(self) -> float:
        return self.quota.period_s if self.quota is not None else DAY_S

    def period(self, now: datetime) -> Period:
        return period_at(now, self.period_s)


def _compile(patterns: tuple[str, ...]) -> re.Pattern[str]:
    """One expression matching what any of the shell patterns matches (as fnmatchcase)."""
    if not patterns:
        return re.compile(r"(?!)")
    return re.compile("|".join(fnmatch.translate(p) for p in patterns))


# Every backend, no limit beyond the backends' own: what a tenant that no configuration or
# AdminService call names gets by default (the behaviour of a gateway with no tenants).
UNRESTRICTED = TenantPolicy(allowed_simulators=("*",), allowed_hardware=("*",))


@dataclass(frozen=True)
class Tenant:
    """A tenant as AdminService shows it.

    Attributes:
        managed_by_config: Declared in the TOML file: read-only through the API.
        etag: Changes whenever display name or policy change (AIP-154).
    """

    id: str
    display_name: str
    policy: TenantPolicy
    etag: str
    created_at: datetime | None = None
    updated_at: datetime | None = None
    managed_by_config: bool = False


@dataclass(frozen=True)
class UsageFigures:
    """What a tenant used in one period, and holds now (gateway.store)."""

    shots_used: int = 0
    shots_reserved: int = 0
    cost_used: float = 0.0
    cost_reserved: float = 0.0
    queued_jobs: int = 0
    open_sessions: int = 0


# ------------------------------------------------------------------------------- JSON form


def _rate_json(rate: RateLimit | None) -> dict[str, Any] | None:
    return None if rate is None else {"per_second": rate.per_second, "burst": rate.burst}


def _rate_from(data: Any) -> RateLimit | None:
    return None if data is None else RateLimit(float(data["per_second"]), int(data["burst"]))


def policy_to_json(policy: TenantPolicy) -> str:
    """The policy as canonical JSON (sorted keys): what the store keeps and the etag hashes."""
    quota = policy.quota
    data: dict[str, Any] = {
        "allowed_simulators": list(policy.allowed_simulators),
        "allowed_hardware": list(policy.allowed_hardware),
        "max_qubits": policy.max_qubits,
        "max_shots_per_job": policy.max_shots_per_job,
        "quota": None
        if quota is None
        else {
            "shots": quota.shots,
            "cost": quota.cost,
            "cost_unit": quota.cost_unit,
            "period_s": quota.period_s,
        },
        "request_rate": _rate_json(policy.request_rate),
        "submit_rate": _rate_json(policy.submit_rate),
        "max_queued_jobs": policy.max_queued_jobs,
        "max_sessions": policy.max_sessions,
    }
    return json.dumps(data, sort_keys=True, separators=(",", ":"))


def policy_from_json(text: str) -> TenantPolicy:
    data: Mapping[str, Any] = json.loads(text)
    quota = data.get("quota")
    return TenantPolicy(
        allowed_simulators=tuple(data.get("allowed_simulators", ())),
        allowed_hardware=tuple(data.get("allowed_hardware", ())),
        max_qubits=data.get("max_qubits"),
        max_shots_per_job=data.get("max_shots_per_job"),
        quota=None
        if quota is None
        else PeriodQuota(
            shots=quota.get("shots"),
            cost=quota.get("cost"),
            cost_unit=str(quota.get("cost_unit", "")),
            period_s=float(quota.get("period_s", DAY_S)),
        ),
        request_rate=_rate_from(data.get("request_rate")),
        submit_rate=_rate_from(data.get("submit_rate")),
        max_queued_jobs=data.get("max_queued_jobs"),
        max_sessions=data.get("max_sessions"),
    )


def etag_of(display_name: str, policy: TenantPolicy) -> str:
    """A tenant's etag: a digest of what UpdateTenant can change (the same content, the same
    etag, so a config-managed tenant's etag is stable across restarts)."""
    digest = hashlib.sha256()
    digest.update(display_name.encode())
    digest.update(b"\0")
    digest.update(policy_to_json(policy).encode())
    return digest.hexdigest()[:20]


def validate_policy(policy: TenantPolicy) -> list[tuple[str, str]]:
    """Problems with a policy, as (field path, description); empty when it is valid."""
    problems: list[tuple[str, str]] = []
    for name, most in _MAX_BY_FIELD.items():
        value = getattr(policy, name)
        if value is not None and not 1 <= value <= most:
            problems.append((name, f"must be 1 to {most} when set"))
    for name, patterns in (
        ("allowed_simulators", policy.allowed_simulators),
        ("allowed_hardware", policy.allowed_hardware),
    ):
        if len(patterns) > MAX_PATTERNS:
            problems.append((name, f"at most {MAX_PATTERNS} patterns"))
        elif any(not p or len(p) > MAX_PATTERN_CHARS for p in patterns):
            problems.append((name, f"patterns are 1 to {MAX_PATTERN_CHARS} characters"))
    for name in ("request_rate", "submit_rate"):
        rate: RateLimit | None = getattr(policy, name)
        if rate is None:
            continue
        if not (math.isfinite(rate.per_second) and rate.per_second >= MIN_PER_SECOND):
            problems.append((f"{name}.per_second", "must be at least one per 366 days"))
        if not 1 <= rate.burst <= _MAX_BURST:
            problems.append((f"{name}.burst", f"must be 1 to {_MAX_BURST}"))
    quota = policy.quota
    if quota is not None:
        if quota.shots is not None and not 0 <= quota.shots <= _MAX_QUOTA_SHOTS:
            problems.append(("quota.shots", f"must be 0 to {_MAX_QUOTA_SHOTS}"))
        if quota.cost is not None and not (math.isfinite(quota.cost) and quota.cost >= 0):
            problems.append(("quota.cost", "must be a non-negative number"))
        if quota.cost is not None and not quota.cost_unit:
            problems.append(("quota.cost_unit", "is required with a cost quota"))
        if not (math.isfinite(quota.period_s) and 1e-3 <= quota.period_s <= MAX_PERIOD_S):
            problems.append(("quota.period", "must be between 1 ms and 366 days"))
    return problems
