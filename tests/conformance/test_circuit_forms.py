"""The forms a circuit and its observables can take, across the local fleet: every gate of
qelib1.inc, estimator observables' coefficients and shapes, wide and oddly named registers,
OpenQASM 3 index forms and aliases, partial and sliced measurements, QPY parameter vectors and
global phases, delays in several units. Every expected answer comes from a circuit built
without the OpenQASM readers (Qiskit's quantum_info on library gates) or by hand."""

from __future__ import annotations

import io
import math
from typing import TYPE_CHECKING

import grpc
import numpy as np
import pytest
from qgateway import Client, estimator_pub
from qgateway.errors import QGatewayError

if TYPE_CHECKING:
    from qiskit import QuantumCircuit

from tests.conformance.conftest import EXACT, NOISY, PROFILES
from tests.conformance.test_circuit_semantics import (
    _estimate,
    _expect,
    _joint,
    _pauli_expectations,
    _sampled,
    _tolerance,
)
from tests.conformance.test_conformance import _check

FLEET = [*EXACT, *NOISY]
H3 = 'OPENQASM 3.0;\ninclude "stdgates.inc";\n'
SHOTS = 4000

# --------------------------------------------------------------------------- qelib1.inc

# Every gate qelib1.inc defines (and the builtin U / CX), each between H's on a 5-qubit register
# so that relative phases (inside controlled subspaces) change Pauli expectations.
QELIB1_BODY = [
    "h q[0]; h q[1]; h q[2]; h q[3]; h q[4];",
    "U(0.3,0.7,-0.4) q[0];",
    "CX q[0],q[1];",
    "u3(0.5,0.2,0.9) q[1];",
    "u2(0.4,-0.6) q[2];",
    "u1(0.8) q[3];",
    "u0(1) q[4];",
    "u(0.2,0.3,0.4) q[4];",
    "p(0.45) q[0];",
    "id q[1];",
    "x q[0]; y q[1]; z q[2]; s q[3]; sdg q[4]; t q[0]; tdg q[1];",
    "rx(0.31) q[2]; ry(0.52) q[3]; rz(0.73) q[4];",
    "sx q[0]; sxdg q[1];",
    "cz q[0],q[2]; cy q[1],q[3]; ch q[2],q[4];",
    "swap q[0],q[4];",
    "ccx q[0],q[1],q[2];",
    "cswap q[3],q[0],q[1];",
    "crx(0.6) q[4],q[0]; cry(0.7) q[0],q[3]; crz(0.8) q[1],q[2];",
    "cu1(0.9) q[2],q[3]; cp(0.35) q[3],q[4];",
    "cu3(0.4,0.5,0.6) q[4],q[2];",
    "csx q[1],q[0];",
    "cu(0.3,0.2,0.1,0.25) q[0],q[1];",
    "rxx(0.55) q[1],q[2]; rzz(0.65) q[2],q[3];",
    "rccx q[0],q[1],q[2];",
    "rc3x q[0],q[1],q[2],q[3];",
    "c3x q[1],q[2],q[3],q[4];",
    "c3sqrtx q[4],q[3],q[2],q[0];",
    "c4x q[0],q[1],q[2],q[3],q[4];",
    "h q[0]; h q[1]; h q[2]; h q[3]; h q[4];",
]


def _qelib1_reference() -> QuantumCircuit:
    """The same circuit built from Qiskit's library gates (no OpenQASM reader)."""
    from qiskit import QuantumCircuit
    from qiskit.circuit import library as lib

    c = QuantumCircuit(5)
    c.h(range(5))
    c.append(lib.UGate(0.3, 0.7, -0.4), [0])
    c.cx(0, 1)
    c.append(lib.U3Gate(0.5, 0.2, 0.9), [1])
    c.append(lib.U2Gate(0.4, -0.6), [2])
    c.append(lib.U1Gate(0.8), [3])
    c.append(lib.UGate(0.2, 0.3, 0.4), [4])
    c.p(0.45, 0)
    c.x(0), c.y(1), c.z(2), c.s(3), c.sdg(4), c.t(0), c.tdg(1)
    c.rx(0.31, 2), c.ry(0.52, 3), c.rz(0.73, 4)
    c.sx(0), c.sxdg(1)
    c.cz(0, 2), c.cy(1, 3), c.ch(2, 4)
    c.swap(0, 4)
    c.ccx(0, 1, 2)
    c.cswap(3, 0, 1)
    c.crx(0.6, 4, 0), c.cry(0.7, 0, 3), c.crz(0.8, 1, 2)
    c.append(lib.CU1Gate(0.9), [2, 3])
    c.cp(0.35, 3, 4)
    c.append(lib.CU3Gate(0.4, 0.5, 0.6), [4, 2])
    c.csx(1, 0)
    c.cu(0.3, 0.2, 0.1, 0.25, 0, 1)
    c.rxx(0.55, 1, 2), c.rzz(0.65, 2, 3)
    c.append(lib.RCCXGate(), [0, 1, 2])
    c.append(lib.RC3XGate(), [0, 1, 2, 3])
    c.append(lib.C3XGate(), [1, 2, 3, 4])
    c.append(lib.C3SXGate(), [4, 3, 2, 0])
    c.append(lib.C4XGate(), [0, 1, 2, 3, 4])
    c.h(range(5))
    return c


