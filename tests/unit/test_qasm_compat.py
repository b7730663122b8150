"""OpenQASM as the SDKs write it: what Qiskit's exporters emit parses in the gateway unchanged.

The reference for every circuit is the circuit Qiskit exported, compared as an operator (or by
its hard-coded operation counts), never the output of the gateway's own parsing path.
"""

from __future__ import annotations

import pytest
import qiskit.qasm2
import qiskit.qasm3
from qiskit import ClassicalRegister, QuantumCircuit, QuantumRegister
from qiskit.circuit import Parameter
from qiskit.circuit.library import get_standard_gate_name_mapping
from qiskit.circuit.random import random_circuit
from qiskit.quantum_info import Operator

from gateway.backends.base import CircuitLimits
from gateway.backends.qiskit import frontend as fe
from gateway.domain.circuits import CircuitLanguage, CircuitSource
from gateway.domain.errors import Code, InvalidArgument

FIELD = "spec.pubs[0].sampler.circuit.qasm2"
LIMITS = CircuitLimits()

# Every standard gate Qiskit 2.x has, by name (global_phase acts on no qubit: OpenQASM 2 has no
# way to write it).
STANDARD_GATES = [
    "c3sx",
    "ccx",
    "ccz",
    "ch",
    "cp",
    "crx",
    "cry",
    "crz",
    "cs",
    "csdg",
    "cswap",
    "csx",
    "cu",
    "cu1",
    "cu3",
    "cx",
    "cy",
    "cz",
    "dcx",
    "ecr",
    "h",
    "id",
    "iswap",
    "p",
    "r",
    "rcccx",
    "rccx",
    "rx",
    "rxx",
    "ry",
    "ryy",
    "rz",
    "rzx",
    "rzz",
    "s",
    "sdg",
    "swap",
    "sx",
    "sxdg",
    "t",
    "tdg",
    "u",
    "u1",
    "u2",
    "u3",
    "x",
    "xx_minus_yy",
    "xx_plus_yy",
    "y",
    "z",
]


def parse(language: CircuitLanguage, text: str) -> QuantumCircuit:
    return fe.parse_circuit(CircuitSource(language, text), LIMITS, FIELD)


def one_gate(name: str) -> QuantumCircuit:
    gate = get_standard_gate_name_mapping()[name]
    if gate.params:
        gate = type(gate)(*[0.3 + 0.1 * i for i in range(len(gate.params))])
    circuit = QuantumCircuit(gate.num_qubits)
    circuit.append(gate, range(gate.num_qubits))
    return circuit


@pytest.mark.parametrize("name", STANDARD_GATES)
def test_qasm2_dumps_of_every_standard_gate_parses(name: str) -> None:
    original = one_gate(name)
    text = qiskit.qasm2.dumps(original)
    parsed = parse(CircuitLanguage.QASM2, text)
    assert Operator(parsed).equiv(Operator(original))


@pytest.mark.parametrize("name", STANDARD_GATES)
def test_qasm3_dumps_of_every_standard_gate_parses(name: str) -> None:
    original = one_gate(name)
    parsed = parse(CircuitLanguage.QASM3, qiskit.qasm3.dumps(original))
    assert Operator(parsed).equiv(Operator(original))


def test_qasm2_gates_qiskit_reads_with_qelib1_are_accepted() -> None:
    # What `QuantumCircuit.from_qasm_str` adds to qelib1.inc, written by hand.
    text = (
        'OPENQASM 2.0;\ninclude "qelib1.inc";\nqreg q[5];\ncreg c[5];\n'
        "sx q[0]; sxdg q[0]; swap q[0], q[1]; cswap q[0], q[1], q[2]; u(0.1, 0.2, 0.3) q[0];\n"
        "p(asin(0.5)) q[0]; crx(acos(0.5)) q[0], q[1]; cry(atan(1)) q[0], q[1];\n"
        "cp(0.1) q[0], q[1]; csx q[0], q[1]; cu(0.1, 0.2, 0.3, 0.4) q[0], q[1];\n"
        "rxx(0.1) q[0], q[1]; rzz(0.2) q[0], q[1]; rccx q[0], q[1], q[2];\n"
        "rc3x q[0], q[1], q[2], q[3]; c3x q[0], q[1], q[2], q[3];\n"
        "c3sqrtx q[0], q[1], q[2], q[3]; c4x q[0], q[1], q[2], q[3], q[4];\n"
        "measure q -> c;\n"
    )
    circuit = parse(CircuitLanguage.QASM2, text)
    assert dict(circuit.count_ops()) == {
        "sx": 1,
        "sxdg": 1,
        "swap": 1,
        "cswap": 1,
        "u": 1,
        "p": 1,
        "crx": 1,
        "cry": 1,
        "cp": 1,
        "csx": 1,
        "cu": 1,
        "rxx": 1,
        "rzz": 1,
        "rccx": 1,
        "rcccx": 1,
        "mcx": 2,
        "c3sx": 1,
        "measure": 5,
    }
    assert [instruction.operation.params for instruction in circuit.data[5:6]] == [
        [pytest.approx(0.5235987755982989)]
    ]


def test_qasm2_delay_as_qiskit_writes_it() -> None:
    original = QuantumCircuit(1, 1)
    original.delay(100, 0)
    original.measure(0, 0)
    circuit = parse(CircuitLanguage.QASM2, qiskit.qasm2.dumps(original))
    assert [i.operation.name for i in circuit.data] == ["delay", "measure"]
    assert circuit.data[0].operation.duration == 100


