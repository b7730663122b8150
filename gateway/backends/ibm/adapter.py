"""IBM Quantum backends (entry point "ibm") on the shared Qiskit base.

Compiling and preparing are the Qiskit half (gateway.backends.qiskit.adapter): circuits are
transpiled to the device's target with one cached pass manager, so every circuit is ISA (the
runtime refuses others), and observables are mapped through the layout onto physical qubits.

Offline, `backend` names a fake backend of qiskit-ibm-runtime ("FakeManilaV2", "FakeBrisbane",
...) and jobs run in a simulator worker through the runtime's own primitives in local mode:
`qiskit_ibm_runtime.executor_sampler.Sampler` and `executor_estimator.Estimator`, the V2
primitives qiskit-ibm-runtime 0.50+ recommends (its SamplerV2/EstimatorV2 are deprecated in
their favour), which do twirling, dynamical decoupling and error mitigation on the client side
and hand the resulting program to a local Aer simulation.

Local mode builds the fake's noisy simulator on every run when given the fake backend itself
(`AerSamplerV2.from_backend` rebuilds the noise model: seconds on a 127-qubit device), and
deep-copies it when given an AerSimulator. Here the simulator is built once per worker
(`AerSimulator.from_backend`) and handed to the primitives as their mode, as a subclass whose
deep copy is itself: the runtime's only changes to its copy are the run's seed and a qubit cap,
and a worker runs one job at a time.

Aer hands the simulator's whole noise model to its C++ core on every run: ~1.5-2.5 s for a
127-qubit device, whatever the circuit's size. Before each run the simulator gets the device's
noise model restricted to the qubits the run touches (the circuit's, and for the estimator the
observables' measured qubits): the errors of qubits that never get an instruction cannot act,
and the same seed gives the very same shots (tests/unit/test_ibm_adapter.py). Dynamical
decoupling, which the runtime applies after this choice and may extend to other qubits, runs
with the whole model.

With credentials the cloud runner (gateway.backends.ibm.cloud) runs jobs on the real service
instead (`create_runner`).
"""

from __future__ import annotations

import copy
import dataclasses
import importlib
import math
import pickle
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
from qiskit.circuit import ClassicalRegister, QuantumCircuit
from qiskit.transpiler import Target

from gateway.backends.base import AdapterContext, ExecutionOutcome, PreparedJob, ProviderOptions
from gateway.backends.ibm.options import IbmOptions, IbmProviderOptions
from gateway.backends.qiskit import frontend as fe
from gateway.backends.qiskit import idle
from gateway.backends.qiskit.adapter import (
    CompiledCircuit,
    EstimatorTask,
    QiskitAdapter,
    QiskitPayload,
    SamplerTask,
    Term,
    _layout_of,
    _physical_term,
    _raised_binding,
    result_builder,
)
from gateway.backends.qiskit.fakes import fake_backend
from gateway.domain import costs
from gateway.domain.backends import BackendKind
from gateway.domain.bitarray import UInt8Array, unpack_rows
from gateway.domain.circuits import DEFAULT_PRECISION, CircuitFeature, EstimatorPub, FloatArray
from gateway.domain.errors import ExecutionError, FieldViolation, InvalidArgument
from gateway.domain.failures import FailureKind
from gateway.domain.jobs import EstimatorResult, JobSpec, SamplerOutput, SamplerResult

if TYPE_CHECKING:
    from gateway.backends.runner import Runner

__all__ = ["IbmAdapter", "IbmPayload", "simulator_builds"]

_PROVIDER_FIELD = "spec.options.provider_options"
# Names given to loose classical bits so the runtime's sampler returns them (it reports
# registers only), made unique against the circuit's own registers.
_LOOSE_PREFIX = "_qgateway_loose_"
_RUNNABLES = 64
# Estimator shots are 1/precision^2: below this precision that is past any shot limit, and it
# is capped rather than computed (a precision of 1e-300 would overflow).
MIN_SAMPLED_PRECISION = 1e-9
MAX_SAMPLED_SHOTS = 10**18
_NOISE_MODELS = 64
# What mitigation multiplies an estimator's simulation by, per resilience level (unset: the
# runtime's default, 1). Measured on FakeLagosV2, a 7-qubit <ZZZZZZZ> at precision 0.05:
# 0.22 s at level 0, 0.45 s at 1 (TREX's twirled readout), 3.9 s at 2 (ZNE's folded circuits
# and gate twirling); ~100x at 10,000 shots (the cost review).
_RESILIENCE_FACTOR = {0: 1, 1: 2, 2: 20}
_DEFAULT_RESILIENCE = 1
# What the runtime's estimator adds for each qubit of the device it simulates (see
# IbmAdapter.estimation_work).
_ESTIMATOR_OPERATIONS_PER_QUBIT = 3
# The runtime's "auto" number of twirling randomizations.
_AUTO_RANDOMIZATIONS = 32
# Building and running one randomization of a circuit (measured: 20,000 randomizations of a
# one-qubit circuit, one shot each, took 7.4 s against 0.044 s for 20,000 plain shots).
_RANDOMIZATION_WORK = 20_000_000
# The longest a caller (the gateway's start, a health probe, a compile) waits for the
# device's target; a fetch still running goes on and is collected by the next call.
TARGET_WAIT_S = 10.0

