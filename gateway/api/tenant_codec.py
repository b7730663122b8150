"""Tenants, policies and usage between qgateway.v1 messages and gateway.security.tenant_policy,
and AIP-134 update masks on a tenant."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from google.protobuf.message import Message
from qgateway.v1 import admin_pb2, job_pb2

from gateway.api.codec import timestamp
from gateway.domain.errors import FieldViolation, InvalidArgument
from gateway.security.principals import TENANT_ID, is_tenant_id
from gateway.security.tenant_policy import (
    DAY_S,
    MAX_DISPLAY_NAME,
    PeriodQuota,
    RateLimit,
    Tenant,
    TenantPolicy,
    validate_policy,
)
from gateway.store.base import TenantUsageRecord

TENANT_PREFIX = "tenants/"
USAGE_SUFFIX = "/usage"


def invalid_tenant_name(field: str, pattern: str) -> InvalidArgument:
    return InvalidArgument(
        "INVALID_TENANT_NAME",
        f"{field} must be {pattern!r} with an id of 1-64 letters, digits, '_', '.' or '-'",
        metadata={"field": field},
        field_violations=[FieldViolation(field, f"expected {pattern!r}")],
    )


def tenant_id(name: str, field: str = "name") -> str:
    """The id of "tenants/{tenant}"."""
    tid = name[len(TENANT_PREFIX) :] if name.startswith(TENANT_PREFIX) else ""
    if not TENANT_ID.fullmatch(tid):
        raise invalid_tenant_name(field, "tenants/{tenant}")
    return tid


def usage_tenant_id(name: str, field: str = "name") -> str:
    """The tenant id of "tenants/{tenant}/usage"."""
    if not name.endswith(USAGE_SUFFIX):
        raise invalid_tenant_name(field, "tenants/{tenant}/usage")
    try:
        return tenant_id(name[: -len(USAGE_SUFFIX)], field)
    except InvalidArgument:
        raise invalid_tenant_name(field, "tenants/{tenant}/usage") from None


def check_tenant_id(value: str, field: str = "tenant_id") -> str:
    if not is_tenant_id(value):
        raise InvalidArgument(
            "INVALID_TENANT_ID",
            f"{field} must be 1-64 letters, digits, '_', '.' or '-', not '-' alone (which names"
            " every tenant)",
            metadata={"field": field},
            field_violations=[FieldViolation(field, "1-64 of [A-Za-z0-9_.-]")],
        )
    return value


def check_display_name(value: str, field: str = "tenant.display_name") -> str:
    if len(value) > MAX_DISPLAY_NAME:
        problem = f"at most {MAX_DISPLAY_NAME} characters"
        raise InvalidArgument(
            "INVALID_TENANT",
            f"{field}: {problem}",
            metadata={"field": field},
            field_violations=[FieldViolation(field, problem)],
        )
    return value


# --------------------------------------------------------------------------------- policies


def _encode_rate(rate: RateLimit, out: admin_pb2.RateLimit) -> None:
    out.per_second = rate.per_second
    out.burst = rate.burst


def encode_policy(policy: TenantPolicy) -> admin_pb2.TenantPolicy:
    out = admin_pb2.TenantPolicy(
        allowed_simulators=list(policy.allowed_simulators),
        allowed_hardware=list(policy.allowed_hardware),
    )
    if policy.max_qubits is not None:
        out.max_qubits = policy.max_qubits
    if policy.max_shots_per_job is not None:
        out.max_shots_per_job = policy.max_shots_per_job
    if policy.max_queued_jobs is not None:
        out.max_queued_jobs = policy.max_queued_jobs
    if policy.max_sessions is not None:
        out.max_sessions = policy.max_sessions
    quota = policy.quota
    if quota is not None:
        if quota.shots is not None:
            out.quota.shots = quota.shots
        if quota.cost is not None:
            out.quota.cost = quota.cost
        out.quota.cost_unit = quota.cost_unit
        out.quota.period.FromNanoseconds(round(quota.period_s * 1e9))
    if policy.request_rate is not None:
        _encode_rate(policy.request_rate, out.request_rate)
    if policy.submit_rate is not None:
        _encode_rate(policy.submit_rate, out.submit_rate)
    return out


def _decode_rate(msg: admin_pb2.TenantPolicy, name: str) -> RateLimit | None:
    if not msg.HasField(name):
        return None
    rate: admin_pb2.RateLimit = getattr(msg, name)
    return RateLimit(rate.per_second, rate.burst)


def decode_policy(
    msg: admin_pb2.TenantPolicy, field: str = "tenant.policy", *, created: bool = False
) -> TenantPolicy:
    """The policy a message describes. `created`: CreateTenant's, where no allowed_simulators
    (a repeated field cannot tell unset from empty) is the default, every simulator, as in
    the configuration file; a policy naming only a limit allowed no backend at all.

    Raises:
        InvalidArgument: INVALID_POLICY, each problem a field violation under `field`.
    """
    quota = None
    problems: list[tuple[str, str]] = []
    if msg.HasField("quota"):
        q = msg.quota
        period_s = q.period.ToNanoseconds() / 1e9 if q.HasField("period") else DAY_S
        # protobuf parses any seconds and nanos: nanos past a second, or of the other sign,
        # would be stored as a different period than the one sent.
        seconds, nanos = q.period.seconds, q.period.nanos
        if not (abs(nanos) < 1_000_000_000 and seconds * nanos >= 0):
            problems.append(
                ("quota.period", f"is not a valid Duration ({seconds} s and {nanos} ns)")
            )
        quota = PeriodQuota(
            shots=q.shots if q.HasField("shots") else None,
            cost=q.cost if q.HasField("cost") else None,
            cost_unit=q.cost_unit,
            period_s=period_s,
        )
    policy = TenantPolicy(
        allowed_simulators=(
            tuple(msg.allowed_simulators)
            if msg.allowed_simulators or not created
            else TenantPolicy.allowed_simulators
        ),
        allowed_hardware=tuple(msg.allowed_hardware),
        max_qubits=msg.max_qubits if msg.HasField("max_qubits") else None,
        max_shots_per_job=msg.max_shots_per_job if msg.HasField("max_shots_per_job") else None,
        quota=quota,
        request_rate=_decode_rate(msg, "request_rate"),
        submit_rate=_decode_rate(msg, "submit_rate"),
        max_queued_jobs=msg.max_queued_jobs if msg.HasField("max_queued_jobs") else None,
        max_sessions=msg.max_sessions if msg.HasField("max_sessions") else None,
    )
    problems += validate_policy(policy)
    if problems:
        raise InvalidArgument(
            "INVALID_POLICY",
            "the policy is invalid: "
            + "; ".join(f"{field}.{path} {what}" for path, what in problems),
            metadata={"field": field},
            field_violations=[FieldViolation(f"{field}.{path}", what) for path, what in problems],
        )
    return policy


# ---------------------------------------------------------------------------------- tenants


def encode_tenant(tenant: Tenant) -> admin_pb2.Tenant:
    out = admin_pb2.Tenant(
        name=f"{TENANT_PREFIX}{tenant.id}",
        display_name=tenant.display_name,
        policy=encode_policy(tenant.policy),
        etag=tenant.etag,
    )
    created, updated = timestamp(tenant.created_at), timestamp(tenant.updated_at)
    if created is not None:
        out.create_time.CopyFrom(created)
    if updated is not None:
        out.update_time.CopyFrom(updated)
    return out


def encode_usage(
    tenant: str,
    usage: TenantUsageRecord,
    policy: TenantPolicy,
    period_start: datetime,
    period_end: datetime,
) -> admin_pb2.TenantUsage:
    out = admin_pb2.TenantUsage(
        name=f"{TENANT_PREFIX}{tenant}{USAGE_SUFFIX}",
        shots_used=usage.shots_used,
        shots_reserved=usage.shots_reserved,
        queued_jobs=usage.queued_jobs,
        open_sessions=usage.open_sessions,
        policy=encode_policy(policy),
    )
    start, end = timestamp(period_start), timestamp(period_end)
    assert start is not None and end is not None
    out.period_start_time.CopyFrom(start)
    out.period_end_time.CopyFrom(end)
    unit = policy.quota.cost_unit if policy.quota is not None else ""
    if unit:
        out.cost_used.CopyFrom(job_pb2.Cost(amount=usage.cost_used, unit=unit))
        out.cost_reserved.CopyFrom(job_pb2.Cost(amount=usage.cost_reserved, unit=unit))
    return out


# ----------------------------------------------------------------------------- update masks


def _invalid_mask(path: str, why: str) -> InvalidArgument:
    return InvalidArgument(
        "INVALID_UPDATE_MASK",
        f"update_mask path {path!r}: {why}",
        metadata={"path": path[:100]},
        field_violations=[FieldViolation("update_mask", f"{path[:100]}: {why}")],
    )


def _check_path(message: Message, parts: list[str], path: str) -> None:
    """Refuses a path that names no field, or a subfield of a field that has none."""
    fd: Any = message.DESCRIPTOR.fields_by_name.get(parts[0])
    if fd is None:
        raise _invalid_mask(path, f"{message.DESCRIPTOR.name} has no field {parts[0]!r}")
    if len(parts) > 1:
        if fd.message_type is None or fd.is_repeated or fd.message_type.name == "Duration":
            raise _invalid_mask(path, f"{parts[0]} has no subfields")
        _check_path(getattr(message, parts[0]), parts[1:], path)


def _copy_path(src: Message, dst: Message, parts: list[str]) -> None:
    """dst.<parts> = src.<parts> (cleared where src has it unset); the path is checked."""
    name = parts[0]
    fd: Any = src.DESCRIPTOR.fields_by_name[name]
    if len(parts) > 1:
        if not src.HasField(name) and not dst.HasField(name):
            # Unset on both sides: nothing below changes, and descending would set it (a
            # mask of policy.quota.shots gave a tenant without a quota an empty one).
            return
        _copy_path(getattr(src, name), getattr(dst, name), parts[1:])
        return
    is_message = fd.message_type is not None
    repeated = bool(fd.is_repeated)
    if repeated:
        dst.ClearField(name)
        getattr(dst, name).extend(getattr(src, name))
    elif fd.has_presence:
        if src.HasField(name):
            if is_message:
                getattr(dst, name).CopyFrom(getattr(src, name))
            else:
                setattr(dst, name, getattr(src, name))
        else:
            dst.ClearField(name)
    else:
        setattr(dst, name, getattr(src, name))


# Output-only or identifying fields of Tenant a mask may not name.
_NOT_UPDATABLE = frozenset({"name", "etag", "create_time", "update_time"})


def apply_update(
    current: Tenant, request: admin_pb2.Tenant, paths: list[str]
) -> tuple[str, TenantPolicy]:
    """The display name and policy after applying `request` under the update mask `paths`
    (AIP-134: empty = every field set in `request`; "*" = display name and policy).

    Raises:
        InvalidArgument: INVALID_UPDATE_MASK for an unknown or output-only path; INVALID_POLICY
            for a resulting policy that is not valid; INVALID_TENANT for a display name too
            long.
    """
    if not paths:
        paths = [p for p in ("display_name",) if request.display_name]
        if request.HasField("policy"):
            paths.append("policy")
    elif "*" in paths:
        if len(paths) > 1:
            raise _invalid_mask("*", "must be the only path")
        paths = ["display_name", "policy"]
    merged = admin_pb2.Tenant(
        display_name=current.display_name, policy=encode_policy(current.policy)
    )
    for path in paths:
        parts = path.split(".")
        if parts[0] in _NOT_UPDATABLE:
            raise _invalid_mask(path, "not a field UpdateTenant changes")
        _check_path(request, parts, path)
        _copy_path(request, merged, parts)
    return check_display_name(merged.display_name), decode_policy(merged.policy)
