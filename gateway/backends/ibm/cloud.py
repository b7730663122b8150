"""The IBM Quantum cloud runner: jobs on the real service through qiskit-ibm-runtime's client.

`create_runner(adapter)` builds it when the backend's options carry credentials (the adapter's
`create_runner` calls it). It is a REMOTE runner (gateway.backends.runner):

- The SDK's own client: a QiskitRuntimeService (channel, instance CRN, token, url) and the
  device's IBMBackend; jobs go out through the primitives qiskit-ibm-runtime 0.50+ recommends,
  `executor_sampler.Sampler` / `executor_estimator.Estimator` (client-side pre- and
  post-processing, the circuits sent as the service's executor program; SamplerV2/EstimatorV2
  are deprecated in their favour), in job mode (`mode=backend`) on the ISA circuits the adapter
  transpiled for the device's target (`DeviceTarget`, fetched from the service, is what the
  adapter compiles for). They run one shot count (sampler) or one precision (estimator) per
  job: the adapter refuses a job whose PUBs ask for several when it is submitted
  (INVALID_ARGUMENT, UNSUPPORTED_FEATURE), as it does a job mixing sampler and estimator PUBs.
- Sessions: a gateway session's jobs run in an IBM Runtime `Session` (DEDICATED) or `Batch`
  (BATCH), the SDK's own, as the primitives' mode, so each runtime job carries its session id.
  `open_session` (called by the job core before the session's first job here) opens it with
  the session's max TTL, or re-uses the stored id after a restart (`from_id`; a provider
  session that no longer accepts jobs is replaced by a new one); `close_session` closes it
  when the gateway session is closed, and cancels it (its queued runtime jobs too) when the
  gateway session was cancelled, failed or expired.
- `submit` tags the runtime job with ``qgateway-job:<gateway job id>`` (and the sampler output
  it must be read back as) and returns its id at once. Creates are paced by a token bucket
  (`creates_per_s`); a create that failed transiently is retried with backoff, but only after
  the service's job list, searched by the tag, shows the failed attempt made no job.
- `reattach` finds a job by its stored id, or by the tag when the gateway died between the
  create call and storing the id; it never submits.
- Stray runtime jobs: the tag search may not show a job yet whose create answer was lost (a
  create the client gave up on may be committed after the look-up; IBM documents no consistency
  for the listing). A job whose create was uncertain, or that was looked up by tag, is noted;
  it is watched (`maintain`) once the job core abandoned it (it ended here without a handle:
  `abandon`, as the Braket runner does), for an hour, and while a handle of this runner
  follows it (`wait`): its tag is searched at each upkeep, and every runtime job under it that
  no handle of this runner follows is cancelled. Never while another replica may hold the job:
  it would cancel the runtime job that replica made and follows. A retried create that
  succeeds cancels, there and then, any other copy the search shows (`_submit`).
- `wait` polls the job's status (`poll_interval_s`) and decodes the runtime's PrimitiveResult
  into the gateway's JobResult from the result and the runtime job's tags alone, so a
  re-attached job needs no prepared payload: the tags carry what the result is checked
  against (its PUB count, shots, and a digest of each PUB's shape and registers' names and
  widths, as the gateway's simulators report them). `cancel` cancels the runtime job.
- Usage: once a runtime job has ended (done, failed or cancelled), its metrics (`metrics()`,
  the service's /jobs/{id}/metrics) give the quantum seconds it is charged: the outcome's
  execution_seconds, or the handle's for a job that failed or was cancelled. The service bills
  no currency through the API: cost comes from the backend's price table (per QPU second).
- Failures: 429, 5xx and connection errors are TRANSIENT ("PROVIDER_ERROR"), and a create
  whose every attempt answered 429 is THROTTLED (it made nothing: the job goes back to the
  queue); 401/403 (an expired or revoked key, still refused after one fresh key exchange) are
  CREDENTIALS
  ("PROVIDER_ERROR", metadata providerStatus): a refused create made nothing, so the job goes
  back to the queue while the breaker counts the refusal and the probe turns the backend
  NOT_SERVING (TRANSIENT while following a job the service has: it goes on there); other 4xx
  are CLIENT_ERROR ("PROVIDER_REJECTED") with the provider's error code in the metadata
  (providerErrorCode); a job FAILED at the service is BACKEND_FAULT ("EXECUTION_FAILED") with
  its reason.

The IAM address: the SDK derives it from the instance CRN unless the IAM_URL environment
variable names one, so a configured `iam_url` is set there (one per gateway process). The
service URL: a URL with a path (``http://127.0.0.1:PORT/api/v1``) is the Runtime API base
itself; one without (``https://cloud.ibm.com``) goes through the SDK's regional resolver. The
instance must be a CRN: the runner does not list the account's instances through IBM Cloud's
Global Search (the SDK's access check), and a key without access to it fails at the first call.

The token is a SecretStr until the moment it is handed to the SDK; nothing here logs it.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import logging
import math
import os
import random
import threading
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

import anyio
import anyio.to_thread
import numpy as np

from gateway.backends.base import ExecutionOutcome, PreparedJob, TargetUnavailable
from gateway.backends.qiskit.adapter import EstimatorTask, QiskitPayload, SamplerTask
from gateway.backends.runner import ExecutionModel, RunHandle, Runner, cancelled_error
from gateway.backends.stray_watch import StrayWatch
from gateway.domain.bitarray import Counts
from gateway.domain.errors import ExecutionError
from gateway.domain.failures import FailureKind
from gateway.domain.jobs import (
    EstimatorResult,
    Job,
    JobResult,
    PubResult,
    RegisterResult,
    SamplerOutput,
    SamplerResult,
)
from gateway.domain.sessions import EndReason, Session, SessionMode
from gateway.runtime.blocking import run_blocking
from gateway.runtime.retry import RetryPolicy, http_status_of, is_transient

if TYPE_CHECKING:
    from qiskit.transpiler import Target

    from gateway.backends.ibm.adapter import IbmAdapter
    from gateway.backends.ibm.options import IbmOptions

__all__ = [
    "JOB_TAG_PREFIX",
    "CloudSettings",
    "DeviceTarget",
    "IbmCloudHandle",
    "IbmCloudRunner",
    "create_runner",
]

log = logging.getLogger(__name__)
T = TypeVar("T")

JOB_TAG_PREFIX = "qgateway-job:"
_OUTPUT_TAG_PREFIX = "qgateway-output:"
_SHOTS_TAG_PREFIX = "qgateway-shots:"
_PUBS_TAG_PREFIX = "qgateway-pubs:"
# A digest, not the layout itself: the service documents no limit on a tag's length or
# characters, and register names are the client's (a QPY name may be any text).
_LAYOUT_TAG_PREFIX = "qgateway-layout:"
_IAM_ENV = "IAM_URL"
_iam_lock = threading.Lock()


@dataclass(frozen=True)
class CloudSettings:
    """What the runner needs from the backend's options (IbmOptions) and its own knobs."""

    name: str
    device: str
    channel: str
    instance: str
    url: str | None
    iam_url: str | None
    token: Any  # SecretStr: revealed only when the SDK client is built
    max_concurrent_jobs: int = 16
    poll_interval_s: float = 1.0
    creates_per_s: float = 5.0
    retry_attempts: int = 4
    retry_backoff_s: float = 0.5
    max_retry_backoff_s: float = 10.0
    request_timeout_s: float = 30.0

    @classmethod
    def from_options(cls, name: str, options: IbmOptions) -> CloudSettings:
        if options.token is None:
            raise ValueError(f"backends/{name}: the IBM cloud runner needs a token")
        if not options.instance or not options.instance.startswith("crn:"):
            raise ValueError(f"backends/{name}: `instance` must be the service instance's CRN")
        extra = {
            key: getattr(options, key)
            for key in (
                "max_concurrent_jobs",
                "poll_interval_s",
                "creates_per_s",
                "retry_attempts",
                "retry_backoff_s",
            )
            if getattr(options, key, None) is not None
        }
        return cls(
            name=name,
            device=options.backend,
            channel=options.channel or "ibm_quantum_platform",
            instance=options.instance,
            url=options.url,
            iam_url=options.iam_url,
            token=options.token,
            **extra,
        )


