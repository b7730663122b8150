"""Hostile circuit text: every cost is bounded before the expensive work, with a specific reason.

Inputs here are what an adversarial client sends: comments that end where one lexer thinks and
not another, declarations of billions of bits, inputs that made the old pre-scan's regular
expressions backtrack for minutes, definitions nested to unroll into millions of operations,
non-finite angles. Each asserts its exact reason; none may escape as another exception.
"""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import numpy as np
import pytest
import qiskit.qasm2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from qiskit import ClassicalRegister, QuantumCircuit, transpile
from qiskit.circuit import Clbit

from gateway.backends.base import CircuitLimits
from gateway.backends.qiskit import frontend as fe
from gateway.domain.circuits import CircuitLanguage, CircuitSource
from gateway.domain.errors import Code, InvalidArgument

FIELD = "spec.pubs[0].sampler.circuit.qasm3"
LIMITS = CircuitLimits()
H3 = 'OPENQASM 3.0;\ninclude "stdgates.inc";\n'
H2 = 'OPENQASM 2.0;\ninclude "qelib1.inc";\n'
Q2, Q3 = CircuitLanguage.QASM2, CircuitLanguage.QASM3


def refused(
    language: CircuitLanguage,
    text: str,
    reason: str,
    limits: CircuitLimits = LIMITS,
    max_qubits: int | None = None,
) -> InvalidArgument:
    with pytest.raises(InvalidArgument) as info:
        fe.parse_circuit(CircuitSource(language, text), limits, FIELD, max_qubits=max_qubits)
    error = info.value
    assert error.reason == reason, (error.reason, error.message)
    assert error.code is Code.INVALID_ARGUMENT
    assert [v.field for v in error.field_violations] == [FIELD]
    return error


def parsed(language: CircuitLanguage, text: str, limits: CircuitLimits = LIMITS) -> QuantumCircuit:
    return fe.parse_circuit(CircuitSource(language, text), limits, FIELD)


# ------------------------------------------------------------------ declared sizes, comments


@pytest.mark.parametrize("newline", ["\r", "\r\n", "\n"])
def test_qasm3_declaration_after_a_comment_ending_in_cr_is_seen(newline: str) -> None:
    # ANTLR's OpenQASM 3 line comment stops at CR: the declaration is real code.
    text = f"OPENQASM 3.0;{newline}// note{newline}qubit[2000000000] q;{newline}"
    error = refused(Q3, text, "TOO_MANY_QUBITS", max_qubits=30)
    assert error.metadata == {"numQubits": "2000000000", "maxQubits": "30"}
    error = refused(Q3, text, "CIRCUIT_TOO_LARGE")
    assert error.metadata == {"maxOperations": str(LIMITS.max_operations)}


@pytest.mark.parametrize(
    ("language", "text"),
    [
        (Q3, "OPENQASM 3.0;\r// note\rbit[1000000] c;\r"),
        (Q3, "OPENQASM 3.0;\nbit[60000] a;\ncreg b[60000];\n"),
        (Q3, "OPENQASM 3.0;\nif (true) { bit[1000000] c; }\n"),
        (Q2, "OPENQASM 2.0;\ncreg c[1000000];\n"),
        (Q2, "OPENQASM 2.0;\r\ncreg a[60000];\r\ncreg b[60000];\r\n"),
        (Q2, "OPENQASM 2.0;\n// note\r\ncreg c[1000000];\n"),
    ],
)
def test_declared_classical_bits_are_limited(language: CircuitLanguage, text: str) -> None:
    error = refused(language, text, "CIRCUIT_TOO_LARGE", max_qubits=30)
    assert error.metadata["maxClbits"] == str(LIMITS.max_clbits)


