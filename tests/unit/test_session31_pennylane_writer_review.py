"""Review (session 31): what PennyLane users write, exported with `qml.to_openqasm`, run as
PennyLane runs it.

PennyLane 0.45.1 has one writer, `qml.to_openqasm(qnode_or_tape, wires=None, rotations=True,
measure_all=True, precision=None)` (a QNode gives a function of the QNode's arguments; a tape has
no `to_openqasm` method any more). It writes OpenQASM 2: `qreg q[n]` numbered in the order the
tape's wires first appear (or the `wires` given), `creg c[n]`, every operation decomposed into
its table (`cx u1 u2 u3 rx ... ccx cswap` and `gphase`), a parameter as `str(p)` (or `f"{p:.N}"`,
N significant digits, with `precision`), the observables' diagonalizing gates (`rotations`),
then `measure q[i] -> c[i]`. Each export here is run in process on the gateway's Aer, PennyLane
(`default.qubit`) and, where it says so, Braket (`braket_sv`) adapters and compared with
PennyLane's own exact `qml.probs` of the original (undecomposed) circuit within a
total-variation bound at a stated false-failure rate (seeds fixed). PennyLane lists wire 0
first; the gateway's counts are Qiskit's, bit 0 rightmost: some tests spell the expected
bitstrings out.

Ran right: every template and operation in `_TABLE` (embeddings, state preparations, layers,
QFT, Grover, QPE, unitaries, controlled and adjoint operations, Pauli rotations, Ising gates,
excitations, `qml.Select`, `qml.GlobalPhase`, `qml.Barrier`, `qml.Snapshot`, ...), string wire
labels, a device's wires out of order, the `wires` option, `measure_all=False`, `rotations`
for Pauli, Hadamard and Hermitian observables and their products, autograd and float32
parameters, angles written with an exponent (`1e-05`) and `precision`'s rounding (the
gateway runs the rounded angle PennyLane wrote), mid-circuit measurements without
conditions (Aer, Braket; PennyLane's adapter refuses mid-circuit measurements
UNSUPPORTED_FEATURE, as documented).

Refused, clearly (the text is not OpenQASM 2):
- `qml.cond`: PennyLane writes `if(mcms[0]==1) x q[1];`, a condition on one bit, where
  OpenQASM 2 compares a whole register; the reader's "needed '==', but instead saw [" now
  says so, and that with one mid-circuit measurement `if(mcms==1)` means the same.
- A broadcast (batched) parameter: PennyLane writes `rx([0.1 0.2]) q[0];`; the refusal now
  says an angle is not a list.
- PennyLane itself refuses `qml.measure(reset=True)`, postselection, `qml.cond(~m, ...)` and
  conditioned operations outside its table (`qml.cond(m, qml.SX)`), and `precision` with an
  integer parameter (a Python format error).

Defects (FIXED, each with a test that fails without the fix):
(1) A conditioned global phase, `if(mcms==1) gphase(0.3) ;` (`qml.cond(m, qml.GlobalPhase)`
    with the one-bit condition the hint gives), was refused UNKNOWN_GATE 'gphase' while an
    unconditioned one is dropped: the whole statement, its condition included, is now
    dropped, the condition checked as the reader would (a classical register declared before
    it, an integer without leading zeroes, not inside a gate's body).
(2) Checking the dropped gphase statements was quadratic in the program's length (each
    statement's line number counted from the text's start): 1 MiB of the `gphase(...) q[i];`
    lines PennyLane writes for `qml.SX` took 17 s to parse (a 1 MiB program of `rx` 1 s); now
    1.6 s.

Not checked: `qml.from_qasm` (needs pennylane-qiskit, not installed, and it would downgrade
Qiskit); the gateway returns counts, not OpenQASM, so nothing of its output is PennyLane's to
read back. Torch, JAX and TensorFlow parameters (not installed).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pennylane as qml
import pytest
from pennylane import numpy as pnp
from scipy.stats import unitary_group

import gateway.backends.qiskit.frontend as fe
from gateway.backends.aer.adapter import AerAdapter
from gateway.backends.base import CircuitLimits
from gateway.backends.braket.adapter import BraketAdapter
from gateway.backends.pennylane.adapter import PennyLaneAdapter
from gateway.domain.circuits import CircuitLanguage, CircuitSource
from gateway.domain.errors import InvalidArgument
from tests.unit.test_session30_sdk_writers_review import (
    Adapter,
    _assert_sampled_from,
    _refusal,
    _run,
    aer,
    braket,
    pennylane,
)

__all__ = ["aer", "braket", "pennylane"]  # fixtures, shared with the session 30 review

pytestmark = pytest.mark.timeout(120)

QASM2 = CircuitLanguage.QASM2


@pytest.fixture(scope="module", params=["aer", "pennylane", "braket"])
def any_backend(
    request: pytest.FixtureRequest,
    aer: AerAdapter,
    pennylane: PennyLaneAdapter,
    braket: BraketAdapter,
) -> Adapter:
    return {"aer": aer, "pennylane": pennylane, "braket": braket}[request.param]


@pytest.fixture(scope="module", params=["aer", "pennylane"])
def qml_backend(
    request: pytest.FixtureRequest, aer: AerAdapter, pennylane: PennyLaneAdapter
) -> Adapter:
    return aer if request.param == "aer" else pennylane


def _qnode(
    ops: Callable[..., object],
    device_wires: Sequence[Any] | None,
    measure: Callable[[], Any] | None = None,
) -> qml.QNode:
    device = qml.device("default.qubit", wires=None if device_wires is None else list(device_wires))

    @qml.qnode(device)
    def circuit(*args: Any) -> Any:
        ops(*args)
        return measure() if measure is not None else qml.probs()

    return circuit


def _export(
    ops: Callable[..., object],
    device_wires: Sequence[Any],
    *args: Any,
    measure: Callable[[], Any] | None = None,
    **options: Any,
) -> tuple[str, np.ndarray]:
    """PennyLane's OpenQASM for the QNode, and PennyLane's exact probabilities of the wires it
    numbers q[0], q[1], ... (wire q[0] most significant), rotations included when written."""
    circuit = _qnode(ops, device_wires, measure)
    text: str = qml.to_openqasm(circuit, **options)(*args)
    tape = qml.workflow.construct_tape(circuit)(*args)
    order = list(options.get("wires") or tape.wires)
    applied = list(tape.operations)
    if options.get("rotations", True):
        applied += list(tape.diagonalizing_gates)

    def reference() -> None:
        for op in applied:
            qml.apply(op)

    probabilities = _qnode(reference, None, lambda: qml.probs(wires=order))()
    return text, np.asarray(probabilities, dtype=np.float64)


# ------------------------------------------------------------------ templates and operations

W3 = [0, 1, 2]
W4 = [0, 1, 2, 3]
_RNG = np.random.default_rng(31)
_ENTANGLER = _RNG.uniform(0, 2 * np.pi, (2, 3, 3))
_BASIC = _RNG.uniform(0, 2 * np.pi, (2, 3))
_U2Q = unitary_group.rvs(4, random_state=5)
_U1Q = unitary_group.rvs(2, random_state=7)
_HERMITIAN = np.array([[1.0, 1j], [-1j, 2.0]])


def _hadamards(wires: Sequence[int]) -> None:
    for wire in wires:
        qml.Hadamard(wire)


# name -> (operations, device wires)
_TABLE: dict[str, tuple[Callable[[], object], list[int]]] = {
    "AngleEmbedding": (lambda: qml.AngleEmbedding([0.1, 0.7, 1.3], wires=W3), W3),
    "AngleEmbedding Y": (
        lambda: qml.AngleEmbedding([0.1, 0.7, 1.3], wires=W3, rotation="Y"),
        W3,
    ),
    "AmplitudeEmbedding": (
        lambda: qml.AmplitudeEmbedding(np.arange(1.0, 9.0), wires=W3, normalize=True),
        W3,
    ),
    "StatePrep": (lambda: qml.StatePrep(np.array([0.6, 0, 0, 0.8j]), wires=[0, 1]), [0, 1]),
    "StronglyEntanglingLayers": (
        lambda: qml.StronglyEntanglingLayers(_ENTANGLER, wires=W3),
        W3,
    ),
    "BasicEntanglerLayers": (lambda: qml.BasicEntanglerLayers(_BASIC, wires=W3), W3),
    "QFT": (lambda: (qml.PauliX(0), qml.Hadamard(2), qml.QFT(wires=W3)), W3),
    "adjoint(QFT)": (lambda: (qml.PauliX(1), qml.adjoint(qml.QFT)(wires=W3)), W3),
    "GroverOperator": (lambda: (_hadamards(W3), qml.GroverOperator(wires=W3)), W3),
    "QuantumPhaseEstimation": (
        lambda: (
            qml.PauliX(3),
            qml.QuantumPhaseEstimation(
                qml.PhaseShift(2 * np.pi * 0.375, 3), estimation_wires=[0, 1, 2]
            ),
        ),
        W4,
    ),
    "QubitUnitary 2 qubits": (lambda: qml.QubitUnitary(_U2Q, wires=[0, 1]), [0, 1]),
    "ControlledQubitUnitary": (
        lambda: (qml.Hadamard(0), qml.ControlledQubitUnitary(_U1Q, wires=[0, 1])),
        [0, 1],
    ),
    "ctrl(RX), control_values": (
        lambda: (
            qml.Hadamard(0),
            qml.ctrl(qml.RX(0.7, 2), control=[0, 1], control_values=[1, 0]),
        ),
        W3,
    ),
    "ctrl(SX)": (lambda: (qml.Hadamard(0), qml.ctrl(qml.SX(1), control=0)), [0, 1]),
    "ctrl(GlobalPhase)": (
        lambda: (qml.Hadamard(0), qml.ctrl(qml.GlobalPhase(0.9), control=0), qml.Hadamard(0)),
        [0],
    ),
    "adjoint(SX), pow(SX, 3)": (
        lambda: (qml.Hadamard(0), qml.adjoint(qml.SX(1)), qml.pow(qml.SX(0), 3)),
        [0, 1],
    ),
    "MultiRZ": (
        lambda: (_hadamards(W3), qml.MultiRZ(0.6, wires=W3), _hadamards(W3)),
        W3,
    ),
    "PauliRot": (lambda: qml.PauliRot(0.9, "XIY", wires=W3), W3),
    "IsingXX/YY/ZZ": (
        lambda: (
            qml.Hadamard(0),
            qml.IsingXX(0.3, [0, 1]),
            qml.IsingYY(0.5, [1, 2]),
            qml.IsingZZ(0.7, [0, 2]),
            qml.Hadamard(2),
        ),
        W3,
    ),
    "SWAP, CSWAP, Toffoli": (
        lambda: (
            qml.PauliX(0),
            qml.Hadamard(1),
            qml.SWAP([0, 2]),
            qml.CSWAP([1, 0, 2]),
            qml.Toffoli([1, 2, 0]),
        ),
        W3,
    ),
    "U1, U2, U3, Rot, PhaseShift": (
        lambda: (
            qml.U1(0.3, 0),
            qml.U2(0.4, 0.5, 1),
            qml.U3(0.6, 0.7, 0.8, 0),
            qml.Rot(0.1, 0.2, 0.3, 1),
            qml.PhaseShift(0.9, 1),
            qml.CNOT([0, 1]),
            qml.Hadamard(1),
        ),
        [0, 1],
    ),
    "SX, GlobalPhase, Identity": (
        lambda: (qml.SX(0), qml.GlobalPhase(0.4), qml.Identity(1), qml.SX(1), qml.SX(1)),
        [0, 1],
    ),
    "Barrier, Snapshot": (
        lambda: (
            qml.Hadamard(0),
            qml.Barrier(wires=[0, 1]),
            qml.Snapshot("s"),
            qml.CNOT([0, 1]),
        ),
        [0, 1],
    ),
    "DoubleExcitation, SingleExcitation": (
        lambda: (
            qml.PauliX(0),
            qml.PauliX(1),
            qml.DoubleExcitation(0.7, wires=W4),
            qml.SingleExcitation(0.4, wires=[0, 2]),
        ),
        W4,
    ),
    "MultiControlledX": (
        lambda: (
            qml.PauliX(0),
            qml.Hadamard(1),
            qml.MultiControlledX(wires=W4, control_values=[1, 1, 0]),
        ),
        W4,
    ),
    "DiagonalQubitUnitary": (
        lambda: (
            _hadamards([0, 1]),
            qml.DiagonalQubitUnitary(np.exp(1j * np.array([0.1, 0.7, 1.3, 2.9])), wires=[0, 1]),
            _hadamards([0, 1]),
        ),
        [0, 1],
    ),
    "Select": (
        lambda: (qml.Hadamard(0), qml.Select([qml.PauliX(1), qml.RY(0.7, 1)], control=[0])),
        [0, 1],
    ),
    "TrotterProduct": (
        lambda: qml.TrotterProduct(
            qml.dot([0.5, 0.3], [qml.PauliX(0) @ qml.PauliY(1), qml.PauliZ(0)]), 0.8, n=2, order=2
        ),
        [0, 1],
    ),
}


@pytest.mark.parametrize("name", sorted(_TABLE))
def test_what_pennylane_users_write_runs_as_pennylane_runs_it(
    any_backend: Adapter, name: str
) -> None:
    ops, wires = _TABLE[name]
    text, probabilities = _export(ops, wires)
    assert text.startswith("OPENQASM 2.0;")
    (counts,) = _run(any_backend, text, QASM2)
    _assert_sampled_from(counts["c"], probabilities)


# ------------------------------------------------------------------ bit order, spelled out


def test_a_basis_state_lands_on_the_bitstring_qiskit_spells_backwards(
    any_backend: Adapter,
) -> None:
    text, probabilities = _export(lambda: qml.BasisState(np.array([1, 1, 0]), wires=W3), W3)
    assert probabilities[0b110] == pytest.approx(1.0)  # PennyLane: wire 0 first
    (counts,) = _run(any_backend, text, QASM2, shots=64)
    assert counts["c"] == Counter({"011": 64})  # Qiskit: c[0] (wire 0) rightmost


def _scrambled() -> None:
    qml.Identity(2)  # the tape's wires in order of appearance: 2, 3, 1
    qml.PauliX(3)
    qml.CNOT([3, 1])


def test_a_devices_wires_out_of_order_are_numbered_as_the_tape_meets_them(
    qml_backend: Adapter,
) -> None:
    text, probabilities = _export(_scrambled, [3, 1, 2])
    assert "x q[1];" in text and "cx q[1],q[2];" in text  # wire 3 is q[1], wire 1 q[2]
    (counts,) = _run(qml_backend, text, QASM2, shots=64)
    assert counts["c"] == Counter({"110": 64})
    _assert_sampled_from(counts["c"], probabilities)


def test_the_wires_option_numbers_the_qubits(qml_backend: Adapter) -> None:
    wires = qml.wires.Wires([1, 3, 2])  # q[0] is wire 1, q[1] wire 3, q[2] wire 2
    text, probabilities = _export(_scrambled, [3, 1, 2], wires=wires)
    assert "x q[1];" in text and "cx q[1],q[0];" in text
    (counts,) = _run(qml_backend, text, QASM2, shots=64)
    assert counts["c"] == Counter({"011": 64})
    _assert_sampled_from(counts["c"], probabilities)


def test_string_wire_labels(any_backend: Adapter) -> None:
    def ops() -> None:
        qml.Identity("a")
        qml.PauliX("b")
        qml.RY(0.8, "c")
        qml.CNOT(["c", "a"])

    text, probabilities = _export(ops, ["a", "b", "c"])
    (counts,) = _run(any_backend, text, QASM2)
    assert set(counts["c"]) == {"010", "111"}  # b (c[1]) always 1; c and a together
    _assert_sampled_from(counts["c"], probabilities)


def test_measure_all_false_measures_the_sampled_wires_in_their_order(
    any_backend: Adapter,
) -> None:
    def ops() -> None:
        qml.PauliX(2)
        qml.Hadamard(1)

    text, _ = _export(ops, W3, measure=lambda: qml.sample(wires=[2, 0]), measure_all=False)
    assert "creg c[2];" in text and "measure q[0] -> c[0];" in text  # q[0] is wire 2
    (counts,) = _run(any_backend, text, QASM2, shots=64)
    assert counts["c"] == Counter({"01": 64})  # c[0] wire 2 (1), c[1] wire 0 (0)


# ------------------------------------------------------------------ rotations


def test_rotations_measure_an_expectation_values_basis(any_backend: Adapter) -> None:
    def minus() -> None:
        qml.Hadamard(0)
        qml.PauliZ(0)

    text, _ = _export(minus, [0], measure=lambda: qml.expval(qml.PauliX(0)))
    (counts,) = _run(any_backend, text, QASM2, shots=64)
    assert counts["c"] == Counter({"1": 64})  # |-> in the X basis: eigenvalue -1, bit 1

    text, probabilities = _export(
        minus, [0], measure=lambda: qml.expval(qml.PauliX(0)), rotations=False
    )
    assert probabilities == pytest.approx([0.5, 0.5])
    (counts,) = _run(any_backend, text, QASM2)
    _assert_sampled_from(counts["c"], probabilities)


_OBSERVABLES: dict[str, Callable[[], Any]] = {
    "Y": lambda: qml.expval(qml.PauliY(1)),
    "Hadamard": lambda: qml.expval(qml.Hadamard(0)),
    "Hermitian": lambda: qml.expval(qml.Hermitian(_HERMITIAN, 0)),
    "X@Y@Z": lambda: qml.expval(qml.PauliX(0) @ qml.PauliY(1) @ qml.PauliZ(2)),
    "var(Y), sample(X@Z)": lambda: (
        qml.var(qml.PauliY(2)),
        qml.sample(qml.PauliX(0) @ qml.PauliZ(1)),
    ),
}


@pytest.mark.parametrize("name", sorted(_OBSERVABLES))
def test_rotations_for_observables(qml_backend: Adapter, name: str) -> None:
    def ops() -> None:
        qml.RY(0.8, 0)
        qml.CNOT([0, 1])
        qml.RX(0.3, 2)

    text, probabilities = _export(ops, W3, measure=_OBSERVABLES[name])
    (counts,) = _run(qml_backend, text, QASM2)
    _assert_sampled_from(counts["c"], probabilities)


# ------------------------------------------------------------------ parameters as written


def test_autograd_float32_and_exponent_angles(any_backend: Adapter) -> None:
    def ops(weights: Any) -> None:
        qml.RX(weights[0], 0)
        qml.RY(weights[1], 1)
        qml.RZ(np.float32(1.1), 1)
        qml.RX(1e-5, 2)  # written `rx(1e-05)`: a real without a point, which the reader takes
        qml.CNOT([0, 2])
        qml.Hadamard(1)

    weights = pnp.array([0.123456789012345, 1.3], requires_grad=True)
    text, probabilities = _export(ops, W3, weights)
    assert "rx(0.123456789012345) q[0];" in text and "rx(1e-05) q[2];" in text
    (counts,) = _run(any_backend, text, QASM2)
    _assert_sampled_from(counts["c"], probabilities)


def test_precision_rounds_to_significant_digits_and_the_rounded_angle_runs(
    qml_backend: Adapter,
) -> None:
    # `precision=3` is `f"{p:.3}"`: three significant digits, so 12345.678 is written 1.23e+04,
    # an angle 45 rad away. The gateway runs what was written, as PennyLane would run it.
    def ops(angle: float) -> None:
        qml.RX(0.123456, 0)
        qml.RY(angle, 1)
        qml.SX(1)  # gphase(-0.785) q[1]: rounded too

    text, _ = _export(ops, [0, 1], 12345.678, precision=3)
    assert "ry(1.23e+04) q[1];" in text and "gphase(-0.785) q[1];" in text
    _, probabilities = _export(ops, [0, 1], 12300.0)
    (counts,) = _run(qml_backend, text, QASM2)
    _assert_sampled_from(counts["c"], probabilities)


def test_a_non_finite_parameter_is_refused_as_such(aer: AerAdapter) -> None:
    text, _ = _export(lambda: qml.RX(float("nan"), 0), [0])
    refusal = _refusal(aer, text, QASM2)
    assert refusal.reason == "NON_FINITE_ANGLE" and "line 5" in refusal.message


def test_a_broadcast_parameter_is_refused_saying_an_angle_is_no_list(aer: AerAdapter) -> None:
    text, _ = _export(lambda: qml.RX(np.array([0.1, 0.2]), 0), [0])
    assert "rx([0.1 0.2]) q[0];" in text
    refusal = _refusal(aer, text, QASM2)
    assert refusal.reason == "INVALID_QASM"
    assert "line 5, column 3" in refusal.message and "not a list" in refusal.message

    text, _ = _export(lambda: (qml.GlobalPhase(np.array([0.1, 0.2])), qml.PauliX(0)), [0])
    refusal = _refusal(aer, text, QASM2)
    assert refusal.reason == "INVALID_QASM" and "not a list" in refusal.message


# ------------------------------------------------------------------ mid-circuit measurements


def _measured_then_entangled() -> None:
    qml.RY(1.1, 0)
    qml.measure(0)
    qml.CNOT([0, 1])


def test_a_mid_circuit_measurement_without_condition(
    aer: AerAdapter, braket: BraketAdapter
) -> None:
    text, probabilities = _export(_measured_then_entangled, [0, 1])
    assert "creg mcms[1];" in text and "measure q[0] -> mcms[0];" in text
    for backend in (aer, braket):
        (counts,) = _run(backend, text, QASM2)
        _assert_sampled_from(counts["c"], probabilities)
        assert set(counts["mcms"]) == {"0", "1"}


def test_pennylanes_adapter_refuses_a_mid_circuit_measurement(
    pennylane: PennyLaneAdapter,
) -> None:
    text, _ = _export(_measured_then_entangled, [0, 1])
    assert _refusal(pennylane, text, QASM2).reason == "UNSUPPORTED_FEATURE"


def _conditioned(base: Callable[[Any], None]) -> Callable[[], None]:
    def ops() -> None:
        qml.RY(1.1, 0)
        m = qml.measure(0)
        base(m)
        qml.RX(0.4, 1)

    return ops


def _flip(m: Any) -> None:
    qml.cond(m, qml.PauliX)(1)


def _flip_with_a_phase(m: Any) -> None:
    qml.cond(m, qml.GlobalPhase)(0.3)
    qml.cond(m, qml.PauliX)(1)


def test_qml_cond_is_refused_saying_openqasm_2_conditions_on_a_whole_register(
    aer: AerAdapter,
) -> None:
    text, _ = _export(_conditioned(_flip), [0, 1])
    assert "if(mcms[0]==1) x q[1];" in text  # a bit, which OpenQASM 2 has no condition on
    refusal = _refusal(aer, text, QASM2)
    assert refusal.reason == "INVALID_QASM"
    assert "line 8, column 7" in refusal.message
    assert "compares a whole classical register" in refusal.message


@pytest.mark.parametrize("base", [_flip, _flip_with_a_phase], ids=["x", "gphase and x"])
def test_the_refusals_one_bit_rewrite_runs_as_pennylane_runs_qml_cond(
    aer: AerAdapter, braket: BraketAdapter, base: Callable[[Any], None]
) -> None:
    # One mid-circuit measurement: `mcms` has one bit, and `if(mcms==1)` is `if(mcms[0]==1)`.
    # With a global phase on the branch (qml.cond(m, qml.GlobalPhase)), this was refused
    # UNKNOWN_GATE 'gphase' (defect 1).
    text, probabilities = _export(_conditioned(base), [0, 1])
    text = text.replace("if(mcms[0]==1)", "if(mcms==1)")
    for backend in (aer, braket):
        (counts,) = _run(backend, text, QASM2)
        _assert_sampled_from(counts["c"], probabilities)


def _program(body: str) -> str:
    return (
        'OPENQASM 2.0;\ninclude "qelib1.inc";\nqreg q[2];\ncreg c[2];\ncreg m[1];\n'
        f"x q[0];\nmeasure q[0] -> m[0];\n{body}measure q -> c;\n"
    )


def test_a_dropped_conditioned_phase_conditions_nothing_else(aer: AerAdapter) -> None:
    # The whole statement goes, `if` included: blanking only `gphase(...) ...;` would leave
    # `if(m==0)` to condition the `x` after it, which then never runs.
    for body in (
        "if(m==0) gphase(0.3) q[1];\nx q[1];\n",
        "if ( m == 0 ) // why\n gphase(1) ;x q[1];\n",
    ):
        (counts,) = _run(aer, _program(body), QASM2, shots=32)
        assert counts["c"] == Counter({"11": 32}), body


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ("if(q==1) gphase(0.3) q[1];\n", "'q' is not a classical register declared before it"),
        ("if(d==1) gphase(0.3) ;\ncreg d[1];\n", "'d' is not a classical register declared"),
        ("if(m==01) gphase(0.3) ;\n", "leading zeroes"),
        ("if(m==1) gphase(nan) ;\n", "not a number"),
        ("if(m==1) gphase(0.3) q[2];\n", "qubit 2 of register 'q' (size 2) does not exist"),
        ("gate g a { if(m==1) gphase(0.1) a; }\n", "not an `if`"),
        ("if(m==1.0) gphase(0.3) ;\n", "needed an integer"),
        ("if(m[0]==1) gphase(0.3) ;\n", "compares a whole classical register"),
        ("if(m==1) gphase(0.3) q[1]\nx q[0];\n", "is not a quantum register declared"),
    ],
)
def test_a_conditioned_phase_is_checked_as_the_reader_checks_a_condition(
    aer: AerAdapter, body: str, says: str
) -> None:
    refusal = _refusal(aer, _program(body), QASM2)
    assert refusal.reason in ("INVALID_QASM", "NON_FINITE_ANGLE")
    assert says in refusal.message and "line 8" in refusal.message, refusal.message


def test_pennylane_refuses_what_it_cannot_write() -> None:
    def reset() -> None:
        qml.Hadamard(0)
        qml.measure(0, reset=True)

    def negated() -> None:
        qml.Hadamard(0)
        qml.cond(~qml.measure(0), qml.PauliX)(1)

    def outside_its_table() -> None:
        qml.Hadamard(0)
        qml.cond(qml.measure(0), qml.SX)(1)

    for ops in (reset, negated, outside_its_table):
        with pytest.raises((NotImplementedError, ValueError)):
            qml.to_openqasm(_qnode(ops, [0, 1]))()


# ------------------------------------------------------------------ cost of a long export


def _parse_seconds(text: str) -> float:
    best = float("inf")
    for _ in range(2):
        started = time.perf_counter()
        fe.parse_circuit(CircuitSource(QASM2, text), CircuitLimits(), "f")
        best = min(best, time.perf_counter() - started)
    return best


def test_many_global_phases_cost_about_what_as_many_gates_do() -> None:
    # 29,000 of the statements PennyLane writes for qml.SX (~1 MB): each statement's line
    # was counted from the text's start, ~5 s here; now about as long as reading as many
    # `rz` calls (defect 2).
    header = 'OPENQASM 2.0;\ninclude "qelib1.inc";\nqreg q[2];\ncreg c[2];\n'
    count = 29_000
    phases = header + "gphase(-0.7853981633974483) q[1];\n" * count
    gates = header + "rz(-0.7853981633974483) q[1];\n" * count
    assert _parse_seconds(phases) < 4 * _parse_seconds(gates) + 0.5


def test_positions_read_in_order_match_the_lexers() -> None:
    text = "ab\n\ncd\nefg h\n" * 3 + "x"
    position = fe._Positions(text)
    for offset in range(len(text)):
        assert position(offset) == fe._position(text, offset), offset
    with pytest.raises(ValueError):
        position(0)


def test_a_global_phase_error_far_down_names_its_line(aer: AerAdapter) -> None:
    header = 'OPENQASM 2.0;\ninclude "qelib1.inc";\nqreg q[2];\ncreg c[2];\n'
    text = header + "gphase(0.1) q[1]; // ;\n" * 500 + "  gphase(0.1) q[7];\n"
    with pytest.raises(InvalidArgument) as refused:
        _run(aer, text, QASM2, shots=8)
    assert "line 505, column 2" in refused.value.message
