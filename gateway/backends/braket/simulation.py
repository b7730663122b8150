"""The Amazon Braket local simulators as a simulator worker runs them.

One simulator (Braket's `braket_sv` state vector or `braket_dm` density matrix, the classes
LocalSimulator("braket_sv" / "braket_dm") delegates to) per worker, built once. Circuits arrive
transpiled to QISKIT_GATES and are translated once per compiled circuit (gateway.backends.braket
.program, cached here by the circuit's key); every run is one Braket program with that binding's
angles as inputs. Exact results come from `shots=0` runs:

- probabilities: Braket's probability result on the measured qubits (noise and readout flips
  included on braket_dm); the sampler draws its seeded shots from them;
- expectation values: Braket's final state (`state_vector` / `density_matrix` result) and one
  O(2^n) numpy pass per Pauli term. Braket's own `expectation` result costs ~1 ms of pragma
  parsing per term and a simulation-sized pass each (10 terms on a GHZ-5: 14 ms against
  3.7 ms; 18 qubits, one term: 48 ms against 18 ms), and it reads the same state.

Circuits that need a real shot-by-shot run (mid-circuit measurement, reset, if/else) go to
`shots`: Braket takes no seed, so those shots are unseeded (the adapter refuses seeded jobs
that need them).

Braket is imported when a BraketSimulation is built (1.7 s), never by importing this module:
the adapter's gateway side reads QISKIT_GATES and FEATURES (re-exported from gates.py).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from qiskit.circuit import QuantumCircuit

from gateway.backends.braket.gates import (
    DEVICE_QUBITS,
    FEATURES,
    NOISY_FEATURES,
    QISKIT_GATES,
    Device,
    features,
)
from gateway.backends.braket.program import (
    BraketNoise,
    BraketProgram,
    UnsupportedCircuit,
    expectations_program,
    probabilities_program,
    shots_program,
)
from gateway.backends.lru import LRU
from gateway.backends.pauli_values import (
    Masks,
    density_matrix_values,
    pauli_masks,
    state_vector_values,
)
from gateway.backends.qiskit.measurement import TerminalPlan
from gateway.domain.circuits import FloatArray
from gateway.domain.errors import ExecutionError
from gateway.domain.failures import FailureKind

__all__ = [
    "DEVICE_QUBITS",
    "FEATURES",
    "NOISY_FEATURES",
    "QISKIT_GATES",
    "BraketNoise",
    "BraketSimulation",
    "Device",
    "features",
]

_CACHE_SIZE = 64
_INTERPRETER_LOGGER = "braket.default_simulator.openqasm.interpreter"
_ADVANCED_FEATURES = "This program uses OpenQASM language features"
_NOISE_FREE = "You are running a noise-free circuit on the density matrix simulator"

Term = tuple[str, tuple[int, ...]]


class _QuietInterpreter(logging.Filter):
    """Drops the interpreter's warning that a program uses language features "that may not be
    supported on QPUs": logged on every run of a program with a control modifier or an if."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(_ADVANCED_FEATURES)