# A circuit as the runtime runs it, and each register's name and circuit-wide clbits.
_Runnable = tuple[QuantumCircuit, tuple[tuple[str, tuple[int, ...]], ...]]

# Simulators this process has built (tests: one per worker, not one per job).
_builds = 0
_builds_lock = threading.Lock()


def simulator_builds() -> int:
    """How many fake-backend simulators this process has built."""
    return _builds


@dataclass(frozen=True, eq=False)
class IbmPayload:
    """The Qiskit payload and the job's provider options (as validated)."""

    inner: QiskitPayload
    options: IbmProviderOptions


class IbmAdapter(QiskitAdapter):
    """An IBM Quantum device: a fake backend in local mode offline, the service with
    credentials."""

    options_model = IbmOptions
    provider_options_model: ClassVar[type[ProviderOptions]] = IbmProviderOptions
    provider = "ibm"

    def __init__(self, context: AdapterContext) -> None:
        super().__init__(context)
        if not isinstance(self.options, IbmOptions):
            raise TypeError("IbmAdapter needs IbmOptions")
        self.ibm_options: IbmOptions = self.options
        self._fake: Any = None
        self._device_target: Any = None  # gateway.backends.ibm.cloud.DeviceTarget
        self._simulator: Any = None
        # The device's whole noise model, and restrictions of it by the qubits a run touches.
        self._noise: Any = None
        self._noise_models: dict[frozenset[int], Any] = {}
        # By circuit key: the circuit as the runtime runs it, and its registers' clbits.
        self._runnables: dict[str, _Runnable] = {}
        # The running job's provider options (a simulator worker runs one job at a time).
        self._job_options = IbmProviderOptions()
        # The last job's provider options, as prepare validated them (_provider_options_of).
        self._last_provider_options: tuple[object, IbmProviderOptions] | None = None

    # ------------------------------------------------------------------ what the base asks

    @property
    def method_name(self) -> str:
        return "local_mode"

    def fake_backend(self) -> Any:
        """The fake backend instance (built once; imports qiskit-ibm-runtime)."""
        if self._fake is None:
            with self._lock:
                if self._fake is None:
                    if not self.ibm_options.is_fake:
                        raise ValueError(
                            f"{self.ibm_options.backend!r} is not a fake backend, and a device "
                            "needs a token (token in its options, or QISKIT_IBM_TOKEN)"
                        )
                    self._fake = fake_backend(self.ibm_options.backend)
        return self._fake

    def build_qiskit_target(self) -> Target:
        if self.context.target_data is not None:  # a compile worker: the gateway fetched it
            handed: Target = pickle.loads(self.context.target_data)
            return handed
        if not self.ibm_options.is_fake and self.ibm_options.has_credentials:
            # A device: its target as the service describes it (the cloud runner's client).
            if self._device_target is None:
                cloud = importlib.import_module("gateway.backends.ibm.cloud")
                self._device_target = cloud.DeviceTarget(
                    self.context.name, self.ibm_options, TARGET_WAIT_S
                )
            device: Target = self._device_target.get()
            return device
        target: Target = self.fake_backend().target
        return target

    def compile_context(self) -> AdapterContext:
        # A device's target, once fetched here, goes to the compile workers: each of them
        # asked IBM for it at its start (and each replacement after a kill did again).
        if self.ibm_options.is_fake or self._target is None:
            return self.context
        data = pickle.dumps(self._target, pickle.HIGHEST_PROTOCOL)
        return dataclasses.replace(self.context, target_data=data)

    def warm_up_compiler(self) -> None:
        if not self.ibm_options.is_fake and self.context.target_data is None:
            # The gateway has not fetched the device's target (IBM out of reach at its start):
            # a compile worker must not wait on the network to start; its first compile,
            # once the gateway has the target, fetches it.
            return
        super().warm_up_compiler()

    def backend_kind(self) -> BackendKind:
        # A device runs on IBM's hardware (IBM Quantum offers no cloud simulators): tenants
        # need it in allowed_hardware. A fake backend is a local simulation of one.
        return BackendKind.SIMULATOR if self.ibm_options.is_fake else BackendKind.HARDWARE

    def circuit_features(self) -> frozenset[CircuitFeature]:
        # What the device's target declares (dynamic circuits on IBM's current devices).
        names = self.qiskit_target().operation_names
        features = set()
        if "measure" in names:
            features.add(CircuitFeature.MID_CIRCUIT_MEASUREMENT)
        if "reset" in names:
            features.add(CircuitFeature.RESET)
        if "if_else" in names:
            features.add(CircuitFeature.CONTROL_FLOW)
        return frozenset(features)

    def state_size(self, circuit: QuantumCircuit, transpiled: bool) -> tuple[int, int]:
        # Aer simulates only the qubits a circuit uses (a 3-qubit circuit on a 127-qubit
        # device is a 3-qubit simulation); noisy runs sample a state vector per shot. Before
        # transpiling, what the circuit uses is a lower bound (routing may use more): an ISA
        # circuit is as wide as the device, however few of its qubits it uses.
        active = len(idle.used_qubits(circuit))
        return fe.statevector_bytes(active), 1 << active

    def info_properties(self) -> dict[str, str]:
        return {
            "ibm_backend": self.ibm_options.backend,
            "local_mode": str(self.ibm_options.is_fake),
        }

    def sdk_versions(self) -> Mapping[str, str]:
        import qiskit_aer
        import qiskit_ibm_runtime

        return {
            "qiskit-ibm-runtime": qiskit_ibm_runtime.__version__,
            "qiskit-aer": qiskit_aer.__version__,
        }

    def create_runner(self) -> Runner | None:
        """None for a fake backend (local mode on the worker pool, whatever credentials the
        environment holds) or without credentials; else the cloud runner of
        gateway.backends.ibm.cloud."""
        if self.ibm_options.is_fake or not self.ibm_options.has_credentials:
            return None
        cloud = importlib.import_module("gateway.backends.ibm.cloud")
        runner: Runner | None = cloud.create_runner(self)
        return runner

    # ------------------------------------------------------------------ prepare (gateway)

    def prepare(self, spec: JobSpec, seed: int, circuits: Sequence[object]) -> PreparedJob:
        if self.ibm_options.is_fake and any(isinstance(p, EstimatorPub) for p in spec.pubs):
            # The runtime's estimator simulates every qubit of the device (estimation_work):
            # on FakeKolkataV2 a 3-qubit GHZ's <ZZZ> needs 2 GiB and failed after acceptance.
            fe.check_memory(
                fe.statevector_bytes(self.qiskit_target().num_qubits),
                self.context.limits.memory_budget_bytes,
                "the runtime's estimator (every qubit of the device)",
                "spec.pubs",
            )
        prepared = super().prepare(spec, seed, circuits)
        options = self._provider_options_of(spec)
        inner = prepared.payload
        assert isinstance(inner, QiskitPayload)
        _check_options(options, inner, self.context.name)
        _check_sweeps(inner, circuits)
        if not self.ibm_options.is_fake:
            _check_runtime_job(inner, self.context.name)
        return dataclasses.replace(prepared, payload=IbmPayload(inner, options))

    # ------------------------------------------------------------------ execute (worker)

    def warm_up(self) -> None:
        # The simulator, and the runtime's client-side primitive code, before the first job.
        self._sim()
        probe = QuantumCircuit(1, 1)
        probe.measure(0, 0)
        self._sampler(0, frozenset({0})).run([(probe, None, 1)]).result()

    def execute(self, payload: object) -> ExecutionOutcome:
        if not isinstance(payload, IbmPayload):
            raise TypeError(f"not an IBM payload: {type(payload).__name__}")
        self._job_options = payload.options
        try:
            return super().execute(payload.inner)
        finally:
            self._job_options = IbmProviderOptions()

    def check_transpiled(self, circuit: QuantumCircuit, terminal: bool, field: str) -> None:
        _check_register_names(circuit, field)

    def samples_from_probabilities(self) -> bool:
        # Every shot comes from the runtime's sampler: noise, readout errors and twirling.
        return False

    def estimator_shots(self, precision: float) -> int:
        return _sampled_shots(precision)

    @property
    def combines_terms(self) -> bool:
        return False  # the runtime's estimator takes the observables

    def sampling_work(
        self, entry: CompiledCircuit, bindings: int, shots: int, spec: JobSpec
    ) -> int:
        if not self.ibm_options.is_fake:  # run by the provider: priced by its price table
            return super().sampling_work(entry, bindings, shots, spec)
        options = self._provider_options_of(spec)
        randomizations = _randomizations(options, shots)
        return _noisy_work(entry, entry.amplitudes, bindings, shots, randomizations)

    def estimation_work(
        self,
        entry: CompiledCircuit,
        bindings: int,
        terms: int,
        bases: int,
        shots: int,
        spec: JobSpec,
    ) -> int:
        # The runtime samples each measurement basis's shots under noise, times what
        # mitigation adds. Its estimator simulates every qubit of the device, not only those
        # the circuit uses as the sampler does, and acts on each (measured on FakeGuadalupeV2:
        # a 3-qubit GHZ's <ZZZ> ran ~17.6 ms a shot, a 16-qubit trajectory of ~50 operations):
        # priced at the device's width with ~3 operations a qubit, which refuses it on devices
        # too wide to simulate (it failed there after the job was accepted: "a circuit
        # requires more memory than max_memory_mb").
        if not self.ibm_options.is_fake:
            return super().estimation_work(entry, bindings, terms, bases, shots, spec)
        options = self._provider_options_of(spec)
        level = options.resilience_level
        factor = _RESILIENCE_FACTOR[_DEFAULT_RESILIENCE if level is None else level]
        randomizations = _randomizations(options, shots)
        if randomizations == 1 and factor > 1:  # mitigation twirls by default
            randomizations = _AUTO_RANDOMIZATIONS
        width = self.qiskit_target().num_qubits
        on_device = dataclasses.replace(
            entry, operations=entry.operations + _ESTIMATOR_OPERATIONS_PER_QUBIT * width
        )
        device = 1 << width
        sampled = bases * _noisy_work(on_device, device, bindings, shots, randomizations)
        reads = costs.simulation_work(
            entry.operations,
            entry.amplitudes,
            bindings,
            1,
            False,
            state_passes=terms * costs.TERM_STATE_PASSES,
        )
        return factor * sampled + reads

    def _provider_options_of(self, spec: JobSpec) -> IbmProviderOptions:
        """The job's validated provider options: validated once per job, though every PUB's
        price and the payload ask (the last job's are kept, with the object they came from,
        which that reference keeps alive: identity is a safe key)."""
        raw = spec.options.provider_options
        last = self._last_provider_options
        if last is not None and last[0] is raw:
            return last[1]
        options = self.validate_provider_options(raw, _PROVIDER_FIELD)
        assert isinstance(options, IbmProviderOptions)
        self._last_provider_options = (raw, options)
        return options

    def sample_shots(
        self, simulated: idle.Simulated, task: SamplerTask, output: SamplerOutput
    ) -> SamplerResult:
        circuit = simulated.circuit
        runnable, registers = self._runnable(task.circuit.key, circuit)
        pub = (runnable, _bindings(runnable, task.parameters, task.values, task.shape), task.shots)
        sampler = self._sampler(task.seed, idle.used_qubits(runnable))
        result = _call(lambda: sampler.run([pub]).result())
        data = result[0].data
        size = task.size
        # Per register: its packed rows per binding (BitArray's layout), its width, its clbits.
        packed: list[tuple[UInt8Array, int, list[int]]] = []
        for name, clbits in registers:
            array = getattr(data, name)
            if array.num_shots < task.shots:
                raise ExecutionError(
                    "EXECUTION_FAILED",
                    f"the runtime returned {array.num_shots} shots of {task.shots}",
                    kind=FailureKind.BACKEND_FAULT,
                )
            rows = np.asarray(array.array, dtype=np.uint8).reshape(size, array.num_shots, -1)
            packed.append((rows, array.num_bits, list(clbits)))
        num_clbits = circuit.num_clbits

        def shots_of(b: int) -> Callable[[int, int], UInt8Array]:
            def unpack(first: int, stop: int) -> UInt8Array:
                # Twirling with "auto" rounds the shots up to whole randomizations: only the
                # first `shots` are read. Unpacked a few shots at a time: a wide circuit's
                # every shot at once took a byte per clbit per shot (800 MB for 8000 x 100,000).
                bits = np.zeros((stop - first, num_clbits), dtype=np.uint8)
                for rows, width, clbits in packed:
                    bits[:, clbits] = unpack_rows(rows[b, first:stop], width)
                return bits

            return unpack

        builder = result_builder(num_clbits, task, output)
        for b in range(size):
            builder.add_samples(b, builder.decoder.matrix_samples(task.shots, shots_of(b)))
        return builder.build()

    def _estimate(self, circuit: QuantumCircuit, task: EstimatorTask) -> EstimatorResult:
        layout = _layout_of(circuit)
        n = circuit.num_qubits
        observables = []
        touched = set(idle.used_qubits(circuit))
        for index, observable in enumerate(task.observables):
            terms = [(*_physical_term(key, layout), coefficient) for key, coefficient in observable]
            touched.update(q for _, qubits, _ in terms for q in qubits)
            observables.append(runtime_observable(terms, n, index, self.context.name))
        array = object_array(observables)
        bindings = _bindings(circuit, task.parameters, task.values, task.bindings_shape)
        # The runtime estimates from shots (precision 0, "exact" on an ideal simulator, is
        # the runtime's default precision here: a sampled estimate is never exact).
        precision = task.precision if task.precision > 0 else None
        pub = (circuit, array.reshape(task.observables_shape), bindings, precision)
        estimator = self._estimator(task.seed, frozenset(touched))
        result = _call(lambda: estimator.run([pub]).result())
        evs = np.asarray(result[0].data.evs, dtype=np.float64).reshape(task.shape)
        stds = np.asarray(result[0].data.stds, dtype=np.float64).reshape(task.shape)
        used = precision if precision is not None else float(estimator.options.default_precision)
        return EstimatorResult(
            shape=task.shape, expectation_values=evs, standard_errors=stds, precision=used
        )

    def expectations(
        self,
        key: str,
        simulated: idle.Simulated,
        terms: Sequence[Term],
        parameters: tuple[str, ...],
        values: FloatArray,
    ) -> FloatArray:
        """Estimates of each term (sampled by the runtime, at its default precision)."""
        from qiskit.quantum_info import SparsePauliOp

        circuit = simulated.circuit
        n = circuit.num_qubits
        array = object_array([SparsePauliOp.from_sparse_list([(p, q, 1.0)], n) for p, q in terms])
        size = values.shape[0]
        pub = (
            circuit,
            array.reshape(1, len(terms)),
            _bindings(circuit, parameters, values, (size, 1)),
        )
        touched = idle.used_qubits(circuit) | {q for _, qubits in terms for q in qubits}
        estimator = self._estimator(0, touched)
        result = _call(lambda: estimator.run([pub]).result())
        return np.asarray(result[0].data.evs, dtype=np.float64).reshape(size, len(terms))

    # ------------------------------------------------------------------ runtime primitives

    def _sim(self) -> Any:
        global _builds
        if self._simulator is None:
            with self._lock:
                if self._simulator is None:
                    budget_mb = max(1, math.ceil(self.context.limits.memory_budget_bytes / 2**20))
                    self._simulator = _shared_simulator_class().from_backend(
                        self.fake_backend(), max_memory_mb=budget_mb
                    )
                    self._noise = self._simulator.options.noise_model
                    with _builds_lock:
                        _builds += 1
        return self._simulator

    def _simulator_for(self, qubits: frozenset[int]) -> Any:
        """The simulator, its noise model restricted to `qubits` (see the module docstring)."""
        simulator = self._sim()
        if self._noise is None:
            return simulator  # an ideal device
        dd = self._job_options.dynamical_decoupling
        if dd is not None and dd.enable:
            model = self._noise
        else:
            model = self._noise_models.get(qubits)
            if model is None:
                if len(self._noise_models) >= _NOISE_MODELS:
                    self._noise_models.clear()
                model = self._noise_models[qubits] = _restricted(self._noise, qubits)
        if simulator.options.noise_model is not model:
            simulator.set_options(noise_model=model)
        return simulator

    def _primitive_options(
        self, primitive: Literal["sampler", "estimator"], seed: int
    ) -> dict[str, Any]:
        options = self._job_options.runtime_options(primitive)
        options["simulator"] = {"seed_simulator": seed}
        return options

    def _sampler(self, seed: int, qubits: frozenset[int]) -> Any:
        from qiskit_ibm_runtime.executor_sampler import Sampler

        mode = self._simulator_for(qubits)
        return Sampler(mode=mode, options=self._primitive_options("sampler", seed))

    def _estimator(self, seed: int, qubits: frozenset[int]) -> Any:
        from qiskit_ibm_runtime.executor_estimator import Estimator

        mode = self._simulator_for(qubits)
        return Estimator(mode=mode, options=self._primitive_options("estimator", seed))

    def _runnable(self, key: str, circuit: QuantumCircuit) -> _Runnable:
        """The circuit with every loose clbit in a register of its own (the runtime reports
        registers only) and no register of no bits, and each register's name and circuit-wide
        clbit indices."""
        cached = self._runnables.get(key)
        if cached is not None:
            return cached
        in_register = {bit for register in circuit.cregs for bit in register}
        loose = [bit for bit in circuit.clbits if bit not in in_register]
        empty = [register for register in circuit.cregs if not len(register)]
        runnable = circuit
        if loose or empty:
            runnable = circuit.copy()
            # A register of no bits reads empty whatever runs: not sent, since the runtime's
            # sampler fails on one once the circuit has more than 64 clbits, and that failure
            # would count against the backend's breaker.
            runnable.cregs = [register for register in runnable.cregs if len(register)]
            taken = {register.name for register in circuit.cregs}
            for i, bit in enumerate(loose):
                name = fe.unique_name(f"{_LOOSE_PREFIX}{i}", taken)
                taken.add(name)
                runnable.add_register(ClassicalRegister(name=name, bits=[bit]))
        registers = tuple(
            (register.name, tuple(runnable.find_bit(bit).index for bit in register))
            for register in runnable.cregs
        )
        if not all(_ascending_run(clbits) for _, clbits in registers):
            # The runtime's sampler slices each register from its first bit's index (an
            # ascending run assumed): a register of scattered or reordered bits (QPY, or a bit
            # in two registers) read other bits. One more register of every clbit in order is
            # read instead; each register is cut from it by its own clbits.
            if runnable is circuit:
                runnable = circuit.copy()
            name = fe.unique_name(f"{_LOOSE_PREFIX}all", {r.name for r in runnable.cregs})
            every = ClassicalRegister(name=name, bits=list(runnable.clbits))
            runnable.add_register(every)
            registers = ((every.name, tuple(range(runnable.num_clbits))),)
        value = (runnable, registers)
        if len(self._runnables) >= _RUNNABLES:
            self._runnables.clear()
        self._runnables[key] = value
        return value


