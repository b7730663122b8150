"""Circuits from Qiskit's circuit library, written out by Qiskit's own writers (OpenQASM 2,
OpenQASM 3, QPY) and run on every local backend. The expected answer is
qiskit.quantum_info.Statevector of the library circuit itself (no writer, no reader), so a
backend or a reader that mistranslates what a writer emits fails.

Writers that cannot express a construct raise in Qiskit (pinned in WRITER_LIMITS, so a Qiskit
upgrade that lifts a limit is noticed); what a writer does emit must run right, or be refused
with INVALID_ARGUMENT and a reason that names what (pinned in REFUSALS).
"""

from __future__ import annotations

import io
import itertools
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

import numpy as np
import pytest
from qgateway import Client, EstimatorPubResult, SamplerPubResult, estimator_pub, sampler_pub
from qgateway.errors import QGatewayError, from_status
from qgateway.v1.circuit_pb2 import Pub

from tests.conformance.conftest import EXACT, NOISY
from tests.conformance.test_circuit_semantics import _pauli_expectations, _tolerance
from tests.conformance.test_conformance import _check

if TYPE_CHECKING:
    from qiskit import QuantumCircuit

FORMS = ["qasm2", "qasm3", "qpy"]
SHOTS = 4000

# --------------------------------------------------------------------------- the circuits
# Each builder returns a circuit of at most 5 qubits without measurements, with enough
# superposition around the library gate that phases and wrong wirings change expectations.

BUILDERS: dict[str, Callable[[], QuantumCircuit]] = {}


def _builder(f: Callable[[], QuantumCircuit]) -> Callable[[], QuantumCircuit]:
    BUILDERS[f.__name__] = f
    return f


def _qc(n: int) -> QuantumCircuit:
    from qiskit import QuantumCircuit

    return QuantumCircuit(n)


@_builder
def qft() -> QuantumCircuit:
    from qiskit.circuit.library import QFTGate

    c = _qc(4)
    c.h([0, 1])
    c.x(2)
    c.ry(0.4, 3)
    c.append(QFTGate(4), range(4))
    return c


@_builder
def grover_operator() -> QuantumCircuit:
    from qiskit.circuit.library import grover_operator as make

    oracle = _qc(3)
    oracle.cz(0, 2)
    c = _qc(3)
    c.h(range(3))
    c.compose(make(oracle), inplace=True)
    return c


@_builder
def efficient_su2_bound() -> QuantumCircuit:
    from qiskit.circuit.library import efficient_su2

    a = efficient_su2(3, reps=1)
    return a.assign_parameters(np.random.default_rng(1).uniform(-3, 3, a.num_parameters))


@_builder
def real_amplitudes_bound() -> QuantumCircuit:
    from qiskit.circuit.library import real_amplitudes

    a = real_amplitudes(3, reps=2)
    return a.assign_parameters(np.random.default_rng(2).uniform(-3, 3, a.num_parameters))


@_builder
def quantum_volume() -> QuantumCircuit:
    from qiskit.circuit.library import quantum_volume as make

    return make(3, depth=2, seed=7)


@_builder
def pauli_evolution() -> QuantumCircuit:
    from qiskit.circuit.library import PauliEvolutionGate
    from qiskit.quantum_info import SparsePauliOp

    # Commuting terms: the writers emit the gate's Lie-Trotter definition, which is exact only
    # then (Statevector uses the exact exponential; with non-commuting terms they differ).
    op = SparsePauliOp(["XXI", "YYI", "ZZI", "ZZX"], [0.3, -0.5, 0.7, 0.2])
    c = _qc(3)
    c.h(0)
    c.ry(0.7, 1)
    c.rx(0.4, 2)
    c.append(PauliEvolutionGate(op, time=0.8), range(3))
    return c


@_builder
def mcx_three_controls() -> QuantumCircuit:
    from qiskit.circuit.library import MCXGate

    c = _qc(5)
    c.h([0, 1, 2])
    c.x(3)
    c.append(MCXGate(3), [0, 1, 2, 4])
    c.mcx([0, 1, 3], 4)
    c.h(0)
    return c


