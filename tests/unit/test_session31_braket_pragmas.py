"""Session 31: Amazon Braket's pragmas in OpenQASM 3, and PennyLane's dropped gphase statements.

`#pragma braket unitary(matrix) targets` (`Circuit.unitary`) is read into a UnitaryGate (the
matrix checked by the rule QPY's UnitaryGate is checked by; Braket's first target is the matrix's
most significant bit); `#pragma braket verbatim` before a `box` (`Circuit.add_verbatim_box`)
runs its body on ideal simulators and is refused, naming its line, where the transpiler would
rewrite the body for a device or a noise model; any other pragma is refused naming its line.
What a blanked OpenQASM 2 `gphase` statement says (its operands, its angle) is checked.

Positive cases are compared with Braket's LocalSimulator's own exact probabilities: exactly for
what the front end reads, within a total-variation bound for what the backends sample.
"""

from __future__ import annotations

import io
from collections import Counter
from collections.abc import Sequence

import numpy as np
import pytest
import qiskit.qpy
from braket.circuits import Circuit
from braket.devices import LocalSimulator
from braket.ir.openqasm import Program
from qiskit import QuantumCircuit
from qiskit.circuit.library import UnitaryGate
from qiskit.quantum_info import Statevector, random_unitary

from gateway.backends.aer.adapter import AerAdapter
from gateway.backends.base import CircuitLimits
from gateway.backends.braket.adapter import BraketAdapter
from gateway.backends.ibm.adapter import IbmAdapter
from gateway.backends.pennylane.adapter import PennyLaneAdapter
from gateway.backends.qiskit import frontend as fe
from gateway.domain.circuits import Bindings, CircuitLanguage, CircuitSource, SamplerPub
from gateway.domain.errors import Code, InvalidArgument
from gateway.domain.jobs import JobOptions, JobSpec
from tests.adapters import adapter_context, prepare_in_process
from tests.unit.test_session30_sdk_writers_review import (
    _assert_sampled_from,
    _braket_probabilities,
    _braket_qasm,
    _run,
)

pytestmark = pytest.mark.timeout(60)

Q2, Q3 = CircuitLanguage.QASM2, CircuitLanguage.QASM3
FIELD = "spec.pubs[0].sampler.circuit.qasm3"
H2 = 'OPENQASM 2.0;\ninclude "qelib1.inc";\n'
Adapter = AerAdapter | BraketAdapter | PennyLaneAdapter


@pytest.fixture(scope="module")
def aer() -> AerAdapter:
    return AerAdapter(adapter_context("aer-test"))


@pytest.fixture(scope="module")
def braket() -> BraketAdapter:
    return BraketAdapter(adapter_context("braket-test", device="braket_sv"))


@pytest.fixture(scope="module")
def pennylane() -> PennyLaneAdapter:
    return PennyLaneAdapter(adapter_context("pennylane-test", device="default.qubit"))


@pytest.fixture(scope="module", params=["aer", "braket", "pennylane"])
def ideal(
    request: pytest.FixtureRequest,
    aer: AerAdapter,
    braket: BraketAdapter,
    pennylane: PennyLaneAdapter,
) -> Adapter:
    adapters: dict[str, Adapter] = {"aer": aer, "braket": braket, "pennylane": pennylane}
    return adapters[request.param]


@pytest.fixture(scope="module")
def local() -> LocalSimulator:
    return LocalSimulator("braket_sv")


def parsed(text: str, language: CircuitLanguage = Q3) -> QuantumCircuit:
    return fe.parse_circuit(CircuitSource(language, text), CircuitLimits(), FIELD)


def refused(text: str, reason: str, language: CircuitLanguage = Q3) -> InvalidArgument:
    with pytest.raises(InvalidArgument) as info:
        parsed(text, language)
    error = info.value
    assert error.reason == reason, (error.reason, error.message)
    assert error.code is Code.INVALID_ARGUMENT
    assert [v.field for v in error.field_violations] == [FIELD]
    return error