def _randomizations(options: IbmProviderOptions, shots: int) -> int:
    """How many randomized circuits the runtime runs for `shots` of one binding."""
    twirling = options.twirling
    if twirling is None or not twirling.enabled:
        return 1
    count, per = twirling.num_randomizations, twirling.shots_per_randomization
    if isinstance(count, int):
        return count
    if isinstance(per, int):
        return math.ceil(shots / per)
    return _AUTO_RANDOMIZATIONS


def _noisy_work(
    entry: CompiledCircuit, amplitudes: int, bindings: int, shots: int, circuits: int
) -> int:
    """Work of `shots` of each binding, split over `circuits` randomized circuits, under the
    device's noise model, on a state of `amplitudes` (2^n). Aer follows each shot of a circuit
    as a trajectory of its own while they are at most 2^n, and evolves the density matrix
    (4^n entries) once beyond (measured at 10 qubits: 1000 shots 0.77 s, 1100 shots 0.32 s)."""
    per_circuit = math.ceil(shots / circuits)
    if per_circuit > amplitudes:
        one = costs.simulation_work(
            entry.operations,
            amplitudes * amplitudes,
            1,
            per_circuit,
            False,
            costs.DENSITY_MATRIX_RUNS,
        )
    else:
        one = costs.simulation_work(entry.operations, amplitudes, 1, per_circuit, True)
    per_binding = circuits * one + (circuits * _RANDOMIZATION_WORK if circuits > 1 else 0)
    return bindings * per_binding


