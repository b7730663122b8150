"""Amazon Braket's local simulators (entry point "braket"): `braket_sv` and `braket_dm`.

Compiling and preparing are the shared Qiskit half (gateway.backends.qiskit.adapter): circuits
are transpiled to the Qiskit gates Braket's interpreter runs (gates.py, which imports no SDK, so
compile workers never load Braket). The simulator worker translates each compiled circuit to
OpenQASM 3 once and runs it on a LocalSimulator (simulation.py).

LocalSimulator takes no seed. Terminal measurements are therefore sampled by the gateway from
Braket's exact probabilities (shots=0), with the job's seed; a circuit that must run shot by
shot (mid-circuit measurement, reset, if/else) runs unseeded, and a job that asks for a seed
for one is refused with UNSUPPORTED_FEATURE rather than silently left unseeded.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from importlib import metadata
from typing import TYPE_CHECKING

from pydantic import Field, model_validator
from qiskit.circuit import QuantumCircuit
from qiskit.transpiler import Target

from gateway.backends.base import AdapterContext, AdapterOptions
from gateway.backends.braket.gates import DEVICE_QUBITS, QISKIT_GATES, Device, features
from gateway.backends.braket.program import BraketNoise
from gateway.backends.qiskit import frontend as fe
from gateway.backends.qiskit import measurement
from gateway.backends.qiskit.adapter import (
    CompiledCircuit,
    QiskitAdapter,
    QiskitOptions,
    SamplerTask,
    Term,
    result_builder,
)
from gateway.backends.qiskit.target import ideal_target
from gateway.domain.circuits import CircuitFeature, FloatArray
from gateway.domain.jobs import JobSpec, SamplerOutput, SamplerResult

if TYPE_CHECKING:
    from gateway.backends.braket.simulation import BraketSimulation

__all__ = ["BraketAdapter", "BraketNoiseOptions", "BraketOptions"]


class BraketNoiseOptions(AdapterOptions):
    """Noise channels of a braket_dm backend (probabilities)."""

    # Depolarizing after every one-qubit gate, two-qubit depolarizing after every two-qubit gate.
    depolarizing_1q: float = Field(default=0.0, ge=0.0, lt=0.75)
    depolarizing_2q: float = Field(default=0.0, ge=0.0, lt=0.9375)
    # A bit flip on each measured qubit just before it is read.
    readout_flip: float = Field(default=0.0, ge=0.0, lt=0.5)


class BraketOptions(QiskitOptions):
    device: Device = "braket_sv"
    noise: BraketNoiseOptions | None = None

    @model_validator(mode="after")
    def _noise_needs_density_matrix(self) -> BraketOptions:
        if self.noise is not None and self.device != "braket_dm":
            raise ValueError("noise needs device = 'braket_dm' (braket_sv is a pure state)")
        return self


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
        self._simulation: BraketSimulation | None = None

    @property
    def method_name(self) -> str:
        return self.braket_options.device

    def circuit_features(self) -> frozenset[CircuitFeature]:
        # Braket drops noise after a branch point: a noisy device declares only reset.
        return features(self.braket_options.device, self._noise() is not None)

    def build_qiskit_target(self) -> Target:
        device = self.braket_options.device
        qubits = min(self.braket_options.num_qubits, DEVICE_QUBITS[device])
        return ideal_target(QISKIT_GATES, qubits, self.circuit_features(), f"braket-{device}")

    def state_size(self, circuit: QuantumCircuit, transpiled: bool) -> tuple[int, int]:
        n = circuit.num_qubits
        if self.braket_options.device == "braket_dm":
            return fe.density_matrix_bytes(n), 1 << (2 * n)
        return fe.statevector_bytes(n), 1 << n

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

    def check_sampler(self, entry: CompiledCircuit, spec: JobSpec, circuit_field: str) -> None:
        if spec.options.seed is not None and not entry.terminal:
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

                    self._simulation = BraketSimulation(self.braket_options.device, self._noise())
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
        self, circuit: QuantumCircuit, task: SamplerTask, output: SamplerOutput
    ) -> SamplerResult:
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
        circuit: QuantumCircuit,
        terms: Sequence[Term],
        parameters: tuple[str, ...],
        values: FloatArray,
    ) -> FloatArray:
        return self._sim().expectations(key, circuit, terms, parameters, values)
