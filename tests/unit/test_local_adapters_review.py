"""Review of the Braket and PennyLane local adapters against Aer and Qiskit's reference
primitives, in process (compile as a compile worker would, prepare, pickle, execute).

Exact backends sample terminal measurements from exact probabilities with the job's seed, so
for the same seed their shots must equal Aer's bit for bit; exact expectation values (precision
0) must equal Qiskit's Statevector to 1e-9. Where a backend cannot run a PUB it must say so
with a clear reason (INVALID_ARGUMENT at submission, or a CLIENT_ERROR naming the cause), never
answer something else. Failing cases are strict xfails naming the defect.
"""

from __future__ import annotations

import io
import pickle
from typing import Any

import numpy as np
import pytest
from qiskit import QuantumCircuit, qpy
from qiskit.circuit import Parameter
from qiskit.quantum_info import SparsePauliOp, Statevector

from gateway.backends.aer.adapter import AerAdapter
from gateway.backends.braket.adapter import BraketAdapter
from gateway.backends.pennylane.adapter import PennyLaneAdapter
from gateway.backends.qiskit.adapter import QiskitAdapter
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
from gateway.domain.errors import ExecutionError, InvalidArgument
from gateway.domain.failures import FailureKind
from gateway.domain.jobs import EstimatorResult, JobOptions, JobSpec, SamplerResult
from tests.adapters import adapter_context, prepare_in_process

H3 = 'OPENQASM 3.0;\ninclude "stdgates.inc";\n'
OTHERS = ("braket_sv", "braket_dm", "lightning.qubit", "default.qubit")


@pytest.fixture(scope="module")
def adapters() -> dict[str, QiskitAdapter]:
    return {
        "aer": AerAdapter(adapter_context("aer")),
        "braket_sv": BraketAdapter(adapter_context("braket-sv", device="braket_sv")),
        "braket_dm": BraketAdapter(adapter_context("braket-dm", device="braket_dm")),
        "lightning.qubit": PennyLaneAdapter(adapter_context("pl-l", device="lightning.qubit")),
        "default.qubit": PennyLaneAdapter(adapter_context("pl-d", device="default.qubit")),
    }


def q3(text: str) -> CircuitSource:
    return CircuitSource(CircuitLanguage.QASM3, H3 + text)


def qpy_source(circuit: QuantumCircuit) -> CircuitSource:
    buffer = io.BytesIO()
    qpy.dump(circuit, buffer)
    return CircuitSource(CircuitLanguage.QPY, data=buffer.getvalue())


def run(adapter: QiskitAdapter, *pubs: Pub, seed: int = 1234, **options: Any) -> list[Any]:
    spec = JobSpec(backend=adapter.context.name, pubs=pubs, options=JobOptions(**options))
    prepared = prepare_in_process(adapter, spec, seed)
    payload = pickle.loads(pickle.dumps(prepared.payload))
    return list(adapter.execute(payload).result.pubs)


def shots_of(result: Any) -> dict[str, Any]:
    assert isinstance(result, SamplerResult)
    return {
        r.name: (r.num_bits, r.samples.tobytes() if r.samples is not None else None)
        for r in result.registers
    }


# ----------------------------------------------------------------- what agrees (regressions)


SAMPLER_PUBS = {
    # Registers of different sizes, a subset of bits measured, a bit measured twice (the last
    # wins), an unmeasured bit and register, measurement order unlike qubit order.
    "registers": SamplerPub(
        q3(
            "qubit[4] q; bit[3] a; bit[2] b; bit[1] unused; h q[0]; cx q[0], q[1]; x q[3];"
            "a[2] = measure q[1]; b[0] = measure q[3]; a[0] = measure q[0];"
            "b[1] = measure q[2]; a[0] = measure q[3];"
        ),
        Bindings(),
        shots=64,
    ),
    # A (2, 3) bindings array of an affine expression and a plain parameter.
    "broadcast": SamplerPub(
        q3(
            "input float theta; qubit[2] q; bit[2] c; rx(2*theta+1) q[0]; ry(theta) q[1];"
            "c = measure q;"
        ),
        Bindings(("theta",), (2, 3), np.linspace(0, 3, 6).reshape(2, 3, 1)),
        shots=32,
    ),
    "clbits_without_measurement": SamplerPub(q3("qubit[2] q; bit[3] c; h q[0];"), Bindings(), 8),
    "zero_qubits": SamplerPub(q3("bit[2] c;"), Bindings(), shots=4),
    "one_shot": SamplerPub(q3("qubit[1] q; bit[1] c; h q[0]; c[0] = measure q[0];"), Bindings(), 1),
}


