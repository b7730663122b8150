"""Qiskit Aer simulator adapter (entry point "aer").

`compile_circuit` runs in compile workers: it parses and validates a circuit through the Qiskit
front end, checks its memory estimate and transpiles it with one preset pass manager per adapter
(the gateway caches the result by content digest, so a repeated circuit costs a hash and a
lookup). `prepare` runs in the gateway: bindings, observables, shots and size estimates.
`execute` runs in a simulator worker: one `AerSimulator.run` per PUB, whatever the number of
parameter bindings.
"""

from __future__ import annotations

import inspect
import math
import pickle
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import qiskit
import qiskit_aer
from pydantic import Field
from qiskit.circuit import ControlFlowOp, QuantumCircuit
from qiskit.quantum_info import Pauli
from qiskit.transpiler import PassManager, Target, generate_preset_pass_manager
from qiskit_aer import AerError, AerSimulator
from qiskit_aer.library import SaveExpectationValue, SaveProbabilities

from gateway.backends.base import (
    CIRCUIT_FIELD,
    AdapterContext,
    AdapterOptions,
    BackendAdapter,
    ExecutionOutcome,
    PreparedJob,
)
from gateway.backends.qiskit import frontend as fe
from gateway.backends.qiskit import measurement
from gateway.backends.qiskit.qpy_reader import qpy_versions
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

__all__ = [
    "AerAdapter",
    "AerCircuit",
    "AerOptions",
    "AerPayload",
    "CircuitRef",
    "EstimatorTask",
    "RegisterSpec",
    "SamplerTask",
]

Method = Literal["statevector", "matrix_product_state", "density_matrix"]

_SUPPORTED_FEATURES = frozenset(CircuitFeature)
# A dense Pauli string, or sparse Paulis and the qubits they act on.
PauliKey = str | tuple[str, tuple[int, ...]]
_WORKER_CACHE_SIZE = 64
_NOT_GATES = frozenset({"measure", "reset", "delay", "barrier", "global_phase"})
# Where terminal probabilities are saved (no client circuit can name an Aer instruction's label).
_PROBABILITIES = "qgateway_terminal_probabilities"


class AerOptions(AdapterOptions):
    """Options of an Aer backend (from the gateway's configuration)."""

    method: Method = "statevector"
    num_qubits: int = Field(default=64, ge=1)
    max_parallel_threads: int = Field(default=1, ge=0)
    max_bond_dimension: int | None = Field(default=None, ge=1)
    optimization_level: int = Field(default=1, ge=0, le=3)
    seed_transpiler: int = Field(default=0, ge=0)


# --------------------------------------------------------------------------------------------
# Payload: what `prepare` hands to `execute` (picklable, module-level classes).
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CircuitRef:
    """A transpiled circuit, pickled once when it is compiled.

    `key` is the adapter's circuit_key (the source's digest and everything compiling depends
    on), so a simulator worker can keep the unpickled circuit.
    """

    key: str
    data: bytes


@dataclass(frozen=True, eq=False)
class SamplerTask:
    circuit: CircuitRef
    parameters: tuple[str, ...]
    values: FloatArray  # (*shape, len(parameters)), columns in `parameters` order
    shape: tuple[int, ...]
    shots: int
    registers: tuple[RegisterSpec, ...]
    seed: int


@dataclass(frozen=True, eq=False)
class EstimatorTask:
    circuit: CircuitRef
    parameters: tuple[str, ...]
    values: FloatArray  # (*bindings_shape, len(parameters))
    bindings_shape: tuple[int, ...]
    # Row-major over observables_shape: (term, coefficient) pairs, a term being a dense Pauli
    # string (character 0 on the highest qubit) or a sparse (paulis, qubits) pair in ascending
    # qubit order (paulis[i] on qubits[i]).
    observables: tuple[tuple[tuple[PauliKey, float], ...], ...]
    observables_shape: tuple[int, ...]
    shape: tuple[int, ...]
    precision: float
    seed: int


