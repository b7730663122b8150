"""Circuit semantics across the local fleet: classical expressions, loops, resets, repeated
measurements, registers and loose bits, controlled global phases, gate modifiers, the gate
conventions of Qiskit's writers, observables over several registers and parameter broadcasting.
Each circuit's answer is derived independently (by hand, or with numpy / qiskit.quantum_info
on a circuit built without the OpenQASM readers), so a backend that agrees with the others but
not with the physics fails.

A backend that lacks a construct refuses it with UNSUPPORTED_FEATURE; which backends refuse
what is pinned here, so a backend that starts refusing (or running) a construct is noticed.
"""

from __future__ import annotations

import io
import itertools
import math
from collections import Counter
from collections.abc import Mapping, Sequence

import numpy as np
import pytest
from qgateway import Client, SamplerPubResult, estimator_pub
from qgateway.errors import QGatewayError

from tests.conformance.conftest import EXACT, NOISY, PROFILES
from tests.conformance.test_conformance import _check

FLEET = [*EXACT, *NOISY]
H3 = 'OPENQASM 3.0;\ninclude "stdgates.inc";\n'
SHOTS = 4000

# backend -> what its refusal says, for the constructs some backends do not run.
NO_CONTROL_FLOW = {
    name: "does not support control flow"
    for name in ("pennylane-lightning", "pennylane-default", "braket-dm-noisy")
}
NO_MID_CIRCUIT = {
    name: "does not support mid circuit measurement"
    for name in ("pennylane-lightning", "pennylane-default", "braket-dm-noisy")
}
BRAKET = ("braket-sv", "braket-dm")


def _construct(name: str, backends: Sequence[str]) -> dict[str, str]:
    return {backend: f"does not support the '{name}' construct" for backend in backends}


def _sampled(
    client: Client,
    backend: str,
    text: str | bytes,
    refusals: Mapping[str, str] = {},
    seed: int = 7,
) -> SamplerPubResult | None:
    """The sampler result; None when the backend refused the circuit as `refusals` says it
    must. Braket refuses a seed for a circuit it runs shot by shot: then it runs unseeded."""
    try:
        try:
            result = client.run(text, backend=backend, shots=SHOTS, seed=seed).sampler()
        except QGatewayError as exc:
            if exc.reason != "UNSUPPORTED_FEATURE" or "seed" not in str(exc):
                raise
            result = client.run(text, backend=backend, shots=SHOTS).sampler()
    except QGatewayError as exc:
        if backend not in refusals:
            raise
        assert exc.reason == "UNSUPPORTED_FEATURE", exc
        assert refusals[backend] in str(exc), exc
        return None
    assert backend not in refusals, f"{backend} ran what it refused: {refusals[backend]}"
    return result


def _expect(
    client: Client,
    backend: str,
    text: str | bytes,
    ideal: dict[str, float],
    refusals: Mapping[str, str] = {},
    registers: list[str] | None = None,
) -> None:
    """The circuit's counts (of `registers` joined, else of every register) follow `ideal`
    within the backend's budget, or the backend refuses it as `refusals` says it must."""
    result = _sampled(client, backend, text, refusals)
    if result is None:
        return
    counts = result.counts() if registers is None else _joint(result, registers)
    _check(client, backend, counts, ideal)


def _joint(result: SamplerPubResult, registers: list[str]) -> dict[str, int]:
    """Counts of the registers' values per shot, joined with '|' in the order given."""
    columns = [result.bitstrings(register=r) for r in registers]
    return dict(Counter("|".join(parts) for parts in zip(*columns, strict=True)))


def _estimate(
    client: Client,
    backend: str,
    circuit: str | bytes,
    observables: Sequence[object],
    **kw: object,
) -> np.ndarray:
    job = client.submit_pubs(
        [estimator_pub(circuit, observables, precision=0.0, **kw)], backend=backend
    )
    done = client.wait(job.name, timeout=180)
    assert done.state == "SUCCEEDED", done.error
    return np.array(client.get_result(job.name).estimator().expectation_values)