def compile_refusal(adapter: Adapter, text: str) -> InvalidArgument:
    pub = SamplerPub(CircuitSource(Q3, text), bindings=Bindings(), shots=8)
    spec = JobSpec(backend=adapter.context.name, pubs=(pub,), options=JobOptions())
    with pytest.raises(InvalidArgument) as info:
        prepare_in_process(adapter, spec, 5)
    return info.value


def braket_order_probabilities(circuit: QuantumCircuit) -> np.ndarray:
    """Exact probabilities of a parsed circuit, indexed with qubit 0 most significant."""
    state = Statevector(circuit.remove_final_measurements(inplace=False))
    n = circuit.num_qubits
    order = [int(f"{i:0{n}b}"[::-1], 2) for i in range(2**n)]
    return np.asarray(state.probabilities(), dtype=np.float64)[order]


def local_probabilities(local: LocalSimulator, source: str) -> np.ndarray:
    """LocalSimulator's exact probabilities of a hand-written program (qubit 0 most
    significant): its measurements replaced by a probability result."""
    lines = [line for line in source.splitlines() if "measure" not in line]
    program = "\n".join([*lines, "#pragma braket result probability"]) + "\n"
    task = local.run(Program(source=program), shots=0)
    return np.asarray(task.result().values[0], dtype=np.float64)


def framed_unitary(matrix: np.ndarray, targets: Sequence[int], qubits: int = 3) -> Circuit:
    """The unitary between layers that make every amplitude and phase count."""
    circuit = Circuit()
    for qubit in range(qubits):
        circuit.ry(qubit, 0.4 + 0.7 * qubit).rz(qubit, 0.3 - 0.5 * qubit)
    circuit.unitary(matrix=matrix, targets=list(targets))
    for qubit in range(qubits):
        circuit.h(qubit).rx(qubit, 0.9 - 0.2 * qubit)
    return circuit


# ------------------------------------------------------------------ the unitary pragma

# Non-symmetric unitaries on scrambled targets: a matrix read with its qubits reversed, or its
# rows and columns swapped, gives other probabilities.
_UNITARY_CASES = [
    (1, (1,)),
    (2, (0, 2)),
    (2, (2, 0)),
    (3, (1, 2, 0)),
]


@pytest.mark.parametrize(("width", "targets"), _UNITARY_CASES)
def test_a_unitary_reads_as_local_simulator_runs_it(
    local: LocalSimulator, width: int, targets: tuple[int, ...]
) -> None:
    matrix = random_unitary(2**width, seed=17 + width).data
    circuit = framed_unitary(matrix, targets)
    text = _braket_qasm(circuit)
    assert "#pragma braket unitary" in text and "im" in text  # complex entries, Braket's way
    ours = braket_order_probabilities(parsed(text))
    np.testing.assert_allclose(ours, _braket_probabilities(local, circuit), atol=1e-9)


@pytest.mark.parametrize(("width", "targets"), _UNITARY_CASES[1:3])
def test_a_unitary_samples_as_local_simulator_runs_it(
    ideal: Adapter, local: LocalSimulator, width: int, targets: tuple[int, ...]
) -> None:
    matrix = random_unitary(2**width, seed=17 + width).data
    circuit = framed_unitary(matrix, targets)
    (counts,) = _run(ideal, _braket_qasm(circuit))
    _assert_sampled_from(counts["b"], _braket_probabilities(local, circuit))


def test_a_unitary_on_physical_qubits(aer: AerAdapter, local: LocalSimulator) -> None:
    circuit = framed_unitary(random_unitary(4, seed=3).data, (2, 1))
    text = _braket_qasm(circuit, physical=True)
    assert "$2, $1" in text and "qubit[" not in text
    (counts,) = _run(aer, text)
    _assert_sampled_from(counts["b"], _braket_probabilities(local, circuit))


