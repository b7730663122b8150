"""Session 32, a gphase in an OpenQASM 2 gate body whose angle names the gate's parameters.

Defect fixed here (session 31 left it a strict xfail): PennyLane's `gphase(angle) ...;` is
blanked out of the text before Qiskit's reader sees it, after its angle is checked, but one
in a gate body whose angle names the gate's parameters has a value only for a call, and was
dropped unchecked: `gate g(a) r { gphase(a * 1e400) r; x r; }` with `g(1) q[0];` passed, where
`rz(a * 1e400) r;` in the same body is NON_FINITE_ANGLE.

Such a phase is now left to the reader, its operands blanked: an operation on no qubit with an
empty definition (frontend._BodyPhase), whose angle the reader binds for each call, nested calls
included, and `check_finite_parameters` refuses as it refuses the rz. Transpiling unrolls it to
nothing (results unchanged), so the check after transpiling never sees it: a definition that
holds one is looked at for each distinct parameters of its instances, at parse time.
"""

from __future__ import annotations

import time
from collections import Counter

import pytest
from qiskit import QuantumCircuit
from qiskit.circuit import Operation
from qiskit.quantum_info import Operator

from gateway.backends.aer.adapter import AerAdapter
from gateway.backends.base import CircuitLimits
from gateway.backends.qiskit import frontend as fe
from gateway.domain.circuits import CircuitLanguage, CircuitSource
from gateway.domain.errors import InvalidArgument
from tests.adapters import adapter_context
from tests.unit.test_session30_sdk_writers_review import _run
from tests.unit.test_session31_pragma_hostile_review import parsed as parsed_circuit
from tests.unit.test_session31_pragma_hostile_review import refused as refused_program

pytestmark = pytest.mark.timeout(60)

Q2 = CircuitLanguage.QASM2
H2 = 'OPENQASM 2.0;\ninclude "qelib1.inc";\nqreg q[2];\ncreg c[2];\n'
NON_FINITE = "a parameter of 'gphase' is not finite"


@pytest.fixture(scope="module")
def aer() -> AerAdapter:
    return AerAdapter(adapter_context("aer-test"))


def parsed(text: str, limits: CircuitLimits | None = None) -> list[str]:
    """The names of the top-level operations of the parsed program."""
    return [instruction.operation.name for instruction in parsed_circuit(text, Q2, limits).data]


def refused(text: str, reason: str = "NON_FINITE_ANGLE") -> InvalidArgument:
    return refused_program(text, reason, Q2)


# ------------------------------------------------------------------ as the rz is


@pytest.mark.parametrize("statement", ["gphase({})", "rz({})"])
@pytest.mark.parametrize(
    ("angle", "finite", "infinite"),
    [
        ("a * 1e300", "1", "1e10"),
        ("exp(a)", "1", "1000"),
        ("-exp(a) / 2", "700", "710"),
        ("a ^ 400", "2", "10"),
        ("pi / a * 1e300", "1", "1e-10"),
        ("sin(a) * 1e308 * a", "1", "2"),
        ("ln(a) * 1e308", "1", "0.001"),
        ("sqrt(a) * 1e300", "1", "1e20"),
        ("a * 1e308 + a * 1e308", "0.5", "1"),
    ],
)
def test_a_phase_is_refused_for_a_call_exactly_when_an_rz_there_is(
    statement: str, angle: str, finite: str, infinite: str
) -> None:
    gate = f"gate g(a) r {{ {statement.format(angle)} r; x r; }}\n"
    assert parsed(H2 + gate + f"g({finite}) q[0];\n") == ["g"]
    error = refused(H2 + gate + f"g({infinite}) q[0];\n")
    name = statement.split("(")[0]
    assert f"a parameter of {name!r} is not finite" in error.message, error.message


@pytest.mark.parametrize(
    "phase",
    ["gphase(a * 1e400) r;", "gphase(a * 1e400) ;", "gphase(a * 1e400);", "gphase (a*1e400)r;"],
)
def test_a_phase_on_any_operands_is_refused(phase: str) -> None:
    for gate in (f"gate g(a) r {{ {phase} x r; }}\n", f"gate g(a) r, s {{ {phase} cx r, s; }}\n"):
        call = "g(1) q[0];\n" if "cx" not in gate else "g(1) q[0], q[1];\n"
        assert NON_FINITE in refused(H2 + gate + call).message


def test_a_phase_on_two_qubits_and_a_register_broadcast() -> None:
    gate = "gate g(a, b) r, s { gphase(a * b) r, s; cx r, s; }\n"
    assert parsed(H2 + gate + "g(1e200, 1e100) q[0], q[1];\n") == ["g"]
    assert NON_FINITE in refused(H2 + gate + "g(1e200, 1e200) q[1], q[0];\n").message
    one = "qreg w[2];\ngate ph(a) r { gphase(exp(a)) r; x r; }\n"
    assert parsed(H2 + one + "ph(1) w;\n") == ["ph", "ph"]
    assert NON_FINITE in refused(H2 + one + "ph(1000) w;\n").message


