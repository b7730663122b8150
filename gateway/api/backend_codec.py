"""Backends and their targets on the wire: resource names, views and messages.

Domain -> proto only (BackendService answers; nothing about a backend is ever decoded from a
client, except its name and the view asked for).
"""

from __future__ import annotations

import enum
from datetime import datetime

from google.protobuf.timestamp_pb2 import Timestamp
from qgateway.v1 import backend_pb2

from gateway.domain import backends as db
from gateway.domain.circuits import CircuitFeature
from gateway.domain.errors import FieldViolation, InvalidArgument
from gateway.domain.targets import BackendTarget

BACKEND_PREFIX = "backends/"
TARGET_SUFFIX = "/target"
# Backend ids are configuration keys: letters, digits, '-' and '_' (gateway.config); the bound
# keeps a hostile name out of error messages.
MAX_BACKEND_ID = 128


class View(enum.Enum):
    BASIC = "BASIC"
    FULL = "FULL"


_VIEWS = {
    backend_pb2.BACKEND_VIEW_UNSPECIFIED: View.BASIC,
    backend_pb2.BACKEND_VIEW_BASIC: View.BASIC,
    backend_pb2.BACKEND_VIEW_FULL: View.FULL,
}
_KINDS = {
    db.BackendKind.SIMULATOR: backend_pb2.BACKEND_KIND_SIMULATOR,
    db.BackendKind.HARDWARE: backend_pb2.BACKEND_KIND_HARDWARE,
}
_PRIMITIVES = {
    db.Primitive.SAMPLER: backend_pb2.PRIMITIVE_SAMPLER,
    db.Primitive.ESTIMATOR: backend_pb2.PRIMITIVE_ESTIMATOR,
}
_FEATURES = {
    CircuitFeature.MID_CIRCUIT_MEASUREMENT: backend_pb2.CIRCUIT_FEATURE_MID_CIRCUIT_MEASUREMENT,
    CircuitFeature.RESET: backend_pb2.CIRCUIT_FEATURE_RESET,
    CircuitFeature.CONTROL_FLOW: backend_pb2.CIRCUIT_FEATURE_CONTROL_FLOW,
}
_BREAKER_STATES = {
    "CLOSED": backend_pb2.BREAKER_STATE_CLOSED,
    "OPEN": backend_pb2.BREAKER_STATE_OPEN,
    "HALF_OPEN": backend_pb2.BREAKER_STATE_HALF_OPEN,
}


def _bad(reason: str, field: str, description: str) -> InvalidArgument:
    return InvalidArgument(
        reason, f"{field}: {description}", field_violations=[FieldViolation(field, description)]
    )


def _valid_id(backend: str) -> bool:
    return 0 < len(backend) <= MAX_BACKEND_ID and all(c.isalnum() or c in "-_" for c in backend)


def view(value: int, field: str = "view") -> View:
    """The view asked for; BACKEND_VIEW_UNSPECIFIED is BASIC. INVALID_ARGUMENT
    (INVALID_BACKEND_VIEW) for a number the enum does not define."""
    try:
        return _VIEWS[value]  # type: ignore[index]
    except KeyError:
        raise _bad(
            "INVALID_BACKEND_VIEW", field, "must be BACKEND_VIEW_BASIC or BACKEND_VIEW_FULL"
        ) from None


def target_backend_id(name: str, field: str = "name") -> str:
    """'backends/{backend}/target' -> '{backend}'. Anything else, a bare id or a backend's own
    name included, is INVALID_ARGUMENT (INVALID_TARGET_NAME)."""
    backend = name.removeprefix(BACKEND_PREFIX).removesuffix(TARGET_SUFFIX)
    if (
        not name.startswith(BACKEND_PREFIX)
        or not name.endswith(TARGET_SUFFIX)
        or not _valid_id(backend)
    ):
        raise _bad("INVALID_TARGET_NAME", field, "must be 'backends/{backend}/target'")
    return backend