@pytest.mark.parametrize(
    "entries",
    [
        # Braket's own forms: `im` alone, `a + bim`, and what its reader also takes.
        "[[0.7071067811865475, 0.7071067811865475im], "
        "[0.7071067811865475im, 0.7071067811865475 + 0im]]",
        "[[0.6 - -0.8im, 0], [0, 1]]",
        "[[.6, .8], [-.8, .6]]",
        "[[6e-1, 8E-1], [-0.8, 0.6 + 0.0im]]",
        "[ [ 0 , -1im ] , [ 1im , 0 ] ]",
    ],
)
def test_complex_literals_as_braket_reads_them(local: LocalSimulator, entries: str) -> None:
    text = f"OPENQASM 3.0;\nqubit[1] q;\nry(0.3) q[0];\n#pragma braket unitary({entries}) q[0]\n"
    ours = braket_order_probabilities(parsed(text))
    np.testing.assert_allclose(ours, local_probabilities(local, text), atol=1e-9)


def test_the_matrix_is_qiskits_unitary_gate_with_qubits_reversed() -> None:
    matrix = random_unitary(4, seed=5).data
    text = _braket_qasm(Circuit().unitary(matrix=matrix, targets=[0, 1]))
    (instruction, *_) = parsed(text).data
    assert isinstance(instruction.operation, UnitaryGate)
    # Braket's target 0 is the most significant bit, Qiskit's qubit 0 the least.
    swapped = matrix.reshape(2, 2, 2, 2).transpose(1, 0, 3, 2).reshape(4, 4)
    np.testing.assert_allclose(instruction.operation.to_matrix(), swapped, atol=1e-12)


def test_a_pragma_in_a_comment_is_a_comment() -> None:
    text = "OPENQASM 3.0;\nqubit[1] q;\n// #pragma braket unitary([[0, 1], [1, 1]]) q[0]\n"
    text += "/* #pragma braket verbatim */\nx q[0];\n"
    assert [i.operation.name for i in parsed(text).data] == ["x"]


@pytest.mark.parametrize(
    ("pragma", "reason", "says"),
    [
        ("unitary([[1, 1], [1, -1]]) q[0]", "INVALID_QASM", "not unitary"),
        ("unitary([[1, 0], [0, 1.001]]) q[0]", "INVALID_QASM", "not unitary"),
        ("unitary([[0, 1], [1, nan]]) q[0]", "INVALID_QASM", "'nan' is not a matrix entry"),
        ("unitary([[0, 1], [1, inf]]) q[0]", "INVALID_QASM", "'inf' is not a matrix entry"),
        ("unitary([[0, 1], [1, 1e400]]) q[0]", "NON_FINITE_ANGLE", "not finite"),
        ("unitary([[0, 1], [1, pi]]) q[0]", "INVALID_QASM", "'pi' is not a matrix entry"),
        ("unitary([[0, 1], [1, 0]]) q[0], q[1]", "INVALID_QASM", "is a 4 x 4 matrix"),
        (
            "unitary([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]) q[0]",
            "INVALID_QASM",
            "is a 2 x 2 matrix",
        ),
        ("unitary([[0, 1], [1]]) q[0]", "INVALID_QASM", "is a 2 x 2 matrix"),
        ("unitary([[0, 1], [1, 0]])", "INVALID_QASM", "not ''"),
        ("unitary([[0, 1], [1, 0]]) q", "INVALID_QASM", "not 'q'"),
        ("unitary([[0, 1], [1, 0]]) q[0:1]", "INVALID_QASM", "not 'q[0:1]'"),
        ("unitary([0, 1, 1, 0]) q[0]", "INVALID_QASM", "written [[a, b], [c, d]]"),
        ("unitary(([[0, 1], [1, 0]])) q[0]", "UNSUPPORTED_FEATURE", "Pragma"),
        ("unitary([[0, 1], [1, 0]]) q[5]", "INVALID_QASM", "past the end of its register"),
        ("unitary([[0, 1], [1, 0]]) r[0]", "INVALID_QASM", "Undefined symbol 'r'"),
        (
            "unitary([[1,0,0,0],[0,1,0,0],[0,0,0,1],[0,0,1,0]]) q[1], q[1]",
            "INVALID_QASM",
            "distinct",
        ),
    ],
)
def test_a_bad_unitary_pragma_is_refused_at_its_line(pragma: str, reason: str, says: str) -> None:
    text = f"OPENQASM 3.0;\nqubit[2] q;\nh q[0];\n#pragma braket {pragma}\n"
    error = refused(text, reason)
    assert "line 4" in error.message and says in error.message, error.message