@pytest.mark.parametrize("case", sorted(SAMPLER_PUBS))
def test_seeded_shots_equal_aers(adapters: dict[str, QiskitAdapter], case: str) -> None:
    pub = SAMPLER_PUBS[case]
    expected = shots_of(run(adapters["aer"], pub)[0])
    for name in OTHERS:
        assert shots_of(run(adapters[name], pub)[0]) == expected, name


def test_exact_expectations_match_statevector(adapters: dict[str, QiskitAdapter]) -> None:
    # Coefficients negative, tiny and on identity; Qiskit's little-endian strings ("IZ" is Z
    # on qubit 0); a sparse term on a qubit no gate touches; observables (3,) against
    # bindings (2, 1); a parameter used only in the global phase and in an angle.
    t, u = Parameter("t"), Parameter("u")
    circuit = QuantumCircuit(3, global_phase=u)
    circuit.ry(t, 0)
    circuit.h(1)
    circuit.rx(t.sin() * 2 + u, 1)
    observables: list[list[Any]] = [
        [("IIZ", 1.0)],
        [("IZI", -2.0), ("IXX", 0.5), ("III", 3.0)],
        [("YZ", 1e-12, (1, 2)), ("Z", 0.25, (2,)), ("XY", -0.75, (0, 1))],
    ]
    values = np.array([[[0.5, 0.1]], [[1.5, -2.0]]])
    pub = EstimatorPub(
        qpy_source(circuit),
        tuple(Observable(tuple(PauliTerm(*t) for t in terms)) for terms in observables),
        (3,),
        Bindings(("t", "u"), (2, 1), values),
        precision=0.0,
    )

    def operator(terms: list[Any]) -> SparsePauliOp:
        dense = [(p, c) for p, c, *q in terms if not q]
        sparse = [(p, list(q[0]), c) for p, c, *q in terms if q]
        parts = []
        if dense:
            parts.append(SparsePauliOp.from_list(dense))
        if sparse:
            parts.append(SparsePauliOp.from_sparse_list(sparse, 3))
        return sum(parts[1:], parts[0])

    reference = np.array(
        [
            [
                Statevector(circuit.assign_parameters({t: row[0], u: row[1]}))
                .expectation_value(operator(terms))
                .real
                for terms in observables
            ]
            for row in values.reshape(2, 2)
        ]
    )
    for name in ("aer", *OTHERS):
        (result,) = run(adapters[name], pub)
        assert isinstance(result, EstimatorResult)
        np.testing.assert_allclose(result.expectation_values, reference, atol=1e-9, err_msg=name)
        assert not result.standard_errors.any()


# ----------------------------------------------------------------- defects


def _one_over(theta: Parameter) -> QuantumCircuit:
    """rx(1/theta) on q[0], read, flipped and read again: c[1] is always NOT c[0] (the second
    read makes it mid-circuit: Braket runs it shot by shot)."""
    circuit = QuantumCircuit(1, 2)
    circuit.rx(1 / theta, 0)
    circuit.measure(0, 0)
    circuit.x(0)
    circuit.measure(0, 1)
    return circuit


