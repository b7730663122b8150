"""Circuit limits at their exact edges: the documented value is accepted, one past it refused.

Found by hand mutation testing of the front end: each test here fails when a limit is moved by
one, counted in characters instead of bytes, or skipped for one language.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.backends.base import CircuitLimits
from gateway.backends.qiskit import frontend as fe
from gateway.domain.circuits import CircuitLanguage, CircuitSource
from gateway.domain.errors import InvalidArgument

FIELD = "spec.pubs[0].sampler.circuit.qasm3"
H3 = 'OPENQASM 3.0;\ninclude "stdgates.inc";\n'
H2 = 'OPENQASM 2.0;\ninclude "qelib1.inc";\n'
Q2, Q3 = CircuitLanguage.QASM2, CircuitLanguage.QASM3


def parse(
    language: CircuitLanguage, text: str, limits: CircuitLimits, max_qubits: int | None = None
) -> object:
    return fe.parse_circuit(CircuitSource(language, text), limits, FIELD, max_qubits=max_qubits)


def reason(
    language: CircuitLanguage, text: str, limits: CircuitLimits, max_qubits: int | None = None
) -> str:
    with pytest.raises(InvalidArgument) as info:
        parse(language, text, limits, max_qubits)
    return info.value.reason


@pytest.mark.parametrize(
    ("language", "text"),
    [(Q3, H3 + "qubit[1] q;\nx q[0];\n"), (Q2, H2 + "qreg q[1];\nx q[0];\n")],
)
def test_source_of_exactly_the_limit_is_accepted_one_byte_more_is_not(
    language: CircuitLanguage, text: str
) -> None:
    size = len(text.encode())
    parse(language, text, CircuitLimits(max_source_bytes=size))
    assert reason(language, text, CircuitLimits(max_source_bytes=size - 1)) == "CIRCUIT_TOO_LARGE"


def test_source_size_counts_utf8_bytes_not_characters() -> None:
    # A comment of 100 three-byte characters: 100 characters, 300 bytes.
    text = H3 + "// " + "\u20ac" * 100 + "\nqubit[1] q;\nx q[0];\n"
    limits = CircuitLimits(max_source_bytes=len(text) + 10)
    assert reason(Q3, text, limits) == "CIRCUIT_TOO_LARGE"


def test_pow_is_refused_from_five_qubits_on() -> None:
    four = H3 + "qubit[4] q;\ngate g a, b, c, d { x a; }\npow(2) @ g q[0], q[1], q[2], q[3];\n"
    five = (
        H3
        + "qubit[5] q;\ngate g a, b, c, d, e { x a; }\npow(2) @ g q[0], q[1], q[2], q[3], q[4];\n"
    )
    parse(Q3, four, CircuitLimits())
    assert reason(Q3, five, CircuitLimits()) == "CIRCUIT_TOO_COMPLEX"


def test_a_qelib1_gate_without_the_include_is_an_unknown_gate() -> None:
    with pytest.raises(InvalidArgument) as info:
        parse(Q2, "OPENQASM 2.0;\nqreg q[1];\nx q[0];\n", CircuitLimits())
    assert info.value.reason == "UNKNOWN_GATE"
    assert info.value.metadata == {"gate": "x"}


@pytest.mark.parametrize("name", ["INF", "Infinity", "NaN"])
def test_non_finite_names_in_any_case_are_non_finite_angles(name: str) -> None:
    text = H3 + f"qubit[1] q;\nrx({name}) q[0];\n"
    assert reason(Q3, text, CircuitLimits()) == "NON_FINITE_ANGLE"


def test_conversion_work_one_past_the_budget_is_refused() -> None:
    # A controlled user gate costs its definition times 16; max_definition_operations=8 makes the
    # budget 2 * 8 = 16: one controlled application fits, one more plain application does not.
    limits = CircuitLimits(max_definition_operations=8)
    text = H3 + "qubit[2] q;\ngate g a { x a; }\nctrl @ g q[0], q[1];\n"
    parse(Q3, text, limits)
    with pytest.raises(InvalidArgument) as info:
        parse(Q3, text + "g q[0];\n", limits)
    assert info.value.reason == "CIRCUIT_TOO_COMPLEX"
    assert info.value.metadata == {"maxConversionWork": "16"}


def test_the_qasm2_reader_reads_no_file_even_relative_to_the_root(tmp_path: Path) -> None:
    # Defence in depth behind the include scan: had the reader opened the file, its error
    # would be placed inside it ("leak.inc:1,0: ...").
    path = tmp_path / "leak.inc"
    path.write_text("gate leak a { U(0, 0, 0) a; }\n")
    for name in (str(path), str(path).lstrip("/")):
        text = f'OPENQASM 2.0;\ninclude "{name}";\nqreg q[1];\nleak q[0];\n'
        with pytest.raises(InvalidArgument) as info:
            fe._loads_qasm2(text, FIELD)
        assert info.value.reason == "INVALID_QASM"
        assert f"{path.name}:" not in info.value.message, info.value.message


class PanicException(BaseException):
    """Stands in for pyo3's PanicException (matched by name): a Rust panic in the reader."""


