"""A maintainer's re-read of this session's change (README, protos, gateway, client).

Two findings, both in the front end's counting before the expensive step:

- A Pauli evolution of a `SparseObservable` counted 4 operations per factor of each term,
  projectors (`0`, `1`, `+`, `-`, `r`, `l`) included. Qiskit synthesises a term's projectors as
  the controls of one multi-controlled rotation, ~40·p² operations for p of them: a term
  `"0" * 20` counted 81 and came out as 6,705-15,045 operations, so the "upper bound" the
  README promises let a few hundred bytes of QPY past max_definition_operations.
- The OpenQASM 3 nesting checks (the pre-count's parsing work and the 256-level refusal) walked
  brackets with a plain running sum: a `pragma` line (text the parser does not read as
  brackets) of closing brackets made every bracket after it shallower, so 200 statements
  120 `exp(` deep counted as no work and parsed for 6.5 s, and a 300-deep nesting reached the
  parser. Depths are now held at 0.
"""

from __future__ import annotations

import io

import pytest
from qiskit import QuantumCircuit, qpy
from qiskit.circuit.library import PauliEvolutionGate
from qiskit.quantum_info import SparseObservable
from qiskit.synthesis import LieTrotter

from gateway.backends.aer.adapter import AerAdapter
from gateway.backends.base import CIRCUIT_FIELD, CircuitLimits
from gateway.backends.qiskit import frontend as fe
from gateway.domain.circuits import CircuitLanguage, CircuitSource
from gateway.domain.errors import InvalidArgument
from tests.adapters import adapter_context

pytestmark = pytest.mark.timeout(10)


class _NoTranspile:
    """The adapter's pass manager, replaced: a refusal by counting never runs it."""

    def run(self, circuit: QuantumCircuit) -> QuantumCircuit:
        raise AssertionError("the circuit reached the transpiler")


def _projector_evolution(reps: int) -> bytes:
    gate = PauliEvolutionGate(
        SparseObservable.from_list([("0" * 20, 1.0)]), time=0.5, synthesis=LieTrotter(reps=reps)
    )
    circuit = QuantumCircuit(20, 20)
    circuit.append(gate, range(20))
    circuit.measure(range(20), range(20))
    buffer = io.BytesIO()
    qpy.dump(circuit, buffer)
    return buffer.getvalue()


def test_a_projector_term_counts_past_what_its_synthesis_makes() -> None:
    # Hard-coded from Qiskit 2.6's transpile at optimization level 0: "0" * 20 makes 6,705
    # operations on a cx/rz/sx/x basis and 15,045 on cz/rz/sx/x (measured in this review).
    gate = PauliEvolutionGate(SparseObservable.from_list([("0" * 20, 1.0)]), time=1.0)
    assert fe.evolution_size(gate, {"cx", "rz", "sx", "x"}) >= 15_045


def test_a_small_projector_evolution_is_refused_before_synthesis(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Under 2 KB: 5 repetitions synthesise ~33,500-75,000 operations, past the 20,000 of
    # max_definition_operations; counted as 405, it went on to the transpiler.
    data = _projector_evolution(reps=5)
    assert len(data) < 2048
    adapter = AerAdapter(adapter_context("aer"))
    monkeypatch.setattr(adapter, "_pass_manager", lambda *a, **k: _NoTranspile())
    with pytest.raises(InvalidArgument) as info:
        adapter.compile_circuit(CircuitSource(CircuitLanguage.QPY, data=data))
    assert info.value.reason == "CIRCUIT_TOO_COMPLEX", info.value.message
    assert [v.field for v in info.value.field_violations] == [CIRCUIT_FIELD]


def _qasm3(prefix: str, depth: int, statements: int) -> str:
    angle = "exp(" * depth + "0.1" + ")" * depth
    body = "".join(f"rz({angle}) q[0];\n" for _ in range(statements))
    return f'OPENQASM 3.0;\ninclude "stdgates.inc";\n{prefix}qubit[1] q;\n{body}'


def _refused_unparsed(text: str, monkeypatch: pytest.MonkeyPatch) -> InvalidArgument:
    def parser_reached(*args: object) -> object:
        # On the old code the real parser ran here for seconds.
        raise AssertionError("the program reached the parser")

    monkeypatch.setattr(fe, "_parse_qasm3_ast", parser_reached)
    with pytest.raises(InvalidArgument) as info:
        fe.parse_circuit(CircuitSource(CircuitLanguage.QASM3, text), CircuitLimits(), "f")
    return info.value


# Text the parser does not read as brackets, whose `)` took the walk below 0.
_STRAY_CLOSINGS = "pragma " + ")" * 3000 + "\n"


def test_stray_closing_brackets_do_not_hide_nesting_work(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The same program without the pragma is refused at once (89,455 statements' work).
    error = _refused_unparsed(_qasm3(_STRAY_CLOSINGS, 120, 200), monkeypatch)
    assert error.reason == "CIRCUIT_TOO_LARGE", error.message


def test_stray_closing_brackets_do_not_hide_a_too_deep_nesting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    error = _refused_unparsed(_qasm3(_STRAY_CLOSINGS, 300, 1), monkeypatch)
    assert error.reason == "CIRCUIT_TOO_COMPLEX", error.message