def _ascending_run(clbits: tuple[int, ...]) -> bool:
    return list(clbits) == list(range(clbits[0], clbits[0] + len(clbits))) if clbits else True


def _shared_simulator_class() -> Any:
    """AerSimulator whose deep copy is itself (see the module docstring)."""
    global _SharedSimulator
    if _SharedSimulator is None:
        from qiskit_aer import AerSimulator

        class SharedAerSimulator(AerSimulator):  # type: ignore[misc]
            def __deepcopy__(self, memo: dict[int, object]) -> SharedAerSimulator:
                return self

        _SharedSimulator = SharedAerSimulator
    return _SharedSimulator


_SharedSimulator: Any = None


def _restricted(noise_model: Any, qubits: frozenset[int]) -> Any:
    """`noise_model` without the local errors of qubits outside `qubits` (errors are shared,
    not copied; default and custom-pass noise, e.g. relaxation during delays, stay whole)."""
    model = copy.copy(noise_model)
    model._local_quantum_errors = {
        name: {q: e for q, e in errors.items() if qubits.issuperset(q)}
        for name, errors in noise_model._local_quantum_errors.items()
    }
    model._local_readout_errors = {
        q: e for q, e in noise_model._local_readout_errors.items() if qubits.issuperset(q)
    }
    model._noise_qubits = {q for q in noise_model._noise_qubits if q in qubits}
    return model


