"""Leftovers of the last front-end review: refusal messages in the client's terms, and the
registers the OpenQASM 3 importer makes up for slices, and nesting the statement pre-count
missed.

Finding: a gate call that makes an angle of its definition complex (`gate g(a) q { rz(sqrt(a))
q; }`, `g(-1) q;`) was refused with Qiskit's binding message, which names the value by its
address ("bad type after binding for gate 'rz': 'Py(0x7f...)'"); `sqrt(-1)` as a literal read
"math domain error"; a condition whose operand types do not fit read Qiskit's class names
("'Binary.Op.LESS': 'Uint(2)' and 'Bool()'").

Finding: Braket's refusal of a condition it cannot write printed Qiskit's repr of it
(`Binary(Binary.<Op.GREATER: 10>, Var(ClassicalRegister(2, 'c'), Uint(2)), ...`).

Finding: a slice in an `if` condition or a `switch` target (`if (c[1:2] == 3)`) made results
hold one more register per slice, named `None_0`, `None_1`, ...: PUB data fields the program
never declared.

Finding: moderate nesting repeated across statements escaped the pre-count: 200 statements
each 120 `exp(` deep counted as 200 statements and took 6.8 s to parse (what 20,000 take).
"""

from __future__ import annotations

import pickle

import pytest
from qiskit import ClassicalRegister, QuantumCircuit, QuantumRegister, qasm3
from qiskit.circuit import Parameter

from gateway.backends.aer.adapter import AerAdapter
from gateway.backends.base import CircuitLimits
from gateway.backends.braket.adapter import BraketAdapter
from gateway.backends.qiskit import frontend
from gateway.backends.qiskit.frontend import parse_circuit, result_registers
from gateway.domain.circuits import Bindings, CircuitLanguage, CircuitSource, SamplerPub
from gateway.domain.errors import Code, InvalidArgument
from gateway.domain.jobs import JobOptions, JobSpec, SamplerResult
from tests.adapters import adapter_context, prepare_in_process
from tests.targets import qpy_bytes

pytestmark = pytest.mark.timeout(60)

_STD = 'OPENQASM 3.0;\ninclude "stdgates.inc";\n'


def _refused(text: str) -> InvalidArgument:
    with pytest.raises(InvalidArgument) as info:
        parse_circuit(CircuitSource(CircuitLanguage.QASM3, _STD + text), CircuitLimits(), "f")
    return info.value


def _no_internals(message: str) -> None:
    # Neither an address nor a Qiskit class: what a client cannot look up in its program.
    for internal in ("0x", "Py(", "object at", "Binary", "Uint(", "Bool()", "Var(", "None_"):
        assert internal not in message, message


# ------------------------------------------------------------------ 1. refusal messages


@pytest.mark.parametrize(
    ("program", "expected"),
    [
        (
            "gate g(a) q { rz(sqrt(a)) q; } qubit[1] q; g(-1) q[0];",
            "gate 'g' called with (-1): the angle of its 'rz' is the complex number 1j",
        ),
        (
            "gate g(a, b) q { rx(b) q; rz(sqrt(a)) q; } qubit[1] q; g(-4, 0.5) q[0];",
            "gate 'g' called with (-4, 0.5): the angle of its 'rz' is the complex number 2j",
        ),
        # Complex only inside a gate the definition calls: the call is still named.
        (
            "gate hh(b) q { rz(sqrt(b)) q; } gate g(a) q { hh(a) q; } qubit[1] q; g(-1) q[0];",
            "gate 'g' called with (-1): an angle of its definition is a complex number",
        ),
    ],
    ids=["one-parameter", "second-of-two", "nested-definition"],
)
def test_a_gate_call_with_a_complex_angle_names_the_call_and_value(
    program: str, expected: str
) -> None:
    refusal = _refused(program)
    assert refusal.reason == "INVALID_QASM", refusal.message
    assert refusal.code is Code.INVALID_ARGUMENT
    assert expected in refusal.message
    _no_internals(refusal.message)


