"""The Braket simulation core (gateway/backends/braket/simulation.py and program.py), in process.

Exact results are compared with qiskit.quantum_info (Statevector, DensityMatrix evolved with
the same channels); noisy probabilities also with their analytic values; shot outcomes of
deterministic circuits are hard-coded from the circuit.
"""

from __future__ import annotations

import itertools
import math
import tracemalloc
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
from qiskit import QuantumCircuit, qasm3
from qiskit.circuit import (
    ClassicalRegister,
    Gate,
    Parameter,
    ParameterVector,
    QuantumRegister,
)
from qiskit.circuit.classical import expr
from qiskit.circuit.library import get_standard_gate_name_mapping
from qiskit.quantum_info import DensityMatrix, Kraus, Operator, Pauli, SparsePauliOp, Statevector

from gateway.backends.braket import program as braket_program
from gateway.backends.braket.simulation import (
    DEVICE_QUBITS,
    FEATURES,
    NOISY_FEATURES,
    QISKIT_GATES,
    BraketNoise,
    BraketSimulation,
    features,
)
from gateway.backends.qiskit.measurement import TerminalPlan, terminal_plan
from gateway.domain.circuits import CircuitFeature
from gateway.domain.errors import ExecutionError
from gateway.domain.failures import FailureKind

NOISE = BraketNoise(depolarizing_1q=0.03, depolarizing_2q=0.06, readout_flip=0.02)
NONE = np.zeros((1, 0))


@pytest.fixture(scope="module")
def sv() -> BraketSimulation:
    simulation = BraketSimulation("braket_sv")
    simulation.warm_up()
    return simulation


@pytest.fixture(scope="module")
def dm() -> BraketSimulation:
    return BraketSimulation("braket_dm")


@pytest.fixture(scope="module")
def noisy() -> BraketSimulation:
    return BraketSimulation("braket_dm", NOISE)


@pytest.fixture(params=["braket_sv", "braket_dm"])
def exact(request: pytest.FixtureRequest, sv: BraketSimulation, dm: BraketSimulation) -> Any:
    return sv if request.param == "braket_sv" else dm


_keys = itertools.count()


def key() -> str:
    """A fresh compiled-circuit key (a key names one circuit)."""
    return f"circuit-{next(_keys)}"


def bound(circuit: QuantumCircuit, parameters: Sequence[str], row: Sequence[float]) -> Any:
    value = dict(zip(parameters, row, strict=True))
    return circuit.assign_parameters({p: value[p.name] for p in circuit.parameters})


def sparse(letters: str, qubits: Sequence[int], n: int) -> SparsePauliOp:
    return SparsePauliOp.from_sparse_list([(letters, list(qubits), 1.0)], n)


def plan(circuit: QuantumCircuit) -> TerminalPlan:
    found = terminal_plan(circuit)
    assert found is not None
    return found


# ------------------------------------------------------------------------------------ gates


def test_the_gate_set_is_every_standard_gate_but_the_non_gates() -> None:
    standard = set(get_standard_gate_name_mapping())
    assert standard - QISKIT_GATES == {"measure", "reset", "delay", "global_phase"}
    assert standard >= QISKIT_GATES


def _gate(name: str, params: Sequence[Any]) -> Gate:
    template = get_standard_gate_name_mapping()[name]
    gate = type(template)(*params)
    assert isinstance(gate, Gate) and gate.name == name
    return gate


# Widths where Braket switches to its large-state kernels (over 10 state-vector axes; a density
# matrix has two per qubit): where a `ctrl @` gate broke later gates.
LARGE = {"braket_sv": 11, "braket_dm": 6}


def _random_state(circuit: QuantumCircuit, rng: np.random.Generator) -> None:
    n = circuit.num_qubits
    for q in range(n):
        circuit.u(*rng.uniform(-math.pi, math.pi, 3), q)
    for q in range(n - 1):
        circuit.cx(q, q + 1)
    for q in range(n):
        circuit.u(*rng.uniform(-math.pi, math.pi, 3), q)


def _reference(exact: BraketSimulation, circuit: QuantumCircuit) -> Any:
    return Statevector(circuit) if exact.device == "braket_sv" else DensityMatrix(circuit)