def test_a_gate_never_called_is_not_refused_for_its_parameters() -> None:
    # As `rz(a * 1e400) r;` in a gate nobody calls: the value exists only for a call.
    for statement in ("gphase(a * 1e400) r;", "rz(a * 1e400) r;"):
        text = H2 + f"gate g(a) r {{ {statement} x r; }}\nx q[0];\n"
        assert parsed(text) == ["x"]


# ------------------------------------------------------------------ calls: several, nested


@pytest.mark.parametrize(
    "calls",
    [
        ["g(1) q[0];", "g(1000) q[0];"],
        ["g(1000) q[0];", "g(1) q[0];"],
        ["g(1) q[0];", "g(2) q[1];", "g(1) q[1];", "g(1000) q[1];", "g(3) q[0];"],
    ],
)
def test_a_phase_finite_for_one_call_and_not_another_is_refused(calls: list[str]) -> None:
    # The parse-time check of other angles (an rz) looks at one instance of each definition and
    # leaves the others to the check after transpiling, which never sees a phase: each distinct
    # call of a definition holding one is looked at. The message names no line, as the rz's
    # does not: the program without the failing call passes.
    gate = "gate g(a) r { gphase(exp(a)) r; x r; }\n"
    assert NON_FINITE in refused(H2 + gate + "\n".join(calls) + "\n").message
    finite = [call for call in calls if "1000" not in call]
    assert parsed(H2 + gate + "\n".join(finite) + "\n") == ["g"] * len(finite)


def test_a_conditioned_call_is_looked_at_too() -> None:
    text = H2 + "gate g(a) r { gphase(exp(a)) r; x r; }\ng(1) q[0];\nmeasure q -> c;\n"
    assert parsed(text + "if(c==1) g(2) q[0];\n")[:2] == ["g", "measure"]
    assert NON_FINITE in refused(text + "if(c==1) g(1000) q[0];\n").message


NESTED = (
    "gate g(a) r { gphase(exp(a)) r; x r; }\n"
    "gate k(b) s, t { g(b * 2) s; cx s, t; }\n"
    "gate m(d) s, t { k(d - 1) t, s; g(d / 2) t; }\n"
)


@pytest.mark.parametrize(
    ("calls", "finite"),
    [
        ("k(1) q[0], q[1];", True),
        ("k(500) q[0], q[1];", False),  # g(1000)
        ("m(1) q[0], q[1];", True),
        ("m(501) q[0], q[1];", False),  # k(500): g(1000)
        ("m(1500) q[0], q[1];", False),  # g(750) directly, and k(1499)
        ("k(1) q[0], q[1];\nk(2) q[1], q[0];\nm(3) q[0], q[1];\nm(501) q[1], q[0];", False),
        ("m(501) q[1], q[0];\nk(1) q[0], q[1];", False),
        ("k(1) q[0], q[1];\nm(3) q[1], q[0];\nk(1) q[0], q[1];\ng(5) q[0];", True),
    ],
)
def test_a_gate_calling_a_gate_with_a_phase_is_refused_for_the_value_it_passes(
    calls: str, finite: bool
) -> None:
    text = H2 + NESTED + calls + "\n"
    if finite:
        assert parsed(text)
    else:
        assert NON_FINITE in refused(text).message


def test_a_caller_without_a_phase_of_its_own_is_looked_at_for_its_callees() -> None:
    # k's body holds no phase, g's does: each call of k is looked at for the g it calls.
    text = H2 + "gate g(a) r { gphase(a * a * a * 1e306) r; }\n"
    text += "gate k(b) s { g(b) s; h s; }\nk(0.5) q[0];\nk(10) q[0];\n"
    assert NON_FINITE in refused(text).message
    assert parsed(text.replace("k(10) q[0];\n", "k(1) q[1];\n")) == ["k", "k"]


def test_a_division_by_a_calls_zero_is_refused_not_raised() -> None:
    # The reader builds each call's body lazily: a division by zero there raised out of the
    # check (an internal error) for the second call of a definition holding a phase.
    text = H2 + "gate g(a) r { gphase(1 / a) r; x r; }\ng(1) q[0];\ng(0) q[0];\n"
    error = refused(text, "INVALID_QASM")
    assert "gate 'g'" in error.message and "divide by zero" in error.message


# ------------------------------------------------------------------ what stays as it was


