"""The PennyLane simulation core, in process on both devices, against qiskit.quantum_info.

Every reference value comes from Qiskit's own Statevector / Operator of the same circuit (or,
for deterministic circuits, from the circuit's physics), never from a PennyLane run.
"""

from __future__ import annotations

import ast
import math
import tracemalloc
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pennylane as qml
import pytest
from pennylane.tape import QuantumScript
from qiskit.circuit import (
    ClassicalRegister,
    Parameter,
    ParameterVector,
    QuantumCircuit,
    QuantumRegister,
)
from qiskit.circuit.library import XXPlusYYGate, get_standard_gate_name_mapping
from qiskit.quantum_info import Operator, SparsePauliOp, Statevector

from gateway.backends.pennylane import gates
from gateway.backends.pennylane import simulation as simulation_module
from gateway.backends.pennylane.gates import IGNORED_INSTRUCTIONS, QISKIT_GATES
from gateway.backends.pennylane.simulation import PennyLaneSimulation
from gateway.backends.pennylane.translate import translate
from gateway.backends.qiskit import measurement
from gateway.domain.errors import ExecutionError
from gateway.domain.failures import FailureKind

DEVICES = ("lightning.qubit", "default.qubit")
STANDARD = get_standard_gate_name_mapping()
NO_VALUES = np.zeros((1, 0))


@pytest.fixture(scope="module", params=DEVICES)
def sim(request: pytest.FixtureRequest) -> PennyLaneSimulation:
    return PennyLaneSimulation(request.param, num_wires=12)


def _bound(circuit: QuantumCircuit, parameters: Sequence[str], row: np.ndarray) -> QuantumCircuit:
    by_name = {p.name: p for p in circuit.parameters}
    return circuit.assign_parameters(
        {by_name[n]: float(v) for n, v in zip(parameters, row, strict=True) if n in by_name}
    )


def _reference_probabilities(
    body: QuantumCircuit, qubits: Sequence[int], parameters: Sequence[str], values: np.ndarray
) -> np.ndarray:
    return np.array(
        [Statevector(_bound(body, parameters, row)).probabilities(list(qubits)) for row in values]
    )


def _reference_expectations(
    circuit: QuantumCircuit,
    terms: Sequence[tuple[str, tuple[int, ...]]],
    parameters: Sequence[str],
    values: np.ndarray,
) -> np.ndarray:
    rows = []
    for row in values:
        state = Statevector(_bound(circuit, parameters, row))
        rows.append(
            [
                state.expectation_value(
                    SparsePauliOp.from_sparse_list(
                        [(letters, list(qubits), 1.0)], circuit.num_qubits
                    )
                ).real
                for letters, qubits in terms
            ]
        )
    return np.array(rows).reshape(len(values), len(terms))


def _random_layer(circuit: QuantumCircuit, rng: np.random.Generator) -> None:
    for q in range(circuit.num_qubits):
        circuit.u(*rng.uniform(-math.pi, math.pi, 3), q)


# ------------------------------------------------------------------------------ the gate set


def test_the_gate_set_is_standard_and_names_no_measurement() -> None:
    assert set(STANDARD) >= QISKIT_GATES
    assert not QISKIT_GATES & {"measure", "reset", "delay", "global_phase"}
    # Everything the brief lists is in.
    wanted = "x y z h s sdg t tdg sx rx ry rz p u u3 cx cy cz ch swap iswap ccx cswap cp crx cry"
    assert set((wanted + " crz rxx ryy rzz ecr id").split()) <= QISKIT_GATES


def test_the_gate_set_imports_no_sdk() -> None:
    """Compile workers read QISKIT_GATES without loading PennyLane (or Qiskit)."""
    tree = ast.parse(Path(gates.__file__).read_text())
    imported = {
        alias.name if isinstance(node, ast.Import) else node.module
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    }
    assert imported <= {"__future__"}


def _gate_circuit(name: str, rng: np.random.Generator) -> tuple[QuantumCircuit, list[float]]:
    """The gate with random angles, as Parameters g0.. (so both the parametric and, bound, the
    constant path run it), on scrambled qubits of a wider circuit, between random layers."""
    gate = STANDARD[name]
    angles = list(rng.uniform(-math.pi, math.pi, len(gate.params)))
    symbols = [Parameter(f"g{i}") for i in range(len(gate.params))]
    width = gate.num_qubits + 2
    circuit = QuantumCircuit(width)
    _random_layer(circuit, rng)
    qubits = [int(q) for q in rng.permutation(width)[: gate.num_qubits]]
    circuit.append(type(gate)(*symbols) if symbols else gate, qubits)
    _random_layer(circuit, rng)
    return circuit, angles