def _bindings(
    circuit: QuantumCircuit, parameters: Sequence[str], values: FloatArray, shape: tuple[int, ...]
) -> Any:
    from qiskit.primitives.containers.bindings_array import BindingsArray

    if not circuit.parameters:
        return BindingsArray(shape=shape)
    flat = np.asarray(values, dtype=np.float64).reshape(*shape, len(parameters))
    column = {name: i for i, name in enumerate(parameters)}
    # Transpiling may drop a parameter: bind those still present, in the circuit's order.
    present = list(circuit.parameters)
    data = flat[..., [column[p.name] for p in present]]
    return BindingsArray({tuple(present): data}, shape=shape)


def _call(run: Any) -> Any:
    """Runs a primitive; the runtime's own refusals and simulator failures become
    ExecutionErrors: SDK_ERROR, the backend's only while it also fails its probe (the gateway
    validated the job, but a circuit can still trip an SDK bug)."""
    try:
        return run()
    except ExecutionError:
        raise
    except MemoryError:
        raise
    except Exception as exc:  # the runtime, samplomatic and Aer raise many types
        message = f"{type(exc).__name__}: {exc}"[:500]
        if _raised_binding(exc):
            # Aer binding the client's values (1/theta at 0, sqrt(theta) at theta < 0,
            # asin(theta) at theta > 1): NON_FINITE_ANGLE as on every other backend, not an
            # SDK_ERROR (EXECUTION_FAILED is INTERNAL, "resubmit").
            raise ExecutionError(
                "NON_FINITE_ANGLE",
                f"the parameter values make a gate angle infinite, NaN or complex ({message}); "
                "check the bindings against the circuit's angle expressions",
                kind=FailureKind.CLIENT_ERROR,
            ) from None
        lowered = message.lower()
        if "insufficient memory" in lowered or "greater than max" in lowered:
            raise ExecutionError("OUT_OF_MEMORY", message, kind=FailureKind.OUT_OF_MEMORY) from None
        raise ExecutionError("EXECUTION_FAILED", message, kind=FailureKind.SDK_ERROR) from None