@_builder
def mcx_open_controls() -> QuantumCircuit:
    from qiskit.circuit.library import MCXGate

    c = _qc(5)
    c.h([0, 1, 2, 3])
    c.append(MCXGate(4, ctrl_state="0101"), range(5))
    return c


@_builder
def mcx_variants() -> QuantumCircuit:
    from qiskit.circuit.library import C3SXGate, C3XGate, C4XGate, RC3XGate, RCCXGate

    c = _qc(5)
    c.h([0, 1, 2, 3])
    c.ry(0.3, 4)
    c.append(C3XGate(), [0, 1, 2, 4])
    c.append(C3SXGate(), [3, 1, 0, 4])
    c.append(C4XGate(), [0, 1, 2, 3, 4])
    c.append(RCCXGate(), [2, 3, 1])
    c.append(RC3XGate(), [4, 0, 1, 2])
    c.h([0, 2])
    return c


@_builder
def multi_controlled_rotations() -> QuantumCircuit:
    c = _qc(4)
    c.h([0, 1, 2])
    c.mcrx(0.5, [0, 1], 3)
    c.mcry(-1.1, [1, 2], 3)
    c.mcrz(0.9, [0, 2, 3], 1)
    c.h(1)
    return c


@_builder
def mcphase() -> QuantumCircuit:
    from qiskit.circuit.library import MCPhaseGate

    c = _qc(4)
    c.h(range(4))
    c.append(MCPhaseGate(0.7, 3), range(4))
    c.h(range(4))
    return c


@_builder
def ucry() -> QuantumCircuit:
    from qiskit.circuit.library import UCRYGate

    c = _qc(3)
    c.h([1, 2])
    c.append(UCRYGate([0.1, 0.9, -1.3, 2.0]), [0, 1, 2])
    return c


@_builder
def ucgate() -> QuantumCircuit:
    from qiskit.circuit.library import UCGate
    from qiskit.quantum_info import random_unitary

    c = _qc(3)
    c.h([1, 2])
    c.append(UCGate([random_unitary(2, seed=s).data for s in range(4)]), [0, 1, 2])
    return c


@_builder
def isometry() -> QuantumCircuit:
    from qiskit.circuit.library import Isometry
    from qiskit.quantum_info import random_unitary

    c = _qc(2)
    c.h(0)
    c.append(Isometry(random_unitary(4, seed=3).data[:, :2], 0, 0), [0, 1])
    return c


@_builder
def state_preparation() -> QuantumCircuit:
    from qiskit.circuit.library import StatePreparation

    rng = np.random.default_rng(4)
    v = rng.normal(size=8) + 1j * rng.normal(size=8)
    c = _qc(3)
    c.append(StatePreparation(v / np.linalg.norm(v)), range(3))
    return c


@_builder
def initialize() -> QuantumCircuit:
    # Initialize holds a reset per qubit ahead of the state preparation.
    v = np.random.default_rng(6).normal(size=4)
    c = _qc(2)
    c.initialize(v / np.linalg.norm(v), [0, 1])
    return c


@_builder
def permutation() -> QuantumCircuit:
    from qiskit.circuit.library import PermutationGate

    c = _qc(4)
    c.x(0)
    c.h(1)
    c.ry(0.4, 2)
    c.append(PermutationGate([2, 0, 3, 1]), range(4))
    return c


@_builder
def linear_function() -> QuantumCircuit:
    from qiskit.circuit.library import LinearFunction

    c = _qc(3)
    c.h(0)
    c.ry(0.7, 1)
    c.append(LinearFunction([[1, 1, 0], [0, 1, 1], [0, 0, 1]]), range(3))
    return c


@_builder
def clifford_instruction() -> QuantumCircuit:
    from qiskit.quantum_info import random_clifford

    c = _qc(3)
    c.h(0)
    c.ry(0.6, 1)
    c.append(random_clifford(3, seed=9), range(3))
    return c


