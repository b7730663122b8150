"""Review of this session's later changes (QASM 3 gate parameter order, break/continue, Aer
binding groups). Its three findings, each failing before its fix: a QPY break or continue
outside any loop reached Aer (a TypeError, an SDK_ERROR the breaker counts), an error message
named another gate's parameter, and a state vector exactly at the budget was refused (the
first binding's copy of the circuit was counted)."""

from __future__ import annotations

import io

import pytest
from qiskit import QuantumCircuit, qpy
from qiskit.circuit import BreakLoopOp, ContinueLoopOp

from gateway.backends.aer.adapter import AerAdapter
from gateway.backends.base import CircuitLimits
from gateway.backends.qiskit.frontend import parse_circuit
from gateway.domain.circuits import CircuitLanguage, CircuitSource
from gateway.domain.errors import InvalidArgument
from tests.adapters import prepare_in_process
from tests.unit.test_aer_adapter import context, q3, sampler, spec

_STD = 'OPENQASM 3.0;\ninclude "stdgates.inc";\n'


def _qpy(circuit: QuantumCircuit) -> CircuitSource:
    buffer = io.BytesIO()
    qpy.dump(circuit, buffer)
    return CircuitSource(CircuitLanguage.QPY, data=buffer.getvalue())


@pytest.mark.parametrize("op", [BreakLoopOp, ContinueLoopOp])
def test_qpy_break_outside_any_loop_is_refused_at_admission(op: type) -> None:
    # QPY carries a `break`/`continue` appended outside any loop (QASM 3's reader refuses it:
    # "'break' statement outside loop"). Accepted now by qpy_reader's _NON_UNITARY, it passed
    # admission and Aer's assembler raised TypeError ("jump(): incompatible function
    # arguments") in the worker: an SDK_ERROR, which the backend's breaker counts, so a client
    # could open every tenant's breaker with a few such jobs.
    circuit = QuantumCircuit(1, 1)
    circuit.h(0)
    circuit.append(op(1, 1), [0], [0])
    circuit.measure(0, 0)
    adapter = AerAdapter(context())
    with pytest.raises(InvalidArgument):
        prepare_in_process(adapter, spec(sampler(_qpy(circuit), shots=10)), 1)


def test_qasm3_error_names_the_parameter_of_the_gate_at_fault() -> None:
    # Every gate's parameters become _qgw_gate_parameter_<i>; the {new: old} map keeps the
    # last gate's name for each, so an error in `g` about its parameter `a` names `b`, the
    # parameter of a later gate `k`.
    text = _STD + "gate g(a) a { rx(a) a; }\ngate k(b) r { rz(b) r; }\nqubit q; g(0.5) q;"
    with pytest.raises(InvalidArgument) as info:
        parse_circuit(CircuitSource(CircuitLanguage.QASM3, text), CircuitLimits(), "f")
    assert "'a'" in info.value.message, info.value.message


@pytest.mark.parametrize("qubits", [10, 16])
def test_a_state_exactly_at_the_budget_is_still_admitted(qubits: int) -> None:
    adapter = AerAdapter(context(budget=16 << qubits))
    text = f"qubit[{qubits}] q; bit[{qubits}] c; h q; c = measure q;"
    prepared = prepare_in_process(adapter, spec(sampler(q3(text), shots=10)), 1)
    assert prepared.memory_bytes <= 16 << qubits


def test_qpy_break_inside_a_loop_still_admitted() -> None:
    # The fix's other side: a `break` under an `if` inside a `for` (and a `while`) stays valid.
    circuit = QuantumCircuit(1, 1)
    with circuit.for_loop(range(3)):
        circuit.h(0)
        circuit.measure(0, 0)
        with circuit.if_test((circuit.clbits[0], 1)):
            circuit.break_loop()
    with circuit.while_loop((circuit.clbits[0], 1)):
        circuit.h(0)
        circuit.measure(0, 0)
        circuit.continue_loop()
    prepare_in_process(AerAdapter(context()), spec(sampler(_qpy(circuit), shots=10)), 1)