@pytest.mark.parametrize("name", sorted(QISKIT_GATES))
def test_every_gate_matches_qiskit(sim: PennyLaneSimulation, name: str) -> None:
    rng = np.random.default_rng(sorted(QISKIT_GATES).index(name))
    circuit, angles = _gate_circuit(name, rng)
    parameters = tuple(f"g{i}" for i in range(len(angles)))
    values = np.array([angles]).reshape(1, len(angles))
    qubits = list(range(circuit.num_qubits))
    expected = _reference_probabilities(circuit, qubits, parameters, values)
    measured = circuit.copy()
    measured.measure_all()
    plan = measurement.terminal_plan(measured)
    assert plan is not None
    got = sim.probabilities(f"gate-{name}", plan, parameters, values)
    np.testing.assert_allclose(got, expected, atol=1e-9)
    # The same gate with constant angles.
    constant = measurement.terminal_plan(_bound(measured, parameters, values[0]))
    assert constant is not None
    got = sim.probabilities(f"gate-{name}-bound", constant, (), NO_VALUES)
    np.testing.assert_allclose(got, expected, atol=1e-9)


@pytest.mark.parametrize("name", sorted(QISKIT_GATES))
def test_every_gate_translates_to_its_unitary(name: str) -> None:
    """Stricter than probabilities: the operations' matrix is the gate's, up to a global phase."""
    rng = np.random.default_rng(100 + sorted(QISKIT_GATES).index(name))
    gate = STANDARD[name]
    angles = rng.uniform(-math.pi, math.pi, len(gate.params))
    circuit = QuantumCircuit(gate.num_qubits)
    concrete = type(gate)(*angles) if len(angles) else gate
    circuit.append(concrete, list(range(gate.num_qubits))[::-1] if gate.num_qubits > 1 else [0])
    expected = Operator(circuit).data
    translation = translate(circuit)
    wires = range(len(translation.qubits))
    operations = translation.build([])
    if name == "id":
        assert operations == [] and np.allclose(expected, np.eye(2))
        return
    assert translation.qubits == tuple(range(gate.num_qubits))
    # Wire k-1 first: PennyLane's big-endian matrix of Qiskit's little-endian order.
    got = qml.matrix(QuantumScript(operations), wire_order=list(wires)[::-1])
    phase = np.vdot(got.reshape(-1), expected.reshape(-1))
    assert abs(abs(phase) - expected.shape[0]) < 1e-9, name
    np.testing.assert_allclose(got * phase / abs(phase), expected, atol=1e-9)


def test_ignored_instructions_translate_to_nothing(sim: PennyLaneSimulation) -> None:
    circuit = QuantumCircuit(2, 2, global_phase=0.7)
    circuit.h(0)
    circuit.barrier()
    circuit.delay(100, 1)
    circuit.id(1)
    circuit.append(STANDARD["global_phase"].__class__(0.3), [])
    circuit.measure([0, 1], [0, 1])
    assert {"barrier", "delay", "id", "global_phase"} <= IGNORED_INSTRUCTIONS
    plan = measurement.terminal_plan(circuit)
    assert plan is not None
    np.testing.assert_allclose(
        sim.probabilities("ignored", plan, (), NO_VALUES), [[0.5, 0.5, 0.0, 0.0]], atol=1e-12
    )


# ---------------------------------------------------------------- registers and measured qubits


