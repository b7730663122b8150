"""The runner half of the adapter contract: how a prepared job gets run.

A backend's compiler (BackendAdapter: compile_circuit in compile workers, prepare in the
gateway) turns a request into a PreparedJob; its runner runs it. Two execution models share one
contract:

- LOCAL runners (simulators) run the job on an instance the gateway supervises, a worker
  process: the handle is that worker; `cancel` kills it; nothing survives a gateway crash, so a
  job interrupted by one is run again (`reattach` finds nothing).
- REMOTE runners (providers) hand the job to a service that outlives the gateway: `submit`
  returns at once with the provider's id, which the job core stores in the same transaction that
  leaves SUBMITTING; `wait` follows the provider; `cancel` cancels remotely; after a restart
  `reattach` finds the job again by its stored id, or by the gateway job id used as the
  provider's idempotency token when the crash came before the id was stored. A REMOTE runner
  never submits a job the provider already has.

Failures are ExecutionError with a FailureKind; only the kind decides what the core does.
Runners are built by the composition root (gateway.server) from the backend's config block; the
job core knows only this module.
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod

from gateway.backends.base import ExecutionOutcome, PreparedJob
from gateway.domain.backends import InstanceStats
from gateway.domain.errors import ExecutionError
from gateway.domain.failures import FailureKind
from gateway.domain.jobs import Job
from gateway.domain.sessions import Session


class ExecutionModel(enum.Enum):
    LOCAL = "LOCAL"
    REMOTE = "REMOTE"


def cancelled_error(message: str = "the job was cancelled") -> ExecutionError:
    """What `wait` raises for a job that `cancel` stopped before it finished: kind CANCELLED,
    reason "CANCELLED". The job core ends such a job CANCELLED with no error, so the reason
    never reaches a client (it is not an ErrorInfo reason, and not registered as one)."""
    return ExecutionError(FailureKind.CANCELLED.value, message, kind=FailureKind.CANCELLED)


class ProbeSkipped(Exception):
    """The probe did not run this round; the backend's health stays as it was."""


class RunHandle:
    """A job submitted to a runner. Subclasses hold what the runner needs to follow it.

    Attributes:
        job_id: The gateway job.
        remote_id: The provider's id of the job, stored durably by the job core so that
            `reattach` can find it after a restart; None for LOCAL runners.
        execution_seconds: What the provider reports the job used (QPU seconds), set by
            `wait` when the job failed or was cancelled after it ran; None when not reported
            (the job core then counts the time it followed the job). A successful job's is
            in its ExecutionOutcome.
    """

    def __init__(self, job_id: str, remote_id: str | None = None) -> None:
        self.job_id = job_id
        self.remote_id = remote_id
        self.execution_seconds: float | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.job_id!r}, remote_id={self.remote_id!r})"


