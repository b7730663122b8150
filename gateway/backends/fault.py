"""A configurable faulty backend (entry point "fault"), for tests and demos.

It is the Aer adapter with faults injected in `execute`, which runs in the worker process, so
every fault takes the same path a real one would: a slow device, memory really allocated (an OS
limit fails it with MemoryError, the OOM killer sees it), a job that never returns, a worker
killed by SIGKILL, a backend that keeps failing. A job that survives the faults gets a REAL Aer
result, so tests can check results too.

The random faults are drawn from the job's seed, not from a shared generator: the same seed
always takes the same path, in any process, so a test picks seeds that fail or pass
(`injected_failure`, `injected_crash`) instead of retrying until something happens.
"""

from __future__ import annotations

import dataclasses
import os
import random
import signal
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NoReturn

from pydantic import Field

from gateway.backends.aer.adapter import AerAdapter, AerOptions, AerPayload
from gateway.backends.base import AdapterContext, ExecutionOutcome, PreparedJob
from gateway.domain.backends import BackendInfo
from gateway.domain.errors import ExecutionError
from gateway.domain.jobs import JobSpec
from gateway.runtime.retry import RetryPolicy, call_with_retries

__all__ = [
    "FaultAdapter",
    "FaultOptions",
    "FaultPayload",
    "in_flap_sick_period",
    "injected_crash",
    "injected_failure",
]

_MIB = 1 << 20
# One write per 4 KiB touches every page whatever the page size (4 KiB or larger), so the kernel
# really backs the buffer instead of leaving it as untouched address space.
_TOUCH_STRIDE = 4096
# The wall clock, looked up at call time so a test can move it.
_wall_clock = time.time


class FaultOptions(AerOptions):
    """Options of a fault backend: Aer's, plus the faults to inject into every job.

    Attributes:
        failure_rate: Share of seeds whose jobs fail with EXECUTION_FAILED (0..1).
        crash_rate: Share of seeds whose jobs kill their worker with SIGKILL (0..1).
        latency_s: Seconds every job sleeps before running, like a slow device.
        hang: Every job blocks forever (until its worker is killed).
        allocate_mb: MiB every job allocates and touches, and holds until it ends.
        fail_while_exists: While this path exists, every job (health probes included) fails;
            creating and deleting it switches the backend sick and healthy deterministically.
        flap_period_s: When > 0, jobs fail during every other period of this many seconds of
            wall-clock time (for demos of health transitions).
        transient_errors: Every job's "submission" (modelling a provider call made before the
            provider accepts the job) first fails this many times with a connection reset; the
            adapter retries it with `retry_attempts` attempts and jittered backoff, so only
            exhausted retries reach the breaker (as PROVIDER_ERROR).
        retry_attempts: Attempts of that submission call.
        retry_backoff_s: First backoff between attempts.
    """

    failure_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    crash_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    latency_s: float = Field(default=0.0, ge=0.0, allow_inf_nan=False)
    hang: bool = False
    allocate_mb: int = Field(default=0, ge=0)
    # min_length: an empty path means the current directory, which always exists.
    fail_while_exists: str | None = Field(default=None, min_length=1)
    flap_period_s: float = Field(default=0.0, ge=0.0, allow_inf_nan=False)
    transient_errors: int = Field(default=0, ge=0)
    retry_attempts: int = Field(default=4, ge=1)
    retry_backoff_s: float = Field(default=0.2, gt=0.0, allow_inf_nan=False)


@dataclass(frozen=True, eq=False)
class FaultPayload:
    """What `FaultAdapter.prepare` hands to `execute`: Aer's payload and the job's seed."""

    inner: AerPayload
    seed: int


def injected_failure(seed: int, failure_rate: float) -> bool:
    """Whether a job with this seed fails by `failure_rate` (the same answer in any process)."""
    # str seeds are hashed with SHA-512, independent of PYTHONHASHSEED.
    return random.Random(f"{seed}:fail").random() < failure_rate


def injected_crash(seed: int, crash_rate: float) -> bool:
    """Whether a job with this seed kills its worker by `crash_rate`."""
    return random.Random(f"{seed}:crash").random() < crash_rate