def create_runner(adapter: IbmAdapter) -> IbmCloudRunner:
    """The cloud runner of an IBM backend whose options carry credentials."""
    return IbmCloudRunner(CloudSettings.from_options(adapter.context.name, adapter.ibm_options))


class DeviceTarget:
    """The device's Target as the service describes it (configuration and properties): what
    circuits are transpiled for.

    Fetched on a thread of its own, one fetch at a time, each call waiting at most
    `wait_s`: the SDK reads the service's answers without a read timeout, and an address that
    accepts connections and never answers held the gateway's start (and each health probe)
    for minutes. A fetch still running is waited on again by the next call rather than
    started anew; one running past `ABANDON_AFTER` waits is left to its thread (logged) so
    that a hung read cannot keep the backend from ever being described, but only while no
    other abandoned fetch is still hanging: at most two threads (and sockets) ever hang,
    however long the outage (the SDK offers no read timeout to end them).
    """

    ABANDON_AFTER = 4

    def __init__(self, name: str, options: IbmOptions, wait_s: float) -> None:
        self._name = name
        self._settings = CloudSettings.from_options(name, options)
        self._wait_s = wait_s
        self._lock = threading.Lock()
        self._fetch: concurrent.futures.Future[Target] | None = None
        self._waits = 0
        self._abandoned: concurrent.futures.Future[Target] | None = None

    def get(self) -> Target:
        """The target (blocking: call it off the event loop).

        Raises:
            TargetUnavailable: the service, its IAM or the key failed, or no answer came
                within `wait_s` (the whole error is logged; the message shows only its HTTP
                status or type).
        """
        with self._lock:
            fetch = self._fetch
            failed = fetch is not None and fetch.done() and fetch.exception() is not None
            hung = fetch is not None and not fetch.done() and self._waits >= self.ABANDON_AFTER
            if hung and (self._abandoned is None or self._abandoned.done()):
                log.warning("backend %s: a target fetch hung; starting another", self._name)
                self._abandoned, failed = fetch, True
            if fetch is None or failed:
                fetch = self._fetch = concurrent.futures.Future()
                self._waits = 0
                threading.Thread(
                    target=self._run, args=(fetch,), name="ibm-target", daemon=True
                ).start()
            self._waits += 1
        try:
            return fetch.result(timeout=self._wait_s)
        except concurrent.futures.TimeoutError:
            raise TargetUnavailable(
                "the device's description was not fetched from IBM Quantum: no answer "
                f"within {self._wait_s:g} s"
            ) from None

    def _run(self, fetch: concurrent.futures.Future[Target]) -> None:
        try:
            target: Target = _Client(self._settings).backend().target
        except Exception as exc:
            log.warning("backend %s: fetching the device's target failed: %r", self._name, exc)
            status = http_status_of(exc)
            cause = f"HTTP {status}" if status is not None else type(exc).__name__
            fetch.set_exception(
                TargetUnavailable(
                    f"the device's description could not be fetched from IBM Quantum ({cause})"
                )
            )
            return
        fetch.set_result(target)


# --------------------------------------------------------------------------------------------
# The SDK client, built lazily and rebuilt after an authentication failure.
# --------------------------------------------------------------------------------------------


def _set_iam_url(iam_url: str | None) -> None:
    if iam_url is None:
        return
    with _iam_lock:
        current = os.environ.get(_IAM_ENV)
        if current is not None and current != iam_url:
            raise ValueError(
                "one gateway process can use one IBM IAM address; two IBM backends name "
                "different iam_url values"
            )
        os.environ[_IAM_ENV] = iam_url


def _runtime_url(settings: CloudSettings) -> tuple[str | None, Callable[..., str] | None]:
    """The SDK's `url` and `url_resolver`: a URL with a path is the API base as given."""
    if settings.url is None:
        return None, None
    if urlsplit(settings.url).path not in ("", "/"):
        return settings.url, lambda url, instance, private_endpoint=False, channel="": url
    return settings.url, None


class _KeyRejected(Exception):
    """IAM refused the API key (HTTP 400/401 from the token exchange)."""

    status_code = 401


def _check_key(settings: CloudSettings) -> None:
    """Exchanges the key for a token once with a fresh token manager, so a refused key fails
    at once: the SDK would fall back to sending the raw key, and its token manager paces a
    retry after a failed exchange for up to a minute."""
    from qiskit_ibm_runtime.api.auth import CloudAuth

    auth = CloudAuth(api_key=settings.token.get_secret_value(), crn=settings.instance)
    try:
        auth.tm.get_token()
    except Exception as exc:
        status = http_status_of(exc)
        if status is not None and status in (400, 401, 403):
            raise _KeyRejected(f"IAM refused the API key (HTTP {status})") from None
        raise


