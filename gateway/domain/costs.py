"""What a job will cost, bounded before any work starts.

Pure arithmetic on the request and on the compiled circuits' sizes (Python integers: no
overflow, whatever a client declares). Each limit is configuration and is named in the error's
metadata, so a client can tell which one it hit and by how much.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass

from gateway.domain.errors import FieldViolation, InvalidArgument
from gateway.domain.jobs import SamplerOutput


def resolve_shots(shots: int | None, default: int, max_shots: int, field: str) -> int:
    """A PUB's shots (its own, else `default`), within 1..max_shots (INVALID_SHOTS)."""
    value = default if shots is None else shots
    if not 1 <= value <= max_shots:
        message = f"shots must be between 1 and {max_shots}, got {value}"
        raise InvalidArgument(
            "INVALID_SHOTS",
            message,
            metadata={"maxShots": str(max_shots)},
            field_violations=[FieldViolation(field, message)],
        )
    return value


def pub_shots(
    pub_shots: int | None,
    default_shots: int | None,
    backend_default: int,
    max_shots: int,
    base: str,
) -> tuple[int, str]:
    """A sampler PUB's shots and the request field they came from: the PUB's own (`base`.shots),
    else the job's default_shots, else the backend's default; within 1..max_shots."""
    if pub_shots is None and default_shots is not None:
        field = "spec.options.default_shots"
    else:
        field = f"{base}.shots"
    default = default_shots if default_shots is not None else backend_default
    return resolve_shots(pub_shots, default, max_shots, field), field


