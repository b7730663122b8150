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
    max_shots: int
    memory_budget_bytes: int
    max_queued_jobs: int
    max_result_bytes: int


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

    @property
    def online(self) -> bool:
        return self.ready and self.serving and self.breaker_state != "OPEN"