class BraketSimulation:
    """One Braket local simulator and the programs it has run.

    Args:
        device: "braket_sv" (state vector) or "braket_dm" (density matrix).
        noise: Noise for braket_dm; None or all-zero probabilities for none.

    Raises:
        ValueError: An unknown device, or noise on braket_sv (it has no noise channels).
    """

    def __init__(self, device: Device, noise: BraketNoise | None = None) -> None:
        if device not in DEVICE_QUBITS:
            raise ValueError(f"unknown Braket local simulator {device!r}")
        if noise is not None and noise.is_noiseless:
            noise = None
        if noise is not None and device != "braket_dm":
            raise ValueError(f"{device} has no noise: only braket_dm applies noise")
        from braket.default_simulator import (  # type: ignore[import-untyped]
            DensityMatrixSimulator,
            StateVectorSimulator,
        )
        from braket.ir.openqasm import Program  # type: ignore[import-untyped]

        self.device: Device = device
        self.noise = noise
        self.features = features(device, noise is not None)
        # The class LocalSimulator(device) delegates to, called directly: its raw result
        # (no task object, no result conversion) saves ~0.7 ms per run.
        self._simulator: Any = (
            StateVectorSimulator() if device == "braket_sv" else DensityMatrixSimulator()
        )
        self._program_class: Any = Program
        self._programs: LRU[tuple[str, str], BraketProgram] = LRU(_CACHE_SIZE)
        # Braket's own RNG is unseeded too; this one only unsorts its branched shots.
        self._rng = np.random.default_rng()
        interpreter = logging.getLogger(_INTERPRETER_LOGGER)
        if not any(isinstance(f, _QuietInterpreter) for f in interpreter.filters):
            interpreter.addFilter(_QuietInterpreter())

    def warm_up(self) -> None:
        """One tiny run: Braket builds its parsers and validators on first use (~0.3 s)."""
        probe = QuantumCircuit(1)
        probe.h(0)
        program = probabilities_program(probe, (0,), self.noise)
        self._run(program, np.zeros(0), 0)

    # ------------------------------------------------------------------------ exact results

    def probabilities(
        self, key: str, plan: TerminalPlan, parameters: tuple[str, ...], values: FloatArray
    ) -> FloatArray:
        """(bindings, 2**len(plan.qubits)) exact probabilities of plan.qubits after plan.body
        (bit i of the index = plan.qubits[i], Qiskit's little-endian order), via shots=0 and
        `#pragma braket result probability ...` (noise applied on braket_dm, readout flips
        included). Bindings with equal angles run once."""
        bindings = _bindings(parameters, values)
        width = len(plan.qubits)
        if not bindings:
            return np.empty((0, 1 << width), dtype=np.float64)
        program = self._program(
            key, "probabilities", lambda: probabilities_program(plan.body, plan.qubits, self.noise)
        )
        table = program.table_qubits
        if not set(plan.qubits) & set(table):  # no measured qubit is touched: all read 0
            out = np.zeros((bindings, 1 << width), dtype=np.float64)
            out[:, 0] = 1.0
            return out
        inputs = _inputs(program, parameters, values)
        rows, inverse = _distinct(inputs)
        out = np.empty((len(rows), 1 << width), dtype=np.float64)
        for u, row in enumerate(rows):
            value = np.asarray(self._result(self._run(program, row, 0)), dtype=np.float64)
            if value.shape != (1 << len(table),):
                raise _failure(
                    f"Braket returned {value.shape} probabilities for {len(table)} qubits"
                )
            out[u] = _marginal(value, table, plan.qubits)
        return out[inverse]

    def expectations(
        self,
        key: str,
        circuit: QuantumCircuit,
        terms: Sequence[Term],
        parameters: tuple[str, ...],
        values: FloatArray,
    ) -> FloatArray:
        """(bindings, len(terms)) exact expectation values; terms[k] = (letters, qubits) with
        letters[i] in IXYZ acting on qubit qubits[i] (qubits distinct, any order; an
        all-identity or empty term is 1.0). `circuit` has no measurements. One shots=0 run per
        distinct binding reads Braket's final state (noise applied on braket_dm); numpy takes
        each term's expectation from it."""
        bindings = _bindings(parameters, values)
        n = circuit.num_qubits
        masks = [pauli_masks(letters, qubits, n) for letters, qubits in terms]
        distinct = sorted({m for m in masks if m is not None})
        out = np.ones((bindings, len(terms)), dtype=np.float64)
        if not distinct or not bindings:
            return out
        state: Literal["state_vector", "density_matrix"] = (
            "state_vector" if self.device == "braket_sv" else "density_matrix"
        )
        program = self._program(
            key, "expectations", lambda: expectations_program(circuit, self.noise, state)
        )
        inputs = _inputs(program, parameters, values)
        rows, inverse = _distinct(inputs)
        column = {m: i for i, m in enumerate(distinct)}
        found = np.empty((len(rows), len(distinct)), dtype=np.float64)
        for u, row in enumerate(rows):
            final = np.asarray(self._result(self._run(program, row, 0)))
            found[u] = self._pauli_values(final, n, distinct)
        for k, m in enumerate(masks):
            if m is not None:
                out[:, k] = found[inverse, column[m]]
        return out

    def _pauli_values(
        self, final: npt.NDArray[Any], n: int, distinct: Sequence[Masks]
    ) -> FloatArray:
        size = 1 << n
        expected = (size,) if self.device == "braket_sv" else (size, size)
        if final.shape != expected:
            raise _failure(f"Braket returned a {final.shape} state for {n} qubits")
        if final.ndim == 1:
            return state_vector_values(final.reshape(1, size), distinct).reshape(len(distinct))
        return density_matrix_values(final, distinct)

    # ------------------------------------------------------------------------ shots

    def shots(
        self,
        key: str,
        circuit: QuantumCircuit,
        parameters: tuple[str, ...],
        values: FloatArray,
        shots: int,
    ) -> list[npt.NDArray[np.uint64]]:
        """Per binding, `shots` whole-circuit outcomes (bit j = clbit j of `circuit`), run shot
        by shot by Braket (for mid-circuit measurement / reset / if-else). Braket takes no
        seed: this path is unseeded; the lead refuses seeded jobs that need it.

        Bindings with equal angles share one run of their shots together. Braket returns a
        branched run's shots grouped by branch: they are shuffled into a random order."""
        bindings = _bindings(parameters, values)
        if shots < 1:
            raise ValueError(f"shots must be positive, got {shots}")
        if circuit.num_clbits > 64:
            raise _unsupported(UnsupportedCircuit("outcomes hold at most 64 classical bits"))
        program = self._program(key, "shots", lambda: shots_program(circuit, self.noise))
        if not program.columns or not bindings:  # nothing measured: every clbit reads 0
            return [np.zeros(shots, dtype=np.uint64) for _ in range(bindings)]
        inputs = _inputs(program, parameters, values)
        rows, inverse = _distinct(inputs)
        shifts = np.asarray(program.columns, dtype=np.uint64)
        out: list[npt.NDArray[np.uint64]] = [np.zeros(0, dtype=np.uint64)] * bindings
        for u, row in enumerate(rows):
            members = np.flatnonzero(inverse == u)
            total = shots * len(members)
            result = self._run(program, row, total)
            bits = _bits(result.measurements)
            if bits.shape != (total, len(shifts)):
                raise _failure(
                    f"Braket returned {bits.shape} measurements, expected {(total, len(shifts))}"
                )
            outcomes = np.bitwise_or.reduce(bits.astype(np.uint64) << shifts, axis=1)
            self._rng.shuffle(outcomes)
            for i, b in enumerate(members.tolist()):
                out[b] = outcomes[i * shots : (i + 1) * shots]
        return out

    # ------------------------------------------------------------------------ running

    def _program(self, key: str, kind: str, build: Callable[[], BraketProgram]) -> BraketProgram:
        """The cached program of a compiled circuit (keys name compiled circuits: the same
        key and kind always build the same program)."""
        cache_key = (key, kind)
        program = self._programs.get(cache_key)
        if program is not None:
            return program
        try:
            program = build()
        except UnsupportedCircuit as exc:
            raise _unsupported(exc) from None
        self._programs.put(cache_key, program)
        return program

    def _run(self, program: BraketProgram, row: FloatArray, shots: int) -> Any:
        inputs = dict(zip(program.input_names, row.tolist(), strict=True))
        payload = self._program_class(source=program.source, inputs=inputs)
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=_NOISE_FREE, category=UserWarning)
                return self._simulator.run(payload, shots=shots)
        except MemoryError:
            raise ExecutionError(
                "OUT_OF_MEMORY",
                f"{self.device}: the simulation ran out of the worker's memory",
                kind=FailureKind.OUT_OF_MEMORY,
            ) from None
        except Exception as exc:  # Braket's failure on a program the gateway wrote
            raise _failure(f"{self.device}: {type(exc).__name__}: {exc}") from exc

    @staticmethod
    def _result(result: Any) -> Any:
        result_types = result.resultTypes or []
        if len(result_types) != 1:
            raise _failure(f"Braket returned {len(result_types)} results, expected 1")
        return result_types[0].value