def test_a_function_of_a_literal_outside_its_domain_names_the_function_and_value() -> None:
    # "math domain error" before: neither the function nor the value.
    refusal = _refused("qubit[1] q; rz(sqrt(-1)) q[0];")
    assert refusal.reason == "INVALID_QASM", refusal.message
    assert "'sqrt' of -1 is not a finite real number" in refusal.message


@pytest.mark.parametrize(
    ("condition", "expected"),
    [
        ("c < d", "the operator '<' does not apply to a bit[2] and a bit"),
        ("c == c[0]", "the operator '==' does not apply to a bit[2] and a bit"),
    ],
)
def test_condition_operand_types_are_said_in_openqasm_terms(condition: str, expected: str) -> None:
    refusal = _refused(f"qubit[1] q; bit[2] c; bit d; if ({condition}) {{ x q[0]; }}")
    assert refusal.reason == "INVALID_QASM", refusal.message
    assert expected in refusal.message
    _no_internals(refusal.message)


# ------------------------------------------------------------------ 2. Braket's conditions


@pytest.fixture(scope="module")
def braket() -> BraketAdapter:
    adapter = BraketAdapter(adapter_context("braket", device="braket_sv"))
    # Its imports and the compiler's, once: not the first test's time.
    adapter.warm_up()
    adapter.warm_up_compiler()
    return adapter


_BRAKET_HEAD = "qubit[2] q; bit[2] c; bit d; c = measure q; d = measure q[0]; "


@pytest.mark.parametrize(
    ("program", "expected"),
    [
        ("if (c > 1) { x q[0]; }", "Braket cannot branch on c > 1"),
        ("if ((c & 1) == 1) { x q[0]; }", "Braket cannot compare c & 1 with 1"),
        ("if (c != 2 && c < 3) { x q[0]; }", "Braket cannot branch on c < 3"),
        # A slice is a register the importer made up: said as the slice the client wrote.
        ("if (c[0:1] > 1) { x q[0]; }", "Braket cannot branch on c[0:1] > 1"),
        # Inside a block, whose circuit is not the whole program's.
        ("if (d) { if (c >= 2) { x q[0]; } }", "Braket cannot branch on c >= 2"),
    ],
    ids=["greater", "bit-and", "conjunction", "slice", "nested"],
)
def test_braket_names_a_condition_it_cannot_write_as_the_client_wrote_it(
    braket: BraketAdapter, program: str, expected: str
) -> None:
    source = CircuitSource(CircuitLanguage.QASM3, _STD + _BRAKET_HEAD + program)
    pub = SamplerPub(source, bindings=Bindings(), shots=4)
    spec = JobSpec(backend="braket", pubs=(pub,), options=JobOptions())
    with pytest.raises(InvalidArgument) as info:
        prepare_in_process(braket, spec, 1)
    # Status and reason as before: only the words changed.
    assert info.value.code is Code.INVALID_ARGUMENT
    assert info.value.reason == "UNSUPPORTED_FEATURE", info.value.message
    assert info.value.message.endswith(expected), info.value.message
    _no_internals(info.value.message)


# ------------------------------------------------------------------ 3. slice registers

# q = |110> (q[2] q[1] q[0]); c reads "110". `c[1:2]` is 3: q[0] flips. `c[0:1]` is 2: q[2]
# flips back. So r = (r[1], r[0]) = (q[2], q[0]) reads "01" on every shot.
_SLICES = """qubit[3] q; bit[3] c; bit[2] r;
x q[1]; x q[2];
c = measure q;
if (c[1:2] == 3) { x q[0]; }
switch (c[0:1]) { case 2 { x q[2]; } default { } }
r[0] = measure q[0];
r[1] = measure q[2];
"""