class _Client:
    """The QiskitRuntimeService and the device's IBMBackend (blocking; used from threads)."""

    def __init__(self, settings: CloudSettings) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._service: Any = None
        self._backend: Any = None

    def service(self) -> Any:
        with self._lock:
            if self._service is None:
                self._service = self._build()
            return self._service

    def backend(self) -> Any:
        service = self.service()
        with self._lock:
            if self._backend is None:
                self._backend = service.backend(self.settings.device)
            return self._backend

    def reset(self) -> None:
        """Drops the client: the next call authenticates again (a fresh IAM token)."""
        with self._lock:
            self._service = None
            self._backend = None

    def _build(self) -> Any:
        from qiskit_ibm_runtime import QiskitRuntimeService

        class GatewayRuntimeService(QiskitRuntimeService):  # type: ignore[misc]
            # The configured CRN is the one instance used: no Global Search listing.
            def instances(self) -> list[dict[str, Any]]:
                return [
                    {
                        "crn": self._account.instance,
                        "plan": "",
                        "name": "",
                        "tags": [],
                        "pricing_type": "",
                    }
                ]

            # The client-side primitives name the backend to the service's `_run`, which
            # looks it up again: without this cache every create would list the backends
            # first, and a refused token would surface there as "no backend matches"
            # instead of as the create's own 401.
            def backend(
                self,
                name: str,
                instance: str | None = None,
                use_fractional_gates: bool | None = False,
                calibration_id: str | None = None,
            ) -> Any:
                key = (name, instance, use_fractional_gates, calibration_id)
                cache = self.__dict__.setdefault("_gateway_backends", {})
                if key not in cache:
                    cache[key] = super().backend(
                        name,
                        instance=instance,
                        use_fractional_gates=use_fractional_gates,
                        calibration_id=calibration_id,
                    )
                return cache[key]

        settings = self.settings
        _set_iam_url(settings.iam_url)
        _check_key(settings)
        # The SDK logs every submission at INFO; the gateway logs its own view of jobs.
        logging.getLogger("qiskit_ibm_runtime").setLevel(logging.WARNING)
        url, resolver = _runtime_url(settings)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            service = GatewayRuntimeService(
                channel=settings.channel,
                token=settings.token.get_secret_value(),
                instance=settings.instance,
                url=url,
                url_resolver=resolver,
            )
        _bound_reads(service, settings.request_timeout_s)
        return service


def _bound_reads(service: Any, read_timeout_s: float) -> None:
    """Bounds each socket read of the service's HTTP sessions. The SDK waits for an answer
    with no read timeout (its RetrySession's (5 s, None)): a provider that accepted a GET and
    never answered held the poll's thread, and with it a slot of the polls' limit, for ever;
    once `max_concurrent_jobs` polls hung, no job was polled again. The bound is between
    bytes, so a large result still downloads."""
    clients = [service._active_api_client, *service._api_clients.values()]
    for client in clients:
        connect_s, _ = client._session._timeout
        client._session._timeout = (connect_s, read_timeout_s)


# --------------------------------------------------------------------------------------------
# Pacing creates.
# --------------------------------------------------------------------------------------------


class _TokenBucket:
    """At most `rate` acquisitions per second, evenly spaced."""

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._rate = rate
        # No bursts: creates are spaced 1/rate apart, so no one-second window sees more.
        self._capacity = 1.0
        self._tokens = self._capacity
        self._clock = clock
        self._updated = clock()
        self._lock = threading.Lock()

    def delay(self) -> float:
        """Takes a token; the seconds to wait before using it."""
        with self._lock:
            now = self._clock()
            self._tokens = min(self._capacity, self._tokens + (now - self._updated) * self._rate)
            self._updated = now
            self._tokens -= 1.0
            if self._tokens >= 0:
                return 0.0
            return -self._tokens / self._rate


# --------------------------------------------------------------------------------------------
# The runner.
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _ProviderSession:
    """A gateway session's IBM Runtime Session or Batch (the SDK's object, built on the
    service the runner had then: rebuilt from its id after the client was rebuilt)."""

    id: str
    batch: bool
    sdk: Any
    service: Any


class IbmCloudHandle(RunHandle):
    """A runtime job: `remote_id` is its id (never None)."""

    def __init__(self, job_id: str, remote_id: str) -> None:
        super().__init__(job_id, remote_id)