@pytest.mark.parametrize(
    ("language", "text", "reason"),
    [
        (Q2, "OPENQASM 2.0;\nqreg q[" + "9" * 5000 + "];", "TOO_MANY_QUBITS"),
        (Q2, "OPENQASM 2.0;\ncreg c[" + "9" * 5000 + "];", "CIRCUIT_TOO_LARGE"),
        (Q2, "OPENQASM 2.0;\nqreg q[1];\nU(0, 0, 0) q[" + "9" * 5000 + "];", "INVALID_QASM"),
        (Q2, "OPENQASM 2.0;\nqreg q[1];\nU(0, 0, 0) q[99999999999999999999];", "INVALID_QASM"),
        (Q2, "OPENQASM 299999999999999999999.0;\nqreg q[1];", "INVALID_QASM"),
        (Q3, "OPENQASM 3.0;\nqubit[" + "9" * 5000 + "] q;", "INVALID_QASM"),
        (Q3, "OPENQASM 3.0;\nqubit[99999999999999999999] q;", "TOO_MANY_QUBITS"),
    ],
)
def test_huge_numbers_are_client_errors(language: CircuitLanguage, text: str, reason: str) -> None:
    # Python refuses int() of 4300+ digits, and Qiskit's reader panics past 64 bits.
    refused(language, text, reason, max_qubits=30)


def test_the_clbit_limit_is_configurable() -> None:
    limits = CircuitLimits(max_clbits=8)
    parsed(Q3, H3 + "bit[4] a; bit[3] b; bit c;", limits)
    error = refused(Q3, H3 + "bit[4] a; bit[4] b; bit c;", "CIRCUIT_TOO_LARGE", limits)
    assert error.metadata == {"numClbits": "9", "maxClbits": "8"}
    refused(Q2, "OPENQASM 2.0;\ncreg a[5];\ncreg b[4];", "CIRCUIT_TOO_LARGE", limits)


def test_qasm2_comment_ends_at_lf_only_as_in_qiskits_lexer() -> None:
    # The declaration hides in the comment for Qiskit's reader too, so nothing is allocated.
    circuit = parsed(Q2, "OPENQASM 2.0;\n// note\r qreg q[2000000000];\nqreg r[2];\n")
    assert circuit.num_qubits == 2


def test_physical_qubits_count_before_the_importer_creates_them() -> None:
    refused(Q3, "OPENQASM 3.0;\nx $2000000000;", "TOO_MANY_QUBITS", max_qubits=30)
    refused(Q3, "OPENQASM 3.0;\nU(0, 0, 0) $2000000000;", "CIRCUIT_TOO_LARGE")


@pytest.mark.parametrize(
    ("language", "text"),
    [
        (Q3, "OPENQASM 3.0;\nqubit[2 * 1000000000] q;"),
        (Q3, "OPENQASM 3.0;\nbit[n] c;"),
        (Q2, "OPENQASM 2.0;\nqreg q[2*10];"),
        (Q2, "OPENQASM 2.0;\nqreg q[1e9];"),
        (Q2, "OPENQASM 2.0;\nqreg q;"),
        (Q2, "OPENQASM 2.0;\nqreg include[2];"),
    ],
)
def test_register_sizes_must_be_integer_literals(language: CircuitLanguage, text: str) -> None:
    error = refused(language, text, "INVALID_QASM")
    assert "line 2" in error.message


def test_aliases_are_bounded_before_the_importer_copies_bits() -> None:
    # `a ++ b` copies both sides; a long chain of concatenations is quadratic in the importer.
    limits = CircuitLimits(max_clbits=200)
    parsed(Q3, "OPENQASM 3.0;\nbit[200] c;\nlet a = c[0:99] ++ c[100:199];\n", limits)
    # 100 one-bit slices: 2 + 3 + ... + 100 bits copied, plus the alias itself.
    chain = " ++ ".join(f"c[{i}:{i}]" for i in range(100))
    text = f"OPENQASM 3.0;\nbit[200] c;\nlet a = {chain};\n"
    error = refused(Q3, text, "CIRCUIT_TOO_LARGE", limits)
    assert error.metadata == {"maxAliasBits": "2000"}


