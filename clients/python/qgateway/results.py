"""Friendly, typed views of jobs, results and backends (pure Python, no numpy).

Bit order is the API's (see circuit.proto): a bitstring's character 0 is the highest-index
classical bit of its register; packed samples hold each shot as a big-endian row of
ceil(num_bits / 8) bytes, so a row read as an unsigned integer is the register's value.
"""

from __future__ import annotations

import enum
import hashlib
import math
import numbers
import operator
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Generic, SupportsIndex, TypeAlias, TypeVar, cast

from google.protobuf import timestamp_pb2

from qgateway.errors import QGatewayError, ResultDigestError, from_status
from qgateway.v1 import backend_pb2, job_pb2, job_service_pb2

__all__ = [
    "Backend",
    "BackendLimits",
    "EstimatorPubResult",
    "ExecutionInfo",
    "Index",
    "Job",
    "JobResult",
    "JobState",
    "JobTimings",
    "PackedCounts",
    "PubResult",
    "RegisterData",
    "ResultAssembler",
    "SamplerPubResult",
    "job_result_from_stream",
]

#: A binding index: flat (row-major over the PUB's shape) or one integer per dimension;
#: numpy's integers too (np.argmin's np.intp, np.unravel_index's tuple of them).
Index: TypeAlias = SupportsIndex | Sequence[SupportsIndex]


class JobState(enum.StrEnum):
    """A job's lifecycle state: the proto JobState name without its "JOB_STATE_" prefix."""

    UNSPECIFIED = "UNSPECIFIED"
    QUEUED = "QUEUED"
    SUBMITTING = "SUBMITTING"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    #: CancelJob was accepted; the job ends CANCELLED (or SUCCEEDED/FAILED if it finished first).
    CANCELLING = "CANCELLING"

    @property
    def is_final(self) -> bool:
        """True for SUCCEEDED, FAILED and CANCELLED: the job will not change any more."""
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)

    @classmethod
    def from_proto(cls, value: int) -> JobState:
        """The state for a proto enum number; a number this client does not know is UNSPECIFIED.

        Args:
            value: A qgateway.v1.JobState number.
        """
        try:
            return cls(job_pb2.JobState.Name(value).removeprefix("JOB_STATE_"))
        except ValueError:
            return cls.UNSPECIFIED

    @classmethod
    def parse(cls, value: str | int) -> JobState:
        """Reads "running", "RUNNING", "JOB_STATE_RUNNING" or a proto enum number.

        Raises:
            ValueError: For an unknown name.
        """
        if isinstance(value, int):
            return cls.from_proto(value)
        return cls(value.strip().upper().removeprefix("JOB_STATE_"))

    def to_proto(self) -> int:
        """The proto enum number."""
        return job_pb2.JobState.Value(f"JOB_STATE_{self.value}")


def _enum_name(name_of: Callable[[int], str], value: int, prefix: str) -> str:
    """A proto enum value's name without its prefix; the bare number for an unknown value."""
    try:
        return name_of(value).removeprefix(prefix)
    except ValueError:
        return str(value)


def _utc(ts: timestamp_pb2.Timestamp) -> datetime:
    return ts.ToDatetime(tzinfo=UTC)


def _num_bindings(shape: Sequence[int]) -> int:
    return math.prod(shape)


def _flat_index(index: Index, shape: tuple[int, ...]) -> int:
    """Row-major flat binding index for a flat or per-dimension index (negatives count back)."""
    size = _num_bindings(shape)
    if isinstance(index, int | numbers.Integral):
        # numbers.Integral takes numpy's integers (np.argmin's np.intp) too: read as a
        # sequence, they raised "'numpy.int64' object is not iterable".
        flat = int(index)
        flat = flat + size if flat < 0 else flat
        if not 0 <= flat < size:
            raise IndexError(f"binding index {index} out of range for shape {shape}")
        return flat
    parts = tuple(operator.index(part) for part in cast(Sequence[SupportsIndex], index))
    if len(parts) != len(shape):
        raise IndexError(f"index {parts} does not match shape {shape}")
    flat = 0
    for part, dim in zip(parts, shape, strict=True):
        pos = part + dim if part < 0 else part
        if not 0 <= pos < dim:
            raise IndexError(f"index {parts} out of range for shape {shape}")
        flat = flat * dim + pos
    return flat