class IbmCloudRunner(Runner):
    """The REMOTE runner of an IBM backend with credentials (see the module docstring)."""

    model = ExecutionModel.REMOTE

    def __init__(self, settings: CloudSettings, *, sleep: Callable[[float], None] = time.sleep):
        self.settings = settings
        self.name = settings.name
        self._client = _Client(settings)
        self._sleep = sleep
        self._bucket = _TokenBucket(settings.creates_per_s)
        self._policy = RetryPolicy(
            max_attempts=settings.retry_attempts,
            initial_backoff_s=min(settings.retry_backoff_s, settings.max_retry_backoff_s),
            max_backoff_s=settings.max_retry_backoff_s,
        )
        self._calls = anyio.CapacityLimiter(8)
        self._waits = anyio.CapacityLimiter(settings.max_concurrent_jobs)
        # Gateway session id -> its provider session, for the sessions open here.
        self._sessions: dict[str, _ProviderSession] = {}
        self._sessions_lock = threading.Lock()
        # Jobs this runner was unsure whether a create made, searched once abandoned or while
        # a wait of this runner follows them (this replica holds the claim). Settled ids: the
        # runtime jobs followed by a handle, or cancelled already.
        self._strays = StrayWatch("runtime jobs")
        # Jobs being submitted or looked up here: a runtime job just made or found is not yet
        # among the kept ids, and an upkeep meanwhile would cancel the one about to be followed.
        self._busy: set[str] = set()

    @property
    def capacity(self) -> int:
        return self.settings.max_concurrent_jobs

    # ------------------------------------------------------------------------- contract

    async def submit(self, prepared: PreparedJob, job: Job) -> IbmCloudHandle:
        payload = prepared.payload
        inner = getattr(payload, "inner", payload)
        options = getattr(payload, "options", None)
        if not isinstance(inner, QiskitPayload):
            raise TypeError(f"not an IBM payload: {type(payload).__name__}")
        limit = prepared.max_run_time_s
        # An upkeep meanwhile leaves the job's strays alone (`_submit` keeps what it follows).
        self._busy.add(job.id)
        try:
            remote_id = await self._run(
                lambda: self._submit(inner, options, job, limit), self._calls
            )
        finally:
            self._busy.discard(job.id)
        return IbmCloudHandle(job.id, remote_id)

    async def wait(self, handle: RunHandle) -> ExecutionOutcome:
        remote_id = _remote(handle)
        job_id = handle.job_id
        # A job this runner was unsure of (a create given up on, a look-up that found nothing:
        # a copy may show up late) is searched for strays while it is followed here, and no
        # longer once it is not: another replica may hold it next.
        self._strays.follow_here(job_id, remote_id)
        ended = True  # not followed here any more (a lost touch is followed again)
        try:
            while True:
                outcome = await self._run(lambda: self._poll(handle, remote_id), self._waits)
                if outcome is not None:
                    return outcome
                await anyio.sleep(self.settings.poll_interval_s)
        except ExecutionError as err:
            ended = err.kind is not FailureKind.TRANSIENT
            raise
        finally:
            self._strays.stop_following(job_id, ended)

    async def cancel(self, handle: RunHandle) -> None:
        remote_id = _remote(handle)

        def cancel() -> None:
            from qiskit_ibm_runtime.exceptions import RuntimeInvalidStateError

            job = self._call(lambda: self._client.service().job(remote_id), remote_id)
            try:
                self._call(job.cancel, remote_id)
            except ExecutionError as err:
                if not isinstance(err.__cause__, RuntimeInvalidStateError):
                    raise  # a final job cannot be cancelled: nothing to do

        await self._run(cancel, self._calls, bounded=True)

    async def reattach(self, job: Job, remote_id: str | None) -> IbmCloudHandle | None:
        def find() -> str | None:
            try:
                return self._find(job.id, remote_id)
            except ExecutionError as err:
                raise _while_following(err) from err

        if remote_id is None:
            # Its create may have been made (or still show up in the tag search, found or
            # not): noted, what this runner follows settled; searched
            # for only once the job core abandons the job, or while it is followed here.
            self._strays.note(job)
        self._busy.add(job.id)
        try:
            found = await self._run(find, self._calls, bounded=True)
            if found is None:
                return None
            self._strays.settle(job.id, found)
        finally:
            self._busy.discard(job.id)
        return IbmCloudHandle(job.id, found)

    async def abandon(self, job: Job) -> None:
        # The job ends here without a handle (called by the job core only while it holds the
        # claim): nobody follows it again. What the search shows now is cancelled; what it
        # shows later, at the next upkeeps. Only a job this runner was unsure of (noted by a
        # create given up on or a look-up by tag, or a look-up that failed): a create refused
        # outright made nothing.
        if self._strays.abandon(job):  # searched for an hour from its end
            await self._cancel_strays(job.id)

    async def maintain(self) -> None:
        for watched in self._strays.due():
            await self._cancel_strays(watched.job.id)

    async def probe(self, prepared: PreparedJob, timeout: float) -> None:
        """Asks for the device's status (free, unlike a job): answering and operational."""

        def ask() -> None:
            status = self._call(lambda: self._client.backend().status(), None, attempts=1)
            if not status.operational:
                raise ExecutionError(
                    "PROVIDER_ERROR",
                    f"backends/{self.name}: the device is not operational ({status.status_msg})"[
                        :300
                    ],
                    kind=FailureKind.BACKEND_FAULT,
                )

        with anyio.fail_after(timeout):
            await run_blocking(ask, self._calls)

    async def open_session(self, session: Session) -> str | None:
        if session.provider_session_id:
            # A lookup: bounded (the SDK reads its answer without a read timeout).
            reused = await self._run(
                lambda: self._reuse_session(session), self._calls, bounded=True
            )
            if reused is not None:
                return reused
        # A create: waited for up to its own request timeout, never given up while it may
        # still open a session (its thread goes on; nobody would learn the id, or close it).
        return await self._run(lambda: self._create_session(session), self._calls)

    async def close_session(self, session: Session) -> None:
        await self._run(lambda: self._close_session(session), self._calls, bounded=True)

    # ------------------------------------------------------------------------- stray jobs

    async def _cancel_strays(self, job_id: str) -> None:
        """Cancels the runtime jobs under the job's tag that no handle follows (none while the
        job is being submitted or looked up here)."""
        if job_id in self._busy:
            return
        try:
            await self._run(lambda: self._stop_strays(job_id), self._calls, bounded=True)
        except ExecutionError as exc:  # out of reach: asked again at the next upkeep
            log.info("job %s: could not look for stray runtime jobs: %s", job_id, exc)

    def _stop_strays(self, job_id: str, *, submitting: bool = False) -> None:
        """`_cancel_strays`, blocking; `submitting`: called by the job's own submit, which
        has just kept the runtime job it follows.

        Raises:
            ExecutionError: the tag search failed.
        """
        entry = self._strays.get(job_id)
        if entry is None:
            return
        kept = entry.settled
        service_call = self._client.service
        listed = self._call(
            lambda: service_call().jobs(job_tags=[JOB_TAG_PREFIX + job_id], limit=10), None
        )
        for stray in [j for j in listed or () if _tagged_for(j, job_id)]:
            remote_id = str(stray.job_id())
            if remote_id in kept or (not submitting and job_id in self._busy):
                continue
            log.warning("job %s: cancelling runtime job %s: nothing follows it", job_id, remote_id)
            try:
                self._call(stray.cancel, remote_id)
            except ExecutionError as exc:
                from qiskit_ibm_runtime.exceptions import RuntimeInvalidStateError

                if not isinstance(exc.__cause__, RuntimeInvalidStateError):
                    log.warning("job %s: runtime job %s not cancelled (%s)", job_id, remote_id, exc)
                    continue  # asked again at the next upkeep
            kept.add(remote_id)  # cancelled, or already ended: not asked again

    # ------------------------------------------------------------------------- blocking halves

    def _reuse_session(self, session: Session) -> str | None:
        """The session's stored provider session, kept for its jobs while the service still
        accepts jobs in it; None when it has ended."""
        batch = session.mode is SessionMode.BATCH
        existing = session.provider_session_id
        found = self._session_from_id(existing, batch)
        if found is not None:
            accepting = self._call(lambda: found.sdk.details() or {}, None)
            if accepting.get("accepting_jobs"):
                self._keep(session.id, found)
                return existing
        log.info("session %s: runtime session %s has ended", session.id, existing)
        return None

    def _create_session(self, session: Session) -> str:
        batch = session.mode is SessionMode.BATCH
        cls = _session_class(batch)
        max_time = max(1, math.ceil(session.max_ttl_s))
        # The backend is looked up in the call: a retry after a refused token uses the new client.
        # Constructing it creates the session at the service (POST /sessions): a create, never
        # repeated after an unanswered attempt, which may have opened one (nobody would close
        # it, and a dedicated one holds the device until its max time).
        sdk = self._call(lambda: cls(self._client.backend(), max_time=max_time), None, attempts=1)
        if not sdk.session_id:
            raise ExecutionError(
                "PROVIDER_ERROR",
                f"backends/{self.name}: the service opened a session without an id",
                kind=FailureKind.BACKEND_FAULT,
            )
        opened = _ProviderSession(str(sdk.session_id), batch, sdk, self._client.service())
        self._keep(session.id, opened)
        log.info(
            "session %s: runtime %s %s opened",
            session.id,
            "batch" if batch else "session",
            opened.id,
        )
        return opened.id

    def _keep(self, session_id: str, provider: _ProviderSession) -> None:
        with self._sessions_lock:
            self._sessions[session_id] = provider

    def _session_from_id(self, provider_id: str, batch: bool) -> _ProviderSession | None:
        """The SDK's Session/Batch for an existing provider session; None when the service
        does not have it (or has it in the other mode)."""
        from qiskit_ibm_runtime.exceptions import IBMInputValueError

        cls = _session_class(batch)

        def build() -> _ProviderSession:
            service = self._client.service()
            return _ProviderSession(provider_id, batch, cls.from_id(provider_id, service), service)

        try:
            return self._call(build, None)
        except ExecutionError as err:
            if isinstance(err.__cause__, IBMInputValueError):
                return None
            raise

    def _close_session(self, session: Session) -> None:
        with self._sessions_lock:
            kept = self._sessions.pop(session.id, None)
        # Cancelled, failed (ABORT) or expired: the gateway cancels the session's jobs, and the
        # provider session goes with whatever it still queues. Closed: its jobs ran out.
        cancel = session.end_reason is not EndReason.CLOSED

        def close() -> bool:
            provider = kept
            if provider is None or provider.service is not self._client.service():
                # Not opened here, or built on a client since rebuilt (a retry after a
                # refused token lands here too).
                provider = self._session_from_id(
                    session.provider_session_id, session.mode is SessionMode.BATCH
                )
                if provider is None:
                    return False  # the service no longer has it
            (provider.sdk.cancel if cancel else provider.sdk.close)()
            return True

        if self._call(close, None):
            log.info(
                "session %s: runtime session %s %s",
                session.id,
                session.provider_session_id,
                "cancelled" if cancel else "closed",
            )

    def _mode(self, backend: Any, job: Job) -> Any:
        """The primitives' mode: the job's runtime session when it belongs to a gateway
        session that has one here, else the device (job mode)."""
        if not job.session:
            return backend
        with self._sessions_lock:
            provider = self._sessions.get(job.session)
        if provider is None:
            log.warning("job %s: its session has no runtime session here; job mode", job.id)
            return backend
        if provider.service is not self._client.service():
            # The client was rebuilt (a new IAM token): the SDK object holds the old one.
            rebuilt = self._session_from_id(provider.id, provider.batch)
            if rebuilt is None:
                raise ExecutionError(
                    "PROVIDER_ERROR",
                    f"backends/{self.name}: runtime session {provider.id} is gone",
                    kind=FailureKind.BACKEND_FAULT,
                )
            self._keep(job.session, rebuilt)
            provider = rebuilt
        return provider.sdk

    def _submit(
        self, payload: QiskitPayload, options: Any, job: Job, max_run_time_s: float | None = None
    ) -> str:
        # The adapter refused what one runtime job cannot hold (PUBs of both kinds, or of
        # different shots or precisions: _check_runtime_job).
        tasks = payload.tasks
        samplers = [t for t in tasks if isinstance(t, SamplerTask)]
        primitive = "sampler" if samplers else "estimator"
        pubs = [
            _sampler_pub(t) if isinstance(t, SamplerTask) else _estimator_pub(t, self.name)
            for t in tasks
        ]
        tag = JOB_TAG_PREFIX + job.id
        tags = [tag, _OUTPUT_TAG_PREFIX + payload.sampler_output.value]
        # The result is checked against it (a re-attached job too): PUBs missing from what
        # the service returned are a failed job, not a SUCCEEDED one with less than it asked.
        tags.append(_PUBS_TAG_PREFIX + str(len(pubs)))
        # What each PUB's result must look like (registers, shape), read back from the tag so
        # that a re-attached job, which has no prepared payload, is checked too.
        tags.append(_LAYOUT_TAG_PREFIX + _layout_digest([_expected_layout(t) for t in tasks]))
        if samplers:
            # Twirling rounds the shots up to whole randomizations: the job keeps the first
            # ones it asked for (read back from the tag, so a re-attached job does too).
            tags.append(_SHOTS_TAG_PREFIX + str(samplers[0].shots))
        runtime_options = options.runtime_options(primitive) if options is not None else {}
        if max_run_time_s is not None:
            # JobOptions.max_execution_time also bounds the runtime job's own execution time
            # (whole seconds): the gateway's limit counts IBM's queue too, and cancels; with
            # it alone, a cancel that did not get through left the job unbounded at IBM.
            runtime_options = {
                **runtime_options,
                "max_execution_time": max(1, math.ceil(max_run_time_s)),
            }
        attempt = 1
        throttled = True  # every attempt so far answered 429: none made a job
        while True:
            delay = self._bucket.delay()
            if delay > 0:
                self._sleep(delay)
            try:
                created = self._create(primitive, pubs, tags, runtime_options, job)
            except ExecutionError as err:
                throttled = throttled and err.metadata.get("providerStatus") == "429"
                if throttled and attempt >= self._policy.max_attempts:
                    # Nothing was made: the job goes back to the queue, not FAILED.
                    raise ExecutionError(
                        err.reason, err.message, kind=FailureKind.THROTTLED, metadata=err.metadata
                    ) from err
                if attempt > 1 and err.kind is FailureKind.CREDENTIALS:
                    # An earlier attempt's outcome is unknown (the service may still make
                    # that job): TRANSIENT, which the job core answers by looking the job up
                    # by its tag; CREDENTIALS would queue it again and create it a second
                    # time, or leave the first running if the job is cancelled meanwhile.
                    raise _while_following(err) from err
                if (
                    err.kind is FailureKind.TRANSIENT
                    and err.metadata.get("providerStatus") != "429"
                ):
                    # It may have made a runtime job the search shows only later: noted, and
                    # searched for once the job is followed here (a retry that succeeds, the
                    # job core's look-up) or abandoned (its end), never before: another
                    # replica may hold the job by then.
                    self._strays.note(job)
                if err.kind is not FailureKind.TRANSIENT or attempt >= self._policy.max_attempts:
                    raise
                log.warning("job %s: create failed transiently (%s); checking by tag", job.id, err)
            else:
                if self._strays.settle(job.id, created):
                    # An earlier create of the job may have made a runtime job the tag search
                    # missed (a slow service commits it after the look-up, or the search does
                    # not show it yet; or it was made before a restart): two runtime jobs,
                    # both billed. This one is followed, and any other under the tag is
                    # cancelled, now or when the search shows it (`maintain`).
                    try:
                        self._stop_strays(job.id, submitting=True)
                    except ExecutionError as err:  # asked again at the next upkeep
                        log.warning("job %s: looking for a copy failed: %s", job.id, err)
                return created
            self._sleep(self._policy.backoff(attempt, _rng))
            attempt += 1
            # The failed attempt may have made the job (a reply lost after acceptance).
            try:
                found = self._find(job.id, None)
            except ExecutionError as err:
                # Not CREDENTIALS, which would queue the job again and create it without a
                # look: TRANSIENT, which the job core answers by looking it up by its tag.
                raise _while_following(err) from err
            if found is not None:
                self._strays.settle(job.id, found)  # a copy the search shows later is cancelled
                return found

    def _create(
        self,
        primitive: str,
        pubs: list[Any],
        tags: list[str],
        runtime_options: Mapping[str, Any],
        job: Job,
    ) -> str:
        def create() -> str:
            # The primitives qiskit-ibm-runtime 0.50+ recommends (SamplerV2/EstimatorV2 are
            # deprecated in their favour): pre- and post-processing on the client side, the
            # circuits sent as the service's executor program.
            from qiskit_ibm_runtime.executor_estimator import Estimator
            from qiskit_ibm_runtime.executor_sampler import Sampler

            backend = self._client.backend()
            cls = Sampler if primitive == "sampler" else Estimator
            options = {**runtime_options, "environment": {"job_tags": tags}}
            runner = cls(mode=self._mode(backend, job), options=options)
            return str(runner.run(pubs).job_id())

        return self._call(create, None, attempts=1)

    def _find(self, job_id: str, remote_id: str | None) -> str | None:
        service_call = self._client.service
        if remote_id is not None:
            from qiskit_ibm_runtime.exceptions import RuntimeJobNotFound

            try:
                found = self._call(lambda: service_call().job(remote_id), remote_id)
            except ExecutionError as err:
                if isinstance(err.__cause__, RuntimeJobNotFound):
                    return None
                raise
            if not _tagged_for(found, job_id):
                # The gateway tags every runtime job it creates: a stored id that names
                # another (the service's mistake, a store restored elsewhere) is not followed.
                raise ExecutionError(
                    "EXECUTION_FAILED",
                    f"backends/{self.name}: runtime job {remote_id} is not this job's",
                    kind=FailureKind.BACKEND_FAULT,
                    metadata={"providerJobId": remote_id},
                )
            return str(found.job_id())
        listed = self._call(
            lambda: service_call().jobs(job_tags=[JOB_TAG_PREFIX + job_id], limit=10), None
        )
        # The service's tag filter is not taken on trust: a job it lists without this job's
        # tag (another tenant's) is neither followed nor cancelled as a copy.
        jobs = [job for job in listed or () if _tagged_for(job, job_id)]
        if not jobs:
            return None
        if len(jobs) > 1:
            # Two creates of one job both made one (the service's tag search lagged behind
            # an accepted create): one is followed, the others would run and bill for nothing.
            log.error(
                "job %s: %d runtime jobs carry its tag; following the oldest, cancelling the rest",
                job_id,
                len(jobs),
            )
            for extra in jobs[:-1]:
                self._cancel_copy(job_id, extra)
        return str(jobs[-1].job_id())

    def _cancel_copy(self, job_id: str, copy: Any) -> None:
        remote_id = str(copy.job_id())
        try:
            self._call(copy.cancel, remote_id)
        except ExecutionError as err:  # an ended copy cannot be cancelled: nothing to stop
            log.warning("job %s: extra runtime job %s not cancelled (%s)", job_id, remote_id, err)

    def _poll(self, handle: RunHandle, remote_id: str) -> ExecutionOutcome | None:
        try:
            return self._poll_once(handle, remote_id)
        except ExecutionError as err:
            raise _while_following(err) from err

    def _quantum_seconds(self, job: Any, remote_id: str) -> float | None:
        """The quantum seconds the service charges an ended job, from its metrics; None when
        it reports none (or they cannot be read: usage is not worth failing a job for)."""
        try:
            metrics = self._call(job.metrics, remote_id)
        except ExecutionError as err:
            log.warning("runtime job %s: metrics not read (%s)", remote_id, err.reason)
            return None
        usage = metrics.get("usage") if isinstance(metrics, dict) else None
        if not isinstance(usage, dict):
            return None
        for key in ("quantum_seconds", "qpu_charge_time_seconds", "seconds"):
            value = usage.get(key)
            # JSON from the service may hold Infinity or NaN (Python's parser takes both).
            if isinstance(value, bool) or not isinstance(value, int | float):
                continue
            if math.isfinite(value) and value >= 0:
                return float(value)
        return None

    def _poll_once(self, handle: RunHandle, remote_id: str) -> ExecutionOutcome | None:
        job = self._call(lambda: self._client.service().job(remote_id), remote_id)
        status = str(self._call(job.status, remote_id))
        if status in ("ERROR", "CANCELLED"):
            # It may have run before it failed or was cancelled: what it used is reported.
            handle.execution_seconds = self._quantum_seconds(job, remote_id)
        if status == "DONE":
            result = self._call(job.result, remote_id)
            tags = job.tags or []
            seconds = self._quantum_seconds(job, remote_id)
            # Charged even when the result cannot be read: the device time was used.
            handle.execution_seconds = seconds
            try:
                return _outcome(
                    result,
                    _output_from_tags(tags),
                    seconds,
                    _shots_from_tags(tags),
                    _pubs_from_tags(tags),
                    _layout_digest_from_tags(tags),
                )
            except (AttributeError, KeyError, TypeError, ValueError) as exc:
                problem = (
                    f"the runtime result does not answer the job: {exc}"
                    if isinstance(exc, _Mismatch)
                    else f"unreadable runtime result: {type(exc).__name__}"
                )
                raise ExecutionError(
                    "EXECUTION_FAILED",
                    f"backends/{self.name}: {problem}",
                    kind=FailureKind.BACKEND_FAULT,
                    metadata={"providerJobId": remote_id},
                ) from None
        if status == "ERROR":
            try:
                reason = str(job.error_message() or "no reason given")
            except Exception as exc:  # the reason is fetched with the results
                reason = f"(its reason could not be read: {type(exc).__name__})"
            raise ExecutionError(
                "EXECUTION_FAILED",
                f"backends/{self.name}: runtime job {remote_id} failed: {reason}"[:500],
                kind=FailureKind.BACKEND_FAULT,
                metadata={"providerJobId": remote_id},
            )
        if status == "CANCELLED":
            cancelled = cancelled_error(f"the job was cancelled at backends/{self.name}")
            cancelled.metadata["providerJobId"] = remote_id
            raise cancelled
        return None

    # ------------------------------------------------------------------------- plumbing

    async def _run(
        self, fn: Callable[[], T], limiter: anyio.CapacityLimiter, *, bounded: bool = False
    ) -> T:
        """`fn` on a thread. `bounded`: given up (TRANSIENT) after every attempt's request
        timeout and back-off. The SDK reads its GET and cancel answers without a read timeout,
        and a stalled cancel or lookup would hold the job's step (and its slot) for ever. Not
        for the create (its own long timeout) nor the polls, which download results (a large
        one can take longer) and run beside the step, which keeps its own deadline."""
        if not bounded:
            return await run_blocking(fn, limiter)
        settings = self.settings
        limit = settings.retry_attempts * (
            settings.request_timeout_s + settings.max_retry_backoff_s
        )
        try:
            with anyio.fail_after(limit):
                return await run_blocking(fn, limiter)
        except TimeoutError:
            raise ExecutionError(
                "PROVIDER_ERROR",
                f"backends/{self.name}: IBM Quantum did not answer within {limit:g}s",
                kind=FailureKind.TRANSIENT,
            ) from None

    def _call(self, fn: Callable[[], T], remote_id: str | None, *, attempts: int = 0) -> T:
        """One SDK call; transient failures retried (never a create: `attempts=1`), every
        failure as an ExecutionError whose __cause__ is the SDK's exception."""
        limit = attempts or self._policy.max_attempts
        attempt = 1
        reauthenticated = False
        while True:
            try:
                return fn()
            except ExecutionError:
                raise
            except Exception as exc:
                err = self._error(exc, remote_id)
                if err.kind is FailureKind.CREDENTIALS:
                    self._client.reset()
                    if not reauthenticated:
                        # A refused bearer token may only have expired: once, with a fresh
                        # exchange of the key (a refused call created nothing, so even a
                        # create may be repeated); a refused key fails the exchange itself.
                        reauthenticated = True
                        continue
                if err.kind is not FailureKind.TRANSIENT or attempt >= limit:
                    raise err from exc
            self._sleep(self._policy.backoff(attempt, _rng))
            attempt += 1

    def _error(self, exc: BaseException, remote_id: str | None) -> ExecutionError:
        metadata = {"providerJobId": remote_id} if remote_id else {}
        status = _status_of(exc)
        if status is not None:
            metadata["providerStatus"] = str(status)
        code = _provider_code(exc)
        if code is not None:
            metadata["providerErrorCode"] = code
        text = f"backends/{self.name}: {type(exc).__name__}: {_first_line(exc)}"[:500]
        if _auth_failure(exc):
            return ExecutionError(
                "PROVIDER_ERROR",
                f"backends/{self.name}: the service refused the credentials (HTTP "
                f"{status or 401}); check the API key and instance",
                kind=FailureKind.CREDENTIALS,
                metadata=metadata,
            )
        if _is_transient(exc):
            return ExecutionError(
                "PROVIDER_ERROR", text, kind=FailureKind.TRANSIENT, metadata=metadata
            )
        if status is not None and 400 <= status < 500 and status != 404:
            return ExecutionError(
                "PROVIDER_REJECTED", text, kind=FailureKind.CLIENT_ERROR, metadata=metadata
            )
        return ExecutionError(
            "EXECUTION_FAILED", text, kind=FailureKind.BACKEND_FAULT, metadata=metadata
        )