@pytest.mark.parametrize("name", sorted(QISKIT_GATES))
def test_every_gate_acts_as_qiskit_defines_it(exact: BraketSimulation, name: str) -> None:
    """On an entangled random state of a large-kernel width, with the gate's qubits in a
    scrambled order: all Pauli expectations on its qubits and a spectator (their whole reduced
    state) agree with Qiskit's. Parameters are inputs, the first one an expression."""
    rng = np.random.default_rng(sum(map(ord, name)))
    template = get_standard_gate_name_mapping()[name]
    k = template.num_qubits
    n = LARGE[exact.device]
    symbols = [Parameter(f"g{i}") for i in range(len(template.params))]
    params: list[Any] = [2 * symbols[0] - 0.3, *symbols[1:]] if symbols else []
    circuit = QuantumCircuit(n)
    _random_state(circuit, rng)
    qubits = [n - 1, 3, 0, n - 2][:k]  # scrambled; qubit 1 spectates
    circuit.append(_gate(name, params), qubits)
    involved = sorted({*qubits, 1})
    names = tuple(s.name for s in symbols)
    row = rng.uniform(-math.pi, math.pi, len(names))
    terms = [
        ("".join(letters), tuple(involved))
        for letters in itertools.product("IXYZ", repeat=len(involved))
    ]
    got = exact.expectations(key(), circuit, terms, names, row.reshape(1, -1))[0]
    state = _reference(exact, bound(circuit, names, row))
    want = [state.expectation_value(sparse(p, q, n)).real for p, q in terms]
    np.testing.assert_allclose(got, want, atol=1e-9)


def test_every_gate_in_one_long_circuit(exact: BraketSimulation) -> None:
    """Each gate twice, in a random order on random qubits: Braket's kernels depend on what
    came before (a state left non-contiguous by one gate broke the next)."""
    rng = np.random.default_rng(7)
    n = LARGE[exact.device] + 1
    circuit = QuantumCircuit(n)
    _random_state(circuit, rng)
    names = sorted(QISKIT_GATES) * 2
    rng.shuffle(names)
    for name in names:
        template = get_standard_gate_name_mapping()[name]
        params = rng.uniform(-math.pi, math.pi, len(template.params))
        qubits = rng.choice(n, template.num_qubits, replace=False).tolist()
        circuit.append(_gate(name, params), qubits)
    terms = [("ZXY", (0, 4, n - 1)), ("XX", (2, 3)), ("Z", (n - 2,)), ("YZ", (1, 5))]
    got = exact.expectations(key(), circuit, terms, (), NONE)[0]
    state = _reference(exact, circuit)
    want = [state.expectation_value(sparse(p, q, n)).real for p, q in terms]
    np.testing.assert_allclose(got, want, atol=1e-9)


# ------------------------------------------------------------------------------ probabilities


def _registers_circuit(toffoli: bool = False) -> tuple[QuantumCircuit, tuple[str, ...]]:
    """Two quantum and three classical registers of different widths, parameters (a plain
    one, an expression, ParameterVector elements), a qubit measured into a scrambled clbit,
    one qubit never measured, one measured but untouched, clbits never written."""
    theta = Parameter("theta")
    v = ParameterVector("v", 2)
    qa, qb = QuantumRegister(3, "qa"), QuantumRegister(3, "qb")
    x, y, z = ClassicalRegister(2, "x"), ClassicalRegister(4, "y"), ClassicalRegister(1, "z")
    circuit = QuantumCircuit(qa, qb, x, y, z)
    circuit.ry(theta, qa[0])
    circuit.rx(2 * theta + v[0], qa[2])
    circuit.cx(qa[0], qb[2])
    circuit.h(qb[0])
    circuit.crz(v[1], qb[0], qa[2])
    circuit.rzz(v[0] - v[1], qa[0], qb[0])
    circuit.h(qb[0])
    if toffoli:
        circuit.ccx(qa[0], qb[0], qb[1])
    circuit.barrier()
    circuit.measure(qb[2], y[3])
    circuit.measure(qa[0], x[0])
    circuit.measure(qa[2], z[0])
    circuit.measure(qb[0], y[1])
    circuit.measure(qb[1], x[1])  # untouched (but by the Toffoli): 0
    # qa[1] is never measured; y[0], y[2] are never written
    return circuit, ("unused", "v[1]", "theta", "v[0]")  # any order, one name extra


ROWS = np.array(
    [[9.0, 0.3, 0.7, -1.1], [9.0, -2.0, 1.9, 0.4], [9.0, 0.3, 0.7, -1.1], [0.0, 0.0, 0.0, 0.0]]
)


def test_probabilities_of_measured_qubits_in_qiskit_order(exact: BraketSimulation) -> None:
    circuit, names = _registers_circuit()
    terminal = plan(circuit)
    assert terminal.qubits == (0, 2, 3, 4, 5)
    got = exact.probabilities(key(), terminal, names, ROWS)
    assert got.shape == (len(ROWS), 2**5)
    for row, probabilities in zip(ROWS, got, strict=True):
        want = Statevector(bound(terminal.body, names, row)).probabilities(list(terminal.qubits))
        np.testing.assert_allclose(probabilities, want, atol=1e-9)


