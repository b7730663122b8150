"""Fault injection around any runner, for tests and demos: a `faults = {...}` block on a backend.

`FaultInjectingRunner` wraps a backend's runner. Faults of two kinds:

- Gateway-side faults apply to any runner. A failing job (`fail_while_exists`, `flap_period_s`,
  `failure_rate`) never reaches the backend; it fails EXECUTION_FAILED (a backend fault, so the
  breaker counts it) after taking as long as a job takes (`latency_s`, or for ever with `hang`).
  `transient_errors` makes the provider call that submits a job fail that many times with a
  connection reset; the wrapper retries it with jittered backoff (awaited, so the event loop
  serves everything else meanwhile) and only exhausted retries fail the job (PROVIDER_ERROR,
  kind TRANSIENT).
- Process faults stay real faults of the worker process: the prepared payload is wrapped in a
  `FaultyPayload`, which the simulator worker runs by sleeping `latency_s`, allocating and
  touching `allocate_mb` (an OS limit fails it with MemoryError, the OOM killer sees it),
  blocking for ever with `hang` (only killing the worker ends it), or SIGKILLing itself by
  `crash_rate`, and then executing the real payload. They need a runner whose instances are the
  gateway's simulator workers.

Health probes go through the wrapper like jobs. The random faults are drawn from the job's seed
(probes: a counter), not from a shared generator: the same seed always takes the same path, in
any process, so a test picks seeds that fail or pass (`injected_failure`, `injected_crash`)
instead of retrying until something happens.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import math
import os
import random
import signal
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import NoReturn, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from gateway.backends.base import ExecutionOutcome, PreparedJob
from gateway.backends.runner import (
    DelegatingRunner,
    ExecutionModel,
    RunHandle,
    Runner,
    cancelled_error,
)
from gateway.domain.backends import BackendInfo
from gateway.domain.errors import ExecutionError
from gateway.domain.failures import FailureKind
from gateway.domain.jobs import Job
from gateway.runtime.retry import RetryPolicy, call_with_retries_async

__all__ = [
    "FaultInjectingRunner",
    "FaultOptions",
    "FaultyPayload",
    "ProcessFaults",
    "in_flap_sick_period",
    "injected_crash",
    "injected_failure",
    "run_with_faults",
    "with_fault_properties",
]

T = TypeVar("T")

_MIB = 1 << 20
# One write per 4 KiB touches every page whatever the page size (4 KiB or larger), so the kernel
# really backs the buffer instead of leaving it as untouched address space.
_TOUCH_STRIDE = 4096
# The wall clock, looked up at call time so a test can move it.
_wall_clock = time.time


class FaultOptions(BaseModel):
    """The faults a backend injects into every job and probe (`faults = {...}` in its block).

    Attributes:
        failure_rate: Share of seeds whose jobs fail with EXECUTION_FAILED (0..1).
        crash_rate: Share of seeds whose jobs kill their worker with SIGKILL (0..1).
        latency_s: Seconds every job takes before running, like a slow device.
        hang: Every job blocks forever (until its worker is killed or it is cancelled).
        allocate_mb: MiB every job allocates and touches in its worker, held until it ends.
        fail_while_exists: While this path exists, every job (health probes included) fails;
            creating and deleting it switches the backend sick and healthy deterministically.
        flap_period_s: When > 0, jobs fail during every other period of this many seconds of
            wall-clock time (for demos of health transitions).
        transient_errors: Every job's submission (a provider call made before the provider
            accepts the job) first fails this many times with a connection reset; it is retried
            with `retry_attempts` attempts and jittered backoff, so only exhausted retries reach
            the breaker (as PROVIDER_ERROR).
        retry_attempts: Attempts of that submission call.
        retry_backoff_s: First backoff between attempts.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

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

    def process_faults(self) -> ProcessFaults | None:
        """The faults the worker process applies, or None when there are none."""
        faults = ProcessFaults(
            latency_s=self.latency_s,
            hang=self.hang,
            allocate_mb=self.allocate_mb,
            crash_rate=self.crash_rate,
        )
        return faults if faults != ProcessFaults() else None

    def properties(self) -> dict[str, str]:
        """The faults as BackendInfo properties ("faults.<name>"). The switch's path is a
        server path, so only its presence is shown."""
        properties = {
            "faults.failure_rate": f"{self.failure_rate:g}",
            "faults.crash_rate": f"{self.crash_rate:g}",
            "faults.latency_s": f"{self.latency_s:g}",
            "faults.hang": str(self.hang).lower(),
            "faults.allocate_mb": str(self.allocate_mb),
            "faults.flap_period_s": f"{self.flap_period_s:g}",
            "faults.transient_errors": str(self.transient_errors),
        }
        if self.fail_while_exists is not None:
            properties["faults.fail_while_exists"] = "true"
        return properties