QELIB1 = 'OPENQASM 2.0;\ninclude "qelib1.inc";\nqreg q[5];\n' + "\n".join(QELIB1_BODY) + "\n"

# All one- and two-qubit Paulis plus some weight-3..5 ones: together they pin the state's
# relative phases.
PAULIS5 = sorted(
    {
        "".join("I" if k not in pos else p for k in range(5))
        for pos, p in [((i,), a) for i in range(5) for a in "XYZ"]
    }
    | {
        "".join(a if k == i else b if k == j else "I" for k in range(5))
        for i in range(5)
        for j in range(i + 1, 5)
        for a in "XYZ"
        for b in "XYZ"
    }
    | {"XXXXX", "YYZZX", "ZXYXZ", "XYZIY", "ZZZZZ", "IXYZX", "YIXZZ", "XZIYX"}
)


@pytest.mark.parametrize("backend", EXACT)
def test_every_qelib1_gate_means_what_qiskit_s_library_gate_means(
    client: Client, backend: str
) -> None:
    from qiskit.quantum_info import Statevector

    got = _estimate(client, backend, QELIB1, PAULIS5)
    want = _pauli_expectations(Statevector(_qelib1_reference()).data, PAULIS5)
    bad = {
        p: (g, w)
        for p, g, w in zip(PAULIS5, got, want, strict=True)
        if abs(g - w) > _tolerance(backend)
    }
    assert not bad, bad


# --------------------------------------------------------------------------- estimator

# ry(0.8) on q0, x on q1; q2 is never touched (an idle qubit the estimator must still know).
IDLE = H3 + "qubit[3] q;\nry(0.8) q[0]; x q[1];\n"


@pytest.mark.parametrize("backend", FLEET)
def test_observables_with_real_coefficients_identities_and_idle_qubits(
    client: Client, backend: str
) -> None:
    c = math.cos(0.8)
    s = math.sin(0.8)
    observables: list[object] = [
        [("Z", [0], 0.5), ("X", [0], -1.5), ("ZZ", [0, 1], 2.0)],  # 0.5c - 1.5s - 2c
        "III",  # identity: 1
        [("III", [0, 1, 2], 3.25)],  # scaled identity
        "ZII",  # idle q2: +1
        [("XZ", [2, 1], 1.0)],  # <X2> = 0 on idle q2
        [("Z", [2], 1.0), ("Z", [2], -1.0), ("I", [0], 0.75)],  # cancelling terms + constant
    ]
    want = np.array([0.5 * c - 1.5 * s - 2 * c, 1.0, 3.25, 1.0, 0.0, 0.75])
    got = _estimate(client, backend, IDLE, observables)
    # The noisy budgets bound a Pauli's expectation; a sum of terms with weights up to 3.25
    # moves by at most the weights' sum times that.
    assert np.abs(got - want).max() <= _tolerance(backend) * 4, f"{got} vs {want}"


# A zero observable (one term with coefficient 0, or terms that cancel) is a valid observable
# whose expectation is 0 on every state. IBM's runtime refuses it ("Empty observable was
# detected"): on ibm-fake-manila the job fails as the client's (INVALID_OBSERVABLE, a failure
# the breaker does not count), not as an SDK error.
ZERO_OBSERVABLES: list[object] = [[("Z", [0], 0.0)], "IIZ", [("X", [1], 0.5), ("X", [1], -0.5)]]


