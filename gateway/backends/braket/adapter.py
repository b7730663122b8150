"""Amazon Braket's local simulators (entry point "braket"): `braket_sv` and `braket_dm`.

Compiling and preparing are the shared Qiskit half (gateway.backends.qiskit.adapter): circuits
are transpiled to the Qiskit gates Braket's interpreter runs (gates.py, which imports no SDK, so
compile workers never load Braket). The simulator worker translates each compiled circuit to
OpenQASM 3 once and runs it on a LocalSimulator (simulation.py).

LocalSimulator takes no seed. Terminal measurements are therefore sampled by the gateway from
Braket's exact probabilities (shots=0), with the job's seed; a circuit that must run shot by
shot (mid-circuit measurement, reset, if/else) runs unseeded, and a job that asks for a seed
for one is refused with UNSUPPORTED_FEATURE rather than silently left unseeded.

With a device ARN instead of a simulator name, the backend is Amazon Braket in the cloud (an
AwsDevice: managed simulator or QPU): `create_runner` returns the REMOTE runner of
gateway.backends.braket.cloud, which sends the same OpenQASM 3 programs as shots-based tasks.
Only sampler PUBs with measurements at the end run there, and no seed can be honoured:

    [backends.braket-sv1]
    adapter = "braket"
    options = { device = "arn:aws:braket:::device/quantum-simulator/amazon/sv1",
                region = "us-east-1", s3_bucket = "amazon-braket-my-results",
                s3_prefix = "qgateway" }
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from importlib import metadata
from typing import TYPE_CHECKING

import numpy as np
from pydantic import Field, field_validator, model_validator
from qiskit.circuit import QuantumCircuit
from qiskit.transpiler import Target

from gateway.backends.base import AdapterContext, AdapterOptions, PreparedJob
from gateway.backends.braket.gates import DEVICE_QUBITS, QISKIT_GATES, Device, features
from gateway.backends.braket.program import (
    BraketNoise,
    UnsupportedCircuit,
    needs_branching,
    shots_program,
)
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
from gateway.backends.qiskit.target import ideal_target
from gateway.domain import costs
from gateway.domain.backends import BackendInfo, BackendKind, Primitive
from gateway.domain.circuits import CircuitFeature, FloatArray, SamplerPub
from gateway.domain.jobs import JobSpec, SamplerOutput, SamplerResult

if TYPE_CHECKING:
    from gateway.backends.braket.cloud import BraketCloudRunner, CloudStatus
    from gateway.backends.braket.simulation import BraketSimulation

__all__ = ["BraketAdapter", "BraketNoiseOptions", "BraketOptions"]


class BraketNoiseOptions(AdapterOptions):
    """Noise channels of a braket_dm backend (probabilities)."""

    # Depolarizing after every one-qubit gate, two-qubit depolarizing after every two-qubit gate.
    depolarizing_1q: float = Field(default=0.0, ge=0.0, lt=0.75)
    depolarizing_2q: float = Field(default=0.0, ge=0.0, lt=0.9375)
    # A bit flip on each measured qubit just before it is read.
    readout_flip: float = Field(default=0.0, ge=0.0, lt=0.5)


_DEVICE_ARN = re.compile(r"arn:aws:braket:[a-z0-9-]*:[0-9]*:device/[A-Za-z0-9_./-]+")
_LOCAL_DEVICES = ("braket_sv", "braket_dm")
# Qubits of a cloud device when its options do not say (SV1's width).
_CLOUD_QUBITS = 34
# The most shots one task takes on the managed simulators (their shotsRange), like
# _CLOUD_QUBITS a cap on the configured limit (a QPU's own range may be narrower).
_CLOUD_SHOTS = 100_000
# Copies of the state a local Braket simulation holds at its peak (see state_size).
_WORKING_COPIES = 4
_NOISY_DM_COPIES = 7
# LocalSimulator reads and interprets the program again for every binding (and every shot of a
# branching circuit): measured ~5 ms a run and ~0.6 ms per gate and run (sv and dm alike),
# where the amplitude count priced 2000 gates x 3000 bindings at 0.5 ms of work; they ran about
# an hour on the backend's one worker. In work units (5e10 a second).
_LOCAL_RUNS = costs.RunCosts(per_run=250_000_000, per_operation_run=30_000_000)
# braket_dm updates ~1.6e8 density-matrix entries a second on one thread at 9-10 qubits
# (measured; braket_sv ~6.7e8 amplitudes, about the default weight).
_LOCAL_DM_RUNS = dataclasses.replace(_LOCAL_RUNS, per_amplitude=360)
# A branching run (ProgramContext._measure_and_branch, simulator._run_branched): once a program
# branches, every measurement (those deferred before the branch point too) is applied to each
# path then active by evolving that path's instructions again from |0> and sampling its shots;
# a measurement that may split (fe.count_path_measurements) doubles the paths, up to the shots;
# the final paths are evolved once more. Priced: path steps (paths summed over measurements and
# the end, path_steps) x operations x (a fixed cost + one per amplitude), plus per shot
# (Braket's sample at each measurement, and its rows of "0"/"1" strings). Fitted to the
# adapter's own execute (one core, warm) on circuits whose every measurement is 50/50 (the most
# paths): 2-12 qubits, 4-25 measurements, 100-200,000 shots, with and without resets and
# feed-forward, braket_sv and braket_dm, 0.6-3x of the CPU of each (e.g. 2 qubits, 14
# measurements, 10,000 shots 8.3 s; 12 qubits, 16 with resets, 300 shots 30.9 s; 11 qubits, 12,
# 8000 shots 39 s; a 1-qubit circuit ~4 us a shot). Outcomes that rarely differ (small angles
# before a measurement) make fewer paths than this assumes: such circuits ran up to 8x under
# their price (4 qubits, 10 measurements with resets, 10,000 shots: 2.0 s, priced 16 s).
_PATH_OPERATION_WEIGHT = {"braket_sv": 600_000, "braket_dm": 5_000_000}
_PATH_AMPLITUDE_WEIGHT = {"braket_sv": 2_500, "braket_dm": 800}
_BRANCH_SHOT_WEIGHT = 150_000
_BRANCH_SHOT_MEASUREMENT_WEIGHT = 20_000
# Worker memory per shot of one shot-by-shot run (Braket's rows of strings, their arrays):
# measured +232 B at 1 qubit (10^6 shots +228 MiB, 3 x 10^6 +688 MiB), +316 B at 4,
# +536 B at 10, ~+950 B at 20 (VmHWM of the adapter's own execute, 2-5 x 10^5 shots).
_SHOT_BYTES = 200
_SHOT_QUBIT_BYTES = 40


def _largest_run(entry: CompiledCircuit, task: SamplerTask) -> int:
    """Bindings of the task's largest run: BraketSimulation.shots runs bindings with equal
    angles together (all of them when the transpiled circuit has no parameters left)."""
    values = task.flat_values()
    if task.size <= 1 or not entry.keeps_parameters or values.shape[1] == 0:
        return task.size
    return int(np.unique(values, axis=0, return_counts=True)[1].max())


def path_steps(measurements: int, splitting: int, shots: int) -> int:
    """Paths a branching run evolves, summed over its measurements and its end: at most the
    shots, doubling at each splitting measurement (taken first: the most paths)."""
    full = min(splitting, shots.bit_length() - 1)  # 2^full <= shots: every path distinct
    doubling = (1 << (full + 1)) - 1  # 1 + 2 + ... + 2^full
    return doubling + (measurements - full) * min(shots, 1 << min(splitting, 62))


class BraketOptions(QiskitOptions):
    """A braket backend: a local simulator ("braket_sv", "braket_dm") or, with a device ARN,
    an AwsDevice in the cloud, whose tasks need `region` and `s3_bucket` (results land there).

    Cloud-only options: region, s3_bucket, s3_prefix, endpoint_url (a Braket/S3 endpoint other
    than AWS's, e.g. a loopback stub in tests), profile (a named AWS profile; default: the
    standard credential chain), max_concurrent_tasks (jobs at the provider at once),
    max_creates_per_s (CreateQuantumTask calls in any second), poll_interval_s, the retry
    settings, max_tasks_per_job (each PUB binding is one task) and reservation_arn (a Braket
    reservation every task is created in).
    """

    device: str = "braket_sv"
    noise: BraketNoiseOptions | None = None
    region: str | None = None
    s3_bucket: str | None = None
    s3_prefix: str = "qgateway"
    endpoint_url: str | None = None
    profile: str | None = None
    max_concurrent_tasks: int = Field(default=32, ge=1, le=1000)
    max_creates_per_s: int = Field(default=20, ge=1, le=1000)
    poll_interval_s: float = Field(default=1.0, gt=0, le=60, allow_inf_nan=False)
    request_timeout_s: float = Field(default=30.0, gt=0, allow_inf_nan=False)
    retry_attempts: int = Field(default=5, ge=1)
    retry_backoff_s: float = Field(default=0.2, gt=0, allow_inf_nan=False)
    max_retry_backoff_s: float = Field(default=10.0, gt=0, allow_inf_nan=False)
    max_tasks_per_job: int = Field(default=100, ge=1)
    # A Braket reservation (dedicated device time): every task is created in it.
    reservation_arn: str | None = Field(default=None, pattern=r"^arn:aws:braket:.+")

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        if value not in _LOCAL_DEVICES and not _DEVICE_ARN.fullmatch(value):
            raise ValueError("device must be 'braket_sv', 'braket_dm' or a Braket device ARN")
        return value

    @property
    def is_cloud(self) -> bool:
        return self.device not in _LOCAL_DEVICES

    @model_validator(mode="after")
    def _noise_needs_density_matrix(self) -> BraketOptions:
        if self.noise is not None and self.device != "braket_dm":
            raise ValueError("noise needs device = 'braket_dm' (braket_sv is a pure state)")
        if self.is_cloud and (not self.region or not self.s3_bucket):
            raise ValueError("a device ARN needs region and s3_bucket (where results land)")
        if not self.is_cloud and (
            self.region or self.s3_bucket or self.endpoint_url or self.reservation_arn
        ):
            raise ValueError(
                "region, s3_bucket, endpoint_url and reservation_arn are for a device ARN only"
            )
        if self.endpoint_url is not None and not re.fullmatch(
            r"https?://[^/?#\s]+/?", self.endpoint_url
        ):
            raise ValueError("endpoint_url must be http(s)://HOST[:PORT]")
        return self

    @property
    def local_device(self) -> Device:
        """The local simulator's name (a cloud device's circuits are written as braket_sv's)."""
        return "braket_dm" if self.device == "braket_dm" else "braket_sv"