# Fixed in this review (simulation._inputs): Braket's shot-by-shot path ran a non-finite gate
# angle (1/theta at theta=0) and returned '00' in every shot, an outcome this circuit can never
# give (c[1] = NOT c[0]), where Aer fails the job NON_FINITE_ANGLE.
@pytest.mark.parametrize("device", ["braket_sv", "braket_dm"])
def test_braket_shots_refuse_a_non_finite_angle(
    adapters: dict[str, QiskitAdapter], device: str
) -> None:
    pub = SamplerPub(
        qpy_source(_one_over(Parameter("theta"))),
        Bindings(("theta",), (1,), np.array([[0.0]])),
        shots=16,
    )
    with pytest.raises(ExecutionError) as aer:
        run(adapters["aer"], pub)
    assert aer.value.reason == "NON_FINITE_ANGLE"
    with pytest.raises(ExecutionError) as info:
        run(adapters[device], pub)  # unseeded: Braket runs it shot by shot
    assert info.value.reason == "NON_FINITE_ANGLE"
    assert info.value.kind is FailureKind.CLIENT_ERROR


# Fixed in this review (simulation._inputs): braket_dm returns all-zero probabilities for a
# NaN/inf angle (braket_sv NaN, caught as NON_FINITE_ANGLE); the sampler then raised a bare
# ValueError('the simulator returned no probability mass'), reported EXECUTION_FAILED SDK_ERROR.
def test_braket_dm_sampler_names_a_non_finite_angle(adapters: dict[str, QiskitAdapter]) -> None:
    theta = Parameter("theta")
    circuit = QuantumCircuit(1, 1)
    circuit.rx(theta.log(), 0)
    circuit.measure(0, 0)
    pub = SamplerPub(qpy_source(circuit), Bindings(("theta",), (1,), np.array([[0.0]])), 8)
    for name in ("aer", "braket_sv", "lightning.qubit", "braket_dm"):
        with pytest.raises(ExecutionError) as info:
            run(adapters[name], pub)
        assert info.value.reason == "NON_FINITE_ANGLE", name


def _complex_angle_failure(adapter: QiskitAdapter) -> ExecutionError:
    theta = Parameter("theta")
    circuit = QuantumCircuit(1)
    circuit.rx(theta**0.5, 0)  # complex at theta = -1
    pub = EstimatorPub(
        qpy_source(circuit),
        (Observable((PauliTerm("Z", 1.0),)),),
        (),
        Bindings(("theta",), (1,), np.array([[-1.0]])),
        precision=0.0,
    )
    with pytest.raises(ExecutionError) as info:
        run(adapter, pub)
    return info.value


def test_pennylane_names_a_complex_angle_the_clients_error(
    adapters: dict[str, QiskitAdapter],
) -> None:
    error = _complex_angle_failure(adapters["lightning.qubit"])
    assert error.kind is FailureKind.CLIENT_ERROR
    assert "complex" in error.message


@pytest.mark.parametrize("device", ["aer", "braket_sv", "braket_dm"])
def test_braket_and_aer_name_a_complex_angle_the_clients_error(
    adapters: dict[str, QiskitAdapter], device: str
) -> None:
    error = _complex_angle_failure(adapters[device])
    assert error.kind is FailureKind.CLIENT_ERROR
    assert "complex" in error.message


@pytest.mark.parametrize("device", ["braket_sv", "braket_dm"])
def test_braket_estimator_with_if_else_is_answered_or_refused_up_front(
    adapters: dict[str, QiskitAdapter], device: str
) -> None:
    pub = EstimatorPub(
        q3("qubit[2] q; bit[1] c; h q[0]; if (c[0]) { x q[1]; } else { h q[1]; }"),
        (Observable((PauliTerm("ZZ", 1.0), PauliTerm("XI", 0.5))),),
        (),
        Bindings(),
        precision=0.0,
    )
    (aer,) = run(adapters["aer"], pub)
    assert isinstance(aer, EstimatorResult)
    assert aer.expectation_values.tolist() == pytest.approx(0.5)
    try:
        (result,) = run(adapters[device], pub)
    except InvalidArgument as refused:
        # Refused at submission (it failed in the worker after queueing before).
        assert refused.reason == "UNSUPPORTED_FEATURE"
        return
    assert isinstance(result, EstimatorResult)
    assert result.expectation_values.tolist() == pytest.approx(0.5)
