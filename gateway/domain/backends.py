"""What a backend is and what it accepts, as clients see it."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

from gateway.domain.circuits import CircuitFeature


class BackendKind(enum.Enum):
    SIMULATOR = "simulator"
    HARDWARE = "hardware"


class Primitive(enum.Enum):
    SAMPLER = "sampler"
    ESTIMATOR = "estimator"


@dataclass(frozen=True)
class BackendLimits:
    """What one job may cost on a backend; checked before any work starts (domain/costs.py)."""

    max_shots: int
    memory_budget_bytes: int
    max_queued_jobs: int
    max_result_bytes: int
    # Parameter bindings of one PUB.
    max_bindings: int = 100_000
    # Shots of the whole job: bindings x shots, summed over its PUBs.
    max_job_shots: int = 10_000_000
    # Estimator work: distinct Pauli terms x qubits x bindings, summed over the job's PUBs.
    max_estimator_work: int = 100_000_000
    # Estimated simulation work (domain/costs.py: units of ~20 ps of one worker, 5e10 a
    # second; the default is ~200 s), summed over the job's PUBs.
    max_execution_work: int = 10_000_000_000_000


@dataclass(frozen=True)
class BackendInfo:
    """Static description of a backend (status and load are added by the gateway)."""

    name: str
    provider: str
    kind: BackendKind
    num_qubits: int
    basis_gates: tuple[str, ...]
    primitives: frozenset[Primitive]
    features: frozenset[CircuitFeature]
    limits: BackendLimits
    properties: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class InstanceStats:
    """A backend's instances (warm workers, provider clients) as a pool or runner counts them."""

    in_use: int
    idle: int
    waiting: int
    min_instances: int
    max_instances: int
    # Most live instances (idle + in use + being created or destroyed) at any one time so far.
    high_water: int
    # Instances destroyed as broken (crashed, killed, recycled) so far.
    discarded: int = 0


@dataclass(frozen=True)
class BackendStatus:
    """A backend's live state, as ListBackends shows it."""

    ready: bool
    serving: bool
    last_probe: datetime | None
    last_error: str
    breaker_state: str  # CLOSED, OPEN or HALF_OPEN
    queue_depth: int
    running: int
    pool_in_use: int
    pool_idle: int
    pool_waiting: int
    pool_min: int
    pool_max: int
    # Most live pool instances at one time since the gateway started.
    pool_peak: int

    @property
    def online(self) -> bool:
        return self.ready and self.serving and self.breaker_state != "OPEN"