def derive_seed(seed: int, index: int, purpose: str) -> int:
    """The seed of one PUB (and purpose) of a job, derived from the job's seed: reproducible,
    independent between PUBs, and below 2**62, leaving room below 2**63 for Aer, which adds
    the experiment index to the seed."""
    digest = hashlib.sha256(f"{seed}:{index}:{purpose}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & ((1 << 62) - 1)


def check_precision(precision: float, field: str) -> float:
    """An estimator precision must be finite and >= 0 (INVALID_PRECISION)."""
    if not (math.isfinite(precision) and precision >= 0.0):
        message = f"precision must be finite and >= 0, got {precision!r}"
        raise InvalidArgument(
            "INVALID_PRECISION", message, field_violations=[FieldViolation(field, message)]
        )
    return float(precision)


def check_precision_shots(shots: int, precision: float, max_shots: int, field: str) -> None:
    """The shots a sampling backend needs per binding for `precision` fit within max_shots, a
    PUB's limit (INVALID_PRECISION)."""
    if shots <= max_shots:
        return
    message = (
        f"precision {precision:g} needs about {shots} shots per binding on this backend, more "
        f"than its limit of {max_shots}; ask for a precision of at least "
        f"{finest_precision(max_shots):g}"
    )
    raise InvalidArgument(
        "INVALID_PRECISION",
        message,
        metadata={"maxShots": str(max_shots), "shots": str(shots)},
        field_violations=[FieldViolation(field, message)],
    )


def finest_precision(max_shots: int) -> float:
    """The finest precision of 3 significant digits whose ~1/precision^2 shots per binding
    fit within max_shots: 1/sqrt(max_shots) rounded up, not to the nearest (0.00316 for
    100 000 shots needs 100 145 of them, so the precision an error suggested was refused)."""
    finest = 1.0 / math.sqrt(max_shots)
    step = 10.0 ** (math.floor(math.log10(finest)) - 2)
    units = math.ceil(finest / step)
    while True:  # once or twice: the decimal as the client sends it, checked as it is read
        suggested = float(f"{units * step:.3g}")
        if math.ceil(1.0 / (suggested * suggested)) <= max_shots:
            return suggested
        units += 1


def _refuse(reason: str, message: str, field: str, limit: str, value: int, maximum: int) -> None:
    raise InvalidArgument(
        reason,
        message,
        metadata={"limit": limit, "value": str(value), "maximum": str(maximum)},
        field_violations=[FieldViolation(field, message)],
    )


def bindings_count(shape: Sequence[int], max_bindings: int, field: str) -> int:
    """The number of bindings of a sweep `shape` (1 for ()); TOO_MANY_BINDINGS above the limit.

    Dimensions below 1 are left to the binding checks (INVALID_SHAPE).
    """
    if any(d < 1 for d in shape):
        return 0
    count = math.prod(shape)
    if count > max_bindings:
        _refuse(
            "TOO_MANY_BINDINGS",
            f"the sweep has {count} parameter bindings; the limit is {max_bindings} per PUB",
            field,
            "max_bindings",
            count,
            max_bindings,
        )
    return count


@dataclass
class JobCost:
    """Running totals of one job's costs, checked as each PUB is added."""

    max_job_shots: int
    max_estimator_work: int
    max_execution_work: int
    shots: int = 0
    estimator_work: int = 0
    execution_work: int = 0

    def add_shots(self, bindings: int, shots: int, field: str) -> None:
        self.shots += bindings * shots
        if self.shots > self.max_job_shots:
            _refuse(
                "TOO_MANY_SHOTS",
                f"the job asks for {self.shots} shots in all (bindings x shots over its PUBs); "
                f"the limit is {self.max_job_shots}",
                field,
                "max_job_shots",
                self.shots,
                self.max_job_shots,
            )

    def add_estimator(self, terms: int, qubits: int, bindings: int, field: str) -> None:
        self.estimator_work += terms * qubits * bindings
        if self.estimator_work > self.max_estimator_work:
            _refuse(
                "ESTIMATOR_TOO_LARGE",
                f"the job's observables need {self.estimator_work} term-qubit evaluations "
                f"(distinct Pauli terms x qubits x bindings); the limit is "
                f"{self.max_estimator_work}",
                field,
                "max_estimator_work",
                self.estimator_work,
                self.max_estimator_work,
            )

    def add_execution(self, work: int, field: str) -> None:
        self.execution_work += work
        if self.execution_work > self.max_execution_work:
            _refuse(
                "EXECUTION_TOO_EXPENSIVE",
                f"simulating the job needs about {self.execution_work:.3g} units of work (about "
                f"{self.execution_work / WORK_PER_SECOND:.3g} s of one worker); the backend's "
                f"budget is {self.max_execution_work:.3g} (fewer bindings, shots or operations)",
                field,
                "max_execution_work",
                self.execution_work,
                self.max_execution_work,
            )


# Work is counted in units of about 20 ps of one worker's CPU (5e10 a second). A batched
# state-vector run updates ~5.5e8 amplitudes a second on one thread from 14 to 24 qubits
# (measured with Aer 0.17, an h/cx chain, shots 1000: 24 qubits, 801 operations, 24 s), so one
# amplitude update is AMPLITUDE_UPDATE_WEIGHT units; it was counted as one, and a 24-qubit job
# admitted at 0.13% of the default budget ran 25 s (the budget allowed hours). Simulating shot
# by shot costs more per amplitude and per operation (measured with Aer 0.18, one thread:
# ~2.5 us per operation and shot at 3 qubits, ~21 us at 12 qubits), weighted accordingly.
AMPLITUDE_UPDATE_WEIGHT = 100
WORK_PER_SECOND = 5e10
SHOT_BY_SHOT_AMPLITUDE_WEIGHT = 250
SHOT_BY_SHOT_OPERATION_WEIGHT = 100_000
# Decoding and storing one sample.
SAMPLE_WEIGHT = 1_000
# One Pauli term's expectation value, in passes over the state: measured 300-750 (Aer's saved
# expectation values ~311 at 18 qubits; the gather and temporaries of Braket's and PennyLane's
# ~450-750 at 20 qubits), where one pass was charged: 1000 terms x 900 bindings on 20 qubits
# were admitted as 20 s of work and ran over an hour.
TERM_STATE_PASSES = 500


@dataclass(frozen=True)
class RunCosts:
    """What a simulator's runs cost beyond amplitude updates, in the same work units: a
    simulator that reads its program again for every run (a binding's, or a shot's when it
    runs shot by shot) pays per run and per operation in it, whatever the state's size.

    Attributes:
        per_run: Work of one run's set-up.
        per_operation_run: Work of one operation in one run, on top of its amplitudes.
        per_amplitude: Work of one operation's update of one amplitude in a batched run.
        per_binding: Work of each binding whatever its shots (a simulator that runs every
            binding in one call still sets each up and returns its result apart).
        per_term: Work of one Pauli term's expectation value for one binding, on top of its
            state passes (the simulator's own call per term).
    """

    per_run: int = 0
    per_operation_run: int = 0
    per_amplitude: int = AMPLITUDE_UPDATE_WEIGHT
    per_binding: int = 0
    per_term: int = 0


# A simulator that runs every binding of one assembled circuit (its costs are the
# amplitudes'), as a provider is priced.
BATCHED_RUNS = RunCosts()
# A density matrix's 4^n entries, counted as amplitudes: measured 1.4e8 of them a second on
# one thread at 8-11 qubits (a gate acts on both sides), against 5.5e8 amplitudes of a state
# vector.
DENSITY_MATRIX_RUNS = RunCosts(per_amplitude=360)


def simulation_work(
    operations: int,
    amplitudes: int,
    bindings: int,
    shots: int,
    shot_by_shot: bool,
    runs: RunCosts = BATCHED_RUNS,
    state_passes: int = 0,
) -> int:
    """Estimated work to simulate a circuit once per binding (once per shot, at a higher cost
    per step, when it has mid-circuit measurements, resets or control flow), plus sampling,
    plus the simulator's own cost per run, operation and binding (`runs`; its `per_term` is
    the caller's), plus `state_passes` passes over each binding's final state (an estimator's
    terms: TERM_STATE_PASSES each)."""
    operations = max(operations, 1)
    if shot_by_shot:
        per_step = amplitudes * SHOT_BY_SHOT_AMPLITUDE_WEIGHT + SHOT_BY_SHOT_OPERATION_WEIGHT
        evolve = operations * per_step * bindings * shots
        count = bindings * shots
    else:
        evolve = operations * amplitudes * runs.per_amplitude * bindings
        count = bindings
    set_up = count * (runs.per_run + operations * runs.per_operation_run)
    read = state_passes * amplitudes * bindings
    return evolve + set_up + read + bindings * (runs.per_binding + shots * SAMPLE_WEIGHT)


# ------------------------------------------------------------------------------ result size

# Protobuf framing of one binding's Counts message (its tag and length, and the tags and
# lengths of its two fields), and of one register's entry (name, width, samples framing).
COUNTS_FRAMING_BYTES = 18
REGISTER_FRAMING_BYTES = 32


def varint_bytes(value: int) -> int:
    """Bytes of a non-negative integer as a protobuf varint."""
    return max(1, (value.bit_length() + 6) // 7)


def sampler_result_bytes(
    register_widths: Sequence[int],
    bindings: int,
    shots: int,
    output: SamplerOutput,
    name_bytes: int = 0,
) -> int:
    """Upper estimate of a sampler PUB's encoded result, for the output the job asked for.

    Samples: bindings x shots packed rows of ceil(bits/8) bytes per register. Counts: per
    binding and register at most min(shots, 2**bits) distinct outcomes, each a packed row plus
    its count (a varint no longer than the shots'). For wide registers and many shots the counts
    are larger than the samples they summarise. `name_bytes`: the registers' names (UTF-8),
    each in the result once: a client chooses their length (two 3000-character names took a
    result admitted at 66 bytes to 6 KB).
    """
    total = name_bytes
    count_bytes = varint_bytes(shots)
    for width in register_widths:
        row = (width + 7) // 8
        total += REGISTER_FRAMING_BYTES
        if output.samples:
            total += bindings * shots * row
        if output.counts:
            # 2**bits only matters below the shots; min() keeps the integer small.
            distinct = shots if width >= shots.bit_length() else min(shots, 1 << width)
            total += bindings * (COUNTS_FRAMING_BYTES + distinct * (row + count_bytes))
    return total


def estimator_result_bytes(shape: Sequence[int]) -> int:
    """An estimator PUB's result: two doubles per entry."""
    return 16 * math.prod(shape)


def check_result_size(estimate: int, max_result_bytes: int, field: str) -> None:
    """RESULT_LIMIT_EXCEEDED when the estimate exceeds the backend's limit."""
    if estimate > max_result_bytes:
        message = (
            f"the result would be about {estimate} bytes; the backend's limit is "
            f"{max_result_bytes} (use fewer shots or bindings, or choose sampler_output "
            "SAMPLES or COUNTS, whichever is smaller for these registers)"
        )
        raise InvalidArgument(
            "RESULT_LIMIT_EXCEEDED",
            message,
            metadata={"estimateBytes": str(estimate), "maxResultBytes": str(max_result_bytes)},
            field_violations=[FieldViolation(field, message)],
        )