def with_fault_properties(info: BackendInfo, options: FaultOptions) -> BackendInfo:
    """The backend's description with its injected faults listed in its properties."""
    return dataclasses.replace(info, properties={**info.properties, **options.properties()})


# ---------------------------------------------------------------- inside the worker process


@dataclass(frozen=True)
class ProcessFaults:
    """Faults a simulator worker applies to a job before running it (see FaultOptions)."""

    latency_s: float = 0.0
    hang: bool = False
    allocate_mb: int = 0
    crash_rate: float = 0.0


@dataclass(frozen=True, eq=False)
class FaultyPayload:
    """A prepared payload with the process faults to apply to it, and the job's seed (which
    decides whether it crashes)."""

    inner: object
    seed: int
    faults: ProcessFaults


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


def run_with_faults(
    payload: FaultyPayload, execute: Callable[[object], ExecutionOutcome]
) -> ExecutionOutcome:
    """Applies the payload's process faults, then runs its inner payload with `execute` (the
    adapter's). Runs in the worker process: a hang blocks it, a crash kills it, and an
    allocation past its memory limit raises MemoryError."""
    faults = payload.faults
    if faults.latency_s > 0:
        time.sleep(faults.latency_s)
    ballast = _allocate(faults.allocate_mb)
    try:
        if faults.hang:
            _hang()
        if injected_crash(payload.seed, faults.crash_rate):
            _crash()
        return execute(payload.inner)
    finally:
        # Held until here so the memory stays in use for the job's whole run.
        del ballast


# ------------------------------------------------------------------------- in the gateway


class _InjectedTransientError(ConnectionResetError):
    """The injected provider-call failure (only these are retried here)."""


class _InjectedFailure(RunHandle):
    """A job the wrapper fails without running it."""

    def __init__(self, job_id: str, error: ExecutionError) -> None:
        super().__init__(job_id)
        self.error = error
        self.cancelled = asyncio.Event()


async def _accepted() -> None:
    """The provider call of a probe, once the injected transient errors are past."""


