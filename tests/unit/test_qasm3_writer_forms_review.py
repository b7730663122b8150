"""Review: forms `qiskit.qasm3.dumps` writes that the gateway's OpenQASM 3 front end refused,
though the same circuits run when sent as QPY ("what qiskit.qasm2.dumps / qasm3.dumps emit must
run").

Each circuit is deterministic (X gates and measurements of basis states), is written by
`qiskit.qasm3.dumps`, compiled as a compile worker would, run on the Aer adapter in process and
compared with hard-coded bitstrings (never with another run of the same SDK path).

Findings: (1) a `switch` (dumps writes `int switch_dummy; switch_dummy = c; switch
(switch_dummy) {...}`) was refused UNSUPPORTED_FEATURE ("declarations of type 'int'"); (2) an
expression condition `if (c[0] && c[1])` ("unhandled binary operator '&&'"), and `||`, `!`,
`!=`, `<`, `&`, ... on bits and registers (read now as `expr` conditions); a classical `bool`
variable ("declarations of type 'bool'") is still refused, as QPY refuses it, because Aer cannot
run one (strict xfail, a documented limit); (3) gate angles
written with functions of a parameter (`exp`, `log`, `sin`, ...) or `**`; (4) the limit on
OpenQASM 3 statements counted semicolons only, so empty blocks (`if (c) {}`, `case 0 {}`) were
parsed at ~0.25 ms each, up to the source limit, before any refusal; (5) a register read as a
bool in an expression condition (`expr.logic_and(c, True)`, `expr.logic_not(c)`, a cast), sent
as QPY, took the wrong branch on Aer, which evaluates that cast inverted.
"""

from __future__ import annotations

import pickle
import re
from collections import Counter
from collections.abc import Callable

import numpy as np
import pytest
import qiskit.qasm3
from qiskit import ClassicalRegister, QuantumCircuit, QuantumRegister
from qiskit.circuit import Parameter, ParameterExpression
from qiskit.circuit.classical import expr, types

from gateway.backends.aer.adapter import AerAdapter
from gateway.backends.base import CircuitLimits
from gateway.backends.qiskit import frontend
from gateway.backends.qiskit.frontend import parse_circuit
from gateway.domain.circuits import Bindings, CircuitLanguage, CircuitSource, SamplerPub
from gateway.domain.errors import InvalidArgument
from gateway.domain.jobs import JobOptions, JobSpec, SamplerResult
from tests.adapters import adapter_context, prepare_in_process
from tests.targets import qpy_bytes

pytestmark = pytest.mark.timeout(60)

SHOTS = 64
_STD = 'OPENQASM 3.0;\ninclude "stdgates.inc";\n'


@pytest.fixture(scope="module")
def aer() -> AerAdapter:
    return AerAdapter(adapter_context("aer-test"))


def _run(
    adapter: AerAdapter,
    text: str | CircuitSource,
    names: tuple[str, ...] = (),
    values: list[float] | None = None,
) -> Counter[str]:
    """Counts of the 3-bit register `r` (bitstring, r[2] first); `text` is OpenQASM 3."""
    bindings = (
        Bindings() if values is None else Bindings(names, (), np.array(values, dtype=np.float64))
    )
    source = CircuitSource(CircuitLanguage.QASM3, text) if isinstance(text, str) else text
    pub = SamplerPub(source, bindings=bindings, shots=SHOTS)
    spec = JobSpec(backend=adapter.context.name, pubs=(pub,), options=JobOptions())
    prepared = prepare_in_process(adapter, spec, 7)
    result = adapter.execute(pickle.loads(pickle.dumps(prepared.payload))).result.pubs[0]
    assert isinstance(result, SamplerResult)
    (register,) = [r for r in result.registers if r.name == "r"]
    assert register.samples is not None
    rows = register.samples.reshape(-1, register.samples.shape[-1])
    return Counter(format(int.from_bytes(bytes(row), "big"), "03b") for row in rows)