def _tolerance(backend: str) -> float:
    profile = PROFILES[backend]
    return 1e-7 if profile.noise is None else profile.estimator_noise


# --------------------------------------------------------------------------- classical logic

# m = (m1, m0) is uniform over 0..3; four conditions built from classical expressions decide
# which qubits flip. r[0] <- q0 (holds m0, flipped when m1 = 1 through a bitwise expression),
# r[1] <- q2, r[2] <- q3, r[3] <- q4. Qiskit's OpenQASM 3 reader takes only `!bit`,
# `bit == bool` and `register == int`, so the full expressions go as QPY (expr trees), and the
# reader's subset as text.
EXPRESSIONS_TEXT = (
    H3
    + "qubit[5] q; bit[2] m; bit[4] r;\n"
    + "h q[0]; h q[1]; m[0] = measure q[0]; m[1] = measure q[1];\n"
    + "if (!m[0]) { if (m[1]) { x q[2]; } }\n"
    + "if (m == 2) { x q[3]; }\n"
    + "if (m[1] == false) { x q[4]; }\n"
    + "if (m[1]) { x q[0]; }\n"
    + "r[0] = measure q[0]; r[1] = measure q[2]; r[2] = measure q[3]; r[3] = measure q[4];\n"
)


def _expressions_qpy() -> bytes:
    import qiskit
    from qiskit.circuit.classical import expr

    q = qiskit.QuantumRegister(5, "q")
    m = qiskit.ClassicalRegister(2, "m")
    r = qiskit.ClassicalRegister(4, "r")
    c = qiskit.QuantumCircuit(q, m, r)
    c.h([0, 1])
    c.measure(0, m[0])
    c.measure(1, m[1])
    with c.if_test(expr.logic_and(m[1], expr.logic_not(m[0]))):
        c.x(2)
    with c.if_test(expr.equal(m, 2)):
        c.x(3)
    with c.if_test(expr.less(m, 2)):
        c.x(4)
    with c.if_test(expr.equal(expr.bit_xor(expr.bit_or(m, 1), 2), 1)):
        c.x(0)
    c.measure([0, 2, 3, 4], r)
    buffer = io.BytesIO()
    qiskit.qpy.dump(c, buffer)
    return buffer.getvalue()


def _expressions_ideal() -> dict[str, float]:
    ideal: dict[str, float] = {}
    for m in range(4):
        m0, m1 = m & 1, m >> 1
        a = int(bool(m1) and not m0)
        b = int(m == 2)
        c = int(m < 2)
        d = int(((m | 1) ^ 2) == 1)  # m1 == 1
        r = f"{c}{b}{a}{m0 ^ d}"
        ideal[f"{m1}{m0}|{r}"] = 0.25
    return ideal


@pytest.mark.parametrize("form", ["qasm3", "qpy"])
@pytest.mark.parametrize("backend", FLEET)
def test_conditions_on_classical_expressions(client: Client, backend: str, form: str) -> None:
    source = EXPRESSIONS_TEXT if form == "qasm3" else _expressions_qpy()
    refusals = dict(NO_CONTROL_FLOW)
    if form == "qpy":  # `m < 2` has no Braket condition
        refusals |= {name: "Braket cannot branch on" for name in BRAKET}
    _expect(client, backend, source, _expressions_ideal(), refusals, registers=["m", "r"])


# Repeat until a coin reads 1: c ends 1 in every shot; q1 flips once per iteration, so it reads
# 1 when the loop ran an odd number of times: sum over odd k of 2^-(k+1) = 1/3.
WHILE = (
    H3
    + "qubit[2] q; bit[1] c; bit[1] parity;\n"
    + "h q[0]; c[0] = measure q[0];\n"
    + "while (!c[0]) { reset q[0]; h q[0]; x q[1]; c[0] = measure q[0]; }\n"
    + "parity[0] = measure q[1];\n"
)


