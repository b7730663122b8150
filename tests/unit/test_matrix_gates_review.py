"""Review of the matrices and vectors a QPY circuit carries, through the compile path in process
(compile as a compile worker would, prepare, pickle, execute) on Aer, Braket and PennyLane.

QPY writes a `UnitaryGate`'s matrix as it is, and `UnitaryGate(m, check_input=False)` builds
one from any square matrix: its reader checks the shape against the qubit count, never that the
matrix is unitary. Aer applied such a matrix and renormalised the state, so a client got a
distribution no circuit gives instead of a refusal; the Braket and PennyLane adapters
synthesised something else for a one-qubit matrix, and for a two-qubit one the transpiler's
QiskitError escaped the compile as INTERNAL COMPILER_FAILED (a backend fault). The other
matrix and vector gates are checked by Qiskit's own constructors as the reader builds them
(pinned below): an unnormalised StatePreparation, a non-Hermitian HamiltonianGate and a
DiagonalGate of entries off the unit circle are INVALID_QPY; a NaN matrix is NON_FINITE_ANGLE.
"""

from __future__ import annotations

import io
import pickle

import numpy as np
import pytest
from qiskit import QuantumCircuit, qpy
from qiskit.circuit import Gate
from qiskit.circuit.library import DiagonalGate, HamiltonianGate, StatePreparation, UnitaryGate
from qiskit.quantum_info import random_unitary

from gateway.backends.aer.adapter import AerAdapter
from gateway.backends.braket.adapter import BraketAdapter
from gateway.backends.pennylane.adapter import PennyLaneAdapter
from gateway.backends.qiskit.adapter import QiskitAdapter
from gateway.domain.circuits import Bindings, CircuitLanguage, CircuitSource, SamplerPub
from gateway.domain.errors import Code, InvalidArgument
from gateway.domain.jobs import JobOptions, JobSpec, SamplerResult
from tests.adapters import adapter_context, prepare_in_process

pytestmark = pytest.mark.timeout(60)

FIELD = "spec.pubs[0].sampler.circuit.qpy"
# Not unitary: |1> goes to (|0> + |1>) unnormalised, which Aer renormalised to a fair coin.
SHEAR = np.array([[1, 1], [0, 1]], dtype=complex)


@pytest.fixture(scope="module")
def aer() -> AerAdapter:
    return AerAdapter(adapter_context("aer"))


@pytest.fixture(scope="module")
def others() -> dict[str, QiskitAdapter]:
    return {
        "braket_sv": BraketAdapter(adapter_context("braket-sv", device="braket_sv")),
        "lightning.qubit": PennyLaneAdapter(adapter_context("pl-l", device="lightning.qubit")),
    }


def qpy_source(circuit: QuantumCircuit) -> CircuitSource:
    buffer = io.BytesIO()
    qpy.dump(circuit, buffer)
    return CircuitSource(CircuitLanguage.QPY, data=buffer.getvalue())


def counts(adapter: QiskitAdapter, circuit: QuantumCircuit, shots: int = 256) -> dict[str, int]:
    pub = SamplerPub(qpy_source(circuit), Bindings(), shots=shots)
    job = JobSpec(backend=adapter.context.name, pubs=(pub,), options=JobOptions())
    prepared = prepare_in_process(adapter, job, 1234)
    result = adapter.execute(pickle.loads(pickle.dumps(prepared.payload))).result.pubs[0]
    assert isinstance(result, SamplerResult)
    return dict(result.registers[0].counts[0])


def refusal(adapter: QiskitAdapter, circuit: QuantumCircuit, reason: str) -> InvalidArgument:
    pub = SamplerPub(qpy_source(circuit), Bindings(), shots=16)
    job = JobSpec(backend=adapter.context.name, pubs=(pub,), options=JobOptions())
    with pytest.raises(InvalidArgument) as info:
        prepare_in_process(adapter, job, 1)
    error = info.value
    assert (error.reason, error.code) == (reason, Code.INVALID_ARGUMENT), error.message
    assert [v.field for v in error.field_violations] == [FIELD]
    return error


def with_matrix(matrix: np.ndarray, *, flip: bool = True) -> QuantumCircuit:
    """X on qubit 0 (so a shear shows), the matrix as a UnitaryGate, every qubit measured."""
    qubits = int(np.log2(len(matrix)))
    circuit = QuantumCircuit(qubits, qubits)
    if flip:
        circuit.x(0)
    circuit.append(UnitaryGate(matrix, check_input=False), range(qubits))
    circuit.measure(range(qubits), range(qubits))
    return circuit


def in_definition(matrix: np.ndarray) -> QuantumCircuit:
    body = QuantumCircuit(1)
    body.x(0)
    body.append(UnitaryGate(matrix, check_input=False), [0])
    mine = body.to_gate()
    mine.name = "mine"
    circuit = QuantumCircuit(1, 1)
    circuit.append(mine, [0])
    circuit.measure(0, 0)
    return circuit


