"""Jobs, their lifecycle, and their results."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
import numpy.typing as npt

from gateway.domain.bitarray import Counts, UInt8Array
from gateway.domain.circuits import Pub
from gateway.domain.errors import Code, ExecutionError, GatewayError, reason_code
from gateway.domain.pricing import Cost, Usage


class JobState(enum.Enum):
    QUEUED = "QUEUED"
    SUBMITTING = "SUBMITTING"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    # CancelJob was accepted for a running job: its worker is being stopped (in the
    # background) and it ends CANCELLED, or SUCCEEDED/FAILED if it finished first.
    CANCELLING = "CANCELLING"

    @property
    def is_final(self) -> bool:
        return self in FINAL_STATES


FINAL_STATES = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})


class SamplerOutput(enum.Enum):
    """What sampler PUBs return per classical register."""

    SAMPLES_AND_COUNTS = "SAMPLES_AND_COUNTS"
    SAMPLES = "SAMPLES"
    COUNTS = "COUNTS"

    @property
    def samples(self) -> bool:
        return self is not SamplerOutput.COUNTS

    @property
    def counts(self) -> bool:
        return self is not SamplerOutput.SAMPLES


@dataclass(frozen=True)
class JobOptions:
    default_shots: int | None = None
    seed: int | None = None
    default_precision: float | None = None
    sampler_output: SamplerOutput = SamplerOutput.SAMPLES_AND_COUNTS
    # Backend to run on when `backend`'s breaker is open at submission ("" = none).
    fallback_backend: str = ""
    # The job's own run-time limit (> 0, finite); the backend's max_run_time_s still applies,
    # the smaller wins. None: the backend's limit alone.
    max_execution_time_s: float | None = None
    # Backend-specific options, bounded in size and depth at the API edge (JSON values: dict,
    # list, str, float, bool, None) and validated by the backend adapter's own schema.
    provider_options: Mapping[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class JobSpec:
    """What to run: a backend name (without "backends/") and PUBs."""

    backend: str
    pubs: tuple[Pub, ...]
    options: JobOptions = JobOptions()
    # Validated labels (gateway.domain.labels), stored with the job and filterable.
    labels: Mapping[str, str] = field(default_factory=dict)
    # The session to run in (bare id; "" for none).
    session: str = ""


@dataclass(frozen=True)
class JobError:
    """Why a job FAILED; answered as a google.rpc.Status shaped like every RPC error.

    `metadata` is ErrorInfo metadata (lowerCamelCase keys, full resource names as values), e.g.
    "pubIndex" when the failure belongs to one PUB.
    """

    code: Code
    reason: str
    message: str
    metadata: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, reason: str, message: str, metadata: Mapping[str, str] | None = None) -> JobError:
        """A failure with its reason's registered status code."""
        return cls(reason_code(reason), reason, message, dict(metadata or {}))

    @classmethod
    def from_error(cls, error: GatewayError | ExecutionError) -> JobError:
        """A job failure from an error raised while preparing or executing the job."""
        return cls(Code(int(error.code)), error.reason, error.message, dict(error.metadata))


@dataclass(frozen=True)
class ExecutionInfo:
    backend: str
    seed: int | None
    sdk_versions: Mapping[str, str] = field(default_factory=dict)
    layouts: tuple[tuple[int, ...], ...] = ()
    attempts: int = 0
    # Set once the job finished after running (gateway.domain.pricing).
    usage: Usage | None = None
    cost: Cost | None = None


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
    # Long-running behaviour (issue 7): when the record last changed; every state entered, in
    # order (the last time, for a state entered again after a restart); when a SUCCEEDED job's
    # result stops being kept. None/empty for records that predate them.
    updated_at: datetime | None = None
    state_history: tuple[StateTransition, ...] = ()
    expire_at: datetime | None = None
    # While QUEUED: jobs ahead of it on its backend (live, from the in-memory queue; never
    # stored). None otherwise.
    queue_position: int | None = None
    # Labels given at submission (JobSpec.labels).
    labels: Mapping[str, str] = field(default_factory=dict)
    # What sampler PUBs return (JobOptions.sampler_output).
    sampler_output: SamplerOutput = SamplerOutput.SAMPLES_AND_COUNTS
    # The provider's id of the job (REMOTE runners), stored in the transaction that leaves
    # SUBMITTING, so a restarted gateway re-attaches instead of submitting again.
    remote_id: str | None = None
    # The session it runs in (bare id; "" for none): gateway.domain.sessions.
    session: str = ""
    # The W3C traceparent of the span the job was created under ("" with tracing off): GetJob
    # shows its trace id, and a job recovered after a restart links its new spans to it.
    trace_context: str = ""

    @property
    def trace_id(self) -> str:
        """The trace id (32 hex digits) of `trace_context`; "" when there is none."""
        parts = self.trace_context.split("-")
        return parts[1] if len(parts) == 4 else ""


@dataclass(frozen=True)
class StateTransition:
    """A state a job entered, and when."""

    state: JobState
    at: datetime


FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True, eq=False)
class RegisterResult:
    """One classical register's outcomes.

    `samples` is Qiskit's BitArray layout, uint8 of shape (*pub_shape, shots, ceil(num_bits/8)),
    big-endian within a row; None when the job asked for counts only. `counts` holds one Counts
    per binding, row-major over the PUB shape; empty when the job asked for samples only.
    """

    name: str
    num_bits: int
    samples: UInt8Array | None
    counts: tuple[Counts, ...]


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