def _bindings(parameters: tuple[str, ...], values: FloatArray) -> int:
    if values.ndim != 2 or values.shape[1] != len(parameters):
        raise ValueError(f"values must be (bindings, {len(parameters)}), got shape {values.shape}")
    return int(values.shape[0])


def _inputs(program: BraketProgram, parameters: tuple[str, ...], values: FloatArray) -> FloatArray:
    """The program's input values per binding, all finite: Braket runs a NaN or infinite angle
    (an expression like 1/theta at theta = 0) without complaint, braket_dm answering all-zero
    probabilities and a shot-by-shot run an outcome the circuit cannot give."""
    inputs = program.input_values(parameters, values)
    if not np.isfinite(inputs).all():
        raise ExecutionError(
            "NON_FINITE_ANGLE",
            "the parameter values make a gate angle infinite or NaN; check the bindings "
            "against the circuit's angle expressions",
            kind=FailureKind.CLIENT_ERROR,
        )
    return inputs


def _distinct(inputs: FloatArray) -> tuple[FloatArray, npt.NDArray[np.intp]]:
    """The distinct rows of `inputs` and each binding's row (one row when there are no inputs:
    Braket's result then does not depend on the binding)."""
    bindings = inputs.shape[0]
    if inputs.shape[1] == 0:
        return inputs[:1], np.zeros(bindings, dtype=np.intp)
    if bindings <= 1:
        return inputs, np.zeros(bindings, dtype=np.intp)
    rows, inverse = np.unique(inputs, axis=0, return_inverse=True)
    return rows, inverse.reshape(-1).astype(np.intp, copy=False)