@_builder
def unitary_gates() -> QuantumCircuit:
    from qiskit.circuit.library import UnitaryGate
    from qiskit.quantum_info import random_unitary

    c = _qc(3)
    c.h(0)
    c.append(UnitaryGate(random_unitary(4, seed=10)), [0, 2])
    c.append(UnitaryGate(random_unitary(8, seed=11)), [2, 1, 0])
    return c


@_builder
def diagonal() -> QuantumCircuit:
    from qiskit.circuit.library import DiagonalGate

    phases = np.exp(1j * np.random.default_rng(12).uniform(-3, 3, 8))
    c = _qc(3)
    c.h(range(3))
    c.append(DiagonalGate(list(phases)), range(3))
    c.h(range(3))
    return c


@_builder
def integer_comparator() -> QuantumCircuit:
    from qiskit.circuit.library import IntegerComparatorGate

    # result qubit 2 = (value of qubits 0..1 >= 2); a superposed input.
    c = _qc(3)
    c.h([0, 1])
    c.append(IntegerComparatorGate(2, 2), range(3))
    return c


@_builder
def hamiltonian_gate() -> QuantumCircuit:
    from qiskit.circuit.library import HamiltonianGate
    from qiskit.quantum_info import SparsePauliOp

    matrix = SparsePauliOp(["XX", "ZI", "YZ"], [0.4, 0.3, -0.2]).to_matrix()
    c = _qc(2)
    c.h(0)
    c.append(HamiltonianGate(matrix, 0.9), [0, 1])
    return c


@_builder
def r_and_rv() -> QuantumCircuit:
    from qiskit.circuit.library import RGate, RVGate

    c = _qc(2)
    c.h(1)
    c.append(RGate(0.7, 0.3), [0])
    c.append(RVGate(0.2, -0.5, 0.9), [1])
    return c


@_builder
def pauli_gate() -> QuantumCircuit:
    from qiskit.circuit.library import PauliGate

    c = _qc(3)
    c.h([0, 2])
    c.ry(0.5, 1)
    c.append(PauliGate("XYZ"), range(3))
    return c


@_builder
def controlled_with_ctrl_state() -> QuantumCircuit:
    from qiskit.circuit.library import RYGate, SXGate

    c = _qc(5)
    c.h([0, 1, 2, 3])
    c.append(RYGate(0.8).control(2, ctrl_state="01"), [0, 1, 3])
    c.append(SXGate().control(2, ctrl_state=2), [1, 2, 4])
    return c


@_builder
def controlled_global_phase() -> QuantumCircuit:
    from qiskit.circuit.library import GlobalPhaseGate

    c = _qc(3)
    c.h([0, 1, 2])
    c.append(GlobalPhaseGate(1.0).control(2, ctrl_state="01"), [2, 0])
    c.append(GlobalPhaseGate(0.4), [])
    c.h([0, 2])
    return c


@_builder
def controlled_unitary_with_ctrl_state() -> QuantumCircuit:
    from qiskit.circuit.library import UnitaryGate
    from qiskit.quantum_info import random_unitary

    c = _qc(4)
    c.h([0, 1, 2])
    c.append(UnitaryGate(random_unitary(2, seed=13)).control(2, ctrl_state="10"), [0, 2, 3])
    c.append(UnitaryGate(random_unitary(4, seed=14)).control(1, ctrl_state=0), [1, 3, 0])
    return c


@_builder
def phase_oracle() -> QuantumCircuit:
    from qiskit.circuit.library import PhaseOracleGate

    c = _qc(3)
    c.h(range(3))
    c.append(PhaseOracleGate("(a & b) | ~c"), range(3))
    c.h(range(3))
    return c


def _write(circuit: QuantumCircuit, form: str) -> str | bytes:
    from qiskit import qasm2, qasm3, qpy

    if form == "qasm2":
        return str(qasm2.dumps(circuit))
    if form == "qasm3":
        return str(qasm3.dumps(circuit))
    buffer = io.BytesIO()
    qpy.dump(circuit, buffer)
    return buffer.getvalue()


