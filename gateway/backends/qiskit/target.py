"""`qiskit.transpiler.Target` -> the gateway's SDK-free BackendTarget.

Shared by every adapter of the Qiskit family (Aer now, IBM Runtime's devices later): each hands
over its own Target, and only the instructions the gateway accepts are kept, so a circuit a
client transpiles for the result is one the gateway runs.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Collection
from datetime import datetime

from qiskit.circuit import Delay, IfElseOp, Measure, Parameter, Reset
from qiskit.circuit.library import get_standard_gate_name_mapping
from qiskit.transpiler import Target

from gateway.backends.qiskit.frontend import ACCEPTED_INSTRUCTION_NAMES
from gateway.domain.circuits import CircuitFeature
from gateway.domain.targets import (
    BackendTarget,
    QargProperties,
    QubitProperties,
    TargetInstruction,
    TimingConstraints,
)

__all__ = ["from_qiskit_target", "ideal_target"]


def _float(value: object) -> float | None:
    return None if value is None else float(value)  # type: ignore[arg-type]


def _instruction(target: Target, name: str) -> TargetInstruction:
    operation = target.operation_from_name(name)
    if inspect.isclass(operation):
        # Control flow is registered as a class: variadic, any qubits.
        return TargetInstruction(name=name, num_qubits=0, num_params=0)
    qargs: list[QargProperties] = []
    for qarg, props in target[name].items():
        if qarg is None:
            # A global instruction: ideal on any qubits (properties of a global entry have no
            # qubits to belong to, and Qiskit's transpiler ignores them too).
            return TargetInstruction(name, operation.num_qubits, len(operation.params))
        qargs.append(
            QargProperties(
                qubits=tuple(int(q) for q in qarg),
                error=None if props is None else _float(props.error),
                duration=None if props is None else _float(props.duration),
            )
        )
    qargs.sort(key=lambda q: q.qubits)
    return TargetInstruction(name, operation.num_qubits, len(operation.params), tuple(qargs))


def _qubits(target: Target, measure: TargetInstruction | None) -> tuple[QubitProperties, ...]:
    properties = target.qubit_properties
    readout = {q.qubits[0]: q.error for q in measure.qargs} if measure is not None else {}
    if not properties and not readout:
        return ()
    out = []
    for index in range(target.num_qubits or 0):
        qp = properties[index] if properties and index < len(properties) else None
        out.append(
            QubitProperties(
                t1=None if qp is None else _float(qp.t1),
                t2=None if qp is None else _float(qp.t2),
                frequency=None if qp is None else _float(qp.frequency),
                readout_error=readout.get(index),
            )
        )
    return tuple(out)


def from_qiskit_target(
    target: Target,
    *,
    accepted: Collection[str] | Callable[[str], bool] = ACCEPTED_INSTRUCTION_NAMES,
    calibration_time: datetime | None = None,
) -> BackendTarget:
    """The gateway's view of a Qiskit Target.

    Args:
        target: The backend's own Target.
        accepted: Instruction names to keep (default: what the Qiskit front end accepts), or a
            predicate on names; any other instruction of the target is left out.
        calibration_time: When the target's calibration data was taken (a Target does not
            record it; IBM backends know it from their properties).

    Returns:
        The instructions kept, in name order; per-qubit T1/T2/frequency and the measure
        instruction's error as readout error (empty when the target has neither); dt and timing
        constraints; the directed two-qubit edges of the kept instructions (empty when every
        two-qubit instruction is global: all-to-all).
    """
    keep = accepted if callable(accepted) else accepted.__contains__
    instructions = tuple(
        _instruction(target, name) for name in sorted(target.operation_names) if keep(name)
    )
    edges = sorted({q.qubits for i in instructions for q in i.qargs if len(q.qubits) == 2})
    measure = next((i for i in instructions if i.name == "measure" and i.qargs), None)
    return BackendTarget(
        num_qubits=int(target.num_qubits or 0),
        instructions=instructions,
        qubits=_qubits(target, measure),
        dt=_float(target.dt),
        timing_constraints=TimingConstraints(
            granularity=int(target.granularity),
            min_length=int(target.min_length),
            pulse_alignment=int(target.pulse_alignment),
            acquire_alignment=int(target.acquire_alignment),
        ),
        calibration_time=calibration_time,
        coupling_map=tuple((int(a), int(b)) for a, b in edges),
    )


def ideal_target(
    gates: Collection[str],
    num_qubits: int,
    features: Collection[CircuitFeature],
    description: str,
    *,
    delay: bool = False,
) -> Target:
    """An all-to-all, noiseless Target of Qiskit standard gates (by name), measure, and reset
    or if/else where the backend runs them: what a simulator that is not Qiskit's takes. With
    `delay`, delays pass through (a local simulator without noise in time runs them as no-ops;
    without it the transpiler refuses a circuit that has one)."""
    standard = get_standard_gate_name_mapping()
    target = Target(num_qubits=num_qubits, description=description)
    for name in sorted(gates):
        target.add_instruction(standard[name], properties=None, name=name)
    target.add_instruction(Measure(), properties=None)
    if CircuitFeature.RESET in features:
        target.add_instruction(Reset(), properties=None)
    if CircuitFeature.CONTROL_FLOW in features:
        target.add_instruction(IfElseOp, name="if_else")
    if delay:
        target.add_instruction(Delay(Parameter("t")), properties=None)
    return target
