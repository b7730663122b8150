"""Amazon Braket in the cloud: the REMOTE runner of a braket backend whose device is an ARN.

Jobs become quantum tasks on an AwsDevice (a managed simulator or a QPU), one task per PUB
binding, each the same Braket-native OpenQASM 3 program the local simulators run
(program.shots_program) with the binding's angles as `inputs`. Calls go through the Braket SDK's
AwsSession and boto3 (imported here only, lazily, in the gateway process); credentials come from
the standard AWS chain (environment, shared files, instance roles) and are never logged.

Never paying twice:
- the gateway job id is the clientToken of its task (`<job id>-<i>` for task i when a job has
  several): Braket answers a repeated create with the task it already has, so creates may be
  retried after a timeout;
- tags name the job (`qgateway:job`, `qgateway:job-name`, `qgateway:task`, `qgateway:tasks`);
- before the first create, the job's reading plan (which clbit each measured column holds,
  registers, shapes) is written to S3 beside the results (`<prefix>/qgateway/<job id>.json`), so
  a runner that re-attached after a restart can read the results without the prepared job;
- `reattach` follows the stored task ARNs, or, when the gateway died between a create and
  storing its ARN, finds the tasks by SearchQuantumTasks (device, creation time) and their tags;
  what it cannot find is created again by `submit` under the same client tokens, which finds
  the tasks Braket already has; a job cancelled meanwhile gets no more tasks, and the ones it
  has are cancelled;
- a job that ends with tasks Braket may have and nobody follows (a create whose answer was
  lost, its task not yet in the eventually consistent tag search) is watched once the job core
  abandoned it (`abandon`, `maintain`; never before, while another replica may hold the job):
  its tags are searched at each upkeep for an hour (gateway.backends.stray_watch), and what
  shows up is cancelled.

Provider errors become FailureKinds: throttling, 5xx and connection failures TRANSIENT
(retried here with backoff first), a ValidationException CLIENT_ERROR (reason
PROVIDER_REJECTED, the provider's code in metadata "providerErrorCode"), rejected or expired
credentials CREDENTIALS (PROVIDER_ERROR: the job's first create was refused and nothing was
made, so the job goes back to the queue; BACKEND_FAULT once some of its tasks were created, as
everything else); a create throttled at every attempt made nothing either: THROTTLED, the job
goes back to the queue the same way. The health probe (GetDevice) fails like a create, so a
backend whose credentials expired turns NOT_SERVING. Every create
(retries included) passes a limiter shared by the backends of one account and region: never
more than `max_creates_per_s` CreateQuantumTask calls arrive at Braket in any one second
(Braket allows 20 per second; see CreateRateLimiter).

The device's queue depth (GetDevice, at every probe) and each running job's queue position
(GetQuantumTask with QueueInfo) are published as live BackendInfo properties.

Usage: a managed simulator reports each task's execution duration in its results
(additionalMetadata.simulatorMetadata.executionDuration, milliseconds); their sum is the job's
execution_seconds. QPUs report none (they bill per task and shot: the backend's price table),
and Braket's API reports no cost (the SDK's cost Tracker prices tasks through the AWS Price
List API, which the gateway does not call).
"""

from __future__ import annotations

import collections
import contextlib
import functools
import json
import logging
import math
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import anyio
import anyio.to_thread
import numpy as np

from gateway.backends.base import ExecutionOutcome, PreparedJob
from gateway.backends.braket.program import BraketProgram, UnsupportedCircuit, shots_program
from gateway.backends.qiskit.adapter import QiskitPayload, SamplerTask
from gateway.backends.runner import ExecutionModel, RunHandle, Runner, cancelled_error
from gateway.backends.stray_watch import StrayWatch
from gateway.domain.bitarray import RegisterSpec, SamplerResultBuilder
from gateway.domain.errors import ExecutionError
from gateway.domain.failures import FailureKind
from gateway.domain.jobs import Job, JobResult, JobState, SamplerOutput, SamplerResult
from gateway.runtime.blocking import run_blocking
from gateway.runtime.retry import RetryPolicy, call_with_retries, is_throttled, is_transient

__all__ = [
    "AUTH_ERROR_CODES",
    "BraketCloudHandle",
    "BraketCloudRunner",
    "CloudSettings",
    "CloudStatus",
    "CreateRateLimiter",
    "classify",
]

T = TypeVar("T")
log = logging.getLogger(__name__)

# Credentials the provider does not accept: the backend cannot work until an operator acts.
AUTH_ERROR_CODES = frozenset(
    {
        "ExpiredToken",
        "ExpiredTokenException",
        "UnrecognizedClientException",
        "InvalidClientTokenId",
        "InvalidSignatureException",
        "SignatureDoesNotMatch",
        "AccessDeniedException",
        "AccessDenied",
        "MissingAuthenticationTokenException",
    }
)
# Braket's on-demand simulators stop a task at 6 hours (SV1's and DM1's documented maximum
# runtime): a longer reported duration is not believed, nor charged.
_MAX_TASK_MS = 6 * 3600 * 1000
# A task's results.json: 100,000 shots (SV1's most) of 34 qubits, written as ["0", "1", ...],
# is ~14 MB; a larger object is not read into the gateway's memory.
_MAX_RESULTS_BYTES = 128 << 20