def test_the_phase_reads_as_nothing_in_the_gates_definition() -> None:
    text = H2 + "gate g(a) r { gphase(a / 2) r; x r; }\ng(0.5) q[0];\n"
    circuit = parsed_circuit(text, Q2)
    definition = circuit.data[0].operation.definition
    phase, x = definition.data
    assert (phase.operation.name, phase.qubits, phase.operation.params) == ("gphase", (), [0.25])
    assert phase.operation.definition.size() == 0 and phase.operation.definition.global_phase == 0
    assert x.operation.name == "x" and definition.global_phase == 0


def test_a_constant_phase_in_a_body_is_still_dropped() -> None:
    # Checked once, where it is written (session 31): one number wherever the gate is called.
    text = H2 + "gate g(a) r { gphase(0.1) r; rz(a) r; }\ng(0.5) q[0];\n"
    circuit = parsed_circuit(text, Q2)
    assert [i.operation.name for i in circuit.data[0].operation.definition.data] == ["rz"]


def test_the_program_is_the_same_operator_with_or_without_its_phases() -> None:
    # Exactly, global phase included: the phase is the identity, not a global phase.
    with_phases = H2 + (
        "gate g(a, b) r, s { gphase(a * b) r, s; ry(a) r; gphase(-b) ; cx r, s; rz(b) s; }\n"
        "gate k(t) r, s { g(t, 2 * t) s, r; gphase(sin(t) ^ 2) r; h r; }\n"
        "g(0.3, 0.4) q[0], q[1];\nk(0.7) q[1], q[0];\nk(-1.1) q[0], q[1];\n"
    )
    without = with_phases
    for phase in ("gphase(a * b) r, s; ", "gphase(-b) ; ", "gphase(sin(t) ^ 2) r; "):
        without = without.replace(phase, "")
    assert without.count("gphase") == 0
    operators = [Operator(parsed_circuit(text, Q2)) for text in (with_phases, without)]
    assert operators[0].equiv(operators[1]) and operators[0] == operators[1]


def test_counts_on_aer_are_those_without_the_phases(aer: AerAdapter) -> None:
    body = (
        "gate g(a, b) r, s { gphase(a * b) r, s; ry(a) r; gphase(-b) ; cx r, s; rz(b) s; }\n"
        "gate k(t) r, s { g(t, 2 * t) s, r; gphase(exp(t)) r; h r; }\n"
        "g(0.3, 0.4) q[0], q[1];\nk(0.7) q[1], q[0];\nh q[1];\nmeasure q -> c;\n"
    )
    plain = body.replace("gphase(a * b) r, s; ", "").replace("gphase(-b) ; ", "")
    plain = plain.replace("gphase(exp(t)) r; ", "")
    assert "gphase" not in plain
    (counts,) = _run(aer, H2 + body, Q2, shots=2000)
    assert counts == _run(aer, H2 + plain, Q2, shots=2000)[0]
    assert len(counts["c"]) == 4 and sum(counts["c"].values()) == 2000


def test_an_error_after_a_phase_on_the_same_line_keeps_its_column() -> None:
    # The statement's `gphase(angle)` and `;` stay where they were, its operands are blanks.
    text = H2 + "gate g(a) r { gphase(a)  r , r; frob r; }\ng(1) q[0];\n"
    error = refused(text, "INVALID_QASM")  # the operands are checked first, named twice
    assert "line 5, column 14" in error.message, error.message
    text = H2 + "gate g(a) r { gphase(a)  r ; frob r; }\ng(1) q[0];\n"
    error = refused(text, "UNKNOWN_GATE")
    assert "line 5, column 29" in error.message, error.message
    text = H2 + "gate g(a) r { gphase(a\n  // r;\n  ) r\n  ; x r; }\ng(1) q[0]; frob q[0];\n"
    error = refused(text, "UNKNOWN_GATE")
    assert "line 9, column 11" in error.message, error.message


def test_an_invalid_angle_naming_a_parameter_is_still_the_probes_refusal() -> None:
    text = H2 + "gate g(a) r { x r; gphase(a + b) r; }\ng(1) q[0];\n"
    error = refused(text, "INVALID_QASM")
    assert "line 5, column 19" in error.message and "gphase" in error.message, error.message


def test_a_program_defining_its_own_gphase_calls_it() -> None:
    text = H2 + "gate gphase(a) r { rz(a) r; }\ngate g(a) r { gphase(a) r; }\ng(1) q[0];\n"
    circuit = parsed_circuit(text, Q2)
    (inner,) = circuit.data[0].operation.definition.data
    assert inner.operation.name == "gphase" and len(inner.qubits) == 1
    assert [i.operation.name for i in inner.operation.definition.data] == ["rz"]


# ------------------------------------------------------------------ cost