def test_a_reader_panic_is_the_programs_refusal(monkeypatch: pytest.MonkeyPatch) -> None:
    def panics(*args: object, **kwargs: object) -> None:
        raise PanicException("called `Result::unwrap()` on an `Err` value")

    monkeypatch.setattr(fe.qiskit.qasm2, "loads", panics)
    text = H2 + "qreg q[1];\nx q[0];\n"
    assert reason(Q2, text, CircuitLimits()) == "INVALID_QASM"


def test_loop_bounds_of_two_to_the_62_are_refused() -> None:
    def loop(end: int) -> str:
        return H3 + f"qubit[1] q;\nfor int i in [0:{end}] {{ x q[0]; }}\n"

    # Below 2^62 the bound is read, and the loop's length is over the operation limit.
    assert reason(Q3, loop(2**62 - 1), CircuitLimits()) == "CIRCUIT_TOO_LARGE"
    assert reason(Q3, loop(2**62), CircuitLimits()) == "UNSUPPORTED_FEATURE"


@pytest.mark.parametrize(
    "text",
    [
        H2 + "qreg q[1];\ncreg c[1];\nif (c == 1) rx(1e999) q[0];\n",
        H3 + "qubit[1] q;\nbit[1] c;\nif (c[0]) { rx(1e308 * 10) q[0]; }\n",
    ],
)
def test_a_non_finite_angle_inside_control_flow_is_refused(text: str) -> None:
    language = Q2 if text.startswith("OPENQASM 2") else Q3
    assert reason(language, text, CircuitLimits()) == "NON_FINITE_ANGLE"


def test_qasm2_operation_limit_is_exact() -> None:
    limits = CircuitLimits(max_operations=10)
    parse(Q2, H2 + "qreg q[1];\n" + "x q[0];\n" * 10, limits)
    with pytest.raises(InvalidArgument) as info:
        parse(Q2, H2 + "qreg q[1];\n" + "x q[0];\n" * 11, limits)
    assert info.value.reason == "CIRCUIT_TOO_LARGE"
    assert info.value.metadata == {"maxOperations": "10"}


def test_conversion_work_is_capped_even_when_the_other_limits_are_raised() -> None:
    # 63 controlled applications of a 100-operation gate: 63 * 100 * 16 = 100800 copies, over
    # QASM3_MAX_CONVERSION_WORK although the configured limits would allow it.
    limits = CircuitLimits(max_operations=1_000_000, max_definition_operations=100_000)
    body = " ".join(["x a;"] * 100)
    text = H3 + f"qubit[2] q;\ngate g a {{ {body} }}\n" + "ctrl @ g q[0], q[1];\n" * 63
    with pytest.raises(InvalidArgument) as info:
        parse(Q3, text, limits)
    assert info.value.reason == "CIRCUIT_TOO_COMPLEX"
    assert info.value.metadata == {"maxConversionWork": str(fe.QASM3_MAX_CONVERSION_WORK)}


def test_qasm2_definition_operation_limit_is_exact() -> None:
    limits = CircuitLimits(max_definition_operations=4)
    text = H2 + "qreg q[1];\ngate g a { U(0, 0, 0) a; }\n"
    parse(Q2, text + "g q[0];\n" * 4, limits)
    with pytest.raises(InvalidArgument) as info:
        parse(Q2, text + "g q[0];\n" * 5, limits)
    assert info.value.reason == "CIRCUIT_TOO_COMPLEX"
    assert info.value.metadata == {"maxDefinitionOperations": "4"}


def test_the_larger_branch_of_an_if_else_counts() -> None:
    from qiskit import QuantumCircuit

    from tests.qpy_payloads import dump

    circuit = QuantumCircuit(1, 1)
    with circuit.if_test((circuit.clbits[0], 1)) as orelse:
        circuit.x(0)
    with orelse:
        for _ in range(5):
            circuit.x(0)
    source = CircuitSource(CircuitLanguage.QPY, data=dump(circuit))
    with pytest.raises(InvalidArgument) as info:
        fe.parse_circuit(source, CircuitLimits(max_operations=4), FIELD)
    assert info.value.reason == "CIRCUIT_TOO_LARGE"


def test_every_operand_of_a_global_phase_may_be_a_control_and_no_more() -> None:
    from qiskit import QuantumCircuit
    from qiskit.quantum_info import Statevector

    # gphase acts on no qubit of its own: ctrl @ gphase(pi) on q0 between two h is a Z (q0
    # reads 1); the doubly controlled phase changes no probability.
    text = H3 + "qubit[3] q;\nh q[0]; ctrl @ gphase(pi) q[0]; h q[0];\n"
    text += "x q[1]; ctrl(2) @ gphase(pi / 2) q[1], q[2];\n"
    circuit = parse(Q3, text, CircuitLimits())
    assert isinstance(circuit, QuantumCircuit)
    assert Statevector(circuit).probabilities_dict()["011"] == pytest.approx(1.0)
    limits = CircuitLimits()
    assert reason(Q3, H3 + "qubit[2] q;\nctrl(3) @ gphase(pi) q[0], q[1];\n", limits) == (
        "INVALID_QASM"
    )
    # A gate keeps at least one operand of its own.
    assert reason(Q3, H3 + "qubit[2] q;\nctrl(2) @ x q[0], q[1];\n", limits) == "INVALID_QASM"