def test_a_gate_call_past_its_registers_end_names_its_line() -> None:
    # Was "an index is out of range", no line (the importer's IndexError), for any gate call.
    error = refused("OPENQASM 3.0;\nqubit[2] q;\nh q[0];\ncnot q[0], q[2];\n", "INVALID_QASM")
    assert "line 4, column 0: a qubit index is past the end of its register" in error.message


def test_a_unitary_pragma_named_like_a_register_or_gate_of_the_program() -> None:
    # The gate a pragma becomes takes a name of its own, whatever the program calls its own.
    text = "OPENQASM 3.0;\nqubit[1] braket_unitary;\ngate unitary a { x a; }\n"
    text += (
        "#pragma braket unitary([[0, 1], [1, 0]]) braket_unitary[0]\nunitary braket_unitary[0];\n"
    )
    circuit = parsed(text)
    assert [i.operation.name for i in circuit.data] == ["unitary", "unitary"]
    assert Statevector(circuit).probabilities().tolist() == [1.0, 0.0]  # X twice


def _permutation_pragma(qubits: int) -> str:
    size = 2**qubits
    rows = []
    for row in range(size):
        entries = ["0"] * size
        entries[(row + 1) % size] = "1"
        rows.append(f"[{','.join(entries)}]")
    targets = ", ".join(f"q[{i}]" for i in range(qubits))
    return (
        f"OPENQASM 3.0;\nqubit[{qubits}] q;\n#pragma braket unitary([{','.join(rows)}]) {targets}\n"
    )


def _qpy_unitary(qubits: int) -> bytes:
    size = 2**qubits
    circuit = QuantumCircuit(qubits)
    circuit.append(
        UnitaryGate(np.roll(np.eye(size), 1, axis=0).T, check_input=False), range(qubits)
    )
    buffer = io.BytesIO()
    qiskit.qpy.dump(circuit, buffer)
    return buffer.getvalue()


def _outcome(adapter: Adapter, source: CircuitSource) -> str:
    try:
        adapter.compile_circuit(source)
    except InvalidArgument as error:
        return error.reason
    return "accepted"


@pytest.mark.parametrize("qubits", [6, 7, 8])
def test_a_large_unitary_meets_the_limits_a_qpy_unitary_gate_meets(
    aer: AerAdapter, qubits: int
) -> None:
    """The same matrix as a pragma and as a QPY UnitaryGate: the same answer (a matrix gate
    counts as what synthesising it makes, against the same operation limits)."""
    text = _permutation_pragma(qubits)
    as_pragma = _outcome(aer, CircuitSource(Q3, text))
    as_qpy = _outcome(aer, CircuitSource(CircuitLanguage.QPY, data=_qpy_unitary(qubits)))
    assert as_pragma == as_qpy, (as_pragma, as_qpy)


def test_a_matrix_past_the_source_limit_is_refused_before_it_is_read() -> None:
    text = "OPENQASM 3.0;\nqubit[1] q;\n#pragma braket unitary([[" + "0, " * 400_000 + "1]]) q[0]\n"
    refused(text, "CIRCUIT_TOO_LARGE")


@pytest.mark.timeout(20)
@pytest.mark.parametrize(
    ("matrix", "reason"),
    [
        ("[[" + " " * 900_000 + "x]]", "INVALID_QASM"),  # one blank run, no bracket after it
        ("[[" + "1 " * 400_000 + "im, 0], [0, 1]]", "INVALID_QASM"),
        # Refused by the nesting check before any pragma is read.
        ("[[0, " + "- " * 400_000 + "1], [1, 0]]", "CIRCUIT_TOO_COMPLEX"),
        ("[" * 400_000, "CIRCUIT_TOO_COMPLEX"),
    ],
    ids=["blanks", "digits-and-blanks", "signs", "brackets"],
)
def test_pathological_matrix_text_is_refused_in_linear_time(matrix: str, reason: str) -> None:
    refused(f"OPENQASM 3.0;\nqubit[1] q;\n#pragma braket unitary({matrix}) q[0]\n", reason)