@pytest.mark.parametrize("backend", FLEET)
def test_a_zero_observable_has_expectation_zero(client: Client, backend: str) -> None:
    if backend == "ibm-fake-manila":
        job = client.submit_pubs(
            [estimator_pub(IDLE, ZERO_OBSERVABLES, precision=0.0)], backend=backend
        )
        done = client.wait(job.name, timeout=180)
        assert done.state == "FAILED", done
        assert done.error is not None and done.error.reason == "INVALID_OBSERVABLE", done.error
        assert done.error.code is grpc.StatusCode.INVALID_ARGUMENT, done.error
        return
    got = _estimate(client, backend, IDLE, ZERO_OBSERVABLES)
    want = np.array([0.0, math.cos(0.8), 0.0])
    assert np.abs(got - want).max() <= _tolerance(backend), f"{got} vs {want}"


BROADCAST_EST = H3 + "input float[64] theta;\nqubit[2] q;\nry(theta) q[0]; cx q[0], q[1];\n"


@pytest.mark.parametrize("backend", FLEET)
def test_observables_of_shape_2x1_broadcast_against_bindings_of_shape_1x3(
    client: Client, backend: str
) -> None:
    ts = [0.2, 1.1, 2.7]
    observables = [["ZI"], [[("X", [0], 1.0), ("X", [1], 1.0)]]]  # shape (2, 1)
    got = _estimate(
        client, backend, BROADCAST_EST, observables, parameter_values=[[[t] for t in ts]]
    )
    want = np.array([[math.cos(t) for t in ts], [0.0 for _ in ts]])
    assert got.size == 6
    assert np.abs(got.reshape(2, 3) - want).max() <= _tolerance(backend), f"{got} vs {want}"


# --------------------------------------------------------------------------- registers

# Bit 69 of a 70-bit register set from a qubit, bit 0 from another, bit 40 from a third.
WIDE = (
    H3
    + "qubit[3] q; bit[70] c;\nx q[0]; x q[2];\n"
    + "c[69] = measure q[0]; c[0] = measure q[1]; c[40] = measure q[2];\n"
)


@pytest.mark.parametrize("backend", FLEET)
def test_a_register_wider_than_64_bits_keeps_its_high_bits(client: Client, backend: str) -> None:
    refusals = {
        b: "reads at most 64 classical bits" for b in ("braket-sv", "braket-dm", "braket-dm-noisy")
    }
    refusals |= {
        b: "into at most 64 classical bits" for b in ("pennylane-lightning", "pennylane-default")
    }
    result = _sampled(client, backend, WIDE, refusals)
    if result is None:
        return
    bits = ["0"] * 70
    bits[69] = "1"
    bits[40] = "1"
    want = "".join(reversed(bits))
    _check(client, backend, result.counts(), {want: 1.0})


# Register names that do not start with a lowercase letter, which Qiskit's OpenQASM 3 reader
# would escape ("_c" as "esc__c"): results come back under the names the program declared.
ODD_NAMES = (
    H3
    + "qubit[2] _Q; qubit Q1; bit[2] _c; bit Cq; bit[1] ZZ_top;\n"
    + "x _Q[1]; h Q1;\n"
    + "_c = measure _Q; Cq = measure Q1; ZZ_top[0] = measure _Q[1];\n"
)


@pytest.mark.parametrize("backend", FLEET)
def test_register_names_with_underscores_and_capitals(client: Client, backend: str) -> None:
    result = _sampled(client, backend, ODD_NAMES)
    assert result is not None
    assert sorted(result.register_names) == sorted(["_c", "Cq", "ZZ_top"])
    _check(
        client,
        backend,
        _joint(result, ["_c", "Cq", "ZZ_top"]),
        {"10|0|1": 0.5, "10|1|1": 0.5},
    )


# OpenQASM 3 index forms Qiskit's reader takes: q[-1] is q[3]; q[{0, 2}]; an alias of an
# inclusive slice (q[1:2] is q[1], q[2]). x q[-1] -> q3; x on q[{0,2}] -> q0, q2; x on
# a = q[1:2] undoes q2 and sets q1: q3..q0 = 1011.
INDEXING = (
    H3
    + "qubit[4] q; bit[4] c;\n"
    + "x q[-1];\nx q[{0, 2}];\nlet a = q[1:2];\nx a;\n"
    + "c = measure q;\n"
)


@pytest.mark.parametrize("backend", FLEET)
def test_negative_indices_index_sets_and_slice_aliases(client: Client, backend: str) -> None:
    _expect(client, backend, INDEXING, {"1011": 1.0})