def test_no_bindings_and_no_parameters(sv: BraketSimulation) -> None:
    circuit = QuantumCircuit(3, 3)
    circuit.x(2)
    circuit.measure([2, 0], [0, 1])
    terminal = plan(circuit)  # qubits (0, 2): index bit 1 is qubit 2
    np.testing.assert_allclose(
        sv.probabilities(key(), terminal, (), np.zeros((3, 0))), [[0, 0, 1, 0]] * 3
    )
    assert sv.probabilities(key(), terminal, (), np.zeros((0, 0))).shape == (0, 4)


def test_a_parameter_without_a_value_is_refused(sv: BraketSimulation) -> None:
    circuit = QuantumCircuit(1, 1)
    circuit.rx(Parameter("a"), 0)
    circuit.measure(0, 0)
    with pytest.raises(ValueError, match="no value for parameter 'a'"):
        sv.probabilities(key(), plan(circuit), ("b",), np.zeros((1, 1)))


# ------------------------------------------------------------------------------ expectations


TERMS = [
    ("ZX", (5, 0)),  # sparse, non-adjacent, descending
    ("XIY", (3, 1, 0)),  # with an identity letter
    ("YZZXYX", (0, 1, 2, 3, 4, 5)),  # dense-like
    ("ZZXY", (4, 1, 5, 2)),
    ("Z", (1,)),  # the never-touched qubit
    ("", ()),  # empty: 1
    ("II", (2, 4)),  # all identity: 1
    ("ZX", (5, 0)),  # a repeat
]


def _estimator_circuit() -> tuple[QuantumCircuit, tuple[str, ...]]:
    circuit, names = _registers_circuit()
    return circuit.remove_final_measurements(inplace=False), names


def test_expectations_of_sparse_and_dense_terms(exact: BraketSimulation) -> None:
    circuit, names = _estimator_circuit()
    got = exact.expectations(key(), circuit, TERMS, names, ROWS)
    assert got.shape == (len(ROWS), len(TERMS))
    for row, values in zip(ROWS, got, strict=True):
        state = Statevector(bound(circuit, names, row))
        want = [state.expectation_value(sparse(p, q, 6)).real for p, q in TERMS]
        np.testing.assert_allclose(values, want, atol=1e-9)


def test_identity_terms_need_no_run(sv: BraketSimulation) -> None:
    circuit = QuantumCircuit(2)
    circuit.rx(Parameter("a"), 0)  # no value for "a": no run may happen
    got = sv.expectations(key(), circuit, [("", ()), ("I", (1,))], (), np.zeros((2, 0)))
    np.testing.assert_array_equal(got, np.ones((2, 2)))


# ------------------------------------------------------------------------------ noise


def _depolarizing(p: float, qubits: int) -> Kraus:
    labels = ["".join(t) for t in itertools.product("IXYZ", repeat=qubits)]
    weights = [1 - p] + [p / (4**qubits - 1)] * (4**qubits - 1)
    return Kraus(
        [math.sqrt(w) * Pauli(label).to_matrix() for w, label in zip(weights, labels, strict=True)]
    )


def _bit_flip(p: float) -> Kraus:
    return Kraus([math.sqrt(1 - p) * np.eye(2), math.sqrt(p) * Pauli("X").to_matrix()])


def _noisy_state(circuit: QuantumCircuit, noise: BraketNoise) -> DensityMatrix:
    """Qiskit's density matrix of `circuit` with BraketNoise's channels (see its docstring)."""
    rho = DensityMatrix.from_label("0" * circuit.num_qubits)
    for instruction in circuit.data:
        if instruction.operation.name == "barrier":
            continue
        qubits = [circuit.find_bit(q).index for q in instruction.qubits]
        rho = rho.evolve(Operator(instruction.operation), qubits)
        if len(qubits) == 1:
            rho = rho.evolve(_depolarizing(noise.depolarizing_1q, 1), qubits)
        elif len(qubits) == 2:
            rho = rho.evolve(_depolarizing(noise.depolarizing_2q, 2), qubits)
    return rho