def in_flap_sick_period(now: float, period_s: float) -> bool:
    """Whether wall-clock time `now` falls in a sick period: [P, 2P), [3P, 4P), ..."""
    return period_s > 0 and int(now // period_s) % 2 == 1


def _allocate(megabytes: int) -> bytearray:
    buffer = bytearray(megabytes * _MIB)
    # Write, do not just reserve: untouched pages cost nothing, and the fault must cost what a
    # simulator's state vector would.
    buffer[::_TOUCH_STRIDE] = b"\x01" * len(range(0, len(buffer), _TOUCH_STRIDE))
    return buffer


def _hang() -> NoReturn:
    # Nothing sets this event: only killing the worker (job time limit, cancellation) ends it.
    threading.Event().wait()
    raise AssertionError("unreachable: the hang event is never set")


def _crash() -> NoReturn:
    # SIGKILL, not an exception: the worker must die the way an OOM kill or a segfault kills it,
    # with no chance to answer.
    os.kill(os.getpid(), signal.SIGKILL)
    os._exit(128 + signal.SIGKILL)  # only if the signal were somehow not delivered at once


class FaultAdapter(AerAdapter):
    """Aer with configurable failures, latency, hangs, crashes and memory use."""

    options_model = FaultOptions

    def __init__(self, context: AdapterContext) -> None:
        super().__init__(context)
        if not isinstance(self.options, FaultOptions):
            raise TypeError("FaultAdapter needs FaultOptions")
        self.fault_options: FaultOptions = self.options
        self._fault_info: BackendInfo | None = None

    def info(self) -> BackendInfo:
        if self._fault_info is None:
            aer = super().info()
            self._fault_info = dataclasses.replace(
                aer, provider="fault", properties={**aer.properties, **self._fault_properties()}
            )
        return self._fault_info

    def _fault_properties(self) -> dict[str, str]:
        opts = self.fault_options
        properties = {
            "failure_rate": f"{opts.failure_rate:g}",
            "crash_rate": f"{opts.crash_rate:g}",
            "latency_s": f"{opts.latency_s:g}",
            "hang": str(opts.hang).lower(),
            "allocate_mb": str(opts.allocate_mb),
            "flap_period_s": f"{opts.flap_period_s:g}",
        }
        if opts.fail_while_exists is not None:
            properties["fail_while_exists"] = opts.fail_while_exists
        return properties

    def prepare(self, spec: JobSpec, seed: int, circuits: Sequence[object]) -> PreparedJob:
        # allocate_mb is deliberately left out of the memory estimate: the point is a job that
        # admission lets through and the worker's OS limit then stops.
        prepared = super().prepare(spec, seed, circuits)
        if not isinstance(prepared.payload, AerPayload):
            raise TypeError(f"expected an Aer payload, got {type(prepared.payload).__name__}")
        return dataclasses.replace(prepared, payload=FaultPayload(prepared.payload, seed))

    def execute(self, payload: object) -> ExecutionOutcome:
        if not isinstance(payload, FaultPayload):
            raise TypeError(f"not a fault payload: {type(payload).__name__}")
        opts = self.fault_options
        if opts.latency_s > 0:
            time.sleep(opts.latency_s)
        ballast = _allocate(opts.allocate_mb)
        try:
            if opts.hang:
                _hang()
            if injected_crash(payload.seed, opts.crash_rate):
                _crash()
            cause = self._failure_cause(payload.seed)
            if cause is not None:
                raise ExecutionError(
                    "EXECUTION_FAILED", f"fault backend: injected failure ({cause})"
                )
            self._submit_with_retries(payload.seed)
            return super().execute(payload.inner)
        finally:
            # Held until here so the memory stays in use for the job's whole run.
            del ballast

    def _submit_with_retries(self, seed: int) -> None:
        """The provider-call pattern: transient errors before acceptance are retried with
        backoff; only when the retries are exhausted does the job fail (and the breaker count)."""
        opts = self.fault_options
        if not opts.transient_errors:
            return
        calls = 0

        def submit() -> None:
            nonlocal calls
            calls += 1
            if calls <= opts.transient_errors:
                raise ConnectionResetError(f"fault backend: injected transient error {calls}")

        policy = RetryPolicy(
            max_attempts=opts.retry_attempts,
            initial_backoff_s=opts.retry_backoff_s,
            max_backoff_s=max(opts.retry_backoff_s, 1.0),
        )
        try:
            call_with_retries(submit, policy=policy, rng=random.Random(seed))
        except ConnectionResetError as exc:
            raise ExecutionError(
                "PROVIDER_ERROR", f"provider call failed after {calls} attempts: {exc}"
            ) from None

    def _failure_cause(self, seed: int) -> str | None:
        opts = self.fault_options
        if opts.fail_while_exists is not None and os.path.exists(opts.fail_while_exists):
            return f"{opts.fail_while_exists} exists"
        if in_flap_sick_period(_wall_clock(), opts.flap_period_s):
            return f"flapping, sick period of {opts.flap_period_s:g} s"
        if injected_failure(seed, opts.failure_rate):
            return f"failure_rate={opts.failure_rate:g}, seed {seed}"
        return None
