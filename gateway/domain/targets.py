"""A backend's target: what a transpiler needs to compile circuits for it.

SDK-free mirror of what `qiskit.transpiler.Target` holds and GetBackendTarget returns: the
instructions the gateway accepts on a backend, where they act and with what error and duration,
per-qubit coherence and readout data, timing constraints and the coupling map. Each adapter
produces one from its own data (BackendAdapter.target); only instructions the gateway accepts
are listed, so a circuit compiled for the target is one the gateway runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True)
class QargProperties:
    """An instruction's properties on specific qubits; None fields are unknown.

    Attributes:
        qubits: The physical qubits, in instruction order.
        error: Error rate.
        duration: Duration in seconds.
    """

    qubits: tuple[int, ...]
    error: float | None = None
    duration: float | None = None


@dataclass(frozen=True)
class TargetInstruction:
    """One instruction of a target.

    Attributes:
        name: Instruction name as circuits spell it, e.g. "cx", "measure", "if_else".
        num_qubits: Qubits it acts on; 0 for variadic control flow.
        num_params: Parameters it takes.
        qargs: Where it may act, with its properties there. Empty: on any qubits, ideal.
    """

    name: str
    num_qubits: int
    num_params: int
    qargs: tuple[QargProperties, ...] = ()

    @property
    def is_global(self) -> bool:
        return not self.qargs


@dataclass(frozen=True)
class QubitProperties:
    """One physical qubit; None fields are unknown.

    Attributes:
        t1: Relaxation time, seconds.
        t2: Dephasing time, seconds.
        frequency: Frequency, Hz.
        readout_error: The measure instruction's error on this qubit.
    """

    t1: float | None = None
    t2: float | None = None
    frequency: float | None = None
    readout_error: float | None = None


@dataclass(frozen=True)
class TimingConstraints:
    """Pulse timing constraints, in units of dt (1 each: no constraint)."""

    granularity: int = 1
    min_length: int = 1
    pulse_alignment: int = 1
    acquire_alignment: int = 1


@dataclass(frozen=True)
class BackendTarget:
    """What a transpiler needs to build circuits for one backend.

    Attributes:
        num_qubits: Number of qubits.
        instructions: Instructions the gateway accepts, in name order.
        qubits: Per qubit in index order; empty when the backend has no qubit data.
        dt: System time resolution of input signals, seconds; None when the backend has none.
        timing_constraints: Pulse timing constraints.
        calibration_time: When the calibration data was taken (UTC); None for simulators.
        coupling_map: Directed two-qubit edges (control, target), sorted; empty = all-to-all.
    """

    num_qubits: int
    instructions: tuple[TargetInstruction, ...]
    qubits: tuple[QubitProperties, ...] = ()
    dt: float | None = None
    timing_constraints: TimingConstraints = TimingConstraints()
    calibration_time: datetime | None = None
    coupling_map: tuple[tuple[int, int], ...] = ()

    def __post_init__(self) -> None:
        names = [i.name for i in self.instructions]
        if names != sorted(set(names)):
            raise ValueError("target instructions must be unique and in name order")
        if self.qubits and len(self.qubits) != self.num_qubits:
            raise ValueError(
                f"{len(self.qubits)} qubit properties for a {self.num_qubits}-qubit target"
            )

    def instruction(self, name: str) -> TargetInstruction | None:
        return next((i for i in self.instructions if i.name == name), None)