def test_a_depolarized_bell_state_has_its_analytic_probabilities() -> None:
    """H, CX, measure both. Depolarizing(p1) after H leaves |+><+| mixed with |-><-| (X fixes
    |+>, Y and Z swap it with |->); CX makes those Phi+ and Phi-, which have the same Z-basis
    probabilities, so p1 drops out. Two-qubit depolarizing(p2) gives
    (1 - 16 p2/15) rho + (16 p2/15) I/4: P(00) = P(11) = a = 1/2 - 4 p2/15 and
    P(01) = P(10) = b = 4 p2/15. Independent readout flips r then give
    P(00) = P(11) = a ((1-r)^2 + r^2) + 2 r (1-r) b and P(01) = P(10) = 2 r (1-r) a +
    ((1-r)^2 + r^2) b."""
    p1, p2, r = 0.1, 0.2, 0.05
    simulation = BraketSimulation("braket_dm", BraketNoise(p1, p2, r))
    circuit = QuantumCircuit(2, 2)
    circuit.h(0)
    circuit.cx(0, 1)
    circuit.measure([0, 1], [0, 1])
    a, b = 0.5 - 4 * p2 / 15, 4 * p2 / 15
    same, flip = (1 - r) ** 2 + r**2, 2 * r * (1 - r)
    even, odd = a * same + b * flip, a * flip + b * same
    got = simulation.probabilities(key(), plan(circuit), (), NONE)
    np.testing.assert_allclose(got, [[even, odd, odd, even]], atol=1e-12)


def test_one_qubit_depolarizing_and_readout_flip_are_analytic() -> None:
    """X then depolarizing(p): X and Y take |1> back to |0>, so P(1) = 1 - 2p/3; a readout
    flip r then gives P(1) = (1 - 2p/3)(1 - r) + (2p/3) r."""
    p, r = 0.3, 0.1
    simulation = BraketSimulation("braket_dm", BraketNoise(depolarizing_1q=p, readout_flip=r))
    circuit = QuantumCircuit(1, 1)
    circuit.x(0)
    circuit.measure(0, 0)
    one = (1 - 2 * p / 3) * (1 - r) + (2 * p / 3) * r
    got = simulation.probabilities(key(), plan(circuit), (), NONE)
    np.testing.assert_allclose(got, [[1 - one, one]], atol=1e-12)


def test_noisy_results_match_qiskit_with_the_same_channels(noisy: BraketSimulation) -> None:
    circuit, names = _registers_circuit(toffoli=True)  # three qubits: no noise
    terminal = plan(circuit)
    body = terminal.body
    got_p = noisy.probabilities(key(), terminal, names, ROWS[:2])
    got_e = noisy.expectations(key(), body, TERMS, names, ROWS[:2])
    for row, probabilities, values in zip(ROWS[:2], got_p, got_e, strict=True):
        rho = _noisy_state(bound(body, names, row), NOISE)
        values_want = [rho.expectation_value(sparse(p, q, 6)).real for p, q in TERMS]
        np.testing.assert_allclose(values, values_want, atol=1e-9)
        for qubit in terminal.qubits:  # readout flips: measured qubits only
            rho = rho.evolve(_bit_flip(NOISE.readout_flip), [qubit])
        want = rho.probabilities(list(terminal.qubits))
        np.testing.assert_allclose(probabilities, want, atol=1e-9)


def test_noise_is_refused_on_the_state_vector_and_checked() -> None:
    with pytest.raises(ValueError, match="only braket_dm"):
        BraketSimulation("braket_sv", BraketNoise(readout_flip=0.01))
    assert BraketSimulation("braket_sv", BraketNoise()).noise is None  # no noise at all
    for bad in (-0.1, 1.0, float("nan")):
        with pytest.raises(ValueError, match="probability"):
            BraketNoise(depolarizing_2q=bad)
    with pytest.raises(ValueError, match="unknown"):
        BraketSimulation("braket_qpu")  # type: ignore[arg-type]


def test_features_are_declared_per_noise(noisy: BraketSimulation) -> None:
    everything = {
        CircuitFeature.MID_CIRCUIT_MEASUREMENT,
        CircuitFeature.RESET,
        CircuitFeature.CONTROL_FLOW,
    }
    assert everything == FEATURES == features("braket_sv", False) == features("braket_dm", False)
    assert features("braket_dm", True) == NOISY_FEATURES == {CircuitFeature.RESET}
    assert BraketSimulation("braket_dm", BraketNoise()).features == FEATURES
    assert noisy.features == NOISY_FEATURES


def test_the_qubit_limits_are_those_braket_declares(
    sv: BraketSimulation, dm: BraketSimulation
) -> None:
    for simulation in (sv, dm):
        properties = simulation._simulator.properties
        assert DEVICE_QUBITS[simulation.device] == properties.paradigm.qubitCount


# ------------------------------------------------------------------------------ shots


