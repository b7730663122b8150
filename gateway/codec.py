"""Translation between qgateway.v1 messages and domain objects: the one place that does it.

Used by the servicers (requests and responses) and by the job layer (specs and results are
stored as serialised qgateway.v1 messages).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import numpy as np
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp
from qgateway.v1 import backend_pb2, circuit_pb2, job_pb2

from gateway.api.errors import job_error_status
from gateway.domain import backends as db
from gateway.domain.circuits import (
    Bindings,
    CircuitFeature,
    CircuitLanguage,
    CircuitSource,
    EstimatorPub,
    Observable,
    Pub,
    SamplerPub,
)
from gateway.domain.errors import FieldViolation, InvalidArgument
from gateway.domain.jobs import (
    Counts,
    EstimatorResult,
    Job,
    JobOptions,
    JobResult,
    JobSpec,
    JobState,
    SamplerOutput,
    SamplerResult,
)

BACKEND_PREFIX = "backends/"
JOB_PREFIX = "jobs/"
# Upper bound on the elements of one sweep, so a hostile shape cannot make us allocate forever.
MAX_BINDINGS_ELEMENTS = 50_000_000


def _bad(reason: str, field: str, description: str) -> InvalidArgument:
    return InvalidArgument(
        reason, f"{field}: {description}", field_violations=[FieldViolation(field, description)]
    )


# ---------------------------------------------------------------------------------- names


def backend_id(name: str, field: str = "backend") -> str:
    """'backends/aer' or 'aer' -> 'aer'."""
    backend = name.removeprefix(BACKEND_PREFIX)
    if not backend or "/" in backend:
        raise _bad("INVALID_BACKEND_NAME", field, "must be 'backends/{backend}'")
    return backend


def job_id(name: str, field: str = "name") -> str:
    """'jobs/abc' or 'abc' -> 'abc'."""
    job = name.removeprefix(JOB_PREFIX)
    if not job or "/" in job or len(job) > 128:
        raise _bad("INVALID_JOB_NAME", field, "must be 'jobs/{job}'")
    return job


def result_job_id(name: str, field: str = "name") -> str:
    """'jobs/abc/result' -> 'abc'."""
    job = name.removeprefix(JOB_PREFIX).removesuffix("/result")
    if not name.endswith("/result") or not job or "/" in job or len(job) > 128:
        raise _bad("INVALID_RESULT_NAME", field, "must be 'jobs/{job}/result'")
    return job


# ----------------------------------------------------------------------------- requests


def _circuit(msg: circuit_pb2.Circuit, field: str) -> CircuitSource:
    kind = msg.WhichOneof("source")
    if kind == "qasm3":
        return CircuitSource(CircuitLanguage.QASM3, msg.qasm3)
    if kind == "qasm2":
        return CircuitSource(CircuitLanguage.QASM2, msg.qasm2)
    raise _bad("MISSING_CIRCUIT", field, "a circuit needs qasm3 or qasm2 source")


def _bindings(msg: circuit_pb2.BindingsArray, field: str) -> Bindings:
    shape = tuple(int(d) for d in msg.shape)
    size = math.prod(shape)
    if size > MAX_BINDINGS_ELEMENTS:
        raise _bad("INVALID_PARAMETER_VALUES", f"{field}.shape", "sweep is too large")
    names = tuple(msg.parameters)
    if len(set(names)) != len(names):
        raise _bad("INVALID_PARAMETER_VALUES", f"{field}.parameters", "names must be unique")
    values = np.asarray(msg.values, dtype=np.float64)
    if names:
        expected = size * len(names)
        if values.size != expected:
            raise _bad(
                "INVALID_PARAMETER_VALUES",
                f"{field}.values",
                f"expected {expected} values for shape {list(shape)} x {len(names)} parameters, "
                f"got {values.size}",
            )
        values = values.reshape((*shape, len(names)))
    elif values.size:
        if size == 0 or values.size % size:
            raise _bad(
                "INVALID_PARAMETER_VALUES",
                f"{field}.values",
                f"{values.size} values do not divide into shape {list(shape)}",
            )
        values = values.reshape((*shape, values.size // size))
    else:
        values = np.zeros((*shape, 0), dtype=np.float64)
    if not np.all(np.isfinite(values)):
        raise _bad("INVALID_PARAMETER_VALUES", f"{field}.values", "values must be finite")
    return Bindings(parameters=names, shape=shape, values=values)


def _shots(has: bool, value: int, field: str) -> int | None:
    if not has:
        return None
    if value <= 0:
        raise _bad("INVALID_SHOTS", field, "shots must be positive")
    return value


def _precision(has: bool, value: float, field: str) -> float | None:
    if not has:
        return None
    if not math.isfinite(value) or value < 0:
        raise _bad("INVALID_PRECISION", field, "precision must be finite and >= 0")
    return value


def _pub(msg: circuit_pb2.Pub, field: str) -> Pub:
    kind = msg.WhichOneof("pub")
    if kind == "sampler":
        s = msg.sampler
        f = f"{field}.sampler"
        return SamplerPub(
            circuit=_circuit(s.circuit, f"{f}.circuit"),
            bindings=_bindings(s.parameter_values, f"{f}.parameter_values"),
            shots=_shots(s.HasField("shots"), s.shots, f"{f}.shots"),
        )
    if kind == "estimator":
        e = msg.estimator
        f = f"{field}.estimator"
        observables = tuple(
            Observable(tuple((t.pauli, t.coefficient) for t in o.terms)) for o in e.observables
        )
        if not observables:
            raise _bad("INVALID_OBSERVABLE", f"{f}.observables", "at least one observable")
        obs_shape = tuple(int(d) for d in e.observables_shape) or (len(observables),)
        return EstimatorPub(
            circuit=_circuit(e.circuit, f"{f}.circuit"),
            observables=observables,
            observables_shape=obs_shape,
            bindings=_bindings(e.parameter_values, f"{f}.parameter_values"),
            precision=_precision(e.HasField("precision"), e.precision, f"{f}.precision"),
        )
    raise _bad("MISSING_PUB", field, "a PUB must be a sampler or an estimator PUB")


_SAMPLER_OUTPUTS = {
    job_pb2.SAMPLER_OUTPUT_SAMPLES_AND_COUNTS: SamplerOutput.SAMPLES_AND_COUNTS,
    job_pb2.SAMPLER_OUTPUT_SAMPLES: SamplerOutput.SAMPLES,
    job_pb2.SAMPLER_OUTPUT_COUNTS: SamplerOutput.COUNTS,
}


def decode_spec(msg: job_pb2.JobSpec, field: str = "spec") -> JobSpec:
    """Structural validation and translation; circuit semantics are the adapter's job."""
    backend = backend_id(msg.backend, f"{field}.backend")
    if not msg.pubs:
        raise _bad("NO_PUBS", f"{field}.pubs", "a job needs at least one PUB")
    pubs = tuple(_pub(p, f"{field}.pubs[{i}]") for i, p in enumerate(msg.pubs))
    o = msg.options
    options = JobOptions(
        default_shots=_shots(
            o.HasField("default_shots"), o.default_shots, f"{field}.options.default_shots"
        ),
        seed=o.seed if o.HasField("seed") else None,
        default_precision=_precision(
            o.HasField("default_precision"),
            o.default_precision,
            f"{field}.options.default_precision",
        ),
        sampler_output=_SAMPLER_OUTPUTS.get(o.sampler_output, SamplerOutput.SAMPLES_AND_COUNTS),
        fallback_backend=(
            backend_id(o.fallback_backend, f"{field}.options.fallback_backend")
            if o.fallback_backend
            else ""
        ),
    )
    return JobSpec(backend=backend, pubs=pubs, options=options)