class Runner(ABC):
    """Runs prepared jobs of one backend; at most `capacity` at once (the scheduler's slots)."""

    model: ExecutionModel = ExecutionModel.LOCAL

    @property
    @abstractmethod
    def capacity(self) -> int:
        """How many jobs may run at once: the scheduler claims no more than this."""

    async def start(self) -> None:  # noqa: B027 - optional hook with a no-op default
        """Brings up the runner's instances (warm workers, authenticated clients)."""

    async def close(self) -> None:  # noqa: B027 - optional hook with a no-op default
        """Stops the runner's instances. Remote jobs keep running at the provider."""

    @abstractmethod
    async def submit(self, prepared: PreparedJob, job: Job) -> RunHandle:
        """Starts the job and returns without waiting for it to finish.

        A LOCAL runner may wait here for a free instance; a REMOTE runner returns once the
        provider has accepted the job (its id in `remote_id`), using `job.id` as the provider's
        idempotency token, so submitting the same job twice creates it once.

        Raises:
            ExecutionError: the job could not be started (kind says why).
        """

    @abstractmethod
    async def wait(self, handle: RunHandle) -> ExecutionOutcome:
        """The job's result once it has finished. Cancelling the awaiting task stops waiting,
        not the job (that is `cancel`).

        Raises:
            ExecutionError: the job failed (kind says why).
        """

    @abstractmethod
    async def cancel(self, handle: RunHandle) -> None:
        """Stops the job: kills its worker (on the worker pool, only once the job has run
        KILL_AFTER_S; a job stopped sooner finishes there, its result discarded), or cancels it
        at the provider. Idempotent; `wait` then raises ExecutionError of kind CANCELLED unless
        the job finished first."""

    async def reattach(self, job: Job, remote_id: str | None) -> RunHandle | None:
        """After a restart (or a lost lease), finds a job this runner may already have: by
        `remote_id` when one was stored, else by `job.id` as the idempotency token. None when
        the backend does not have it, so submitting it is safe (and, for LOCAL runners, always:
        a worker does not outlive the gateway). For a CANCELLING `job` (it will not be
        submitted), a runner that has only part of it stops that part before answering None.
        """
        return None

    async def abandon(self, job: Job) -> None:  # noqa: B027 - optional hook with a no-op default
        """A REMOTE job whose submit was uncertain (the provider may have made it, or part of
        it) ended without a handle: FAILED, or CANCELLED unsent. What the provider has of it,
        now or once its look-ups show it (Braket's tag search lags behind its creates; an IBM
        create given up on may be committed after the look-up), is
        stopped: nothing follows it, and it would run and bill for nobody. Called while the
        step holds the job's claim, just before its end is stored: the only time a runner may
        search a job's provider work for strays after its submit, since until then another
        replica may hold the job and follow what it made. No-op by default (a provider whose
        look-up by id is exact has nothing to add to `reattach`)."""

    @abstractmethod
    async def probe(self, prepared: PreparedJob, timeout: float) -> None:
        """A health probe: runs the backend's probe job (BackendAdapter.probe_spec, prepared)
        like a job, within `timeout` seconds, and returns if the backend answered correctly.

        Raises:
            ProbeSkipped: every instance is busy with jobs (busy is not sick); or, for a
                REMOTE runner, the provider reports its status instead of running a job.
            TimeoutError: no answer within `timeout` (the instance was stopped).
            ExecutionError: the probe job failed (kind and reason say how).
            Exception: no instance could be started.
        """

    async def maintain(self) -> None:  # noqa: B027 - optional hook with a no-op default
        """Periodic upkeep between probes: evict idle or old instances, top up the minimum."""

    def stats(self) -> InstanceStats | None:
        """Instance counts for BackendService, if the runner pools instances."""
        return None

    # ---- sessions (gateway.jobs.sessions). The job core orders a session's jobs itself (one
    # at a time, in submission order); these hooks are for providers with sessions of their
    # own (the IBM cloud runner: Runtime Session/Batch).

    async def open_session(self, session: Session) -> str | None:
        """REMOTE runners: called before the session's first job in this process is
        submitted (its `submit` then runs the session's jobs in the provider's session). With
        `session.provider_session_id` empty it opens the provider's session (mode and max TTL
        as in `session`); with it set (a restart) it re-uses that one, opening a new one only if
        the provider has ended it. Returns the id, stored as the session's
        provider_session_id; None when the backend has no sessions of its own (default).

        Raises:
            ExecutionError: the provider refused (the job fails or waits as on `submit`).
        """
        return None

    async def close_session(self, session: Session) -> None:  # noqa: B027 - optional hook
        """Called once, when a session with a provider_session_id ends (CLOSED or FAILED):
        closes the provider's session (cancelling what it still holds when the gateway session
        was cancelled, failed or expired). No-op by default."""

    def pin_session(self, session_id: str) -> None:  # noqa: B027 - optional hook
        """A DEDICATED session has work: the job core keeps one of this runner's slots for it
        from now on, and runs its jobs one at a time. A LOCAL runner may keep one instance for
        the session's jobs (WorkerPoolRunner keeps the worker that ran its last job). No-op by
        default."""

    def unpin_session(self, session_id: str) -> None:  # noqa: B027 - optional hook
        """The pinned session has no work left (or ended): its slot is free again; an
        instance kept for it goes back to the pool. No-op by default."""


class DelegatingRunner(Runner):
    """Passes every call to `inner`: a wrapper (fault injection, telemetry) overrides only what
    it changes, and a method added to Runner reaches the backend's own runner through it."""

    def __init__(self, inner: Runner) -> None:
        self.inner = inner
        self.model = inner.model

    @property
    def capacity(self) -> int:
        return self.inner.capacity

    async def start(self) -> None:
        await self.inner.start()

    async def close(self) -> None:
        await self.inner.close()

    async def submit(self, prepared: PreparedJob, job: Job) -> RunHandle:
        return await self.inner.submit(prepared, job)

    async def wait(self, handle: RunHandle) -> ExecutionOutcome:
        return await self.inner.wait(handle)

    async def cancel(self, handle: RunHandle) -> None:
        await self.inner.cancel(handle)

    async def reattach(self, job: Job, remote_id: str | None) -> RunHandle | None:
        return await self.inner.reattach(job, remote_id)

    async def abandon(self, job: Job) -> None:
        await self.inner.abandon(job)

    async def probe(self, prepared: PreparedJob, timeout: float) -> None:
        await self.inner.probe(prepared, timeout)

    async def maintain(self) -> None:
        await self.inner.maintain()

    def stats(self) -> InstanceStats | None:
        return self.inner.stats()

    async def open_session(self, session: Session) -> str | None:
        return await self.inner.open_session(session)

    async def close_session(self, session: Session) -> None:
        await self.inner.close_session(session)

    def pin_session(self, session_id: str) -> None:
        self.inner.pin_session(session_id)

    def unpin_session(self, session_id: str) -> None:
        self.inner.unpin_session(session_id)