@pytest.mark.parametrize("backend", FLEET)
def test_a_while_loop_on_a_measured_bit(client: Client, backend: str) -> None:
    refusals = NO_CONTROL_FLOW | _construct(
        "while_loop", [*BRAKET, "aer-noisy-manila", "ibm-fake-manila"]
    )
    _expect(
        client, backend, WHILE, {"1|1": 1 / 3, "1|0": 2 / 3}, refusals, registers=["c", "parity"]
    )


# OpenQASM 3 ranges include their end: [0:3] is 4 iterations, [4:-2:0] is 4, 2, 0 and
# [0:2:5] is 0, 2, 4; each loop's rotations add up to pi only with the right iteration count.
FOR_RANGES = (
    H3
    + "qubit[4] q; bit[4] c;\n"
    + "for int i in [0:3] { rx(pi/4) q[0]; }\n"
    + "for int i in [4:-2:0] { rx(pi/3) q[1]; }\n"
    + "for int i in [0:2:5] { rx(pi/3) q[2]; }\n"
    + "for int i in {1, 5, 9} { rx(pi/3) q[3]; }\n"
    + "c = measure q;\n"
)


@pytest.mark.parametrize("backend", FLEET)
def test_for_loop_ranges_include_their_end_and_honour_steps(client: Client, backend: str) -> None:
    refusals = NO_CONTROL_FLOW | _construct("for_loop", BRAKET)
    _expect(client, backend, FOR_RANGES, {"1111": 1.0}, refusals)


# The loop variable in an angle: pi/6 * (1 + 2 + 3) = pi.
FOR_VARIABLE = (
    H3 + "qubit[1] q; bit[1] c;\nfor int i in [1:3] { rx(i * pi / 6) q[0]; }\nc = measure q;\n"
)


@pytest.mark.parametrize("backend", FLEET)
def test_a_for_loop_variable_in_an_angle(client: Client, backend: str) -> None:
    refusals = NO_CONTROL_FLOW | _construct("for_loop", BRAKET)
    _expect(client, backend, FOR_VARIABLE, {"1": 1.0}, refusals)


# --------------------------------------------------------------------------- measurement

# Reset of one half of a Bell pair: q0 reads 0, q1 stays a fair coin; a second reset of q1
# after an x makes it 0 again.
RESET_ENTANGLED = (
    H3
    + "qubit[2] q; bit[3] c;\n"
    + "h q[0]; cx q[0], q[1]; reset q[0]; c[0] = measure q[0]; c[1] = measure q[1];\n"
    + "x q[1]; reset q[1]; c[2] = measure q[1];\n"
)


@pytest.mark.parametrize("backend", FLEET)
def test_reset_of_an_entangled_qubit(client: Client, backend: str) -> None:
    _expect(client, backend, RESET_ENTANGLED, {"000": 0.5, "010": 0.5}, NO_MID_CIRCUIT)


# Two measurements into the same bit, each qubit measured once at the end: the later write
# wins. c[0] gets q0 = 1, then q1 = 0; c[1] gets q3 = 0, then q2 = 1: c = "10".
LAST_WRITE = (
    H3
    + "qubit[4] q; bit[2] c;\nx q[0]; x q[2];\n"
    + "c[0] = measure q[0]; c[0] = measure q[1]; c[1] = measure q[3]; c[1] = measure q[2];\n"
)


@pytest.mark.parametrize("backend", FLEET)
def test_the_last_measurement_into_a_bit_wins(client: Client, backend: str) -> None:
    _expect(client, backend, LAST_WRITE, {"10": 1.0})


