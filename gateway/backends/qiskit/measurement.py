"""Sampling a circuit's terminal measurements from its final state, as Qiskit's
StatevectorSampler does, instead of asking a simulator for per-shot outcome strings.

When every measurement is terminal (nothing but other measurements and barriers follows it on
its qubit) and nothing else in the circuit is random (no reset, no control flow, no other
non-unitary instruction, no noise), all shots share one final state: the outcome distribution
is the measured qubits' probabilities, and the shots are independent draws from it. Aer itself
does the same ("measure sampling") but writes one hex string per shot, which the gateway then
parses; for a small circuit that costs most of the run (1024 shots of a 5-qubit GHZ: ~0.9 ms
in Aer, ~0.1 ms of parsing, against ~0.1 ms for a one-shot run that saves the probabilities
and ~0.05 ms for numpy to draw and pack the shots).

A plan is made once per compiled circuit (in the worker that runs it): the circuit without its
measurements, the measured qubits, and where each classical bit reads its value from. Each
adapter asks its own simulator for the measured qubits' probabilities (Aer saves them, Braket
reports a probability result, PennyLane `qml.probs`). Draws use numpy's PCG64 seeded with the
job's seed: a seed reproduces its samples on every simulator that gives the same probabilities.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from qiskit.circuit import Barrier, ControlFlowOp, Delay, Gate, Measure, QuantumCircuit

# Above this many measured qubits the 2^k probabilities cost more than Aer's own sampling.
MAX_MEASURED_QUBITS = 20
# Outcomes are whole-circuit integers (bit j = clbit j): up to 64 classical bits.
MAX_CLBITS = 64


@dataclass(frozen=True, eq=False)
class TerminalPlan:
    """How to sample a circuit whose measurements are all terminal.

    Attributes:
        body: The circuit without its measurements (or barriers).
        qubits: The measured qubits, ascending: bit i of a probability's index is qubits[i].
        sources: (clbit, position): each measured classical bit and the position of the qubit
            whose value it holds (the last measurement into it); other clbits read 0.
        identity: Clbit j holds position j for every clbit of the circuit: an index is already
            the outcome.
    """

    body: QuantumCircuit
    qubits: tuple[int, ...]
    sources: tuple[tuple[int, int], ...]
    identity: bool

    def outcomes(self, indices: npt.NDArray[np.integer]) -> npt.NDArray[np.uint64]:
        """Whole-circuit outcomes (bit j = clbit j) of probability indices."""
        index = indices.astype(np.uint64, copy=False)
        if self.identity:
            return index
        out = np.zeros(index.shape, dtype=np.uint64)
        for clbit, position in self.sources:
            out |= ((index >> np.uint64(position)) & np.uint64(1)) << np.uint64(clbit)
        return out


def terminal_plan(circuit: QuantumCircuit) -> TerminalPlan | None:
    """The plan of `circuit`, or None when its shots are not draws from one final state (or
    it measures nothing, or too much to be worth it): the simulator then runs it shot by shot."""
    if circuit.num_clbits > MAX_CLBITS:
        return None
    body = circuit.copy_empty_like()
    clbit_source: dict[int, int] = {}  # clbit -> qubit of its last measurement
    measured: set[int] = set()
    for instruction in circuit.data:
        operation = instruction.operation
        qubits = [circuit.find_bit(q).index for q in instruction.qubits]
        if isinstance(operation, Measure):
            clbit_source[circuit.find_bit(instruction.clbits[0]).index] = qubits[0]
            measured.add(qubits[0])
            continue
        if isinstance(operation, Barrier | Delay):
            # Neither acts on an ideal state: a delay after a measurement leaves it terminal.
            continue
        if (
            isinstance(operation, ControlFlowOp)
            or instruction.clbits
            or not isinstance(operation, Gate)
            or measured.intersection(qubits)
        ):
            return None  # reset, control flow, a non-unitary instruction, a mid-circuit measure
        body.append(instruction)
    positions = sorted(set(clbit_source.values()))
    if not positions or len(positions) > MAX_MEASURED_QUBITS:
        return None
    position_of = {qubit: i for i, qubit in enumerate(positions)}
    sources = tuple(sorted((clbit, position_of[q]) for clbit, q in clbit_source.items()))
    identity = circuit.num_clbits == len(positions) and all(c == p for c, p in sources)
    return TerminalPlan(body, tuple(positions), sources, identity)


def draw(
    probabilities: npt.ArrayLike, shots: int, rng: np.random.Generator
) -> npt.NDArray[np.int64]:
    """`shots` independent indices drawn from `probabilities` (normalised here: a simulator's
    probabilities sum to 1 only up to rounding)."""
    p = _normalised(probabilities)
    return rng.choice(p.shape[0], size=shots, p=p)


def _normalised(probabilities: npt.ArrayLike) -> npt.NDArray[np.float64]:
    p = np.clip(np.asarray(probabilities, dtype=np.float64).reshape(-1), 0.0, None)
    total = p.sum()
    if not total > 0:
        raise ValueError("the simulator returned no probability mass")
    normalised: npt.NDArray[np.float64] = p / total
    return normalised