# An alias of one qubit, which Qiskit's reader cannot represent (it aliases registers only): a
# backend may run it (x q[0], q[1], q[3]: 1011) or refuse it as UNSUPPORTED_FEATURE, not call
# the program invalid.
ONE_QUBIT_ALIAS = (
    H3 + "qubit[4] q; bit[4] c;\nlet a = q[3];\nx a; x q[0]; x q[1];\nc = measure q;\n"
)


@pytest.mark.parametrize("backend", FLEET)
def test_an_alias_of_one_qubit_runs_or_is_refused_as_unsupported(
    client: Client, backend: str
) -> None:
    text = ONE_QUBIT_ALIAS
    try:
        counts = client.run(text, backend=backend, shots=SHOTS, seed=7).sampler().counts()
    except QGatewayError as exc:
        assert exc.reason == "UNSUPPORTED_FEATURE", exc
        return
    _check(client, backend, counts, {"1011": 1.0})


# Measuring only some qubits: the unmeasured ones (in superposition, entangled with nothing
# measured) leave no trace; c[1] reads the flipped q2, c[0] the untouched q0.
PARTIAL = (
    H3
    + "qubit[4] q; bit[2] c;\nh q[1]; x q[2]; h q[3];\nc[1] = measure q[2]; c[0] = measure q[0];\n"
)


@pytest.mark.parametrize("backend", FLEET)
def test_measuring_some_qubits_only(client: Client, backend: str) -> None:
    _expect(client, backend, PARTIAL, {"10": 1.0})


# A whole register measured into a register declared in a different order than the qubits
# (c[i] <- q[i] by position) plus a slice measured into a slice of another.
SLICE_MEASURE = (
    H3
    + "bit[2] late; bit[3] c; qubit[3] q;\nx q[0]; x q[2];\n"
    + "c = measure q;\nlate[0:1] = measure q[1:2];\n"
)


@pytest.mark.parametrize("backend", FLEET)
def test_slices_measured_into_slices(client: Client, backend: str) -> None:
    _expect(client, backend, SLICE_MEASURE, {"101|10": 1.0}, registers=["c", "late"])


# --------------------------------------------------------------------------- QPY


def _qpy(circuit: QuantumCircuit) -> bytes:
    from qiskit import qpy

    buffer = io.BytesIO()
    qpy.dump(circuit, buffer)
    return buffer.getvalue()


def _parameter_vector_circuit() -> QuantumCircuit:
    from qiskit import QuantumCircuit
    from qiskit.circuit import ParameterVector

    v = ParameterVector("v", 3)
    c = QuantumCircuit(3)
    c.ry(v[0], 0)
    c.rx(v[1] * 2, 1)
    c.ry(v[2] - v[0], 2)
    return c


@pytest.mark.parametrize("backend", FLEET)
def test_a_parameter_vector_through_qpy(client: Client, backend: str) -> None:
    from qiskit.quantum_info import Statevector

    rng = np.random.default_rng(17)
    values = rng.uniform(-3, 3, size=(4, 3))
    circuit = _parameter_vector_circuit()
    observables = ["IIZ", "IZI", "ZII", "ZZZ"]
    want = np.array(
        [
            _pauli_expectations(Statevector(circuit.assign_parameters(row)).data, observables)
            for row in values
        ]
    )
    got = _estimate(
        client,
        backend,
        _qpy(circuit),
        [[o] for o in observables],
        parameter_values=values[None, :, :].copy(),
    )
    # observables (4, 1) against bindings (1, 4): (4 observables, 4 bindings)
    assert np.abs(got.reshape(4, 4) - want.T).max() <= _tolerance(backend), f"{got}"


def _controlled_phase_gate_circuit() -> QuantumCircuit:
    """A sub-circuit with a global phase, turned into a gate and controlled: the phase becomes
    relative (a Z-like kick on the control)."""
    from qiskit import QuantumCircuit

    sub = QuantumCircuit(1, global_phase=0.9)
    sub.x(0)
    gate = sub.to_gate(label="gx").control(1)
    c = QuantumCircuit(2, global_phase=0.4)
    c.h(0)
    c.append(gate, [0, 1])
    c.h(0)
    return c


@pytest.mark.parametrize("backend", FLEET)
def test_qpy_global_phase_of_a_controlled_gate(client: Client, backend: str) -> None:
    from qiskit.quantum_info import Statevector

    circuit = _controlled_phase_gate_circuit()
    observables = ["IZ", "IX", "IY", "ZZ", "XX", "YX", "ZI"]
    want = _pauli_expectations(Statevector(circuit).data, observables)
    got = _estimate(client, backend, _qpy(circuit), observables)
    assert np.abs(got - want).max() <= _tolerance(backend), f"{got} vs {want}"