def _deterministic_circuit(expression: bool = True) -> QuantumCircuit:
    """Mid-circuit measurements, a reset, if/else on a bit, on a register (one of whose bits
    is not yet measured), on a classical expression; a clbit never written and one written
    only in an untaken branch (`expression` False: the same test on the register alone, as
    qiskit's OpenQASM importer has no '&&'). Every shot: clbits (x0, x1, x2, y0, y1, z0, w0, w1) =
    (0, 1, 0, 1, 1, 1, 0, 0) = 2 + 8 + 16 + 32 = 58."""
    qa, qb = QuantumRegister(2, "qa"), QuantumRegister(3, "qb")
    x, y = ClassicalRegister(3, "x"), ClassicalRegister(2, "y")
    z, w = ClassicalRegister(1, "z"), ClassicalRegister(2, "w")
    circuit = QuantumCircuit(qa, qb, x, y, z, w)
    circuit.x(qa[1])
    circuit.measure(qa[1], y[1])  # y1 = 1
    circuit.x(qa[1])
    circuit.measure(qa[1], x[0])  # x0 = 0, on the same qubit
    circuit.x(qb[2])
    circuit.reset(qb[2])
    circuit.measure(qb[2], x[2])  # x2 = 0
    with circuit.if_test((y[1], 1)):
        circuit.x(qb[0])  # taken
    with circuit.if_test((y, 2)) as otherwise:  # y0 not measured yet: y == 2
        circuit.x(qb[1])  # taken
    with otherwise:
        circuit.x(qa[0])
    circuit.measure(qb[0], x[1])  # x1 = 1
    circuit.measure(qb[1], y[0])  # y0 = 1
    with circuit.if_test((x[0], 1)):
        circuit.measure(qb[0], w[1])  # untaken: w1 stays 0
    condition = expr.logic_and(expr.equal(y, 3), expr.logic_not(x[0])) if expression else (y, 3)
    with circuit.if_test(condition):
        circuit.x(qa[0])  # taken
    circuit.measure(qa[0], z[0])  # z0 = 1
    return circuit


def test_mid_circuit_measurement_reset_and_if_else_give_the_same_bits_every_shot(
    exact: BraketSimulation,
) -> None:
    outcomes = exact.shots(key(), _deterministic_circuit(), (), np.zeros((3, 0)), 40)
    assert len(outcomes) == 3
    for shots in outcomes:
        assert shots.dtype == np.uint64
        assert shots.tolist() == [58] * 40


def test_bindings_of_a_branching_circuit(sv: BraketSimulation) -> None:
    """rx(theta) q0; c0 = q0; if (c0) x q1; c1 = q1; x q0; c2 = q0. theta = 0 gives
    c = (0, 0, 1) = 4 and theta = pi gives (1, 1, 0) = 3; equal bindings share a run."""
    theta = Parameter("theta")
    circuit = QuantumCircuit(2, 3)
    circuit.rx(theta, 0)
    circuit.measure(0, 0)
    with circuit.if_test((circuit.clbits[0], 1)):
        circuit.x(1)
    circuit.measure(1, 1)
    circuit.x(0)
    circuit.measure(0, 2)
    values = np.array([[0.0], [math.pi], [0.0]])
    outcomes = sv.shots(key(), circuit, ("theta",), values, 25)
    assert [shots.tolist() for shots in outcomes] == [[4] * 25, [3] * 25, [4] * 25]


def test_random_branches_come_back_in_random_order(sv: BraketSimulation) -> None:
    """Braket returns a branched run's shots grouped by branch; they are shuffled. A sorted
    run of 400 fair shots (or one missing an outcome) has odds below 2^-300."""
    circuit = QuantumCircuit(2, 2)
    circuit.h(0)
    circuit.measure(0, 0)
    with circuit.if_test((circuit.clbits[0], 1)):
        circuit.x(1)
    circuit.measure(1, 1)
    (shots,) = sv.shots(key(), circuit, (), NONE, 400)
    assert set(shots.tolist()) == {0, 3}
    steps = np.diff(shots.astype(np.int64))
    assert (steps > 0).any() and (steps < 0).any()


def test_reset_of_an_entangled_qubit_keeps_its_partner_random(exact: BraketSimulation) -> None:
    circuit = QuantumCircuit(2, 2)
    circuit.h(0)
    circuit.cx(0, 1)
    circuit.reset(0)
    circuit.cx(1, 0)
    circuit.measure([0, 1], [0, 1])
    (shots,) = exact.shots(key(), circuit, (), NONE, 200)
    assert set(shots.tolist()) == {0, 3}


def test_noise_with_reset_runs_and_mid_circuit_measurement_is_refused(
    noisy: BraketSimulation,
) -> None:
    simulation = BraketSimulation("braket_dm", BraketNoise(readout_flip=0.25))
    circuit = QuantumCircuit(1, 1)
    circuit.x(0)
    circuit.reset(0)
    circuit.measure(0, 0)
    (shots,) = simulation.shots(key(), circuit, (), NONE, 4000)
    # Binomial(4000, 0.25): sd 0.0068; the bound is 7 sd.
    assert abs(shots.mean() - 0.25) < 0.05
    for refused in (_deterministic_circuit(), _mid_circuit_only()):
        with pytest.raises(ExecutionError) as caught:
            noisy.shots(key(), refused, (), NONE, 10)
        assert caught.value.reason == "UNSUPPORTED_FEATURE"
        assert caught.value.kind is FailureKind.CLIENT_ERROR