def _refusal(text: str) -> InvalidArgument:
    with pytest.raises(InvalidArgument) as info:
        parse_circuit(CircuitSource(CircuitLanguage.QASM3, text), CircuitLimits(), "f")
    return info.value


class _NoParser:
    """Stands in for the OpenQASM 3 parser: a refusal before parsing never builds one."""

    def __init__(self, *args: object) -> None:
        raise AssertionError("the program reached the parser")


def _refused_unparsed(text: str, monkeypatch: pytest.MonkeyPatch) -> InvalidArgument:
    monkeypatch.setattr(frontend, "qasm3Parser", _NoParser)
    return _refusal(text)


# ----------------------------------------------------------------- (1) switch


def _switch_on_register(prepared: int) -> QuantumCircuit:
    """c holds `prepared`; case 0 flips q[2], cases 1 and 2 flip q[1], default flips q[0]."""
    q, c, r = QuantumRegister(3, "q"), ClassicalRegister(2, "c"), ClassicalRegister(3, "r")
    circuit = QuantumCircuit(q, c, r)
    for bit in range(2):
        if prepared >> bit & 1:
            circuit.x(bit)
    circuit.measure([0, 1], c)
    circuit.reset([0, 1])
    with circuit.switch(c) as case:
        with case(0):
            circuit.x(2)
        with case(1, 2):
            circuit.x(1)
        with case(case.DEFAULT):
            circuit.x(0)
    circuit.measure(q, r)
    return circuit


@pytest.mark.parametrize(("prepared", "expected"), [(0, "100"), (1, "010"), (2, "010"), (3, "001")])
def test_switch_on_a_register_written_by_dumps_runs(
    aer: AerAdapter, prepared: int, expected: str
) -> None:
    text = qiskit.qasm3.dumps(_switch_on_register(prepared))
    assert "switch (" in text and "int switch_dummy;" in text  # the form under test
    assert _run(aer, text) == Counter({expected: SHOTS})


@pytest.mark.parametrize(("prepared", "expected"), [(0, "010"), (1, "101")])
def test_switch_on_a_clbit_written_by_dumps_runs(
    aer: AerAdapter, prepared: int, expected: str
) -> None:
    q, c, r = QuantumRegister(3, "q"), ClassicalRegister(1, "c"), ClassicalRegister(3, "r")
    circuit = QuantumCircuit(q, c, r)
    if prepared:
        circuit.x(0)
    circuit.measure(0, c[0])
    with circuit.switch(c[0]) as case:
        with case(True):
            circuit.x(2)
        with case(case.DEFAULT):
            circuit.x(1)
    circuit.measure(q, r)
    assert _run(aer, qiskit.qasm3.dumps(circuit)) == Counter({expected: SHOTS})


def test_two_and_nested_switches_written_by_dumps_run(aer: AerAdapter) -> None:
    # dumps declares one `switch_dummy` per switch (nested ones are assigned inside a case).
    q, c, r = QuantumRegister(3, "q"), ClassicalRegister(2, "c"), ClassicalRegister(3, "r")
    circuit = QuantumCircuit(q, c, r)
    circuit.x(1)
    circuit.measure([0, 1], c)  # c = 2
    with circuit.switch(c) as case:
        with case(2), circuit.switch(c[1]) as inner:
            with inner(True):
                circuit.x(2)
            with inner(inner.DEFAULT):
                circuit.x(0)
        with case(case.DEFAULT):
            circuit.x(0)
    with circuit.switch(c[0]) as case, case(False):
        circuit.x(0)
    circuit.measure(q, r)
    assert _run(aer, qiskit.qasm3.dumps(circuit)) == Counter({"111": SHOTS})