def _timestamp(when: datetime | None) -> Timestamp | None:
    if when is None:
        return None
    out = Timestamp()
    out.FromDatetime(when)
    return out


def encode_limits(
    limits: db.BackendLimits, max_execution_seconds: float
) -> backend_pb2.BackendLimits:
    return backend_pb2.BackendLimits(
        max_shots=limits.max_shots,
        memory_budget_bytes=limits.memory_budget_bytes,
        max_queued_jobs=limits.max_queued_jobs,
        max_result_bytes=limits.max_result_bytes,
        max_job_shots=limits.max_job_shots,
        max_execution_seconds=max_execution_seconds,
    )


def encode_backend(
    info: db.BackendInfo,
    status: db.BackendStatus,
    limits: backend_pb2.BackendLimits,
    view: View,
) -> backend_pb2.Backend:
    """A backend as the caller may see it.

    BASIC (every caller): what it is, whether it is online, its queue, and `limits` (the limits
    as they apply to the caller). FULL (admins) adds health, breaker state and pool occupancy.
    """
    out = backend_pb2.Backend(
        name=BACKEND_PREFIX + info.name,
        provider=info.provider,
        kind=_KINDS[info.kind],
        num_qubits=info.num_qubits,
        basis_gates=sorted(info.basis_gates),
        primitives=sorted(_PRIMITIVES[p] for p in info.primitives),
        features=sorted(_FEATURES[f] for f in info.features),
        status=(
            backend_pb2.BACKEND_STATUS_ONLINE
            if status.online
            else backend_pb2.BACKEND_STATUS_OFFLINE
        ),
        queue_length=status.queue_depth,
        running_jobs=status.running,
        limits=limits,
        properties=dict(info.properties),
    )
    if view is View.FULL:
        out.breaker_state = _BREAKER_STATES[status.breaker_state]
        out.pool.CopyFrom(
            backend_pb2.PoolStats(
                in_use=status.pool_in_use,
                idle=status.pool_idle,
                waiting=status.pool_waiting,
                min_instances=status.pool_min,
                max_instances=status.pool_max,
                peak_instances=status.pool_peak,
            )
        )
        out.health.serving = status.serving
        # Sanitised where it is made (gateway.runtime.health): a reason and a fixed description.
        out.health.last_error = status.last_error
        probed = _timestamp(status.last_probe)
        if probed is not None:
            out.health.last_probe_time.CopyFrom(probed)
    return out


def encode_target(backend: str, target: BackendTarget) -> backend_pb2.BackendTarget:
    """GetBackendTarget's message for `backend` (an id, no "backends/")."""
    out = backend_pb2.BackendTarget(
        name=f"{BACKEND_PREFIX}{backend}{TARGET_SUFFIX}",
        num_qubits=target.num_qubits,
        timing_constraints=backend_pb2.TimingConstraints(
            granularity=target.timing_constraints.granularity,
            min_length=target.timing_constraints.min_length,
            pulse_alignment=target.timing_constraints.pulse_alignment,
            acquire_alignment=target.timing_constraints.acquire_alignment,
        ),
        coupling_map=[
            backend_pb2.CouplingEdge(control=a, target=b) for a, b in target.coupling_map
        ],
    )
    if target.dt is not None:
        out.dt = target.dt
    calibrated = _timestamp(target.calibration_time)
    if calibrated is not None:
        out.calibration_time.CopyFrom(calibrated)
    for instruction in target.instructions:
        entry = out.instructions.add(
            name=instruction.name,
            num_qubits=instruction.num_qubits,
            num_params=instruction.num_params,
        )
        for qarg in instruction.qargs:
            props = entry.qargs.add(qubits=qarg.qubits)
            if qarg.error is not None:
                props.error = qarg.error
            if qarg.duration is not None:
                props.duration = qarg.duration
    for qubit in target.qubits:
        q = out.qubits.add()
        for attr in ("t1", "t2", "frequency", "readout_error"):
            value = getattr(qubit, attr)
            if value is not None:
                setattr(q, attr, value)
    return out