def test_a_huge_matrix_shape_is_refused_by_its_shape() -> None:
    # 4096 rows for one target: refused by its shape, without a 4096 x 4096 product.
    rows = ",".join(["[0]"] * 4096)
    text = f"OPENQASM 3.0;\nqubit[1] q;\n#pragma braket unitary([{rows}]) q[0]\n"
    assert "is a 2 x 2 matrix" in refused(text, "INVALID_QASM").message


# ------------------------------------------------------------------ the verbatim box


def _verbatim_circuit() -> Circuit:
    body = Circuit().h(0).cnot(0, 1).ry(2, 0.7).cz(1, 2).rx(0, 0.4)
    # Identities first: Braket's writer measures physical qubits in the order of first use.
    return Circuit().i(0).i(1).x(2).add_verbatim_box(body).ry(1, 0.3)


def test_a_verbatim_box_runs_as_local_simulator_runs_it(
    ideal: Adapter, local: LocalSimulator
) -> None:
    circuit = _verbatim_circuit()
    text = _braket_qasm(circuit)
    assert "#pragma braket verbatim\nbox{" in text
    (counts,) = _run(ideal, text)
    _assert_sampled_from(counts["b"], _braket_probabilities(local, circuit))


def test_a_verbatim_box_on_physical_qubits(aer: AerAdapter, local: LocalSimulator) -> None:
    circuit = _verbatim_circuit()
    text = _braket_qasm(circuit, physical=True)
    (counts,) = _run(aer, text)
    _assert_sampled_from(counts["b"], _braket_probabilities(local, circuit))


def test_a_verbatim_box_is_a_labelled_box_until_a_backend_opens_it(local: LocalSimulator) -> None:
    circuit = parsed(_braket_qasm(_verbatim_circuit()))
    boxes = [i.operation for i in circuit.data if i.operation.name == "box"]
    assert [box.label for box in boxes] == [f"{fe.VERBATIM_BOX_LABEL} line 7"]
    opened = fe.open_verbatim_boxes(circuit, True, FIELD)
    assert "box" not in opened.count_ops()
    np.testing.assert_allclose(
        braket_order_probabilities(opened),
        _braket_probabilities(local, _verbatim_circuit()),
        atol=1e-9,
    )


@pytest.mark.parametrize(
    "make",
    [
        lambda: AerAdapter(
            adapter_context("aer-noisy", method="density_matrix", noise_from="FakeManilaV2")
        ),
        lambda: AerAdapter(
            adapter_context("aer-mps-capped", method="matrix_product_state", max_bond_dimension=4)
        ),
        lambda: BraketAdapter(
            adapter_context("braket-noisy", device="braket_dm", noise={"depolarizing_1q": 0.01})
        ),
        lambda: BraketAdapter(
            adapter_context(
                "sv1",
                device="arn:aws:braket:::device/quantum-simulator/amazon/sv1",
                region="us-east-1",
                s3_bucket="results",
            )
        ),
        lambda: IbmAdapter(adapter_context("ibm", backend="FakeManilaV2")),
    ],
    ids=["aer-noisy-device", "aer-mps-truncated", "braket-dm-noise", "braket-cloud", "ibm"],
)
def test_a_verbatim_box_is_refused_where_the_body_would_not_run_as_written(make: object) -> None:
    adapter = make()  # type: ignore[operator]
    error = compile_refusal(adapter, _braket_qasm(_verbatim_circuit()))
    assert error.reason == "UNSUPPORTED_FEATURE"
    assert error.metadata["feature"] == "verbatim_box"
    assert "line 7" in error.message and "verbatim" in error.message


def test_a_plain_box_is_still_the_backends_to_refuse(aer: AerAdapter) -> None:
    text = "OPENQASM 3.0;\nqubit[2] q;\nbit[2] b;\nbox { h q[0]; }\nb = measure q;\n"
    error = compile_refusal(aer, text)
    assert error.reason == "UNSUPPORTED_FEATURE" and error.metadata["feature"] == "box"