def test_switch_with_100000_cases_is_refused_before_parsing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # No semicolon per case: the statement limit counted semicolons only, and ANTLR parses an
    # empty block in ~0.25 ms (1 MiB of them took tens of seconds). Blocks count now.
    cases = "case 0{}" * 100_000
    text = _STD + f"qubit q; bit[17] c; int s; s = c; switch (s) {{ {cases} }}"
    refusal = _refused_unparsed(text, monkeypatch)
    assert refusal.reason == "CIRCUIT_TOO_LARGE", refusal.message
    assert "statements" in refusal.message


def test_empty_blocks_count_as_statements(monkeypatch: pytest.MonkeyPatch) -> None:
    # The same without a switch: 30,000 `if (c) {}` took ~8 s to parse and were admitted.
    refusal = _refused_unparsed(_STD + "qubit q; bit c;" + "if(c){}" * 30_000, monkeypatch)
    assert refusal.reason == "CIRCUIT_TOO_LARGE", refusal.message


def test_switch_case_values_are_bounded() -> None:
    values = ", ".join(str(i) for i in range(5000))
    text = _STD + f"qubit q; bit[13] c; int s; s = c; switch (s) {{ case {values} {{ x q; }} }}"
    refusal = _refusal(text)
    assert refusal.reason == "CIRCUIT_TOO_LARGE", refusal.message
    assert "case values" in refusal.message


def test_switch_on_a_huge_integer_is_refused() -> None:
    # A case value no register width can hold: refused by name, not an SDK error.
    text = _STD + f"qubit q; bit[2] c; int s; s = c; switch (s) {{ case {10**40} {{ x q; }} }}"
    refusal = _refusal(text)
    assert refusal.reason == "INVALID_QASM", refusal.message
    assert "case" in refusal.message


def test_switch_on_a_value_not_read_from_bits_is_refused() -> None:
    # An `int` that is not the bits' copy before the switch (or is used elsewhere): Qiskit
    # switches on bits and registers only.
    text = _STD + "qubit q; int s; s = 3; switch (s) { case 3 { x q; } }"
    refusal = _refusal(text)
    assert refusal.reason == "UNSUPPORTED_FEATURE", refusal.message


def test_deeply_nested_switches_are_refused_as_too_complex() -> None:
    depth = 200
    body = "x q;"
    for _ in range(depth):
        body = f"s = c; switch (s) {{ case 1 {{ {body} }} }}"
    refusal = _refusal(_STD + f"qubit q; bit c; int s; {body}")
    assert refusal.reason == "CIRCUIT_TOO_COMPLEX", refusal.message


# ----------------------------------------------------------------- (2) expression conditions


def _logic_and_circuit() -> QuantumCircuit:
    q, c, r = QuantumRegister(3, "q"), ClassicalRegister(2, "c"), ClassicalRegister(3, "r")
    circuit = QuantumCircuit(q, c, r)
    circuit.x([0, 1])
    circuit.measure([0, 1], c)
    with circuit.if_test(expr.logic_and(c[0], c[1])):
        circuit.x(2)
    circuit.measure(q, r)
    return circuit


def test_logic_and_condition_written_by_dumps_runs(aer: AerAdapter) -> None:
    text = qiskit.qasm3.dumps(_logic_and_circuit())
    assert "if (c[0] && c[1])" in text  # the form under test
    assert _run(aer, text) == Counter({"111": SHOTS})


def test_logic_and_condition_runs_the_same_as_qpy(aer: AerAdapter) -> None:
    # QPY carried expression conditions before: both formats now agree on the circuit.
    source = CircuitSource(CircuitLanguage.QPY, data=qpy_bytes(_logic_and_circuit()))
    assert _run(aer, source) == Counter({"111": SHOTS})


Condition = Callable[[ClassicalRegister], expr.Expr]