# botocore's exceptions for credentials it could not find or refresh (by class name).
_CREDENTIAL_ERRORS = frozenset(
    {
        "NoCredentialsError",
        "PartialCredentialsError",
        "CredentialRetrievalError",
        "TokenRetrievalError",
        "UnauthorizedSSOTokenError",
        "SSOTokenLoadError",
    }
)
_CLIENT_ERROR_CODES = frozenset({"ValidationException"})
_PLAN_VERSION = 1
_SEARCH_PAGES = 20
_SEARCH_SLACK = timedelta(minutes=10)
_MAX_POSITIONS = 100


@dataclass(frozen=True)
class CloudSettings:
    """What the runner needs from the backend's options (BraketOptions with a device ARN)."""

    device_arn: str
    region: str
    s3_bucket: str
    s3_prefix: str
    endpoint_url: str | None = None
    profile: str | None = None
    max_concurrent_tasks: int = 32
    max_creates_per_s: int = 20
    rate_margin_s: float = 0.02
    poll_interval_s: float = 1.0
    request_timeout_s: float = 30.0
    retry_attempts: int = 5
    retry_backoff_s: float = 0.2
    max_retry_backoff_s: float = 10.0
    reservation_arn: str | None = None


class CloudStatus:
    """What the runner last heard about the device and its jobs' tasks: live BackendInfo
    properties (`properties()` is read at every GetBackend)."""

    def __init__(self, device_arn: str, region: str) -> None:
        self._lock = threading.Lock()
        self._static = {"device": device_arn, "region": region, "execution_model": "remote"}
        self.device_status = ""
        self.queue_depth: str = ""
        self.positions: collections.OrderedDict[str, str] = collections.OrderedDict()

    def set_device(self, status: str, queue_depth: str) -> None:
        with self._lock:
            self.device_status = status
            self.queue_depth = queue_depth

    def set_position(self, job_id: str, position: str | None) -> None:
        with self._lock:
            if position is None:
                self.positions.pop(job_id, None)
                return
            self.positions[job_id] = position
            self.positions.move_to_end(job_id)
            while len(self.positions) > _MAX_POSITIONS:
                self.positions.popitem(last=False)

    def properties(self) -> dict[str, str]:
        with self._lock:
            out = dict(self._static)
            if self.device_status:
                out["device_status"] = self.device_status
            if self.queue_depth:
                out["queue_depth"] = self.queue_depth
            for job_id, position in self.positions.items():
                out[f"queue_position/jobs/{job_id}"] = position
            return out