# Jitter of retry backoffs.
_rng = random.Random()


def _tagged_for(runtime_job: Any, job_id: str) -> bool:
    """Whether a runtime job carries the gateway job's tag (unreadable tags: it does not)."""
    try:
        tags = runtime_job.tags
    except Exception:
        return False
    return isinstance(tags, list | tuple) and JOB_TAG_PREFIX + job_id in tags


def _while_following(err: ExecutionError) -> ExecutionError:
    """Refused credentials while following (or looking for) a job the provider may have: the
    job goes on there, so the failure is TRANSIENT and the job core re-attaches with backoff
    until the key works again (the probe reports the backend NOT_SERVING meanwhile). Only a
    submit's refusal is CREDENTIALS (the job is queued again, the breaker counts it)."""
    if err.kind is FailureKind.CREDENTIALS:
        return ExecutionError(
            err.reason, err.message, kind=FailureKind.TRANSIENT, metadata=err.metadata
        )
    return err


def _session_class(batch: bool) -> Any:
    from qiskit_ibm_runtime import Batch
    from qiskit_ibm_runtime import Session as RuntimeSession

    return Batch if batch else RuntimeSession


def _remote(handle: RunHandle) -> str:
    if handle.remote_id is None:
        raise TypeError(f"{handle!r} has no runtime job id")
    return handle.remote_id


