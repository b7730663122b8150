"""Qiskit Aer simulator adapter (entry point "aer").

Compiling and preparing are the shared Qiskit half (gateway.backends.qiskit.adapter); this
module names Aer's target and runs the simulation in a simulator worker: terminal measurements
are sampled from the probabilities Aer saves in one shot per binding, other circuits shot by
shot, and expectation values are saved by Aer itself.

With `noise_from` naming one of qiskit-ibm-runtime's fake backends (e.g. "FakeManilaV2"), the
backend is that device's noisy simulator (`aer-noisy-<name>`): its coupling map and basis are
the transpile target and its noise model is Aer's own for that device, in a density-matrix
simulation (noise applied exactly, readout errors included in sampled shots). Every Aer backend
simulates a circuit without its idle qubits; a noisy twin's noise model is then the device's on
the qubits kept, renumbered (gateway.backends.aer.noise), in one simulator per set of qubits
(the 16 sets last used are kept built).
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import qiskit_aer
from pydantic import Field, model_validator
from qiskit.circuit import ControlFlowOp, ControlledGate, QuantumCircuit
from qiskit.quantum_info import Pauli
from qiskit.transpiler import Target
from qiskit_aer import AerError, AerSimulator
from qiskit_aer.backends.aer_compiler import assemble_circuits, generate_aer_config
from qiskit_aer.library import SaveExpectationValue, SaveProbabilities

from gateway.backends.aer.noise import noise_model_on
from gateway.backends.base import AdapterContext
from gateway.backends.lru import LRU
from gateway.backends.qiskit import frontend as fe
from gateway.backends.qiskit import idle, measurement
from gateway.backends.qiskit.adapter import (
    CompiledCircuit,
    QiskitAdapter,
    QiskitOptions,
    SamplerTask,
    Term,
    result_builder,
)
from gateway.backends.qiskit.fakes import fake_backend
from gateway.domain import costs
from gateway.domain.circuits import CircuitFeature, FloatArray
from gateway.domain.errors import ExecutionError
from gateway.domain.failures import FailureKind
from gateway.domain.jobs import JobSpec, SamplerOutput, SamplerResult

__all__ = ["AerAdapter", "AerOptions"]


Method = Literal["statevector", "matrix_product_state", "density_matrix"]

# Where terminal probabilities are saved (no client circuit can name an Aer instruction's label).
_PROBABILITIES = "qgateway_terminal_probabilities"
# Aer samples a matrix product state shot by shot, each shot a walk along the chain's tensors:
# measured ~300-500 units per tensor entry and ~100,000 per qubit a shot (16 qubits, 378 ops,
# 436,904 entries: 2.7 ms a shot; 20 qubits at low entanglement: 45 us). It was priced like a
# state vector's sampling (20 ns a shot): 1,000,000 shots admitted as 0.35 s ran ~45 min.
_MPS_SAMPLE_ENTRY_WEIGHT = 500
_MPS_SAMPLE_QUBIT_WEIGHT = 100_000
# Aer runs every binding as an experiment of its own (~170 us each, plus ~80 us of the
# worker's sampling and result building: 1 qubit, 1 shot, 20,000 bindings ran 4.5 s), and
# evaluates each Pauli term of each binding apart (~5.2 us: 4 qubits, 255 terms, 200
# bindings ran 0.3 s); priced at nanoseconds they admitted 100 PUBs of 100,000 bindings
# (~36 min) as 0.3 s. Measured with the state vector and the density matrix alike.
_AER_RUNS = costs.RunCosts(per_binding=12_000_000, per_term=260_000)
# What Aer holds per binding of one run beside the state (Aer 0.18): its copy of the circuit
# with that binding's values, ~600 B an operation, and each saved expectation value's
# instruction and result, ~1.5 KiB a term. Every binding of a run is held at once: a 12 KB
# circuit of 2,000 operations with 100,000 bindings (both within limits) needed ~120 GiB.
_BYTES_PER_BOUND_OPERATION = 640
_BYTES_PER_SAVED_TERM = 1536
# So bindings run in groups holding at most this much of it (admission counts one group).
BINDING_GROUP_BYTES = 64 << 20
# Aer seeds the i-th experiment of a run seed_simulator + 2113 i: a group starting at binding k
# is seeded so, and samples come out as one run of every binding gave them
# (test_aer_adapter pins it; PUB seeds are below 2**62, so this stays below 2**63).
_AER_SEED_STRIDE = 2113
# A noisy twin's simulators, one per set of qubits its circuits keep (each holds that set's noise
# model, measured on 127- and 133-qubit devices: 6-12 ms to build for one qubit, 30-40 ms for
# two, ~0.3 s for 13).
_NOISY_SIMULATORS = 16
_AER_DENSITY_MATRIX_RUNS = dataclasses.replace(
    costs.DENSITY_MATRIX_RUNS, per_binding=_AER_RUNS.per_binding, per_term=_AER_RUNS.per_term
)


class AerOptions(QiskitOptions):
    """Options of an Aer backend (from the gateway's configuration)."""

    method: Method = "statevector"
    max_parallel_threads: int = Field(default=1, ge=0)
    max_bond_dimension: int | None = Field(default=None, ge=1)
    # A fake IBM backend (a class of qiskit_ibm_runtime.fake_provider) whose target and noise
    # model this simulator takes.
    noise_from: str | None = Field(default=None, pattern=r"^Fake[A-Za-z0-9]+$")

    @model_validator(mode="after")
    def _noise_needs_density_matrix(self) -> AerOptions:
        # Probabilities and expectation values are saved from one run per binding: exact with a
        # density matrix, one random noise trajectory with any other method (read as exact:
        # a Bell pair's <XX> came back 0.0 with standard error 0).
        if self.noise_from is not None and self.method != "density_matrix":
            raise ValueError(
                f'noise_from needs method = "density_matrix" (got "{self.method}"): the '
                "gateway applies a device's noise exactly, not by sampling trajectories"
            )
        return self


def _target_for(method: str, num_qubits: int) -> Target:
    """Aer's instruction set for `method`, on `num_qubits` qubits.

    AerSimulator's own target is sized by host memory (30 statevector qubits on 24 GiB), which
    would make the transpiler fail on circuits the memory budget, not the transpiler, must judge.
    """
    source = AerSimulator(method=method).target
    target = Target(num_qubits=num_qubits, description=f"aer-{method}")
    for name in source.operation_names:
        operation = source.operation_from_name(name)
        if _misbound(name, operation):
            continue  # the transpiler writes it as gates Aer binds right
        if inspect.isclass(operation):  # control-flow classes, multi-controlled gates
            target.add_instruction(operation, name=name)
        else:
            target.add_instruction(operation, properties=None, name=name)
    return target


# Aer's variadic multi-controlled gates that take angles (classes in its target).
_MULTI_CONTROLLED_ANGLES = frozenset(
    {"mcp", "mcphase", "mcr", "mcrx", "mcry", "mcrz", "mcu", "mcu1", "mcu2", "mcu3"}
)


def _misbound(name: str, operation: object) -> bool:
    """Whether Aer (0.18) applies this gate wrongly once its angles come from parameter_binds,
    as the gateway binds every parameterised circuit: controlled rotations and phases (cp with
    theta = 1.1 after x/h: <Z> 1.0 instead of 0.4536, on every method; Aer's own primitives
    too, qiskit-aer #2323). Bound angles are right, and so are the decompositions into cx and
    one-qubit rotations that the transpiler makes without them."""
    if name in _MULTI_CONTROLLED_ANGLES:
        return True
    return isinstance(operation, ControlledGate) and bool(operation.params)


@dataclass(eq=False)
class _AerPlan:
    """The circuit Aer runs for a terminal plan: its body saving the measured qubits'
    probabilities under _PROBABILITIES."""

    circuit: QuantumCircuit
    # Without parameters, Aer's own form of the run (its assembled circuit, noise model and
    # config), built at the first run and reused: Aer's Python assembly costs ~0.2 ms a run,
    # more than simulating a small circuit.
    assembled: tuple[Any, Any, Any] | None = None


def _aer_plan(plan: measurement.TerminalPlan) -> _AerPlan:
    circuit = plan.body.copy()
    circuit.append(
        SaveProbabilities(len(plan.qubits), label=_PROBABILITIES),
        [circuit.qubits[q] for q in plan.qubits],
    )
    return _AerPlan(circuit)


class AerAdapter(QiskitAdapter):
    """Qiskit Aer: statevector, matrix product state or density matrix, per its options."""

    options_model = AerOptions
    provider = "aer"

    def __init__(self, context: AdapterContext) -> None:
        super().__init__(context)
        if not isinstance(self.options, AerOptions):
            raise TypeError("AerAdapter needs AerOptions")
        self.aer_options: AerOptions = self.options
        self._simulator: AerSimulator | None = None
        self._noisy_simulators: LRU[tuple[int, ...], AerSimulator] = LRU(_NOISY_SIMULATORS)
        self._aer_plans: dict[str, _AerPlan] = {}

    @property
    def method_name(self) -> str:
        return self.aer_options.method

    def circuit_features(self) -> frozenset[CircuitFeature]:
        return frozenset(CircuitFeature)

    def runs_verbatim_boxes(self) -> bool:
        # Not with a device's noise model (the body's gates are what the noise acts on), nor
        # with a bond dimension cap (the truncation depends on the gates as compiled).
        return self.aer_options.noise_from is None and self.aer_options.max_bond_dimension is None

    def build_qiskit_target(self) -> Target:
        if self.aer_options.noise_from is not None:
            target: Target = fake_backend(self.aer_options.noise_from).target
            return target
        return _target_for(self.aer_options.method, self.aer_options.num_qubits)

    def compacts_idle_qubits(self) -> bool:
        # An ideal simulator's qubits are alike and all coupled; a noisy twin takes its noise
        # model on the qubits kept (`_sim`). Not left to Aer's own truncation, which the worker
        # turns off for control flow and for saved expectation values (and which the state's
        # size, checked before, cannot count on).
        return True

    def state_size(self, circuit: QuantumCircuit, transpiled: bool) -> tuple[int, int]:
        n = circuit.num_qubits
        method = self.aer_options.method
        if method == "statevector":
            return fe.statevector_bytes(n), 1 << n
        if method == "density_matrix":
            return fe.density_matrix_bytes(n), 1 << (2 * n)
        if not transpiled:
            # Not transpiled yet: the bound depends on the gates the transpiler leaves.
            return fe.MPS_OVERHEAD_BYTES, 1
        memory = fe.mps_bytes(circuit, self.aer_options.max_bond_dimension)
        # The tensors, not Aer's fixed bookkeeping, are what operations touch.
        return memory, max(1, (memory - fe.MPS_OVERHEAD_BYTES) // 16)

    def sampling_work(
        self, entry: CompiledCircuit, bindings: int, shots: int, spec: JobSpec
    ) -> int:
        work = super().sampling_work(entry, bindings, shots, spec)
        if self.aer_options.method == "matrix_product_state" and not entry.shot_by_shot:
            per_shot = (
                _MPS_SAMPLE_ENTRY_WEIGHT * entry.amplitudes
                + _MPS_SAMPLE_QUBIT_WEIGHT * entry.num_qubits
            )
            work += bindings * shots * per_shot
        return work

    def sweep_memory(self, entry: CompiledCircuit, bindings: int, terms: int) -> int:
        # Beyond the first binding's: one copy of the circuit is there anyway (and a state
        # exactly at the budget, admitted before this was counted, still is).
        per_binding = _per_binding(entry.operations, terms)
        return (_group(bindings, per_binding) - 1) * per_binding

    def run_costs(self) -> costs.RunCosts:
        if self.aer_options.method == "density_matrix":
            return _AER_DENSITY_MATRIX_RUNS
        return _AER_RUNS

    def info_properties(self) -> dict[str, str]:
        properties: dict[str, str] = {"method": self.aer_options.method}
        if self.aer_options.noise_from is not None:
            properties["noise_from"] = self.aer_options.noise_from
        return properties

    def sdk_versions(self) -> Mapping[str, str]:
        return {"qiskit-aer": qiskit_aer.__version__}

    # ---------------------------------------------------------------------------- worker

    def warm_up(self) -> None:
        probe = QuantumCircuit(1, 1)
        probe.measure(0, 0)
        simulator = self._sim(idle.whole(probe).kept)
        simulator.run(probe, shots=1, seed_simulator=0, memory=True).result()

    def samples_from_probabilities(self) -> bool:
        # A matrix product state's probabilities of many qubits cost more than its own
        # sampling; a noise model's readout errors act on sampled shots only.
        return self.aer_options.method != "matrix_product_state" and (
            self.aer_options.noise_from is None
        )

    def terminal_probabilities(
        self,
        key: str,
        plan: measurement.TerminalPlan,
        parameters: tuple[str, ...],
        values: FloatArray,
    ) -> FloatArray:
        aer_plan = self._aer_plans.get(key)
        if aer_plan is None or len(self._aer_plans) > 64:
            if len(self._aer_plans) > 64:
                self._aer_plans.clear()
            aer_plan = self._aer_plans[key] = _aer_plan(plan)
        size = values.shape[0]
        if size == 1 and not aer_plan.circuit.parameters:
            experiments = _run_assembled(self._sim(), aer_plan)
        else:
            experiments = []
            for part in _groups(values, _per_binding(aer_plan.circuit.size(), 0)):
                circuits, binds = _binds(aer_plan.circuit, parameters, part, len(part))
                # Saving probabilities draws nothing: the seed only keeps Aer's run
                # reproducible.
                experiments += _run_raw(
                    self._sim(), circuits, shots=1, seed_simulator=0, parameter_binds=binds
                )
        _check_experiments(experiments, size)
        rows = []
        for experiment in experiments:
            probabilities = experiment.get("data", {}).get(_PROBABILITIES)
            if probabilities is None:
                raise ExecutionError(
                    "EXECUTION_FAILED", "Aer saved no probabilities", kind=FailureKind.BACKEND_FAULT
                )
            rows.append(np.asarray(probabilities, dtype=np.float64))
        return np.stack(rows)

    def sample_shots(
        self, simulated: idle.Simulated, task: SamplerTask, output: SamplerOutput
    ) -> SamplerResult:
        return _run_sampler(self._sim(simulated.kept), simulated.circuit, task, output)

    def expectations(
        self,
        key: str,
        simulated: idle.Simulated,
        terms: Sequence[Term],
        parameters: tuple[str, ...],
        values: FloatArray,
    ) -> FloatArray:
        circuit = simulated.circuit
        labels = [f"t{i}" for i in range(len(terms))]
        measured = circuit.copy()
        for (letters, qubits), label in zip(terms, labels, strict=True):
            # Pauli labels put qargs[0] last: reversed, letters[i] acts on qubits[i].
            measured.append(
                SaveExpectationValue(Pauli(letters[::-1]), label=label),
                [measured.qubits[q] for q in qubits],
            )
        size = values.shape[0]
        out = np.empty((size, len(labels)), dtype=np.float64)
        start = 0
        for part in _groups(values, _per_binding(circuit.size(), len(terms))):
            circuits, binds = _binds(measured, parameters, part, len(part))
            # No measurement or reset (prepare refuses them), so one shot gives exact values
            # (a density matrix carries the noise exactly). Aer's qubit truncation misplaces a
            # save that acts on some qubits when another acts on all (measured with Aer 0.18);
            # the memory check was made for every qubit of this circuit anyway.
            result = _run(
                self._sim(simulated.kept),
                circuits,
                shots=1,
                seed_simulator=0,
                parameter_binds=binds,
                enable_truncation=False,
            )
            _check_experiments(result.results, len(part))
            for b in range(len(part)):
                # Result.data(b) converts the whole experiment's data on every call: read it
                # once per binding, not once per term (quadratic in the terms: 10k terms took
                # 11 s).
                data = result.data(b)
                out[start + b] = [float(data[label].real) for label in labels]
            start += len(part)
        return out

    def _sim(self, kept: tuple[int, ...] | None = None) -> AerSimulator:
        """The simulator for a circuit simulated on the compiled circuit's qubits `kept`: an
        ideal one is the same for every circuit (`kept` None where only an ideal one runs); a
        noisy twin's carries its device's noise model on `kept`, renumbered in that order."""
        noise_from = self.aer_options.noise_from
        if noise_from is None and self._simulator is not None:
            return self._simulator  # every job of an ideal simulator: no lock taken
        with self._lock:
            if noise_from is None:
                if self._simulator is None:
                    self._simulator = AerSimulator(**self._simulator_options())
                return self._simulator
            if kept is None:
                raise ValueError(f"backends/{self.context.name} needs the qubits kept")
            simulator = self._noisy_simulators.get(kept)
            if simulator is None:
                noise = noise_model_on(self.qiskit_target(), kept)
                simulator = AerSimulator(noise_model=noise, **self._simulator_options())
                self._noisy_simulators.put(kept, simulator)
            return simulator

    def _simulator_options(self) -> dict[str, Any]:
        opts = self.aer_options
        budget_mb = max(1, math.ceil(self.context.limits.memory_budget_bytes / 2**20))
        options: dict[str, Any] = {
            "method": opts.method,
            "max_parallel_threads": opts.max_parallel_threads,
            # Aer refuses (success=False) rather than exceed the budget.
            "max_memory_mb": budget_mb,
        }
        if opts.max_bond_dimension is not None:
            options["matrix_product_state_max_bond_dimension"] = opts.max_bond_dimension
        return options


# --------------------------------------------------------------------------------------------
# Running and decoding (worker side).
# --------------------------------------------------------------------------------------------


def _run(simulator: AerSimulator, circuits: Any, **options: Any) -> Any:
    first = circuits[0] if isinstance(circuits, list) else circuits
    # Aer's qubit truncation fails on a conditional gate whose qubit nothing else touches
    # ("Failed to load circuits: unordered_map::at"). The memory check was made for every
    # qubit of the circuit Aer gets, so simulating them all stays within the budget.
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


def _run_assembled(simulator: AerSimulator, plan: _AerPlan) -> list[dict[str, Any]]:
    """`_run_raw` for one experiment of a plan without parameters, assembling it for Aer once
    and reusing that: the steps of Aer's `_execute_circuits_job` (compile, assemble, config),
    kept, then its C++ execution alone. qiskit-aer is pinned in uv.lock; test_aer_adapter
    compares this path with `_run_raw`."""
    if plan.assembled is None:
        options: dict[str, Any] = {"shots": 1, "seed_simulator": 0}
        if any(isinstance(i.operation, ControlFlowOp) for i in plan.circuit.data):
            options["enable_truncation"] = False
        circuits, noise_model = simulator._compile([plan.circuit], **options)
        basis = simulator.configuration().basis_gates if simulator._target is not None else None
        aer_circuits, _ = (
            assemble_circuits(circuits, basis) if basis is not None else assemble_circuits(circuits)
        )
        for circ_id, aer_circuit in enumerate(aer_circuits):
            aer_circuit.circ_id = circ_id
        config = generate_aer_config(circuits, simulator.options, **options)
        plan.assembled = (aer_circuits, noise_model, config)
    try:
        output = simulator._execute_circuits(*plan.assembled)
    except AerError as exc:
        raise _execution_error(str(exc)) from None
    if not isinstance(output, dict):
        raise _execution_error("Aer returned no output")
    experiments: list[dict[str, Any]] = output.get("results", [])
    failures = [str(e.get("status")) for e in experiments if not e.get("success")]
    if not output.get("success") or failures:
        raise _execution_error("; ".join(failures) or str(output.get("status")))
    return experiments


def _execution_error(message: str) -> ExecutionError:
    lowered = message.lower()
    # "Failed to load circuits: std::bad_alloc": Aer's C++ out of the worker's memory.
    memory_words = (
        "insufficient memory",
        "greater than max",
        "cannot allocate memory",
        "bad_alloc",
    )
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


def _per_binding(operations: int, terms: int) -> int:
    """What Aer holds for one binding of a run (see _BYTES_PER_BOUND_OPERATION)."""
    return max(1, operations) * _BYTES_PER_BOUND_OPERATION + terms * _BYTES_PER_SAVED_TERM


def _group(size: int, per_binding: int) -> int:
    """Bindings one run takes: what they hold stays within BINDING_GROUP_BYTES (one at least)."""
    return max(1, min(size, BINDING_GROUP_BYTES // per_binding))


def _groups(values: FloatArray, per_binding: int) -> Iterator[FloatArray]:
    """The rows of `values` (one a binding), in groups one run takes."""
    group = _group(values.shape[0], per_binding)
    for start in range(0, values.shape[0], group):
        yield values[start : start + group]


def _run_sampler(
    simulator: AerSimulator, circuit: QuantumCircuit, task: SamplerTask, output: SamplerOutput
) -> SamplerResult:
    size = math.prod(task.shape)
    values = task.values.reshape(size, len(task.parameters))
    builder = result_builder(circuit.num_clbits, task, output)
    decoder = builder.decoder
    start = 0
    for part in _groups(values, _per_binding(circuit.size(), 0)):
        circuits, binds = _binds(circuit, task.parameters, part, len(part))
        experiments = _run_raw(
            simulator,
            circuits,
            shots=task.shots,
            seed_simulator=task.seed + start * _AER_SEED_STRIDE,
            memory=output.samples,
            parameter_binds=binds,
        )
        _check_experiments(experiments, len(part))
        for offset, experiment in enumerate(experiments):
            data = experiment.get("data", {})
            if output.samples:
                # Counts, if asked for, come from the rows decoded here: one pass over Aer's
                # strings.
                memory = data.get("memory") or ["0x0"] * task.shots
                builder.add_samples(start + offset, decoder.hex_samples(memory))
            else:
                # A circuit that never measures reports no outcomes: every bit reads 0.
                raw = data.get("counts") or {"0x0": task.shots}
                builder.add_counts(start + offset, decoder.hex_counts(raw))
        start += len(part)
    return builder.build()
