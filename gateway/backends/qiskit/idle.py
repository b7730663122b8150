"""A circuit without its idle qubits, as a simulator whose qubits can be renumbered runs it.

A Qiskit user transpiling for the Target of GetBackendTarget gets a circuit as wide as the
target (64 qubits for the default `aer`), however few qubits it uses. On an ideal simulator
whose qubits are all coupled, a qubit's number means nothing and a qubit nothing acts on stays
|0> to the end: the circuit is simulated without such qubits, and its memory is sized by what
is simulated (sized by its width, a Bell pair on qubits 2 and 3 of 64 needed 2^64 amplitudes).

Only barriers and delays leave a qubit idle (neither acts on an ideal state). Anything else
keeps it, whether or not the simulator would drop it too (Aer drops a qubit only reset, for
one): a gate, a measurement, a reset, or a control-flow operation whose blocks name it (an
operation's qubits are its blocks' qubits), even where the block does nothing to it. The
circuit handed to the simulator is exactly the one sized, so no circuit can make the estimate
fall below what runs.

A noisy Aer twin leaves them out too (a delay's relaxation leaves an idle qubit in |0>, its
noise model's temperature being 0), under its device's noise model on the qubits kept
(`Simulated.kept`, gateway.backends.aer.noise). Devices keep every qubit: there the numbers are
physical qubits (the adapter decides, QiskitAdapter.compacts_idle_qubits).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from qiskit.circuit import Barrier, Delay, Operation, QuantumCircuit, Qubit
from qiskit.converters import circuit_to_dag, dag_to_circuit

__all__ = ["Simulated", "used_qubits", "whole", "without_idle_qubits"]


@dataclass(frozen=True, eq=False)
class Simulated:
    """The circuit a simulator runs for a compiled circuit, and where its qubits come from."""

    circuit: QuantumCircuit
    # kept[i]: the compiled circuit's index of the simulated circuit's qubit i (ascending).
    kept: tuple[int, ...]

    @functools.cached_property
    def position(self) -> dict[int, int]:
        """The simulated circuit's index of each kept qubit of the compiled circuit."""
        return {qubit: i for i, qubit in enumerate(self.kept)}


def _is_idle_operation(operation: Operation) -> bool:
    # By class, not name: a gate a client named "barrier" acts on its qubits.
    return isinstance(operation, Barrier | Delay)


def used_qubits(circuit: QuantumCircuit) -> frozenset[int]:
    """Indices of the qubits an instruction other than a barrier or a delay names (at the top
    level: a control-flow operation names every qubit its blocks use)."""
    used: set[Qubit] = set()
    for instruction in circuit.data:
        if not _is_idle_operation(instruction.operation):
            used.update(instruction.qubits)
    return frozenset(circuit.find_bit(q).index for q in used)


def whole(circuit: QuantumCircuit) -> Simulated:
    """`circuit` simulated as it is, every qubit kept."""
    return Simulated(circuit, tuple(range(circuit.num_qubits)))


def without_idle_qubits(circuit: QuantumCircuit) -> Simulated:
    """`circuit` without the qubits only barriers and delays name (those barriers and delays
    dropped too), the others renumbered in their order. Classical bits, registers, variables
    and the global phase are kept as they are: outcomes read the same clbits."""
    used = used_qubits(circuit)
    if not used and circuit.num_qubits:
        # A simulator is handed one qubit at least (a circuit of nothing but classical work).
        used = frozenset({0})
    if len(used) == circuit.num_qubits:
        return whole(circuit)
    idle = [qubit for index, qubit in enumerate(circuit.qubits) if index not in used]
    idle_set = set(idle)
    dag = circuit_to_dag(circuit)
    for node in dag.op_nodes():
        if _is_idle_operation(node.op) and idle_set.intersection(node.qargs):
            dag.remove_op_node(node)
    # Quantum registers holding an idle qubit go with it: kept qubits stay, as loose bits.
    dag.remove_qubits(*idle)
    return Simulated(dag_to_circuit(dag), tuple(sorted(used)))
