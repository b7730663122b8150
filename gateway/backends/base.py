"""The adapter contract every backend implements.

An adapter is created twice for simulators: once in the gateway process, where `prepare` parses,
validates and transpiles a job (in a thread, off the event loop), and once in each worker
process, where `execute` runs the prepared payload. Everything passed between the two must
pickle.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from gateway.domain.backends import BackendInfo, BackendLimits
from gateway.domain.circuits import Bindings, CircuitLanguage, CircuitSource, SamplerPub
from gateway.domain.jobs import JobResult, JobSpec


@dataclass(frozen=True)
class CircuitLimits:
    """Limits on circuit source, enforced before and during parsing."""

    max_source_bytes: int = 1 << 20
    # Gate applications after unrolling every gate definition; counted without unrolling.
    max_operations: int = 1_000_000
    # Wall-clock limit on parsing one circuit.
    parse_timeout_s: float = 5.0


@dataclass(frozen=True)
class AdapterContext:
    """Everything an adapter instance is built from (picklable, sent to workers)."""

    name: str
    limits: BackendLimits
    default_shots: int
    circuit_limits: CircuitLimits
    options: Mapping[str, Any] = field(default_factory=dict)
    # OS memory limit (RLIMIT_DATA) for each worker process running this adapter.
    worker_memory_bytes: int | None = None


@dataclass(frozen=True, eq=False)
class PreparedJob:
    """A validated job, ready for `execute`.

    Attributes:
        payload: Picklable input for `execute`.
        memory_bytes: Estimated peak simulation memory.
        layouts: Per PUB, the physical qubit of each virtual qubit.
        prepare_seconds: Time spent parsing and transpiling (cache hits are near zero).
    """

    payload: object
    memory_bytes: int
    layouts: tuple[tuple[int, ...], ...]
    prepare_seconds: float


@dataclass(frozen=True, eq=False)
class ExecutionOutcome:
    result: JobResult
    sdk_versions: Mapping[str, str]


class AdapterOptions(BaseModel):
    """Base of adapter-specific options: a typo in the config is an error."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class BackendAdapter(ABC):
    """One backend. Subclasses are registered under the "qgateway.backends" entry-point group."""

    options_model: ClassVar[type[AdapterOptions]] = AdapterOptions

    def __init__(self, context: AdapterContext) -> None:
        self.context = context
        self.options = self.options_model.model_validate(dict(context.options))

    @abstractmethod
    def info(self) -> BackendInfo:
        """Static description of the backend."""

    @abstractmethod
    def prepare(self, spec: JobSpec, seed: int) -> PreparedJob:
        """Parses, validates and transpiles every PUB; raises GatewayError subclasses.

        Runs in a thread of the gateway process; must be thread-safe.
        """

    def prepare_is_cheap(self, spec: JobSpec) -> bool:
        """True when `prepare(spec)` would only hit caches (microseconds), so the gateway may
        call it on the event loop instead of paying for a thread hand-off."""
        return False

    @abstractmethod
    def execute(self, payload: object) -> ExecutionOutcome:
        """Runs a prepared payload; raises ExecutionError on a backend failure.

        For simulators this runs inside a worker process.
        """

    def warm_up(self) -> None:  # noqa: B027 - optional hook with a no-op default
        """Imports and builds what execute needs, so the first job is not slow."""

    def probe_spec(self) -> JobSpec:
        """A tiny job: prepared at start (so the first client does not pay for transpiler
        set-up) and run by health probes."""
        circuit = CircuitSource(
            CircuitLanguage.QASM2,
            'OPENQASM 2.0;\ninclude "qelib1.inc";\nqreg q[1];\ncreg c[1];\nx q[0];\n'
            "measure q -> c;\n",
        )
        return JobSpec(backend=self.context.name, pubs=(SamplerPub(circuit, Bindings(), shots=1),))