@dataclass(frozen=True, eq=False)
class AerPayload:
    method: str
    sampler_output: SamplerOutput
    tasks: tuple[SamplerTask | EstimatorTask, ...]


@dataclass(frozen=True, eq=False)
class AerCircuit:
    """A compiled circuit: what `prepare` needs to know, and the transpiled circuit itself."""

    ref: CircuitRef
    num_qubits: int
    num_clbits: int
    parameters: tuple[str, ...]
    features: frozenset[CircuitFeature]
    has_measurements: bool
    registers: tuple[RegisterSpec, ...]
    layout: tuple[int, ...]
    memory_bytes: int
    # Operations of the transpiled circuit, as if definitions were unrolled.
    operations: int
    # Complex numbers the simulation state holds (what one operation may touch).
    amplitudes: int

    @property
    def nbytes(self) -> int:
        """Its weight in the gateway's compile cache."""
        return len(self.ref.data) + 1024

    @property
    def shot_by_shot(self) -> bool:
        """Mid-circuit measurement, reset or control flow: Aer simulates every shot."""
        return bool(self.features)


# Jobs up to this many bindings and observable terms are cheap enough to prepare on the event
# loop (microseconds), sparing a thread hand-off.
_CHEAP_BINDINGS = 1024
_CHEAP_TERMS = 1024


class _LRU:
    """A small LRU map (a simulator worker runs one job at a time: no lock)."""

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._items: OrderedDict[Any, Any] = OrderedDict()

    def get(self, key: Any) -> Any:
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
        return value

    def put(self, key: Any, value: Any) -> None:
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self._capacity:
            self._items.popitem(last=False)


# A cached "no plan" (an _LRU miss is None).
_NO_PLAN = object()


@dataclass(frozen=True, eq=False)
class _AerPlan:
    """A terminal plan and the circuit Aer runs for it: the body saving the measured qubits'
    probabilities under _PROBABILITIES."""

    plan: measurement.TerminalPlan
    circuit: QuantumCircuit


def _aer_plan(plan: measurement.TerminalPlan) -> _AerPlan:
    circuit = plan.body.copy()
    circuit.append(
        SaveProbabilities(len(plan.qubits), label=_PROBABILITIES),
        [circuit.qubits[q] for q in plan.qubits],
    )
    return _AerPlan(plan, circuit)


def _target_for(method: str, num_qubits: int) -> Target:
    """Aer's instruction set for `method`, on `num_qubits` qubits.

    AerSimulator's own target is sized by host memory (30 statevector qubits on 24 GiB), which
    would make the transpiler fail on circuits the memory budget, not the transpiler, must judge.
    """
    source = AerSimulator(method=method).target
    target = Target(num_qubits=num_qubits, description=f"aer-{method}")
    for name in source.operation_names:
        operation = source.operation_from_name(name)
        if inspect.isclass(operation):  # control-flow classes
            target.add_instruction(operation, name=name)
        else:
            target.add_instruction(operation, properties=None, name=name)
    return target