# Registers and loose bit variables interleaved, written in scrambled order; flag copies a
# fair coin that also lands in a[1]:  b = "100", a = r"1", flag = r.
LOOSE_BITS = (
    H3
    + "qubit[5] q; bit[3] b; bit flag; bit[2] a;\n"
    + "x q[0]; x q[3]; h q[4]; cx q[4], q[2];\n"
    + "a[1] = measure q[4]; flag = measure q[2]; b[2] = measure q[0]; a[0] = measure q[3];"
    + " b[0] = measure q[1];\n"
)


@pytest.mark.parametrize("backend", FLEET)
def test_registers_and_loose_bits_in_scrambled_order(client: Client, backend: str) -> None:
    result = _sampled(client, backend, LOOSE_BITS)
    assert result is not None
    assert result.register_names == ["b", "a", "flag"]
    _check(
        client,
        backend,
        _joint(result, ["b", "a", "flag"]),
        {"100|01|0": 0.5, "100|11|1": 0.5},
    )


# --------------------------------------------------------------------------- gates

# ctrl @ gphase(t) is a phase t on the control's |1>; between two h it is a Z for t = pi.
# gphase acts on no qubit of its own, so every operand may be a control (the gateway's cost
# pass once refused that as "more controls than qubit operands").
# q0: one control; q1 = 1 with a second control; q2: an open control (q3 = 0).
CONTROLLED_GPHASE = (
    H3
    + "qubit[4] q; bit[4] c;\n"
    + "gphase(0.3);\n"
    + "h q[0]; ctrl @ gphase(pi) q[0]; h q[0];\n"
    + "x q[1]; h q[2]; ctrl(2) @ gphase(pi) q[1], q[2]; h q[2];\n"
    + "negctrl @ ctrl @ gphase(pi/2) q[3], q[2];\n"
    + "c = measure q;\n"
)


@pytest.mark.parametrize("backend", FLEET)
def test_controlled_global_phase(client: Client, backend: str) -> None:
    _expect(client, backend, CONTROLLED_GPHASE, {"0111": 1.0})


I2 = np.eye(2, dtype=complex)
X = np.array([[0, 1], [1, 0]], dtype=complex)
H = np.array([[1, 1], [1, -1]], dtype=complex) / math.sqrt(2)
S = np.diag([1, 1j])
T = np.diag([1, np.exp(1j * math.pi / 4)])
SX = np.array([[1 + 1j, 1 - 1j], [1 - 1j, 1 + 1j]]) / 2


def RX(t: float) -> np.ndarray:
    return np.array(
        [[math.cos(t / 2), -1j * math.sin(t / 2)], [-1j * math.sin(t / 2), math.cos(t / 2)]]
    )


def RZ(t: float) -> np.ndarray:
    return np.diag([np.exp(-0.5j * t), np.exp(0.5j * t)])


def _on(n: int, gate: np.ndarray, qubit: int) -> np.ndarray:
    """gate on one qubit of n (qubit 0 is the least significant)."""
    out = np.eye(1, dtype=complex)
    for k in reversed(range(n)):
        out = np.kron(out, gate if k == qubit else I2)
    return out


def _controlled(n: int, gate: np.ndarray, control: int, target: int) -> np.ndarray:
    p0 = np.diag([1, 0]).astype(complex)
    p1 = np.diag([0, 1]).astype(complex)
    a = np.eye(1, dtype=complex)
    b = np.eye(1, dtype=complex)
    for k in reversed(range(n)):
        a = np.kron(a, p0 if k == control else I2)
        b = np.kron(b, p1 if k == control else (gate if k == target else I2))
    return a + b


# inv @ and pow @ on standard gates and on a user gate, two of them under ctrl (a global phase
# of the modified gate becomes a relative phase there).
MODIFIERS = (
    H3
    + "gate my(t) a { rx(t) a; s a; }\n"
    + "qubit[3] q;\n"
    + "h q[0]; h q[1]; h q[2];\n"
    + "inv @ s q[0]; pow(2) @ t q[0]; pow(0.5) @ x q[1]; inv @ my(0.3) q[2];\n"
    + "pow(3) @ my(0.2) q[2]; inv @ pow(2) @ sx q[1]; pow(-1) @ rz(0.4) q[0];\n"
    + "ctrl @ inv @ my(0.5) q[0], q[1]; ctrl @ pow(0.5) @ x q[2], q[0]; h q[1];\n"
)