def _mid_circuit_only() -> QuantumCircuit:
    circuit = QuantumCircuit(1, 2)
    circuit.measure(0, 0)
    circuit.x(0)
    circuit.measure(0, 1)
    return circuit


def test_a_circuit_measuring_nothing_reads_zero(sv: BraketSimulation) -> None:
    circuit = QuantumCircuit(2, 2)
    circuit.reset(0)
    circuit.h(1)
    assert [s.tolist() for s in sv.shots(key(), circuit, (), np.zeros((2, 0)), 3)] == [
        [0, 0, 0]
    ] * 2


# ------------------------------------------------------------------------------ round trip


def test_circuits_exported_by_qasm3_dumps_round_trip(sv: BraketSimulation) -> None:
    deterministic = _deterministic_circuit(expression=False)
    loaded = qasm3.loads(qasm3.dumps(deterministic))
    for circuit in (deterministic, loaded):
        (shots,) = sv.shots(key(), circuit, (), NONE, 10)
        assert shots.tolist() == [58] * 10

    circuit, names = _registers_circuit()
    loaded = qasm3.loads(qasm3.dumps(circuit))
    renamed = {"theta": "theta", "v[0]": "_v_0_", "v[1]": "_v_1_"}  # dumps renames v[i]
    assert {p.name for p in loaded.parameters} == set(renamed.values())
    exported = tuple(renamed.get(name, "unused") for name in names)
    want = sv.probabilities(key(), plan(circuit), names, ROWS[:2])
    got = sv.probabilities(key(), plan(loaded), exported, ROWS[:2])
    np.testing.assert_allclose(got, want, atol=1e-12)


# ------------------------------------------------------------------------------ failures


def test_braket_failures_are_execution_errors() -> None:
    simulation = BraketSimulation("braket_sv")
    circuit = QuantumCircuit(1, 1)
    circuit.x(0)  # a measured qubit no gate touches reads 0 without a run
    circuit.measure(0, 0)
    raised: list[BaseException] = [ValueError("x" * 600), MemoryError()]

    def failing(*args: object, **kwargs: object) -> None:
        raise raised.pop(0)

    simulation._simulator.run = failing
    with pytest.raises(ExecutionError) as caught:
        simulation.probabilities(key(), plan(circuit), (), NONE)
    assert caught.value.reason == "EXECUTION_FAILED"
    assert caught.value.kind is FailureKind.SDK_ERROR
    assert caught.value.message.startswith("braket_sv: ValueError: xxx")
    assert len(caught.value.message) == 500
    with pytest.raises(ExecutionError) as caught:
        simulation.shots(key(), circuit, (), NONE, 1)
    assert caught.value.reason == "OUT_OF_MEMORY"
    assert caught.value.kind is FailureKind.OUT_OF_MEMORY


def test_what_braket_cannot_run_is_an_unsupported_feature(sv: BraketSimulation) -> None:
    loop = QuantumCircuit(1, 1)
    with loop.for_loop(range(2)):
        loop.x(0)
    loop.measure(0, 0)
    opaque = QuantumCircuit(1, 1)
    opaque.append(Gate("mystery", 1, []), [0])
    opaque.measure(0, 0)
    for circuit in (loop, opaque):
        with pytest.raises(ExecutionError) as caught:
            sv.shots(key(), circuit, (), NONE, 1)
        assert caught.value.reason == "UNSUPPORTED_FEATURE"
        assert caught.value.kind is FailureKind.CLIENT_ERROR


def test_programs_are_cached_per_key_and_kind(sv: BraketSimulation) -> None:
    one = QuantumCircuit(1, 1)
    one.x(0)
    one.measure(0, 0)
    zero = QuantumCircuit(1, 1)
    zero.measure(0, 0)
    name = key()
    assert sv.probabilities(name, plan(one), (), NONE).tolist() == [[0.0, 1.0]]
    # The same key names the same compiled circuit: its program is not translated again.
    assert sv.probabilities(name, plan(zero), (), NONE).tolist() == [[0.0, 1.0]]
    assert sv.shots(name, zero, (), NONE, 2)[0].tolist() == [0, 0]  # another kind


