"""Jobs, their lifecycle, and their results."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
import numpy.typing as npt

from gateway.domain.circuits import Pub


class JobState(enum.Enum):
    QUEUED = "QUEUED"
    SUBMITTING = "SUBMITTING"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @property
    def is_final(self) -> bool:
        return self in FINAL_STATES


FINAL_STATES = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})


@dataclass(frozen=True)
class JobOptions:
    default_shots: int | None = None
    seed: int | None = None
    default_precision: float | None = None
    counts_only: bool = False
    # Backend to run on when `backend`'s breaker is open at submission ("" = none).
    fallback_backend: str = ""


@dataclass(frozen=True)
class JobSpec:
    """What to run: a backend name (without "backends/") and PUBs."""

    backend: str
    pubs: tuple[Pub, ...]
    options: JobOptions = JobOptions()


@dataclass(frozen=True)
class JobError:
    reason: str
    message: str


@dataclass(frozen=True)
class ExecutionInfo:
    backend: str
    seed: int | None
    sdk_versions: Mapping[str, str] = field(default_factory=dict)
    layouts: tuple[tuple[int, ...], ...] = ()
    attempts: int = 0


@dataclass(frozen=True)
class JobTimings:
    queued_s: float = 0.0
    transpile_s: float = 0.0
    execute_s: float = 0.0


@dataclass(frozen=True)
class Job:
    """A job's record, without its spec and result (those are fetched separately)."""

    id: str
    tenant: str
    request_id: str
    backend: str
    state: JobState
    created_at: datetime
    num_pubs: int
    seed: int
    # The backend the job queues and runs on: `backend`, or its fallback.
    placement: str = ""
    started_at: datetime | None = None
    ended_at: datetime | None = None
    error: JobError | None = None
    execution: ExecutionInfo | None = None
    timings: JobTimings | None = None
    attempts: int = 0


UInt8Array = npt.NDArray[np.uint8]
FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True, eq=False)
class RegisterResult:
    """One classical register's outcomes.

    `samples` is Qiskit's BitArray layout, uint8 of shape (*pub_shape, shots, ceil(num_bits/8)),
    big-endian within a row; None when the job asked for counts only. `counts` holds one dict per
    binding, row-major over the PUB shape, keyed by bitstrings whose character 0 is the highest
    bit.
    """

    name: str
    num_bits: int
    samples: UInt8Array | None
    counts: tuple[Mapping[str, int], ...]


@dataclass(frozen=True, eq=False)
class SamplerResult:
    shape: tuple[int, ...]
    shots: int
    registers: tuple[RegisterResult, ...]


@dataclass(frozen=True, eq=False)
class EstimatorResult:
    shape: tuple[int, ...]
    expectation_values: FloatArray
    standard_errors: FloatArray
    precision: float


PubResult = SamplerResult | EstimatorResult


@dataclass(frozen=True, eq=False)
class JobResult:
    pubs: tuple[PubResult, ...]