# precision > 0 on an exact simulator: each value is the exact one plus a draw of standard
# deviation `precision` (Qiskit's reference estimator semantics), its standard error the
# precision, for a sum observable too. 60 copies of one binding: the normalised deviations'
# mean and spread are checked at ~5 sigma (mean within 5/sqrt(60); spread in [0.55, 1.45],
# a chi-square with 59 degrees of freedom).
@pytest.mark.parametrize("backend", EXACT)
def test_precision_draws_have_the_stated_spread(client: Client, backend: str) -> None:
    precision = 0.05
    job = client.submit_pubs(
        [
            estimator_pub(
                BROADCAST_EST,
                [[("Z", [0], 0.5), ("XX", [0, 1], -2.0)]],
                parameter_values=[[0.9]] * 60,
                precision=precision,
            )
        ],
        backend=backend,
        seed=21,
    )
    done = client.wait(job.name, timeout=180)
    assert done.state == "SUCCEEDED", done.error
    result = client.get_result(job.name).estimator()
    got = np.array(result.expectation_values).ravel()
    assert np.allclose(result.standard_errors, precision)
    z = (got - (0.5 * math.cos(0.9) - 2 * math.sin(0.9))) / precision
    assert abs(z.mean()) <= 5 / math.sqrt(len(z)), z.mean()
    assert 0.55 <= z.std(ddof=1) <= 1.45, z.std(ddof=1)


def _long_parameter_vector_circuit() -> QuantumCircuit:
    """v[0..11] on one qubit each as ry angles: unnamed binding columns follow Qiskit's order,
    which puts v[10], v[11] after v[9] (numeric), not after v[1] (string order)."""
    from qiskit import QuantumCircuit
    from qiskit.circuit import ParameterVector

    v = ParameterVector("v", 12)
    c = QuantumCircuit(4)
    for k in range(12):
        c.ry(v[k] * (k + 1), k % 4)
    return c


@pytest.mark.parametrize("backend", FLEET)
def test_a_long_parameter_vector_binds_in_numeric_order(client: Client, backend: str) -> None:
    from qiskit.quantum_info import Statevector

    circuit = _long_parameter_vector_circuit()
    rng = np.random.default_rng(3)
    values = rng.uniform(-1, 1, size=(2, 12))
    observables = ["IIIZ", "IIZI", "IZII", "ZIII"]
    want = np.array(
        [
            _pauli_expectations(Statevector(circuit.assign_parameters(row)).data, observables)
            for row in values
        ]
    )
    got = _estimate(
        client, backend, _qpy(circuit), observables, parameter_values=values[:, None, :].copy()
    )
    assert np.abs(got.reshape(2, 4) - want).max() <= _tolerance(backend), f"{got} vs {want}"


def _odd_register_names_qpy() -> bytes:
    """Registers named as Qiskit allows but OpenQASM does not ("_c", "Big", a digit inside)."""
    from qiskit import ClassicalRegister, QuantumCircuit, QuantumRegister

    q = QuantumRegister(3, "q")
    a = ClassicalRegister(2, "_c")
    b = ClassicalRegister(1, "Big")
    c = QuantumCircuit(q, a, b)
    c.x(0)
    c.h(2)
    c.measure([0, 1], a)
    c.measure(2, b[0])
    return _qpy(c)


@pytest.mark.parametrize("backend", FLEET)
def test_qpy_register_names_come_back_as_given(client: Client, backend: str) -> None:
    result = _sampled(client, backend, _odd_register_names_qpy())
    assert result is not None
    assert sorted(result.register_names) == sorted(["_c", "Big"])
    _check(client, backend, _joint(result, ["_c", "Big"]), {"01|0": 0.5, "01|1": 0.5})


# Delays in units other than the ns the suite already checks: short ones are no-ops within
# every backend's budget (a qubit on Manila keeps its state for ~100 us).
@pytest.mark.parametrize("unit", ["dt", "us"])
@pytest.mark.parametrize("backend", FLEET)
def test_short_delays_in_dt_and_us_are_no_ops(client: Client, backend: str, unit: str) -> None:
    text = (
        H3
        + f"qubit[2] q; bit[2] c; x q[1]; delay[20{unit}] q[1]; delay[3{unit}] q; c = measure q;\n"
    )
    _expect(client, backend, text, {"10": 1.0})