def test_registers_of_different_widths_with_a_scrambled_bit_map(sim: PennyLaneSimulation) -> None:
    a, b, c = QuantumRegister(1, "a"), QuantumRegister(3, "b"), QuantumRegister(2, "c")
    m, n = ClassicalRegister(2, "m"), ClassicalRegister(3, "n")
    circuit = QuantumCircuit(a, b, c, m, n)
    # X on qubits 1 (b[0]), 3 (b[2]) and 5 (c[1]); qubit 4 is measured but never touched,
    # qubit 2 is touched but not measured, qubit 0 neither.
    circuit.x(b[0])
    circuit.x(b[2])
    circuit.x(c[1])
    circuit.h(b[1])
    circuit.h(b[1])
    circuit.measure(c[1], m[0])
    circuit.measure(b[0], n[2])
    circuit.measure(c[0], m[1])
    circuit.measure(b[2], n[0])
    plan = measurement.terminal_plan(circuit)
    assert plan is not None and plan.qubits == (1, 3, 4, 5)
    probabilities = sim.probabilities("registers", plan, (), NO_VALUES)
    assert probabilities.shape == (1, 16)
    # qubits (1, 3, 4, 5) read (1, 1, 0, 1): index 0b1011.
    assert np.argmax(probabilities[0]) == 0b1011
    assert probabilities[0, 0b1011] == pytest.approx(1.0)
    # Whole-circuit outcome: m = (c[1], c[0]) = (1, 0), n = (b[2], -, b[0]) = (1, 0, 1).
    (outcome,) = plan.outcomes(np.array([0b1011]))
    assert int(outcome) == 0b101_01


def test_partial_measurement_of_an_entangled_state(sim: PennyLaneSimulation) -> None:
    circuit = QuantumCircuit(QuantumRegister(2, "p"), QuantumRegister(3, "q"), ClassicalRegister(3))
    circuit.h(0)
    circuit.cx(0, 2)
    circuit.cx(2, 4)
    circuit.ry(0.4, 3)
    circuit.cry(1.1, 3, 1)
    circuit.measure([4, 1, 3], [0, 2, 1])
    plan = measurement.terminal_plan(circuit)
    assert plan is not None
    expected = _reference_probabilities(plan.body, plan.qubits, (), NO_VALUES)
    got = sim.probabilities("partial", plan, (), NO_VALUES)
    np.testing.assert_allclose(got, expected, atol=1e-12)


def test_a_circuit_measuring_only_untouched_qubits_reads_zero(sim: PennyLaneSimulation) -> None:
    circuit = QuantumCircuit(3, 2)
    circuit.h(1)
    circuit.measure([0, 2], [0, 1])
    plan = measurement.terminal_plan(circuit)
    assert plan is not None
    np.testing.assert_array_equal(
        sim.probabilities("untouched", plan, (), np.zeros((3, 0))), [[1, 0, 0, 0]] * 3
    )


# -------------------------------------------------------------------------------- parameters


def _parametric_circuit() -> QuantumCircuit:
    theta, phi = Parameter("theta"), Parameter("phi")
    v = ParameterVector("v", 3)
    circuit = QuantumCircuit(QuantumRegister(3, "r"), QuantumRegister(2, "s"))
    circuit.h(range(5))
    circuit.rx(2 * theta, 0)
    circuit.ry(theta / 2 - v[1], 3)
    circuit.rz(v[0], 1)
    circuit.cx(1, 4)
    circuit.u(theta, phi, v[2], 2)
    circuit.cp(phi * v[0], 2, 0)  # non-linear: evaluated per binding
    circuit.crx(theta.sin() + 1, 4, 3)
    circuit.rzz(v[2] - v[2] + 0.3, 0, 4)  # cancels to a constant
    circuit.append(XXPlusYYGate(v[1], phi), [1, 2])
    return circuit


def _measured_plan() -> measurement.TerminalPlan:
    """_parametric_circuit measured on four of its qubits, as a terminal plan."""
    measured = _parametric_circuit()
    measured.add_register(ClassicalRegister(4))
    measured.measure([4, 0, 2, 3], [0, 1, 2, 3])
    plan = measurement.terminal_plan(measured)
    assert plan is not None
    return plan


# Names in a scrambled order, with one the transpiled circuit no longer has.
PARAMETERS = ("v[2]", "phi", "dropped", "theta", "v[0]", "v[1]")


def test_parameters_expressions_and_vectors_over_many_bindings(sim: PennyLaneSimulation) -> None:
    plan = _measured_plan()
    values = np.random.default_rng(7).uniform(-3, 3, (40, len(PARAMETERS)))
    expected = _reference_probabilities(plan.body, plan.qubits, PARAMETERS, values)
    got = sim.probabilities("parametric", plan, PARAMETERS, values)
    np.testing.assert_allclose(got, expected, atol=1e-9)
    # One binding takes the plain-tape path.
    np.testing.assert_allclose(
        sim.probabilities("parametric", plan, PARAMETERS, values[3:4]), expected[3:4], atol=1e-9
    )


