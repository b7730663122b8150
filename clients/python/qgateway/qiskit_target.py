"""A `qiskit.transpiler.Target` from a gateway backend's target (GetBackendTarget).

    from qgateway import Client
    from qgateway.qiskit_target import to_target

    with Client() as client:
        target = to_target(client.get_backend_target("aer"))
    isa = qiskit.transpile(circuit, target=target)

Needs qiskit next to the client: `pip install qgateway[qiskit]` (the extra; qiskit is not a base
dependency). It is imported on first use, so `import qgateway` never pays for it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from qgateway.v1 import backend_pb2

if TYPE_CHECKING:
    from qiskit.transpiler import Target

__all__ = ["to_target"]

# Control flow is registered in a Target as a class (variadic, on any qubits).
_CONTROL_FLOW = {
    "if_else": "IfElseOp",
    "while_loop": "WhileLoopOp",
    "for_loop": "ForLoopOp",
    "switch_case": "SwitchCaseOp",
    "break_loop": "BreakLoopOp",
    "continue_loop": "ContinueLoopOp",
    "box": "BoxOp",
}


def _optional(msg: Any, field: str) -> float | None:
    return getattr(msg, field) if msg.HasField(field) else None


def _operation(instruction: backend_pb2.InstructionProperties, standard: dict[str, Any]) -> Any:
    """The Qiskit operation for an instruction: the standard gate of that name, a control-flow
    class, or (a name this Qiskit does not know) an opaque gate of the stated size."""
    import qiskit.circuit as qc
    from qiskit.circuit import Parameter

    name = instruction.name
    cls_name = _CONTROL_FLOW.get(name)
    if cls_name is not None and hasattr(qc, cls_name):
        return getattr(qc, cls_name)
    operation = standard.get(name)
    if operation is not None and operation.num_qubits == instruction.num_qubits:
        return operation
    params = [Parameter(f"p{i}") for i in range(instruction.num_params)]
    return qc.Gate(name, instruction.num_qubits, params)


def to_target(message: backend_pb2.BackendTarget) -> Target:
    """Builds a Qiskit Target from a BackendTarget message.

    Each instruction is added with its properties per qubit tuple (error and duration, None
    where unknown), or globally (ideal, any qubits) when the message lists no qubits for it;
    qubit T1/T2/frequency become `Target.qubit_properties`; dt and the timing constraints are
    copied. The coupling map follows from the two-qubit instructions' qubits (an empty map in
    the message, all-to-all, means every instruction is global). The calibration time has no
    place in a Target: read it from the message.
    """
    from qiskit.circuit.library import get_standard_gate_name_mapping
    from qiskit.providers import QubitProperties
    from qiskit.transpiler import InstructionProperties, Target

    timing = message.timing_constraints
    qubit_properties = None
    if message.qubits:
        qubit_properties = [
            QubitProperties(
                t1=_optional(q, "t1"), t2=_optional(q, "t2"), frequency=_optional(q, "frequency")
            )
            for q in message.qubits
        ]
    target = Target(
        description=message.name or None,
        num_qubits=message.num_qubits,
        dt=message.dt if message.HasField("dt") else None,
        # Zero means unset (an older gateway, or a hand-made message): Qiskit's default is 1.
        granularity=timing.granularity or 1,
        min_length=timing.min_length or 1,
        pulse_alignment=timing.pulse_alignment or 1,
        acquire_alignment=timing.acquire_alignment or 1,
        qubit_properties=qubit_properties,
    )
    standard = get_standard_gate_name_mapping()
    for instruction in message.instructions:
        operation = _operation(instruction, standard)
        if isinstance(operation, type):
            target.add_instruction(operation, name=instruction.name)
            continue
        properties: dict[tuple[int, ...], InstructionProperties | None] | None = None
        if instruction.qargs:
            properties = {}
            for qarg in instruction.qargs:
                error, duration = _optional(qarg, "error"), _optional(qarg, "duration")
                properties[tuple(qarg.qubits)] = (
                    None
                    if error is None and duration is None
                    else InstructionProperties(error=error, duration=duration)
                )
        target.add_instruction(operation, properties, name=instruction.name)
    return target