@pytest.mark.parametrize(
    ("text", "reason", "says"),
    [
        # Not followed by a box.
        ("#pragma braket verbatim\nh q[0];\n", "INVALID_QASM", "line 3, column 0"),
        ("h q[0];\n#pragma braket verbatim\n", "INVALID_QASM", "line 4, column 0"),
        (
            "#pragma braket verbatim\n#pragma braket verbatim\nbox { h q[0]; }\n",
            "INVALID_QASM",
            "line 3, column 0",
        ),
        # Inside control flow or another box: OpenQASM 3 allows pragmas at the top level only.
        (
            "bit c;\nif (c) {\n#pragma braket verbatim\nbox { h q[0]; }\n}\n",
            "INVALID_QASM",
            "line 5, column 0: pragmas must be global",
        ),
        (
            "box {\n#pragma braket verbatim\nbox { h q[0]; }\n}\n",
            "INVALID_QASM",
            "line 4, column 0: pragmas must be global",
        ),
        ("#pragma braket verbatim\nbox[100ns] { h q[0]; }\n", "UNSUPPORTED_FEATURE", "line 3"),
        # Other pragmas, Braket's included.
        ("#pragma braket verbatim please\nbox { h q[0]; }\n", "UNSUPPORTED_FEATURE", "line 3"),
        ("#pragma braket noise bit_flip(0.1) q[0]\n", "UNSUPPORTED_FEATURE", "line 3"),
        ("#pragma braket result expectation z(q[0])\n", "UNSUPPORTED_FEATURE", "line 3"),
        ("#pragma qiskit something\n", "UNSUPPORTED_FEATURE", "line 3"),
        ("#pragma\nh q[0];\n", "INVALID_QASM", "syntax error at line 4"),  # the parser's
    ],
)
def test_pragmas_out_of_place_or_unknown_are_refused_at_their_line(
    text: str, reason: str, says: str
) -> None:
    error = refused("OPENQASM 3.0;\nqubit[2] q;\n" + text, reason)
    assert says in error.message, error.message


def test_an_unknown_pragma_names_itself() -> None:
    error = refused(
        "OPENQASM 3.0;\nqubit[1] q;\n#pragma braket noise kraus([[1]]) q[0]\n",
        "UNSUPPORTED_FEATURE",
    )
    assert "#pragma braket noise kraus" in error.message and "Pragma" in error.message
    assert error.metadata == {"feature": "Pragma"}


# ------------------------------------------------------------------ PennyLane's gphase (OpenQASM 2)


@pytest.mark.parametrize(
    ("statement", "reason", "says"),
    [
        ("gphase(0.5) q[7];", "INVALID_QASM", "qubit 7 of register 'q' (size 2) does not exist"),
        ("gphase(0.5) r[0];", "INVALID_QASM", "'r[0]' is not a quantum register"),
        ("gphase(0.5) c[0];", "INVALID_QASM", "'c[0]' is not a quantum register"),
        ("gphase(0.5) q[0],r;", "INVALID_QASM", "'r' is not a quantum register"),
        # The scan's own refusal of an index past 64 bits, as for any statement.
        ("gphase(0.5) q[99999999999999999999999];", "INVALID_QASM", "number out of range"),
        ("gphase(nan) q[0];", "NON_FINITE_ANGLE", "not a number"),
        ("gphase(inf) ;", "NON_FINITE_ANGLE", "not a number"),
        ("gphase(1e400) q[0];", "NON_FINITE_ANGLE", "not finite"),
        ("gphase(exp(1000)) q[0];", "NON_FINITE_ANGLE", "not finite"),
        ("gphase(0.5 +) q[0];", "INVALID_QASM", "not a valid expression"),
        ("gphase(theta) q[0];", "INVALID_QASM", "not a valid expression"),
        ("gphase() q[0];", "INVALID_QASM", "not one expression in parentheses"),
        ("gphase((0.5) q[0];", "INVALID_QASM", "not one expression in parentheses"),
    ],
)
def test_what_a_dropped_phase_names_is_checked(statement: str, reason: str, says: str) -> None:
    text = H2 + "qreg q[2];\ncreg c[2];\nh q[0];\n" + statement + "\nmeasure q -> c;\n"
    error = refused(text, reason, Q2)
    assert "line 6" in error.message and says in error.message, error.message