class FaultInjectingRunner(DelegatingRunner):
    """Injects faults into the jobs and probes of any runner (see the module docstring).

    Args:
        inner: The backend's runner.
        options: The faults.
        backend: The backend's name (in the injected failures' metadata).
        sleep: Awaited between retries of the provider call (injected by tests).

    Raises:
        ValueError: process faults on a REMOTE runner, whose jobs no worker of ours runs.
    """

    def __init__(
        self,
        inner: Runner,
        options: FaultOptions,
        backend: str,
        *,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        super().__init__(inner)
        self.options = options
        self._backend = backend
        self._sleep = sleep
        self._process = options.process_faults()
        if self._process is not None and inner.model is ExecutionModel.REMOTE:
            raise ValueError(
                f"backends.{backend}.faults: latency_s, hang, allocate_mb and crash_rate are "
                "faults of a worker process; this backend runs its jobs at a provider"
            )
        self._probe_seeds = itertools.count()
        self._retry = RetryPolicy(
            max_attempts=options.retry_attempts,
            initial_backoff_s=options.retry_backoff_s,
            max_backoff_s=max(options.retry_backoff_s, 1.0),
        )

    async def submit(self, prepared: PreparedJob, job: Job) -> RunHandle:
        cause = self._failure_cause(job.seed)
        if cause is not None:
            return _InjectedFailure(job.id, self._injected(cause))
        faulty = self._faulty(prepared, job.seed)
        return await self._provider_call(job.seed, lambda: self.inner.submit(faulty, job))

    async def wait(self, handle: RunHandle) -> ExecutionOutcome:
        if isinstance(handle, _InjectedFailure):
            await self._take_as_long_as_a_job(handle)
            raise handle.error
        return await self.inner.wait(handle)

    async def cancel(self, handle: RunHandle) -> None:
        if isinstance(handle, _InjectedFailure):
            handle.cancelled.set()
            return
        await self.inner.cancel(handle)

    async def probe(self, prepared: PreparedJob, timeout: float) -> None:
        seed = next(self._probe_seeds)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        cause = self._failure_cause(seed)
        # Ours bounds what happens before the inner probe, which keeps its own timeout (it
        # stops the instance when it passes).
        async with asyncio.timeout_at(deadline):
            if cause is not None:
                failure = _InjectedFailure("probe", self._injected(cause))
                await self._take_as_long_as_a_job(failure)
                raise failure.error
            await self._provider_call(seed, _accepted)
        faulty = self._faulty(prepared, seed)
        await self.inner.probe(faulty, max(0.0, deadline - loop.time()))

    # ---------------------------------------------------------------------------- internals

    def _faulty(self, prepared: PreparedJob, seed: int) -> PreparedJob:
        if self._process is None:
            return prepared
        payload = FaultyPayload(prepared.payload, seed, self._process)
        return dataclasses.replace(prepared, payload=payload)

    def _failure_cause(self, seed: int) -> str | None:
        opts = self.options
        if opts.fail_while_exists is not None and os.path.exists(opts.fail_while_exists):
            return f"{opts.fail_while_exists} exists"
        if in_flap_sick_period(_wall_clock(), opts.flap_period_s):
            return f"flapping, sick period of {opts.flap_period_s:g} s"
        if injected_failure(seed, opts.failure_rate):
            return f"failure_rate={opts.failure_rate:g}, seed {seed}"
        return None

    def _injected(self, cause: str) -> ExecutionError:
        return ExecutionError(
            "EXECUTION_FAILED",
            f"fault backend: injected failure ({cause})",
            kind=FailureKind.BACKEND_FAULT,
            metadata={"backend": f"backends/{self._backend}"},
        )

    async def _take_as_long_as_a_job(self, handle: _InjectedFailure) -> None:
        """Waits as long as the job would have run (for ever when hanging); raises the
        CANCELLED error if it is cancelled first."""
        opts = self.options
        limit = math.inf if opts.hang else opts.latency_s
        if limit > 0 and not handle.cancelled.is_set():
            try:
                timeout = None if math.isinf(limit) else limit
                await asyncio.wait_for(handle.cancelled.wait(), timeout)
            except TimeoutError:
                pass
        if handle.cancelled.is_set():
            raise cancelled_error()

    async def _provider_call(self, seed: int, call: Callable[[], Awaitable[T]]) -> T:
        """`call` behind a provider call that first fails `transient_errors` times, retried
        with jittered backoff (seeded by the job)."""
        opts = self.options
        if not opts.transient_errors:
            return await call()
        attempts = 0

        async def attempt() -> T:
            nonlocal attempts
            attempts += 1
            if attempts <= opts.transient_errors:
                raise _InjectedTransientError(f"fault backend: injected transient error {attempts}")
            return await call()

        try:
            return await call_with_retries_async(
                attempt,
                policy=self._retry,
                is_transient=lambda exc: isinstance(exc, _InjectedTransientError),
                sleep=self._sleep,
                rng=random.Random(seed),
            )
        except _InjectedTransientError as exc:
            raise ExecutionError(
                "PROVIDER_ERROR",
                f"provider call failed after {attempts} attempts: {exc}",
                kind=FailureKind.TRANSIENT,
                metadata={"backend": f"backends/{self._backend}"},
            ) from None