def _chain(exc: BaseException) -> list[BaseException]:
    """The exception, its causes and contexts: the SDK re-raises with `from None` (the status
    is then on the context only)."""
    out: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and len(out) < 8 and current not in out:
        out.append(current)
        current = current.__cause__ or current.__context__
    return out


def _status_of(exc: BaseException) -> int | None:
    for link in _chain(exc):
        if type(link).__name__ == "IBMNotAuthorizedError":
            return 401
        status = http_status_of(link)
        if status is not None:
            return status
    return None


def _auth_failure(exc: BaseException) -> bool:
    return _status_of(exc) in (401, 403)


def _is_transient(exc: BaseException) -> bool:
    return any(is_transient(link) for link in _chain(exc))


def _provider_code(exc: BaseException) -> str | None:
    for link in _chain(exc):
        response = getattr(link, "response", None)
        if response is None or not hasattr(response, "json"):
            continue
        try:
            body = response.json()
        except Exception:  # not JSON
            continue
        error = body.get("error") if isinstance(body, dict) else None
        if isinstance(error, dict) and error.get("code") is not None:
            return str(error["code"])[:64]
        errors = body.get("errors") if isinstance(body, dict) else None
        if isinstance(errors, list) and errors and isinstance(errors[0], dict):
            return str(errors[0].get("code"))[:64]
    return None