def test_the_program_names_braket_gates_and_inputs_only() -> None:
    theta = Parameter("θ")
    v = ParameterVector("v", 1)
    circuit = QuantumCircuit(3, 2)
    circuit.cx(0, 2)
    circuit.p(theta, 1)
    circuit.rz(2 * theta + v[0], 2)
    circuit.sx(0)
    circuit.measure(2, 1)
    program = braket_program.shots_program(circuit, None)
    assert program.source == (
        "OPENQASM 3.0;\ninput float a0;\ninput float a1;\nqubit[3] q;\nbit[2] c;\n"
        "cnot q[0], q[2];\nphaseshift(a0) q[1];\nrz(a1) q[2];\nv q[0];\nc[1] = measure q[2];\n"
    )
    assert program.columns == (1,)
    values = program.input_values(("v[0]", "θ"), np.array([[0.5, 0.25]]))
    np.testing.assert_allclose(values, [[0.25, 1.0]])


def test_wide_probabilities_cost_a_few_state_copies(sv: BraketSimulation) -> None:
    # Asked for named targets, Braket permutes its table through 2^k Python tuples (~440 MiB
    # for 20 qubits); the table is taken whole and marginalised in numpy instead.
    n = 20
    circuit = QuantumCircuit(n + 1, n)
    circuit.x(n)  # touched, never measured: summed out
    for q in range(n - 1):
        circuit.h(q)
    # qubit n - 1 is measured but never touched: it reads 0
    circuit.measure(list(reversed(range(n))), list(range(n)))
    terminal = plan(circuit)
    state_bytes = 16 << (n + 1)
    tracemalloc.start()
    try:
        got = sv.probabilities(key(), terminal, (), NONE)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 6 * state_bytes, f"peak {peak >> 20} MiB for a {state_bytes >> 20} MiB state"
    # Bit i of an outcome is terminal.qubits[i]; the untouched qubit's bit is always 0.
    untouched = terminal.qubits.index(n - 1)
    index = np.arange(1 << n)
    want = np.where((index >> untouched) & 1, 0.0, 1.0 / (1 << (n - 1)))
    np.testing.assert_allclose(got[0], want, atol=1e-12)


def test_a_gate_that_leaves_one_of_its_qubits_alone_does_not_touch_it(
    exact: BraketSimulation,
) -> None:
    # Braket simulates only the qubits an instruction names: a qubit counted as touched because
    # its gate named it (its definition did not) made the table one qubit short of what the
    # gateway expected, a backend fault the breaker counted.
    half = QuantumCircuit(2)
    half.x(0)
    foo = Gate("foo", 2, [])
    foo.definition = half
    empty = Gate("bar", 1, [])
    empty.definition = QuantumCircuit(1)
    circuit = QuantumCircuit(3, 3)
    circuit.append(foo, [0, 1])
    circuit.append(empty, [2])
    circuit.measure([0, 1, 2], [0, 1, 2])
    got = exact.probabilities(key(), plan(circuit), (), NONE)
    np.testing.assert_allclose(got, [[0, 1, 0, 0, 0, 0, 0, 0]], atol=1e-12)  # only qubit 0 set


# ------------------------------------------------------------------------------ mutation gaps


def _branch_on(condition: Any) -> QuantumCircuit:
    """c = (1, 0) measured, then if (condition) x q1 else x q2, read into r: every shot reads
    5 when the condition holds (true branch) and 9 when it does not (else branch)."""
    c, r = ClassicalRegister(2, "c"), ClassicalRegister(2, "r")
    circuit = QuantumCircuit(QuantumRegister(3, "q"), c, r)
    circuit.x(0)
    circuit.measure(0, c[0])
    circuit.measure(1, c[1])
    resolved = condition(c) if callable(condition) else condition
    with circuit.if_test(resolved) as otherwise:
        circuit.x(1)
    with otherwise:
        circuit.x(2)
    circuit.measure(1, r[0])
    circuit.measure(2, r[1])
    return circuit


@pytest.mark.parametrize(
    ("condition", "holds"),
    [
        (lambda c: (c[1], 1), False),  # the else branch runs
        (lambda c: (c[0], 1), True),
        (lambda c: (c, 1), True),
        (lambda c: (c, 5), False),  # wider than the register: never equal
        (lambda c: expr.not_equal(c, 1), False),
        (lambda c: expr.not_equal(c, 3), True),
        (lambda c: expr.equal(c[0], False), False),
        (lambda c: expr.equal(c[1], False), True),
        (lambda c: expr.logic_or(c[1], c[0]), True),
        (lambda c: expr.logic_or(c[1], expr.logic_not(c[0])), False),
        (lambda c: expr.logic_and(c[0], c[1]), False),
    ],
)
def test_each_condition_form_takes_the_branch_qiskit_would(
    sv: BraketSimulation, condition: Any, holds: bool
) -> None:
    (shots,) = sv.shots(key(), _branch_on(condition), (), NONE, 5)
    assert shots.tolist() == [5 if holds else 9] * 5


