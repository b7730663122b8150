"""Jobs, their lifecycle, and their results."""

from __future__ import annotations

import enum
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
import numpy.typing as npt

from gateway.domain.circuits import Pub
from gateway.domain.errors import Code, ExecutionError, GatewayError, reason_code


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


@dataclass(frozen=True)
class StateTransition:
    """A state a job entered, and when."""

    state: JobState
    at: datetime


UInt8Array = npt.NDArray[np.uint8]
Int64Array = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]


def packed_width(num_bits: int) -> int:
    """Bytes per packed outcome row of a `num_bits`-bit register."""
    return (num_bits + 7) // 8


class Counts(Mapping[str, int]):
    """One binding's outcome counts as parallel arrays.

    `outcomes` holds the distinct outcomes as packed rows (uint8, shape (k, ceil(num_bits/8)),
    big-endian within a row, as in the samples) in ascending order of value; `counts[i]` (int64,
    shape (k,)) is the number of shots with outcome i, every entry > 0. Memory and encoding are
    linear in k however wide the register: a wide register's bitstrings never exist unless the
    Mapping view ({bitstring: n}, character 0 = highest bit) is used, which is for convenience
    and tests.
    """

    __slots__ = ("_dict", "counts", "num_bits", "outcomes")

    def __init__(self, num_bits: int, outcomes: UInt8Array, counts: Int64Array) -> None:
        width = packed_width(num_bits)
        self.num_bits = num_bits
        self.counts: Int64Array = np.ascontiguousarray(counts, dtype=np.int64).reshape(-1)
        rows = np.ascontiguousarray(outcomes, dtype=np.uint8)
        # A zero-bit register's rows are empty: their number comes from the counts.
        k = rows.size // width if width else self.counts.shape[0]
        if k * width != rows.size or k != self.counts.shape[0]:
            raise ValueError(
                f"{rows.size} outcome bytes for {self.counts.shape[0]} counts of {width} bytes"
            )
        self.outcomes: UInt8Array = rows.reshape(k, width)
        self._dict: dict[str, int] | None = None

    @classmethod
    def from_rows(
        cls, rows: UInt8Array, num_bits: int, weights: Int64Array | None = None
    ) -> Counts:
        """Counts packed rows of shape (n, ceil(num_bits/8)): one per shot, or with `weights`
        one per outcome observed `weights[i]` times (rows may repeat).

        Sorting is O(n log n) in the rows and needs O(n) extra memory, whatever the width.
        """
        width = packed_width(num_bits)
        data = np.ascontiguousarray(rows, dtype=np.uint8)
        if data.ndim != 2 or data.shape[1] != width:
            raise ValueError(f"rows of shape {data.shape}; expected (n, {width})")
        n = data.shape[0]
        w = None if weights is None else np.asarray(weights, dtype=np.int64).reshape(-1)
        if w is not None and w.shape[0] != n:
            raise ValueError(f"{n} rows but {w.shape[0]} weights")
        if n == 0:
            return cls(num_bits, np.zeros((0, width), np.uint8), np.zeros(0, np.int64))
        if width == 0:  # a zero-bit register: every shot is the empty outcome
            total = n if w is None else int(w.sum())
            return cls(num_bits, np.zeros((1, 0), np.uint8), np.array([total], np.int64))
        # Rows as big-endian 64-bit words (left-padded), sorted as integers: ascending value.
        words = (width + 7) // 8
        padded = np.zeros((n, words * 8), dtype=np.uint8)
        padded[:, words * 8 - width :] = data
        keys = padded.view(">u8").reshape(n, words).astype(np.uint64)
        del padded
        if words == 1 and w is None:  # the usual case: an in-place sort of integers
            unique, totals = np.unique(keys[:, 0], return_counts=True)
            as_bytes = unique.astype(">u8").view(np.uint8).reshape(-1, 8)
            outcomes = np.ascontiguousarray(as_bytes[:, 8 - width :])
            return cls(num_bits, outcomes, totals.astype(np.int64, copy=False))
        # lexsort's last key is the primary one: the first (most significant) word.
        order = np.argsort(keys[:, 0]) if words == 1 else np.lexsort(keys.T[::-1])
        ordered = keys[order]
        first = np.ones(n, dtype=bool)
        first[1:] = np.any(ordered[1:] != ordered[:-1], axis=1)
        del ordered, keys
        starts = np.flatnonzero(first)
        totals = np.diff(np.append(starts, n)) if w is None else np.add.reduceat(w[order], starts)
        outcomes = data[order[starts]]
        return cls(num_bits, outcomes, totals.astype(np.int64, copy=False))

    @classmethod
    def from_dict(cls, counts: Mapping[str, int], num_bits: int) -> Counts:
        """From {bitstring: n} (character 0 = highest bit); for tests and small results."""
        width = packed_width(num_bits)
        items = sorted((int(key, 2) if key else 0, int(n)) for key, n in counts.items() if n)
        outcomes = np.frombuffer(
            b"".join(value.to_bytes(width, "big") for value, _ in items), dtype=np.uint8
        )
        return cls(num_bits, outcomes, np.array([n for _, n in items], dtype=np.int64))

    @property
    def total(self) -> int:
        """The number of shots counted."""
        return int(self.counts.sum())

    def _mapping(self) -> dict[str, int]:
        if self._dict is None:
            bits = self.num_bits
            self._dict = {
                (format(int.from_bytes(row.tobytes(), "big"), f"0{bits}b") if bits else ""): int(n)
                for row, n in zip(self.outcomes, self.counts, strict=True)
            }
        return self._dict

    def __getitem__(self, key: str) -> int:
        return self._mapping()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._mapping())

    def __len__(self) -> int:
        return int(self.counts.shape[0])

    def __repr__(self) -> str:
        return f"Counts(num_bits={self.num_bits}, distinct={len(self)}, total={self.total})"

    def __getstate__(self) -> tuple[int, UInt8Array, Int64Array]:
        return (self.num_bits, self.outcomes, self.counts)

    def __setstate__(self, state: tuple[int, UInt8Array, Int64Array]) -> None:
        self.num_bits, self.outcomes, self.counts = state
        self._dict = None


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