def _modifiers_state() -> np.ndarray:
    n = 3

    def my(t: float) -> np.ndarray:
        return S @ RX(t)  # rx first, then s

    steps = [
        _on(n, H, 0),
        _on(n, H, 1),
        _on(n, H, 2),
        _on(n, S.conj().T, 0),
        _on(n, T @ T, 0),
        _on(n, SX, 1),
        _on(n, np.linalg.inv(my(0.3)), 2),
        _on(n, np.linalg.matrix_power(my(0.2), 3), 2),
        _on(n, np.linalg.inv(SX @ SX), 1),
        _on(n, RZ(-0.4), 0),
        _controlled(n, np.linalg.inv(my(0.5)), 0, 1),
        _controlled(n, SX, 2, 0),
        _on(n, H, 1),
    ]
    state = np.zeros(2**n, dtype=complex)
    state[0] = 1
    for u in steps:
        state = u @ state
    return state


PAULIS3 = ["".join(p) for p in itertools.product("IXYZ", repeat=3)][1:]


def _pauli_expectations(state: np.ndarray, labels: list[str]) -> np.ndarray:
    from qiskit.quantum_info import SparsePauliOp, Statevector

    sv = Statevector(state)
    return np.array([sv.expectation_value(SparsePauliOp(label)).real for label in labels])


@pytest.mark.parametrize("backend", FLEET)
def test_inv_and_pow_modifiers(client: Client, backend: str) -> None:
    got = _estimate(client, backend, MODIFIERS, PAULIS3)
    want = _pauli_expectations(_modifiers_state(), PAULIS3)
    assert np.abs(got - want).max() <= _tolerance(backend), f"{got - want}"


def _conventions_circuit():
    """Gates some readers or writers define themselves (Qiskit's qasm3/qasm2 writers emit
    definitions for ecr, rzx, xx_plus_yy, ...), with phases made visible by interference."""
    import qiskit

    c = qiskit.QuantumCircuit(3)
    c.h([0, 1, 2])
    c.u(0.3, 0.7, -0.4, 0)
    c.p(0.9, 1)
    c.cu(0.5, 0.2, 0.8, 0.6, 0, 2)
    c.sx(1)
    c.sxdg(2)
    c.ecr(0, 1)
    c.rzz(0.7, 1, 2)
    c.rxx(0.4, 0, 2)
    c.ryy(1.1, 0, 1)
    c.rzx(0.8, 2, 0)
    c.append(qiskit.circuit.library.XXPlusYYGate(0.9, 0.3), [1, 2])
    c.append(qiskit.circuit.library.XXMinusYYGate(0.6, -0.2), [0, 2])
    c.cs(1, 0)
    c.csx(2, 1)
    c.ch(0, 2)
    c.h([0, 1])
    return c


# Exact backends only: transpiled for the noisy devices the circuit is deep enough that their
# stated noise budgets (set for the suite's small circuits) do not bound it.
@pytest.mark.parametrize("form", ["qasm3", "qasm2", "qpy"])
@pytest.mark.parametrize("backend", EXACT)
def test_gate_conventions_through_qiskit_writers(client: Client, backend: str, form: str) -> None:
    from qiskit import qasm2, qasm3, qpy
    from qiskit.quantum_info import Statevector

    circuit = _conventions_circuit()
    if form == "qasm3":
        source: str | bytes = qasm3.dumps(circuit)
    elif form == "qasm2":
        source = qasm2.dumps(circuit)
    else:
        buffer = io.BytesIO()
        qpy.dump(circuit, buffer)
        source = buffer.getvalue()
    got = _estimate(client, backend, source, PAULIS3)
    want = _pauli_expectations(Statevector(circuit).data, PAULIS3)
    assert np.abs(got - want).max() <= _tolerance(backend), f"{got - want}"