# (condition on the 2-bit register c, the value c holds, whether the branch is taken); each
# is a form the importer refused before ("unhandled binary operator", "only '==' is supported
# in register comparisons", "conditions must be ...").
_CONDITIONS: list[tuple[str, Condition, int, bool]] = [
    ("or", lambda c: expr.logic_or(c[1], c[0]), 1, True),
    ("or-false", lambda c: expr.logic_or(c[1], expr.logic_not(c[0])), 1, False),
    ("not-and", lambda c: expr.logic_not(expr.logic_and(c[0], c[1])), 1, True),
    ("not-equal-register", lambda c: expr.not_equal(c, 1), 1, False),
    ("not-equal-register-true", lambda c: expr.not_equal(c, 1), 2, True),
    ("less", lambda c: expr.less(c, 2), 1, True),
    ("less-false", lambda c: expr.less(c, 2), 2, False),
    ("less-equal", lambda c: expr.less_equal(c, 0), 1, False),
    ("greater", lambda c: expr.greater(c, 1), 2, True),
    ("greater-equal", lambda c: expr.greater_equal(c, 2), 1, False),
    ("bit-and", lambda c: expr.equal(expr.bit_and(c, 2), 0), 1, True),
    ("bit-or", lambda c: expr.equal(expr.bit_or(c, 2), 3), 1, True),
    ("bit-xor", lambda c: expr.equal(expr.bit_xor(c, 3), 2), 1, True),
    ("bit-not-register", lambda c: expr.equal(expr.bit_not(c), 2), 1, True),
    ("bits-differ", lambda c: expr.not_equal(c[0], c[1]), 1, True),
    ("bits-and", lambda c: expr.bit_and(c[0], c[1]), 1, False),
    # A register read as a bool is `c != 0` (Aer inverts Qiskit's cast of one: see below).
    ("register-as-bool", lambda c: expr.logic_and(c, True), 2, True),
    ("register-as-bool-false", lambda c: expr.logic_or(c, False), 0, False),
    ("not-register", lambda c: expr.logic_not(c), 0, True),
    ("not-register-false", lambda c: expr.logic_not(c), 3, False),
    ("explicit-cast", lambda c: expr.cast(c, types.Bool()), 1, True),
    ("explicit-cast-false", lambda c: expr.cast(c, types.Bool()), 0, False),
]


@pytest.mark.parametrize(
    ("condition", "prepared", "taken"),
    [case[1:] for case in _CONDITIONS],
    ids=[case[0] for case in _CONDITIONS],
)
def test_expression_conditions_written_by_dumps_run(
    aer: AerAdapter, condition: Condition, prepared: int, taken: bool
) -> None:
    # c holds `prepared`; the branch flips q[2], the else branch q[1].
    q, c, r = QuantumRegister(3, "q"), ClassicalRegister(2, "c"), ClassicalRegister(3, "r")
    circuit = QuantumCircuit(q, c, r)
    for bit in range(2):
        if prepared >> bit & 1:
            circuit.x(bit)
    circuit.measure([0, 1], c)
    circuit.reset([0, 1])
    with circuit.if_test(condition(c)) as else_:
        circuit.x(2)
    with else_:
        circuit.x(1)
    circuit.measure(q, r)
    assert _run(aer, qiskit.qasm3.dumps(circuit)) == Counter({"100" if taken else "010": SHOTS})


@pytest.mark.parametrize(
    ("condition", "prepared", "taken"),
    [
        (lambda c: expr.logic_and(c, True), 2, True),
        (lambda c: expr.logic_and(c, True), 0, False),
        (lambda c: expr.logic_not(c), 0, True),
        (lambda c: expr.logic_not(expr.bit_and(c, 2)), 1, True),
        (lambda c: expr.cast(c, types.Bool()), 3, True),
    ],
    ids=["and", "and-zero", "not", "not-of-bit-and", "cast"],
)
def test_register_read_as_bool_in_qpy_runs_right(
    aer: AerAdapter, condition: Condition, prepared: int, taken: bool
) -> None:
    # Finding: Aer (0.18) evaluates Qiskit's cast of an unsigned integer to bool inverted (true
    # exactly when it is 0), so a QPY `if_test(expr.logic_and(c, True))` took the other branch.
    # The front end now writes such casts `c != 0` before Aer sees them.
    q, c, r = QuantumRegister(3, "q"), ClassicalRegister(2, "c"), ClassicalRegister(3, "r")
    circuit = QuantumCircuit(q, c, r)
    for bit in range(2):
        if prepared >> bit & 1:
            circuit.x(bit)
    circuit.measure([0, 1], c)
    circuit.reset([0, 1])
    with circuit.if_test(condition(c)) as else_:
        circuit.x(2)
    with else_:
        circuit.x(1)
    circuit.measure(q, r)
    source = CircuitSource(CircuitLanguage.QPY, data=qpy_bytes(circuit))
    assert _run(aer, source) == Counter({"100" if taken else "010": SHOTS})


