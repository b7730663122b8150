"""Review of what a matrix gate costs to compile on a target that does not run it natively.

Braket's and PennyLane's targets have no `unitary`: the transpiler synthesises a dense k-qubit
matrix into basis gates (Qiskit's QSD: ~(23/48)·4^k CNOTs and as many one-qubit gates).
Measured in process on 2 cores (the adapter's compile_circuit, random unitaries as QPY):

    qubits           3      4      5      6      7
    QPY bytes     1355   4432  16725  65882 262495
    ops out         56    260   1124   4676  19076
    braket_sv CPU 0.01s  0.03s  0.14s  0.62s  4.48s   (lightning.qubit: the same within 10 %)

The front end counted such a gate as 2^(k-1) operations (what Aer pays to apply it natively),
and a HamiltonianGate, StatePreparation or DiagonalGate as one, so four 7-qubit unitaries in
one ~1 MiB request passed every check and ran the compile worker past its 10 s CPU limit: the
worker was killed (its replacement costs every tenant seconds of start-up) and the client got
CIRCUIT_TOO_COMPLEX late; changing the matrix slightly defeated the refusal cache. A gate the
target must synthesise now counts as two operations per entry of its matrix or vector (an
upper bound of the synthesised size: 1.2·4^k for a dense matrix, 2·2^k for a vector), against
max_operations and, as work only compiling does, max_definition_operations: the refusal comes
from counting, before any synthesis. Aer runs `unitary` natively: nothing changes there.

Most of those seconds were not the transpiler's: settle_angles read every UnitaryGate's (and
library gate's) definition before checking that the gate is atomic, and Qiskit builds that
definition by synthesising the matrix in Python: 9.3 s of CPU for one 7-qubit unitary on Aer,
which applies it as it is (two per request killed the worker there too). With that read gone a
7-qubit unitary takes ~1.0 s to synthesise on Braket and PennyLane; a 14-qubit
StatePreparation still takes 4.6 s.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from qiskit import QuantumCircuit, qpy
from qiskit.circuit.library import HamiltonianGate, StatePreparation, UnitaryGate
from qiskit.quantum_info import random_hermitian, random_statevector, random_unitary

from gateway.backends.aer.adapter import AerAdapter
from gateway.backends.base import CIRCUIT_FIELD, CircuitLimits
from gateway.backends.braket.adapter import BraketAdapter
from gateway.backends.pennylane.adapter import PennyLaneAdapter
from gateway.backends.qiskit import frontend as fe
from gateway.backends.qiskit.adapter import QiskitAdapter
from gateway.domain.circuits import CircuitLanguage, CircuitSource
from gateway.domain.errors import InvalidArgument
from tests.adapters import adapter_context

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def synthesising() -> dict[str, QiskitAdapter]:
    return {
        "braket_sv": BraketAdapter(adapter_context("braket-sv", device="braket_sv")),
        "lightning.qubit": PennyLaneAdapter(adapter_context("pl-l", device="lightning.qubit")),
    }


@pytest.fixture(scope="module")
def aer() -> AerAdapter:
    return AerAdapter(adapter_context("aer"))


class _NoTranspile:
    """Stands in for the adapter's pass manager: a refusal that comes before synthesis never
    runs it (on the current code the real one took 4-6 s of CPU for one 7-qubit unitary)."""

    def __init__(self) -> None:
        self.runs = 0

    def run(self, circuit: QuantumCircuit) -> QuantumCircuit:
        self.runs += 1
        raise AssertionError("the circuit reached the transpiler")


def qpy_source(circuit: QuantumCircuit) -> CircuitSource:
    buffer = io.BytesIO()
    qpy.dump(circuit, buffer)
    return CircuitSource(CircuitLanguage.QPY, data=buffer.getvalue())


def unitaries(qubits: int, count: int, seed: int = 7) -> QuantumCircuit:
    circuit = QuantumCircuit(qubits)
    for index in range(count):
        matrix = random_unitary(2**qubits, seed=seed + index)
        circuit.append(UnitaryGate(matrix), range(qubits))
    circuit.measure_all()
    return circuit


def refused_before_transpiling(
    adapter: QiskitAdapter, circuit: QuantumCircuit, monkeypatch: pytest.MonkeyPatch
) -> InvalidArgument:
    source = qpy_source(circuit)
    stand_in = _NoTranspile()
    monkeypatch.setattr(adapter, "_pass_manager", lambda scheduled=False: stand_in)
    with pytest.raises(InvalidArgument) as info:
        adapter.compile_circuit(source)
    assert stand_in.runs == 0  # refused before the transpiler (and its synthesis) ran
    error = info.value
    assert error.reason == "CIRCUIT_TOO_COMPLEX", error.message
    assert error.metadata["maxDefinitionOperations"] == "20000"
    assert [v.field for v in error.field_violations] == [CIRCUIT_FIELD]
    return error


# ------------------------------------------------------------------------------- findings


@pytest.mark.parametrize("backend", ["braket_sv", "lightning.qubit"])
def test_a_seven_qubit_unitary_is_refused_before_synthesis(
    synthesising: dict[str, QiskitAdapter], backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 262 KB of QPY; four fit in max_source_bytes and cost four times this.
    refused_before_transpiling(synthesising[backend], unitaries(7, 1), monkeypatch)


def test_a_seven_qubit_hamiltonian_gate_is_refused_before_synthesis(
    synthesising: dict[str, QiskitAdapter], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Its definition is a UnitaryGate of its exponential: synthesised the same way, but it
    # was counted as one library gate.
    circuit = QuantumCircuit(7)
    circuit.append(HamiltonianGate(random_hermitian(2**7, seed=3), 0.5), range(7))
    refused_before_transpiling(synthesising["braket_sv"], circuit, monkeypatch)


def test_a_fourteen_qubit_state_preparation_is_refused_before_synthesis(
    synthesising: dict[str, QiskitAdapter], monkeypatch: pytest.MonkeyPatch
) -> None:
    # 410 KB of amplitudes; its synthesis took 4.3 s of CPU (~2·2^k gates), counted as one.
    circuit = QuantumCircuit(14)
    circuit.append(StatePreparation(random_statevector(2**14, seed=5)), range(14))
    refused_before_transpiling(synthesising["braket_sv"], circuit, monkeypatch)


def test_several_six_qubit_unitaries_are_counted_together(
    synthesising: dict[str, QiskitAdapter], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each fits (8192 of 20000), three do not: the request's sum is what a worker would pay.
    refused_before_transpiling(synthesising["braket_sv"], unitaries(6, 3), monkeypatch)


# ------------------------------------------------------------------------------- what holds


def test_a_few_small_unitaries_still_compile(synthesising: dict[str, QiskitAdapter]) -> None:
    # Three 3-qubit and one 5-qubit unitary (tens of milliseconds each to synthesise).
    circuit = QuantumCircuit(5)
    for index in range(3):
        circuit.append(UnitaryGate(random_unitary(8, seed=index)), [index, index + 1, index + 2])
    circuit.append(UnitaryGate(random_unitary(32, seed=9)), range(5))
    circuit.measure_all()
    for adapter in synthesising.values():
        compiled = adapter.compile_circuit(qpy_source(circuit))
        assert "unitary" not in compiled.ref.circuit().count_ops()
        assert compiled.operations > 1000


def test_aer_runs_a_seven_qubit_unitary_without_synthesising_it(
    aer: AerAdapter, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Aer's target has `unitary`, yet settle_angles read every UnitaryGate's definition (which
    # Qiskit builds by synthesising the matrix, in Python) before and after transpiling, only
    # to find the gate atomic: 9.3 s of CPU for one 7-qubit unitary, two per request killed
    # the worker. A stand-in definition shows whether anything asks for it.
    def synthesise(gate: UnitaryGate) -> None:
        raise AssertionError("a UnitaryGate's definition was built")

    monkeypatch.setattr(UnitaryGate, "_define", synthesise)
    assert "unitary" in aer.qiskit_target().operation_names
    compiled = aer.compile_circuit(qpy_source(unitaries(7, 2)))
    assert compiled.ref.circuit().count_ops()["unitary"] == 2
    # The run estimate is Aer's (2^(k-1) per unitary), the measures and the barrier.
    assert compiled.operations == 2 * fe.unitary_steps(7) + 7 + 1


def test_settle_angles_leaves_a_unitarys_definition_unbuilt(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    built: list[str] = []
    monkeypatch.setattr(UnitaryGate, "_define", lambda gate: built.append(gate.name))
    circuit = unitaries(3, 1)
    assert fe.settle_angles(circuit, CIRCUIT_FIELD) is circuit
    assert built == []


def test_counting_without_a_target_is_unchanged() -> None:
    # Callers that do not name a target's operations count a unitary as Aer runs it.
    circuit = unitaries(4, 1)
    count = fe.tally_operations(circuit)
    assert count.total == fe.unitary_steps(4) + 4 + 1
    assert count.in_definitions == 0
    assert fe.check_operation_count(circuit, CircuitLimits(), CIRCUIT_FIELD) == count.total


def test_the_synthesis_bound_covers_what_qiskit_synthesises(
    synthesising: dict[str, QiskitAdapter],
) -> None:
    # The bound is an upper bound of the synthesised size, so the count never under-prices it
    # (4-qubit: 260 operations out, counted 512).
    adapter = synthesising["braket_sv"]
    native = adapter.qiskit_target().operation_names
    circuit = QuantumCircuit(4)
    circuit.append(UnitaryGate(random_unitary(16, seed=1)), range(4))
    counted = fe.tally_operations(circuit, native=native)
    compiled = adapter.compile_circuit(qpy_source(circuit))
    assert counted.in_definitions == counted.total == 2 * 4**4
    assert compiled.operations <= counted.total
    assert np.isclose(compiled.operations / 4**4, 1.0, atol=0.1)