@dataclass(frozen=True)
class RegisterData:
    """Outcomes of one classical register across a PUB's bindings.

    Attributes:
        name: Register name.
        num_bits: Register width.
        shape: The PUB's shape (parameter sweep shape; () for a single binding).
        shots: Shots per binding.
        samples: Packed samples, Qiskit BitArray layout: shape (*shape, shots,
            ceil(num_bits / 8)), row-major, big-endian within each row. Empty when the job asked
            for counts only (sampler_output COUNTS).
        counts_by_binding: The gateway's counts, one {bitstring: shots} mapping per binding in
            row-major order (decoded from the packed form when first read); empty when the job
            asked for samples only.
    """

    name: str
    num_bits: int
    shape: tuple[int, ...]
    shots: int
    samples: bytes = field(repr=False)
    counts_by_binding: tuple[Mapping[str, int], ...] = field(repr=False)

    @property
    def num_bytes(self) -> int:
        """Bytes per packed shot."""
        return (self.num_bits + 7) // 8

    @property
    def num_bindings(self) -> int:
        """Number of parameter bindings (product of shape)."""
        return _num_bindings(self.shape)

    @property
    def has_samples(self) -> bool:
        """Whether per-shot samples are present (False when the job asked for counts only)."""
        return bool(self.samples) or self.num_bindings * self.shots * self.num_bytes == 0

    def ints(self, index: Index = 0) -> list[int]:
        """Each shot's outcome as an integer (bit i of the value is classical bit i).

        Args:
            index: Binding index, flat or per dimension.

        Raises:
            ValueError: Without samples (sampler_output COUNTS), or when they have the wrong
                length.
        """
        if not self.has_samples:
            raise ValueError(
                f"register {self.name!r} has no per-shot samples: the job asked for counts only "
                "(sampler_output COUNTS)"
            )
        row = self.num_bytes
        expected = self.num_bindings * self.shots * row
        if len(self.samples) != expected:
            raise ValueError(
                f"register {self.name!r}: {len(self.samples)} bytes of samples, expected "
                f"{expected} for shape {self.shape}, {self.shots} shots, {self.num_bits} bits"
            )
        start = _flat_index(index, self.shape) * self.shots * row
        # Padding bits are the first byte's high bits and should be zero; mask them anyway so a
        # sloppy producer cannot make a value wider than the register.
        mask = (1 << self.num_bits) - 1
        data = self.samples
        return [
            int.from_bytes(data[start + k * row : start + (k + 1) * row], "big") & mask
            for k in range(self.shots)
        ]

    def bitstrings(self, index: Index = 0) -> list[str]:
        """Each shot's outcome as a num_bits-character bitstring (character 0 = highest bit).

        Args:
            index: Binding index, flat or per dimension.

        Raises:
            ValueError: Without samples (sampler_output COUNTS).
        """
        width = self.num_bits
        if width == 0:
            return [""] * len(self.ints(index))
        return [format(value, f"0{width}b") for value in self.ints(index)]

    def counts(self, index: Index = 0) -> dict[str, int]:
        """Outcome counts of one binding: bitstring -> shots.

        Uses the gateway's counts, or counts the samples when the result carries none.

        Args:
            index: Binding index, flat or per dimension.
        """
        if self.counts_by_binding:
            if len(self.counts_by_binding) != self.num_bindings:
                raise ValueError(
                    f"register {self.name!r}: {len(self.counts_by_binding)} counts entries for "
                    f"{self.num_bindings} bindings"
                )
            return dict(self.counts_by_binding[_flat_index(index, self.shape)])
        return dict(Counter(self.bitstrings(index)))

    def get_int_counts(self, index: Index = 0) -> dict[int, int]:
        """Outcome counts keyed by the register's integer value.

        Args:
            index: Binding index, flat or per dimension.
        """
        return {int(key, 2) if key else 0: n for key, n in self.counts(index).items()}

    @classmethod
    def from_proto(
        cls, msg: job_pb2.RegisterResult, shape: tuple[int, ...], shots: int
    ) -> RegisterData:
        """Wraps a RegisterResult of a PUB with the given shape and shots."""
        return cls(
            name=msg.name,
            num_bits=msg.num_bits,
            shape=shape,
            shots=shots,
            samples=bytes(msg.samples),
            counts_by_binding=tuple(PackedCounts.from_proto(c, msg.num_bits) for c in msg.counts),
        )


class PackedCounts(Mapping[str, int]):
    """One binding's counts as the gateway sends them, read as {bitstring: shots}.

    The distinct outcomes are packed rows of ceil(num_bits / 8) bytes (big-endian, ascending);
    `counts[i]` is the number of shots of outcome i. Bitstrings (character 0 = highest bit,
    Qiskit's order) are made when the mapping is first read, so a large result costs nothing
    for the bindings nobody looks at.
    """

    __slots__ = ("_decoded", "counts", "num_bits", "outcomes")

    def __init__(self, outcomes: bytes, counts: Sequence[int], num_bits: int) -> None:
        width = (num_bits + 7) // 8
        if len(outcomes) != width * len(counts) and width:
            raise ValueError(
                f"{len(outcomes)} outcome bytes for {len(counts)} counts of {width} bytes"
            )
        self.outcomes = outcomes
        self.counts = counts
        self.num_bits = num_bits
        self._decoded: dict[str, int] | None = None

    @classmethod
    def from_proto(cls, msg: job_pb2.Counts, num_bits: int) -> PackedCounts:
        """Wraps a Counts message (its arrays are read once, here)."""
        return cls(bytes(msg.outcomes), list(msg.counts), num_bits)

    def _mapping(self) -> dict[str, int]:
        if self._decoded is None:
            keys = _bitstrings(self.outcomes, self.num_bits, len(self.counts))
            out = dict(zip(keys, self.counts, strict=True))
            if len(out) != len(keys):  # repeated outcomes (the gateway sends none): add up
                out = {}
                for key, n in zip(keys, self.counts, strict=True):
                    out[key] = out.get(key, 0) + n
            self._decoded = out
        return self._decoded

    def __getitem__(self, key: str) -> int:
        return self._mapping()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._mapping())

    def __len__(self) -> int:
        return len(self._mapping())

    def __repr__(self) -> str:
        return f"PackedCounts({self._mapping()!r})"


# Rows turned into bitstrings per block: one integer's binary text per block is several times
# faster than formatting row by row, and the block bounds the text's size.
_BITSTRING_BLOCK_BYTES = 1 << 16