def _check_sweeps(payload: QiskitPayload, circuits: Sequence[object]) -> None:
    """Refuses a sampler PUB sweeping a circuit without parameters, as the client sent it or
    as transpiled (from optimization_level 2 on, transpiling removes parameters that cannot
    change a measurement): the runtime's sampler reads parameter values only for a circuit
    that has some, so it runs such a PUB once and answers shape () (local mode failed reading
    it; IBM's service ran and billed a job whose answer the layout check refuses)."""
    for index, task in enumerate(payload.tasks):
        if not isinstance(task, SamplerTask) or task.shape == ():
            continue
        entry = circuits[index]
        assert isinstance(entry, CompiledCircuit)
        if not entry.keeps_parameters:
            raise fe.invalid(
                "UNSUPPORTED_FEATURE",
                parameterless_sweep(task.shape, transpiled=bool(task.parameters)),
                f"spec.pubs[{index}].sampler.parameter_values",
                feature="parameterless_sweep",
            )


def parameterless_sweep(shape: tuple[int, ...], *, transpiled: bool) -> str:
    """Why a sampler PUB sweeping a circuit without parameters is refused; `transpiled`: the
    client's circuit had parameters, which transpiling removed."""
    what = (
        "a circuit whose parameters transpiling removed (none changes a measurement)"
        if transpiled
        else "a circuit without parameters"
    )
    return (
        f"a sweep of shape {shape} of {what}: IBM's runtime sampler runs such a circuit once; "
        "send it without a sweep (shape ())"
    )


