"""Session 31, a hostile review of Braket's pragmas, PennyLane's dropped gphase and `-o -ZZ`.

Defects found and fixed here (each test below fails without its fix):
- 20,000 `#pragma braket unitary` lines (a 0.9 MB program) took ~10 minutes to parse: each
  pragma's gate was named `braket_unitary` plus one more underscore than the last (quadratic
  names, cubic time). The names are now numbered.
- A QPY BoxOp labelled as a verbatim box echoed its whole label (up to max_source_bytes) in the
  UNSUPPORTED_FEATURE refusal: clipped now, as client text in refusals is.
- The unitary pragma took Unicode digits and blanks (`q[\\u0661]`, a full-width `\\uff11`, a
  no-break space), which no reader of Braket's takes (its lexer: digits 0-9, blanks space and
  tab); likewise a gphase operand `q[\\u0661]` (str.isdigit), which Qiskit's reader refuses.
- A dropped gphase statement's operands were not checked as a gate call's are: `q[0], q[0]`,
  `q, q[0]` and registers of different sizes (`q, w`) passed, which the reader refuses
  ("duplicate qubits", "cannot resolve broadcast").
- `qgateway run -- -o -ZZ`: the `-o -ZZ` joining went on past `--`, making two operands one
  (`-o=-ZZ`).

- A dropped gphase in a gate body with a non-finite constant angle (`gphase(1e400) r;`)
  passed, where `rz(1e400) r;` there is NON_FINITE_ANGLE: such an angle is now also read at the
  top level of the probe and checked finite.

Left as a strict xfail here, fixed in session 32: an angle non-finite only for a call's
parameters (`gphase(a * 1e400)` with `g(1)`), tests/unit/test_session32_gphase_bound_review.py.

Mutants no test caught, pinned here: the sign of `a - -bim` (`imneg`), the register bound of a
gphase operand (`>=` to `>`), the 30-target bound of a unitary pragma under a source limit
large enough that the byte bound alone would not refuse it, the coupling-map clause of
`open_verbatim_boxes`'s `exact` (no configured backend has both), and the probe's header line
naming the phase after it (`at_line.get(line + 1)`).
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from qiskit import QuantumCircuit
from qiskit.circuit import BoxOp
from qiskit.circuit.library import UnitaryGate
from qiskit.transpiler import Target

from gateway import cli
from gateway.backends.aer.adapter import AerAdapter
from gateway.backends.base import CircuitLimits
from gateway.backends.qiskit import frontend as fe
from gateway.backends.qiskit.fakes import fake_backend
from gateway.domain.circuits import Bindings, CircuitLanguage, CircuitSource, SamplerPub
from gateway.domain.errors import InvalidArgument
from gateway.domain.jobs import JobOptions, JobSpec, SamplerResult
from tests.adapters import adapter_context, execute_in_process, prepare_in_process
from tests.targets import qpy_source
from tests.unit.test_session30_sdk_writers_review import _run

pytestmark = pytest.mark.timeout(60)

Q2, Q3 = CircuitLanguage.QASM2, CircuitLanguage.QASM3
FIELD = "spec.pubs[0].sampler.circuit.qasm3"
H2 = 'OPENQASM 2.0;\ninclude "qelib1.inc";\n'
X = "[[0, 1], [1, 0]]"


@pytest.fixture(scope="module")
def aer() -> AerAdapter:
    return AerAdapter(adapter_context("aer-test"))


def parsed(
    text: str, language: CircuitLanguage = Q3, limits: CircuitLimits | None = None
) -> QuantumCircuit:
    return fe.parse_circuit(CircuitSource(language, text), limits or CircuitLimits(), FIELD)


def refused(
    text: str,
    reason: str,
    language: CircuitLanguage = Q3,
    limits: CircuitLimits | None = None,
) -> InvalidArgument:
    with pytest.raises(InvalidArgument) as info:
        parsed(text, language, limits)
    error = info.value
    assert error.reason == reason, (error.reason, error.message)
    assert [v.field for v in error.field_violations] == [FIELD]
    return error


# ------------------------------------------------------------------ many unitary pragmas


def test_the_gates_of_many_unitary_pragmas_have_short_names() -> None:
    # Were `braket_unitary` + n underscores for the n-th pragma.
    text = "OPENQASM 3.0;\nqubit[1] braket_unitary_1;\n"
    text += f"#pragma braket unitary({X}) braket_unitary_1[0]\n" * 300
    program = fe._parse_qasm3_ast(text, FIELD)
    pragmas = fe._read_braket_pragmas(program, CircuitLimits(), FIELD)
    assert len(pragmas.unitaries) == 300
    assert max(len(name) for name in pragmas.unitaries) <= len("braket_unitary_299")
    # A name the program takes is still not the pragma's.
    assert "braket_unitary_1" not in pragmas.unitaries and "braket_unitary_1_" in pragmas.unitaries


@pytest.mark.timeout(40)
def test_ten_thousand_unitary_pragmas_parse_in_linear_time() -> None:
    # ~2 s; was ~1 minute (20,000: ~10 minutes).
    text = "OPENQASM 3.0;\nqubit[1] q;\n" + f"#pragma braket unitary({X}) q[0]\n" * 10_000
    circuit = parsed(text)
    assert len(circuit.data) == 10_000 and circuit.count_ops() == {"unitary": 10_000}


def test_a_user_gate_called_like_a_pragmas_gate_stays_the_users() -> None:
    text = "OPENQASM 3.0;\nqubit[2] q;\ngate braket_unitary_0 a { h a; }\n"
    text += f"#pragma braket unitary({X}) q[0]\nbraket_unitary_0 q[1];\n"
    circuit = parsed(text)
    assert [i.operation.name for i in circuit.data] == ["unitary", "braket_unitary_0"]
    assert isinstance(circuit.data[0].operation, UnitaryGate)
    assert circuit.data[1].operation.definition.data[0].operation.name == "h"


# ------------------------------------------------------------------ Unicode in the pragma


@pytest.mark.parametrize(
    ("pragma", "reason", "says"),
    [
        (f"braket unitary({X}) q[\u0661]", "INVALID_QASM", "targets are qubits"),
        (f"braket unitary({X}) $\u0661", "INVALID_QASM", "targets are qubits"),
        (f"braket unitary({X}) q[\uff10]", "INVALID_QASM", "targets are qubits"),
        (f"braket unitary({X}) q\u00a0[0]", "INVALID_QASM", "targets are qubits"),
        ("braket unitary([[\u0660, 1], [1, 0]]) q[0]", "INVALID_QASM", "not a matrix entry"),
        ("braket unitary([[0, \uff11], [1, 0]]) q[0]", "INVALID_QASM", "not a matrix entry"),
        ("braket unitary([[0,\u00a01], [1, 0]]) q[0]", "INVALID_QASM", "not a matrix entry"),
        ("braket unitary([[0,\x0b1], [1, 0]]) q[0]", "INVALID_QASM", "not a matrix entry"),
        (f"braket\u00a0unitary({X}) q[0]", "UNSUPPORTED_FEATURE", "Pragma"),
    ],
)
def test_unicode_digits_and_blanks_are_not_braket_s(pragma: str, reason: str, says: str) -> None:
    error = refused(f"OPENQASM 3.0;\nqubit[1] q;\n#pragma {pragma}\n", reason)
    assert "line 3" in error.message and says in error.message, error.message


def test_a_verbatim_pragma_with_a_no_break_space_is_not_braket_s() -> None:
    text = "OPENQASM 3.0;\nqubit[1] q;\n#pragma braket\u00a0verbatim\nbox { x q[0]; }\n"
    assert "line 3" in refused(text, "UNSUPPORTED_FEATURE").message


def test_tabs_are_blanks_in_the_pragma_as_in_braket_s_lexer() -> None:
    text = "OPENQASM 3.0;\nqubit[1] q;\n#pragma braket\tunitary([[0,\t1],\t[1, 0]])\tq[0]\t\n"
    text += "#pragma\tbraket\tverbatim\t\nbox { x q[0]; }\n"
    assert [i.operation.name for i in parsed(text).data] == ["unitary", "box"]


# ------------------------------------------------------------------ matrix entries (mutants)


def test_every_sign_of_a_two_part_entry_is_read_as_braket_reads_it() -> None:
    # A diagonal unitary: probabilities do not see these signs, the matrix does.
    entries = "[[0.6 - -0.8im, 0], [0, -0.6 + -0.8im]]"
    text = f"OPENQASM 3.0;\nqubit[1] q;\n#pragma braket unitary({entries}) q[0]\n"
    matrix = parsed(text).data[0].operation.to_matrix()
    np.testing.assert_allclose(np.diag(matrix), [0.6 + 0.8j, -0.6 - 0.8j], atol=1e-15)


def test_thirty_one_targets_are_too_large_whatever_the_source_limit() -> None:
    # Under a source limit of 2^70 bytes the byte bound alone lets 31 targets through (16 <<
    # 62 < 2^70); the 30-target bound still refuses them as too large, not by their shape.
    targets = ", ".join(f"q[{i}]" for i in range(31))
    text = f"OPENQASM 3.0;\nqubit[31] q;\n#pragma braket unitary({X}) {targets}\n"
    error = refused(text, "CIRCUIT_TOO_LARGE", limits=CircuitLimits(max_source_bytes=2**70))
    assert "a unitary on 31 qubits" in error.message


# ------------------------------------------------------------------ verbatim boxes


def test_a_qpy_verbatim_label_is_clipped_in_the_refusal() -> None:
    circuit = QuantumCircuit(1)
    with circuit.box(label=fe.VERBATIM_BOX_LABEL + " line 1" + " x" * 200_000):
        circuit.x(0)
    with pytest.raises(InvalidArgument) as info:
        fe.open_verbatim_boxes(circuit, False, FIELD)
    assert info.value.reason == "UNSUPPORTED_FEATURE"
    assert len(info.value.message) < 1000, len(info.value.message)
    assert info.value.message.startswith("line 1 x x")


def test_an_opened_qpy_box_maps_its_qubits_and_clbits_by_position(aer: AerAdapter) -> None:
    # Block qubit i is the instruction's qubit i, clbit j its clbit j, in any order.
    body = QuantumCircuit(2, 2)
    body.x(0)
    body.measure(0, 1)
    body.measure(1, 0)
    circuit = QuantumCircuit(3, 3)
    circuit.append(BoxOp(body, label=fe.VERBATIM_BOX_LABEL + " line 1"), [2, 0], [0, 2])
    opened = fe.open_verbatim_boxes(circuit, True, FIELD)
    got = [
        (
            i.operation.name,
            [circuit.find_bit(q).index for q in i.qubits],
            [circuit.find_bit(c).index for c in i.clbits],
        )
        for i in opened.data
    ]
    assert got == [("x", [2], []), ("measure", [2], [2]), ("measure", [0], [0])]
    pub = SamplerPub(qpy_source(circuit), bindings=Bindings(), shots=32)
    spec = JobSpec(backend=aer.context.name, pubs=(pub,), options=JobOptions())
    result = execute_in_process(aer, spec, 5)[0]
    assert isinstance(result, SamplerResult)
    (register,) = result.registers
    assert Counter(register.counts[0]) == Counter({"100": 32})


@pytest.mark.parametrize(
    ("before", "box", "after", "outcome"),
    [
        # Measurements inside, into bits out of order (b[2] from q[2], b[0] from q[1]).
        ("", "x q[2]; b[2] = measure q[2]; b[0] = measure q[1];", "", "100"),
        ("x q[0];", "reset q[0]; x q[1];", "b = measure q;", "010"),
        # Conditions on a register and on a bit measured before the box.
        ("x q[0]; b[0] = measure q[0];", "if (b == 1) x q[2];", "b = measure q;", "101"),
        ("x q[0]; b[0] = measure q[0];", "if (b[0]) x q[1];", "b = measure q;", "011"),
        # A controlled global phase the box keeps: Z between two H.
        ("h q[0];", "ctrl @ gphase(pi) q[0];", "h q[0]; b = measure q;", "001"),
    ],
)
def test_a_verbatim_box_with_measurements_resets_and_conditions(
    aer: AerAdapter, before: str, box: str, after: str, outcome: str
) -> None:
    text = f"OPENQASM 3.0;\nqubit[3] q;\nbit[3] b;\n{before}\n#pragma braket verbatim\n"
    text += f"box {{ {box} }}\n{after}\n"
    (counts,) = _run(aer, text, shots=32)
    assert counts == {"b": Counter({outcome: 32})}


class _CoupledAer(AerAdapter):
    """An ideal Aer whose target has a coupling map (a device's, without its noise)."""

    def build_qiskit_target(self) -> Target:
        target: Target = fake_backend("FakeManilaV2").target
        return target


def test_a_verbatim_box_is_refused_on_a_target_with_a_coupling_map() -> None:
    adapter = _CoupledAer(adapter_context("aer-coupled"))
    assert adapter.runs_verbatim_boxes()  # no noise: only the coupling map refuses it
    text = "OPENQASM 3.0;\nqubit[2] q;\nbit[2] b;\n#pragma braket verbatim\n"
    text += "box { cnot q[0], q[1]; }\nb = measure q;\n"
    pub = SamplerPub(CircuitSource(Q3, text), bindings=Bindings(), shots=8)
    spec = JobSpec(backend=adapter.context.name, pubs=(pub,), options=JobOptions())
    with pytest.raises(InvalidArgument) as info:
        prepare_in_process(adapter, spec, 5)
    assert info.value.reason == "UNSUPPORTED_FEATURE"
    assert info.value.metadata["feature"] == "verbatim_box"


# ------------------------------------------------------------------ PennyLane's gphase


@pytest.mark.parametrize(
    ("statement", "says"),
    [
        ("gphase(0.5) q[2];", "qubit 2 of register 'q' (size 2) does not exist"),
        ("gphase(0.5) q[\u0661];", "'q[\u0661]' is not a qubit"),
        ("gphase(0.5) q[0], q[0];", "'q[0]' is named twice"),
        ("gphase(0.5) q, q[0];", "'q[0]' is named twice"),
        ("gphase(0.5) q[1], q;", "'q' is named twice"),
        ("gphase(0.5) q, q;", "'q' is named twice"),
        ("gphase(0.5) q, w;", "registers of sizes [2, 3] cannot be broadcast together"),
    ],
)
def test_a_dropped_phase_names_qubits_as_a_gate_call_must(statement: str, says: str) -> None:
    # Each is what Qiskit's reader refuses in `cx` (duplicate qubits, unresolvable broadcast).
    text = H2 + "qreg q[2];\nqreg w[3];\n" + statement + "\n"
    error = refused(text, "INVALID_QASM", Q2)
    assert "line 5" in error.message and says in error.message, error.message
    with pytest.raises(InvalidArgument):
        parsed(text.replace("gphase(0.5)", "cx"), Q2)


@pytest.mark.parametrize(
    "statement", ["gphase(0.5) q, r;", "gphase(0.5) q[0], w;", "gphase(0.5) q[1], r[1], q[0];"]
)
def test_a_dropped_phase_on_distinct_qubits_still_runs(statement: str) -> None:
    text = H2 + "qreg q[2];\nqreg r[2];\nqreg w[3];\n" + statement + "\nx q[0];\n"
    assert [i.operation.name for i in parsed(text, Q2).data] == ["x"]


def test_a_dropped_phase_in_a_gate_body_names_each_qubit_once() -> None:
    text = H2 + "qreg q[2];\ngate g a, b { gphase(0.1) a, a; cx a, b; }\ng q[0], q[1];\n"
    error = refused(text, "INVALID_QASM", Q2)
    assert "line 4" in error.message and "'a' is named twice" in error.message
    ok = text.replace("a, a;", "a, b;")
    assert [i.operation.name for i in parsed(ok, Q2).data] == ["g"]


@pytest.mark.parametrize(
    ("body", "column"),
    [
        ("gphase(1e400) r; x r;", 14),
        ("gphase(a) r; gphase(exp(1000)) r; x r;", 27),
        ("gphase(pi / 2) r; gphase(-1e999 * 0) r;", 32),
    ],
)
def test_a_non_finite_constant_phase_in_a_gate_body_is_refused(body: str, column: int) -> None:
    # Was accepted (only top-level angles were checked finite), where `rz(1e400) r;` in the
    # body of a gate that is called is NON_FINITE_ANGLE.
    text = H2 + f"qreg q[1];\ngate g(a) r {{ {body} }}\ng(0.5) q[0];\n"
    error = refused(text, "NON_FINITE_ANGLE", Q2)
    assert f"line 4, column {column}" in error.message, error.message
    ok = text.replace("1e400", "1e300").replace("exp(1000)", "exp(10)").replace("-1e999", "-1")
    assert [i.operation.name for i in parsed(ok, Q2).data] == ["g"]


def test_a_probe_gate_header_refused_names_the_phase_in_that_gate() -> None:
    # The probe copies a gate's header once, on the line before its first phase: a header the
    # reader refuses names that phase (line 7), not the program's first one (line 4).
    text = H2 + "qreg q[1];\ngphase(0.1) q[0];\ngate g(a, a) r {\n x r;\n gphase(a) r;\n}\n"
    error = refused(text, "INVALID_QASM", Q2)
    assert "line 7, column 1" in error.message and "already defined" in error.message


def test_a_phase_non_finite_for_a_calls_parameters_is_refused() -> None:
    text = H2 + "qreg q[1];\ngate g(a) r { gphase(a * 1e400) r; x r; }\ng(1) q[0];\n"
    refused(text, "NON_FINITE_ANGLE", Q2)


# ------------------------------------------------------------------ the CLI


def test_words_after_a_double_dash_are_not_joined() -> None:
    args, rest = cli.build_parser().parse_known_args(["run", "--", "-o", "-ZZ"])
    assert args.file == "-o" and rest == ["-ZZ"]
    args = cli.build_parser().parse_args(["estimate", "-o", "-ZZ", "--", "-o"])
    assert args.file == "-o" and args.observable == [{"ZZ": -1.0}]
