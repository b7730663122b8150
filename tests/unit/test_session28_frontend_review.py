"""Review of this session's OpenQASM 3 front-end changes (switch, parameter functions,
expression conditions, the statement pre-count), hostile inputs first.

Finding: the pre-count (semicolons, opening braces, an eighth of the commas) sees one statement
in a program that nests one expression deeply, and the parser's cost grows with nesting far
faster than with statements: ANTLR's prediction re-reads the rest of a nested run at every
level, until Python's recursion gives out (~120-250 levels) and the program is refused
CIRCUIT_TOO_COMPLEX. 40 KB of `-` (`rz(----...1) q;`) took 8 s, 200 KB 39 s; 10 KB of nested
`exp(` (a function this session made readable) 8.6 s; each a compile worker's whole CPU limit
for a request a fraction of the source limit. Such nesting is now refused before parsing.

Finding: the Aer target offers `switch_case` since this session, so QPY switches are admitted,
among them a switch on a classical expression (`circuit.switch(expr.bit_and(c, 2))`, which
Qiskit builds and QPY carries); Aer (0.18) cannot run one ("jump condition does not support
<class ...Binary>"): compiled, queued and charged, then EXECUTION_FAILED (INTERNAL, "resubmit")
on every run. Refused UNSUPPORTED_FEATURE at compile now.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from qiskit import ClassicalRegister, QuantumCircuit, QuantumRegister
from qiskit.circuit.classical import expr, types

from gateway.backends.aer.adapter import AerAdapter
from gateway.backends.base import CircuitLimits
from gateway.backends.qiskit import frontend
from gateway.backends.qiskit.frontend import MAX_QASM3_NESTING, _qasm3_nesting, parse_circuit
from gateway.domain.circuits import Bindings, CircuitLanguage, CircuitSource, SamplerPub
from gateway.domain.errors import InvalidArgument
from gateway.domain.jobs import JobOptions, JobSpec
from tests.adapters import adapter_context, prepare_in_process
from tests.targets import qpy_bytes

pytestmark = pytest.mark.timeout(60)

_STD = 'OPENQASM 3.0;\ninclude "stdgates.inc";\n'


class _NoParser:
    """Stands in for the OpenQASM 3 parser: a refusal before parsing never builds one."""

    def __init__(self, *args: object) -> None:
        raise AssertionError("the program reached the parser")


def _refusal(text: str, monkeypatch: pytest.MonkeyPatch) -> InvalidArgument:
    monkeypatch.setattr(frontend, "qasm3Parser", _NoParser)
    with pytest.raises(InvalidArgument) as info:
        parse_circuit(CircuitSource(CircuitLanguage.QASM3, text), CircuitLimits(), "f")
    return info.value


@pytest.mark.parametrize(
    "angle",
    [
        "-" * 40_000 + "1",  # unary minus: 8 s before the fix
        "- " * 20_000 + "1",  # spaced out
        "!" * 40_000 + "1",
        "exp(" * 2_000 + "1" + ")" * 2_000,  # 10 KB: 8.6 s
        "(" * 5_000 + "1" + ")" * 5_000,
        "-(" * 2_000 + "1" + ")" * 2_000,
    ],
    ids=["minus", "spaced-minus", "not", "exp", "parentheses", "minus-parentheses"],
)
def test_deeply_nested_expressions_are_refused_before_parsing(
    angle: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    refusal = _refusal(_STD + f"qubit q; rz({angle}) q;", monkeypatch)
    assert refusal.reason == "CIRCUIT_TOO_COMPLEX", refusal.message


def test_deeply_nested_condition_is_refused_before_parsing(monkeypatch: pytest.MonkeyPatch) -> None:
    # `!` runs are what an expression condition (`if (!c[0])`) may hold: 40,000 of them.
    text = _STD + "qubit q; bit c; if (" + "!" * 40_000 + "c) { x q; }"
    refusal = _refusal(text, monkeypatch)
    assert refusal.reason == "CIRCUIT_TOO_COMPLEX", refusal.message


def test_nesting_the_parser_takes_still_parses() -> None:
    # What held: the deepest nesting the parser reads (~120 levels of unary minus, ~240 of
    # parentheses) is under the bound, and comments are not counted.
    depth = 100
    assert depth < MAX_QASM3_NESTING
    comment = "// " + "(" * 1_000 + "-" * 1_000 + "\n/* " + "{" * 1_000 + " */\n"
    text = (
        _STD
        + comment
        + f"qubit q; rz({'(' * depth}1{')' * depth}) q; rz({'-' * depth}1) q;"
        + f" rz({'sin(' * 20}0{')' * 20}) q;"
    )
    circuit = parse_circuit(CircuitSource(CircuitLanguage.QASM3, text), CircuitLimits(), "f")
    assert [i.operation.name for i in circuit.data] == ["rz", "rz", "rz"]


def test_the_nesting_check_reads_a_source_limit_of_runs_under_the_bound() -> None:
    # A megabyte of runs just under the bound and of brackets opened and closed (the check is
    # linear: whole runs, no bounded regex repeat retried at every start in every run).
    limit = CircuitLimits().max_source_bytes
    line = "-" * 200 + "1 ([{}])\n"
    body = "// " + line * ((limit - 200) // (len(line) + 3))
    assert not _qasm3_nesting(body.replace("// ", "", 1)).too_deep


Target = Callable[[ClassicalRegister], expr.Expr]


@pytest.mark.parametrize(
    ("target", "label"),
    [
        (lambda c: expr.bit_and(c, 2), 2),
        (lambda c: expr.logic_not(c), True),
        (lambda c: expr.cast(c, types.Bool()), True),
    ],
    ids=["bit-and", "not", "cast"],
)
def test_switch_on_an_expression_is_refused_at_compile(target: Target, label: object) -> None:
    q, c, r = QuantumRegister(3, "q"), ClassicalRegister(2, "c"), ClassicalRegister(3, "r")
    circuit = QuantumCircuit(q, c, r)
    circuit.x(1)
    circuit.measure([0, 1], c)
    with circuit.switch(target(c)) as case:
        with case(label):
            circuit.x(2)
        with case(case.DEFAULT):
            circuit.x(1)
    circuit.measure(q, r)
    aer = AerAdapter(adapter_context("aer-test"))
    pub = SamplerPub(
        CircuitSource(CircuitLanguage.QPY, data=qpy_bytes(circuit)), bindings=Bindings(), shots=8
    )
    spec = JobSpec(backend="aer-test", pubs=(pub,), options=JobOptions())
    with pytest.raises(InvalidArgument) as info:
        prepare_in_process(aer, spec, 7)
    assert info.value.reason == "UNSUPPORTED_FEATURE", info.value.message
    assert "switch" in info.value.message