def test_while_loop_on_an_expression_written_by_dumps_runs(aer: AerAdapter) -> None:
    # c = 1: `!c[1] && c < 3` holds once; the body sets c[1] (and q[1]), ending the loop.
    q, c, r = QuantumRegister(3, "q"), ClassicalRegister(2, "c"), ClassicalRegister(3, "r")
    circuit = QuantumCircuit(q, c, r)
    circuit.x(0)
    circuit.measure([0, 1], c)
    with circuit.while_loop(expr.logic_and(expr.logic_not(c[1]), expr.less(c, 3))):
        circuit.x(1)
        circuit.measure(1, c[1])
    circuit.measure(q, r)
    text = qiskit.qasm3.dumps(circuit)
    assert "while (!c[1] && c < 3)" in text
    assert _run(aer, text) == Counter({"011": SHOTS})


@pytest.mark.parametrize(
    ("condition", "reason"),
    [
        ("c[0] && c[1] + 1 == 2", "UNSUPPORTED_FEATURE"),  # arithmetic on registers
        ("c << 1 == 2", "UNSUPPORTED_FEATURE"),  # shifts: not among the condition operators
        ("c[0] && c == 18446744073709551616", "UNSUPPORTED_FEATURE"),  # past 64 bits
        ("c[0] && theta", "UNSUPPORTED_FEATURE"),  # a float parameter
        ("c[0] && d", "INVALID_QASM"),  # undefined
        ("c[0] < 1", "INVALID_QASM"),  # Qiskit's typing: a bit is no number
    ],
)
def test_unsupported_conditions_are_refused_specifically(condition: str, reason: str) -> None:
    text = _STD + f"input float theta; qubit q; bit[2] c; if ({condition}) {{ x q; }}"
    refusal = _refusal(text)
    assert refusal.reason == reason, refusal.message


def test_condition_operators_count_against_the_operation_limit() -> None:
    # Aer evaluates every operator each time the condition is tested: they are operations.
    # Balanced (a chain this long is refused as nested too deeply already): 511 operators.
    condition = "c[0]"
    for _ in range(9):
        condition = f"({condition}) || ({condition})"
    text = _STD + f"qubit q; bit[2] c; if ({condition}) {{ x q; }}"
    with pytest.raises(InvalidArgument) as info:
        parse_circuit(
            CircuitSource(CircuitLanguage.QASM3, text), CircuitLimits(max_operations=300), "f"
        )
    assert info.value.reason == "CIRCUIT_TOO_LARGE", info.value.message


def test_equal_and_bit_not_conditions_written_by_dumps_run(aer: AerAdapter) -> None:
    # What held: `c == 3`, `~c[0]` and `!c[0]` are read by the importer.
    q, c, r = QuantumRegister(3, "q"), ClassicalRegister(2, "c"), ClassicalRegister(3, "r")
    circuit = QuantumCircuit(q, c, r)
    circuit.x(0)
    circuit.measure([0, 1], c)  # c = 1
    with circuit.if_test(expr.equal(c, 1)):
        circuit.x(2)
    with circuit.if_test(expr.bit_not(c[1])):
        circuit.x(1)
    with circuit.if_test(expr.logic_not(c[0])):
        circuit.x(0)
    circuit.measure(q, r)
    assert _run(aer, qiskit.qasm3.dumps(circuit)) == Counter({"111": SHOTS})