class CreateRateLimiter:
    """At most `rate` calls in any window of `period` seconds, as the provider counts them.

    A slot is taken when a call starts and comes back `period` seconds after the call ENDED:
    the provider saw call i arrive before its answer left, so call i + rate, which cannot start
    before then, arrives at least `period` after call i, whatever the network and thread
    delays (a token bucket's burst plus refill can pass 2x the rate within one second, and
    limiting send times alone lets delayed calls bunch up at the provider). Thread-safe;
    retries take a slot each.
    """

    def __init__(
        self, rate: int, period: float = 1.0, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if rate < 1 or period <= 0:
            raise ValueError("need rate >= 1 and period > 0")
        self.rate = rate
        self.period = period
        self._clock = clock
        self._cond = threading.Condition()
        self._in_flight = 0
        self._cooling: collections.deque[float] = collections.deque()  # when slots come back

    def try_acquire(self) -> float:
        """Takes a slot and returns 0, or returns the seconds until one may come back."""
        with self._cond:
            now = self._clock()
            while self._cooling and self._cooling[0] <= now:
                self._cooling.popleft()
            if self._in_flight + len(self._cooling) < self.rate:
                self._in_flight += 1
                return 0.0
            # Every slot is in flight (wait for a release) or cooling (wait for the first).
            return self._cooling[0] - now if self._cooling else self.period

    def release(self) -> None:
        """The call that held a slot ended (answered or failed)."""
        with self._cond:
            self._in_flight -= 1
            self._cooling.append(self._clock() + self.period)
            self._cond.notify_all()

    @contextlib.contextmanager
    def slot(self) -> Iterator[None]:
        """Holds a slot around one call, waiting for it first."""
        while (wait := self.try_acquire()) > 0:
            with self._cond:
                self._cond.wait(wait)
        try:
            yield
        finally:
            self.release()


_LIMITERS: dict[tuple[str, str | None, str | None], CreateRateLimiter] = {}
_LIMITERS_LOCK = threading.Lock()


def shared_limiter(settings: CloudSettings) -> CreateRateLimiter:
    """The limiter of one account and region (Braket's limit is per account): backends with
    the same region, endpoint and profile share it."""
    key = (settings.region, settings.endpoint_url, settings.profile)
    with _LIMITERS_LOCK:
        limiter = _LIMITERS.get(key)
        if limiter is None:
            limiter = CreateRateLimiter(settings.max_creates_per_s, 1.0 + settings.rate_margin_s)
            _LIMITERS[key] = limiter
        return limiter


class BraketCloudHandle(RunHandle):
    """A job's tasks at Braket, in task order; `remote_id` is their ARNs, space-separated."""

    def __init__(self, job_id: str, arns: Sequence[str]) -> None:
        super().__init__(job_id, " ".join(arns))
        self.arns = tuple(arns)


def classify(
    exc: BaseException, name: str, arn: str | None = None, *, following: bool = False
) -> ExecutionError:
    """A provider call's failure as an ExecutionError of the right kind (see the module).

    `following`: the call follows a task Braket already has (status, results, re-attach by
    ARN). Refused credentials are then TRANSIENT, not BACKEND_FAULT: the task goes on at
    Braket, and the job core keeps re-attaching (until the run deadline) instead of failing
    a job that may have run and been paid for."""
    if isinstance(exc, ExecutionError):
        return exc
    metadata = {"providerJobId": arn} if arn else {}
    code = _error_code(exc)
    if code:
        metadata["providerErrorCode"] = code
    kind_names = {cls.__name__ for cls in type(exc).__mro__}
    log.info("backends/%s: Braket call failed: %s: %s", name, type(exc).__name__, exc)
    # What clients read: AWS's text names the gateway's role, account and bucket
    # ("arn:aws:sts::123456789012:assumed-role/..."), so only a rejection of the job itself
    # keeps its text, with ARNs and account ids masked.
    text = f"backends/{name}: {code or type(exc).__name__}"
    if code in _CLIENT_ERROR_CODES:
        text = f"{text}: {_masked(str(exc))}"[:500]
    if code in AUTH_ERROR_CODES or kind_names & _CREDENTIAL_ERRORS:
        metadata.setdefault("providerErrorCode", type(exc).__name__)
        kind = FailureKind.TRANSIENT if following else FailureKind.CREDENTIALS
        return ExecutionError("PROVIDER_ERROR", text, kind=kind, metadata=metadata)
    if is_transient(exc):
        return ExecutionError("PROVIDER_ERROR", text, kind=FailureKind.TRANSIENT, metadata=metadata)
    if code in _CLIENT_ERROR_CODES:
        return ExecutionError(
            "PROVIDER_REJECTED", text, kind=FailureKind.CLIENT_ERROR, metadata=metadata
        )
    return ExecutionError("PROVIDER_ERROR", text, kind=FailureKind.BACKEND_FAULT, metadata=metadata)


_ARN = re.compile(r"arn:aws[\w-]*:[^\s'\"]*")
_ACCOUNT = re.compile(r"\b\d{12}\b")


def _masked(text: str) -> str:
    return _ACCOUNT.sub("<account>", _ARN.sub("<arn>", text))


def _error_code(exc: BaseException) -> str:
    response = getattr(exc, "response", None)
    if isinstance(response, Mapping):
        error = response.get("Error")
        if isinstance(error, Mapping) and isinstance(error.get("Code"), str):
            return str(error["Code"])
    return ""


@dataclass(frozen=True)
class _TaskSpec:
    pub: int
    binding: int
    source: str
    inputs: Mapping[str, float]
    shots: int


class _Clients:
    """boto3 clients and the SDK's AwsSession, built once (their construction is not free)."""

    def __init__(self, settings: CloudSettings, pool: int) -> None:
        import boto3  # type: ignore[import-untyped]
        from botocore.config import Config  # type: ignore[import-untyped]
        from braket.aws import AwsSession  # type: ignore[import-untyped]

        session = boto3.Session(region_name=settings.region, profile_name=settings.profile)
        common: dict[str, Any] = {
            # The runner retries, under its own rate limit: botocore makes one attempt.
            "retries": {"total_max_attempts": 1, "mode": "standard"},
            "connect_timeout": min(settings.request_timeout_s, 10.0),
            "read_timeout": settings.request_timeout_s,
            "max_pool_connections": pool,
        }
        self.braket = session.client(
            "braket", endpoint_url=settings.endpoint_url, config=Config(**common)
        )
        self.s3 = session.client(
            "s3",
            endpoint_url=settings.endpoint_url,
            config=Config(
                **common,
                s3={"addressing_style": "path"},
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            ),
        )
        self.session = AwsSession(boto_session=session, braket_client=self.braket)


class BraketCloudRunner(Runner):
    """The REMOTE runner of a Braket device (see the module docstring)."""

    model = ExecutionModel.REMOTE

    def __init__(
        self,
        name: str,
        settings: CloudSettings,
        status: CloudStatus,
        *,
        sleep: Callable[[float], None] = time.sleep,
        clients: Any = None,
        limiter: CreateRateLimiter | None = None,
    ) -> None:
        self.name = name
        self.settings = settings
        self.status = status
        self._sleep = sleep
        self._clients_value = clients
        self._clients_lock = threading.Lock()
        self._policy = RetryPolicy(
            max_attempts=settings.retry_attempts,
            initial_backoff_s=min(settings.retry_backoff_s, settings.max_retry_backoff_s),
            max_backoff_s=settings.max_retry_backoff_s,
        )
        self.limiter = shared_limiter(settings) if limiter is None else limiter
        self._calls = anyio.CapacityLimiter(max(8, settings.max_concurrent_tasks))
        self._plans: collections.OrderedDict[str, dict[str, Any]] = collections.OrderedDict()
        # Jobs this runner was unsure what Braket has of, searched once abandoned (each search
        # up to _SEARCH_PAGES pages, not paced by the create limiter). Settled ids: the task
        # ARNs already cancelled.
        self._strays = StrayWatch("Braket tasks")

    @property
    def capacity(self) -> int:
        return self.settings.max_concurrent_tasks

    def _clients(self) -> _Clients:
        if self._clients_value is None:
            with self._clients_lock:
                if self._clients_value is None:
                    pool = max(10, self.settings.max_concurrent_tasks + 4)
                    self._clients_value = _Clients(self.settings, pool)
        clients: _Clients = self._clients_value
        return clients

    async def start(self) -> None:
        await anyio.to_thread.run_sync(self._clients)

    # ------------------------------------------------------------------------- contract

    async def submit(self, prepared: PreparedJob, job: Job) -> BraketCloudHandle:
        payload = prepared.payload
        if not isinstance(payload, QiskitPayload):
            raise TypeError(f"not a Qiskit payload: {type(payload).__name__}")
        specs, plan = await self._thread(lambda: _task_specs(payload))
        plan["job"] = job.id
        await self._thread(lambda: self._retrying(lambda: self._put_plan(job.id, plan)))
        self._remember(job.id, plan)
        arns: list[str] = []
        for index, spec in enumerate(specs):
            token = job.id if len(specs) == 1 else f"{job.id}-{index}"
            tags = {
                "qgateway:job": job.id,
                "qgateway:job-name": f"jobs/{job.id}",
                "qgateway:backend": self.name,
                "qgateway:task": str(index),
                "qgateway:tasks": str(len(specs)),
            }

            make = functools.partial(self._create, spec, token, tags)
            try:
                arns.append(
                    await self._thread(functools.partial(self._retrying, make, create=True))
                )
            except ExecutionError as err:
                made = arns
                if err.kind is FailureKind.TRANSIENT:
                    # The create may have happened with its answer lost: the tasks Braket has
                    # under the job's tags are the truth.
                    found = await self._tasks_found(job)
                    if len(found) == len(specs):
                        log.info("job %s: every Braket task was created after all", job.id)
                        return BraketCloudHandle(job.id, [found[i] for i in range(len(specs))])
                    made = sorted(set(arns) | set(found.values()))
                # The job fails: the tasks it already has would run (and be paid) for nothing.
                await self._cancel_quietly(job.id, made)
                if made and err.kind is FailureKind.TRANSIENT:
                    # The lost one may not be in the search yet: noted, and cancelled when
                    # it shows once the job core abandoned the job (it ends FAILED here; the
                    # core never looks it up again).
                    self._strays.note(job)
                if made and err.kind in (
                    FailureKind.CREDENTIALS,
                    FailureKind.TRANSIENT,
                    FailureKind.THROTTLED,
                ):
                    # Neither queued again nor looked up: its client tokens now name cancelled
                    # tasks.
                    raise ExecutionError(
                        err.reason,
                        err.message,
                        kind=FailureKind.BACKEND_FAULT,
                        metadata=err.metadata,
                    ) from err
                raise
        log.info("job %s: %d Braket task(s) created on %s", job.id, len(arns), self.name)
        return BraketCloudHandle(job.id, arns)

    async def wait(self, handle: RunHandle) -> ExecutionOutcome:
        arns = _arns(handle)
        plan = self._plans.get(handle.job_id)
        if plan is None:
            plan = await self._thread(
                lambda: self._retrying(lambda: self._get_plan(handle.job_id), following=True)
            )
            self._remember(handle.job_id, plan)
        texts: list[str] = []
        try:
            for arn in arns:
                texts.append(await self._follow(handle.job_id, arn))
        except ExecutionError as exc:
            if exc.kind is not FailureKind.TRANSIENT:  # the job ends: stop its other tasks
                await self._cancel_quietly(handle.job_id, arns[len(texts) + 1 :])
            raise
        finally:
            self.status.set_position(handle.job_id, None)
        try:
            # Off the event loop: a sweep's results take seconds to decode.
            result, seconds = await anyio.to_thread.run_sync(lambda: _read_results(plan, texts))
        except (KeyError, TypeError, ValueError, AttributeError, RecursionError) as exc:
            # Whatever the provider's results hold (nesting deep enough to exhaust the
            # parser's recursion included), the job fails as the backend's fault.
            raise ExecutionError(
                "EXECUTION_FAILED",
                f"backends/{self.name}: unreadable task results: {type(exc).__name__}: {exc}"[:500],
                kind=FailureKind.BACKEND_FAULT,
                metadata={"providerJobId": arns[0]} if arns else {},
            ) from None
        self._plans.pop(handle.job_id, None)
        return ExecutionOutcome(
            result=result, sdk_versions=_versions(), execution_seconds=seconds, tasks=len(arns)
        )

    async def cancel(self, handle: RunHandle) -> None:
        # Every task is asked, even past one that could not be cancelled: each bills.
        failed: ExecutionError | None = None
        for arn in _arns(handle):
            stop = functools.partial(self._cancel, arn)
            try:
                await self._thread(functools.partial(self._retrying, stop, arn))
            except ExecutionError as exc:
                # A task that could not be reached outweighs one that refused: the cancel is
                # then asked again (a refusal alone ends the asking).
                if failed is None or failed.kind is FailureKind.CLIENT_ERROR:
                    failed = exc
        if failed is not None:
            raise failed

    async def reattach(self, job: Job, remote_id: str | None) -> BraketCloudHandle | None:
        if remote_id:
            arns = remote_id.split()
            view = await self._thread(
                lambda: self._retrying(lambda: self._get(arns[0]), arns[0], following=True)
            )
            if view is None:
                return None
            tags = view.get("tags")
            owner = tags.get("qgateway:job") if isinstance(tags, dict) else None
            if owner != job.id:
                # The gateway tags every task it creates: one without the tag is not this
                # job's either.
                raise ExecutionError(
                    "EXECUTION_FAILED",
                    f"backends/{self.name}: task {arns[0]} belongs to {repr(owner)[:100]}",
                    kind=FailureKind.BACKEND_FAULT,
                    metadata={"providerJobId": arns[0]},
                )
            return BraketCloudHandle(job.id, arns)
        # The gateway died between a create and storing its ARN: look for the job's tags. Noted:
        # a task the lagging search does not show yet is cancelled if the job is abandoned.
        self._strays.note(job)
        found, total = await self._thread(
            lambda: self._retrying(lambda: self._tagged(job), following=True)
        )
        if total is None or any(i not in found for i in range(total)):
            if found and job.state is JobState.CANCELLING:
                # Cancelled before its other tasks were created: none will be (the step ends
                # the job unsent), so the ones Braket has would run and bill for nothing.
                await self._cancel_quietly(job.id, sorted(found.values()))
            # Otherwise `submit` creates the missing tasks under the same client tokens,
            # which returns the ones Braket already has.
            return None
        log.info("job %s: re-attached by tag to %d Braket task(s)", job.id, total)
        return BraketCloudHandle(job.id, [found[i] for i in range(total)])

    async def abandon(self, job: Job) -> None:
        # The job ends here without a handle (called by the job core only while it holds the
        # claim): nobody follows it again. What the search shows now is cancelled; what it
        # shows later, at the next upkeeps. Only a job this runner was unsure of (noted by a
        # create whose answer was lost, or a look-up by tag): a create refused outright made
        # nothing.
        if self._strays.abandon(job):  # searched for an hour from its end
            await self._cancel_strays(job.id)

    async def maintain(self) -> None:
        for watched in self._strays.due():
            await self._cancel_strays(watched.job.id)

    async def _cancel_strays(self, job_id: str) -> None:
        entry = self._strays.get(job_id)
        if entry is None:
            return
        job, done = entry.job, entry.settled
        try:
            found, _ = await self._thread(lambda: self._tagged(job))
        except Exception as exc:  # out of reach: asked again at the next upkeep
            log.info("job %s: could not look for stray Braket tasks: %s", job_id, exc)
            return
        strays = sorted(set(found.values()) - done)
        for arn in strays:
            log.warning("job %s: cancelling Braket task %s, which nothing follows", job_id, arn)
            try:
                await self._thread(
                    functools.partial(self._retrying, functools.partial(self._cancel, arn), arn)
                )
            except ExecutionError as exc:
                log.warning("job %s: could not cancel Braket task %s: %s", job_id, arn, exc)
                continue
            done.add(arn)

    async def probe(self, prepared: PreparedJob, timeout: float) -> None:
        """GetDevice (free): the device must be ONLINE and the credentials accepted."""

        def ask() -> None:
            try:
                device = self._clients().session.get_device(self.settings.device_arn)
            except Exception as exc:
                raise classify(exc, self.name) from exc
            state = str(device.get("deviceStatus", ""))
            depth = sum(
                int(q.get("queueSize", 0))
                for q in device.get("deviceQueueInfo") or []
                if q.get("queue") == "QUANTUM_TASKS_QUEUE"
            )
            self.status.set_device(state, str(depth))
            if state != "ONLINE":
                raise ExecutionError(
                    "PROVIDER_ERROR",
                    f"backends/{self.name}: device {self.settings.device_arn} is {state}",
                    kind=FailureKind.BACKEND_FAULT,
                )

        with anyio.fail_after(timeout):
            await run_blocking(ask, self._calls)

    # ------------------------------------------------------------------------- plumbing

    async def _cancel_quietly(self, job_id: str, arns: Sequence[str]) -> None:
        for arn in arns:
            try:
                stop = functools.partial(self._cancel, arn)
                await self._thread(functools.partial(self._retrying, stop, arn))
            except ExecutionError as exc:
                log.warning("job %s: could not cancel Braket task %s: %s", job_id, arn, exc)

    async def _thread(self, fn: Callable[[], T]) -> T:
        return await run_blocking(fn, self._calls)

    def _retrying(
        self,
        fn: Callable[[], T],
        arn: str | None = None,
        *,
        create: bool = False,
        following: bool = False,
    ) -> T:
        """`fn` with transient failures retried. `create`: a CreateQuantumTask, under the
        rate limiter; once one attempt failed transiently (Braket may have made that task), a
        later refusal of the key is TRANSIENT too, so `submit` and the job core look for the
        task by its tags instead of queueing the job again (a cancel while it waited would
        leave the task running, unfollowed)."""
        uncertain = False
        # Every attempt so far was throttled: Braket refused each before making anything.
        throttled = True

        def attempt() -> T:
            nonlocal uncertain, throttled
            try:
                if not create:
                    return fn()
                with self.limiter.slot():
                    return fn()
            except Exception as exc:
                was_throttled = is_throttled(exc)
                throttled = throttled and was_throttled
                uncertain = uncertain or (is_transient(exc) and not was_throttled)
                raise

        try:
            return call_with_retries(attempt, policy=self._policy, sleep=self._sleep)
        except Exception as exc:
            refusal_uncertain = create and uncertain
            err = classify(exc, self.name, arn, following=following or refusal_uncertain)
            if create and throttled and err.kind is FailureKind.TRANSIENT:
                # Queued again rather than failed: the account's rate was spent for a while.
                err = ExecutionError(
                    err.reason, err.message, kind=FailureKind.THROTTLED, metadata=err.metadata
                )
            raise err from exc

    def _key(self, job_id: str) -> str:
        prefix = self.settings.s3_prefix.strip("/")
        return f"{prefix}/qgateway/{job_id}.json" if prefix else f"qgateway/{job_id}.json"

    def _put_plan(self, job_id: str, plan: Mapping[str, Any]) -> None:
        body = json.dumps(plan, separators=(",", ":")).encode()
        self._clients().s3.put_object(
            Bucket=self.settings.s3_bucket, Key=self._key(job_id), Body=body
        )

    def _get_plan(self, job_id: str) -> dict[str, Any]:
        answer = self._clients().s3.get_object(
            Bucket=self.settings.s3_bucket, Key=self._key(job_id)
        )
        plan: dict[str, Any] = json.loads(answer["Body"].read())
        return plan

    def _remember(self, job_id: str, plan: dict[str, Any]) -> None:
        self._plans[job_id] = plan
        while len(self._plans) > 4 * self.settings.max_concurrent_tasks:
            self._plans.popitem(last=False)

    def _create(self, spec: _TaskSpec, token: str, tags: Mapping[str, str]) -> str:
        from braket.ir.openqasm import Program  # type: ignore[import-untyped]

        action = Program(source=spec.source, inputs=dict(spec.inputs) or None).json()
        extra: dict[str, Any] = {}
        if self.settings.reservation_arn:
            extra["associations"] = [
                {"arn": self.settings.reservation_arn, "type": "RESERVATION_TIME_WINDOW_ARN"}
            ]
        arn: str = self._clients().session.create_quantum_task(
            **extra,
            clientToken=token,
            deviceArn=self.settings.device_arn,
            shots=spec.shots,
            outputS3Bucket=self.settings.s3_bucket,
            outputS3KeyPrefix=self.settings.s3_prefix.strip("/") or "qgateway",
            action=action,
            tags=dict(tags),
        )
        return arn

    def _get(self, arn: str) -> dict[str, Any] | None:
        try:
            view: dict[str, Any] = self._clients().session.get_quantum_task(arn)
        except Exception as exc:
            if _error_code(exc) == "ResourceNotFoundException":
                return None
            raise
        return view

    def _cancel(self, arn: str) -> None:
        try:
            self._clients().session.cancel_quantum_task(arn)
        except Exception as exc:
            # Already final, or gone: nothing to cancel.
            if _error_code(exc) not in ("ConflictException", "ResourceNotFoundException"):
                raise

    async def _tasks_found(self, job: Job) -> dict[int, str]:
        """The job's tasks Braket has, by index, found by its tags ({} when it cannot say)."""
        try:
            found, _ = await self._thread(
                lambda: self._retrying(lambda: self._tagged(job), following=True)
            )
        except ExecutionError as exc:
            log.warning("job %s: could not look for its Braket tasks: %s", job.id, exc)
            return {}
        return found

    def _tagged(self, job: Job) -> tuple[dict[int, str], int | None]:
        """The job's tasks Braket has, by index, and how many it has in all (None when none
        was found), searched by the job's tags."""
        since = (job.created_at - _SEARCH_SLACK).strftime("%Y-%m-%dT%H:%M:%S.000Z")
        filters = [
            {"name": "deviceArn", "operator": "EQUAL", "values": [self.settings.device_arn]},
            {"name": "createdAt", "operator": "GTE", "values": [since]},
        ]
        try:
            return self._search_with(job, filters)
        except Exception as exc:
            if _error_code(exc) != "ValidationException":
                raise
        # A service that refuses the createdAt filter's format: the device's tasks, newest
        # first, the same bounded number of pages.
        return self._search_with(job, filters[:1])

    def _search_with(
        self, job: Job, filters: list[dict[str, Any]]
    ) -> tuple[dict[int, str], int | None]:
        braket = self._clients().braket
        found: dict[int, str] = {}
        total: int | None = None
        token: str | None = None
        for _ in range(_SEARCH_PAGES):
            kwargs: dict[str, Any] = {"filters": filters, "maxResults": 100}
            if token:
                kwargs["nextToken"] = token
            page = braket.search_quantum_tasks(**kwargs)
            for summary in page.get("quantumTasks", []):
                tags = summary.get("tags") or {}
                if tags.get("qgateway:job") != job.id:
                    continue
                try:
                    index = int(tags.get("qgateway:task", 0))
                    tasks = int(tags.get("qgateway:tasks", 1))
                except (TypeError, ValueError):
                    continue  # tags the gateway never writes: not one of its tasks
                if not 0 <= index < tasks:
                    continue
                found[index] = summary["quantumTaskArn"]
                total = tasks
            token = page.get("nextToken")
            if not token or (total is not None and len(found) >= total):
                break
        return found, total

    async def _follow(self, job_id: str, arn: str) -> str:
        """Polls one task until it is final; its results.json text."""
        delay = min(0.05, self.settings.poll_interval_s)
        while True:
            view = await self._thread(
                lambda: self._retrying(lambda: self._get(arn), arn, following=True)
            )
            if view is None:
                raise ExecutionError(
                    "EXECUTION_FAILED",
                    f"backends/{self.name}: Braket no longer has task {arn}",
                    kind=FailureKind.BACKEND_FAULT,
                    metadata={"providerJobId": arn},
                )
            state = view.get("status")
            queue = view.get("queueInfo")
            position = queue.get("position") if isinstance(queue, dict) else None
            if state == "QUEUED" and position not in (None, "None"):
                self.status.set_position(job_id, str(position))
            else:
                self.status.set_position(job_id, None)
            if state == "COMPLETED":
                bucket, directory = view.get("outputS3Bucket"), view.get("outputS3Directory")
                if not (isinstance(bucket, str) and bucket and isinstance(directory, str)):
                    raise ExecutionError(
                        "EXECUTION_FAILED",
                        f"backends/{self.name}: Braket task {arn} completed without its "
                        "results' location",
                        kind=FailureKind.BACKEND_FAULT,
                        metadata={"providerJobId": arn},
                    )
                key = f"{directory.rstrip('/')}/results.json"
                read = functools.partial(self._read, bucket, key)
                return await self._thread(
                    functools.partial(self._retrying, read, arn, following=True)
                )
            if state == "FAILED":
                reason = str(view.get("failureReason") or "no reason given")
                raise ExecutionError(
                    "EXECUTION_FAILED",
                    f"backends/{self.name}: Braket task failed: {reason}"[:500],
                    kind=FailureKind.BACKEND_FAULT,
                    metadata={"providerJobId": arn, "providerFailureReason": reason[:200]},
                )
            if state == "CANCELLED":
                cancelled = cancelled_error(f"the task was cancelled at backends/{self.name}")
                cancelled.metadata["providerJobId"] = arn
                raise cancelled
            await anyio.sleep(delay)
            delay = min(delay * 2, self.settings.poll_interval_s)

    def _read(self, bucket: str, key: str) -> str:
        answer = self._clients().s3.get_object(Bucket=bucket, Key=key)
        data: bytes = answer["Body"].read(_MAX_RESULTS_BYTES + 1)
        if len(data) > _MAX_RESULTS_BYTES:
            raise ExecutionError(
                "EXECUTION_FAILED",
                f"backends/{self.name}: a task's results are larger than "
                f"{_MAX_RESULTS_BYTES >> 20} MiB",
                kind=FailureKind.BACKEND_FAULT,
                metadata={"resultsKey": key[:200]},
            )
        return data.decode()


def _arns(handle: RunHandle) -> tuple[str, ...]:
    if isinstance(handle, BraketCloudHandle):
        return handle.arns
    if not handle.remote_id:
        raise TypeError(f"{handle!r} has no task ARNs")
    return tuple(handle.remote_id.split())


def _versions() -> dict[str, str]:
    from importlib import metadata

    return {name: metadata.version(name) for name in ("amazon-braket-sdk", "boto3")}


# --------------------------------------------------------------------------------------------
# Programs and plans (pure: no SDK).
# --------------------------------------------------------------------------------------------


def _task_specs(payload: QiskitPayload) -> tuple[list[_TaskSpec], dict[str, Any]]:
    """One task per PUB binding, and the plan that reads their results back."""
    specs: list[_TaskSpec] = []
    pubs: list[dict[str, Any]] = []
    tasks: list[list[int]] = []
    for p, task in enumerate(payload.tasks):
        if not isinstance(task, SamplerTask):
            raise ExecutionError(
                "UNSUPPORTED_FEATURE",
                "Braket devices run sampler PUBs only",
                kind=FailureKind.CLIENT_ERROR,
                metadata={"pubIndex": str(p)},
            )
        circuit = task.circuit.circuit()
        try:
            program: BraketProgram = shots_program(circuit, None)
        except UnsupportedCircuit as exc:
            raise ExecutionError(
                "UNSUPPORTED_FEATURE", str(exc)[:500], kind=FailureKind.CLIENT_ERROR
            ) from None
        values = program.input_values(task.parameters, task.flat_values())
        pubs.append(
            {
                "shape": list(task.shape),
                "shots": task.shots,
                "num_clbits": circuit.num_clbits,
                "registers": [[r.name, list(r.clbits)] for r in task.registers],
                "columns": list(program.columns),
            }
        )
        if not task.writes_clbits:
            continue  # every clbit reads 0: no task to pay for (nor counted when prepared)
        for b in range(task.size):
            inputs = dict(zip(program.input_names, values[b].tolist(), strict=True))
            specs.append(_TaskSpec(p, b, program.source, inputs, task.shots))
            tasks.append([p, b])
    plan = {
        "v": _PLAN_VERSION,
        "sampler_output": payload.sampler_output.value,
        "pubs": pubs,
        "tasks": tasks,
    }
    return specs, plan


def _read_results(plan: Mapping[str, Any], texts: Sequence[str]) -> tuple[JobResult, float | None]:
    """The job's result and execution seconds from its tasks' results.json texts, each parsed
    once (a sweep's results are large): the gateway's checks and the SDK's schema read the
    same document."""
    documents = [json.loads(text) for text in texts]
    return _decode(plan, documents), _execution_seconds(documents)


def _execution_seconds(documents: Sequence[Any]) -> float | None:
    """The tasks' execution durations summed, where every task reports a believable one
    (simulators): none ran longer than Braket's on-demand simulators allow a task (6 hours)."""
    total_ms = 0
    for document in documents:
        try:
            metadata = document["additionalMetadata"]["simulatorMetadata"]
            duration_ms = int(metadata["executionDuration"])
        except (KeyError, TypeError, ValueError, OverflowError):
            return None
        if not 0 <= duration_ms <= _MAX_TASK_MS:
            return None
        total_ms += duration_ms
    return total_ms / 1000.0 if documents else None


def _check_measurements(document: Any) -> None:
    """Refuses measurements that are not each 0 or 1 (as a number or, as Braket's simulators
    write them, a string) as the provider sent them: the SDK's schema turns a fractional one
    (0.9) into the integer 0, made-up counts."""
    measured = document.get("measurements") if isinstance(document, dict) else None
    if not measured:
        return
    bits = np.asarray(measured)
    kind = bits.dtype.kind
    allowed = ["0", "1"] if kind == "U" else [0, 1] if kind in "iu" else None
    if allowed is None or not bool(np.isin(bits, allowed).all()):
        raise ValueError("measurements that are not each 0 or 1")


def _decode(plan: Mapping[str, Any], documents: Sequence[Any]) -> JobResult:
    from braket.task_result import GateModelTaskResult  # type: ignore[import-untyped]
    from braket.tasks import GateModelQuantumTaskResult  # type: ignore[import-untyped]

    if plan.get("v") != _PLAN_VERSION:
        raise ValueError(f"plan version {plan.get('v')!r}")
    output = SamplerOutput(plan["sampler_output"])
    tasks = [tuple(t) for t in plan["tasks"]]
    if len(tasks) != len(documents):
        raise ValueError(f"{len(documents)} task results for {len(tasks)} tasks")
    by_task = dict(zip(tasks, documents, strict=True))
    results: list[SamplerResult] = []
    for p, pub in enumerate(plan["pubs"]):
        shape = tuple(int(d) for d in pub["shape"])
        shots = int(pub["shots"])
        registers = [
            RegisterSpec(name, tuple(int(c) for c in clbits)) for name, clbits in pub["registers"]
        ]
        builder = SamplerResultBuilder(
            int(pub["num_clbits"]),
            registers,
            shape,
            shots,
            samples=output.samples,
            counts=output.counts,
        )
        shifts = np.asarray(pub["columns"], dtype=np.uint64)
        for b in range(math.prod(shape)):
            document = by_task.get((p, b))
            if document is None:
                outcomes = np.zeros(shots, dtype=np.uint64)
            else:
                _check_measurements(document)
                # The SDK's schema on the parsed document (from_string parses the text again).
                task_result = GateModelTaskResult.parse_obj(document)
                measured = GateModelQuantumTaskResult.from_object(task_result).measurements
                bits = np.asarray(measured).astype(np.uint64)
                if bits.shape != (shots, len(shifts)):
                    raise ValueError(
                        f"measurements of shape {bits.shape}, expected {(shots, len(shifts))}"
                    )
                outcomes = np.bitwise_or.reduce(bits << shifts, axis=1)
            builder.add_samples(b, builder.decoder.int_samples(outcomes))
        results.append(builder.build())
    return JobResult(pubs=tuple(results))