def test_broadcasts_are_cut_into_chunks(
    sim: PennyLaneSimulation, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 5 qubits, chunks of 4 bindings: 4 + 4 + 1 (the last a plain tape).
    monkeypatch.setattr(simulation_module, "_BROADCAST_AMPLITUDES", 4 << 5)
    circuit = _parametric_circuit()
    terms = [("ZXZ", (4, 1, 0)), ("Y", (2,))]
    values = np.random.default_rng(8).uniform(-3, 3, (9, len(PARAMETERS)))
    expected = _reference_expectations(circuit, terms, PARAMETERS, values)
    got = sim.expectations("chunked", circuit, terms, PARAMETERS, values)
    np.testing.assert_allclose(got, expected, atol=1e-9)


def test_device_calls_hold_a_bounded_number_of_operations_times_bindings(
    sim: PennyLaneSimulation, monkeypatch: pytest.MonkeyPatch
) -> None:
    # lightning.qubit splits a broadcast into a tape per binding, each with every operation:
    # 1000 bindings of 4000 operations went to the device in one call (+952 MiB before it
    # ran; 2000 bindings +1.9 GiB). Now each call holds at most _OPERATION_BINDINGS of them.
    bound = 60
    monkeypatch.setattr(simulation_module, "_OPERATION_BINDINGS", bound)
    calls: list[int] = []
    execute = PennyLaneSimulation._execute

    def counted(self: PennyLaneSimulation, width: int, tapes: list[Any]) -> Any:
        calls.append(sum(max(1, t.batch_size or 1) * len(t.operations) for t in tapes))
        return execute(self, width, tapes)

    monkeypatch.setattr(PennyLaneSimulation, "_execute", counted)
    plan = _measured_plan()
    values = np.random.default_rng(9).uniform(-3, 3, (25, len(PARAMETERS)))
    expected = _reference_probabilities(plan.body, plan.qubits, PARAMETERS, values)
    got = sim.probabilities("bounded", plan, PARAMETERS, values)
    np.testing.assert_allclose(got, expected, atol=1e-9)
    assert len(calls) > 1 and max(calls) <= bound, calls


def test_wide_circuits_run_on_the_dynamic_wire_device(
    sim: PennyLaneSimulation, monkeypatch: pytest.MonkeyPatch
) -> None:
    # lightning.qubit keeps fixed-width devices only for small circuits: make 5 qubits "wide".
    monkeypatch.setattr(simulation_module, "_FIXED_WIDTH_MAX", 2)
    circuit = _parametric_circuit()
    terms = [("XZ", (2, 4)), ("Z", (1,))]
    values = np.random.default_rng(10).uniform(-3, 3, (3, len(PARAMETERS)))
    expected = _reference_expectations(circuit, terms, PARAMETERS, values)
    got = sim.expectations("wide-dynamic", circuit, terms, PARAMETERS, values)
    np.testing.assert_allclose(got, expected, atol=1e-9)


def test_a_constant_circuit_runs_once_for_every_binding(sim: PennyLaneSimulation) -> None:
    circuit = QuantumCircuit(2, 2)
    circuit.ry(1.0, 0)
    circuit.cx(0, 1)
    circuit.measure([0, 1], [0, 1])
    plan = measurement.terminal_plan(circuit)
    assert plan is not None
    values = np.arange(6.0).reshape(3, 2)  # parameters the transpiled circuit dropped
    got = sim.probabilities("constant", plan, ("a", "b"), values)
    c, s = math.cos(0.5) ** 2, math.sin(0.5) ** 2
    np.testing.assert_allclose(got, [[c, 0, 0, s]] * 3, atol=1e-12)
    assert sim.probabilities("constant", plan, ("a", "b"), np.zeros((0, 2))).shape == (0, 4)


# ------------------------------------------------------------------------------ expectations


def test_sparse_terms_on_non_adjacent_qubits(sim: PennyLaneSimulation) -> None:
    circuit = _parametric_circuit()
    circuit.add_register(QuantumRegister(2, "idle"))  # qubits 5, 6: never touched
    terms = [
        ("ZZ", (0, 4)),
        ("XIY", (3, 1, 0)),
        ("YXZ", (4, 0, 2)),
        ("ZZ", (4, 0)),  # the first term again, qubits in another order
        ("Z", (5,)),  # untouched qubit: +1
        ("XZ", (2, 6)),  # Z on an untouched qubit drops out
        ("ZX", (1, 6)),  # X on an untouched qubit: 0
        ("II", (3, 1)),
        ("", ()),
        ("XYZXY", (0, 1, 2, 3, 4)),
    ]
    values = np.random.default_rng(9).uniform(-3, 3, (5, len(PARAMETERS)))
    expected = _reference_expectations(circuit, terms, PARAMETERS, values)
    got = sim.expectations("sparse", circuit, terms, PARAMETERS, values)
    assert got.shape == (5, len(terms))
    np.testing.assert_allclose(got, expected, atol=1e-9)
    np.testing.assert_array_equal(got[:, 4], 1.0)
    np.testing.assert_array_equal(got[:, 6], 0.0)
    np.testing.assert_array_equal(got[:, 7:9], 1.0)


def test_expectations_of_a_constant_circuit(sim: PennyLaneSimulation) -> None:
    circuit = QuantumCircuit(4)
    circuit.h(0)
    circuit.cx(0, 3)
    circuit.s(3)
    terms = [("XY", (0, 3)), ("YX", (3, 0)), ("ZZ", (3, 0)), ("Z", (1,)), ("X", (0,))]
    got = sim.expectations("bell", circuit, terms, (), np.zeros((2, 0)))
    np.testing.assert_allclose(got, [[1, 1, 1, 1, 0]] * 2, atol=1e-12)


@pytest.mark.parametrize(
    "term", [("XZ", (0,)), ("Q", (0,)), ("ZZ", (1, 1)), ("Z", (4,)), ("Z", (-1,))]
)
def test_a_malformed_term_is_refused(sim: PennyLaneSimulation, term: Any) -> None:
    circuit = QuantumCircuit(2)
    circuit.h(0)
    with pytest.raises(ValueError):
        sim.expectations("malformed", circuit, [term], (), NO_VALUES)


# ------------------------------------------------------------------------- caching and errors


def test_a_circuit_is_translated_once_per_key(
    sim: PennyLaneSimulation, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[QuantumCircuit] = []

    def counting(circuit: QuantumCircuit) -> Any:
        calls.append(circuit)
        return translate(circuit)

    monkeypatch.setattr(simulation_module, "translate", counting)
    circuit = _parametric_circuit()
    values = np.zeros((1, len(PARAMETERS)))
    for _ in range(3):
        sim.expectations("once", circuit, [("Z", (0,))], PARAMETERS, values)
    assert len(calls) == 1


def test_an_untranslatable_instruction_is_the_jobs_fault(sim: PennyLaneSimulation) -> None:
    circuit = QuantumCircuit(3)
    circuit.rccx(0, 1, 2)
    with pytest.raises(ExecutionError) as caught:
        sim.expectations("rccx", circuit, [("Z", (0,))], (), NO_VALUES)
    assert caught.value.reason == "EXECUTION_FAILED"
    assert caught.value.kind is FailureKind.CLIENT_ERROR
    assert "rccx" in caught.value.message


def test_a_parameter_without_a_value_is_refused(sim: PennyLaneSimulation) -> None:
    circuit = QuantumCircuit(1)
    circuit.rx(Parameter("alpha"), 0)
    with pytest.raises(ExecutionError) as caught:
        sim.expectations("unbound", circuit, [("Z", (0,))], ("beta",), np.zeros((1, 1)))
    assert caught.value.reason == "UNBOUND_PARAMETERS"


def test_a_circuit_wider_than_the_device_is_refused() -> None:
    small = PennyLaneSimulation("default.qubit", num_wires=2)
    circuit = QuantumCircuit(5)
    circuit.h([0, 2, 4])
    with pytest.raises(ExecutionError) as caught:
        small.expectations("wide", circuit, [("Z", (0,))], (), NO_VALUES)
    assert caught.value.reason == "TOO_MANY_QUBITS"
    assert caught.value.kind is FailureKind.CLIENT_ERROR
    # Idle qubits cost nothing: two touched qubits of a five-qubit circuit fit.
    narrow = QuantumCircuit(5)
    narrow.h([1, 3])
    assert small.expectations("narrow", narrow, [("Z", (1,))], (), NO_VALUES) == pytest.approx(0)


@pytest.mark.parametrize(
    ("raised", "reason", "kind"),
    [
        (RuntimeError("kernel exploded"), "EXECUTION_FAILED", FailureKind.SDK_ERROR),
        (MemoryError(), "OUT_OF_MEMORY", FailureKind.OUT_OF_MEMORY),
    ],
)
def test_sdk_failures_become_execution_errors(
    monkeypatch: pytest.MonkeyPatch, raised: Exception, reason: str, kind: FailureKind
) -> None:
    sim = PennyLaneSimulation("default.qubit", num_wires=4)

    def failing(*args: Any, **kwargs: Any) -> Any:
        raise raised

    monkeypatch.setattr(sim._device, "execute", failing)
    circuit = QuantumCircuit(1, 1)
    circuit.h(0)
    circuit.measure(0, 0)
    plan = measurement.terminal_plan(circuit)
    assert plan is not None
    with pytest.raises(ExecutionError) as caught:
        sim.probabilities("failing", plan, (), NO_VALUES)
    assert (caught.value.reason, caught.value.kind) == (reason, kind)
    if reason == "EXECUTION_FAILED":
        assert "kernel exploded" in caught.value.message


def test_unknown_devices_are_refused() -> None:
    with pytest.raises(ValueError):
        PennyLaneSimulation("default.mixed", num_wires=2)  # type: ignore[arg-type]


def test_default_qubit_reads_wide_pauli_products_from_the_state() -> None:
    # qml.expval of an 18-letter Pauli product builds the product's eigenvalues on
    # default.qubit: ~24x the 4 MiB state. Read from the final state, a term costs two copies.
    n = 18
    sim = PennyLaneSimulation("default.qubit", num_wires=n)
    circuit = QuantumCircuit(n)
    circuit.h(n - 1)  # first touches the last qubit: wire order must not follow first use
    for q in range(n - 1, 0, -1):
        circuit.cx(q, q - 1)
    terms = [("X" * n, tuple(range(n))), ("Y" * n, tuple(range(n))), ("Z" * n, tuple(range(n)))]
    state_bytes = 16 << n
    tracemalloc.start()
    try:
        got = sim.expectations("wide-ghz", circuit, terms, (), np.zeros((1, 0)))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # GHZ: <X..X> = 1, <Y..Y> = Re(i^n + (-i)^n) / 2 = -1 for n = 18, <Z..Z> = 1 (n even).
    np.testing.assert_allclose(got, [[1.0, -1.0, 1.0]], atol=1e-9)
    assert peak < 6 * state_bytes, f"peak {peak >> 20} MiB for a {state_bytes >> 20} MiB state"


# ------------------------------------------------------------------------------ mutation gaps


def test_one_qubit_more_than_the_device_is_refused() -> None:
    small = PennyLaneSimulation("default.qubit", num_wires=2)
    circuit = QuantumCircuit(3)
    circuit.h([0, 1, 2])
    with pytest.raises(ExecutionError) as caught:
        small.expectations("three", circuit, [("Z", (0,))], (), NO_VALUES)
    assert caught.value.reason == "TOO_MANY_QUBITS"


def test_a_complex_angle_is_the_jobs_fault(sim: PennyLaneSimulation) -> None:
    theta = Parameter("theta")
    circuit = QuantumCircuit(1)
    circuit.rx(theta**0.5, 0)
    with pytest.raises(ExecutionError) as caught:
        sim.expectations("complex", circuit, [("Z", (0,))], ("theta",), np.array([[-1.0]]))
    assert caught.value.kind is FailureKind.CLIENT_ERROR
    assert "complex" in caught.value.message


def test_a_parameter_named_like_an_expression_is_its_own_leaf(sim: PennyLaneSimulation) -> None:
    t, u, odd = Parameter("t"), Parameter("u"), Parameter("t*u")
    assert str(t * u) == "t*u"
    circuit = QuantumCircuit(2)
    circuit.rx(odd, 0)
    circuit.rx(t * u, 1)
    values = np.array([[math.pi, 1.0, 0.0], [0.0, 1.0, math.pi]])
    got = sim.expectations("odd", circuit, [("Z", (0,)), ("Z", (1,))], ("t*u", "t", "u"), values)
    np.testing.assert_allclose(got, [[-1.0, 1.0], [1.0, -1.0]], atol=1e-9)