def _observables(n: int) -> list[str]:
    """Z and X on every qubit, and six seeded random Pauli strings."""
    single = [
        "".join(p if k == q else "I" for k in reversed(range(n))) for q in range(n) for p in "ZX"
    ]
    rng = np.random.default_rng(n)
    every = ["".join(p) for p in itertools.product("IXYZ", repeat=n)]
    several = [p for p in every if sum(c != "I" for c in p) >= 2]
    return single + [str(p) for p in rng.choice(several, size=6, replace=False)]


# --------------------------------------------------------------------------- pinned outcomes

# (circuit, form) -> the exception type Qiskit's writer raises (its own limitation, Qiskit 2.x):
# qasm3.dumps has no non-unitary subroutines (ucry, diagonal, isometry, ... are Instructions
# there); both writers fail with a TypeError on gates whose parameter is a matrix (UCGate,
# LinearFunction, HamiltonianGate, a controlled UnitaryGate); qasm2 has no GlobalPhaseGate.
WRITER_LIMITS: dict[tuple[str, str], str] = {
    ("ucry", "qasm3"): "QASM3ExporterError",
    ("ucgate", "qasm2"): "TypeError",
    ("ucgate", "qasm3"): "QASM3ExporterError",
    ("isometry", "qasm2"): "TypeError",
    ("isometry", "qasm3"): "QASM3ExporterError",
    ("initialize", "qasm3"): "QASM3ExporterError",
    ("linear_function", "qasm2"): "TypeError",
    ("linear_function", "qasm3"): "TypeError",
    ("clifford_instruction", "qasm2"): "AttributeError",
    ("clifford_instruction", "qasm3"): "QASM3ExporterError",
    ("diagonal", "qasm3"): "QASM3ExporterError",
    ("hamiltonian_gate", "qasm2"): "TypeError",
    ("hamiltonian_gate", "qasm3"): "TypeError",
    ("controlled_global_phase", "qasm2"): "QASM2ExportError",
    ("controlled_unitary_with_ctrl_state", "qasm2"): "TypeError",
    ("controlled_unitary_with_ctrl_state", "qasm3"): "TypeError",
}


def _everywhere(reason: str, words: str) -> dict[str, tuple[str, str]]:
    return {backend: (reason, words) for backend in [*EXACT, *NOISY]}


# (circuit, form) -> backend -> (reason, words in its message) of the refusal. Every one is
# the same on every backend: the gateway's front end (gateway/backends/qiskit/frontend.py and
# qpy_reader.py) decides, before any adapter.
REFUSALS: dict[tuple[str, str], Mapping[str, tuple[str, str]]] = {
    # Qiskit's writers emit text that is not OpenQASM: complex literals as gate arguments
    # (StatePreparation, DiagonalGate), a reset inside an OpenQASM 2 gate body (Initialize),
    # a Pauli label as an argument (PauliGate), a gate on zero qubits (GlobalPhaseGate under
    # .control()). Qiskit's own readers reject the same text.
    ("state_preparation", "qasm2"): _everywhere("INVALID_QASM", "saw 'j'"),
    ("state_preparation", "qasm3"): _everywhere("INVALID_QASM", "near 'j'"),
    ("diagonal", "qasm2"): _everywhere("INVALID_QASM", "saw 'j'"),
    ("initialize", "qasm2"): _everywhere("INVALID_QASM", "within a 'gate' body, but saw reset"),
    ("pauli_gate", "qasm2"): _everywhere("INVALID_QASM", "cannot start with capital letters"),
    ("pauli_gate", "qasm3"): _everywhere("INVALID_QASM", "Undefined symbol 'XYZ'"),
    ("controlled_global_phase", "qasm3"): _everywhere("INVALID_QASM", "near '{'"),
    # Valid QPY that Qiskit's own qpy.load cannot rebuild (it calls the library class's
    # constructor with the wrong arguments); the gateway passes the reader's error on.
    ("ucgate", "qpy"): _everywhere("INVALID_QPY", "UCGate.__init__()"),
    ("isometry", "qpy"): _everywhere("INVALID_QPY", "Isometry.__init__()"),
    ("phase_oracle", "qpy"): _everywhere("INVALID_QPY", "PhaseOracleGate.__init__()"),
    ("integer_comparator", "qpy"): _everywhere("INVALID_QPY", "IntegerComparatorGate.__init__()"),
    # Non-gate instructions the gateway asks the client to decompose.
    ("initialize", "qpy"): _everywhere("UNSUPPORTED_FEATURE", "'initialize' is not a gate"),
    ("clifford_instruction", "qpy"): _everywhere("UNSUPPORTED_FEATURE", "'clifford' is not a gate"),
}