def _first_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0][:300] if str(exc) else ""


# --------------------------------------------------------------------------------------------
# PUBs out, results in.
# --------------------------------------------------------------------------------------------


def _circuit(task: SamplerTask | EstimatorTask) -> Any:
    from qiskit.circuit import ClassicalRegister

    from gateway.backends.qiskit.frontend import unique_name

    circuit = task.circuit.circuit()
    loose = [bit for bit in circuit.clbits if not circuit.find_bit(bit).registers]
    if loose:
        # The runtime reports registers only: a loose bit gets a register of its own, named
        # as the gateway's front end names it (`result_registers`, the task's registers, which
        # the result is checked against).
        circuit = circuit.copy()
        taken = {r.name for r in circuit.cregs}
        for bit in loose:
            name = unique_name(f"clbit{circuit.find_bit(bit).index}", taken)
            taken.add(name)
            circuit.add_register(ClassicalRegister(name=name, bits=[bit]))
    return circuit


def _sampler_pub(task: SamplerTask) -> Any:
    """The runtime's PUB of a sampler task (its registers and sweep checked when prepared:
    gateway.backends.ibm.adapter._check_runtime_job and _check_sweeps)."""
    from gateway.backends.ibm.adapter import _bindings

    circuit = _circuit(task)
    return (circuit, _bindings(circuit, task.parameters, task.values, task.shape), task.shots)


def _estimator_pub(task: EstimatorTask, backend: str) -> Any:
    from gateway.backends.ibm.adapter import _bindings, object_array, runtime_observable
    from gateway.backends.qiskit.adapter import _layout_of, _physical_term

    circuit = _circuit(task)
    layout = _layout_of(circuit)
    n = circuit.num_qubits
    observables = []
    for index, observable in enumerate(task.observables):
        terms = [(*_physical_term(key, layout), coefficient) for key, coefficient in observable]
        observables.append(runtime_observable(terms, n, index, backend))
    array = object_array(observables)
    bindings = _bindings(circuit, task.parameters, task.values, task.bindings_shape)
    precision = task.precision if task.precision > 0 else None
    return (circuit, array.reshape(task.observables_shape), bindings, precision)


def _shots_from_tags(tags: Sequence[str]) -> int | None:
    for tag in tags:
        if tag.startswith(_SHOTS_TAG_PREFIX):
            return int(tag[len(_SHOTS_TAG_PREFIX) :])
    return None


def _pubs_from_tags(tags: Sequence[str]) -> int | None:
    for tag in tags:
        if tag.startswith(_PUBS_TAG_PREFIX):
            return int(tag[len(_PUBS_TAG_PREFIX) :])
    return None  # a job submitted before the tag existed