def test_mid_circuit_outcomes_land_in_their_own_clbits(exact: BraketSimulation) -> None:
    """No control flow: Braket's columns are the measured clbits in ascending order, written
    here out of order. c = (0, 1, 1) = 6 every shot."""
    circuit = QuantumCircuit(2, 3)
    circuit.x(0)
    circuit.measure(0, 2)
    circuit.reset(0)
    circuit.measure(0, 0)
    circuit.x(1)
    circuit.measure(1, 1)
    (shots,) = exact.shots(key(), circuit, (), NONE, 20)
    assert shots.tolist() == [6] * 20


def test_measured_qubits_no_gate_touches_read_zero(exact: BraketSimulation) -> None:
    circuit = QuantumCircuit(2, 1)
    circuit.h(0)
    circuit.measure(1, 0)
    got = exact.probabilities(key(), plan(circuit), (), np.zeros((2, 0)))
    np.testing.assert_array_equal(got, [[1.0, 0.0]] * 2)


def test_readout_flips_reach_measured_qubits_no_gate_touches() -> None:
    """x q0, measure q0, q1, q2 with readout flip r: q0 reads 1 with 1 - r, the others with r."""
    r = 0.25
    simulation = BraketSimulation("braket_dm", BraketNoise(readout_flip=r))
    circuit = QuantumCircuit(3, 3)
    circuit.x(0)
    circuit.measure([0, 1, 2], [0, 1, 2])
    got = simulation.probabilities(key(), plan(circuit), (), NONE)
    ones = [1 - r, r, r]
    want = [
        math.prod(ones[i] if (index >> i) & 1 else 1 - ones[i] for i in range(3))
        for index in range(8)
    ]
    np.testing.assert_allclose(got, [want], atol=1e-12)


def test_expectations_when_qubit_zero_is_untouched(exact: BraketSimulation) -> None:
    circuit = QuantumCircuit(3)
    circuit.x(1)
    circuit.h(2)
    terms = [("Z", (0,)), ("Z", (1,)), ("X", (2,)), ("X", (0,)), ("ZZ", (0, 1))]
    got = exact.expectations(key(), circuit, terms, (), np.zeros((1, 0)))
    np.testing.assert_allclose(got, [[1.0, -1.0, 1.0, 0.0, -1.0]], atol=1e-12)


def test_a_complex_angle_is_refused(sv: BraketSimulation) -> None:
    theta = Parameter("theta")
    circuit = QuantumCircuit(1, 1)
    circuit.rx(theta**0.5, 0)
    circuit.measure(0, 0)
    with pytest.raises(ExecutionError, match="complex") as caught:
        sv.probabilities(key(), plan(circuit), ("theta",), np.array([[-1.0]]))
    assert caught.value.kind is FailureKind.CLIENT_ERROR  # the bindings', not the backend's


def test_shot_counts_and_clbit_widths_are_checked(sv: BraketSimulation) -> None:
    circuit = QuantumCircuit(1, 1)
    circuit.reset(0)
    circuit.measure(0, 0)
    with pytest.raises(ValueError, match="shots must be positive"):
        sv.shots(key(), circuit, (), NONE, 0)
    wide = QuantumCircuit(1, 65)
    wide.reset(0)
    wide.measure(0, 64)
    with pytest.raises(ExecutionError) as caught:
        sv.shots(key(), wide, (), NONE, 1)
    assert caught.value.reason == "UNSUPPORTED_FEATURE"


def test_every_term_follows_its_own_binding(exact: BraketSimulation) -> None:
    theta = Parameter("theta")
    circuit = QuantumCircuit(2)
    circuit.rx(theta, 0)
    circuit.x(1)
    values = np.array([[0.0], [math.pi], [math.pi / 2], [0.0]])
    got = exact.expectations(key(), circuit, [("Z", (0,)), ("Z", (1,))], ("theta",), values)
    np.testing.assert_allclose(got, [[1, -1], [-1, -1], [0, -1], [1, -1]], atol=1e-12)


def test_a_parameter_named_like_an_expression_is_its_own_input(sv: BraketSimulation) -> None:
    odd, t = Parameter("2*t"), Parameter("t")
    circuit = QuantumCircuit(2, 2)
    circuit.rx(odd, 0)
    circuit.rx(2 * t, 1)
    circuit.measure([0, 1], [0, 1])
    got = sv.probabilities(key(), plan(circuit), ("2*t", "t"), np.array([[math.pi, 0.0]]))
    np.testing.assert_allclose(got, [[0, 1, 0, 0]], atol=1e-12)
