"""PennyLane's simulators (entry point "pennylane"): lightning.qubit and default.qubit.

Compiling and preparing are the shared Qiskit half (gateway.backends.qiskit.adapter): circuits
are transpiled to the Qiskit gates the translation maps onto PennyLane operations (gates.py,
which imports no SDK, so compile workers never load PennyLane). The simulator worker
translates each compiled circuit once (translate.py; no pennylane-qiskit, which would
downgrade the Qiskit stack) and runs it on one device (simulation.py).

Only terminal measurements are run: the gateway samples them from PennyLane's analytic
probabilities with the job's seed. A measurement turned into a mid-circuit one makes PennyLane
about 100x slower, so mid-circuit measurement, reset and control flow are refused
(UNSUPPORTED_FEATURE), as is a sampler circuit measuring more qubits than exact probabilities
can hold.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from importlib import metadata
from typing import TYPE_CHECKING, Literal

import numpy as np
from qiskit.circuit import QuantumCircuit
from qiskit.transpiler import Target

from gateway.backends.base import AdapterContext
from gateway.backends.pennylane.gates import QISKIT_GATES
from gateway.backends.qiskit import frontend as fe
from gateway.backends.qiskit import idle, measurement
from gateway.backends.qiskit.adapter import CompiledCircuit, QiskitAdapter, QiskitOptions, Term
from gateway.backends.qiskit.target import ideal_target
from gateway.domain import costs
from gateway.domain.circuits import FloatArray
from gateway.domain.jobs import JobSpec

if TYPE_CHECKING:
    from gateway.backends.pennylane.simulation import PennyLaneSimulation

__all__ = ["PennyLaneAdapter", "PennyLaneOptions"]

Device = Literal["lightning.qubit", "default.qubit"]
# A state vector this wide is 512 MiB; the memory budget usually refuses earlier.
_MAX_QUBITS = 25
# Expectation values (bindings x Pauli words) one lightning.qubit call may return: it expands a
# broadcast into a tape per binding and returns each binding's values as numpy scalars in
# tuples, ~EXPVAL_VALUE_BYTES each until they are stacked (measured: 10,000 bindings x 200
# words +158 MiB, 20,000 x 15 +51 MiB, where admission counted 16 bytes a value).
# PennyLaneSimulation runs at most this many per call; sweep_memory counts them.
EXPVAL_VALUES = 1 << 18
EXPVAL_VALUE_BYTES = 120
# Complex amplitudes a broadcast chunk may hold: bindings * 2^qubits <= this (32 MiB). On
# default.qubit the chunk's states are simulated together and read with ~4 more copies of them
# (measured: 800 bindings of 12 qubits x 2000 terms +158 MiB, where admission counted 25 MiB).
BROADCAST_AMPLITUDES = 1 << 21
_BROADCAST_COPIES = 5


class PennyLaneOptions(QiskitOptions):
    device: Device = "lightning.qubit"


# Measured on one thread (the cost reviews): each binding sets up a run (~80 us on lightning,
# ~45 us on default.qubit, 1 qubit, 1 shot), each operation of a binding's run ~15 us on
# lightning and ~1 us on default.qubit whatever the width (2 qubits, 1002 operations), and each
# Pauli term's expval of a binding ~63 us on lightning, ~70 us on default.qubit (4 qubits, 255
# terms): a narrow circuit's amplitudes priced them at nanoseconds, 100,000 bindings of 1002
# operations (~25 min) at 0.2 s.
_LIGHTNING_RUNS = costs.RunCosts(
    per_amplitude=25, per_binding=4_000_000, per_operation_run=750_000, per_term=3_150_000
)
# default.qubit's per_term is its qml.expval's, which its estimator no longer calls (below).
_DEFAULT_QUBIT_RUNS = costs.RunCosts(
    per_amplitude=210, per_binding=2_500_000, per_operation_run=50_000, per_term=0
)
# default.qubit's estimator does not call qml.expval: it simulates a broadcast chunk of
# bindings (BROADCAST_AMPLITUDES) at once and reads each term from the chunk's states in numpy
# (simulation.py, pauli_values). Measured on one thread (an rx layer and a cx chain, 2-12
# qubits, 10-2000 terms, 10-20,000 bindings, up to 1500 operations): priced 0.8-2.4x of its
# CPU with these, where qml.expval's per_term (~70 us a term and binding) priced 10,000
# bindings x 200 terms on 6 qubits at 142 s for 1.75 s of CPU. Per chunk: its run (~4 ms),
# each operation's (~100 us) and each term's read set-up (~30 us); per amplitude: a broadcast
# operation's update (~16 ns), and a term's read (~24 ns; ~12 ns while the chunk's states fit
# in 8 MiB, about the machine's cache: 800 bindings x 2000 terms on 12 qubits, 32 MiB chunks,
# ran 156 s; 20,000 x 255 on 4 qubits, 5 MiB, 0.8 s).
_BROADCAST_CHUNK = 200_000_000
_BROADCAST_OPERATION = 5_000_000
_BROADCAST_TERM = 1_500_000
_BROADCAST_AMPLITUDE = 800
_STATE_READ_AMPLITUDE = 1_200
_CACHED_READ_AMPLITUDE = 600
_CACHED_CHUNK_BYTES = 8 << 20


class PennyLaneAdapter(QiskitAdapter):
    """A PennyLane device, analytic, per its options."""

    options_model = PennyLaneOptions
    provider = "pennylane"

    def __init__(self, context: AdapterContext) -> None:
        super().__init__(context)
        if not isinstance(self.options, PennyLaneOptions):
            raise TypeError("PennyLaneAdapter needs PennyLaneOptions")
        self.pennylane_options: PennyLaneOptions = self.options
        self._simulation: PennyLaneSimulation | None = None

    @property
    def method_name(self) -> str:
        return "statevector"

    def run_costs(self) -> costs.RunCosts:
        # Measured on one thread, an h/cx chain at 18-22 qubits: lightning.qubit updates
        # ~2e9 amplitudes a second, default.qubit ~2.4e8 (Aer: 5.5e8).
        if self.pennylane_options.device == "lightning.qubit":
            return _LIGHTNING_RUNS
        return _DEFAULT_QUBIT_RUNS

    def runs_verbatim_boxes(self) -> bool:
        return True  # lightning.qubit and default.qubit: exact and noise-free

    def build_qiskit_target(self) -> Target:
        qubits = min(self.pennylane_options.num_qubits, _MAX_QUBITS)
        # The translation drops delays (gates.IGNORED_INSTRUCTIONS).
        return ideal_target(
            QISKIT_GATES,
            qubits,
            frozenset(),
            f"pennylane-{self.pennylane_options.device}",
            delay=True,
        )

    def compacts_idle_qubits(self) -> bool:
        # Ideal devices whose wires are all coupled (the simulation then runs on the wires
        # gates touch, simulation.py).
        return True

    def state_size(self, circuit: QuantumCircuit, transpiled: bool) -> tuple[int, int]:
        n = circuit.num_qubits
        # Peaks measured at 24 qubits: lightning.qubit 1.4x the state (sampler) to 2x
        # (estimator), default.qubit 3x to 4x; estimated as 1x, a lowered memory budget let
        # jobs in that ran out of the worker's memory.
        copies = 2 if self.pennylane_options.device == "lightning.qubit" else 4
        return copies * fe.statevector_bytes(n), 1 << n

    def info_properties(self) -> dict[str, str]:
        return {"device": self.pennylane_options.device}

    def sweep_memory(self, entry: CompiledCircuit, bindings: int, terms: int) -> int:
        if self.pennylane_options.device == "default.qubit":
            # Bindings are broadcast in chunks of states simulated and read together: beyond
            # the first binding's (state_size), the rest of a chunk's.
            chunk = min(bindings, max(1, BROADCAST_AMPLITUDES // entry.amplitudes))
            return (chunk - 1) * entry.amplitudes * 16 * _BROADCAST_COPIES
        # lightning.qubit runs a tape per binding on one state, and its qml.expval returns a
        # Python-held numpy scalar per binding and term (EXPVAL_VALUES of them at most).
        return min(bindings * terms, EXPVAL_VALUES) * EXPVAL_VALUE_BYTES

    def estimation_work(
        self,
        entry: CompiledCircuit,
        bindings: int,
        terms: int,
        bases: int,
        shots: int,
        spec: JobSpec,
    ) -> int:
        if self.pennylane_options.device != "default.qubit":
            return super().estimation_work(entry, bindings, terms, bases, shots, spec)
        # default.qubit reads the terms from its broadcast states (_BROADCAST_* above).
        amplitudes = entry.amplitudes
        chunk = max(1, BROADCAST_AMPLITUDES // amplitudes)
        chunks = -(-bindings // chunk)
        cached = min(bindings, chunk) * amplitudes * 16 < _CACHED_CHUNK_BYTES
        read = _CACHED_READ_AMPLITUDE if cached else _STATE_READ_AMPLITUDE
        operations = max(entry.operations, 1)
        per_chunk = _BROADCAST_CHUNK + operations * _BROADCAST_OPERATION + terms * _BROADCAST_TERM
        per_binding = amplitudes * (operations * _BROADCAST_AMPLITUDE + terms * read)
        return chunks * per_chunk + bindings * per_binding

    def sdk_versions(self) -> Mapping[str, str]:
        return {name: metadata.version(name) for name in ("pennylane", "pennylane-lightning")}

    def check_sampler(self, entry: CompiledCircuit, spec: JobSpec, circuit_field: str) -> None:
        # Mid-circuit features are refused when compiling; what is left without a plan measures
        # too many qubits (or nothing).
        if not entry.terminal and entry.writes_clbits:
            raise fe.invalid(
                "UNSUPPORTED_FEATURE",
                f"backends/{self.context.name} samples from exact probabilities: it measures "
                f"at most {measurement.MAX_MEASURED_QUBITS} qubits into at most "
                f"{measurement.MAX_CLBITS} classical bits, and at least one",
                circuit_field,
                feature="measured_qubits",
            )

    # ---------------------------------------------------------------------------- worker

    def _sim(self) -> PennyLaneSimulation:
        if self._simulation is None:
            with self._lock:
                if self._simulation is None:
                    # Imported here: only simulator workers of this backend load PennyLane.
                    from gateway.backends.pennylane.simulation import PennyLaneSimulation

                    self._simulation = PennyLaneSimulation(
                        self.pennylane_options.device, self.qiskit_target().num_qubits or 1
                    )
        return self._simulation

    def warm_up(self) -> None:
        probe = QuantumCircuit(1, 1)
        probe.x(0)
        probe.measure(0, 0)
        plan = measurement.terminal_plan(probe)
        assert plan is not None
        self._sim().probabilities("warm-up", plan, (), np.zeros((1, 0), dtype=np.float64))

    def terminal_probabilities(
        self,
        key: str,
        plan: measurement.TerminalPlan,
        parameters: tuple[str, ...],
        values: FloatArray,
    ) -> FloatArray:
        return self._sim().probabilities(key, plan, parameters, values)

    def expectations(
        self,
        key: str,
        simulated: idle.Simulated,
        terms: Sequence[Term],
        parameters: tuple[str, ...],
        values: FloatArray,
    ) -> FloatArray:
        return self._sim().expectations(key, simulated.circuit, terms, parameters, values)