class AerAdapter(BackendAdapter):
    """Qiskit Aer: statevector, matrix product state or density matrix, per its options."""

    options_model = AerOptions

    def __init__(self, context: AdapterContext) -> None:
        super().__init__(context)
        if not isinstance(self.options, AerOptions):
            raise TypeError("AerAdapter needs AerOptions")
        self.aer_options: AerOptions = self.options
        self._lock = threading.Lock()
        self._pm: PassManager | None = None
        self._target: Target | None = None
        # Simulator-worker side: unpickled transpiled circuits, by circuit key.
        self._worker_circuits = _LRU(_WORKER_CACHE_SIZE)
        # ... and how to sample each from its final state (a TerminalPlan, or _NO_PLAN).
        self._worker_plans = _LRU(_WORKER_CACHE_SIZE)
        self._simulator: AerSimulator | None = None
        self._info: BackendInfo | None = None
        self._backend_target: BackendTarget | None = None

    # ---------------------------------------------------------------------------- info

    def info(self) -> BackendInfo:
        if self._info is None:
            names = self._aer_target().operation_names
            basis = tuple(
                sorted(n for n in names if n in fe.STANDARD_GATE_NAMES and n not in _NOT_GATES)
            )
            self._info = BackendInfo(
                name=self.context.name,
                provider="aer",
                kind=BackendKind.SIMULATOR,
                num_qubits=self.aer_options.num_qubits,
                basis_gates=basis,
                primitives=frozenset({Primitive.SAMPLER, Primitive.ESTIMATOR}),
                features=_SUPPORTED_FEATURES,
                limits=self.context.limits,
                properties={
                    "method": self.aer_options.method,
                    # QPY format versions Circuit.qpy may use, e.g. "13-18".
                    "qpy_versions": qpy_versions(),
                },
            )
        return self._info

    def target(self) -> BackendTarget:
        """What this simulator really offers: the instructions of Aer's own target for its
        method that the front end accepts, on the configured qubit count; no noise data
        (ideal, on any qubits) and no coupling map (all-to-all)."""
        if self._backend_target is None:
            self._backend_target = from_qiskit_target(self._aer_target())
        return self._backend_target

    # ---------------------------------------------------------------------------- prepare

    def prepare(self, spec: JobSpec, seed: int, circuits: Sequence[object]) -> PreparedJob:
        limits = self.context.limits
        sampler_output = spec.options.sampler_output
        tasks: list[SamplerTask | EstimatorTask] = []
        layouts: list[tuple[int, ...]] = []
        peak_memory = 0
        result_bytes = 0
        cost = JobCost(limits.max_job_shots, limits.max_estimator_work, limits.max_execution_work)
        for index, pub in enumerate(spec.pubs):
            kind = "sampler" if isinstance(pub, SamplerPub) else "estimator"
            base = f"spec.pubs[{index}].{kind}"
            circuit_field = f"{base}.circuit.{pub.circuit.language.value}"
            entry = circuits[index]
            if not isinstance(entry, AerCircuit):
                raise TypeError(f"not an Aer circuit: {type(entry).__name__}")
            bindings_shape = tuple(int(d) for d in pub.bindings.shape)
            # Counted before resolve_bindings allocates anything for the sweep.
            costs.bindings_count(bindings_shape, limits.max_bindings, f"{base}.parameter_values")
            values = fe.resolve_bindings(pub.bindings, entry.parameters, f"{base}.parameter_values")
            pub_seed = costs.derive_seed(seed, index, kind)
            task: SamplerTask | EstimatorTask
            if isinstance(pub, SamplerPub):
                task, size = self._sampler_task(
                    pub, entry, values, bindings_shape, pub_seed, spec, base, circuit_field, cost
                )
            else:
                task, size = self._estimator_task(
                    pub, entry, values, bindings_shape, pub_seed, spec, base, circuit_field, cost
                )
            fe.check_result_size(size, limits.max_result_bytes, f"spec.pubs[{index}]")
            result_bytes += size
            tasks.append(task)
            layouts.append(entry.layout)
            peak_memory = max(peak_memory, entry.memory_bytes)
        fe.check_result_size(result_bytes, limits.max_result_bytes, "spec.pubs")
        payload = AerPayload(
            method=self.aer_options.method, sampler_output=sampler_output, tasks=tuple(tasks)
        )
        return PreparedJob(
            payload=payload,
            memory_bytes=peak_memory,
            layouts=tuple(layouts),
        )

    def _sampler_task(
        self,
        pub: SamplerPub,
        entry: AerCircuit,
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
        shots, shots_field = costs.pub_shots(
            pub.shots,
            spec.options.default_shots,
            self.context.default_shots,
            self.context.limits.max_shots,
            base,
        )
        bindings = math.prod(shape)
        cost.add_shots(bindings, shots, shots_field)
        cost.add_execution(
            costs.simulation_work(
                entry.operations, entry.amplitudes, bindings, shots, entry.shot_by_shot
            ),
            base,
        )
        size = fe.sampler_result_bytes(
            [len(r.clbits) for r in entry.registers],
            math.prod(shape),
            shots,
            spec.options.sampler_output,
        )
        task = SamplerTask(
            circuit=entry.ref,
            parameters=entry.parameters,
            values=values,
            shape=shape,
            shots=shots,
            registers=entry.registers,
            seed=seed,
        )
        return task, size

    def _estimator_task(
        self,
        pub: EstimatorPub,
        entry: AerCircuit,
        values: FloatArray,
        bindings_shape: tuple[int, ...],
        seed: int,
        spec: JobSpec,
        base: str,
        circuit_field: str,
        cost: JobCost,
    ) -> tuple[EstimatorTask, int]:
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
        observables_shape = fe.validate_observables(
            pub.observables, pub.observables_shape, entry.num_qubits, f"{base}.observables"
        )
        shape = fe.broadcast_pub_shape(observables_shape, bindings_shape, base)
        # Sparse terms stay sparse (linear in the request, whatever the circuit's width).
        observables = tuple(
            tuple((_pauli_key(term), float(term.coefficient)) for term in obs.terms)
            for obs in pub.observables
        )
        # Aer evaluates each distinct Pauli term once per binding.
        terms = len({key for observable in observables for key, _ in observable})
        bindings = math.prod(bindings_shape)
        cost.add_estimator(terms, entry.num_qubits, bindings, f"{base}.observables")
        cost.add_execution(
            costs.simulation_work(entry.operations + terms, entry.amplitudes, bindings, 1, False),
            base,
        )
        if pub.precision is not None:
            precision = costs.check_precision(pub.precision, f"{base}.precision")
        elif spec.options.default_precision is not None:
            precision = costs.check_precision(
                spec.options.default_precision, "spec.options.default_precision"
            )
        else:
            precision = DEFAULT_PRECISION
        task = EstimatorTask(
            circuit=entry.ref,
            parameters=entry.parameters,
            values=values,
            bindings_shape=bindings_shape,
            observables=observables,
            observables_shape=observables_shape,
            shape=shape,
            precision=precision,
            seed=seed,
        )
        return task, fe.estimator_result_bytes(shape)

    def prepare_is_cheap(self, spec: JobSpec) -> bool:
        # Circuits come compiled: what is left is linear in the bindings and observable terms.
        # Shapes are summed as Python integers: a client's shape may not fit in 64 bits.
        bindings = sum(math.prod(p.bindings.shape) for p in spec.pubs)
        terms = sum(
            len(o.terms) for p in spec.pubs if isinstance(p, EstimatorPub) for o in p.observables
        )
        return bindings <= _CHEAP_BINDINGS and terms <= _CHEAP_TERMS

    def compile_circuit(self, source: CircuitSource) -> AerCircuit:
        field = CIRCUIT_FIELD
        key = self.circuit_key(source)
        opts = self.aer_options
        limits = self.context.limits
        circuit = fe.parse_circuit(
            source, self.context.circuit_limits, field, max_qubits=opts.num_qubits
        )
        features = fe.detect_features(circuit)
        fe.check_features(features, _SUPPORTED_FEATURES, field)
        fe.check_control_flow_supported(circuit, self._aer_target().operation_names, field)
        circuit = fe.rename_shadowing_gates(circuit, self._aer_target().operation_names, field)
        n = circuit.num_qubits
        if opts.method == "statevector":
            fe.check_memory(fe.statevector_bytes(n), limits.memory_budget_bytes, opts.method, field)
        elif opts.method == "density_matrix":
            fe.check_memory(
                fe.density_matrix_bytes(n), limits.memory_budget_bytes, opts.method, field
            )
        transpiled = self._transpile(circuit)
        # Each instance of a gate definition may bind its angles differently: an overflow can
        # show only once the transpiler has unrolled them all.
        fe.check_finite_parameters(transpiled, field)
        if opts.method == "matrix_product_state":
            memory = fe.mps_bytes(transpiled, opts.max_bond_dimension)
            fe.check_memory(memory, limits.memory_budget_bytes, opts.method, field)
            # The tensors, not Aer's fixed bookkeeping, are what operations touch.
            amplitudes = max(1, (memory - fe.MPS_OVERHEAD_BYTES) // 16)
        elif opts.method == "statevector":
            memory = fe.statevector_bytes(n)
            amplitudes = 1 << n
        else:
            memory = fe.density_matrix_bytes(n)
            amplitudes = 1 << (2 * n)
        layout = _layout_of(transpiled)
        # Loose bits (`bit c;`) are one-bit registers named after their variable.
        registers = tuple(
            RegisterSpec(name=name, clbits=clbits)
            for name, clbits in fe.result_registers(transpiled)
        )
        return AerCircuit(
            ref=CircuitRef(key=key, data=pickle.dumps(transpiled, pickle.HIGHEST_PROTOCOL)),
            num_qubits=n,
            num_clbits=circuit.num_clbits,
            parameters=tuple(p.name for p in circuit.parameters),
            features=features,
            has_measurements=fe.has_measurements(circuit),
            registers=registers,
            layout=layout,
            memory_bytes=memory,
            operations=fe.count_operations(transpiled),
            amplitudes=amplitudes,
        )

    def _aer_target(self) -> Target:
        if self._target is None:
            with self._lock:
                if self._target is None:
                    self._target = _target_for(self.aer_options.method, self.aer_options.num_qubits)
        return self._target

    def _pass_manager(self) -> PassManager:
        if self._pm is None:
            target = self._aer_target()
            with self._lock:
                if self._pm is None:
                    self._pm = generate_preset_pass_manager(
                        optimization_level=self.aer_options.optimization_level,
                        target=target,
                        seed_transpiler=self.aer_options.seed_transpiler,
                    )
        return self._pm

    def _transpile(self, circuit: QuantumCircuit) -> QuantumCircuit:
        # A compile worker compiles one circuit at a time: no lock around the pass manager.
        transpiled: QuantumCircuit = self._pass_manager().run(circuit)
        return transpiled

    # ---------------------------------------------------------------------------- execute

    def warm_up(self) -> None:
        simulator = self._sim()
        probe = QuantumCircuit(1, 1)
        probe.measure(0, 0)
        simulator.run(probe, shots=1, seed_simulator=0, memory=True).result()

    def execute(self, payload: object) -> ExecutionOutcome:
        if not isinstance(payload, AerPayload):
            raise TypeError(f"not an Aer payload: {type(payload).__name__}")
        if payload.method != self.aer_options.method:
            raise ValueError(
                f"payload prepared for {payload.method}, this worker runs {self.aer_options.method}"
            )
        simulator = self._sim()
        results: list[PubResult] = []
        for index, task in enumerate(payload.tasks):
            try:
                results.append(self._execute_task(simulator, task, payload))
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
        return ExecutionOutcome(
            result=JobResult(pubs=tuple(results)),
            sdk_versions={"qiskit": qiskit.__version__, "qiskit-aer": qiskit_aer.__version__},
        )

    def _execute_task(
        self, simulator: AerSimulator, task: SamplerTask | EstimatorTask, payload: AerPayload
    ) -> PubResult:
        if isinstance(task, SamplerTask):
            circuit = self._load(task.circuit)
            plan = self._plan(task.circuit.key, circuit)
            if plan is not None:
                return _sample_terminal(simulator, plan, circuit, task, payload.sampler_output)
            return _run_sampler(simulator, circuit, task, payload.sampler_output)
        return _run_estimator(simulator, self._load(task.circuit), task)

    def _plan(self, key: str, circuit: QuantumCircuit) -> _AerPlan | None:
        """How to draw `circuit`'s shots from its final state, if they are such draws: ideal
        statevector or density-matrix simulation (a matrix product state's probabilities of
        many qubits cost more than its own sampling) and terminal measurements only."""
        plan = self._worker_plans.get(key)
        if plan is None:
            plan = _NO_PLAN
            if self.aer_options.method in ("statevector", "density_matrix") and (
                getattr(self._sim().options, "noise_model", None) is None
            ):
                terminal = measurement.terminal_plan(circuit)
                plan = _NO_PLAN if terminal is None else _aer_plan(terminal)
            self._worker_plans.put(key, plan)
        return None if plan is _NO_PLAN else plan

    def _sim(self) -> AerSimulator:
        if self._simulator is None:
            with self._lock:
                if self._simulator is None:
                    opts = self.aer_options
                    budget_mb = max(1, math.ceil(self.context.limits.memory_budget_bytes / 2**20))
                    kwargs: dict[str, Any] = {
                        "method": opts.method,
                        "max_parallel_threads": opts.max_parallel_threads,
                        # Aer refuses (success=False) rather than exceed the budget.
                        "max_memory_mb": budget_mb,
                    }
                    if opts.max_bond_dimension is not None:
                        kwargs["matrix_product_state_max_bond_dimension"] = opts.max_bond_dimension
                    self._simulator = AerSimulator(**kwargs)
        return self._simulator

    def _load(self, ref: CircuitRef) -> QuantumCircuit:
        circuit: QuantumCircuit | None = self._worker_circuits.get(ref.key)
        if circuit is None:
            circuit = pickle.loads(ref.data)
            self._worker_circuits.put(ref.key, circuit)
        return circuit


def _pauli_key(term: PauliTerm) -> PauliKey:
    """A dense term's string, or a sparse term's Paulis and qubits in ascending qubit order
    (equal sparse terms get equal keys, whatever order the client listed their qubits in)."""
    if term.qubits is None:
        return str(term.pauli)
    pairs = sorted(zip(term.qubits, term.pauli, strict=True))
    return "".join(p for _, p in pairs), tuple(q for q, _ in pairs)


def _layout_of(circuit: QuantumCircuit) -> tuple[int, ...]:
    layout = circuit.layout
    if layout is None:
        return tuple(range(circuit.num_qubits))
    return tuple(int(q) for q in layout.final_index_layout())


# --------------------------------------------------------------------------------------------
# Running and decoding (worker side).
# --------------------------------------------------------------------------------------------


def _run(simulator: AerSimulator, circuits: Any, **options: Any) -> Any:
    first = circuits[0] if isinstance(circuits, list) else circuits
    # Aer's qubit truncation fails on a conditional gate whose qubit nothing else touches
    # ("Failed to load circuits: unordered_map::at"). Transpiling keeps the circuit's width,
    # which the memory check was made for, so simulating every qubit stays within the budget.
    if any(isinstance(i.operation, ControlFlowOp) for i in first.data):
        options["enable_truncation"] = False
    try:
        result = simulator.run(circuits, **options).result()
    except AerError as exc:
        raise _execution_error(str(exc)) from None
    failures = [str(exp.status) for exp in result.results if not exp.success]
    if not result.success or failures:
        raise _execution_error("; ".join(failures) or str(result.status))
    return result


def _run_raw(simulator: AerSimulator, circuits: Any, **options: Any) -> list[dict[str, Any]]:
    """Aer's own output per experiment (dicts), simulated in this thread.

    AerSimulator.run hands the simulation to an AerJob on a thread pool and wraps the output in
    a qiskit Result that the sampler only reads back; for a small job those cost a thread
    hand-off and ~0.3 ms of objects next to ~1 ms of simulation. The sampler reads only each
    experiment's `memory` and `counts`, as Aer writes them (hex). `_execute_circuits_job` is
    what the AerJob runs (qiskit-aer is pinned in uv.lock; test_aer_adapter covers this path).
    """
    listed = circuits if isinstance(circuits, list) else [circuits]
    binds = options.pop("parameter_binds", None)
    # As in _run: Aer's qubit truncation fails on a conditional on an otherwise idle qubit.
    if any(isinstance(i.operation, ControlFlowOp) for i in listed[0].data):
        options["enable_truncation"] = False
    try:
        output = simulator._execute_circuits_job(listed, binds, options, format_result=False)
    except AerError as exc:
        raise _execution_error(str(exc)) from None
    experiments: list[dict[str, Any]] = output.get("results", [])
    failures = [str(e.get("status")) for e in experiments if not e.get("success")]
    if not output.get("success") or failures:
        raise _execution_error("; ".join(failures) or str(output.get("status")))
    return experiments


def _sample_terminal(
    simulator: AerSimulator,
    aer_plan: _AerPlan,
    circuit: QuantumCircuit,
    task: SamplerTask,
    output: SamplerOutput,
) -> SamplerResult:
    """_run_sampler for a circuit whose shots are draws from its final state (see
    gateway.backends.qiskit.measurement): one shot per binding saves the probabilities, numpy
    draws the shots from them."""
    plan = aer_plan.plan
    size = math.prod(task.shape)
    circuits, binds = _binds(aer_plan.circuit, task.parameters, task.values, size)
    experiments = _run_raw(
        simulator, circuits, shots=1, seed_simulator=task.seed, parameter_binds=binds
    )
    _check_experiments(experiments, size)
    builder = _result_builder(circuit.num_clbits, task, output)
    decoder = builder.decoder
    rng = np.random.default_rng(task.seed)
    for b, experiment in enumerate(experiments):
        probabilities = experiment.get("data", {}).get(_PROBABILITIES)
        if probabilities is None:
            raise ExecutionError(
                "EXECUTION_FAILED",
                "Aer saved no probabilities",
                kind=FailureKind.BACKEND_FAULT,
            )
        # The same draws whatever the output, so counts alone equal the counted samples.
        outcomes = plan.outcomes(measurement.draw(probabilities, task.shots, rng))
        if output.samples:  # counts, if asked for, come from these rows
            builder.add_samples(b, decoder.int_samples(outcomes))
        else:
            values, numbers = np.unique(outcomes, return_counts=True)
            drawn = zip(values.tolist(), numbers.tolist(), strict=True)
            builder.add_counts(b, decoder.int_counts(dict(drawn)))
    return builder.build()


def _execution_error(message: str) -> ExecutionError:
    lowered = message.lower()
    memory_words = ("insufficient memory", "greater than max", "cannot allocate memory")
    if any(words in lowered for words in memory_words):
        return ExecutionError("OUT_OF_MEMORY", message[:500], kind=FailureKind.OUT_OF_MEMORY)
    # Aer's own failure running a job the gateway validated: the backend's fault.
    return ExecutionError("EXECUTION_FAILED", message[:500], kind=FailureKind.BACKEND_FAULT)


def _check_experiments(experiments: Sequence[object], size: int) -> None:
    if len(experiments) != size:
        raise ExecutionError(
            "EXECUTION_FAILED",
            f"expected {size} experiments, Aer returned {len(experiments)}",
            kind=FailureKind.BACKEND_FAULT,
        )


def _result_builder(
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


def _binds(
    circuit: QuantumCircuit, parameters: Sequence[str], values: FloatArray, size: int
) -> tuple[Any, list[dict[Any, Any]] | None]:
    """The circuits and parameter_binds for one Aer run of `size` bindings."""
    if circuit.parameters:
        flat = values.reshape(size, len(parameters))
        columns = {name: i for i, name in enumerate(parameters)}
        # Transpiling may drop a parameter; bind only those still present.
        return circuit, [{p: flat[:, columns[p.name]] for p in circuit.parameters}]
    # Nothing to bind: `size` independent experiments of the same circuit, still one run.
    return ([circuit] * size if size > 1 else circuit), None


def _run_sampler(
    simulator: AerSimulator, circuit: QuantumCircuit, task: SamplerTask, output: SamplerOutput
) -> SamplerResult:
    size = math.prod(task.shape)
    circuits, binds = _binds(circuit, task.parameters, task.values, size)
    experiments = _run_raw(
        simulator,
        circuits,
        shots=task.shots,
        seed_simulator=task.seed,
        memory=output.samples,
        parameter_binds=binds,
    )
    _check_experiments(experiments, size)
    builder = _result_builder(circuit.num_clbits, task, output)
    decoder = builder.decoder
    for b, experiment in enumerate(experiments):
        data = experiment.get("data", {})
        if output.samples:
            # Counts, if asked for, come from the rows decoded here: one pass over Aer's strings.
            memory = data.get("memory") or ["0x0"] * task.shots
            builder.add_samples(b, decoder.hex_samples(memory))
        else:
            # A circuit that never measures reports no outcomes: every bit reads 0.
            raw = data.get("counts") or {"0x0": task.shots}
            builder.add_counts(b, decoder.hex_counts(raw))
    return builder.build()


def _run_estimator(
    simulator: AerSimulator, circuit: QuantumCircuit, task: EstimatorTask
) -> EstimatorResult:
    size = math.prod(task.bindings_shape)
    # Distinct terms in order of first appearance; each saved under its index.
    keys = list(dict.fromkeys(key for observable in task.observables for key, _ in observable))
    labels = [f"t{i}" for i in range(len(keys))]
    measured = circuit.copy()
    for key, label in zip(keys, labels, strict=True):
        if isinstance(key, str):
            measured.append(SaveExpectationValue(Pauli(key), label=label), measured.qubits)
        else:
            letters, qubits = key
            # Pauli labels put qargs[0] last: reversed, letters[i] acts on qubits[i].
            measured.append(
                SaveExpectationValue(Pauli(letters[::-1]), label=label),
                [measured.qubits[q] for q in qubits],
            )
    circuits, binds = _binds(measured, task.parameters, task.values, size)
    # No measurement or reset (prepare refuses them), so one shot gives exact values. Aer's
    # qubit truncation misplaces a save that acts on some qubits when another acts on all
    # (measured with Aer 0.18: Z on qubit 3 of X-prepared qubits read +1 next to a dense
    # "IZIII"); the memory check was made for the full width anyway.
    result = _run(
        simulator,
        circuits,
        shots=1,
        seed_simulator=task.seed,
        parameter_binds=binds,
        enable_truncation=False,
    )
    if len(result.results) != size:
        raise ExecutionError(
            "EXECUTION_FAILED",
            f"expected {size} experiments, Aer returned {len(result.results)}",
            kind=FailureKind.BACKEND_FAULT,
        )
    column = {key: i for i, key in enumerate(keys)}
    paulis = np.array(
        [[float(result.data(b)[label].real) for label in labels] for b in range(size)],
        dtype=np.float64,
    ).reshape(size, len(labels))
    coefficients = np.zeros((len(labels), len(task.observables)), dtype=np.float64)
    for o, observable in enumerate(task.observables):
        for key, coefficient in observable:
            coefficients[column[key], o] += coefficient
    exact_flat = paulis @ coefficients  # (bindings, observables)
    binding_index, observable_index = np.broadcast_arrays(
        np.arange(size).reshape(task.bindings_shape),
        np.arange(len(task.observables)).reshape(task.observables_shape),
    )
    exact: FloatArray = exact_flat[binding_index, observable_index].astype(np.float64)
    if task.precision > 0:
        rng = np.random.default_rng(task.seed)
        values: FloatArray = rng.normal(exact, task.precision).astype(np.float64)
        errors: FloatArray = np.full(exact.shape, task.precision, dtype=np.float64)
    else:
        values = exact
        errors = np.zeros(exact.shape, dtype=np.float64)
    return EstimatorResult(
        shape=task.shape,
        expectation_values=values.reshape(task.shape),
        standard_errors=errors.reshape(task.shape),
        precision=task.precision,
    )