@pytest.mark.parametrize(
    "loop",
    [
        # Qiskit lists a range whose end does not fit 64 bits element by element: the process
        # allocates until it aborts.
        "for int i in [0:2:100000000000000000000000000000] { }",
        "for int i in {1, 100000000000000000000000} { x q; }",
        "for int i in [0:2 * 5] { x q; }",
    ],
)
def test_loop_bounds_must_be_small_literals(loop: str) -> None:
    error = refused(Q3, H3 + "qubit q;\n" + loop, "UNSUPPORTED_FEATURE")
    assert error.metadata == {"feature": "for_loop_bounds"}


def test_an_empty_loop_still_costs_a_step_per_iteration() -> None:
    refused(Q3, H3 + "qubit q;\nfor int i in [0:1000000000000] { }", "CIRCUIT_TOO_LARGE")
    circuit = parsed(Q3, H3 + "qubit q;\nfor int i in [0:9] { }")
    assert fe.tally_operations(circuit) == fe.OperationCount(total=11, in_definitions=0)


# ----------------------------------------------------------- linear-time, exact lexical scan


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    ("language", "text"),
    [
        # Each took the old declaration regexes cubic time (a 2 KB one about 10 s).
        (Q2, "OPENQASM 2.0;\nqreg q[" + " " * 200_000),
        (Q2, "OPENQASM 2.0;\ncreg c[" + " 1" * 100_000),
        (Q2, "OPENQASM 2.0;\n" + "qreg q [ " * 20_000),
        (Q2, "OPENQASM 2.0;\n" + '"' * 200_000),
        (Q2, "OPENQASM 2.0;\n" + "\"'" * 100_000),
        (Q2, "OPENQASM 2.0;\n" + "include " * 25_000),
        (Q3, "OPENQASM 3.0;\nqubit[" + " " * 200_000),
        (Q3, "OPENQASM 3.0;\nbit[" + " 1" * 100_000),
        (Q3, "OPENQASM 3.0;\n" + "/*" * 100_000),
    ],
)
def test_adversarial_200kb_inputs_are_refused_promptly(
    language: CircuitLanguage, text: str
) -> None:
    # Fails with a client error (not a hang: the pytest timeout bounds the whole test).
    with pytest.raises(InvalidArgument) as info:
        fe.parse_circuit(CircuitSource(language, text), LIMITS, FIELD, max_qubits=30)
    assert info.value.code is Code.INVALID_ARGUMENT