@pytest.mark.timeout(120)
def test_a_mebibyte_of_distinct_calls_is_read_in_linear_time() -> None:
    # ~70,000 calls, each with its own value (the limits raised so that they are read; by
    # default 20,000 operations in definitions are the most): ~11 s here, where the same calls
    # of a body with an rz, looked at through one instance, take ~3.5 s. Quadratic work in the
    # calls (each looked at against the others, or each phase's position counted from the
    # text's start) would take hours.
    limits = CircuitLimits(max_operations=1 << 20, max_definition_operations=1 << 20)
    calls = "".join(f"g({10_000 + i % 90_000}) q[0];\n" for i in range(69_800))

    def seconds(body: str) -> float:
        text = H2 + f"gate g(a) r {{ {body} }}\n" + calls
        assert len(text) <= CircuitLimits().max_source_bytes
        started = time.perf_counter()
        assert parsed(text, limits) == ["g"] * 69_800
        return time.perf_counter() - started

    assert seconds("gphase(a / 7) r; x r;") < 8 * seconds("rz(a / 7) r; x r;") + 5


def test_calls_with_the_same_values_are_looked_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    # Each definition is built once per distinct values of its calls, not once per call.
    built: list[str] = []
    definition = fe._definition

    def counted(op: Operation, field: str) -> QuantumCircuit | None:
        built.append(op.name)
        return definition(op, field)

    monkeypatch.setattr(fe, "_definition", counted)
    text = H2 + "gate g(a) r { gphase(exp(a)) r; x r; }\ngate k(b) s { g(b) s; g(-b) s; }\n"
    assert parsed(text + "g(1) q[0];\ng(2) q[1];\nk(1) q[0];\n" * 1000) == ["g", "g", "k"] * 1000
    # g(1), g(2), k(1) and in it g(-1) (its g(1) seen), each gate once more in
    # _check_definitions, which looks at one instance of each.
    assert Counter(built) == {"g": 3 + 1, "k": 1 + 1, "gphase": 1}, built


# ------------------------------------------------------------------ a call's angle with no value


@pytest.mark.parametrize(
    ("gates", "calls", "says"),
    [
        ("gate g(a) r { rz(sin(a) / a) r; }", "g(1) q[0];\ng(0) q[0];", "divide by zero"),
        ("gate g(a) r { rz(sin(a) / a) r; }", "g(0) q[0];", "divide by zero"),
        (
            "gate g(a) r { rz(sin(a) / a) r; }\ngate k(b) r { g(b) r; }",
            "k(1) q[0];\nif(c==1) k(0) q[0];",
            "divide by zero",
        ),
        ("gate g(a) r, s { cx r, s; rz(1 / a) s; }", "g(1) q[0], q[1];\ng(0) q[1], q[0];", "zero"),
        ("gate g(a) r { rz(ln(a)) r; }", "g(1) q[0];\ng(-1) q[0];", "'ln' is undefined"),
        ("gate g(a) r { rz(sqrt(a)) r; }", "g(1) q[0];\ng(-1) q[0];", "'sqrt' is undefined"),
        ("gate g(a) r { rz(a ^ a) r; }", "g(1) q[0];\ng(-0.5) q[0];", "negative base"),
    ],
)
def test_a_call_whose_angle_has_no_value_is_invalid_qasm(
    aer: AerAdapter, gates: str, calls: str, says: str
) -> None:
    # The reader builds a call's definition when it is first read: for g(0) of sin(a) / a the
    # division fails there (QASM2ParseError), which escaped the compile as COMPILER_FAILED,
    # INTERNAL, for the client's own program.
    with pytest.raises(InvalidArgument) as refused_call:
        aer.compile_circuit(CircuitSource(Q2, f"{H2}{gates}\n{calls}\n"))
    assert refused_call.value.reason == "INVALID_QASM"
    assert says in refused_call.value.message


# ------------------------------------------------------------------ a register named gphase


@pytest.mark.parametrize(
    "program",
    [
        "qreg gphase[1];\ngate g(a) r { gphase(a) r; x r; }\ng(1) gphase[0];\n",
        "qreg q[1];\ncreg gphase[1];\ngate g(a) r { gphase(a) r; x r; }\ng(1) q[0];\n",
        # The first name the reader's phase would take is the client's already.
        "qreg gp0000[1];\ncreg gphase[1];\ngate g(a) r { gphase(a) r; x r; }\ng(1) gp0000[0];\n",
    ],
)
def test_a_register_named_gphase_beside_a_bound_phase_is_read(program: str) -> None:
    # Was refused ("'gphase' is already defined"): the reader's phase took the name gphase,
    # which OpenQASM 2 leaves free for a register.
    text = 'OPENQASM 2.0;\ninclude "qelib1.inc";\n' + program
    assert parsed(text) == ["g"]
    refused(text.replace("gphase(a)", "gphase(a * 1e400)"))