def test_a_dropped_phase_before_its_register_is_declared_is_refused() -> None:
    error = refused(H2 + "gphase(0.5) q[0];\nqreg q[1];\n", "INVALID_QASM", Q2)
    assert "line 3" in error.message and "declared before it" in error.message


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ("gphase(b) r;", "not a valid expression"),
        ("gphase(a) s;", "'s' is not a qubit of the gate being defined"),
        ("gphase(a) q[0];", "is not a qubit of the gate being defined"),
    ],
)
def test_a_dropped_phase_in_a_gate_body_names_what_the_gate_has(body: str, says: str) -> None:
    text = H2 + f"qreg q[1];\ngate g(a) r {{ {body} x r; }}\ng(0.1) q[0];\n"
    error = refused(text, "INVALID_QASM", Q2)
    assert "line 4" in error.message and says in error.message, error.message


@pytest.mark.parametrize(
    "statement",
    [
        "gphase(0.3) ;",  # qml.GlobalPhase on every wire
        "gphase(0.2) q[0],q[1];",
        "gphase(-0.7853981633974483) q[1];",  # qml.SX's decomposition
        "gphase(pi/2 + sin(0.3)) q;",
        "gphase(0.1 // a comment inside\n) q[0];",
    ],
)
def test_what_pennylane_writes_still_runs(aer: AerAdapter, statement: str) -> None:
    text = H2 + "qreg q[2];\ncreg c[2];\nx q[1];\n" + statement + "\nmeasure q -> c;\n"
    (counts,) = _run(aer, text, Q2, shots=64)
    assert counts == {"c": Counter({"10": 64})}


def test_a_dropped_phase_in_a_gate_body_using_its_parameter_still_runs(aer: AerAdapter) -> None:
    text = H2 + "qreg q[1];\ncreg c[1];\ngate g(a) r { gphase(a*2) r; x r; }\ng(0.1) q[0];\n"
    text += "measure q -> c;\n"
    (counts,) = _run(aer, text, Q2, shots=64)
    assert counts == {"c": Counter({"1": 64})}


def test_many_dropped_phases_are_checked_in_one_read() -> None:
    # 20,000 statements: one probe program for all of them, not one reader call each.
    text = H2 + "qreg q[2];\n" + "gphase(0.25) q[0],q[1];\n" * 20_000 + "h q[0];\n"
    assert [i.operation.name for i in parsed(text, Q2).data] == ["h"]


@pytest.mark.timeout(20)
def test_dropped_phases_in_a_gate_with_many_parameters_are_read_once() -> None:
    # One probe gate per body: its header is not copied for each of its statements (3000
    # parameters x 5000 statements would be a probe of ~100 MB).
    parameters = ",".join(f"a{i}" for i in range(3000))
    body = "\n".join(["gphase(a1 * 2) r;"] * 5000)
    text = H2 + f"qreg q[1];\ngate g({parameters}) r {{\n{body}\nx r;\n}}\n"
    assert parsed(text, Q2).data == []


def test_a_bad_angle_deep_in_a_gate_body_names_its_own_line() -> None:
    text = H2 + "qreg q[1];\ngate g(a) r {\ngphase(a) r;\ngphase(a + b) r;\nx r;\n}\n"
    text += "gate h(c) r {\ngphase(c) r;\n}\ngphase(0.5) q[0];\ngphase(zz) q[0];\n"
    error = refused(text, "INVALID_QASM", Q2)
    assert "line 6, column 0" in error.message and "'b'" in error.message, error.message
    ok = text.replace("a + b", "a + 1")
    error = refused(ok, "INVALID_QASM", Q2)
    assert "line 13, column 0" in error.message and "'zz'" in error.message, error.message
