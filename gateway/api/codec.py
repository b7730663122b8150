"""Translation between qgateway.v1 messages and domain objects: the one place that does it.

Used by the servicers (requests and responses), and by the job core through STORED_FORMAT
(specs and results are stored as serialised qgateway.v1 messages; the job core sees only the
gateway.jobs.stored_format port).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np
from google.protobuf import duration_pb2
from google.protobuf.timestamp_pb2 import Timestamp
from qgateway.v1 import circuit_pb2, job_pb2

from gateway.api import job_options
from gateway.api.errors import job_error_status
from gateway.domain.bitarray import Counts
from gateway.domain.circuits import (
    Bindings,
    CircuitLanguage,
    CircuitSource,
    EstimatorPub,
    Observable,
    PauliTerm,
    Pub,
    SamplerPub,
)
from gateway.domain.errors import FieldViolation, InvalidArgument
from gateway.domain.jobs import (
    EstimatorResult,
    Job,
    JobOptions,
    JobResult,
    JobSpec,
    JobState,
    SamplerOutput,
    SamplerResult,
)
from gateway.domain.labels import validate_labels
from gateway.domain.pricing import CostEstimate

BACKEND_PREFIX = "backends/"
JOB_PREFIX = "jobs/"
SESSION_PREFIX = "sessions/"
# Upper bound on the elements of one sweep, so a hostile shape cannot make us allocate forever.
MAX_BINDINGS_ELEMENTS = 50_000_000
# Dimensions of a sweep or observables shape (numpy's own limit is 64). Checked before any
# arithmetic on the shape: the product of 100 000 large dimensions is one huge integer, and
# computing it held the event loop for seconds.
MAX_SHAPE_DIMS = 32
# PUBs of one job. Each distinct circuit is a compile and a compiled circuit the queued job
# holds: 250 000 tiny PUBs fit in a 16 MiB request and held ~500 MB and minutes of compiles.
MAX_PUBS = 1000
# Elements of one job that decoding and digesting pay for one by one, in Python (~2 us each,
# and ~200 bytes each while decoded): Pauli terms (an empty observable counts as one), the
# qubit indices of sparse terms, and parameter names. A 16 MiB request of 8 million empty
# terms cost 19 s of CPU and 1.7 GB before it was refused; these bound it to ~2 s.
MAX_TERMS = 1_000_000
MAX_SPARSE_QUBITS = 4_000_000
MAX_PARAMETERS = 1_000_000


def _shape(
    dims: Sequence[int], field: str, reason: str, most: int, smallest: int
) -> tuple[int, ...]:
    """A client's shape: at most MAX_SHAPE_DIMS dimensions, each >= `smallest`, whose product
    is at most `most` (work linear in the dimensions; a refusal quotes none of them)."""
    _check_dimensions(dims, field, reason)
    shape = tuple(int(d) for d in dims)
    size = 1
    for d in shape:
        if d < smallest:
            raise _bad(
                reason,
                field,
                f"every dimension must be >= {smallest}, got {d}",
                minimum=smallest,
                dimension=d,
            )
        size *= d
        if size > most:
            raise _bad(reason, field, f"the shape holds more than {most} elements", most=most)
    return shape


def _bad(reason: str, field: str, description: str, **metadata: object) -> InvalidArgument:
    """INVALID_ARGUMENT for `field`; keyword arguments are the values the description quotes
    (ErrorInfo metadata, lowerCamelCase keys)."""
    return InvalidArgument(
        reason,
        f"{field}: {description}",
        metadata={key: str(value) for key, value in metadata.items()},
        field_violations=[FieldViolation(field, description)],
    )


# ------------------------------------------------------------------------------ durations

# google.protobuf.Duration's own range: about 10,000 years.
MAX_DURATION_S = 315_576_000_000
_NANOS = 1_000_000_000


def positive_seconds(msg: duration_pb2.Duration, field: str, reason: str) -> float:
    """A Duration in seconds, or InvalidArgument `reason` (metadata: seconds, nanos) unless it
    is positive and a valid Duration: protobuf parses any seconds and nanos, so nanos past a
    second, or nanos and seconds of different signs, arrive as sent."""
    seconds, nanos = msg.seconds, msg.nanos
    valid = 0 <= nanos < _NANOS and 0 <= seconds <= MAX_DURATION_S
    if not valid or (seconds == 0 and nanos == 0):
        raise _bad(
            reason,
            field,
            f"must be a positive duration (got {seconds} s and {nanos} ns)",
            seconds=seconds,
            nanos=nanos,
        )
    return seconds + nanos / _NANOS


# ---------------------------------------------------------------------------------- names


# Only documented resource names are accepted: a bare id ("aer") is refused rather than guessed,
# so every client means the same thing by a name (the Python client adds prefixes itself).
MAX_ID_LENGTH = 128


def _resource_id(name: str, prefix: str, suffix: str = "") -> str | None:
    if not name.startswith(prefix) or not name.endswith(suffix):
        return None
    ident = name[len(prefix) : len(name) - len(suffix)]
    if not ident or "/" in ident or len(ident) > MAX_ID_LENGTH or not ident.isprintable():
        return None
    return ident


def backend_id(name: str, field: str = "backend") -> str:
    """'backends/aer' -> 'aer'."""
    backend = _resource_id(name, BACKEND_PREFIX)
    if backend is None:
        raise _bad("INVALID_BACKEND_NAME", field, "must be 'backends/{backend}'")
    return backend


def job_id(name: str, field: str = "name") -> str:
    """'jobs/abc' -> 'abc'."""
    job = _resource_id(name, JOB_PREFIX)
    if job is None:
        raise _bad("INVALID_JOB_NAME", field, "must be 'jobs/{job}'")
    return job


def session_id(name: str, field: str = "name", *, bare: bool = False) -> str:
    """'sessions/abc' -> 'abc'; `bare`: 'abc' too (JobSpec.session, as the digest reads it)."""
    if bare and not name.startswith(SESSION_PREFIX):
        name = SESSION_PREFIX + name
    session = _resource_id(name, SESSION_PREFIX)
    if session is None:
        raise _bad("INVALID_SESSION_NAME", field, "must be 'sessions/{session}'")
    return session


def result_job_id(name: str, field: str = "name") -> str:
    """'jobs/abc/result' -> 'abc'."""
    job = _resource_id(name, JOB_PREFIX, "/result")
    if job is None:
        raise _bad("INVALID_RESULT_NAME", field, "must be 'jobs/{job}/result'")
    return job


# ----------------------------------------------------------------------------- requests


def _circuit(msg: circuit_pb2.Circuit, field: str) -> CircuitSource:
    kind = msg.WhichOneof("source")
    if kind == "qasm3":
        return CircuitSource(CircuitLanguage.QASM3, msg.qasm3)
    if kind == "qasm2":
        return CircuitSource(CircuitLanguage.QASM2, msg.qasm2)
    if kind == "qpy":
        # Decoded only in a compile worker, under the same limits as OpenQASM source.
        return CircuitSource(CircuitLanguage.QPY, data=msg.qpy)
    raise _bad("MISSING_CIRCUIT", field, "a circuit needs qasm3, qasm2 or qpy source")


def _bindings(msg: circuit_pb2.BindingsArray, field: str) -> Bindings:
    shape = _shape(
        msg.shape, f"{field}.shape", "INVALID_PARAMETER_VALUES", MAX_BINDINGS_ELEMENTS, 0
    )
    size = math.prod(shape)
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
                expected=expected,
                actual=values.size,
                shape=list(shape),
            )
        values = values.reshape((*shape, len(names)))
    elif values.size:
        if size == 0 or values.size % size:
            raise _bad(
                "INVALID_PARAMETER_VALUES",
                f"{field}.values",
                f"{values.size} values do not divide into shape {list(shape)}",
                actual=values.size,
                shape=list(shape),
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


def _seed(has: bool, value: int, field: str) -> int | None:
    if not has:
        return None
    if value < 0:  # the simulators' seeds are unsigned (the store keeps them as such)
        raise _bad("INVALID_SEED", field, "the seed must be >= 0", value=value)
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
        # Sparse terms stay sparse (their qubits are checked against the circuit's width once
        # it is compiled): the work is linear in the request, whatever the circuit's width.
        observables = tuple(
            Observable(
                tuple(
                    PauliTerm(t.pauli, t.coefficient, tuple(t.qubits) if t.qubits else None)
                    for t in o.terms
                )
            )
            for o in e.observables
        )
        if not observables:
            raise _bad("INVALID_OBSERVABLE", f"{f}.observables", "at least one observable")
        obs_shape = _shape(
            e.observables_shape,
            f"{f}.observables_shape",
            "INVALID_OBSERVABLE",
            len(observables),
            1,
        )
        if e.single_observable:
            if len(observables) != 1 or obs_shape:
                raise _bad(
                    "INVALID_OBSERVABLE",
                    f"{f}.single_observable",
                    "needs exactly one observable and no observables_shape",
                    observables=len(observables),
                )
        elif not obs_shape:
            obs_shape = (len(observables),)  # one dimension, as the API documents
        return EstimatorPub(
            circuit=_circuit(e.circuit, f"{f}.circuit"),
            observables=observables,
            observables_shape=obs_shape,
            bindings=_bindings(e.parameter_values, f"{f}.parameter_values"),
            precision=_precision(e.HasField("precision"), e.precision, f"{f}.precision"),
        )
    raise _bad("MISSING_PUB", field, "a PUB must be a sampler or an estimator PUB")


_SAMPLER_OUTPUTS: dict[int, SamplerOutput] = {
    job_pb2.SAMPLER_OUTPUT_UNSPECIFIED: SamplerOutput.SAMPLES_AND_COUNTS,
    job_pb2.SAMPLER_OUTPUT_SAMPLES_AND_COUNTS: SamplerOutput.SAMPLES_AND_COUNTS,
    job_pb2.SAMPLER_OUTPUT_SAMPLES: SamplerOutput.SAMPLES,
    job_pb2.SAMPLER_OUTPUT_COUNTS: SamplerOutput.COUNTS,
}
_SAMPLER_OUTPUT_TO_PROTO: dict[SamplerOutput, Any] = {v: k for k, v in _SAMPLER_OUTPUTS.items()}


def _sampler_output(value: int, field: str) -> SamplerOutput:
    # proto3 enums are open: a number this gateway does not know arrives as is.
    output = _SAMPLER_OUTPUTS.get(value)
    if output is None:
        raise _bad("INVALID_SAMPLER_OUTPUT", field, f"unknown sampler output {value}", value=value)
    return output


def check_counts(msg: job_pb2.JobSpec, field: str = "spec") -> None:
    """Refuses a spec holding more elements than a job may (MAX_PUBS, MAX_TERMS,
    MAX_SPARSE_QUBITS, MAX_PARAMETERS, MAX_SHAPE_DIMS) before anything is paid per element:
    lengths of repeated fields only, and a walk over at most MAX_TERMS terms."""
    if len(msg.pubs) > MAX_PUBS:
        raise too_many_pubs(f"{field}.pubs", len(msg.pubs))
    terms = qubits = parameters = 0
    for i, pub in enumerate(msg.pubs):
        f = f"{field}.pubs[{i}]"
        kind = pub.WhichOneof("pub")
        if kind is None:
            continue
        part = pub.sampler if kind == "sampler" else pub.estimator
        f = f"{f}.{kind}"
        bindings = part.parameter_values
        _check_dimensions(bindings.shape, f"{f}.parameter_values.shape", "INVALID_PARAMETER_VALUES")
        parameters += len(bindings.parameters)
        if parameters > MAX_PARAMETERS:
            raise too_many(
                "TOO_MANY_PARAMETERS", f"{f}.parameter_values", "parameter names", MAX_PARAMETERS
            )
        if kind != "estimator":
            continue
        e = pub.estimator
        _check_dimensions(e.observables_shape, f"{f}.observables_shape", "INVALID_OBSERVABLE")
        if terms + len(e.observables) > MAX_TERMS:
            raise too_many("TOO_MANY_TERMS", f"{f}.observables", "Pauli terms", MAX_TERMS)
        for o in e.observables:
            terms += max(1, len(o.terms))
            if terms > MAX_TERMS:
                raise too_many("TOO_MANY_TERMS", f"{f}.observables", "Pauli terms", MAX_TERMS)
            for t in o.terms:
                qubits += len(t.qubits)
            if qubits > MAX_SPARSE_QUBITS:
                raise too_many(
                    "TOO_MANY_TERMS",
                    f"{f}.observables",
                    "qubit indices of sparse Pauli terms",
                    MAX_SPARSE_QUBITS,
                )


def _check_dimensions(dims: Sequence[int], field: str, reason: str) -> None:
    if len(dims) > MAX_SHAPE_DIMS:
        raise _bad(
            reason,
            field,
            f"at most {MAX_SHAPE_DIMS} dimensions, got {len(dims)}",
            maxDimensions=MAX_SHAPE_DIMS,
            dimensions=len(dims),
        )


def too_many_pubs(field: str, pubs: int | None) -> InvalidArgument:
    """TOO_MANY_PUBS, quoting the job's PUBs (`pubs`) when they were all counted: a large
    request is refused as soon as it is past the limit (gateway.api.request_pieces)."""
    got = f"more than {MAX_PUBS}" if pubs is None else str(pubs)
    counted = {} if pubs is None else {"pubs": pubs}
    return _bad(
        "TOO_MANY_PUBS",
        field,
        f"a job holds at most {MAX_PUBS} PUBs, got {got}; split it into several jobs, or "
        "sweep parameters within a PUB",
        maxPubs=MAX_PUBS,
        **counted,
    )


def too_many(reason: str, field: str, what: str, limit: int) -> InvalidArgument:
    """A job past one of its element limits (MAX_TERMS, MAX_SPARSE_QUBITS, MAX_PARAMETERS)."""
    return _bad(reason, field, f"a job holds at most {limit} {what}", limit=limit)


def decode_spec(msg: job_pb2.JobSpec, field: str = "spec") -> JobSpec:
    """Structural validation and translation; circuit semantics are the adapter's job. The
    spec's element counts are checked before (check_counts, at the API edge, ahead of the
    digest): a stored spec passed them when it was accepted."""
    backend = backend_id(msg.backend, f"{field}.backend")
    if not msg.pubs:
        raise _bad("NO_PUBS", f"{field}.pubs", "a job needs at least one PUB")
    pubs = tuple(_pub(p, f"{field}.pubs[{i}]") for i, p in enumerate(msg.pubs))
    o = msg.options
    options = JobOptions(
        default_shots=_shots(
            o.HasField("default_shots"), o.default_shots, f"{field}.options.default_shots"
        ),
        seed=_seed(o.HasField("seed"), o.seed, f"{field}.options.seed"),
        default_precision=_precision(
            o.HasField("default_precision"),
            o.default_precision,
            f"{field}.options.default_precision",
        ),
        sampler_output=_sampler_output(o.sampler_output, f"{field}.options.sampler_output"),
        fallback_backend=(
            backend_id(o.fallback_backend, f"{field}.options.fallback_backend")
            if o.fallback_backend
            else ""
        ),
        max_execution_time_s=(
            positive_seconds(
                o.max_execution_time,
                f"{field}.options.max_execution_time",
                "INVALID_MAX_EXECUTION_TIME",
            )
            if o.HasField("max_execution_time")
            else None
        ),
        provider_options=job_options.decode_provider_options(
            o.provider_options, f"{field}.options.provider_options"
        ),
    )
    labels = validate_labels(msg.labels, f"{field}.labels")
    session = session_id(msg.session, f"{field}.session", bare=True) if msg.session else ""
    return JobSpec(backend=backend, pubs=pubs, options=options, labels=labels, session=session)


# ---------------------------------------------------------------------------- responses


def timestamp(value: datetime | None) -> Timestamp | None:
    if value is None:
        return None
    ts = Timestamp()
    ts.FromDatetime(value)
    return ts


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _set_time(out: Timestamp, value: datetime) -> None:
    """out = value, as Timestamp.FromDatetime does (naive = UTC) without its time tuple."""
    delta = (value if value.tzinfo is not None else value.replace(tzinfo=UTC)) - _EPOCH
    out.seconds = delta.days * 86400 + delta.seconds
    out.nanos = delta.microseconds * 1000


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


def _set_duration(out: duration_pb2.Duration, nanos: int) -> None:
    """out = nanos, as Duration.FromNanoseconds does (a negative one has nanos <= 0) without
    its two Python calls (four durations per job answered)."""
    seconds, rest = divmod(nanos, _NANOS)
    if seconds < 0 and rest > 0:
        seconds += 1
        rest -= _NANOS
    out.seconds = seconds
    out.nanos = rest


# By member name: an enum member hashes in Python (~0.13 us a lookup, five or more per job
# answered), its name as a str (cached).
_STATES_BY_NAME: dict[str, Any] = {
    s._name_: job_pb2.JobState.Value(f"JOB_STATE_{s.value}") for s in JobState
}


def encode_job(job: Job) -> job_pb2.Job:
    out = job_pb2.Job(
        name=JOB_PREFIX + job.id,
        tenant=job.tenant,
        backend=BACKEND_PREFIX + job.backend,
        state=_STATES_BY_NAME[job.state._name_],
        num_pubs=job.num_pubs,
    )
    # Fields set in place: no intermediate messages to copy (this runs for every answer).
    _set_time(out.create_time, job.created_at)
    if job.started_at is not None:
        _set_time(out.start_time, job.started_at)
    if job.ended_at is not None:
        _set_time(out.end_time, job.ended_at)
    if job.updated_at is not None:
        _set_time(out.update_time, job.updated_at)
    if job.expire_at is not None:
        _set_time(out.expire_time, job.expire_at)
    history = out.state_history
    for transition in job.state_history:
        _set_time(history.add(state=_STATES_BY_NAME[transition.state._name_]).time, transition.at)
    if job.queue_position is not None:
        out.queue_position = job.queue_position
    if job.labels:  # update() of a map field goes the slow way even when given nothing
        out.labels.update(job.labels)
    if job.session:
        out.session = SESSION_PREFIX + job.session
    if job.trace_context:
        out.trace_id = job.trace_id
    out.sampler_output = _SAMPLER_OUTPUT_TO_PROTO[job.sampler_output]
    if job.error is not None:
        out.error.CopyFrom(job_error_status(job.error))
    ex = job.execution
    if ex is not None:
        out.execution.backend = BACKEND_PREFIX + ex.backend
        if ex.seed is not None:
            out.execution.seed = ex.seed
        if ex.sdk_versions:
            out.execution.sdk_versions.update(ex.sdk_versions)
        for layout in ex.layouts:
            out.execution.layouts.add().physical_qubits.extend(layout)
        out.execution.attempts = ex.attempts
        if ex.usage is not None:
            out.usage.shots = ex.usage.shots
            _set_duration(out.usage.execution_duration, int(ex.usage.execution_seconds * 1e9))
            if ex.usage.provider_cost is not None:
                out.usage.provider_cost.amount = ex.usage.provider_cost
                out.usage.provider_cost.unit = ex.usage.provider_unit
        if ex.cost is not None:
            out.cost.amount = ex.cost.amount
            out.cost.unit = ex.cost.unit
    if job.remote_id:
        # The provider's own job id, stored when the job left SUBMITTING: shown from then on
        # (while it runs too), so a user can find the job in the provider's console.
        out.execution.provider_job_id = job.remote_id
    if job.timings is not None:
        timings = out.timings
        _set_duration(timings.queued, int(job.timings.queued_s * 1e9))
        _set_duration(timings.transpile, int(job.timings.transpile_s * 1e9))
        _set_duration(timings.execute, int(job.timings.execute_s * 1e9))
    return out


class _StoredFormat:
    """gateway.jobs.stored_format.StoredFormat: specs and results stored as qgateway.v1
    messages."""

    def decode_spec(self, data: bytes) -> JobSpec:
        return decode_spec(job_pb2.JobSpec.FromString(data))

    def encode_result(self, result: JobResult) -> bytes:
        # Canonical (the form StreamJobResult's digest is defined over), so the stored bytes
        # hash to the digest as they are.
        return encode_result(result).SerializeToString(deterministic=True)


STORED_FORMAT = _StoredFormat()


def encode_cost_estimate(estimate: CostEstimate) -> job_pb2.CostEstimate:
    out = job_pb2.CostEstimate(
        shots=estimate.shots, per_second_excluded=estimate.per_second_excluded
    )
    if estimate.cost is not None:
        out.cost.amount = estimate.cost.amount
        out.cost.unit = estimate.cost.unit
    return out