class _LiveProperties(Mapping[str, str]):
    """BackendInfo properties read when asked: a cloud device's queue depth and its jobs'
    queue positions change while the gateway runs."""

    def __init__(self, static: Mapping[str, str], live: Callable[[], Mapping[str, str]]) -> None:
        self._static = dict(static)
        self._live = live

    def _current(self) -> dict[str, str]:
        return {**self._static, **self._live()}

    def __getitem__(self, key: str) -> str:
        return self._current()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._current())

    def __len__(self) -> int:
        return len(self._current())


class BraketAdapter(QiskitAdapter):
    """Braket LocalSimulator, state vector or density matrix, per its options."""

    options_model = BraketOptions
    provider = "braket"
    # LocalSimulator takes no seed: a shot-by-shot run is not reproducible.
    seeds_shot_by_shot = False

    def __init__(self, context: AdapterContext) -> None:
        super().__init__(context)
        if not isinstance(self.options, BraketOptions):
            raise TypeError("BraketAdapter needs BraketOptions")
        self.braket_options: BraketOptions = self.options
        limits = context.limits
        if self.braket_options.is_cloud and limits.max_shots > _CLOUD_SHOTS:
            # A PUB binding is one task: past what a task takes, the job was admitted, queued
            # and held its quota, then failed PROVIDER_REJECTED at its first create.
            limits = dataclasses.replace(limits, max_shots=_CLOUD_SHOTS)
            default_shots = min(context.default_shots, _CLOUD_SHOTS)
            self.context = dataclasses.replace(context, limits=limits, default_shots=default_shots)
        self._simulation: BraketSimulation | None = None
        self._cloud_status: CloudStatus | None = None

    @property
    def method_name(self) -> str:
        return self.braket_options.device

    def circuit_features(self) -> frozenset[CircuitFeature]:
        if self.braket_options.is_cloud:
            # Shots-based tasks with measurements at the end: what every device runs.
            return frozenset()
        # Braket drops noise after a branch point: a noisy device declares only reset.
        return features(self.braket_options.local_device, self._noise() is not None)

    def runs_verbatim_boxes(self) -> bool:
        # A cloud device (a QPU's verbatim boxes take its native gates on its physical qubits,
        # and the gateway compiles for a generic target) or the gateway's own noise channels
        # (added after every gate, as compiled): refused there.
        return not self.braket_options.is_cloud and self._noise() is None

    def build_qiskit_target(self) -> Target:
        options = self.braket_options
        if options.is_cloud:
            qubits = min(options.num_qubits, _CLOUD_QUBITS)
            return ideal_target(QISKIT_GATES, qubits, self.circuit_features(), "braket-cloud")
        device = options.local_device
        qubits = min(options.num_qubits, DEVICE_QUBITS[device])
        # The program writer drops delays: no noise model here acts in time.
        return ideal_target(
            QISKIT_GATES, qubits, self.circuit_features(), f"braket-{device}", delay=True
        )

    def sampling_work(
        self, entry: CompiledCircuit, bindings: int, shots: int, spec: JobSpec
    ) -> int:
        options = self.braket_options
        if options.is_cloud or not entry.shot_by_shot:
            return super().sampling_work(entry, bindings, shots, spec)
        # Each binding is one run (its program read once); equal bindings merged into one run
        # have at most the paths of their separate runs.
        run = costs.simulation_work(
            entry.operations, entry.amplitudes, bindings, shots, False, self.run_costs()
        )
        measurements = entry.path_measurements
        steps = path_steps(measurements, entry.splitting_measurements, shots)
        device = options.local_device
        per_step = entry.operations * (
            _PATH_OPERATION_WEIGHT[device] + entry.amplitudes * _PATH_AMPLITUDE_WEIGHT[device]
        )
        per_shot = _BRANCH_SHOT_WEIGHT + measurements * _BRANCH_SHOT_MEASUREMENT_WEIGHT
        return run + bindings * (steps * per_step + shots * per_shot)

    def shots_memory(self, entry: CompiledCircuit, task: SamplerTask) -> int:
        if self.braket_options.is_cloud or entry.terminal or not task.writes_clbits:
            return 0  # sampled from exact probabilities (or run at the provider)
        # BraketSimulation.shots runs equal bindings as one run of all their shots, whose
        # measurements Braket returns as rows of "0"/"1" strings (and the worker reads them
        # into arrays); each binding's outcomes are kept, 8 bytes a shot, until the result.
        return task.size * task.shots * 8 + _largest_run(entry, task) * task.shots * (
            _SHOT_BYTES + _SHOT_QUBIT_BYTES * entry.num_qubits
        )

    def run_costs(self) -> costs.RunCosts:
        if self.braket_options.is_cloud:
            return costs.BATCHED_RUNS  # run at the provider: its price is what counts
        return _LOCAL_DM_RUNS if self.braket_options.device == "braket_dm" else _LOCAL_RUNS

    def compacts_idle_qubits(self) -> bool:
        # The local simulators' qubits are all coupled and their noise options act on every
        # qubit alike. A cloud device runs the circuit as sent: its qubits may be a QPU's.
        return not self.braket_options.is_cloud

    def state_size(self, circuit: QuantumCircuit, transpiled: bool) -> tuple[int, int]:
        n = circuit.num_qubits
        if self.braket_options.is_cloud:
            return 0, 1 << n  # simulated (or run) at the provider, not in this gateway's memory
        # Braket's simulators peak at ~4x the state (measured: a 12-qubit density matrix,
        # 256 MiB, peaked at 1073 MiB; a 24-qubit state vector, 256 MiB, at 979 MiB).
        if self.braket_options.device == "braket_dm":
            # With noise channels, ~6.1-6.6x (measured: 11 qubits +421 MiB of 64, 12 qubits
            # +1573 MiB of 256): a 13-qubit noisy job passed the 4x estimate and ran out of
            # the worker's memory after a minute.
            copies = _NOISY_DM_COPIES if self._noise() is not None else _WORKING_COPIES
            return copies * fe.density_matrix_bytes(n), 1 << (2 * n)
        return _WORKING_COPIES * fe.statevector_bytes(n), 1 << n

    # ---------------------------------------------------------------------------- cloud

    def _status(self) -> CloudStatus:
        if self._cloud_status is None:
            from gateway.backends.braket.cloud import CloudStatus

            options = self.braket_options
            assert options.region is not None
            self._cloud_status = CloudStatus(options.device, options.region)
        return self._cloud_status

    def backend_kind(self) -> BackendKind:
        if "/qpu/" in self.braket_options.device:
            return BackendKind.HARDWARE
        return BackendKind.SIMULATOR  # LocalSimulator, or a managed simulator (SV1, DM1, TN1)

    def info(self) -> BackendInfo:
        info = super().info()
        if not self.braket_options.is_cloud or isinstance(info.properties, _LiveProperties):
            return info
        self._info = dataclasses.replace(
            info,
            primitives=frozenset({Primitive.SAMPLER}),
            properties=_LiveProperties(info.properties, self._status().properties),
        )
        return self._info

    def create_runner(self) -> BraketCloudRunner | None:
        options = self.braket_options
        if not options.is_cloud:
            return None
        from gateway.backends.braket.cloud import BraketCloudRunner, CloudSettings

        assert options.region is not None and options.s3_bucket is not None
        settings = CloudSettings(
            device_arn=options.device,
            region=options.region,
            s3_bucket=options.s3_bucket,
            s3_prefix=options.s3_prefix,
            endpoint_url=options.endpoint_url,
            profile=options.profile,
            max_concurrent_tasks=options.max_concurrent_tasks,
            max_creates_per_s=options.max_creates_per_s,
            poll_interval_s=options.poll_interval_s,
            request_timeout_s=options.request_timeout_s,
            retry_attempts=options.retry_attempts,
            retry_backoff_s=options.retry_backoff_s,
            max_retry_backoff_s=options.max_retry_backoff_s,
            reservation_arn=options.reservation_arn,
        )
        return BraketCloudRunner(self.context.name, settings, self._status())

    def prepare(self, spec: JobSpec, seed: int, circuits: Sequence[object]) -> PreparedJob:
        if self.braket_options.is_cloud:
            for index, pub in enumerate(spec.pubs):
                if not isinstance(pub, SamplerPub):
                    raise fe.invalid(
                        "UNSUPPORTED_FEATURE",
                        f"backends/{self.context.name} runs sampler PUBs only (Braket tasks "
                        "are shots-based); it has no estimator",
                        f"spec.pubs[{index}].estimator",
                        feature="estimator",
                    )
        prepared = super().prepare(spec, seed, circuits)
        if self.braket_options.is_cloud:
            # A PUB whose bits all read 0 is no task (cloud._task_specs): neither counted against
            # the limit nor priced, its shots neither held against a quota nor charged.
            sampled = [
                task
                for task in getattr(prepared.payload, "tasks", ())
                if isinstance(task, SamplerTask)
            ]
            tasks = sum(task.size for task in sampled if task.writes_clbits)
            unrun = sum(task.size * task.shots for task in sampled if not task.writes_clbits)
            limit = self.braket_options.max_tasks_per_job
            if tasks > limit:
                raise fe.invalid(
                    "TOO_MANY_BINDINGS",
                    f"backends/{self.context.name} runs each binding as one Braket task: "
                    f"{tasks} tasks, at most {limit} per job",
                    "spec.pubs",
                )
            # Braket bills each task: the job's price is per_task times this.
            prepared = dataclasses.replace(prepared, tasks=tasks, shots=prepared.shots - unrun)
        return prepared

    def info_properties(self) -> dict[str, str]:
        properties: dict[str, str] = {"device": self.braket_options.device}
        noise = self.braket_options.noise
        if noise is not None:
            for name, value in noise.model_dump().items():
                properties[f"noise.{name}"] = repr(value)
        return properties

    def sdk_versions(self) -> Mapping[str, str]:
        return {
            name: metadata.version(name)
            for name in ("amazon-braket-sdk", "amazon-braket-default-simulator")
        }

    def check_transpiled(self, circuit: QuantumCircuit, terminal: bool, field: str) -> None:
        # Noise with a circuit Braket must branch (run path by path) is refused by the worker;
        # the front end's features do not see every such circuit (a qubit measured twice
        # after a reset), so the same rule runs here, on what the worker will get.
        if terminal:
            return
        noise = None if self.braket_options.is_cloud else self._noise()
        if noise is not None and needs_branching(circuit):
            raise fe.invalid(
                "UNSUPPORTED_FEATURE",
                f"backends/{self.context.name} (noisy braket_dm) cannot run a circuit Braket "
                "simulates path by path (a qubit used again after its measurement, or "
                "if/else): its noise would be dropped",
                field,
                feature=CircuitFeature.MID_CIRCUIT_MEASUREMENT.value,
            )
        try:
            # What the worker (or the task) will run, written here: a condition Braket cannot
            # branch on (`c > 1`) was accepted, and the job then failed.
            shots_program(circuit, noise)
        except UnsupportedCircuit as exc:
            raise fe.invalid(
                "UNSUPPORTED_FEATURE", f"backends/{self.context.name}: {exc}", field
            ) from None

    def check_estimator(self, entry: CompiledCircuit, circuit_field: str) -> None:
        # Expectation values come from a program of gates only: an if/else (on bits no
        # measurement of an estimator circuit sets) was accepted, and the job failed in the
        # worker once it had waited in the queue.
        if CircuitFeature.CONTROL_FLOW in entry.features:
            raise fe.invalid(
                "UNSUPPORTED_FEATURE",
                f"backends/{self.context.name} computes expectation values of a circuit of "
                "gates only: an estimator circuit must not contain control flow (if/else)",
                circuit_field,
                feature=CircuitFeature.CONTROL_FLOW.value,
            )

    def check_sampler(self, entry: CompiledCircuit, spec: JobSpec, circuit_field: str) -> None:
        # Outcomes are read as one integer per shot, locally and from a device (refused here,
        # not after the job waited in the queue).
        if entry.num_clbits > 64:
            raise fe.invalid(
                "UNSUPPORTED_FEATURE",
                f"backends/{self.context.name} reads at most 64 classical bits per circuit",
                circuit_field,
                feature="clbits",
            )
        if self.braket_options.is_cloud:
            if spec.options.seed is not None:
                raise fe.invalid(
                    "UNSUPPORTED_FEATURE",
                    f"backends/{self.context.name} runs shots on a Braket device, which takes "
                    "no seed; leave the seed unset",
                    circuit_field,
                    feature="seed",
                )
            return
        if spec.options.seed is not None and not entry.terminal and entry.writes_clbits:
            raise fe.invalid(
                "UNSUPPORTED_FEATURE",
                f"backends/{self.context.name} takes no seed: a seeded job is sampled from "
                "exact probabilities, which needs measurements only at the end of the circuit "
                f"(at most {measurement.MAX_MEASURED_QUBITS} measured qubits); leave the seed "
                "unset to run this circuit shot by shot",
                circuit_field,
                feature="seed",
            )

    def _noise(self) -> BraketNoise | None:
        options = self.braket_options.noise
        noise = None if options is None else BraketNoise(**options.model_dump())
        return None if noise is None or noise.is_noiseless else noise

    # ---------------------------------------------------------------------------- worker

    def _sim(self) -> BraketSimulation:
        if self._simulation is None:
            with self._lock:
                if self._simulation is None:
                    # Imported here: only simulator workers of this backend load Braket.
                    from gateway.backends.braket.simulation import BraketSimulation

                    self._simulation = BraketSimulation(
                        self.braket_options.local_device, self._noise()
                    )
        return self._simulation

    def warm_up(self) -> None:
        self._sim().warm_up()

    def terminal_probabilities(
        self,
        key: str,
        plan: measurement.TerminalPlan,
        parameters: tuple[str, ...],
        values: FloatArray,
    ) -> FloatArray:
        return self._sim().probabilities(key, plan, parameters, values)

    def sample_shots(
        self, simulated: idle.Simulated, task: SamplerTask, output: SamplerOutput
    ) -> SamplerResult:
        circuit = simulated.circuit
        rows = self._sim().shots(
            task.circuit.key, circuit, task.parameters, task.flat_values(), task.shots
        )
        builder = result_builder(circuit.num_clbits, task, output)
        decoder = builder.decoder
        for b, outcomes in enumerate(rows):
            builder.add_samples(b, decoder.int_samples(outcomes))
        return builder.build()

    def expectations(
        self,
        key: str,
        simulated: idle.Simulated,
        terms: Sequence[Term],
        parameters: tuple[str, ...],
        values: FloatArray,
    ) -> FloatArray:
        return self._sim().expectations(key, simulated.circuit, terms, parameters, values)