def test_slices_in_conditions_add_no_result_register() -> None:
    circuit = parse_circuit(
        CircuitSource(CircuitLanguage.QASM3, _STD + _SLICES), CircuitLimits(), "f"
    )
    assert [name for name, _ in result_registers(circuit)] == ["c", "r"]


def test_aer_results_hold_the_declared_registers_with_their_values() -> None:
    aer = AerAdapter(adapter_context("aer-test"))
    pub = SamplerPub(
        CircuitSource(CircuitLanguage.QASM3, _STD + _SLICES), bindings=Bindings(), shots=8
    )
    spec = JobSpec(backend="aer-test", pubs=(pub,), options=JobOptions())
    prepared = prepare_in_process(aer, spec, 7)
    outcome = aer.execute(pickle.loads(pickle.dumps(prepared.payload)))  # as to a worker
    result = outcome.result.pubs[0]
    assert isinstance(result, SamplerResult)
    counts = {register.name: dict(register.counts[0]) for register in result.registers}
    assert counts == {"c": {"110": 8}, "r": {"01": 8}}


def test_a_client_qpy_cannot_hide_its_own_registers() -> None:
    # The metadata entry (frontend.SLICE_REGISTERS) is the front end's: a client's QPY
    # naming it hides nothing (a guard of the fix, which passed before it).
    circuit = QuantumCircuit(QuantumRegister(1, "q"), ClassicalRegister(1, "c"))
    circuit.measure(0, 0)
    circuit.metadata = {"qgateway.slice_registers": ["c"]}
    source = CircuitSource(CircuitLanguage.QPY, data=qpy_bytes(circuit))
    parsed = parse_circuit(source, CircuitLimits(), "f")
    assert [name for name, _ in result_registers(parsed)] == ["c"]


# ------------------------------------------------------------------ 4. nesting, summed


class _NoParser:
    """Stands in for the OpenQASM 3 parser: a refusal before parsing never builds one."""

    def __init__(self, *args: object) -> None:
        raise AssertionError("the program reached the parser")


@pytest.mark.parametrize(
    "statement",
    [
        "rz(" + "exp(" * 120 + "1" + ")" * 120 + ") q;",  # 200 of them: 6.8 s to parse
        "rz(" + "(" * 120 + "1" + ")" * 120 + ") q;",
        "rz(" + "-" * 120 + "1) q;",
    ],
    ids=["exp", "parentheses", "minus"],
)
def test_moderate_nesting_repeated_across_statements_is_refused_before_parsing(
    statement: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each statement is well inside MAX_QASM3_NESTING and the program 200 statements: only
    # the work of the nesting, summed, says it costs the parser what 20,000 statements do.
    monkeypatch.setattr(frontend, "qasm3Parser", _NoParser)
    text = _STD + "qubit q;\n" + (statement + "\n") * 200
    with pytest.raises(InvalidArgument) as info:
        parse_circuit(CircuitSource(CircuitLanguage.QASM3, text), CircuitLimits(), "f")
    assert info.value.reason == "CIRCUIT_TOO_LARGE", info.value.message
    assert int(info.value.metadata["statements"]) > frontend.MAX_QASM3_STATEMENTS


def test_the_sdks_own_output_of_nested_angles_counts_little_more_than_its_statements() -> None:
    # What `qasm3.dumps` writes for ParameterExpressions (`rz(exp(sin(a*b + c))) q[0];`): its
    # nesting adds well under a tenth to its statements, so a program near the statement
    # limit is still admitted by the pre-count.
    a, b, c = Parameter("a"), Parameter("b"), Parameter("c")
    circuit = QuantumCircuit(2)
    angles = [(a * b + c).sin().exp(), (a - b) ** 2 / c, -(-a).cos() + b.arctan() * 2]
    for index in range(1_500):
        circuit.rz(angles[index % 3], index % 2)
    text = qasm3.dumps(circuit)
    assert "exp(sin(" in text  # nested as in the SDK's own output
    statements = text.count(";")
    assert frontend._qasm3_nesting(text).work * 10 < statements
