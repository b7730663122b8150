"""The codec field by field: what each JobSpec field becomes in the domain (and the error a
malformed one gets: INVALID_ARGUMENT with its reason, never an internal error), and what each
domain field becomes in a Job or JobResult message."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest
from google.protobuf.duration_pb2 import Duration
from qgateway.v1 import circuit_pb2, job_pb2

from gateway.api.codec import decode_spec, encode_job, encode_result, result_job_id
from gateway.domain.circuits import CircuitLanguage, EstimatorPub, PauliTerm, SamplerPub
from gateway.domain.errors import InvalidArgument
from gateway.domain.jobs import (
    ExecutionInfo,
    Job,
    JobResult,
    JobState,
    RegisterResult,
    SamplerOutput,
    SamplerResult,
)
from gateway.domain.pricing import Usage

QASM = "OPENQASM 3.0;\nqubit[3] q;\n"


def _sampler(**fields: object) -> job_pb2.JobSpec:
    pub = circuit_pb2.SamplerPub(circuit=circuit_pb2.Circuit(qasm3=QASM), **fields)  # type: ignore[arg-type]
    return job_pb2.JobSpec(backend="backends/aer", pubs=[circuit_pb2.Pub(sampler=pub)])


def _estimator(**fields: object) -> job_pb2.JobSpec:
    fields.setdefault(
        "observables",
        [circuit_pb2.Observable(terms=[circuit_pb2.PauliTerm(pauli="ZZZ", coefficient=1.0)])],
    )
    pub = circuit_pb2.EstimatorPub(circuit=circuit_pb2.Circuit(qasm3=QASM), **fields)  # type: ignore[arg-type]
    return job_pb2.JobSpec(backend="backends/aer", pubs=[circuit_pb2.Pub(estimator=pub)])


def _refused(spec: job_pb2.JobSpec) -> InvalidArgument:
    with pytest.raises(InvalidArgument) as refused:
        decode_spec(spec)
    return refused.value


def test_values_are_row_major_over_the_shape_then_the_parameters() -> None:
    spec = _sampler(
        parameter_values=circuit_pb2.BindingsArray(
            parameters=["a", "b"], shape=[3], values=[0, 1, 2, 3, 4, 5]
        )
    )
    pub = decode_spec(spec).pubs[0]
    assert isinstance(pub, SamplerPub)
    assert pub.bindings.parameters == ("a", "b")
    np.testing.assert_array_equal(pub.bindings.values, [[0, 1], [2, 3], [4, 5]])


@pytest.mark.parametrize(
    "bindings",
    [
        circuit_pb2.BindingsArray(parameters=["a", "a"], shape=[1], values=[1, 2]),
        circuit_pb2.BindingsArray(shape=[0], values=[1, 2]),
        circuit_pb2.BindingsArray(parameters=["a"], values=[float("inf")]),
        circuit_pb2.BindingsArray(parameters=["a"], values=[float("-inf")]),
    ],
    ids=["duplicate-names", "values-for-an-empty-sweep", "inf", "-inf"],
)
def test_malformed_bindings_are_invalid_parameter_values(
    bindings: circuit_pb2.BindingsArray,
) -> None:
    assert _refused(_sampler(parameter_values=bindings)).reason == "INVALID_PARAMETER_VALUES"


def test_shots_seed_and_precision_bounds() -> None:
    assert _refused(_sampler(shots=0)).reason == "INVALID_SHOTS"
    spec = _sampler()
    spec.options.default_shots = 0
    assert _refused(spec).reason == "INVALID_SHOTS"
    spec = _sampler()
    spec.options.seed = 0  # seed 0 is a seed
    assert decode_spec(spec).options.seed == 0
    # precision 0 asks for the exact value; it is not unset.
    pub = decode_spec(_estimator(precision=0.0)).pubs[0]
    assert isinstance(pub, EstimatorPub) and pub.precision == 0.0
    assert _refused(_estimator(precision=float("inf"))).reason == "INVALID_PRECISION"
    spec = _sampler()
    spec.options.default_precision = float("nan")
    assert _refused(spec).reason == "INVALID_PRECISION"


def test_sparse_terms_keep_their_qubit_order_and_coefficient_sign() -> None:
    term = circuit_pb2.PauliTerm(pauli="XZ", coefficient=-0.25, qubits=[2, 0])
    pub = decode_spec(_estimator(observables=[circuit_pb2.Observable(terms=[term])])).pubs[0]
    assert isinstance(pub, EstimatorPub)
    assert pub.observables[0].terms == (PauliTerm("XZ", -0.25, (2, 0)),)


def test_options_decode_field_by_field() -> None:
    spec = _sampler()
    spec.options.sampler_output = job_pb2.SAMPLER_OUTPUT_SAMPLES
    spec.options.fallback_backend = "backends/other"
    spec.options.max_execution_time.CopyFrom(Duration(seconds=2, nanos=500_000_000))
    options = decode_spec(spec).options
    assert options.sampler_output is SamplerOutput.SAMPLES
    assert options.fallback_backend == "other"
    assert options.max_execution_time_s == 2.5
    spec.options.fallback_backend = "other"  # a bare id is refused, not guessed
    assert _refused(spec).reason == "INVALID_BACKEND_NAME"


def test_a_session_is_read_bare_or_in_full_and_never_with_a_slash() -> None:
    spec = _sampler(shots=1)
    spec.session = "abc"
    assert decode_spec(spec).session == "abc"
    spec.session = "sessions/abc"
    assert decode_spec(spec).session == "abc"
    spec.session = "sessions/a/b"
    assert _refused(spec).reason == "INVALID_SESSION_NAME"


def test_a_job_message_shows_each_field_and_a_sampler_pub_s_shots() -> None:
    job = Job(
        id="j1",
        tenant="acme",
        request_id="",
        backend="aer",
        state=JobState.SUCCEEDED,
        created_at=datetime(2026, 12, 1, tzinfo=UTC),
        num_pubs=1,
        seed=0,
        session="s1",
        sampler_output=SamplerOutput.COUNTS,
        # Ran on its fallback: the execution names the backend it ran on.
        execution=ExecutionInfo(
            backend="aer-mps",
            seed=0,
            attempts=2,
            layouts=((3, 1, 2),),  # virtual qubit i on physical qubit layout[i]
            usage=Usage(shots=1, execution_seconds=0.5, provider_cost=0.0, provider_unit="USD"),
        ),
    )
    msg = encode_job(job)
    assert (msg.name, msg.backend, msg.session) == ("jobs/j1", "backends/aer", "sessions/s1")
    assert msg.sampler_output == job_pb2.SAMPLER_OUTPUT_COUNTS
    assert msg.execution.backend == "backends/aer-mps"
    assert msg.execution.HasField("seed") and msg.execution.seed == 0  # 0 is a seed
    assert msg.execution.attempts == 2
    assert [list(layout.physical_qubits) for layout in msg.execution.layouts] == [[3, 1, 2]]
    # A provider that billed nothing said so: a cost of 0, not an unknown one.
    assert msg.usage.HasField("provider_cost")
    assert (msg.usage.provider_cost.amount, msg.usage.provider_cost.unit) == (0.0, "USD")
    result = JobResult(pubs=(SamplerResult(shape=(3,), shots=128, registers=()),))
    sampler = encode_result(result).pub_results[0].sampler
    assert (list(sampler.shape), sampler.shots) == ([3], 128)


def test_samples_are_written_row_major_in_the_bit_array_layout() -> None:
    # Shape (*pub_shape, shots, bytes): 2 bindings x 3 shots of a 9-bit register (2 bytes).
    samples = np.arange(12, dtype=np.uint8).reshape(2, 3, 2)
    register = RegisterResult(name="c", num_bits=9, samples=samples, counts=())
    result = JobResult(pubs=(SamplerResult(shape=(2,), shots=3, registers=(register,)),))
    written = encode_result(result).pub_results[0].sampler.registers[0]
    assert (written.name, written.num_bits) == ("c", 9)
    assert written.samples == bytes(range(12))


@pytest.mark.parametrize(
    "backend", ["aer", "backends/", "backends/a/b", "backends/a\nb", "backends/" + "a" * 129]
)
def test_a_backend_name_that_is_not_backends_id_is_refused(backend: str) -> None:
    spec = _sampler(shots=1)
    spec.backend = backend
    assert _refused(spec).reason == "INVALID_BACKEND_NAME"


def test_each_circuit_source_keeps_its_language() -> None:
    spec = _sampler(shots=1)
    spec.pubs.add().sampler.circuit.qasm2 = "OPENQASM 2.0;"
    spec.pubs.add().sampler.circuit.qpy = b"QISKIT"
    circuits = [pub.circuit for pub in decode_spec(spec).pubs]
    assert [(c.language, c.text, c.data) for c in circuits] == [
        (CircuitLanguage.QASM3, QASM, b""),
        (CircuitLanguage.QASM2, "OPENQASM 2.0;", b""),
        (CircuitLanguage.QPY, "", b"QISKIT"),
    ]


def test_counts_only_is_counts_only() -> None:
    spec = _sampler(shots=1)
    spec.options.sampler_output = job_pb2.SAMPLER_OUTPUT_COUNTS
    assert decode_spec(spec).options.sampler_output is SamplerOutput.COUNTS


@pytest.mark.parametrize(
    "name", ["jobs/abc", "jobs/abcdefghijkl", "jobs/abc/results", "jobs//result", "abc/result"]
)
def test_a_result_name_is_jobs_id_result(name: str) -> None:
    with pytest.raises(InvalidArgument) as refused:
        result_job_id(name)
    assert refused.value.reason == "INVALID_RESULT_NAME"
    assert result_job_id("jobs/abc/result") == "abc"