# --------------------------------------------------------------------------- estimator

# Qubits of several registers are numbered in declaration order: a[0], a[1], then b[0..1],
# then the lone qubit (index 4). Pauli strings address them by that index.
MULTI_REGISTER = (
    H3 + "qubit[2] a; qubit[2] b; qubit lone;\nx b[0]; ry(0.5) a[1]; ry(1.2) lone; h b[1];\n"
)


@pytest.mark.parametrize("backend", FLEET)
def test_observables_on_qubits_of_several_registers(client: Client, backend: str) -> None:
    observables = ["IIZII", "IIIZI", "ZIIII", [("X", [3], 1.0)], "IIIIZ", [("ZZ", [2, 4], 1.0)]]
    got = _estimate(client, backend, MULTI_REGISTER, observables)
    want = np.array([-1.0, math.cos(0.5), math.cos(1.2), 1.0, 1.0, -math.cos(1.2)])
    assert np.abs(got - want).max() <= _tolerance(backend), f"{got} vs {want}"


# Two parameters declared out of name order: unnamed columns are in Qiskit's order (by name:
# alpha, beta); named columns in the order named. Shape (2, 3, 1) against 3 observables.
TWO_PARAMETERS = (
    H3
    + "input float[64] beta;\ninput float[64] alpha;\nqubit[2] q;\n"
    + "ry(alpha) q[0]; rx(beta) q[1];\n"
)


@pytest.mark.parametrize("backend", FLEET)
def test_two_parameters_broadcast_in_name_order(client: Client, backend: str) -> None:
    rng = np.random.default_rng(5)
    values = rng.uniform(-3, 3, size=(2, 3, 1, 2))
    observables = ["IZ", "ZI", "ZZ"]
    want = np.empty((2, 3, 3))
    for i, j in itertools.product(range(2), range(3)):
        alpha, beta = values[i, j, 0]
        want[i, j] = [math.cos(alpha), math.cos(beta), math.cos(alpha) * math.cos(beta)]
    got = _estimate(client, backend, TWO_PARAMETERS, observables, parameter_values=values)
    assert got.reshape(want.shape).shape == want.shape
    assert np.abs(got.reshape(want.shape) - want).max() <= _tolerance(backend)
    named = _estimate(
        client,
        backend,
        TWO_PARAMETERS,
        observables,
        parameter_values=values[..., ::-1].copy(),
        parameters=["beta", "alpha"],
    )
    assert np.abs(named.reshape(want.shape) - want).max() <= _tolerance(backend)


def _switch_qpy() -> bytes:
    """A switch on a two-bit register (QPY: Qiskit's OpenQASM 3 reader has no switch)."""
    import qiskit

    q = qiskit.QuantumRegister(3, "q")
    m = qiskit.ClassicalRegister(2, "m")
    r = qiskit.ClassicalRegister(2, "r")
    c = qiskit.QuantumCircuit(q, m, r)
    c.h([0, 1])
    c.measure([0, 1], m)
    with c.switch(m) as case:
        with case(0, 3):
            c.x(2)
        with case(2):
            c.x(0)  # q0 was 0: now 1
        with case(case.DEFAULT):  # m = 1
            pass
    c.measure([0, 2], r)
    buffer = io.BytesIO()
    qiskit.qpy.dump(c, buffer)
    return buffer.getvalue()


@pytest.mark.parametrize("backend", FLEET)
def test_a_switch_on_a_register(client: Client, backend: str) -> None:
    # r = (q2, q0): m=0 -> "10"; m=1 -> q0 holds 1: "01"; m=2 -> "01"; m=3 -> q0=1, q2=1: "11".
    ideal = {"00|10": 0.25, "01|01": 0.25, "10|01": 0.25, "11|11": 0.25}
    refusals = NO_CONTROL_FLOW | _construct("switch_case", BRAKET)
    _expect(client, backend, _switch_qpy(), ideal, refusals, registers=["m", "r"])