def _check_runtime_job(payload: QiskitPayload, backend: str) -> None:
    """Refuses, for IBM's service, PUBs it cannot run as one runtime job as the gateway
    reports them: its primitives run PUBs of one kind with one shot count (sampler) or one
    precision (estimator) per job (its guidance is one job per group: here, one gateway job
    per group), and its sampler reads a register as the run of clbits from its first bit on,
    so a register of reordered or scattered bits (QPY, or an OpenQASM 3 alias) would come back
    holding other bits' values under its name, which no check of the answer can see. Local
    mode runs these (it cuts every register from all the clbits)."""
    tasks = payload.tasks
    samplers = [t for t in tasks if isinstance(t, SamplerTask)]
    if samplers and len(samplers) != len(tasks):
        raise fe.invalid(
            "UNSUPPORTED_FEATURE",
            f"backends/{backend} runs sampler and estimator PUBs in separate jobs",
            "spec.pubs",
            feature="mixed_primitives",
        )
    uniform = {t.shots for t in samplers} if samplers else {_precision(t) for t in tasks}
    if len(uniform) > 1:
        what = "shots" if samplers else "precision"
        raise fe.invalid(
            "UNSUPPORTED_FEATURE",
            f"backends/{backend} runs PUBs with one {what} per job: submit PUBs with different "
            f"{what} in separate jobs",
            "spec.pubs",
            feature=f"mixed_{what}",
        )
    for index, task in enumerate(samplers):
        for register in task.registers:
            if not _ascending_run(register.clbits):
                name = register.name[:40]
                raise fe.invalid(
                    "UNSUPPORTED_FEATURE",
                    f"register {name} holds clbits that are not one ascending run (reordered "
                    "or scattered bits, from QPY or an OpenQASM 3 alias): IBM's service would "
                    "read other bits under its name; measure into registers of consecutive "
                    "clbits",
                    f"spec.pubs[{index}].sampler.circuit",
                    feature="register_bits",
                    register=name,
                )


def _precision(task: SamplerTask | EstimatorTask) -> float | None:
    """The precision the runtime runs an estimator PUB at: 0, which a sampled estimate cannot
    reach, runs at the runtime's default, DEFAULT_PRECISION (None for a sampler PUB)."""
    if not isinstance(task, EstimatorTask):
        return None
    return task.precision if task.precision > 0 else DEFAULT_PRECISION


def _sampled_shots(precision: float) -> int:
    """The shots an estimator PUB runs at `precision`: the runtime samples each binding until
    its standard error reaches it, about 1/precision^2 (a lower bound: measurement groups and
    twirling add more)."""
    precision = precision if precision > 0 else DEFAULT_PRECISION
    if precision < MIN_SAMPLED_PRECISION:  # 1/p^2 would overflow; refused as too many
        return MAX_SAMPLED_SHOTS
    return min(math.ceil(1.0 / (precision * precision)), MAX_SAMPLED_SHOTS)


def _check_options(options: IbmProviderOptions, payload: QiskitPayload, backend: str) -> None:
    """Refuses options the runtime could not apply to this job as the gateway reports it."""
    samplers = [t for t in payload.tasks if isinstance(t, SamplerTask)]
    if options.resilience_level is not None and samplers:
        _refuse(
            backend,
            f"{_PROVIDER_FIELD}.resilience_level",
            "resilience_level applies to estimator PUBs only (the runtime's sampler has no "
            "error mitigation)",
        )
    twirling = options.twirling
    if twirling is None or not twirling.enabled:
        return
    per = twirling.shots_per_randomization
    count = twirling.num_randomizations
    if isinstance(per, int) and isinstance(count, int):
        for task in samplers:
            if per * count != task.shots:
                _refuse(
                    backend,
                    f"{_PROVIDER_FIELD}.twirling.shots_per_randomization",
                    f"num_randomizations x shots_per_randomization = {per * count} shots, but "
                    f"a sampler PUB asks for {task.shots}",
                )
        # The runtime then runs exactly their product, whatever the precision: an estimator
        # PUB was reported (and billed) at its precision's shots while 10 ran.
        for any_task in payload.tasks:
            precision = _precision(any_task)
            if precision is not None and per * count != _sampled_shots(precision):
                _refuse(
                    backend,
                    f"{_PROVIDER_FIELD}.twirling.shots_per_randomization",
                    f"num_randomizations x shots_per_randomization = {per * count} shots, but "
                    f"an estimator PUB's precision {precision:g} takes "
                    f"{_sampled_shots(precision)} (1/precision^2); set one of the two counts "
                    "and let the runtime derive the other",
                )