# ---------------------------------------------------------------------------- responses


def timestamp(value: datetime | None) -> Timestamp | None:
    if value is None:
        return None
    ts = Timestamp()
    ts.FromDatetime(value)
    return ts


def _duration(seconds: float) -> Duration:
    d = Duration()
    d.FromNanoseconds(int(seconds * 1e9))
    return d


def _encode_counts(counts: Counts, out: job_pb2.Counts) -> None:
    """Packed outcome rows (already ascending, as Counts keeps them) and their counts."""
    out.outcomes = counts.outcomes.tobytes()
    out.counts.extend(counts.counts.tolist())


def encode_result(result: JobResult) -> job_pb2.JobResult:
    out = job_pb2.JobResult()
    for pub in result.pubs:
        entry = out.pub_results.add()
        if isinstance(pub, SamplerResult):
            s = entry.sampler
            s.shape.extend(pub.shape)
            s.shots = pub.shots
            for reg in pub.registers:
                r = s.registers.add(name=reg.name, num_bits=reg.num_bits)
                if reg.samples is not None:
                    r.samples = np.ascontiguousarray(reg.samples, dtype=np.uint8).tobytes()
                for counts in reg.counts:
                    _encode_counts(counts, r.counts.add())
        else:
            assert isinstance(pub, EstimatorResult)
            e = entry.estimator
            e.shape.extend(pub.shape)
            e.expectation_values.extend(np.ravel(pub.expectation_values).tolist())
            e.standard_errors.extend(np.ravel(pub.standard_errors).tolist())
            e.precision = pub.precision
    return out