def _translatable_conditions_qpy() -> bytes:
    """Conditions within what the Braket adapter translates itself (gateway/backends/braket/
    program.py _Condition): &&, !, bit equality (XNOR), != on a bit, register == value, and an
    else branch."""
    import qiskit
    from qiskit.circuit.classical import expr

    q = qiskit.QuantumRegister(5, "q")
    m = qiskit.ClassicalRegister(2, "m")
    r = qiskit.ClassicalRegister(5, "r")
    c = qiskit.QuantumCircuit(q, m, r)
    c.h([0, 1])
    c.measure(0, m[0])
    c.measure(1, m[1])
    with c.if_test(expr.logic_and(m[1], expr.logic_not(m[0]))):
        c.x(2)
    with c.if_test(expr.equal(m, 2)):
        c.x(3)
    with c.if_test(expr.not_equal(m[1], True)):
        c.x(4)
    with c.if_test(expr.equal(m[0], m[1])) as otherwise:
        c.x(0)
    with otherwise:
        c.x(1)
    c.measure([0, 1, 2, 3, 4], r)
    buffer = io.BytesIO()
    qiskit.qpy.dump(c, buffer)
    return buffer.getvalue()


@pytest.mark.parametrize("backend", FLEET)
def test_translatable_conditions_with_an_else_branch(client: Client, backend: str) -> None:
    ideal: dict[str, float] = {}
    for m in range(4):
        m0, m1 = m & 1, m >> 1
        same = int(m0 == m1)
        bits = [m0 ^ same, m1 ^ (1 - same), int(m1 and not m0), int(m == 2), int(m1 != 1)]
        ideal[f"{m1}{m0}|" + "".join(str(b) for b in reversed(bits))] = 0.25
    _expect(
        client,
        backend,
        _translatable_conditions_qpy(),
        ideal,
        NO_CONTROL_FLOW,
        registers=["m", "r"],
    )


# A user gate whose definition holds a global phase, under ctrl: g = -X, so ctrl @ g is a CX
# followed by a Z on the control. Target |1>, control |+>: ctrl @ g gives
# (|1>|0> - |0>|1>)/sqrt2 (q1 q0); cx q[0], q[1] makes it |1>|->, and h on q0 reads q0 = 1:
# "11". Without the phase q0 would be |+> and read 0: "10".
GPHASE_IN_DEFINITION = (
    H3
    + "gate g a { gphase(pi); x a; }\n"
    + "qubit[2] q; bit[2] c;\n"
    + "x q[1]; h q[0]; ctrl @ g q[0], q[1]; cx q[0], q[1]; h q[0];\n"
    + "c = measure q;\n"
)


@pytest.mark.parametrize("backend", FLEET)
def test_a_global_phase_inside_a_controlled_user_gate(client: Client, backend: str) -> None:
    _expect(client, backend, GPHASE_IN_DEFINITION, {"11": 1.0})


# OpenQASM 3 broadcasts a gate over registers of equal size (cx a, b is cx a[i], b[i]) and a
# one-qubit gate over a register: a = "10" after x a[1]; b copies it; h, h on c is a no-op.
BROADCAST = (
    H3
    + "qubit[2] a; qubit[2] b; qubit c; bit[2] ma; bit[2] mb; bit mc;\n"
    + "x a[1]; cx a, b; h c; barrier; h c; ma = measure a; mb = measure b; mc = measure c;\n"
)


@pytest.mark.parametrize("backend", FLEET)
def test_gates_broadcast_over_registers(client: Client, backend: str) -> None:
    _expect(client, backend, BROADCAST, {"10|10|0": 1.0}, registers=["ma", "mb", "mc"])
