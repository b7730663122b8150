"""Helpers for tests of backend targets (GetBackendTarget): circuits built from a Target."""

from __future__ import annotations

import io

from qgateway.qiskit_target import to_target
from qgateway.v1 import backend_pb2
from qiskit import QuantumCircuit, qpy
from qiskit.circuit import ControlFlowOp
from qiskit.transpiler import Target

from gateway.api import backend_codec
from gateway.backends.qiskit.adapter import QiskitAdapter
from gateway.domain.circuits import CircuitLanguage, CircuitSource

__all__ = [
    "active_qubits",
    "bell",
    "client_target",
    "every_instruction",
    "operation_names",
    "qpy_bytes",
    "qpy_source",
]


def every_instruction(target: Target) -> QuantumCircuit:
    """A circuit that uses every instruction of `target` at least once: each gate on the first
    qubits with distinct angles, measure, reset and delay, if/else, while and for loops and a
    switch around small bodies, and break and continue inside for loops. For global
    (all-to-all) targets."""
    sizes = [
        op.num_qubits
        for op in map(target.operation_from_name, target.operation_names)
        if not isinstance(op, type)
    ]
    width = max(3, *sizes)
    qc = QuantumCircuit(width, width)
    qc.h(0)
    qc.measure(0, 0)
    for name in sorted(target.operation_names):
        op = target.operation_from_name(name)
        if name == "if_else":
            with qc.if_test((qc.clbits[0], 1)) as else_:
                qc.x(1)
            with else_:
                qc.h(1)
        elif name == "while_loop":
            with qc.while_loop((qc.clbits[1], 1)):
                qc.reset(1)
                qc.measure(1, 1)
        elif name == "for_loop":
            with qc.for_loop(range(2)):
                qc.x(2)
        elif name == "break_loop":
            with qc.for_loop(range(2)):
                qc.measure(2, 2)
                with qc.if_test((qc.clbits[2], 1)):
                    qc.break_loop()
        elif name == "continue_loop":
            with qc.for_loop(range(2)):
                qc.continue_loop()
        elif name == "switch_case":
            with qc.switch(qc.clbits[0]) as case:
                with case(True):
                    qc.x(1)
                with case(case.DEFAULT):
                    qc.h(2)
        elif name == "measure":
            qc.measure(1, 1)
        elif name == "reset":
            qc.reset(2)
        elif name == "delay":
            qc.delay(16, 0, unit="dt")
        else:
            if isinstance(op, type | ControlFlowOp):
                raise AssertionError(f"no circuit for control flow {name!r}")
            params = [0.25 + 0.1 * i for i in range(len(op.params))]
            gate = type(op)(*params) if params else op
            qc.append(gate, list(range(op.num_qubits)))
    qc.measure(range(width), range(width))
    return qc


def operation_names(circuit: QuantumCircuit) -> set[str]:
    """The circuit's operation names, those inside control-flow blocks (break and continue
    live only there) included."""
    names: set[str] = set()
    for instruction in circuit.data:
        names.add(instruction.operation.name)
        for block in getattr(instruction.operation, "blocks", ()):
            names |= operation_names(block)
    return names


def qpy_bytes(circuit: QuantumCircuit) -> bytes:
    """The circuit as QPY, the format that carries every standard gate as itself."""
    out = io.BytesIO()
    qpy.dump(circuit, out)
    return out.getvalue()


def qpy_source(circuit: QuantumCircuit) -> CircuitSource:
    return CircuitSource(CircuitLanguage.QPY, data=qpy_bytes(circuit))


def bell(measured: bool = True) -> QuantumCircuit:
    """A Bell pair on qubits 0 and 1, to transpile for a client's Target."""
    circuit = QuantumCircuit(2)
    circuit.h(0)
    circuit.cx(0, 1)
    if measured:
        circuit.measure_all()
    return circuit


def client_target(adapter: QiskitAdapter, name: str) -> Target:
    """The Target a client builds from GetBackendTarget (through the wire bytes)."""
    message = backend_codec.encode_target(name, adapter.target())
    return to_target(backend_pb2.BackendTarget.FromString(message.SerializeToString()))


def active_qubits(circuit: QuantumCircuit) -> set[int]:
    """The qubits an instruction other than a barrier acts on."""
    return {
        circuit.find_bit(q).index
        for instruction in circuit.data
        if instruction.operation.name != "barrier"
        for q in instruction.qubits
    }
