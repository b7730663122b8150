"""The base of every backend fed Qiskit circuits: Aer, Braket's and PennyLane's simulators.

The half of an adapter that does not depend on the simulator lives here once:
- `compile_circuit` (compile workers): parse and validate through the Qiskit front end, check
  the memory estimate, transpile to the backend's `qiskit_target()` with one cached preset pass
  manager, and describe the result (registers, layout, features, size).
- `prepare` (gateway): bindings, observables, shots, precision and costs become one
  SamplerTask or EstimatorTask per PUB.
- `execute` (simulator worker): reads each compiled circuit's QPY once (an LRU by circuit key),
  on an ideal all-to-all simulator leaves out the qubits nothing acts on (idle.py: an ISA
  circuit is as wide as its Target; its memory was sized so when compiled), samples terminal
  measurements from exact probabilities with the job's seed (so a seed
  reproduces samples on every simulator that agrees on the probabilities), and turns exact
  expectation values of Pauli terms, mapped through the circuit's layout, into the estimator's
  results.

A subclass names its target and answers three questions in the worker: the measured qubits'
probabilities, shot-by-shot outcomes (where the backend declares mid-circuit features), and
the expectation values of Pauli terms. In the gateway it prices its runs where they cost more
than a batched state vector's amplitude updates (`run_costs`, `sampling_work`,
`estimation_work`: admission's execution work).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
import threading
from abc import abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import qiskit
from pydantic import Field
from qiskit.circuit import ControlFlowOp, QuantumCircuit, Qubit
from qiskit.transpiler import PassManager, Target, generate_preset_pass_manager
from qiskit.transpiler.exceptions import TranspilerError
from qiskit.transpiler.passes import CheckMap

from gateway.backends.base import (
    CIRCUIT_FIELD,
    MAX_COMPILED_CLBITS,
    AdapterContext,
    AdapterOptions,
    BackendAdapter,
    ExecutionOutcome,
    PreparedJob,
    check_compiled_sizes,
    check_types,
)
from gateway.backends.lru import LRU
from gateway.backends.qiskit import frontend as fe
from gateway.backends.qiskit import idle, measurement
from gateway.backends.qiskit.observables import PackedObservables, PauliKey
from gateway.backends.qiskit.qpy_reader import dump_compiled, load_compiled, qpy_versions
from gateway.backends.qiskit.target import from_qiskit_target
from gateway.domain import costs
from gateway.domain.backends import BackendInfo, BackendKind, Primitive
from gateway.domain.bitarray import RegisterSpec, SamplerResultBuilder
from gateway.domain.circuits import (
    DEFAULT_PRECISION,
    CircuitFeature,
    CircuitSource,
    EstimatorPub,
    FloatArray,
    PauliTerm,
    SamplerPub,
)
from gateway.domain.costs import JobCost
from gateway.domain.errors import ExecutionError
from gateway.domain.failures import FailureKind
from gateway.domain.jobs import (
    EstimatorResult,
    JobResult,
    JobSpec,
    PubResult,
    SamplerOutput,
    SamplerResult,
)
from gateway.domain.targets import BackendTarget
from gateway.runtime import reply_codec

__all__ = [
    "CircuitRef",
    "CompiledCircuit",
    "EstimatorTask",
    "PauliKey",
    "QiskitAdapter",
    "QiskitOptions",
    "QiskitPayload",
    "SamplerTask",
    "Term",
]

# A Pauli term on the transpiled circuit's qubits: letters[i] acts on qubits[i].
Term = tuple[str, tuple[int, ...]]

_WORKER_CACHE_SIZE = 64
_NOT_GATES = frozenset({"measure", "reset", "delay", "barrier", "global_phase"})
# Jobs up to this many bindings and observable terms are cheap enough to prepare on the event
# loop (microseconds), sparing a thread hand-off.
_CHEAP_BINDINGS = 1024
# Reading one term of one observable for one binding when the exact estimator combines them
# (measured: one observable of 5000 copies of Z with 5000 bindings, 2.1 s: ~84 ns each).
_GATHER_WEIGHT = 4_200
_CHEAP_TERMS = 1024

# The transpiler's own explanation is quoted up to this length.
MAX_TRANSPILER_MESSAGE = 500
# Probability rows asked of the simulator at once. A row is 2^measured qubits float64, and a
# simulator's Python output (Aer: a list of floats) holds several times that while it is read:
# a table for every binding at once outgrew any budget (3000 bindings of 16 measured qubits).
PROBABILITY_TABLE_BYTES = 32 << 20
_PROBABILITY_ROW_FACTOR = 48  # bytes per probability while a row is read and copied


class QiskitOptions(AdapterOptions):
    """Options every Qiskit-fed backend has (a subclass may narrow the defaults)."""

    num_qubits: int = Field(default=64, ge=1)
    optimization_level: int = Field(default=1, ge=0, le=3)
    seed_transpiler: int = Field(default=0, ge=0)


# --------------------------------------------------------------------------------------------
# Payload: what `prepare` hands to `execute` (picklable, module-level classes).
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CircuitRef:
    """A transpiled circuit, written once as QPY when it is compiled.

    QPY, not a pickle: the bytes come from a compile worker, which ran client input, and a
    pickle runs code of its bytes' choosing wherever it is read (a simulator worker, or the
    gateway for a provider's runner). For the same reason `key`, by which workers keep what
    they derive from the circuit, is the bytes' own digest, computed where they are read: a key
    the compile worker named could be another tenant's circuit's, swapping its circuit in a
    simulator worker's cache.
    """

    data: bytes

    def __post_init__(self) -> None:
        if type(self.data) is not bytes:
            raise ValueError("a compiled circuit's QPY is bytes")
        # Digested once, where the ref is built (the gateway rebuilds it from the compile
        # reply): the key then travels to simulator workers inside the job's pickle, instead
        # of each worker hashing the circuit again for every job.
        _ = self.key

    @classmethod
    def of(cls, circuit: QuantumCircuit) -> CircuitRef:
        return cls(data=dump_compiled(circuit))

    @functools.cached_property
    def key(self) -> str:
        return hashlib.blake2b(self.data, digest_size=16).hexdigest()

    def circuit(self) -> QuantumCircuit:
        """The circuit, layout included (qpy_reader.load_compiled; raises ValueError)."""
        return load_compiled(self.data)


@dataclass(frozen=True, eq=False)
class SamplerTask:
    circuit: CircuitRef
    parameters: tuple[str, ...]
    values: FloatArray  # (*shape, len(parameters)), columns in `parameters` order
    shape: tuple[int, ...]
    shots: int
    registers: tuple[RegisterSpec, ...]
    seed: int
    # CompiledCircuit.writes_clbits: False, every bit reads 0 without a run.
    writes_clbits: bool

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    def flat_values(self) -> FloatArray:
        """(bindings, len(parameters))."""
        return self.values.reshape(self.size, len(self.parameters))


@dataclass(frozen=True, eq=False)
class EstimatorTask:
    circuit: CircuitRef
    parameters: tuple[str, ...]
    values: FloatArray  # (*bindings_shape, len(parameters))
    bindings_shape: tuple[int, ...]
    # Row-major over observables_shape: (PauliKey, coefficient) terms, packed (see
    # gateway.backends.qiskit.observables).
    observables: PackedObservables
    observables_shape: tuple[int, ...]
    shape: tuple[int, ...]
    precision: float
    seed: int

    @property
    def size(self) -> int:
        return math.prod(self.bindings_shape)

    def flat_values(self) -> FloatArray:
        """(bindings, len(parameters))."""
        return self.values.reshape(self.size, len(self.parameters))


@dataclass(frozen=True, eq=False)
class QiskitPayload:
    # The simulation method it was prepared for (a worker of another method refuses it).
    method: str
    sampler_output: SamplerOutput
    tasks: tuple[SamplerTask | EstimatorTask, ...]


@dataclass(frozen=True, eq=False)
class CompiledCircuit:
    """A compiled circuit: what `prepare` needs to know, and the transpiled circuit itself."""

    ref: CircuitRef
    num_qubits: int
    num_clbits: int
    parameters: tuple[str, ...]
    # Whether the transpiled circuit still has parameters: from optimization_level 2 on,
    # transpiling removes those that cannot change a measurement (an rz right before one).
    keeps_parameters: bool
    features: frozenset[CircuitFeature]
    has_measurements: bool
    # Its shots are draws from one final state (gateway.backends.qiskit.measurement).
    terminal: bool
    # False: every classical bit reads 0 in every shot, whatever the simulator.
    writes_clbits: bool
    registers: tuple[RegisterSpec, ...]
    layout: tuple[int, ...]
    # Qubits of the circuit as submitted that something acts on (PreparedJob.qubits).
    active_qubits: int
    memory_bytes: int
    # Operations of the transpiled circuit, as if definitions were unrolled.
    operations: int
    # Complex numbers the simulation state holds (what one operation may touch).
    amplitudes: int
    # A `while` loop, whose run time no estimate bounds (PreparedJob.has_while_loop).
    has_while_loop: bool = False
    # Measurements something acts on the qubit after (a branching simulator splits there).
    mid_circuit_measurements: int = 0
    # What a branching simulator applies path by path: every measurement once it branches,
    # and those of them that may split a path (fe.count_path_measurements).
    path_measurements: int = 0
    splitting_measurements: int = 0

    def __post_init__(self) -> None:
        # It may come from a compile worker taken over by hostile input (check_compiled_sizes).
        check_compiled_sizes(
            self.num_qubits,
            self.layout,
            active_qubits=self.active_qubits,
            num_clbits=self.num_clbits,
            memory_bytes=self.memory_bytes,
            operations=self.operations,
            amplitudes=self.amplitudes,
        )
        if self.num_clbits > MAX_COMPILED_CLBITS or type(self.ref) is not CircuitRef:
            raise ValueError("a compiled circuit past its bounds")
        counts = (self.mid_circuit_measurements, self.path_measurements)
        check_types("mid_circuit_measurements", (*counts, self.splitting_measurements), int)
        if not all(0 <= count <= max(self.operations, 1) for count in counts) or not (
            0 <= self.splitting_measurements <= self.path_measurements
        ):
            raise ValueError("a compiled circuit past its bounds")
        check_types("parameters", self.parameters, str)
        check_types("registers", self.registers, RegisterSpec)
        flags = (self.has_measurements, self.terminal, self.writes_clbits, self.has_while_loop)
        check_types("flags", flags, bool)
        if type(self.features) is not frozenset or not all(
            isinstance(f, CircuitFeature) for f in self.features
        ):
            raise ValueError("a compiled circuit's features are not CircuitFeatures")
        for register in self.registers:
            check_types("register bits", register.clbits, int)
            if type(register.name) is not str or not all(
                0 <= bit < self.num_clbits for bit in register.clbits
            ):
                raise ValueError(f"register {register.name!r} past the circuit's clbits")

    @property
    def nbytes(self) -> int:
        """Its weight in the gateway's compile cache."""
        return len(self.ref.data) + 1024

    @property
    def shot_by_shot(self) -> bool:
        """Mid-circuit measurement, reset or control flow: every shot is simulated."""
        return bool(self.features)