Outcome = EstimatorPubResult | SamplerPubResult | QGatewayError
Key = tuple[str, str, str]  # (circuit, form, backend)


def _run_all(client: Client, pubs: Mapping[Key, Pub], estimator: bool) -> dict[Key, Outcome]:
    """Submits every PUB at once (one job each, so a refusal names one circuit and form), then
    collects each result or the typed error it was refused with."""
    names: dict[Key, str | QGatewayError] = {}
    for key, pub in pubs.items():
        try:
            names[key] = client.submit_pubs([pub], backend=key[2]).name
        except QGatewayError as exc:
            names[key] = exc
    out: dict[Key, Outcome] = {}
    for key, name in names.items():
        if isinstance(name, QGatewayError):
            out[key] = name
            continue
        done = client.wait(name, timeout=300)
        if done.state != "SUCCEEDED":
            error = done.error
            out[key] = error if isinstance(error, QGatewayError) else from_status(error)
            continue
        result = client.get_result(name)
        out[key] = result.estimator() if estimator else result.sampler()
    return out


def _sources() -> dict[tuple[str, str], str | bytes]:
    """What each writer emits for each circuit (absent where WRITER_LIMITS says it raises)."""
    return {
        (name, form): _write(build(), form)
        for name, build in BUILDERS.items()
        for form in FORMS
        if (name, form) not in WRITER_LIMITS
    }


@pytest.fixture(scope="module")
def estimates(client: Client) -> dict[Key, Outcome]:
    pubs: dict[Key, Pub] = {}
    for (name, form), source in _sources().items():
        n = BUILDERS[name]().num_qubits
        for backend in EXACT:
            pubs[(name, form, backend)] = estimator_pub(source, _observables(n), precision=0.0)
    return _run_all(client, pubs, estimator=True)


def _assert_refused_as_pinned(key: Key, outcome: Outcome) -> bool:
    """True when the outcome is a refusal, which must be the pinned one."""
    name, form, backend = key
    pinned = REFUSALS.get((name, form), {}).get(backend)
    if isinstance(outcome, QGatewayError):
        assert pinned is not None, f"{backend} refused {name} as {form}: {outcome!r}"
        reason, words = pinned
        assert outcome.code.name == "INVALID_ARGUMENT", outcome
        assert outcome.reason == reason, outcome
        assert words in str(outcome), outcome
        return True
    assert pinned is None, f"{backend} ran {name} as {form}, pinned as refused: {pinned}"
    return False


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("name", list(BUILDERS))
def test_qiskit_writers_express_the_library_circuit(name: str, form: str) -> None:
    # Qiskit's writers' own limits, pinned so that an upgrade lifting one is noticed.
    limit = WRITER_LIMITS.get((name, form))
    try:
        _write(BUILDERS[name](), form)
    except Exception as exc:
        assert limit == type(exc).__name__, f"{form} writer raised on {name}: {exc!r}"
        return
    assert limit is None, f"{form} writer no longer raises {limit} on {name}"