# A 20 ms delay is ~100 T1 on FakeManila: the fake-device backends (thermal relaxation in their
# noise models) return the excited qubit to |0>; the exact simulators and braket-dm-noisy
# (depolarising and readout channels only) keep it.
RELAXING = ("aer-noisy-manila", "ibm-fake-manila")


@pytest.mark.parametrize("backend", FLEET)
def test_a_long_delay_relaxes_only_where_the_noise_model_has_t1(
    client: Client, backend: str
) -> None:
    text = H3 + "qubit[2] q; bit[2] c; x q[1]; delay[20ms] q[1]; c = measure q;\n"
    _expect(client, backend, text, {"00" if backend in RELAXING else "10": 1.0})


# Two registers whose names the OpenQASM 3 reader's escaping would make equal ("_c" as
# "esc__c", which the program also declares): each comes back as itself.
COLLIDING_NAMES = (
    H3
    + "qubit[2] q; bit[1] _c; bit[1] esc__c;\n"
    + "x q[0]; _c[0] = measure q[0]; esc__c[0] = measure q[1];\n"
)


@pytest.mark.parametrize("backend", FLEET)
def test_registers_named_like_an_escaped_name_stay_apart(client: Client, backend: str) -> None:
    result = _sampled(client, backend, COLLIDING_NAMES)
    assert result is not None
    assert sorted(result.register_names) == sorted(["_c", "esc__c"])
    _check(client, backend, _joint(result, ["_c", "esc__c"]), {"1|0": 1.0})


def _controlled_parametric_phase_qpy() -> bytes:
    """A sub-circuit whose global phase is a parameter, made a gate and controlled, bound at
    run time: the phase a becomes a relative phase on the control's |1>."""
    from qiskit import QuantumCircuit
    from qiskit.circuit import Parameter

    a = Parameter("a")
    sub = QuantumCircuit(1, global_phase=a)
    sub.x(0)
    c = QuantumCircuit(2)
    c.h(0)
    c.append(sub.to_gate(label="px").control(1), [0, 1])
    return _qpy(c)


@pytest.mark.parametrize("backend", FLEET)
def test_a_bound_global_phase_of_a_controlled_gate(client: Client, backend: str) -> None:
    # State (|00> + e^{ia}|11>)/sqrt2 (q1 q0): <XX> = cos a, <YX> = sin a, <ZZ> = 1.
    angles = [0.0, 0.8, 2.0, -2.6]
    got = _estimate(
        client,
        backend,
        _controlled_parametric_phase_qpy(),
        ["XX", "YX", "ZZ"],
        parameter_values=[[[t]] for t in angles],
    )
    want = np.array([[math.cos(t), math.sin(t), 1.0] for t in angles])
    assert np.abs(got.reshape(want.shape) - want).max() <= _tolerance(backend), f"{got} vs {want}"


# A circuit with no classical bits at all: every backend refuses it the same way, at
# submission (Qiskit's own SamplerV2 would return an empty DataBin; the gateway's choice is a
# clear refusal, pinned so a backend that starts answering differently is noticed).
@pytest.mark.parametrize("backend", FLEET)
def test_a_sampler_circuit_without_classical_bits_is_refused_alike(
    client: Client, backend: str
) -> None:
    with pytest.raises(QGatewayError) as caught:
        client.run(H3 + "qubit[2] q; h q[0];\n", backend=backend, shots=100, seed=1)
    assert caught.value.reason == "NO_MEASUREMENTS", caught.value
    assert "no classical bits" in str(caught.value)


# precision > 0 with a weighted sum: the standard error is the precision asked for (exact
# backends) or the runtime's own estimate of the sum's error (sampled), and the value lies
# within 5.5 standard errors plus the noise budget scaled by the weights (2.5).
@pytest.mark.parametrize("backend", FLEET)
def test_precision_of_a_weighted_sum(client: Client, backend: str) -> None:
    precision = 0.02
    pub = client.estimate(
        BROADCAST_EST,
        [[("Z", [0], 0.5), ("XX", [0, 1], -2.0)]],
        parameter_values=[[0.9]],
        precision=precision,
        backend=backend,
        seed=4,
    )
    std = pub.standard_errors[0]
    if PROFILES[backend].sampled_estimator:
        assert 0 < std <= 3 * precision, pub.standard_errors
    else:
        assert std == precision
    want = 0.5 * math.cos(0.9) - 2 * math.sin(0.9)
    bound = 5.5 * max(std, precision) + 2.5 * PROFILES[backend].estimator_noise
    assert abs(pub.expectation_values[0] - want) <= bound, (pub.expectation_values, want)