_STATES: dict[JobState, Any] = {s: job_pb2.JobState.Value(f"JOB_STATE_{s.value}") for s in JobState}
STATE_FROM_PROTO = {v: k for k, v in _STATES.items()}


def decode_states(values: Sequence[int], field: str) -> frozenset[JobState]:
    out = set()
    for i, v in enumerate(values):
        state = STATE_FROM_PROTO.get(v)
        if state is None:
            raise _bad("INVALID_STATE_FILTER", f"{field}[{i}]", f"unknown job state {v}")
        out.add(state)
    return frozenset(out)


def encode_job(job: Job) -> job_pb2.Job:
    out = job_pb2.Job(
        name=JOB_PREFIX + job.id,
        tenant=job.tenant,
        backend=BACKEND_PREFIX + job.backend,
        state=_STATES[job.state],
        num_pubs=job.num_pubs,
    )
    for attr, value in (
        ("create_time", job.created_at),
        ("start_time", job.started_at),
        ("end_time", job.ended_at),
    ):
        ts = timestamp(value)
        if ts is not None:
            getattr(out, attr).CopyFrom(ts)
    if job.error is not None:
        out.error.CopyFrom(job_error_status(job.error))
    ex = job.execution
    if ex is not None:
        out.execution.backend = BACKEND_PREFIX + ex.backend
        if ex.seed is not None:
            out.execution.seed = ex.seed
        out.execution.sdk_versions.update(ex.sdk_versions)
        for layout in ex.layouts:
            out.execution.layouts.add().physical_qubits.extend(layout)
        out.execution.attempts = ex.attempts
    if job.timings is not None:
        out.timings.queued.CopyFrom(_duration(job.timings.queued_s))
        out.timings.transpile.CopyFrom(_duration(job.timings.transpile_s))
        out.timings.execute.CopyFrom(_duration(job.timings.execute_s))
    return out


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


def encode_backend(info: db.BackendInfo, status: db.BackendStatus) -> backend_pb2.Backend:
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
        limits=backend_pb2.BackendLimits(
            max_shots=info.limits.max_shots,
            memory_budget_bytes=info.limits.memory_budget_bytes,
            max_queued_jobs=info.limits.max_queued_jobs,
            max_result_bytes=info.limits.max_result_bytes,
        ),
        properties=dict(info.properties),
        breaker_state=_BREAKER_STATES[status.breaker_state],
        pool=backend_pb2.PoolStats(
            in_use=status.pool_in_use,
            idle=status.pool_idle,
            waiting=status.pool_waiting,
            min_instances=status.pool_min,
            max_instances=status.pool_max,
            peak_instances=status.pool_peak,
        ),
    )
    out.health.serving = status.serving
    out.health.last_error = status.last_error
    probed = timestamp(status.last_probe)
    if probed is not None:
        out.health.last_probe_time.CopyFrom(probed)
    return out