@pytest.mark.parametrize("backend", EXACT)
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("name", list(BUILDERS))
def test_library_circuit_expectations_match_its_statevector(
    estimates: dict[Key, Outcome], name: str, form: str, backend: str
) -> None:
    from qiskit.quantum_info import Statevector

    key = (name, form, backend)
    if key not in estimates:  # the writer raised: test_qiskit_writers_... pins that
        return
    outcome = estimates[key]
    if _assert_refused_as_pinned(key, outcome):
        return
    assert isinstance(outcome, EstimatorPubResult)
    circuit = BUILDERS[name]()
    labels = _observables(circuit.num_qubits)
    want = _pauli_expectations(Statevector(circuit).data, labels)
    got = np.array(outcome.expectation_values)
    # Exact backends: 1e-6 leaves room for the float error of deep syntheses (QFT, isometries).
    bad = {
        label: (round(g, 4), round(w, 4))
        for label, g, w in zip(labels, got, want, strict=True)
        if abs(g - w) > 1e-6
    }
    assert not bad, f"observable: (got, want) {bad}"


# Noisy backends, sampled: small circuits (at most 3 two-qubit gates per qubit after routing on
# a 5-qubit line) against the Statevector's probabilities, within each backend's noise budget.
NOISY_CIRCUITS = [
    ("grover_operator", "qasm3"),
    ("pauli_evolution", "qpy"),
    ("permutation", "qasm2"),
    ("r_and_rv", "qasm3"),
    ("ucry", "qpy"),
    ("hamiltonian_gate", "qpy"),
    ("controlled_global_phase", "qpy"),
    ("pauli_gate", "qpy"),
]


def _measured(circuit: QuantumCircuit) -> QuantumCircuit:
    measured = circuit.copy()
    measured.measure_all()
    return measured


@pytest.fixture(scope="module")
def samples(client: Client) -> dict[Key, Outcome]:
    pubs: dict[Key, Pub] = {}
    for name, form in NOISY_CIRCUITS:
        source = _write(_measured(BUILDERS[name]()), form)
        for backend in NOISY:
            pubs[(name, form, backend)] = sampler_pub(source, shots=SHOTS)
    return _run_all(client, pubs, estimator=False)


@pytest.mark.parametrize("backend", NOISY)
@pytest.mark.parametrize(("name", "form"), NOISY_CIRCUITS)
def test_library_circuit_counts_on_noisy_backends(
    client: Client, samples: dict[Key, Outcome], name: str, form: str, backend: str
) -> None:
    from qiskit.quantum_info import Statevector

    outcome = samples[(name, form, backend)]
    if _assert_refused_as_pinned((name, form, backend), outcome):
        return
    assert isinstance(outcome, SamplerPubResult)
    ideal = Statevector(BUILDERS[name]()).probabilities_dict()
    _check(
        client,
        backend,
        outcome.counts(register="meas"),
        {k: v for k, v in ideal.items() if v > 1e-12},
    )


# A user gate named like one of the transpiler's high-level-synthesis plugins ("IntComp", which
# Qiskit's qasm3 writer uses for an IntegerComparatorGate) reached the comparator's plugin,
# which failed on a plain Gate (INTERNAL COMPILER_FAILED). It runs its own definition (here: a
# Bell pair and ry(0.3)).
INTCOMP_NAMED_GATE = (
    'OPENQASM 3.0;\ninclude "stdgates.inc";\n'
    + "gate IntComp a, b, c { h a; cx a, b; ry(0.3) c; }\n"
    + "qubit[3] q;\nIntComp q[0], q[1], q[2];\n"
)


@pytest.mark.parametrize("backend", EXACT)
def test_a_user_gate_named_like_a_synthesis_plugin_runs(client: Client, backend: str) -> None:
    job = client.run_pubs(
        [estimator_pub(INTCOMP_NAMED_GATE, ["IZZ", "IXX", "ZII", "XII"], precision=0.0)],
        backend=backend,
    )
    assert job.state == "SUCCEEDED", job.error
    got = np.array(client.get_result(job.name).estimator().expectation_values)
    want = np.array([1.0, 1.0, np.cos(0.3), np.sin(0.3)])
    assert np.abs(got - want).max() <= _tolerance(backend), f"{got} vs {want}"