def _bitstrings(data: bytes, num_bits: int, count: int) -> list[str]:
    """`count` packed big-endian rows as bitstrings (character 0 = highest bit); the padding
    bits, the first byte's high bits, are left out."""
    if num_bits == 0:
        return [""] * count
    width = (num_bits + 7) // 8
    row_bits = 8 * width
    pad = row_bits - num_bits
    rows_per_block = max(1, _BITSTRING_BLOCK_BYTES // width)
    out: list[str] = []
    for first in range(0, count, rows_per_block):
        block = data[first * width : (first + rows_per_block) * width]
        text = format(int.from_bytes(block, "big"), f"0{len(block) * 8}b")
        out.extend(text[i + pad : i + row_bits] for i in range(0, len(text), row_bits))
    return out


def decode_counts(msg: job_pb2.Counts, num_bits: int) -> dict[str, int]:
    """One binding's counts (packed outcome rows + parallel counts) as {bitstring: shots}."""
    return dict(PackedCounts.from_proto(msg, num_bits))


@dataclass(frozen=True)
class SamplerPubResult:
    """Result of one sampler PUB.

    Attributes:
        shape: The PUB's shape.
        shots: Shots per binding.
        registers: Register name -> data, in declaration order; a loose bit (OpenQASM 3's
            `bit b;`, in no register) is a one-bit register named after it, after all the
            registers (Qiskit's importer leaves such bits out of its registers).
    """

    shape: tuple[int, ...]
    shots: int
    registers: dict[str, RegisterData]

    @property
    def num_bindings(self) -> int:
        """Number of parameter bindings (product of shape)."""
        return _num_bindings(self.shape)

    @property
    def register_names(self) -> list[str]:
        """Register names in declaration order."""
        return list(self.registers)

    def __getitem__(self, name: str) -> RegisterData:
        return self.register(name)

    def register(self, name: str) -> RegisterData:
        """One register's data.

        Raises:
            KeyError: For a name the circuit does not measure into.
        """
        try:
            return self.registers[name]
        except KeyError:
            raise KeyError(
                f"no classical register {name!r}; registers: {', '.join(self.registers) or '-'}"
            ) from None

    def _single(self, register: str | None) -> RegisterData | None:
        """The register asked for, the only register, or None when several must be joined."""
        if register is not None:
            return self.register(register)
        if not self.registers:
            raise ValueError("this PUB has no classical registers (the circuit measures nothing)")
        if len(self.registers) == 1:
            return next(iter(self.registers.values()))
        return None

    def bitstrings(self, index: Index = 0, register: str | None = None) -> list[str]:
        """Each shot's outcome as a bitstring.

        With several registers and none named, each shot's registers are joined with a space,
        the result's last register first (Qiskit's legacy `Result.get_counts` format). The
        result lists the declared registers, then each OpenQASM 3 `bit` variable declared
        outside a register, so those come first here.

        Args:
            index: Binding index, flat or per dimension.
            register: A register name; None for the only register or all of them joined.

        Raises:
            ValueError: When samples are needed but the job asked for counts only.
        """
        single = self._single(register)
        if single is not None:
            return single.bitstrings(index)
        regs = list(self.registers.values())
        self._require_samples(regs)
        columns = [reg.bitstrings(index) for reg in reversed(regs)]
        return [" ".join(parts) for parts in zip(*columns, strict=True)]

    def counts(self, index: Index = 0, register: str | None = None) -> dict[str, int]:
        """Outcome counts of one binding.

        Args:
            index: Binding index, flat or per dimension.
            register: A register name; None for the only register, or for all registers joined
                per shot (as `bitstrings` joins them), which needs the samples.

        Raises:
            ValueError: Several registers, none named, and the job asked for counts only.
        """
        single = self._single(register)
        if single is not None:
            return single.counts(index)
        return dict(Counter(self.bitstrings(index)))

    def get_int_counts(self, index: Index = 0, register: str | None = None) -> dict[int, int]:
        """Counts keyed by integer value; joined registers read as one concatenated bitstring.

        Args:
            index: Binding index, flat or per dimension.
            register: As for `counts`.
        """
        single = self._single(register)
        if single is not None:
            return single.get_int_counts(index)
        out: dict[int, int] = {}
        for key, n in self.counts(index).items():
            digits = key.replace(" ", "")
            value = int(digits, 2) if digits else 0
            out[value] = out.get(value, 0) + n
        return out

    def _require_samples(self, regs: Sequence[RegisterData]) -> None:
        if all(reg.has_samples for reg in regs):
            return
        names = ", ".join(reg.name for reg in regs)
        raise ValueError(
            f"the job asked for counts only (sampler_output COUNTS), so the per-shot samples "
            f"needed to join registers {names} are not available; name one register, e.g. "
            f"counts(register={regs[-1].name!r})"
        )

    @classmethod
    def from_proto(cls, msg: job_pb2.SamplerPubResult) -> SamplerPubResult:
        """Wraps a SamplerPubResult message."""
        shape = tuple(msg.shape)
        registers = {
            reg.name: RegisterData.from_proto(reg, shape, msg.shots) for reg in msg.registers
        }
        return cls(shape=shape, shots=msg.shots, registers=registers)


@dataclass(frozen=True)
class EstimatorPubResult:
    """Result of one estimator PUB.

    Attributes:
        shape: The PUB's shape (observables broadcast against the parameter sweep).
        expectation_values: Row-major over shape.
        standard_errors: Row-major over shape.
        precision: The precision the PUB ran with (0: exact).
    """

    shape: tuple[int, ...]
    expectation_values: list[float]
    standard_errors: list[float]
    precision: float

    def expectation_value(self, index: Index = 0) -> float:
        """One expectation value, by flat or per-dimension index."""
        return self.expectation_values[_flat_index(index, self.shape)]

    def standard_error(self, index: Index = 0) -> float:
        """One standard error, by flat or per-dimension index."""
        return self.standard_errors[_flat_index(index, self.shape)]

    @classmethod
    def from_proto(cls, msg: job_pb2.EstimatorPubResult) -> EstimatorPubResult:
        """Wraps an EstimatorPubResult message."""
        return cls(
            shape=tuple(msg.shape),
            expectation_values=list(msg.expectation_values),
            standard_errors=list(msg.standard_errors),
            precision=msg.precision,
        )


PubResult: TypeAlias = SamplerPubResult | EstimatorPubResult


@dataclass(frozen=True)
class JobResult:
    """A job's result: one entry per PUB, in submission order.

    Attributes:
        pub_results: Per-PUB results.
    """

    pub_results: list[PubResult]

    def __len__(self) -> int:
        return len(self.pub_results)

    def __iter__(self) -> Iterator[PubResult]:
        return iter(self.pub_results)

    def __getitem__(self, pub: int) -> PubResult:
        return self.pub_results[pub]

    def sampler(self, pub: int = 0) -> SamplerPubResult:
        """A sampler PUB's result.

        Raises:
            TypeError: When that PUB is an estimator PUB.
        """
        result = self.pub_results[pub]
        if not isinstance(result, SamplerPubResult):
            raise TypeError(f"PUB {pub} is an estimator PUB; it has no counts")
        return result

    def estimator(self, pub: int = 0) -> EstimatorPubResult:
        """An estimator PUB's result.

        Raises:
            TypeError: When that PUB is a sampler PUB.
        """
        result = self.pub_results[pub]
        if not isinstance(result, EstimatorPubResult):
            raise TypeError(f"PUB {pub} is a sampler PUB; it has no expectation values")
        return result

    def counts(self, pub: int = 0, register: str | None = None, index: Index = 0) -> dict[str, int]:
        """Counts of a sampler PUB's binding; see `SamplerPubResult.counts`.

        Args:
            pub: PUB index.
            register: Register name, or None for the only register / all registers joined.
            index: Binding index, flat or per dimension.
        """
        return self.sampler(pub).counts(index, register)

    @classmethod
    def from_proto(cls, msg: job_pb2.JobResult) -> JobResult:
        """Wraps a JobResult message.

        Raises:
            ValueError: For a PUB result that is neither sampler nor estimator.
        """
        results: list[PubResult] = []
        for i, pub in enumerate(msg.pub_results):
            kind = pub.WhichOneof("result")
            if kind == "sampler":
                results.append(SamplerPubResult.from_proto(pub.sampler))
            elif kind == "estimator":
                results.append(EstimatorPubResult.from_proto(pub.estimator))
            else:
                raise ValueError(f"PUB result {i} is neither a sampler nor an estimator result")
        return cls(results)


@dataclass(frozen=True)
class ExecutionInfo:
    """What a job really ran with.

    Attributes:
        backend: Backend resource name it ran on.
        seed: Sampling seed used (None if the backend reported none).
        sdk_versions: SDK name -> version.
        layouts: Per PUB, the physical qubit of each virtual qubit.
        attempts: How many times execution started.
    """

    backend: str
    seed: int | None
    sdk_versions: dict[str, str]
    layouts: list[list[int]]
    attempts: int


@dataclass(frozen=True)
class Price:
    """A backend's price table: per job, per shot, per second of execution, in `unit`."""

    per_task: float
    per_shot: float
    per_second: float
    unit: str


@dataclass(frozen=True)
class Cost:
    """An amount in a currency or credit unit (e.g. "USD")."""

    amount: float
    unit: str

    @classmethod
    def from_proto(cls, msg: job_pb2.Cost) -> Cost:
        return cls(amount=msg.amount, unit=msg.unit)


@dataclass(frozen=True)
class JobUsage:
    """What a finished job used.

    Attributes:
        shots: Shots run, summed over sampler PUBs and their bindings.
        execution_time: QPU time where the provider reports it, else wall time in the worker.
        provider_cost: What the provider billed, where it reports it.
    """

    shots: int
    execution_time: timedelta
    provider_cost: Cost | None = None


@dataclass(frozen=True)
class CostEstimate:
    """A job's cost before it runs (`Client.validate`).

    Attributes:
        shots: Shots it would run.
        cost: The backend's per-task and per-shot charges; None without a price table.
        per_second_excluded: The backend also charges per second, which only the run tells.
    """

    shots: int
    cost: Cost | None
    per_second_excluded: bool

    @classmethod
    def from_proto(cls, msg: job_pb2.CostEstimate) -> CostEstimate:
        return cls(
            shots=msg.shots,
            cost=Cost.from_proto(msg.cost) if msg.HasField("cost") else None,
            per_second_excluded=msg.per_second_excluded,
        )


@dataclass(frozen=True)
class JobTimings:
    """Time spent per phase (None for a phase not reported)."""

    queued: timedelta | None
    transpile: timedelta | None
    execute: timedelta | None


@dataclass(frozen=True)
class StateTransition:
    """A state a job entered, and when (UTC)."""

    state: JobState
    time: datetime


@dataclass(frozen=True)
class Job:
    """A job as the gateway reported it.

    Attributes:
        name: Resource name, "jobs/{job}".
        state: Current state.
        tenant: Owning tenant.
        backend: Backend resource name it was submitted to.
        create_time: Acceptance time (UTC).
        start_time: Last execution start (UTC), if started.
        end_time: Time of the final state (UTC), if final.
        error_reason: The ErrorInfo reason of Job.error when FAILED.
        error_message: Job.error.message when FAILED.
        error: Job.error (a google.rpc.Status) as a typed error when FAILED: its `code`
            (grpc.StatusCode), `reason`, `message` and `metadata` (e.g. "pubIndex").
        execution: What it ran with, once it ran.
        timings: Phase timings, once finished.
        num_pubs: Number of PUBs.
        result: The result, when the client fetched it (Run, or GetJobResult/StreamJobResult).
        result_too_large: Run answered without the result: it must be streamed.
        result_expired: The job SUCCEEDED but its result was past `expire_time` when the
            client fetched it (get_job, wait, run_pubs): the gateway no longer keeps it, and
            `result` is None.
        update_time: When the job last changed (UTC).
        state_history: Every state it entered, in order, with the time (the last time, for a
            state entered again after a gateway restart).
        expire_time: When a SUCCEEDED job's result stops being kept (UTC); after it the result
            answers NotFoundError with reason RESULT_EXPIRED.
        queue_position: While QUEUED, the number of jobs ahead of it on its backend (0: next);
            None in other states. An estimate under fair share: it can also grow.
        heartbeat: True for a job that `watch(..., heartbeats=True)` yielded from a WatchJob
            heartbeat (nothing but perhaps its queue position changed).
        labels: The labels given at submission.
        usage: What it used, once it finished after running.
        cost: What it cost (the provider's bill, else the backend's price table), once it
            finished on a backend with either.
        created: For a job returned by submit or run: True when that call created it (its
            own retries included), False when it returned the job of an earlier call with the
            same request_id. With a request_id of your own, a retry by the client whose
            earlier attempt created the job (its answer lost) also says False: the gateway
            cannot tell that attempt from an earlier call. None for jobs from other calls.
        trace_id: W3C trace id (32 hex digits) of the trace the job was created in; "" when
            the gateway's tracing was off.
        proto: The message as received.
    """

    name: str
    state: JobState
    tenant: str = ""
    backend: str = ""
    create_time: datetime | None = None
    start_time: datetime | None = None
    end_time: datetime | None = None
    error_reason: str = ""
    error_message: str = ""
    error: QGatewayError | None = field(default=None, compare=False)
    execution: ExecutionInfo | None = None
    timings: JobTimings | None = None
    num_pubs: int = 0
    result: JobResult | None = None
    result_too_large: bool = False
    result_expired: bool = False
    update_time: datetime | None = None
    state_history: tuple[StateTransition, ...] = ()
    expire_time: datetime | None = None
    queue_position: int | None = None
    heartbeat: bool = field(default=False, compare=False)
    labels: Mapping[str, str] = field(default_factory=dict, hash=False)
    usage: JobUsage | None = None
    cost: Cost | None = None
    created: bool | None = field(default=None, compare=False)
    trace_id: str = field(default="", compare=False)
    proto: job_pb2.Job | None = field(default=None, repr=False, compare=False)

    @property
    def id(self) -> str:
        """The name without its "jobs/" prefix."""
        return self.name.removeprefix("jobs/")

    @property
    def done(self) -> bool:
        """Whether the job reached a final state."""
        return self.state.is_final

    @classmethod
    def from_proto(
        cls,
        msg: job_pb2.Job,
        *,
        created: bool | None = None,
        result: JobResult | None = None,
        result_too_large: bool = False,
    ) -> Job:
        """Wraps a Job message; `created`, `result` and `result_too_large` come from the
        response around it (Run, SubmitJob)."""

        execution = None
        if msg.HasField("execution"):
            ex = msg.execution
            execution = ExecutionInfo(
                backend=ex.backend,
                seed=ex.seed if ex.HasField("seed") else None,
                sdk_versions=dict(ex.sdk_versions),
                layouts=[list(layout.physical_qubits) for layout in ex.layouts],
                attempts=ex.attempts,
            )
        timings = None
        if msg.HasField("timings"):
            t = msg.timings
            timings = JobTimings(
                queued=t.queued.ToTimedelta() if t.HasField("queued") else None,
                transpile=t.transpile.ToTimedelta() if t.HasField("transpile") else None,
                execute=t.execute.ToTimedelta() if t.HasField("execute") else None,
            )
        error = from_status(msg.error) if msg.HasField("error") else None
        usage = None
        if msg.HasField("usage"):
            usage = JobUsage(
                shots=msg.usage.shots,
                execution_time=msg.usage.execution_duration.ToTimedelta(),
                provider_cost=(
                    Cost.from_proto(msg.usage.provider_cost)
                    if msg.usage.HasField("provider_cost")
                    else None
                ),
            )
        return cls(
            name=msg.name,
            state=JobState.from_proto(msg.state),
            tenant=msg.tenant,
            backend=msg.backend,
            create_time=_utc(msg.create_time) if msg.HasField("create_time") else None,
            start_time=_utc(msg.start_time) if msg.HasField("start_time") else None,
            end_time=_utc(msg.end_time) if msg.HasField("end_time") else None,
            error_reason=error.reason if error is not None else "",
            error_message=msg.error.message,
            error=error,
            execution=execution,
            timings=timings,
            num_pubs=msg.num_pubs,
            update_time=_utc(msg.update_time) if msg.HasField("update_time") else None,
            state_history=tuple(
                StateTransition(JobState.from_proto(t.state), _utc(t.time))
                for t in msg.state_history
            ),
            expire_time=_utc(msg.expire_time) if msg.HasField("expire_time") else None,
            queue_position=msg.queue_position if msg.HasField("queue_position") else None,
            labels=dict(msg.labels),
            usage=usage,
            cost=Cost.from_proto(msg.cost) if msg.HasField("cost") else None,
            trace_id=msg.trace_id,
            proto=msg,
            created=created,
            result=result,
            result_too_large=result_too_large,
        )


@dataclass(frozen=True)
class BackendLimits:
    """Admission limits of a backend, as they apply to the caller (0: not limited / not
    modelled)."""

    max_shots: int
    memory_budget_bytes: int
    max_queued_jobs: int
    max_result_bytes: int
    max_job_shots: int = 0
    max_execution_seconds: float = 0.0


@dataclass(frozen=True)
class BackendHealth:
    """The last health probe of a backend (FULL view).

    Attributes:
        serving: Whether the last probe succeeded.
        last_probe_time: When it finished; None before the first.
        last_error: Why it failed ("" when it succeeded): a reason and a short description,
            e.g. "PROBE_FAILED: worker crashed".
    """

    serving: bool
    last_probe_time: datetime | None
    last_error: str


@dataclass(frozen=True)
class PoolStats:
    """Occupancy of a backend's instance pool (FULL view)."""

    in_use: int
    idle: int
    waiting: int
    min_instances: int
    max_instances: int
    peak_instances: int


@dataclass(frozen=True)
class Backend:
    """A backend jobs can run on.

    Attributes:
        name: Resource name, "backends/{backend}".
        provider: Adapter serving it, e.g. "aer".
        kind: "SIMULATOR" or "HARDWARE".
        num_qubits: Number of qubits.
        basis_gates: Native gates.
        primitives: "SAMPLER" and/or "ESTIMATOR".
        features: Supported circuit features, e.g. "MID_CIRCUIT_MEASUREMENT".
        status: "ONLINE" or "OFFLINE".
        queue_length: Jobs waiting.
        running_jobs: Jobs executing.
        limits: Admission limits as they apply to the caller, if reported.
        properties: Adapter-specific description.
        health: Last health probe (FULL view only; None in BASIC).
        breaker_state: "CLOSED", "OPEN" or "HALF_OPEN" (FULL view only; None in BASIC).
        pool: Instance pool occupancy (FULL view only; None in BASIC).
        price: What a job costs there, if it has a price table.
    """

    name: str
    provider: str
    kind: str
    num_qubits: int
    basis_gates: list[str]
    primitives: list[str]
    features: list[str]
    status: str
    queue_length: int
    running_jobs: int
    limits: BackendLimits | None
    properties: dict[str, str]
    health: BackendHealth | None = None
    breaker_state: str | None = None
    pool: PoolStats | None = None
    price: Price | None = None

    @property
    def id(self) -> str:
        """The name without its "backends/" prefix."""
        return self.name.removeprefix("backends/")

    @classmethod
    def from_proto(cls, msg: backend_pb2.Backend) -> Backend:
        """Wraps a Backend message."""
        limits = None
        if msg.HasField("limits"):
            lim = msg.limits
            limits = BackendLimits(
                max_shots=lim.max_shots,
                memory_budget_bytes=lim.memory_budget_bytes,
                max_queued_jobs=lim.max_queued_jobs,
                max_result_bytes=lim.max_result_bytes,
                max_job_shots=lim.max_job_shots,
                max_execution_seconds=lim.max_execution_seconds,
            )
        health = None
        if msg.HasField("health"):
            h = msg.health
            health = BackendHealth(
                serving=h.serving,
                last_probe_time=_utc(h.last_probe_time) if h.HasField("last_probe_time") else None,
                last_error=h.last_error,
            )
        pool = None
        if msg.HasField("pool"):
            p = msg.pool
            pool = PoolStats(
                in_use=p.in_use,
                idle=p.idle,
                waiting=p.waiting,
                min_instances=p.min_instances,
                max_instances=p.max_instances,
                peak_instances=p.peak_instances,
            )
        breaker = None
        if msg.breaker_state != backend_pb2.BREAKER_STATE_UNSPECIFIED:
            breaker = _enum_name(backend_pb2.BreakerState.Name, msg.breaker_state, "BREAKER_STATE_")
        return cls(
            name=msg.name,
            provider=msg.provider,
            kind=_enum_name(backend_pb2.BackendKind.Name, msg.kind, "BACKEND_KIND_"),
            num_qubits=msg.num_qubits,
            basis_gates=list(msg.basis_gates),
            primitives=[
                _enum_name(backend_pb2.Primitive.Name, p, "PRIMITIVE_") for p in msg.primitives
            ],
            features=[
                _enum_name(backend_pb2.CircuitFeature.Name, f, "CIRCUIT_FEATURE_")
                for f in msg.features
            ],
            status=_enum_name(backend_pb2.BackendStatus.Name, msg.status, "BACKEND_STATUS_"),
            queue_length=msg.queue_length,
            running_jobs=msg.running_jobs,
            limits=limits,
            properties=dict(msg.properties),
            health=health,
            breaker_state=breaker,
            pool=pool,
            price=(
                Price(
                    per_task=msg.price.per_task,
                    per_shot=msg.price.per_shot,
                    per_second=msg.price.per_second,
                    unit=msg.price.unit,
                )
                if msg.HasField("price")
                else None
            ),
        )


# --- Reassembling a streamed result -----------------------------------------------------------


def _malformed(text: str) -> ValueError:
    return ValueError(f"malformed result stream: {text}")


class _ByteRuns:
    """One register's samples, written chunk by chunk at their offsets (a resumed stream
    writes a binding's bytes again, at the same offsets)."""

    def __init__(self, where: str, expected: int) -> None:
        self.where = where
        self.expected = expected
        self.data: bytearray | None = None
        self.runs: list[tuple[int, int]] = []

    def write(self, offset: int, data: bytes) -> None:
        end = offset + len(data)
        if offset < 0 or end > self.expected:
            raise _malformed(
                f"{self.where}: samples chunk [{offset}, {end}) beyond {self.expected} bytes"
            )
        if self.data is None:
            self.data = bytearray(self.expected)
        self.data[offset:end] = data
        self.runs.append((offset, end))

    def finish(self) -> bytes:
        if self.data is None:
            return b""  # no chunk at all: the job asked for counts only
        covered = 0
        for start, end in sorted(self.runs):
            if start > covered:
                break
            covered = max(covered, end)
        if covered != self.expected:
            raise _malformed(
                f"{self.where}: samples cover {covered} of {self.expected} bytes contiguously"
            )
        return bytes(self.data)


class _CountsParts:
    """One register's counts, per binding, written in slices at entry offsets."""

    def __init__(self, where: str, bindings: int, num_bits: int, shots: int) -> None:
        self.where = where
        self.bindings = bindings
        self.row = (num_bits + 7) // 8
        self.shots = shots
        self.slices: dict[int, dict[int, tuple[bytes, list[int]]]] = {}

    def write(self, binding: int, offset: int, counts: job_pb2.Counts) -> None:
        if not 0 <= binding < self.bindings:
            raise _malformed(f"{self.where}: binding {binding} of {self.bindings}")
        if offset < 0:
            raise _malformed(f"{self.where}: binding {binding} counts at offset {offset}")
        outcomes, entries = bytes(counts.outcomes), list(counts.counts)
        if self.row and len(outcomes) != self.row * len(entries):
            raise _malformed(
                f"{self.where}: binding {binding}: {len(outcomes)} outcome bytes for "
                f"{len(entries)} counts of {self.row} bytes"
            )
        self.slices.setdefault(binding, {})[offset] = (outcomes, entries)

    def discard(self, first_binding: int) -> None:
        """Forgets the slices of bindings from `first_binding` on (a resume sends them again)."""
        for binding in [b for b in self.slices if b >= first_binding]:
            del self.slices[binding]

    def finish(self, into: job_pb2.RegisterResult) -> None:
        if not self.slices:
            return  # no counts at all: the job asked for samples only
        for binding in range(self.bindings):
            parts = self.slices.get(binding)
            if not parts:
                raise _malformed(f"{self.where}: no counts for binding {binding}")
            outcomes: list[bytes] = []
            entries: list[int] = []
            for offset in sorted(parts):
                if offset != len(entries):
                    raise _malformed(
                        f"{self.where}: binding {binding} counts slice at {offset}, expected "
                        f"{len(entries)}"
                    )
                data, values = parts[offset]
                outcomes.append(data)
                entries.extend(values)
            if sum(entries) != self.shots:
                raise _malformed(
                    f"{self.where}: binding {binding} counts add up to {sum(entries)}, not "
                    f"{self.shots} shots"
                )
            into.counts.add(outcomes=b"".join(outcomes), counts=entries)


_T = TypeVar("_T")


class _Slots(Generic[_T]):
    """A row-major array filled by runs at offsets; all-or-nothing at the end."""

    def __init__(self, where: str, size: int) -> None:
        self.where = where
        self.items: list[_T | None] = [None] * size
        self.touched = False

    def write(self, offset: int, values: Sequence[_T]) -> None:
        end = offset + len(values)
        if offset < 0 or end > len(self.items):
            raise _malformed(f"{self.where}: entries [{offset}, {end}) beyond {len(self.items)}")
        self.items[offset:end] = values
        self.touched = self.touched or bool(values)

    def finish(self, required: bool = False) -> list[_T]:
        if not self.touched and not (required and self.items):
            return []
        missing = sum(1 for item in self.items if item is None)
        if missing:
            raise _malformed(f"{self.where}: {missing} of {len(self.items)} entries missing")
        return [item for item in self.items if item is not None]


class _PubParts:
    """Header and data chunks of one PUB."""

    def __init__(self, index: int, header: job_pb2.PubResult) -> None:
        self.index = index
        self.header = _bare_header(header)
        self.kind = header.WhichOneof("result")
        self.samples: list[_ByteRuns] = []
        self.counts: list[_CountsParts] = []
        self.shot_bytes: list[int] = []
        self.values: _Slots[float] = _Slots(f"PUB {index} expectation values", 0)
        self.errors: _Slots[float] = _Slots(f"PUB {index} standard errors", 0)
        if self.kind == "sampler":
            sampler = self.header.sampler
            bindings = _num_bindings(sampler.shape)
            for r, reg in enumerate(sampler.registers):
                where = f"PUB {index} register {r} ({reg.name})"
                row = (reg.num_bits + 7) // 8
                self.samples.append(_ByteRuns(where, bindings * sampler.shots * row))
                self.counts.append(_CountsParts(where, bindings, reg.num_bits, sampler.shots))
                self.shot_bytes.append(sampler.shots * row)
        elif self.kind == "estimator":
            size = _num_bindings(self.header.estimator.shape)
            self.values = _Slots(f"PUB {index} expectation values", size)
            self.errors = _Slots(f"PUB {index} standard errors", size)
        else:
            raise _malformed(f"PUB {index} header is neither a sampler nor an estimator result")

    def register(self, register_index: int) -> int:
        if self.kind != "sampler":
            raise _malformed(f"sampler chunk for estimator PUB {self.index}")
        if not 0 <= register_index < len(self.samples):
            raise _malformed(f"PUB {self.index} has no register {register_index}")
        return register_index

    def discard(self, first_binding: int) -> None:
        for counts in self.counts:
            counts.discard(first_binding)

    def finish(self, out: job_pb2.PubResult) -> None:
        out.CopyFrom(self.header)
        if self.kind == "sampler":
            for reg, samples, counts in zip(
                out.sampler.registers, self.samples, self.counts, strict=True
            ):
                reg.samples = samples.finish()
                counts.finish(reg)
        else:
            # Every PUB answers expectation values; standard errors could in principle be left
            # out, but then for all entries.
            out.estimator.expectation_values.extend(self.values.finish(required=True))
            out.estimator.standard_errors.extend(self.errors.finish())


def _bare_header(header: job_pb2.PubResult) -> job_pb2.PubResult:
    """A header with its data fields cleared, so chunks are the only source of data."""
    out = job_pb2.PubResult()
    out.CopyFrom(header)
    if out.HasField("sampler"):
        for reg in out.sampler.registers:
            reg.ClearField("samples")
            reg.ClearField("counts")
    elif out.HasField("estimator"):
        out.estimator.ClearField("expectation_values")
        out.estimator.ClearField("standard_errors")
    return out


class ResultAssembler:
    """Rebuilds a JobResult from StreamJobResult responses, across resumed streams.

    Feed every response to `add` in order (from a sync or an async stream). If a stream
    breaks, call `resume_position` for the (PUB, binding) to start the next stream from, and
    feed that stream to the same assembler: the gateway sends a PUB's bindings in order, so
    every binding before the one the last message belonged to is complete, and that binding is
    fetched again. `proto` or `result` then checks the data is complete and that its SHA-256 is
    the one the gateway sent last.

    Args:
        job: The job's name, for error messages.
    """

    def __init__(self, job: str = "") -> None:
        self._job = job
        self._pubs: list[_PubParts] = []
        self._digest: bytes | None = None
        # (PUB, binding) of the last message received.
        self._position = (0, 0)

    @property
    def complete(self) -> bool:
        """Whether the stream's final digest arrived."""
        return self._digest is not None

    @property
    def position(self) -> tuple[int, int]:
        """(PUB, binding) of the last message received; (0, 0) before any."""
        return self._position

    def resume_position(self) -> tuple[int, int]:
        """Where a new stream should start: the PUB and binding of the last message received
        ((0, 0) before any). Data already received for that binding is dropped, so the new
        stream's slices are the only ones.

        Raises:
            ValueError: When the stream is already complete.
        """
        if self._digest is not None:
            raise ValueError("the stream is complete: nothing to resume")
        pub, binding = self._position
        if pub < len(self._pubs):
            self._pubs[pub].discard(binding)
        return self._position

    def add(self, response: job_service_pb2.StreamJobResultResponse) -> None:
        """Takes one response of the stream.

        Raises:
            ValueError: For a chunk that does not fit the headers seen so far.
        """
        chunk = response.WhichOneof("chunk")
        if self._digest is not None:
            raise _malformed("a message after the digest")
        if chunk == "digest":
            self._digest = bytes(response.digest.sha256)
            return
        index = response.pub_index
        if chunk == "header":
            if index == len(self._pubs):
                self._pubs.append(_PubParts(index, response.header))
                self._position = (index, 0)
            elif not (
                0 <= index < len(self._pubs)
                and _bare_header(response.header) == self._pubs[index].header
            ):
                # A resumed stream sends its first PUB's header again, unchanged.
                raise _malformed(f"header for PUB {index} where PUB {len(self._pubs)} was due")
            return
        if not 0 <= index < len(self._pubs):
            raise _malformed(f"data for PUB {index} before its header")
        pub = self._pubs[index]
        if chunk == "samples":
            part = response.samples
            r = pub.register(part.register_index)
            pub.samples[r].write(part.offset, part.data)
            if pub.shot_bytes[r]:
                self._position = (index, part.offset // pub.shot_bytes[r])
        elif chunk == "counts":
            counts = response.counts
            r = pub.register(counts.register_index)
            pub.counts[r].write(counts.binding_index, counts.offset, counts.counts)
            self._position = (index, counts.binding_index)
        elif chunk == "values":
            if pub.kind != "estimator":
                raise _malformed(f"estimator values for sampler PUB {index}")
            values = response.values
            pub.values.write(values.offset, list(values.expectation_values))
            if values.standard_errors:
                pub.errors.write(values.offset, list(values.standard_errors))
            self._position = (index, values.offset)
        else:
            raise _malformed(f"empty chunk for PUB {index}")

    def proto(self) -> job_pb2.JobResult:
        """The assembled result message (name unset), its digest checked.

        Raises:
            ValueError: When the stream was empty, ended before its digest, or a PUB's data is
                incomplete.
            ResultDigestError: When the reassembled result's SHA-256 is not the gateway's.
        """
        if not self._pubs:
            raise _malformed("no PUB headers received")
        if self._digest is None:
            raise _malformed("the stream ended before its digest")
        out = job_pb2.JobResult()
        for pub in self._pubs:
            pub.finish(out.pub_results.add())
        actual = hashlib.sha256(out.SerializeToString(deterministic=True)).digest()
        if actual != self._digest:
            raise ResultDigestError(self._job or "the job", self._digest, actual)
        return out

    def result(self) -> JobResult:
        """The assembled result, wrapped (see `proto`)."""
        return JobResult.from_proto(self.proto())


def job_result_from_stream(
    responses: Iterable[job_service_pb2.StreamJobResultResponse],
) -> JobResult:
    """Assembles a JobResult from a whole StreamJobResult response stream.

    Args:
        responses: The stream's responses, in the order received.

    Raises:
        ValueError: For a malformed or incomplete stream.
        ResultDigestError: When the result does not match the stream's digest.
    """
    assembler = ResultAssembler()
    for response in responses:
        assembler.add(response)
    return assembler.result()