class _Mismatch(ValueError):
    """A runtime result that does not answer the job it came for."""


@dataclass(frozen=True)
class _PubLayout:
    """What a PUB's result looks like: its shape (a sampler's binding shape, an estimator's
    broadcast shape) and, for a sampler PUB, its registers' names and widths; None for an
    estimator PUB."""

    shape: tuple[int, ...]
    registers: tuple[tuple[str, int], ...] | None


def _expected_layout(task: SamplerTask | EstimatorTask) -> _PubLayout:
    """The layout the gateway's own simulators give the task's result."""
    if isinstance(task, EstimatorTask):
        return _PubLayout(task.shape, None)
    return _PubLayout(task.shape, tuple((r.name, len(r.clbits)) for r in task.registers))


def _layout_digest(layouts: Sequence[_PubLayout]) -> str:
    """32 hex digits naming `layouts` (registers in any order: names are unique)."""
    encoded = [
        [list(layout.shape), None if layout.registers is None else sorted(layout.registers)]
        for layout in layouts
    ]
    text = json.dumps(encoded, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _layout_digest_from_tags(tags: Sequence[str]) -> str | None:
    """The layout tag's digest; None for a job submitted before the tag existed."""
    for tag in tags:
        if tag.startswith(_LAYOUT_TAG_PREFIX):
            return tag[len(_LAYOUT_TAG_PREFIX) :]
    return None


def _described(layouts: Sequence[_PubLayout]) -> str:
    """The first PUBs' layouts in a line of at most 500 characters, e.g.
    "PUB 0: a[1] b[64] shape (3,)"."""
    shown = []
    for index, layout in enumerate(layouts[:3]):
        if layout.registers is None:
            shown.append(f"PUB {index}: expectation values shape {layout.shape}")
        else:
            names = " ".join(f"{name[:40]}[{width}]" for name, width in layout.registers)
            shown.append(f"PUB {index}: {names or 'no registers'} shape {layout.shape}")
    more = f"; {len(layouts) - 3} more PUBs" if len(layouts) > 3 else ""
    # Bounded as the Braket runner bounds its messages: a PUB may hold thousands of registers.
    return ("; ".join(shown) + more)[:500]


def _output_from_tags(tags: Sequence[str]) -> SamplerOutput:
    for tag in tags:
        if tag.startswith(_OUTPUT_TAG_PREFIX):
            return SamplerOutput(tag[len(_OUTPUT_TAG_PREFIX) :])
    return SamplerOutput.SAMPLES_AND_COUNTS


def _outcome(
    result: Any,
    output: SamplerOutput,
    execution_seconds: float | None = None,
    shots_asked: int | None = None,
    pubs_asked: int | None = None,
    layout_digest: str | None = None,
) -> ExecutionOutcome:
    """The gateway's JobResult of a runtime PrimitiveResult (sampler or estimator).

    Raises:
        _Mismatch: Another number of PUB results than `pubs_asked`, a register with fewer
            shots than `shots_asked`, an estimator's result for a sampler job (one with
            `shots_asked`), PUB results whose kinds, shapes or registers (names, widths) differ
            from those `layout_digest` names, registers of one PUB of different shapes,
            standard errors of another shape than their expectation values, or expectation
            values or standard errors that are not finite (or negative errors).
    """
    import qiskit_ibm_runtime
    from qiskit.primitives.containers import BitArray

    if pubs_asked is not None and len(result) != pubs_asked:
        raise _Mismatch(f"{len(result)} PUB results for the job's {pubs_asked} PUBs")
    pubs: list[PubResult] = []
    answered: list[_PubLayout] = []
    for index, pub in enumerate(result):
        data = pub.data
        # A sampler's register may be named evs (its field is a BitArray, never an
        # estimator's): it is not taken for an estimator's answer.
        if hasattr(data, "evs") and not isinstance(data.evs, BitArray):
            if shots_asked is not None:  # the shots tag is a sampler job's
                raise _Mismatch("an estimator's result for a sampler job")
            evs = np.asarray(data.evs, dtype=np.float64)
            stds = np.asarray(data.stds, dtype=np.float64)
            answered.append(_PubLayout(tuple(int(d) for d in evs.shape), None))
            if stds.shape != evs.shape:
                raise _Mismatch(
                    f"PUB {index}: standard errors of shape {stds.shape}, the expectation "
                    f"values' shape is {evs.shape}"
                )
            if not (np.isfinite(evs).all() and np.isfinite(stds).all() and (stds >= 0).all()):
                raise _Mismatch("expectation values or standard errors that are not finite")
            # The executor estimator reports the precision in the result's metadata, not the
            # PUB's (a PUB's, as the earlier EstimatorV2 put it, is read first).
            precision = float(
                pub.metadata.get("target_precision")
                or (getattr(result, "metadata", None) or {}).get("target_precision")
                or 0.0
            )
            pubs.append(
                EstimatorResult(
                    shape=tuple(evs.shape),
                    expectation_values=evs,
                    standard_errors=stds,
                    precision=precision,
                )
            )
            continue
        shape = tuple(int(d) for d in data.shape)
        answered.append(
            _PubLayout(shape, tuple((name, int(array.num_bits)) for name, array in data.items()))
        )
        registers = []
        shots = 0
        for name, array in data.items():
            if tuple(int(d) for d in array.shape) != shape:
                raise _Mismatch(
                    f"PUB {index}: register {name[:40]} has shape {array.shape}, its PUB's is "
                    f"{shape}"
                )
            if shots_asked is not None and array.num_shots < shots_asked:
                raise _Mismatch(
                    f"register {name} holds {array.num_shots} shots, the job asked for "
                    f"{shots_asked}"
                )
            if shots_asked is not None and array.num_shots > shots_asked:
                array = array.slice_shots(np.arange(shots_asked))
            shots = int(array.num_shots)
            samples = np.ascontiguousarray(array.array, dtype=np.uint8)
            counts: tuple[Counts, ...] = ()
            if output.counts:
                size = math.prod(shape)
                rows = samples.reshape(size, shots, samples.shape[-1])
                counts = tuple(Counts.from_rows(rows[b], array.num_bits) for b in range(size))
            registers.append(
                RegisterResult(
                    name, int(array.num_bits), samples if output.samples else None, counts
                )
            )
        pubs.append(SamplerResult(shape=shape, shots=shots, registers=tuple(registers)))
    if layout_digest is not None and _layout_digest(answered) != layout_digest:
        raise _Mismatch(
            "PUB results whose registers or shapes are not those of the job's circuits (the "
            f"service answered {_described(answered)})"
        )
    return ExecutionOutcome(
        result=JobResult(pubs=tuple(pubs)),
        sdk_versions={"qiskit-ibm-runtime": qiskit_ibm_runtime.__version__},
        execution_seconds=execution_seconds,
    )