# ------------------------------------------------------------------------------- findings


@pytest.mark.parametrize(
    "matrix",
    [SHEAR, 2 * np.eye(2, dtype=complex), np.zeros((2, 2), dtype=complex)],
    ids=["shear", "scaled", "zero"],
)
def test_aer_refuses_a_unitary_gate_that_is_not_unitary(
    aer: AerAdapter, matrix: np.ndarray
) -> None:
    # Ran: the shear gave {"0": ~128, "1": ~128}, the zero matrix {"0": 256}.
    error = refusal(aer, with_matrix(matrix), "INVALID_QPY")
    assert "not unitary" in error.message
    assert error.metadata["instruction"] == "unitary"


def test_aer_refuses_a_non_unitary_matrix_inside_a_gate_definition(aer: AerAdapter) -> None:
    error = refusal(aer, in_definition(SHEAR), "INVALID_QPY")
    assert "not unitary" in error.message


@pytest.mark.parametrize("backend", ["braket_sv", "lightning.qubit"])
def test_synthesising_backends_refuse_a_non_unitary_one_qubit_matrix(
    others: dict[str, QiskitAdapter], backend: str
) -> None:
    # The transpiler synthesised some unitary from it, and the job ran that instead.
    refusal(others[backend], with_matrix(SHEAR), "INVALID_QPY")


@pytest.mark.parametrize("backend", ["braket_sv", "lightning.qubit"])
def test_a_non_unitary_two_qubit_matrix_is_a_client_error_not_a_compiler_failure(
    others: dict[str, QiskitAdapter], backend: str
) -> None:
    # TwoQubitWeylDecomposition's QiskitError ("failed to diagonalize M2") escaped
    # compile_circuit: the compile worker answered INTERNAL COMPILER_FAILED, a backend fault.
    matrix = np.diag([1, 1, 1, 3]).astype(complex) + 0.5
    error = refusal(others[backend], with_matrix(matrix), "INVALID_QPY")
    assert "not unitary" in error.message


def test_a_controlled_unitary_whose_base_is_not_unitary_is_refused(aer: AerAdapter) -> None:
    # QPY carries a controlled gate's base and its definition apart: a payload whose base is
    # not unitary says one thing and (before the check) ran its definition, another.
    gate = UnitaryGate(random_unitary(2, seed=3).data).control(1)
    gate.base_gate.params[0] = SHEAR
    circuit = QuantumCircuit(2, 2)
    circuit.append(gate, [0, 1])
    circuit.measure([0, 1], [0, 1])
    assert "not unitary" in refusal(aer, circuit, "INVALID_QPY").message


# ---------------------------------------------------------------------- what held (pins)


def test_a_unitary_within_qiskits_tolerance_runs(aer: AerAdapter) -> None:
    # Qiskit's own UnitaryGate check (rtol 1e-5, atol 1e-8) admits it; so must the gateway.
    nearly_x = np.array([[0, 1], [1, 0]], dtype=complex) * (1 + 1e-9)
    assert counts(aer, with_matrix(nearly_x, flip=False)) == {"1": 256}
    three = random_unitary(8, seed=7).data
    assert sum(counts(aer, with_matrix(three, flip=False)).values()) == 256


def test_a_non_finite_matrix_is_non_finite_angle(aer: AerAdapter) -> None:
    refusal(aer, with_matrix(np.array([[np.nan, 0], [0, 1]], dtype=complex)), "NON_FINITE_ANGLE")


def test_matrix_gates_qiskits_constructors_check_are_invalid_qpy(aer: AerAdapter) -> None:
    # Written without the constructor's check (params replaced afterwards); the reader rebuilds
    # each through its constructor, which refuses.
    cases: list[tuple[Gate, str]] = []
    prep = StatePreparation([2**-0.5, 2**-0.5])
    prep.params = [1.0, 1.0]
    cases.append((prep, "amplitudes-squared is not 1"))
    nan_prep = StatePreparation([2**-0.5, 2**-0.5])
    nan_prep.params = [float("nan"), 1.0]
    cases.append((nan_prep, "amplitudes-squared is not 1"))
    hamiltonian = HamiltonianGate(np.array([[0, 1], [1, 0]]), 1.0)
    hamiltonian.params[0] = np.array([[0, 1], [0, 0]], dtype=complex)
    cases.append((hamiltonian, "not Hermitian"))
    diagonal = DiagonalGate([1, 1])
    diagonal.params = [2.0, 1.0]
    cases.append((diagonal, "absolute value one"))
    for gate, said in cases:
        circuit = QuantumCircuit(1, 1)
        circuit.append(gate, [0])
        circuit.measure(0, 0)
        assert said in refusal(aer, circuit, "INVALID_QPY").message