@pytest.mark.parametrize(
    "text",
    [
        'OPENQASM 2.0;\ninclude "qelib1.inc";\nqreg q[2];\ncreg c[2];\nh q[0];\ncx q[0], q[1];\n'
        "barrier q;\nreset q[1];\nmeasure q -> c;\nif (c == 1) x q[1];\n",
        "OPENQASM 2.0;\nqreg q[3];\nswap q[0], q[1];\nrzz(pi/3) q[1], q[2];\n"
        "U(0.1, 0.2, 0.3) q[0];\n",
        'OPENQASM 2.0;\ninclude "qelib1.inc";\ngate my(t) a, b { rzz(t) a, b; sx a; }\n'
        "qreg q[2];\nmy(0.5) q[0], q[1];\nmy(-0.5) q[1], q[0];\n",
    ],
)
def test_qasm2_agrees_with_from_qasm_str(text: str) -> None:
    reference = QuantumCircuit.from_qasm_str(text)
    circuit = parse(CircuitLanguage.QASM2, text)
    assert dict(circuit.count_ops()) == dict(reference.count_ops())
    assert [(r.name, r.size) for r in circuit.cregs] == [(r.name, r.size) for r in reference.cregs]
    unitary = reference.remove_final_measurements(inplace=False)
    if not any(i.operation.name in ("reset", "if_else") for i in unitary.data):
        assert Operator(circuit).equiv(Operator(unitary))


def test_qasm3_dumps_of_a_dynamic_parameterised_circuit_parses() -> None:
    a, b = QuantumRegister(2, "a"), QuantumRegister(1, "b")
    c, d = ClassicalRegister(2, "c"), ClassicalRegister(1, "d")
    original = QuantumCircuit(a, b, c, d)
    theta, phi = Parameter("theta"), Parameter("phi")
    original.h(0)
    original.rx(theta, 1)
    original.cp(phi / 2, 0, 2)
    original.u(theta, phi, 0.25, 2)
    original.cx(0, 2)
    original.barrier()
    original.reset(1)
    original.measure(0, c[0])
    with original.if_test((c[0], 1)) as else_:
        original.x(1)
    with else_:
        original.z(1)
    with original.if_test((d, 1)):
        original.h(0)
    original.measure([1, 2], [c[1], d[0]])
    circuit = parse(CircuitLanguage.QASM3, qiskit.qasm3.dumps(original))
    assert [(r.name, r.size) for r in circuit.qregs] == [("a", 2), ("b", 1)]
    assert fe.result_registers(circuit) == (("c", (0, 1)), ("d", (2,)))
    assert sorted(p.name for p in circuit.parameters) == ["phi", "theta"]
    assert dict(circuit.count_ops()) == {
        "h": 1,
        "rx": 1,
        "cp": 1,
        "u": 1,
        "cx": 1,
        "barrier": 1,
        "reset": 1,
        "measure": 3,
        "if_else": 2,
    }


def test_qasm3_dumps_of_loops_parses() -> None:
    original = QuantumCircuit(2, 1)
    with original.for_loop(range(0, 10, 3)) as i:
        original.rx(i * 0.1, 0)
    original.measure(0, 0)
    with original.while_loop((original.clbits[0], 0)):
        original.x(1)
        original.measure(1, 0)
    circuit = parse(CircuitLanguage.QASM3, qiskit.qasm3.dumps(original))
    assert dict(circuit.count_ops()) == {"for_loop": 1, "measure": 1, "while_loop": 1}
    assert tuple(circuit.data[0].operation.params[0]) == (0, 3, 6, 9)


def test_qasm3_dumps_of_a_loose_bit_names_it_as_qiskit_wrote_it() -> None:
    from qiskit.circuit import Clbit

    original = QuantumCircuit(2, 1)
    original.add_bits([Clbit()])
    original.h(0)
    original.measure(0, 0)
    original.measure(1, 1)
    text = qiskit.qasm3.dumps(original)
    assert "bit _bit1;" in text  # Qiskit names the loose bit after its index
    circuit = parse(CircuitLanguage.QASM3, text)
    # Qiskit declares loose bits first, so the loose bit is clbit 0 after reading it back.
    assert fe.result_registers(circuit) == (("c", (1,)), ("_bit1", (0,)))


@pytest.mark.parametrize("seed", range(40))
def test_random_circuits_round_trip_in_both_dialects(seed: int) -> None:
    original = random_circuit(4, 6, max_operands=3, seed=seed)
    for language, text in (
        (CircuitLanguage.QASM2, qiskit.qasm2.dumps(original)),
        (CircuitLanguage.QASM3, qiskit.qasm3.dumps(original)),
    ):
        parsed = parse(language, text)
        assert Operator(parsed).equiv(Operator(original)), (language, text)


@pytest.mark.parametrize(
    ("language", "text", "feature"),
    [
        (CircuitLanguage.QASM3, "OPENQASM 3.0;\ndef f() {}\nqubit q;", "SubroutineDefinition"),
        (CircuitLanguage.QASM3, "OPENQASM 3.0;\noutput bit c;\nqubit q;", "openqasm3_construct"),
        # Named as QPY's refusal of a Var names it.
        (CircuitLanguage.QASM3, "OPENQASM 3.0;\nint[32] n = 3;\nqubit q;", "classical_variables"),
        (CircuitLanguage.QASM3, "OPENQASM 3.0;\nqubit q;\npragma foo", "Pragma"),
    ],
)
def test_what_qiskit_cannot_represent_is_an_unsupported_feature(
    language: CircuitLanguage, text: str, feature: str
) -> None:
    with pytest.raises(InvalidArgument) as info:
        parse(language, text)
    assert info.value.reason == "UNSUPPORTED_FEATURE", info.value.message
    assert info.value.code is Code.INVALID_ARGUMENT
    assert info.value.metadata == {"feature": feature}