def _marginal(table: FloatArray, table_qubits: Sequence[int], qubits: Sequence[int]) -> FloatArray:
    """(2^len(qubits),) probabilities with bit i of an index = qubits[i], from Braket's table
    over `table_qubits` (the first the most significant bit). A qubit outside the table was
    never touched: it reads 0."""
    axis_of = {qubit: axis for axis, qubit in enumerate(table_qubits)}
    tensor = table.reshape((2,) * len(table_qubits))
    measured = set(qubits)
    kept = [q for q in qubits if q in axis_of]
    summed = tuple(axis for axis, q in enumerate(table_qubits) if q not in measured)
    marginal = tensor.sum(axis=summed) if summed else tensor
    # The remaining axes are in table order; put qubits[-1] first (the highest bit).
    remaining = sorted(kept, key=lambda q: axis_of[q])
    order = [remaining.index(q) for q in reversed(kept)]
    compact = np.ascontiguousarray(np.transpose(marginal, order)).reshape(-1)
    if len(kept) == len(qubits):
        return compact
    # Scatter: compact index bit j is kept[j]; its place in the full index is qubits' position.
    positions = [qubits.index(q) for q in kept]
    index = np.arange(1 << len(kept))
    full = np.zeros_like(index)
    for bit, position in enumerate(positions):
        full |= ((index >> bit) & 1) << position
    out = np.zeros(1 << len(qubits), dtype=np.float64)
    out[full] = compact
    return out


def _bits(measurements: Any) -> npt.NDArray[np.bool_]:
    """Braket's measurements (rows of "0"/"1" strings, or of ints) as booleans."""
    array = np.asarray(measurements)
    if array.ndim != 2:
        array = array.reshape(len(measurements), -1)
    if array.dtype.kind in "UO":
        return np.asarray(array == "1")
    return np.asarray(array != 0)


def _failure(message: str) -> ExecutionError:
    return ExecutionError("EXECUTION_FAILED", message[:500], kind=FailureKind.SDK_ERROR)


def _unsupported(exc: UnsupportedCircuit) -> ExecutionError:
    # The job's own circuit: another attempt or instance would refuse it the same way.
    return ExecutionError("UNSUPPORTED_FEATURE", str(exc)[:500], kind=FailureKind.CLIENT_ERROR)