reply_codec.register(CircuitRef, CompiledCircuit)  # what a compile worker answers


class QiskitAdapter(BackendAdapter):
    """A simulator fed Qiskit circuits; subclasses name the target and run the simulation."""

    options_model: ClassVar[type[AdapterOptions]] = QiskitOptions
    compiled_type: ClassVar[type] = CompiledCircuit
    # BackendInfo.provider.
    provider: ClassVar[str]
    # Whether `sample_shots` honours the task's seed (a simulator without a seed does not: its
    # jobs then report no seed).
    seeds_shot_by_shot: ClassVar[bool] = True

    def __init__(self, context: AdapterContext) -> None:
        super().__init__(context)
        if not isinstance(self.options, QiskitOptions):
            raise TypeError(f"{type(self).__name__} needs QiskitOptions")
        self.qiskit_options: QiskitOptions = self.options
        # Reentrant: a subclass's lazily built simulator may need the lazily built target.
        self._lock = threading.RLock()
        # By whether it schedules (a circuit with a delay on a target with timing) and whether
        # it keeps a circuit already mapped to the target where it is.
        self._pms: dict[tuple[bool, bool], PassManager] = {}
        self._target: Target | None = None
        self._info: BackendInfo | None = None
        self._backend_target: BackendTarget | None = None
        # Simulator-worker side, by circuit key: transpiled circuits (read from their QPY), the
        # circuits simulated for them (`_simulated`) and those circuits' terminal plans (None:
        # not sampled from probabilities).
        self._worker_circuits: LRU[str, QuantumCircuit] = LRU(_WORKER_CACHE_SIZE)
        self._worker_simulated: LRU[str, idle.Simulated] = LRU(_WORKER_CACHE_SIZE)
        self._worker_plans: LRU[str, measurement.TerminalPlan | None] = LRU(_WORKER_CACHE_SIZE)

    # ------------------------------------------------------------------ what a subclass says

    @abstractmethod
    def build_qiskit_target(self) -> Target:
        """The target circuits are transpiled to (built once; may import the SDK)."""

    @abstractmethod
    def state_size(self, circuit: QuantumCircuit, transpiled: bool) -> tuple[int, int]:
        """(bytes, amplitudes) of the simulation state for `circuit`.

        Called on what the simulator would run (`simulated`) of the parsed circuit before
        transpiling and of the transpiled one after (a subclass whose estimate depends on the
        transpiled gates, such as a matrix product state, answers the first with a lower bound).
        """

    @property
    @abstractmethod
    def method_name(self) -> str:
        """The simulation method, as memory errors name it (e.g. "statevector")."""

    def circuit_features(self) -> frozenset[CircuitFeature]:
        """Features beyond terminal measurement the simulator runs (default: none)."""
        return frozenset()

    def sdk_versions(self) -> Mapping[str, str]:
        """The simulator's SDK versions a result was made with (Job.sdk_versions lists them
        beside Qiskit's, which compiled the circuit)."""
        return {}

    def info_properties(self) -> dict[str, str]:
        """BackendInfo.properties beyond the QPY versions every Qiskit-fed backend reads."""
        return {}

    def check_sampler(self, entry: CompiledCircuit, spec: JobSpec, circuit_field: str) -> None:
        """Refuses a sampler PUB this backend cannot run as asked (default: none)."""

    def sweep_memory(self, entry: CompiledCircuit, bindings: int, terms: int) -> int:
        """What running `bindings` bindings of `entry` (with `terms` distinct Pauli terms, an
        estimator's) holds in the worker beside its state: 0 unless the simulator keeps
        something per binding."""
        return 0

    def shots_memory(self, entry: CompiledCircuit, task: SamplerTask) -> int:
        """What a sampler task's shots hold in the worker beside the state while it runs: 0
        unless the simulator returns its shots in a form larger than their outcomes."""
        return 0

    def check_estimator(self, entry: CompiledCircuit, circuit_field: str) -> None:
        """This backend's own rules on an estimator PUB's circuit, checked at admission
        (none here)."""

    def check_transpiled(self, circuit: QuantumCircuit, terminal: bool, field: str) -> None:
        """Refuses (INVALID_ARGUMENT) what this backend's worker would refuse to run: checked
        when compiling, so a job is never queued only to fail. `terminal`: every measurement
        is at the end (measurement.terminal_plan). Nothing by default."""

    def samples_from_probabilities(self) -> bool:
        """True when terminal-measurement circuits are sampled from exact probabilities (an
        ideal simulator); False makes every sampler PUB go through `sample_shots`."""
        return True

    def runs_verbatim_boxes(self) -> bool:
        """True when a `#pragma braket verbatim` box runs here as written: an ideal simulator
        with an all-to-all target, where whatever the transpiler makes of the body gives the
        body's own results exactly. False by default (a device, a noise model, an
        approximation): such a box is refused, not compiled as if it were not verbatim."""
        return False

    def compacts_idle_qubits(self) -> bool:
        """Whether circuits are simulated without their idle qubits (gateway.backends.qiskit
        .idle), and sized so: for an ideal simulator whose qubits are all coupled, where a
        qubit's number means nothing, or one that takes its noise on the qubits kept (a noisy
        Aer twin). False by default: on a device the numbers are physical qubits and every one
        is kept."""
        return False

    def simulated(self, circuit: QuantumCircuit) -> idle.Simulated:
        """The circuit this backend's simulator runs for `circuit`, which its state is sized
        by (state_size)."""
        if self.compacts_idle_qubits():
            return idle.without_idle_qubits(circuit)
        return idle.whole(circuit)

    def estimator_shots(self, precision: float) -> int:
        """Shots one binding of an estimator PUB runs at `precision` (0: the backend's
        default): 0 where expectation values are computed, not sampled (default)."""
        return 0

    def terminal_probabilities(
        self,
        key: str,
        plan: measurement.TerminalPlan,
        parameters: tuple[str, ...],
        values: FloatArray,
    ) -> FloatArray:
        """(bindings, 2**len(plan.qubits)) probabilities of plan.qubits after plan.body (bit i
        of an index = plan.qubits[i]); `values` is (bindings, len(parameters))."""
        raise NotImplementedError(f"{type(self).__name__} samples shot by shot")

    def sample_shots(
        self, simulated: idle.Simulated, task: SamplerTask, output: SamplerOutput
    ) -> SamplerResult:
        """A sampler PUB simulated shot by shot (mid-circuit features, or no exact
        probabilities) on `simulated.circuit`, whose qubits are the compiled circuit's
        `simulated.kept`."""
        raise ExecutionError(
            "EXECUTION_FAILED",
            f"backends/{self.context.name} samples only terminal measurements",
            kind=FailureKind.BACKEND_FAULT,
        )

    @abstractmethod
    def expectations(
        self,
        key: str,
        simulated: idle.Simulated,
        terms: Sequence[Term],
        parameters: tuple[str, ...],
        values: FloatArray,
    ) -> FloatArray:
        """(bindings, len(terms)) exact expectation values of non-identity Pauli terms on the
        qubits of `simulated.circuit`; `values` is (bindings, len(parameters))."""

    # ------------------------------------------------------------------ info

    def qiskit_target(self) -> Target:
        if self._target is None:
            with self._lock:
                if self._target is None:
                    self._target = self.build_qiskit_target()
        return self._target

    def backend_kind(self) -> BackendKind:
        """What tenants' policies see: a simulator unless the backend runs on a provider's
        device (allowed_hardware)."""
        return BackendKind.SIMULATOR

    def info(self) -> BackendInfo:
        if self._info is None:
            target = self.qiskit_target()
            names = target.operation_names
            basis = tuple(
                sorted(n for n in names if n in fe.STANDARD_GATE_NAMES and n not in _NOT_GATES)
            )
            self._info = dataclasses.replace(
                self.info_without_target(),
                num_qubits=target.num_qubits or self.qiskit_options.num_qubits,
                basis_gates=basis,
                features=self.circuit_features(),
            )
        return self._info

    def info_without_target(self) -> BackendInfo:
        return BackendInfo(
            name=self.context.name,
            provider=self.provider,
            kind=self.backend_kind(),
            num_qubits=0,
            basis_gates=(),
            primitives=frozenset({Primitive.SAMPLER, Primitive.ESTIMATOR}),
            features=frozenset(),
            limits=self.context.limits,
            # QPY format versions Circuit.qpy may use, e.g. "13-18".
            properties={**self.info_properties(), "qpy_versions": qpy_versions()},
        )

    def target(self) -> BackendTarget:
        """What this simulator really offers: the target's instructions that the front end
        accepts, with whatever coupling map and noise data the target has."""
        if self._backend_target is None:
            self._backend_target = from_qiskit_target(self.qiskit_target())
        return self._backend_target

    # ------------------------------------------------------------------ compile

    def compile_circuit(self, source: CircuitSource) -> CompiledCircuit:
        field = CIRCUIT_FIELD
        target = self.qiskit_target()
        budget = self.context.limits.memory_budget_bytes
        max_qubits = target.num_qubits or self.qiskit_options.num_qubits
        # The target's operations: a matrix gate it lacks counts as what synthesising it makes
        # (seconds of CPU for a 7-qubit unitary), refused here before any synthesis.
        circuit = fe.parse_circuit(
            source,
            self.context.circuit_limits,
            field,
            max_qubits=max_qubits,
            native=target.operation_names,
        )
        circuit = fe.open_verbatim_boxes(
            circuit, self.runs_verbatim_boxes() and target.build_coupling_map() is None, field
        )
        features = fe.detect_features(circuit)
        fe.check_features(features, self.circuit_features(), field)
        fe.check_control_flow_supported(circuit, target.operation_names, field)
        circuit = fe.rename_shadowing_gates(circuit, target.operation_names, field)
        circuit = fe.settle_unreachable_conditions(circuit, field)
        circuit = fe.settle_angles(circuit, field)
        # Before transpiling, which costs more than refusing.
        before = self.simulated(circuit).circuit
        fe.check_memory(self.state_size(before, False)[0], budget, self.method_name, field)
        # A target with timing (IBM devices and their noisy Aer twins) refuses an unscheduled
        # `delay` ("not scheduled", Qiskit's own transpile too): such a circuit is scheduled
        # as late as possible, as the device would run it.
        scheduled = target.dt is not None and "delay" in circuit.count_ops()
        # An OpenQASM 3 program on physical qubits ($0, $1) is as wide as the highest one it
        # names: widened with idle qubits to the target's width, it keeps them like a QPY ISA
        # circuit does (else from level 2 VF2Layout moved a Bell pair on $0, $1 to 3 and 4).
        physical = _widened_to(circuit, target)
        mapped = _already_mapped(physical, target)
        try:
            manager = self._pass_manager(scheduled, mapped)
            transpiled: QuantumCircuit = manager.run(physical if mapped else circuit)
        except TranspilerError as exc:
            # The circuit asks for what this target cannot do (a `delay` on a target without
            # it): the client's to change, not a gateway fault.
            detail = str(exc)[:MAX_TRANSPILER_MESSAGE]
            raise fe.invalid(
                "TRANSPILE_FAILED",
                f"the circuit cannot be compiled for this backend: {detail}",
                field,
            ) from None
        # The phases the transpiler computed (a constant of a parameter, see settle_angles).
        transpiled = fe.settle_angles(transpiled, field)
        # Each instance of a gate definition may bind its angles differently: an overflow can
        # show only once the transpiler has unrolled them all.
        fe.check_finite_parameters(transpiled, field)
        terminal = measurement.terminal_plan(transpiled) is not None
        self.check_transpiled(transpiled, terminal, field)
        # Loose bits (`bit c;`) are one-bit registers named after their variable.
        registers = tuple(
            RegisterSpec(name=name, clbits=clbits)
            for name, clbits in fe.result_registers(transpiled)
        )
        try:
            # Written, and read back as a worker will: what cannot be is refused here as the
            # circuit's, not failed on a worker as a backend fault that counts against the
            # breaker every tenant shares (pickled, a switch's default case did that).
            ref = CircuitRef.of(transpiled)
            read_back = ref.circuit()
        except Exception as exc:  # whatever the SDK raises on its own output
            raise fe.invalid(
                "UNSUPPORTED_FEATURE",
                f"the compiled circuit cannot be handed to a worker: {type(exc).__name__}: "
                f"{str(exc)[:MAX_TRANSPILER_MESSAGE]}",
                field,
                feature="circuit_serialization",
            ) from None
        # Sized by what the simulator will hold: the circuit a worker reads back, as it runs it
        # (execute: without its idle qubits where this backend leaves them out).
        memory, amplitudes = self.state_size(self.simulated(read_back).circuit, True)
        fe.check_memory(memory, budget, self.method_name, field)
        mid_circuit_measurements = fe.count_mid_circuit_measurements(transpiled)
        path_measurements, splitting_measurements = (
            fe.count_path_measurements(transpiled) if mid_circuit_measurements else (0, 0)
        )
        return CompiledCircuit(
            ref=ref,
            num_qubits=circuit.num_qubits,
            num_clbits=circuit.num_clbits,
            parameters=tuple(p.name for p in circuit.parameters),
            keeps_parameters=bool(transpiled.parameters),
            features=features,
            has_measurements=fe.has_measurements(circuit),
            terminal=terminal,
            writes_clbits=fe.writes_clbits(transpiled),
            registers=registers,
            # One physical qubit per qubit of the circuit as submitted (not the widening's).
            layout=_layout_of(transpiled)[: circuit.num_qubits],
            active_qubits=len(idle.used_qubits(circuit)),
            memory_bytes=memory,
            operations=fe.count_operations(transpiled),
            amplitudes=amplitudes,
            has_while_loop=fe.has_while_loop(transpiled),
            mid_circuit_measurements=mid_circuit_measurements,
            path_measurements=path_measurements,
            splitting_measurements=splitting_measurements,
        )

    def run_costs(self) -> costs.RunCosts:
        """What the simulator's runs cost beyond amplitude updates (admission's execution
        work): nothing for a simulator that runs every binding of one assembled circuit."""
        return costs.BATCHED_RUNS

    @property
    def combines_terms(self) -> bool:
        """Whether the worker combines the terms' values into observables itself (the exact
        estimators), or the SDK it hands the observables to does."""
        return True

    def sampling_work(
        self, entry: CompiledCircuit, bindings: int, shots: int, spec: JobSpec
    ) -> int:
        """Admission's execution work of a sampler PUB (costs.simulation_work's units)."""
        return costs.simulation_work(
            entry.operations,
            entry.amplitudes,
            bindings,
            shots,
            entry.shot_by_shot,
            self.run_costs(),
        )

    def estimation_work(
        self,
        entry: CompiledCircuit,
        bindings: int,
        terms: int,
        bases: int,
        shots: int,
        spec: JobSpec,
    ) -> int:
        """Admission's execution work of an estimator PUB of `terms` distinct Pauli terms:
        one exact pass per binding and the terms' reads of its state (`bases`, the measurement
        bases they need at most, and `shots`, what a sampling backend pays for the precision
        in each, are a sampling backend's)."""
        runs = self.run_costs()
        read_terms = terms * bindings * runs.per_term
        return read_terms + costs.simulation_work(
            entry.operations,
            entry.amplitudes,
            bindings,
            1,
            False,
            runs,
            state_passes=terms * costs.TERM_STATE_PASSES,
        )

    def _pass_manager(self, scheduled: bool = False, mapped: bool = False) -> PassManager:
        """The cached preset pass manager; `mapped` pins the trivial layout (a circuit already
        on the target's qubits: an ISA circuit stays on the physical qubits its author chose,
        where from level 2 VF2PostLayout would move it to lower-error ones)."""
        key = (scheduled, mapped)
        manager = self._pms.get(key)
        if manager is None:
            target = self.qiskit_target()
            with self._lock:
                manager = self._pms.get(key)
                if manager is None:
                    manager = self._pms[key] = generate_preset_pass_manager(
                        optimization_level=self.qiskit_options.optimization_level,
                        target=target,
                        seed_transpiler=self.qiskit_options.seed_transpiler,
                        scheduling_method="alap" if scheduled else None,
                        initial_layout=list(range(target.num_qubits or 0)) if mapped else None,
                    )
        return manager

    # ------------------------------------------------------------------ prepare

    def prepare(self, spec: JobSpec, seed: int, circuits: Sequence[object]) -> PreparedJob:
        limits = self.context.limits
        tasks: list[SamplerTask | EstimatorTask] = []
        layouts: list[tuple[int, ...]] = []
        qubits = 0
        peak_memory = 0
        result_bytes = 0
        has_while_loop = False
        cost = JobCost(limits.max_job_shots, limits.max_estimator_work, limits.max_execution_work)
        for index, pub in enumerate(spec.pubs):
            kind = "sampler" if isinstance(pub, SamplerPub) else "estimator"
            base = f"spec.pubs[{index}].{kind}"
            circuit_field = f"{base}.circuit.{pub.circuit.language.value}"
            entry = circuits[index]
            if not isinstance(entry, CompiledCircuit):
                raise TypeError(f"not a compiled Qiskit circuit: {type(entry).__name__}")
            bindings_shape = tuple(int(d) for d in pub.bindings.shape)
            # Counted before resolve_bindings allocates anything for the sweep.
            costs.bindings_count(bindings_shape, limits.max_bindings, f"{base}.parameter_values")
            values = fe.resolve_bindings(pub.bindings, entry.parameters, f"{base}.parameter_values")
            pub_seed = costs.derive_seed(seed, index, kind)
            task: SamplerTask | EstimatorTask
            # What the run holds beside the state: the simulator's per-binding copies, and an
            # exact estimator's combining matrices.
            beside_state: int
            if isinstance(pub, SamplerPub):
                task, size = self._sampler_task(
                    pub, entry, values, bindings_shape, pub_seed, spec, base, circuit_field, cost
                )
                beside_state = self.sweep_memory(entry, math.prod(bindings_shape), 0)
                beside_state += self.shots_memory(entry, task)
            else:
                task, size, beside_state = self._estimator_task(
                    pub, entry, values, bindings_shape, pub_seed, spec, base, circuit_field, cost
                )
            fe.check_result_size(size, limits.max_result_bytes, f"spec.pubs[{index}]")
            result_bytes += size
            tasks.append(task)
            layouts.append(entry.layout)
            qubits = max(qubits, entry.active_qubits)
            if beside_state:
                fe.check_memory(
                    entry.memory_bytes + beside_state,
                    limits.memory_budget_bytes,
                    self.method_name,
                    f"spec.pubs[{index}]",
                )
            peak_memory = max(peak_memory, entry.memory_bytes + beside_state)
            has_while_loop = has_while_loop or entry.has_while_loop
        fe.check_result_size(result_bytes, limits.max_result_bytes, "spec.pubs")
        payload = QiskitPayload(
            method=self.method_name, sampler_output=spec.options.sampler_output, tasks=tuple(tasks)
        )
        return PreparedJob(
            payload=payload,
            memory_bytes=peak_memory,
            layouts=tuple(layouts),
            shots=cost.shots,
            has_while_loop=has_while_loop,
            qubits=qubits,
        )

    def _sampler_task(
        self,
        pub: SamplerPub,
        entry: CompiledCircuit,
        values: FloatArray,
        shape: tuple[int, ...],
        seed: int,
        spec: JobSpec,
        base: str,
        circuit_field: str,
        cost: JobCost,
    ) -> tuple[SamplerTask, int]:
        if entry.num_clbits == 0:
            raise fe.invalid(
                "NO_MEASUREMENTS",
                "the circuit has no classical bits, so a sampler has nothing to return",
                circuit_field,
            )
        self.check_sampler(entry, spec, circuit_field)
        shots, shots_field = costs.pub_shots(
            pub.shots,
            spec.options.default_shots,
            self.context.default_shots,
            self.context.limits.max_shots,
            base,
        )
        bindings = math.prod(shape)
        cost.add_shots(bindings, shots, shots_field)
        cost.add_execution(self.sampling_work(entry, bindings, shots, spec), base)
        size = fe.sampler_result_bytes(
            [len(r.clbits) for r in entry.registers],
            bindings,
            shots,
            spec.options.sampler_output,
            name_bytes=sum(len(r.name.encode()) for r in entry.registers),
        )
        task = SamplerTask(
            circuit=entry.ref,
            parameters=entry.parameters,
            values=values,
            shape=shape,
            shots=shots,
            registers=entry.registers,
            seed=seed,
            writes_clbits=entry.writes_clbits,
        )
        return task, size

    def _estimator_task(
        self,
        pub: EstimatorPub,
        entry: CompiledCircuit,
        values: FloatArray,
        bindings_shape: tuple[int, ...],
        seed: int,
        spec: JobSpec,
        base: str,
        circuit_field: str,
        cost: JobCost,
    ) -> tuple[EstimatorTask, int, int]:
        """The PUB's task, its result's size, and the memory its run takes beside the state
        (the simulator's per-binding copies, the exact estimator's matrices of doubles)."""
        # Exact expectation values need a pure, unsampled state: no measurement, no reset.
        if entry.has_measurements:
            raise fe.invalid(
                "UNSUPPORTED_FEATURE",
                "estimator circuits must not contain measurements",
                circuit_field,
                feature="measurement",
            )
        if CircuitFeature.RESET in entry.features:
            raise fe.invalid(
                "UNSUPPORTED_FEATURE",
                "estimator circuits must not contain resets",
                circuit_field,
                feature=CircuitFeature.RESET.value,
            )
        self.check_estimator(entry, circuit_field)
        observables_shape = fe.validate_observables(
            pub.observables, pub.observables_shape, entry.num_qubits, f"{base}.observables"
        )
        shape = fe.broadcast_pub_shape(observables_shape, bindings_shape, base)
        # Sparse terms stay sparse (linear in the request, whatever the circuit's width).
        observables = tuple(
            tuple((_pauli_key(term), float(term.coefficient)) for term in obs.terms)
            for obs in pub.observables
        )
        # Each distinct Pauli term is evaluated once per binding.
        distinct = {key for observable in observables for key, _ in observable}
        terms = len(distinct)
        bases = _measurement_bases(distinct)
        # Combining them reads every term of every observable for every binding (repeated
        # terms too), into a bindings x observables matrix before broadcasting.
        lengths = [len(observable) for observable in observables]
        listed, widest = sum(lengths), max(lengths)
        packed = PackedObservables.pack(observables)
        del observables
        bindings = math.prod(bindings_shape)
        cost.add_estimator(terms, entry.num_qubits, bindings, f"{base}.observables")
        precision_field, precision = _precision(pub, spec, base)
        # A sampling backend pays shots for its precision: they count against the job's shot
        # limits, quotas and per-shot prices like a sampler's.
        shots = self.estimator_shots(precision)
        costs.check_precision_shots(
            shots, precision, self.context.limits.max_shots, precision_field
        )
        cost.add_shots(bindings, shots, precision_field)
        cost.add_execution(self.estimation_work(entry, bindings, terms, bases, shots, spec), base)
        beside_state = self.sweep_memory(entry, bindings, terms)
        if self.combines_terms:
            cost.add_execution(bindings * listed * _GATHER_WEIGHT, base)
            beside_state += 8 * bindings * (terms + len(pub.observables) + widest)
        task = EstimatorTask(
            circuit=entry.ref,
            parameters=entry.parameters,
            values=values,
            bindings_shape=bindings_shape,
            observables=packed,
            observables_shape=observables_shape,
            shape=shape,
            precision=precision,
            seed=seed,
        )
        return task, fe.estimator_result_bytes(shape), beside_state

    def prepare_is_cheap(self, spec: JobSpec) -> bool:
        # Circuits come compiled: what is left is linear in the bindings and observable terms.
        # Shapes are summed as Python integers: a client's shape may not fit in 64 bits.
        bindings = sum(math.prod(p.bindings.shape) for p in spec.pubs)
        terms = sum(
            len(o.terms) for p in spec.pubs if isinstance(p, EstimatorPub) for o in p.observables
        )
        return bindings <= _CHEAP_BINDINGS and terms <= _CHEAP_TERMS

    # ------------------------------------------------------------------ execute (worker)

    def execute(self, payload: object) -> ExecutionOutcome:
        if not isinstance(payload, QiskitPayload):
            raise TypeError(f"not a Qiskit payload: {type(payload).__name__}")
        if payload.method != self.method_name:
            raise ValueError(
                f"payload prepared for {payload.method}, this worker runs {self.method_name}"
            )
        results: list[PubResult] = []
        seeded = True
        for index, task in enumerate(payload.tasks):
            try:
                circuit = self._load(task.circuit)
                if isinstance(task, SamplerTask):
                    # Outcomes read clbits, which the simulated circuit keeps as they are.
                    simulated = self._simulated(task.circuit, circuit)
                    results.append(self._sample(simulated, task, payload.sampler_output))
                    if not self.seeds_shot_by_shot:
                        seeded = (
                            seeded
                            and self.terminal_plan(task.circuit.key, simulated.circuit) is not None
                        )
                else:
                    results.append(self._estimate(circuit, task))
            except ExecutionError as exc:
                # The failure belongs to this PUB: say which (Job.error metadata "pubIndex").
                exc.metadata.setdefault("pubIndex", str(index))
                raise
            except MemoryError:
                raise ExecutionError(
                    "OUT_OF_MEMORY",
                    f"PUB {index}: the simulation ran out of the worker's memory",
                    kind=FailureKind.OUT_OF_MEMORY,
                    metadata={"pubIndex": str(index)},
                ) from None
            except (ZeroDivisionError, OverflowError) as exc:
                # Raised while an SDK binds an angle expression (1/theta at theta = 0): the
                # client's values, not the backend, so the breaker must not count it.
                raise _non_finite(index, type(exc).__name__) from None
            except RuntimeError as exc:
                # Aer binding asin(theta) at theta > 1 (Qiskit: "Binding to NaN."): the
                # client's values too, told apart by where it was raised as below.
                if not _raised_binding(exc):
                    raise
                raise _non_finite(index, "NaN") from None
            except TypeError as exc:
                # Aer binding sqrt(theta) at theta < 0 ("Could not cast complex parameter
                # expression to float"): the client's values too. Told apart by where it was
                # raised (Aer's binding step), not its words: any other TypeError stays an
                # SDK_ERROR, which the breaker counts.
                if not _raised_binding(exc):
                    raise
                # NON_FINITE_ANGLE (INVALID_ARGUMENT), as for 1/theta at 0: EXECUTION_FAILED is
                # INTERNAL, which tells the client "our fault, resubmit".
                raise ExecutionError(
                    "NON_FINITE_ANGLE",
                    f"PUB {index}: a gate angle evaluated to a complex number for these "
                    "parameter values; check the bindings against the circuit's angle "
                    "expressions",
                    kind=FailureKind.CLIENT_ERROR,
                    metadata={"pubIndex": str(index)},
                ) from None
        return ExecutionOutcome(
            result=JobResult(pubs=tuple(results)),
            sdk_versions={"qiskit": qiskit.__version__, **self.sdk_versions()},
            seeded=seeded,
        )

    def _load(self, ref: CircuitRef) -> QuantumCircuit:
        circuit: QuantumCircuit | None = self._worker_circuits.get(ref.key)
        if circuit is None:
            circuit = ref.circuit()
            self._worker_circuits.put(ref.key, circuit)
        return circuit

    def _simulated(self, ref: CircuitRef, circuit: QuantumCircuit) -> idle.Simulated:
        """What the simulator runs for the compiled `circuit` (read from `ref`): one per
        circuit key, so everything a subclass keeps by that key is of the same circuit."""
        simulated: idle.Simulated | None = self._worker_simulated.get(ref.key)
        if simulated is None:
            simulated = self.simulated(circuit)
            self._worker_simulated.put(ref.key, simulated)
        return simulated

    def terminal_plan(self, key: str, circuit: QuantumCircuit) -> measurement.TerminalPlan | None:
        """The circuit's terminal plan when this backend samples it from probabilities."""
        if key in self._worker_plans:
            return self._worker_plans.get(key)
        plan = measurement.terminal_plan(circuit) if self.samples_from_probabilities() else None
        # None is kept too: "no plan" is an answer worth keeping.
        self._worker_plans.put(key, plan)
        return plan

    def _sample(
        self, simulated: idle.Simulated, task: SamplerTask, output: SamplerOutput
    ) -> SamplerResult:
        circuit = simulated.circuit
        plan = self.terminal_plan(task.circuit.key, circuit)
        if plan is None:
            if not task.writes_clbits:
                return _zeros(circuit, task, output)
            return self.sample_shots(simulated, task, output)
        builder = result_builder(circuit.num_clbits, task, output)
        decoder = builder.decoder
        rng = np.random.default_rng(task.seed)
        flat = task.flat_values()
        row_bytes = (1 << len(plan.qubits)) * _PROBABILITY_ROW_FACTOR
        chunk = max(1, PROBABILITY_TABLE_BYTES // row_bytes)
        for start in range(0, task.size, chunk):
            rows = flat[start : start + chunk]
            probabilities = self.terminal_probabilities(
                task.circuit.key, plan, task.parameters, rows
            )
            if not np.isfinite(probabilities).all():
                raise _non_finite(None, "non-finite probabilities")
            if probabilities.shape[0] != rows.shape[0]:
                raise ExecutionError(
                    "EXECUTION_FAILED",
                    f"expected {rows.shape[0]} probability vectors, got {probabilities.shape[0]}",
                    kind=FailureKind.BACKEND_FAULT,
                )
            for offset, row in enumerate(probabilities):
                # The same draws whatever the output or the chunking, so counts alone equal
                # the counted samples.
                b = start + offset
                outcomes = plan.outcomes(measurement.draw(row, task.shots, rng))
                if output.samples:  # counts, if asked for, come from these rows
                    builder.add_samples(b, decoder.int_samples(outcomes))
                else:
                    values, numbers = np.unique(outcomes, return_counts=True)
                    drawn = zip(values.tolist(), numbers.tolist(), strict=True)
                    builder.add_counts(b, decoder.int_counts(dict(drawn)))
        return builder.build()

    def _estimate(self, circuit: QuantumCircuit, task: EstimatorTask) -> EstimatorResult:
        size = task.size
        layout = _layout_of(circuit)
        simulated = self._simulated(task.circuit, circuit)
        # Distinct terms in order of first appearance, on the simulated circuit's qubits (None:
        # the term reads 0).
        keys = list(dict.fromkeys(key for observable in task.observables for key, _ in observable))
        mapped = [_simulated_term(_physical_term(key, layout), simulated) for key in keys]
        paulis = np.ones((size, len(keys)), dtype=np.float64)  # identity terms read 1
        # Each simulated term evaluated once (terms that differ only on qubits left out of the
        # simulation are one there): asked[term] is its column of `values`, column targets[k]
        # of `paulis` reads column sources[k] of `values`, columns `zeros` read 0.
        asked: dict[Term, int] = {}
        targets: list[int] = []
        sources: list[int] = []
        zeros: list[int] = []
        for i, term in enumerate(mapped):
            if term is None:
                zeros.append(i)
            elif term[0]:
                targets.append(i)
                sources.append(asked.setdefault(term, len(asked)))
        paulis[:, zeros] = 0.0
        if asked:
            values = self.expectations(
                task.circuit.key,
                simulated,
                list(asked),
                task.parameters,
                task.flat_values(),
            )
            if values.shape != (size, len(asked)):
                raise ExecutionError(
                    "EXECUTION_FAILED",
                    f"expected {(size, len(asked))} expectation values, got {values.shape}",
                    kind=FailureKind.BACKEND_FAULT,
                )
            paulis[:, targets] = values[:, sources]
        column = {key: i for i, key in enumerate(keys)}
        # One observable at a time: linear in the request's terms. A dense (terms x
        # observables) coefficient matrix grew with their product (30k x 5k = 1.2 GB).
        exact_flat = np.empty((size, len(task.observables)), dtype=np.float64)
        for o, observable in enumerate(task.observables):
            columns = np.fromiter((column[key] for key, _ in observable), dtype=np.intp)
            weights = np.fromiter((c for _, c in observable), dtype=np.float64)
            exact_flat[:, o] = paulis[:, columns] @ weights
        binding_index, observable_index = np.broadcast_arrays(
            np.arange(size).reshape(task.bindings_shape),
            np.arange(len(task.observables)).reshape(task.observables_shape),
        )
        if not np.isfinite(exact_flat).all():
            raise _non_finite(None, "non-finite expectation values")
        exact: FloatArray = exact_flat[binding_index, observable_index].astype(np.float64)
        if task.precision > 0:
            rng = np.random.default_rng(task.seed)
            # A PUB of shape () indexes one scalar, and numpy's normal() of a scalar is a
            # Python float (no astype, no reshape): keep it an array.
            noisy: FloatArray = np.asarray(rng.normal(exact, task.precision), dtype=np.float64)
            errors: FloatArray = np.full(exact.shape, task.precision, dtype=np.float64)
        else:
            noisy = exact
            errors = np.zeros(exact.shape, dtype=np.float64)
        return EstimatorResult(
            shape=task.shape,
            expectation_values=noisy.reshape(task.shape),
            standard_errors=errors.reshape(task.shape),
            precision=task.precision,
        )


def _precision(pub: EstimatorPub, spec: JobSpec, base: str) -> tuple[str, float]:
    """An estimator PUB's precision, and the field that set it.

    Raises:
        InvalidArgument: The precision set is not one.
    """
    if pub.precision is not None:
        field = f"{base}.precision"
        return field, costs.check_precision(pub.precision, field)
    if spec.options.default_precision is not None:
        field = "spec.options.default_precision"
        return field, costs.check_precision(spec.options.default_precision, field)
    return f"{base}.precision", DEFAULT_PRECISION


# Aer's step that binds a circuit's parameter expressions to the job's values (every
# parameterized operation's float(expression.bind(values))).
_AER_BINDING_STEPS = frozenset({"_convert_circuit_binds"})


def _raised_binding(exc: BaseException) -> bool:
    """Whether `exc` was raised inside Aer's parameter binding."""
    trace = exc.__traceback__
    while trace is not None:
        if trace.tb_frame.f_code.co_name in _AER_BINDING_STEPS:
            return True
        trace = trace.tb_next
    return False


def _non_finite(index: int | None, what: str) -> ExecutionError:
    """A binding made a gate angle infinite or NaN (an expression like 1/theta or theta**2 of
    finite values): the client's input, refused as Qiskit refuses binding an infinite value."""
    where = "" if index is None else f"PUB {index}: "
    return ExecutionError(
        "NON_FINITE_ANGLE",
        f"{where}the parameter values make a gate angle infinite or NaN ({what}); check the "
        "bindings against the circuit's angle expressions",
        kind=FailureKind.CLIENT_ERROR,
        metadata={} if index is None else {"pubIndex": str(index)},
    )


def _zeros(circuit: QuantumCircuit, task: SamplerTask, output: SamplerOutput) -> SamplerResult:
    """The result of a circuit that writes no classical bit: 0 in every bit of every shot
    (no simulator run: every simulator answers the same)."""
    builder = result_builder(circuit.num_clbits, task, output)
    decoder = builder.decoder
    for binding in range(task.size):
        if output.samples:
            builder.add_samples(binding, decoder.int_samples(np.zeros(task.shots, np.uint64)))
        else:
            builder.add_counts(binding, decoder.int_counts({0: task.shots}))
    return builder.build()


def result_builder(
    num_clbits: int, task: SamplerTask, output: SamplerOutput
) -> SamplerResultBuilder:
    return SamplerResultBuilder(
        num_clbits,
        task.registers,
        task.shape,
        task.shots,
        samples=output.samples,
        counts=output.counts,
    )


def _measurement_bases(keys: Iterable[PauliKey]) -> int:
    """An upper bound on the measurement bases a sampling estimator needs for these terms:
    terms of one Pauli letter (with I) share one basis per letter (every {I, X} string commutes
    qubit-wise with every other); each term mixing letters may need its own."""
    uniform: set[str] = set()
    mixed = 0
    for key in keys:
        letters = set(key if isinstance(key, str) else key[0]) - {"I"}
        if len(letters) > 1:
            mixed += 1
        else:
            uniform.add(letters.pop() if letters else "Z")
    return len(uniform) + mixed


def _pauli_key(term: PauliTerm) -> PauliKey:
    """A dense term's string, or a sparse term's Paulis and qubits in ascending qubit order
    (equal sparse terms get equal keys, whatever order the client listed their qubits in)."""
    if term.qubits is None:
        return str(term.pauli)
    pairs = sorted(zip(term.qubits, term.pauli, strict=True))
    return "".join(p for _, p in pairs), tuple(q for q, _ in pairs)


def _physical_term(key: PauliKey, layout: Sequence[int]) -> Term:
    """A term on virtual qubits as its non-identity letters on the transpiled circuit's
    qubits (layout[v] = the physical qubit of virtual qubit v)."""
    if isinstance(key, str):
        pairs = [(layout[v], p) for v, p in enumerate(reversed(key)) if p != "I"]
    else:
        letters, qubits = key
        pairs = [(layout[v], p) for v, p in zip(qubits, letters, strict=True) if p != "I"]
    return "".join(p for _, p in pairs), tuple(q for q, _ in pairs)


def _simulated_term(term: Term, simulated: idle.Simulated) -> Term | None:
    """A term on the transpiled circuit's qubits as a term on the simulated circuit's, or None
    when it reads 0. A qubit the simulation leaves out stays |0>: a Z on it reads 1 (the
    letter drops), an X or a Y 0 (the whole term)."""
    pairs: list[tuple[int, str]] = []
    for letter, qubit in zip(term[0], term[1], strict=True):
        position = simulated.position.get(qubit)
        if position is None:
            if letter != "Z":
                return None
            continue
        pairs.append((position, letter))
    # In qubit order: equal terms are equal tuples.
    pairs.sort()
    return "".join(letter for _, letter in pairs), tuple(qubit for qubit, _ in pairs)


def _already_mapped(circuit: QuantumCircuit, target: Target) -> bool:
    """Whether `circuit` is laid out on `target` already: as wide as a target with a coupling
    map, every two-qubit instruction on a coupled pair (a circuit transpiled for the target
    from GetBackendTarget, or written for the device's qubits)."""
    if target.num_qubits is None or circuit.num_qubits != target.num_qubits:
        return False
    if target.build_coupling_map() is None or _has_wide_gate(circuit):
        return False
    check = PassManager([CheckMap(target)])
    check.run(circuit)
    return bool(check.property_set["is_swap_mapped"])


def _widened_to(circuit: QuantumCircuit, target: Target) -> QuantumCircuit:
    """`circuit` with idle qubits up to `target`'s width when its qubits are physical ones
    (it has a layout: OpenQASM 3's `$n`, or a transpiled circuit) and it is narrower; else
    `circuit` itself. The added qubits are idle: what runs and what it reads are unchanged."""
    width = target.num_qubits
    if circuit.layout is None or width is None or circuit.num_qubits >= width:
        return circuit
    widened = circuit.copy()
    # The transpiler sets its own layout; Qiskit warns on adding bits to one that has one.
    widened._layout = None
    widened.add_bits([Qubit() for _ in range(width - circuit.num_qubits)])
    return widened


def _has_wide_gate(circuit: QuantumCircuit) -> bool:
    """Whether an operation (in any block) acts on more than two qubits: CheckMap looks at
    two-qubit instructions only, and such a gate (a ccx) is decomposed and routed, where the
    layout stage, not the trivial layout, places it best."""
    for instruction in circuit.data:
        operation = instruction.operation
        if isinstance(operation, ControlFlowOp):
            if any(_has_wide_gate(block) for block in operation.blocks):
                return True
        elif len(instruction.qubits) > 2 and not getattr(operation, "_directive", False):
            return True
    return False


def _layout_of(circuit: QuantumCircuit) -> tuple[int, ...]:
    layout = circuit.layout
    if layout is None:
        return tuple(range(circuit.num_qubits))
    return tuple(int(q) for q in layout.final_index_layout())