@pytest.mark.timeout(30)
def test_qasm2_scan_of_a_megabyte_is_linear() -> None:
    line = "cx q[0], q[1]; // comment 'x\" \r\n"
    text = H2 + "qreg q[2];\n" + line * (1_000_000 // len(line))
    scan = fe._scan_qasm2(text, FIELD)
    assert scan.qubits == 2
    # `OPENQASM 2.0 ;` `include "qelib1.inc" ;` `qreg q [ 2 ] ;`, then 11 tokens a line.
    assert scan.tokens == 3 + 3 + 6 + 11 * (1_000_000 // len(line))
    # Comments ending in CR only run on to the next LF, as in Qiskit's lexer.
    many = "OPENQASM 2.0;\n" + "// \r qreg q[9];" * 50_000 + "\nqreg q[1];"
    assert fe._scan_qasm2(many, FIELD).qubits == 1


SEPARATORS = [" ", "\n", "\r", "\r\n", "\t", "// c\n", "// c\r", "// c\r\n", "/* c */", "//\r\n"]


def test_qasm2_scan_sees_every_include_qiskits_reader_would_follow(tmp_path: Path) -> None:
    # Differential: Qiskit's real reader with an include path holding the file, against the
    # scan. Wherever the reader would open the file, the scan must already have refused.
    (tmp_path / "leak.inc").write_text("gate leak a { U(0, 0, 0) a; }\n")
    opened = 0
    for before, inside, after in itertools.product(SEPARATORS, SEPARATORS[:6], SEPARATORS):
        text = f'OPENQASM 2.0;{before}include{inside}"leak.inc"{after};\nqreg q[1];\nleak q[0];\n'
        try:
            qiskit.qasm2.loads(text, include_path=(str(tmp_path),))
            reader_opened = True
        except qiskit.qasm2.QASM2ParseError as exc:
            # Errors inside the included file carry its name and a position.
            reader_opened = re.search(r"leak\.inc:\d+,\d+", str(exc)) is not None
        try:
            fe._scan_qasm2(text, FIELD)
            scan_refused = False
        except InvalidArgument as exc:
            scan_refused = exc.reason == "INCLUDE_NOT_ALLOWED"
        if reader_opened:
            opened += 1
            assert scan_refused, repr(text)
    assert opened > 100  # the product really exercised the reader's include path


def test_qasm2_reader_gets_no_include_path(tmp_path: Path) -> None:
    # Defence in depth: a relative include is not found even if a scan had missed it.
    (tmp_path / "x.inc").write_text("TOPSECRET_c9;\n")
    with pytest.raises(InvalidArgument) as info:
        fe._loads_qasm2('OPENQASM 2.0;\ninclude "x.inc";\nqreg q[1];\n', FIELD)
    assert info.value.reason == "INVALID_QASM"
    assert "TOPSECRET" not in info.value.message


# -------------------------------------------------------------- nested definitions, compile cost


def nested(depth: int, fan: int, *, qasm3: bool) -> str:
    header = H3 + "qubit[2] q;\n" if qasm3 else H2 + "qreg q[2];\n"
    lines = ["gate g0(t) a, b { rx(t) a; cx a, b; }"]
    calls = " ".join(["g{0}(t) a, b;"] * fan)
    lines += [f"gate g{i}(t) a, b {{ {calls.format(i - 1)} }}" for i in range(1, depth + 1)]
    return header + "\n".join(lines) + f"\ng{depth}(0.5) q[0], q[1];\n"


@pytest.mark.parametrize("qasm3", [False, True])
def test_definitions_unrolling_to_too_much_compile_work_are_refused(qasm3: bool) -> None:
    # 2 * 2^k operations, far under max_operations; at the defaults k = 14 (32768) takes
    # tens of seconds to transpile and k = 30 hours.
    language = Q3 if qasm3 else Q2
    limits = CircuitLimits(max_definition_operations=2000)
    error = refused(language, nested(10, 2, qasm3=qasm3), "CIRCUIT_TOO_COMPLEX", limits)
    assert error.metadata == {"maxDefinitionOperations": "2000"}
    parsed(language, nested(9, 2, qasm3=qasm3), limits)  # 1024
    # At the defaults, well before the work is done.
    refused(language, nested(14, 2, qasm3=qasm3), "CIRCUIT_TOO_COMPLEX")


def test_the_total_is_reported_before_the_definition_limit() -> None:
    error = refused(Q2, nested(30, 2, qasm3=False), "CIRCUIT_TOO_LARGE")
    assert error.metadata == {"maxOperations": str(LIMITS.max_operations)}


@pytest.mark.parametrize("qasm3", [False, True])
def test_definition_nesting_depth_is_limited(qasm3: bool) -> None:
    language = Q3 if qasm3 else Q2
    parsed(language, nested(fe.MAX_DEFINITION_DEPTH - 1, 1, qasm3=qasm3))
    error = refused(
        language, nested(fe.MAX_DEFINITION_DEPTH, 1, qasm3=qasm3), "CIRCUIT_TOO_COMPLEX"
    )
    assert str(fe.MAX_DEFINITION_DEPTH) in error.message


def test_standard_gates_are_not_definition_operations() -> None:
    text = H2 + "qreg q[2];\n" + "cx q[0], q[1];\n" * 30_000
    circuit = parsed(Q2, text, CircuitLimits(max_definition_operations=10))
    assert fe.tally_operations(circuit) == fe.OperationCount(total=30_000, in_definitions=0)


def test_a_loop_body_is_compiled_once() -> None:
    text = H3 + "qubit[2] q;\ngate g a, b { cx a, b; h a; }\nfor int i in [0:99] { g q[0], q[1]; }"
    circuit = parsed(Q3, text)
    # 1 loop + 100 iterations x 2 operations; the definition's 2 operations are copied once.
    assert fe.tally_operations(circuit) == fe.OperationCount(total=201, in_definitions=2)


# ------------------------------------------------------------------------ small defects


@pytest.mark.parametrize(
    ("language", "text"),
    [
        (Q3, "// only a comment"),
        (Q3, "/* a block */\n// and a line\r\n"),
        (Q2, "// only a comment"),
        (Q2, "// one\r// two\n"),
    ],
)
def test_a_source_of_only_comments_has_no_statements(language: CircuitLanguage, text: str) -> None:
    error = refused(language, text, "INVALID_QASM")
    assert "no statements" in error.message


@pytest.mark.parametrize(
    ("language", "text"),
    [
        (Q3, H3 + "qubit q;\nrx(1e400) q;"),
        (Q3, H3 + "qubit q;\nrx(inf) q;"),
        (Q3, H3 + "qubit q;\nrx(1e300 * 1e300) q;"),
        (Q3, H3 + "qubit q;\ngphase(1e300 * 1e300);"),
        (Q3, H3 + "qubit q;\ndelay[1e400ns] q;"),
        (Q3, H3 + "qubit q;\ngate g(t) a { rx(t * 1e300) a; }\ng(1e300) q;"),
        (Q3, H3 + "qubit q;\npow(1e400) @ x q;"),
        (Q2, H2 + "qreg q[1];\nrx(1e400) q[0];"),
        (Q2, H2 + "qreg q[1];\nrx(inf) q[0];"),
        (Q2, H2 + "qreg q[1];\nrx(nan) q[0];"),
        (Q2, H2 + "qreg q[1];\nrx(1e300 * 1e300 - 1e300 * 1e300) q[0];"),
        (Q2, H2 + "qreg q[1];\nrx(exp(1000)) q[0];"),
        (Q2, H2 + "qreg q[1];\nrx(asin(2)) q[0];"),
        (Q2, H2 + "qreg q[1];\ngate g a { rx(1e400) a; }\ng q[0];"),
    ],
)
def test_non_finite_angles_are_refused(language: CircuitLanguage, text: str) -> None:
    refused(language, text, "NON_FINITE_ANGLE")


def test_check_finite_parameters_on_a_built_circuit() -> None:
    circuit = QuantumCircuit(1)
    circuit.rx(float("nan"), 0)
    with pytest.raises(InvalidArgument) as info:
        fe.check_finite_parameters(circuit, FIELD)
    assert info.value.reason == "NON_FINITE_ANGLE"
    fine = QuantumCircuit(1)
    fine.rx(0.5, 0)
    fe.check_finite_parameters(fine, FIELD)


@pytest.mark.parametrize(
    ("language", "text"),
    [
        (Q2, H2 + "qreg q[1];\ncreg c[1];\nx q[0];\nmeasure q[0] -> c[0];\n"),
        (Q3, H3 + "qubit[1] q;\nbit[1] c;\nx q[0];\nc[0] = measure q[0];\n"),
    ],
)
def test_a_leading_byte_order_mark_is_accepted(language: CircuitLanguage, text: str) -> None:
    circuit = parsed(language, "\ufeff" + text)
    assert dict(circuit.count_ops()) == {"x": 1, "measure": 1}


def test_a_byte_order_mark_elsewhere_is_still_refused() -> None:
    refused(Q2, H2 + "qreg q[1];\n\ufeffx q[0];\n", "INVALID_QASM")


# ------------------------------------------------------------------- loose classical bits


def test_loose_bits_are_one_bit_registers_named_after_their_variable() -> None:
    text = (
        H3 + "qubit[3] q;\nbit first;\nbit[2] pair;\nbit last;\n"
        "first = measure q[0];\npair = measure q[1:2];\nlast = measure q[2];\n"
    )
    circuit = parsed(Q3, text)
    assert not fe.has_bits_outside_registers(circuit)
    assert fe.result_registers(circuit) == (
        ("pair", (1, 2)),
        ("first", (0,)),
        ("last", (3,)),
    )
    # Transpiling keeps classical bits, their order and the registers.
    out = transpile(circuit, basis_gates=["u", "cx", "measure"], seed_transpiler=1)
    assert fe.result_registers(out) == fe.result_registers(circuit)


def test_registers_keep_the_names_the_program_declares() -> None:
    # The reader would escape a name not starting with a lowercase letter ("_c" as "esc__c"),
    # and then refuse a program that also declares "esc__c" as declaring it twice.
    text = (
        H3 + "qubit[2] _Q; bit[2] _c; bit[1] Big; bit[1] esc__c;\n"
        "x _Q[0]; _c = measure _Q; Big[0] = measure _Q[0]; esc__c[0] = measure _Q[1];\n"
    )
    circuit = parsed(Q3, text)
    assert [r.name for r in circuit.qregs] == ["_Q"]
    assert fe.result_registers(circuit) == (("_c", (0, 1)), ("Big", (2,)), ("esc__c", (3,)))


def test_an_alias_of_one_qubit_is_unsupported_not_invalid() -> None:
    # Valid OpenQASM 3 that Qiskit cannot represent (it aliases registers only).
    refused(Q3, H3 + "qubit[2] q;\nlet a = q[1];\nx a;\n", "UNSUPPORTED_FEATURE")


def test_loose_bits_and_registers_keep_their_declared_names_side_by_side() -> None:
    # Names the reader once escaped (`C` as `esc_C`) next to loose bits spelled that way.
    circuit = parsed(Q3, H3 + "bit[2] C;\nbit esc_C;\nbit esc_C_1;\nqubit q;\n")
    assert fe.result_registers(circuit) == (
        ("C", (0, 1)),
        ("esc_C", (2,)),
        ("esc_C_1", (3,)),
    )


def test_result_registers_of_a_circuit_built_elsewhere() -> None:
    circuit = QuantumCircuit(1)
    circuit.add_register(ClassicalRegister(1, "clbit1"))
    circuit.add_bits([Clbit()])
    assert fe.result_registers(circuit) == (("clbit1", (0,)), ("clbit1_1", (1,)))
    assert fe.has_bits_outside_registers(circuit)


def test_aliases_report_their_bits_too() -> None:
    text = H3 + "qubit[2] q;\nbit[2] c;\nbit d;\nbit[1] e;\nlet both = c ++ e;\n"
    assert fe.result_registers(parsed(Q3, text)) == (
        ("c", (0, 1)),
        ("e", (3,)),
        ("both", (0, 1, 3)),
        ("d", (2,)),
    )


def test_numpy_parameter_types_are_understood() -> None:
    assert fe._finite(np.float64(1.0))
    assert not fe._finite(np.float32("inf"))
    assert fe._finite(10**300)
    assert not fe._finite(10**400)  # past the largest double: no simulator can use it
    assert not fe._finite(np.array([1.0, np.nan]))


# --------------------------------------------------------------------- near-valid programs

_BASES = {
    Q3: [
        H3 + "qubit[3] q; bit[3] c; bit d; h q[0]; cx q[0], q[1]; rx(pi/2) q[2];\n"
        "c = measure q; d = measure q[0];\n",
        H3 + "input float theta; qubit[2] q; bit[2] c; rz(theta) q[0]; c[0] = measure q[0];\n"
        "if (c[0]) { x q[1]; } else { z q[1]; } c[1] = measure q[1];\n",
        H3 + "gate g(a) x, y { rx(a) x; cx x, y; } qubit[2] q; g(0.5) q[0], q[1];\n"
        "for int i in [0:3] { g(i * 0.1) q[0], q[1]; }\n",
        H3 + "qubit[2] q; bit[2] c; let a = c[0:1]; ctrl @ x q[0], q[1]; inv @ s q[1];\n"
        "reset q; barrier q; delay[10ns] q[0]; c = measure q;\n",
        "OPENQASM 3.0;\nx $0; U(0.1, 0.2, 0.3) $1; bit b; b = measure $1;\n",
    ],
    Q2: [
        H2 + "qreg q[3]; creg c[3]; h q[0]; cx q[0],q[1]; u(0.1,0.2,0.3) q[2]; sx q[1];\n"
        "swap q[0],q[2]; measure q -> c; if (c==1) x q[0];\n",
        H2 + "gate g(a) x, y { rx(a) x; cx x, y; } qreg q[2]; g(0.5) q[0], q[1]; barrier q;\n"
        "reset q[0]; opaque delay(t) a; delay(10) q[0];\n",
        "OPENQASM 2.0;\nqreg q[2]; creg c[2]; U(0.1,0.2,asin(0.5)) q[0]; CX q[0], q[1];\n"
        "measure q[0] -> c[0];\n",
    ],
}
_SNIPPETS = [
    "\r",
    "\n",
    "\r\n",
    "//",
    "/*",
    "*/",
    '"',
    "'",
    "$",
    "$99999999999",
    "[",
    "]",
    "{",
    "}",
    "(",
    ")",
    ";",
    ",",
    "1e400",
    "99999999999999999999",
    "-",
    "include",
    'include "x";',
    "qubit",
    "qreg q[5];",
    "creg",
    "bit",
    "gate",
    "let",
    "++",
    "\ufeff",
    "\u00e9",
    "\x00",
    "inf",
    "nan",
    "measure",
    "->",
    "==",
    "if",
    "for",
    "while",
    "ctrl @",
    "pow(",
    "@",
    "#pragma",
    "OPENQASM",
    "0x",
    "1_0",
    ".",
    "U",
    "CX",
    "0",
    "1.5",
    "box",
    "def",
    "const",
    "output",
    "input",
    "gphase",
    "switch",
    "bit[100000000] z;",
    "qubit[3000000000] r;",
]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_near_valid_programs_get_a_circuit_or_a_client_error(data: st.DataObject) -> None:
    language = data.draw(st.sampled_from([Q2, Q3]))
    text = data.draw(st.sampled_from(_BASES[language]))
    for _ in range(data.draw(st.integers(1, 3))):
        at = data.draw(st.integers(0, len(text)))
        if data.draw(st.booleans()):
            text = text[:at] + data.draw(st.sampled_from(_SNIPPETS)) + text[at:]
        else:
            text = text[:at] + text[at + data.draw(st.integers(1, 6)) :]
    limits = CircuitLimits()
    try:
        circuit = fe.parse_circuit(CircuitSource(language, text), limits, FIELD, max_qubits=20)
    except InvalidArgument as error:
        assert error.code is Code.INVALID_ARGUMENT
        return
    fe.detect_features(circuit)
    fe.check_finite_parameters(circuit, FIELD)
    assert not fe.has_bits_outside_registers(circuit)
    assert sum(len(bits) for _, bits in fe.result_registers(circuit)) >= circuit.num_clbits


def test_a_gate_used_without_its_parameters_is_a_client_error() -> None:
    # Found by the fuzz test above: the QASM 2 reader accepts the call and fails only when the
    # gate's definition is first built (lazily), which used to escape as QASM2ParseError.
    text = (
        'OPENQASM 2.0;\ninclude "qelib1.inc";\ngate g(a) x, y { rx(a) x; cx x, y; }\n'
        "qreg q[2];\ng q[0], q[1];\n"
    )
    with pytest.raises(InvalidArgument) as refused:
        fe.parse_circuit(CircuitSource(Q2, text), CircuitLimits(), FIELD, max_qubits=20)
    assert refused.value.reason == "INVALID_QASM" and "'g'" in refused.value.message


def test_declared_qubits_and_clbits_together_count_against_the_operation_limit() -> None:
    # Without a backend's qubit count, what is allocated is bounded by max_operations: the
    # clbits count too (each is allocated like a qubit).
    limits = CircuitLimits(max_operations=10, max_clbits=100)
    parsed(Q3, H3 + "qubit[6] q; bit[4] c;", limits)
    error = refused(Q3, H3 + "qubit[6] q; bit[5] c;", "CIRCUIT_TOO_LARGE", limits)
    assert "11 bits" in error.message


def test_too_many_qubits_is_refused_at_one_past_the_backend() -> None:
    fe.parse_circuit(CircuitSource(Q3, H3 + "qubit[5] q;"), LIMITS, FIELD, max_qubits=5)
    refused(Q3, H3 + "qubit[6] q;", "TOO_MANY_QUBITS", max_qubits=5)


# ------------------------------------------------- review H: standard-named gate rename, gphase

_H_GATE = "gate h a { U(0, 0, 0) a; }\n"


@pytest.mark.parametrize(
    "body",
    [
        "qubit[1] q;\ninput float h;\n" + _H_GATE + "h q[0];\n",
        "qubit[1] h;\n" + _H_GATE + "h h[0];\n",
        "qubit[1] q;\n" + _H_GATE + "bit h;\nh q[0];\nh = measure q[0];\n",
        "qubit[1] q;\n" + _H_GATE + "let h = q;\nh q[0];\n",
        "qubit[1] q;\n" + _H_GATE + 'include "stdgates.inc";\nh q[0];\n',
        # The loop variable hides the gate in the loop body: `h q[0]` calls an int.
        "qubit[1] q;\n" + _H_GATE + "for int h in [0:1] { h q[0]; }\n",
    ],
    ids=["input-before", "qubit-before", "bit-after", "alias-after", "include-after", "loop-var"],
)
def test_a_user_gate_sharing_its_name_with_another_symbol_stays_refused(body: str) -> None:
    refused(Q3, "OPENQASM 3.0;\n" + body, "INVALID_QASM")


def test_a_renamed_gate_keeps_the_programs_name_in_the_readers_refusals() -> None:
    # The fresh name (`h_def`) never reaches the client.
    for body in (
        "qubit[1] q;\n" + _H_GATE + "gate g a { h(0.1) a; }\ng q[0];\n",
        "qubit[1] q;\n" + _H_GATE + _H_GATE + "h q[0];\n",
    ):
        error = refused(Q3, "OPENQASM 3.0;\n" + body, "INVALID_QASM")
        assert "h_def" not in error.message, error.message


def test_the_fresh_name_avoids_every_name_in_the_program() -> None:
    # A user gate already called h_def, and a bit called h_def_: the renamed `h` takes neither.
    text = (
        "OPENQASM 3.0;\nqubit[1] q;\nbit h_def_;\n" + _H_GATE + "gate h_def a { h a; }\n"
        "h_def q[0];\nh q[0];\nh_def_ = measure q[0];\n"
    )
    circuit = parsed(Q3, text)
    names = [i.operation.name for i in circuit.data]
    assert names[0] == "h_def" and names[1] not in {"h", "h_def", "h_def_"}, names
    assert fe.result_registers(circuit) == (("h_def_", (0,)),)


def test_controlled_gphase_on_every_operand_is_a_phase_on_all_ones() -> None:
    from qiskit.quantum_info import Operator

    circuit = parsed(Q3, H3 + "qubit[2] q;\nnegctrl @ ctrl @ gphase(0.5) q[0], q[1];\n")
    # negctrl on q[0], ctrl on q[1]: the phase lands on |q1 q0> = |10>.
    expected = np.diag([1, 1, np.exp(0.5j), 1])
    assert np.allclose(Operator(circuit).data, expected)
    # Broadcast over a register: one controlled phase per qubit.
    circuit = parsed(Q3, H3 + "qubit[2] q;\nctrl @ gphase(0.5) q;\n")
    assert np.allclose(np.diag(Operator(circuit).data), [1, np.exp(0.5j), np.exp(0.5j), np.exp(1j)])
    refused(Q3, H3 + "ctrl @ gphase(0.5);\n", "INVALID_QASM")
