"""PennyLane's simulators as exact probabilities and expectation values of Qiskit circuits: the
part of a PennyLane backend that runs in its simulator worker process.

Only terminal measurements are simulated: the adapter draws shots with numpy from
`probabilities` (gateway.backends.qiskit.measurement), so a seed reproduces the same samples as on
every other exact backend. A circuit's measurements are never handed to PennyLane as
mid-circuit measurements: that path is ~100x slower (FIELD-NOTES).

Costs that shaped this module (pennylane 0.45.1, lightning 0.45.0, 2-core machine):
- Building an operation costs 4-17 us (CNOT 17): a circuit is translated once per compiled
  circuit (LRU by key) and its constant operations are built once.
- lightning.qubit simulates every wire of its device (a 5-qubit GHZ on a 20-wire device: 3.8 ms
  instead of 0.06), so a circuit runs on only the qubits its gates touch, relabelled 0..k-1
  (non-contiguous labels cost a remap per run), on a device with dynamic wires or, for
  lightning.qubit and small k, on one of exactly k wires (dynamic wires cost a wire map per run).
- Broadcasting angles over bindings (one tape whose angles are arrays) is much faster on
  default.qubit (1000 bindings of a 10-angle, 5-qubit circuit: 9 ms against 1.9 s for 1000
  tapes) and still ~2x faster on lightning.qubit, which expands it internally (0.39 s against
  0.75 s); with one binding a plain tape is cheaper, and broadcasts are cut into chunks so that
  default.qubit's (bindings, 2^k) state stays small.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import pennylane as qml
from pennylane.tape import QuantumScript
from qiskit.circuit import QuantumCircuit

from gateway.backends.lru import LRU
from gateway.backends.pauli_values import Masks, pauli_masks, state_vector_values
from gateway.backends.pennylane.adapter import BROADCAST_AMPLITUDES, EXPVAL_VALUES
from gateway.backends.pennylane.translate import Translation, translate
from gateway.backends.qiskit.measurement import TerminalPlan
from gateway.domain.circuits import FloatArray
from gateway.domain.errors import ExecutionError
from gateway.domain.failures import FailureKind

__all__ = ["Device", "PennyLaneSimulation"]

Device = Literal["lightning.qubit", "default.qubit"]

_CACHE_SIZE = 64
# Complex amplitudes a broadcast chunk may hold (32 MiB; admission counts the chunk's copies).
_BROADCAST_AMPLITUDES = BROADCAST_AMPLITUDES
# Operations times bindings one device call may hold: lightning.qubit splits a broadcast tape
# into a tape per binding, each holding every operation (~250 bytes per operation and binding:
# 1000 bindings of 4000 operations took +952 MiB before anything ran).
_OPERATION_BINDINGS = 1 << 17
_FIXED_WIDTH_MAX = 16
_PAULIS: dict[str, Any] = {"X": qml.PauliX, "Y": qml.PauliY, "Z": qml.PauliZ}


class _ProbabilityRun:
    """A terminal plan's body, translated, and where its probabilities land.

    `wires` are the measured qubits some gate touches, listed most significant first (qml.probs
    puts its first wire in the highest bit, Qiskit's little-endian order wants plan.qubits[i] in
    bit i). A measured qubit no gate touches reads 0: `scatter[j]` is the full index of PennyLane
    index j (None when they coincide), so those qubits cost nothing to simulate.
    """

    __slots__ = ("compiled", "scatter", "size", "translation", "wires")

    def __init__(self, plan: TerminalPlan) -> None:
        self.translation = translate(plan.body)
        wire_of = self.translation.wire_of
        measured = [(i, wire_of[q]) for i, q in enumerate(plan.qubits) if q in wire_of]
        self.wires = [wire for _, wire in reversed(measured)]
        self.size = 1 << len(plan.qubits)
        positions = [i for i, _ in measured]
        self.scatter: np.ndarray[Any, np.dtype[np.intp]] | None = None
        if positions != list(range(len(plan.qubits))):
            index = np.arange(1 << len(positions))
            full = np.zeros_like(index)
            for bit, position in enumerate(positions):
                full |= ((index >> bit) & 1) << position
            self.scatter = full
        # A constant circuit's preprocessed tapes and their post-processing, made on first use.
        self.compiled: tuple[Any, Sequence[QuantumScript], Callable[[Any], Any]] | None = None


class PennyLaneSimulation:
    """Exact probabilities and expectation values of Qiskit circuits on a PennyLane device.

    One per simulator worker: devices are built once (one with dynamic wires, plus, for
    lightning.qubit, one per small width in use), and each compiled circuit is translated once
    (the worker runs the same circuit many times).

    Args:
        device: "lightning.qubit" (C++ kernels) or "default.qubit" (numpy).
        num_wires: The most qubits a circuit's gates may act on: only those are simulated (a
            measured qubit no gate touches reads 0 without being simulated).
    """

    def __init__(self, device: Device, num_wires: int) -> None:
        if device not in ("lightning.qubit", "default.qubit"):
            raise ValueError(f"unsupported PennyLane device {device!r}")
        if num_wires < 1:
            raise ValueError("num_wires must be positive")
        self.device_name: Device = device
        self.num_wires = num_wires
        # Dynamic wires: each run simulates only its circuit's qubits (see the module docstring).
        self._device = qml.device(device, wires=None)
        self._program = self._device.preprocess_transforms()
        # lightning.qubit devices of a fixed small width, by width: see _backend.
        self._fixed: dict[int, tuple[Any, Any]] = {}
        # default.qubit devices by width, for final states: see _states.
        self._state_devices: dict[int, Any] = {}
        self._probability_runs: LRU[str, _ProbabilityRun] = LRU(_CACHE_SIZE)
        self._translations: LRU[str, Translation] = LRU(_CACHE_SIZE)

    def probabilities(
        self, key: str, plan: TerminalPlan, parameters: tuple[str, ...], values: FloatArray
    ) -> FloatArray:
        """Exact (analytic) probabilities of `plan.qubits` after `plan.body`, per binding.

        Args:
            key: A stable id of the compiled circuit: its translation is cached under it.
            plan: The circuit's terminal plan; its body uses only QISKIT_GATES and ignored
                instructions (barrier, delay, global phase), possibly with unbound parameters.
            parameters: Parameter names, in the column order of `values` (a superset of the
                body's parameters: transpiling may drop some).
            values: (bindings, len(parameters)) parameter values.

        Returns:
            (bindings, 2**len(plan.qubits)): bit i of the index is plan.qubits[i] (Qiskit's
            little-endian order).

        Raises:
            ExecutionError: EXECUTION_FAILED (SDK_ERROR) when PennyLane fails,
                OUT_OF_MEMORY when it runs out of memory, a CLIENT_ERROR when the circuit
                holds an untranslatable instruction, a parameter without value or more qubits
                than num_wires.
        """
        bindings = _check_values(parameters, values)
        with _sdk_errors():
            run: _ProbabilityRun | None = self._probability_runs.get(key)
            if run is None:
                run = _ProbabilityRun(plan)
                self._probability_runs.put(key, run)
            self._check_width(len(run.translation.qubits))
            out: FloatArray = np.zeros((bindings, run.size), dtype=np.float64)
            if bindings == 0:
                return out
            if not run.wires:  # no measured qubit is touched: every outcome is 0
                out[:, 0] = 1.0
                return out
            measurement = qml.probs(wires=run.wires)
            if run.translation.constant:
                if run.compiled is None:
                    tape = QuantumScript(run.translation.build([]), [measurement])
                    device, program = self._backend(len(run.translation.qubits))
                    run.compiled = (device, *program([tape]))
                device, tapes, post = run.compiled
                (probabilities,) = _columns(post(device.execute(tapes))[0], 1, 1)
            else:
                leaves = run.translation.leaf_values(parameters, values)
                (probabilities,) = self._run(run.translation, [measurement], leaves, bindings)
            if run.scatter is None:
                out[:] = probabilities
            else:
                out[:, run.scatter] = probabilities
            return out

    def expectations(
        self,
        key: str,
        circuit: QuantumCircuit,
        terms: Sequence[tuple[str, tuple[int, ...]]],
        parameters: tuple[str, ...],
        values: FloatArray,
    ) -> FloatArray:
        """Exact expectation values of Pauli terms after `circuit`, per binding.

        Args:
            key: A stable id of the compiled circuit: its translation is cached under it.
            circuit: Transpiled to QISKIT_GATES (plus barriers, delays, global phase), without
                measurements, possibly with unbound parameters.
            terms: (letters, qubits): letters[i] in "IXYZ" acts on qubits[i] (distinct qubits,
                any order). An empty or all-identity term is 1.
            parameters: Parameter names, in the column order of `values`.
            values: (bindings, len(parameters)) parameter values.

        Returns:
            (bindings, len(terms)) expectation values.

        Raises:
            ValueError: A malformed term.
            ExecutionError: As for `probabilities`.
        """
        bindings = _check_values(parameters, values)
        terms = [_check_term(letters, qubits, circuit.num_qubits) for letters, qubits in terms]
        with _sdk_errors():
            translation: Translation | None = self._translations.get(key)
            if translation is None:
                translation = translate(circuit)
                self._translations.put(key, translation)
            self._check_width(len(translation.qubits))
            out: FloatArray = np.zeros((bindings, len(terms)), dtype=np.float64)
            wire_of = translation.wire_of
            columns: dict[tuple[tuple[int, str], ...], list[int]] = {}
            for k, (letters, qubits) in enumerate(terms):
                word: list[tuple[int, str]] = []
                for letter, qubit in zip(letters, qubits, strict=True):
                    if letter == "I":
                        continue
                    wire = wire_of.get(qubit)
                    if wire is None:
                        # An untouched qubit is |0>: Z reads +1, X and Y average to 0.
                        if letter != "Z":
                            break
                        continue
                    word.append((wire, letter))
                else:
                    if word:
                        columns.setdefault(tuple(sorted(word)), []).append(k)
                    else:
                        out[:, k] = 1.0
            if bindings == 0 or not columns:
                return out
            words = list(columns)
            if self.device_name == "default.qubit":
                found = self._state_expectations(translation, words, parameters, values)
            else:
                found = self._measured_expectations(translation, words, parameters, values)
            for j, ks in enumerate(columns.values()):
                out[:, ks] = found[:, j : j + 1]
            return out

    def _measured_expectations(
        self,
        translation: Translation,
        words: list[tuple[tuple[int, str], ...]],
        parameters: tuple[str, ...],
        values: FloatArray,
    ) -> FloatArray:
        """(bindings, len(words)) through qml.expval: lightning.qubit's C++ kernels measure a
        Pauli product on the state in place."""
        bindings = values.shape[0]
        measurements = [qml.expval(_observable(word)) for word in words]
        if translation.constant:
            tape = QuantumScript(translation.build([]), measurements)
            (result,) = self._execute(len(translation.qubits), [tape])
            results = [np.repeat(c, bindings, axis=0) for c in _columns(result, len(words), 1)]
        else:
            leaves = translation.leaf_values(parameters, values)
            results = self._run(translation, measurements, leaves, bindings)
        return np.concatenate([r.reshape(bindings, 1) for r in results], axis=1)

    def _state_expectations(
        self,
        translation: Translation,
        words: list[tuple[tuple[int, str], ...]],
        parameters: tuple[str, ...],
        values: FloatArray,
    ) -> FloatArray:
        """(bindings, len(words)) read from each binding's final state (pauli_values):
        default.qubit's qml.expval of a Pauli product builds its eigenvalues, ~24x the state
        (20 qubits: 390 MiB for a 16 MiB state). One broadcast chunk of states at a time."""
        bindings = values.shape[0]
        width = len(translation.qubits)
        distinct: list[Masks] = []
        for word in words:
            letters = "".join(letter for _, letter in word)
            masks = pauli_masks(letters, [wire for wire, _ in word], width)
            if masks is None:  # words hold no identity letters
                raise ValueError(f"{word} is the identity")
            distinct.append(masks)
        if translation.constant:
            states = self._states(translation.build([]), 1, width)
            return np.repeat(state_vector_values(states, distinct), bindings, axis=0)
        leaves = translation.leaf_values(parameters, values)
        out: FloatArray = np.empty((bindings, len(words)), dtype=np.float64)
        chunk = max(1, _BROADCAST_AMPLITUDES >> width)
        for start in range(0, bindings, chunk):
            stop = min(bindings, start + chunk)
            operations = translation.build([leaf[start:stop] for leaf in leaves])
            states = self._states(operations, stop - start, width)
            out[start:stop] = state_vector_values(states, distinct)
        return out

    def _states(
        self, operations: list[Any], bindings: int, width: int
    ) -> npt.NDArray[np.complex128]:
        """(bindings, 2^width) final states of `operations` on wires 0..width-1, wire 0 the
        most significant bit (a device of exactly `width` wires: its state always covers and
        orders all of them)."""
        device = self._state_devices.get(width)
        if device is None:
            device = self._state_devices[width] = qml.device(self.device_name, wires=width)
        tapes, post = device.preprocess_transforms()([QuantumScript(operations, [qml.state()])])
        (state,) = post(device.execute(tapes))
        array = np.asarray(state, dtype=np.complex128)
        if array.size != bindings << width:
            raise ExecutionError(
                "EXECUTION_FAILED",
                f"PennyLane returned {array.shape} states for {bindings} bindings of {width} "
                "qubits",
                kind=FailureKind.BACKEND_FAULT,
            )
        return array.reshape(bindings, 1 << width)

    def _check_width(self, qubits: int) -> None:
        if qubits > self.num_wires:
            raise ExecutionError(
                "TOO_MANY_QUBITS",
                f"the circuit acts on {qubits} qubits; {self.device_name} here simulates at "
                f"most {self.num_wires}",
                kind=FailureKind.CLIENT_ERROR,
            )

    def _backend(self, width: int) -> tuple[Any, Any]:
        """The device, and its preprocessing program, that runs tapes on wires 0..width-1.

        lightning.qubit with dynamic wires recomputes a wire map on every tape (~80 us, a third
        of a 5-qubit GHZ's run); a device of exactly the tape's width skips it. Kept only up to
        _FIXED_WIDTH_MAX qubits, where that overhead matters and each device's state (which it
        keeps between runs) is at most 1 MiB.
        """
        if self.device_name != "lightning.qubit" or width > _FIXED_WIDTH_MAX:
            return self._device, self._program
        backend = self._fixed.get(width)
        if backend is None:
            device = qml.device(self.device_name, wires=width)
            backend = self._fixed[width] = (device, device.preprocess_transforms())
        return backend

    def _execute(self, width: int, tapes: list[QuantumScript]) -> Sequence[Any]:
        """Each tape's result (tapes on wires 0..width-1)."""
        device, program = self._backend(width)
        processed, post = program(tapes)
        results: Sequence[Any] = post(device.execute(processed))
        return results

    def _run(
        self,
        translation: Translation,
        measurements: list[Any],
        leaves: list[FloatArray],
        bindings: int,
    ) -> list[FloatArray]:
        """The measurements' values for every binding: (bindings, ...) per measurement."""
        per_binding = max(1, len(translation.operations))
        # Bindings one device call may hold: their tapes' operations, and their values
        # (lightning.qubit returns a numpy scalar per binding and measurement: see
        # EXPVAL_VALUES, which admission counts).
        per_call = max(
            1,
            min(_OPERATION_BINDINGS // per_binding, EXPVAL_VALUES // max(1, len(measurements))),
        )
        chunk = max(1, min(_BROADCAST_AMPLITUDES >> len(translation.qubits), per_call))
        parts: list[list[FloatArray]] = []
        tapes: list[QuantumScript] = []
        sizes: list[int] = []

        def execute() -> None:
            results = self._execute(len(translation.qubits), tapes)
            for result, n in zip(results, sizes, strict=True):
                parts.append(_columns(result, len(measurements), n))
            tapes.clear()
            sizes.clear()

        for start in range(0, bindings, chunk):
            stop = min(bindings, start + chunk)
            if stop - start == 1:  # a plain tape: cheaper than a broadcast of one
                operations = translation.build(leaves, start)
            else:
                operations = translation.build([leaf[start:stop] for leaf in leaves])
            tapes.append(QuantumScript(operations, measurements))
            sizes.append(stop - start)
            # One device call per batch of tapes within the bound: all at once, their
            # preprocessed copies held together.
            if sum(sizes) + chunk > per_call:
                execute()
        if tapes:
            execute()
        return [np.concatenate([part[m] for part in parts]) for m in range(len(measurements))]


def _columns(result: Any, measurements: int, bindings: int) -> list[FloatArray]:
    """One tape's result as one (bindings, ...) array per measurement (a tape with one
    measurement returns its value alone, one with several a tuple)."""
    values = [result] if measurements == 1 else list(result)
    return [np.asarray(v, dtype=np.float64).reshape(bindings, -1) for v in values]


def _observable(word: tuple[tuple[int, str], ...]) -> Any:
    operators = [_PAULIS[letter](wire) for wire, letter in word]
    return operators[0] if len(operators) == 1 else qml.prod(*operators)


def _check_values(parameters: tuple[str, ...], values: FloatArray) -> int:
    if values.ndim != 2 or values.shape[1] != len(parameters):
        raise ValueError(f"values must be (bindings, {len(parameters)}), got shape {values.shape}")
    return int(values.shape[0])


def _check_term(
    letters: str, qubits: tuple[int, ...], num_qubits: int
) -> tuple[str, tuple[int, ...]]:
    if len(letters) != len(qubits):
        raise ValueError(f"term {letters!r} names {len(qubits)} qubits")
    if set(letters) - set("IXYZ"):
        raise ValueError(f"term {letters!r} is not a Pauli string")
    if len(set(qubits)) != len(qubits) or any(not 0 <= q < num_qubits for q in qubits):
        raise ValueError(f"term qubits {qubits} are not distinct qubits of the circuit")
    return letters, qubits


@contextmanager
def _sdk_errors() -> Iterator[None]:
    """Maps PennyLane's failures to ExecutionErrors (ours pass through)."""
    try:
        yield
    except ExecutionError:
        raise
    except MemoryError:
        raise ExecutionError(
            "OUT_OF_MEMORY",
            "the simulation ran out of the worker's memory",
            kind=FailureKind.OUT_OF_MEMORY,
        ) from None
    except Exception as exc:
        message = f"PennyLane failed: {type(exc).__name__}: {exc}"
        raise ExecutionError("EXECUTION_FAILED", message[:500], kind=FailureKind.SDK_ERROR) from exc