# qiskit_ibm_runtime.decoders.executor_sampler.utils.TWIRLING_PREFIX
_RUNTIME_FLIPS_PREFIX = "measurement_flips."


def _check_register_names(circuit: QuantumCircuit, field: str) -> None:
    """Refuses a register the runtime cannot return. Its results hold each register as an
    attribute of a DataBin, which refuses some names (`shape`, `keys`, `_data`, `__class__`,
    ...): the job would fail after it ran, on a device after it was paid for. DataBin itself
    decides, so a name it takes is never refused here, but for the runtime's twirling-flip
    prefix (`measurement_flips.`), which its sampler's post-processing consumes."""
    from qiskit.primitives.containers import DataBin

    for register in circuit.cregs:
        name = register.name
        try:
            held = isinstance(getattr(DataBin(**{name: np.zeros(1)}), name), np.ndarray)
        except (AttributeError, TypeError, ValueError):
            held = False
        # The runtime's sampler post-processing takes every register of this prefix for
        # twirling's flips (twirling or not): XORed into another register and dropped, or the
        # decode fails.
        held = held and not name.startswith(_RUNTIME_FLIPS_PREFIX)
        if not held:
            raise fe.invalid(
                "UNSUPPORTED_FEATURE",
                f"IBM's runtime cannot return a classical register named {name!r} (its "
                "results reserve the name); rename the register",
                field,
                feature="register_name",
                register=name,
            )


def object_array(items: Sequence[object]) -> np.ndarray[Any, np.dtype[np.object_]]:
    """A 1-D object array of `items`, each stored as itself. Assigned as a slice, NumPy asks
    each SparsePauliOp for its `__array__`: a dense 4^n matrix over the device's qubits (the
    Rust allocation panicked and took the worker down on a 16-qubit fake)."""
    array = np.empty(len(items), dtype=object)
    for index, item in enumerate(items):
        array[index] = item
    return array


def runtime_observable(
    terms: Sequence[tuple[str, tuple[int, ...], float]], num_qubits: int, index: int, backend: str
) -> Any:
    """The SparsePauliOp of one observable's physical terms, for the runtime's estimator.

    Raises:
        ExecutionError: CLIENT_ERROR INVALID_OBSERVABLE for an observable that is zero (its
            terms cancel, or their coefficients are 0), which the runtime refuses ("Empty
            observable was detected"), or that has a coefficient whose square overflows: the
            request's fault, not the backend's (on the cloud path the runtime's refusal at
            create would count against the breaker). Zero as the runtime reads it: simplified,
            tolerance included. Checked here, where the operator is built anyway, not when the
            job is submitted: at the job limit of 1,000,000 terms that took seconds of the
            gateway's CPU.
    """
    from qiskit.quantum_info import SparseObservable, SparsePauliOp

    simplified = SparseObservable.from_sparse_list(terms, num_qubits).simplify()
    if simplified == SparseObservable.zero(num_qubits):
        raise ExecutionError(
            "INVALID_OBSERVABLE",
            f"backends/{backend}: observable {index} is zero (its terms cancel or their "
            "coefficients are 0), which the IBM runtime's estimator refuses",
            kind=FailureKind.CLIENT_ERROR,
            metadata={"index": str(index)},
        )
    # The runtime's estimator squares each merged term's coefficient (a Python float's **,
    # which raises OverflowError where numpy's sum of the squares gives inf) for the
    # estimate's variance: past ~1.34e154 an INTERNAL failure after the run (on a device,
    # after it was paid for).
    largest = float(np.max(np.abs(simplified.coeffs)))
    if not math.isfinite(largest * largest):
        raise ExecutionError(
            "INVALID_OBSERVABLE",
            f"backends/{backend}: observable {index} has a coefficient of {largest:.3g}, whose "
            "square is past the largest float, which the IBM runtime's estimator cannot take "
            "(it computes the estimate's variance from it); scale the observable down",
            kind=FailureKind.CLIENT_ERROR,
            metadata={"index": str(index)},
        )
    return SparsePauliOp.from_sparse_list(terms, num_qubits)


def _refuse(backend: str, field: str, message: str) -> None:
    raise InvalidArgument(
        "INVALID_PROVIDER_OPTIONS",
        f"{field}: {message}",
        metadata={"backend": f"backends/{backend}", "field": field},
        field_violations=[FieldViolation(field, message)],
    )