def _bool_variable_circuit() -> QuantumCircuit:
    q, r = QuantumRegister(3, "q"), ClassicalRegister(3, "r")
    circuit = QuantumCircuit(q, r)
    flag = circuit.add_var(expr.Var.new("flag", types.Bool()), expr.lift(True))
    with circuit.if_test(flag):
        circuit.x(2)
    circuit.measure(q, r)
    return circuit


@pytest.mark.xfail(
    strict=True,
    reason="classical variables (a Qiskit Var, `bool flag;`) are refused in every format: Aer "
    "(0.18) cannot run them (a documented limit)",
)
def test_bool_variable_condition_written_by_dumps_runs(aer: AerAdapter) -> None:
    assert _run(aer, qiskit.qasm3.dumps(_bool_variable_circuit())) == Counter({"100": SHOTS})


@pytest.mark.parametrize("language", [CircuitLanguage.QASM3, CircuitLanguage.QPY])
def test_bool_variables_are_refused_alike_in_both_formats(language: CircuitLanguage) -> None:
    # Aer fails to assemble a circuit with a bool Var (and aborts the process on a uint one):
    # refused by name, the same way whichever format carries it.
    circuit = _bool_variable_circuit()
    if language is CircuitLanguage.QPY:
        source = CircuitSource(language, data=qpy_bytes(circuit))
    else:
        source = CircuitSource(language, qiskit.qasm3.dumps(circuit))
    with pytest.raises(InvalidArgument) as info:
        parse_circuit(source, CircuitLimits(), "f")
    assert info.value.reason == "UNSUPPORTED_FEATURE", info.value.message
    assert info.value.metadata == {"feature": "classical_variables"}
    assert "classical variables" in info.value.message


# ----------------------------------------------------------------- (3) parameter expressions


@pytest.mark.parametrize(
    ("angle", "value"),
    [
        (lambda t: t.exp(), float(np.log(np.pi))),
        (lambda t: t.log(), float(np.exp(np.pi))),
        (lambda t: np.pi * t.sin(), np.pi / 2),
        (lambda t: np.pi * t.cos(), 0.0),
        (lambda t: t.arccos(), -1.0),
        (lambda t: t**2, float(np.sqrt(np.pi))),
        (lambda t: abs(t), -np.pi),
    ],
    ids=["exp", "log", "sin", "cos", "acos", "pow", "abs"],
)
def test_parameter_functions_written_by_dumps_run(
    aer: AerAdapter, angle: Callable[[Parameter], ParameterExpression], value: float
) -> None:
    # ry(f(theta)) with theta chosen so that f(theta) = pi: the qubit flips, deterministically.
    circuit = QuantumCircuit(QuantumRegister(3, "q"), ClassicalRegister(3, "r"))
    circuit.ry(angle(Parameter("theta")), 0)
    circuit.measure(range(3), range(3))
    text = qiskit.qasm3.dumps(circuit)
    (name,) = re.findall(r"^input float\[64\] (\S+);", text, re.M)
    assert _run(aer, text, (name,), [value]) == Counter({"001": SHOTS})


@pytest.mark.parametrize(
    "angle", ["9**9**9", "exp(100000)", "log(0)", "sqrt(-1)", "2**(-9**9**9)*0+exp(1e308)"]
)
@pytest.mark.timeout(10)  # as integers, 9**9**9 would take minutes and gigabytes
def test_hostile_numeric_functions_are_refused_cheaply(angle: str) -> None:
    # `**` is computed on floats; overflows and domain errors are the program's error.
    refusal = _refusal(_STD + f"qubit q; rz({angle}) q;")
    assert refusal.reason == "INVALID_QASM", refusal.message


def test_unknown_function_is_refused_as_unsupported() -> None:
    refusal = _refusal(_STD + "qubit q; rz(popcount(3)) q;")
    assert refusal.reason == "UNSUPPORTED_FEATURE", refusal.message
