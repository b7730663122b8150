"""The life of a job: admission, durable queueing, dispatch to pooled instances, breaker,
time limits, cancellation, recovery and drain.

Everything here is event-driven: dispatchers wait on their queue, breaker and pool; watchers wait
on published events; timers wait for known deadlines. Nothing polls the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import secrets
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Container, Mapping
from datetime import UTC, datetime, timedelta

import anyio

from gateway.backends.base import PreparedJob
from gateway.domain.errors import (
    BACKEND_RESOURCE,
    JOB_RESOURCE,
    JOB_RESULT_RESOURCE,
    Aborted,
    ExecutionError,
    FailedPrecondition,
    GatewayError,
    NotFound,
    QuotaViolation,
    ResourceExhausted,
    ResourceInfo,
    Unavailable,
)
from gateway.domain.job_filter import JobFilter
from gateway.domain.jobs import (
    ExecutionInfo,
    Job,
    JobError,
    JobResult,
    JobSpec,
    JobState,
    JobTimings,
    SamplerResult,
)
from gateway.jobs.backend import BackendRuntime, RunningJob
from gateway.jobs.events import JobEvents, WatchEvent
from gateway.jobs.queue import QueuedJob
from gateway.jobs.stored_format import StoredFormat
from gateway.runtime.breaker import BreakerState
from gateway.runtime.compiler import Compiler, circuit_field
from gateway.runtime.worker import WORKER_CRASHED, WorkerProcess
from gateway.store.base import (
    CreateOutcome,
    JobCursor,
    JobPage,
    NewJob,
    Store,
    request_id_reused,
)

log = logging.getLogger(__name__)

# Failures that say something about the backend, so the breaker counts them. Client errors found
# late (a spec that no longer validates) and out-of-memory of one big job do not.
BACKEND_FAULTS = frozenset({WORKER_CRASHED, "EXECUTION_FAILED", "JOB_TIMEOUT", "PROVIDER_ERROR"})
# After these the worker is replaced: its process is gone or its heap may be fragmented.
RECYCLE_WORKER = frozenset({WORKER_CRASHED, "OUT_OF_MEMORY", "JOB_TIMEOUT"})


RECENT_RESULTS_BYTES = 32 << 20
# Results up to about this size are encoded on the event loop (tens of microseconds).
INLINE_ENCODE_BYTES = 64 << 10


class RecentResults:
    """A byte-bounded LRU of serialised results (a copy of what is already durable)."""

    def __init__(self, max_bytes: int) -> None:
        self._max = max_bytes
        self._size = 0
        self._items: OrderedDict[str, bytes] = OrderedDict()

    def put(self, job_id: str, data: bytes) -> None:
        if len(data) > self._max // 4:
            return
        self._items[job_id] = data
        self._size += len(data)
        while self._size > self._max:
            _, old = self._items.popitem(last=False)
            self._size -= len(old)

    def get(self, job_id: str) -> bytes | None:
        data = self._items.get(job_id)
        if data is not None:
            self._items.move_to_end(job_id)
        return data


def _now() -> datetime:
    return datetime.now(UTC)


def _job_not_found(job_id: str) -> NotFound:
    name = f"jobs/{job_id}"
    return NotFound(
        "JOB_NOT_FOUND",
        f"job {name} not found",
        metadata={"job": name},
        resource_info=ResourceInfo(JOB_RESOURCE, name, "no such job for this caller"),
    )


class JobManager:
    def __init__(
        self,
        store: Store,
        backends: Mapping[str, BackendRuntime],
        compiler: Compiler,
        stored_format: StoredFormat,
        *,
        prepare_threads: int,
        watch_heartbeat_s: float = 10.0,
        result_retention_s: float = 30 * 86400.0,
    ) -> None:
        self._store = store
        self.backends = backends
        self.compiler = compiler
        self._format = stored_format
        # WatchJob resends the job after this long without a change (ServerConfig).
        self.watch_heartbeat_s = watch_heartbeat_s
        # A SUCCEEDED job's result is kept this long after it ends (Job.expire_at).
        self.result_retention_s = result_retention_s
        self._events = JobEvents()
        self._limiter = anyio.CapacityLimiter(prepare_threads)
        self._tasks: list[asyncio.Task[None]] = []
        self.draining = asyncio.Event()
        # Results just written, so Run and GetJob right after a job ends skip a store read.
        self._recent_results = RecentResults(RECENT_RESULTS_BYTES)

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Re-queues interrupted jobs, then starts each backend's dispatcher and expiry timer."""
        for job in await self._store.requeue_interrupted():
            runtime = self.backends.get(job.placement)
            if runtime is None:
                await self._finish(
                    job,
                    JobState.FAILED,
                    error=JobError.of(
                        "BACKEND_NOT_FOUND",
                        f"backend backends/{job.placement} is no longer configured",
                        {"backend": f"backends/{job.placement}"},
                    ),
                )
                continue
            waited = (_now() - job.created_at).total_seconds()
            deadline = time.monotonic() + runtime.settings.max_queue_time_s - waited
            runtime.queue.put(QueuedJob(job, None, deadline))
        for runtime in self.backends.values():
            self._tasks.append(asyncio.create_task(self._dispatch(runtime)))
            self._tasks.append(asyncio.create_task(self._expire(runtime)))

    def begin_drain(self) -> None:
        """Stops admission and dispatch; running jobs go on, queued jobs stay durable."""
        self.draining.set()
        for runtime in self.backends.values():
            runtime.wake.set()

    async def wait_running(self, timeout: float) -> bool:
        """Waits for running jobs to finish; False if some still run after `timeout`."""
        tasks = [r.task for rt in self.backends.values() for r in rt.running.values() if r.task]
        if not tasks:
            return True
        _, pending = await asyncio.wait(tasks, timeout=timeout)
        return not pending

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        running = [r.task for rt in self.backends.values() for r in rt.running.values() if r.task]
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)

    # ------------------------------------------------------------------ admission

    def runtime(
        self, backend: str, field: str = "spec.backend", visible: Container[str] | None = None
    ) -> BackendRuntime:
        """The backend named `backend`; NOT_FOUND when it does not exist, or when `visible` (the
        backends the caller may use) leaves it out: a caller cannot tell the two apart."""
        runtime = self.backends.get(backend)
        if runtime is None or (visible is not None and backend not in visible):
            name = f"backends/{backend}"
            raise NotFound(
                "BACKEND_NOT_FOUND",
                f"backend {name} does not exist",
                metadata={"backend": name},
                resource_info=ResourceInfo(BACKEND_RESOURCE, name, f"named by {field}"),
            )
        return runtime

    def _placement(self, spec: JobSpec) -> BackendRuntime:
        runtime = self.runtime(spec.backend)
        fallback_name = spec.options.fallback_backend
        fallback = (
            self.runtime(fallback_name, "spec.options.fallback_backend") if fallback_name else None
        )
        if runtime.breaker.state is not BreakerState.OPEN:
            return runtime
        if fallback is not None and fallback.breaker.state is not BreakerState.OPEN:
            return fallback
        retry = runtime.breaker.retry_after()
        raise Unavailable(
            "BACKEND_UNAVAILABLE",
            f"backend backends/{spec.backend} is failing (circuit breaker OPEN); nothing was "
            f"accepted, retry in {retry:.1f}s or name a fallback_backend",
            metadata={
                "backend": f"backends/{spec.backend}",
                "breakerState": "OPEN",
                "retryDelaySeconds": f"{retry:.1f}",
            },
            retry_after=retry,
        )

    async def submit(
        self, tenant: str, request_id: str, spec: JobSpec, spec_bytes: bytes, digest: bytes
    ) -> CreateOutcome:
        """Admits, prepares and durably queues a job. `digest` is the canonical request digest
        (gateway.api.request_digest); the caller looked the request_id up before validating
        (find_request). A concurrent request with the same request_id may still have created
        the job meanwhile: the store deduplicates atomically, and the outcome says which."""
        try:
            runtime = self._admit(spec)
        except (Unavailable, ResourceExhausted):
            # A concurrent twin may have been accepted since the caller's lookup: it gets its
            # job back even while the backend refuses new work; nothing new is accepted.
            existing = await self.find_request(tenant, request_id, digest)
            if existing is None:
                raise
            return CreateOutcome(existing, created=False)
        seed = spec.options.seed if spec.options.seed is not None else secrets.randbits(63)
        prepared = await self.prepare(runtime, tenant, spec, seed)
        outcome = await self._store.create_job(
            NewJob(
                id=uuid.uuid4().hex,
                tenant=tenant,
                request_id=request_id,
                request_hash=digest,
                backend=spec.backend,
                placement=runtime.name,
                spec=spec_bytes,
                num_pubs=len(spec.pubs),
                seed=seed,
                created_at=_now(),
                labels=spec.labels,
                sampler_output=spec.options.sampler_output,
            )
        )
        if outcome.created:
            deadline = time.monotonic() + runtime.settings.max_queue_time_s
            runtime.queue.put(QueuedJob(outcome.job, prepared, deadline))
        # A QUEUED job says where it stands in every answer (Job.queue_position).
        return dataclasses.replace(outcome, job=self._with_position(outcome.job))

    def _admit(self, spec: JobSpec) -> BackendRuntime:
        """The backend the job will queue on, or an admission refusal."""
        if self.draining.is_set():
            raise Unavailable(
                "DRAINING",
                "the gateway is shutting down and accepts no new jobs; nothing was accepted, "
                "retry (another replica or after the restart)",
                retry_after=1.0,
            )
        runtime = self._placement(spec)
        limits = runtime.info.limits
        if len(runtime.queue) >= limits.max_queued_jobs:
            raise ResourceExhausted(
                "QUEUE_FULL",
                f"backend backends/{runtime.name} has {len(runtime.queue)} queued jobs, its "
                f"limit of {limits.max_queued_jobs}; nothing was accepted, retry later",
                metadata={
                    "backend": f"backends/{runtime.name}",
                    "queuedJobs": str(len(runtime.queue)),
                    "limit": str(limits.max_queued_jobs),
                },
                quota_violations=[
                    QuotaViolation(f"backends/{runtime.name}", "queued jobs at the limit")
                ],
                retry_after=1.0,
            )
        return runtime

    async def find_request(self, tenant: str, request_id: str, digest: bytes) -> Job | None:
        """The job an earlier request with this request_id created within the dedup window, if
        its digest is `digest`; None if there is none (or request_id is empty).

        Raises:
            InvalidArgument: reason REQUEST_ID_REUSED, when the earlier request was different.
        """
        if not request_id:
            return None
        found = await self._store.find_request(tenant, request_id, _now())
        if found is None:
            return None
        job, existing_digest = found
        if existing_digest != digest:
            raise request_id_reused(request_id, job.id)
        return self._with_position(job)

    async def prepare(
        self, runtime: BackendRuntime, tenant: str, spec: JobSpec, seed: int
    ) -> PreparedJob:
        """Compiles every PUB's circuit in compile workers, then assembles the job."""
        started = time.perf_counter()
        adapter = runtime.adapter
        # Bounded in size and depth at the API edge; what the keys mean is the backend's (its
        # schema refuses unknown keys), checked before any compile is paid for.
        adapter.validate_provider_options(
            spec.options.provider_options, "spec.options.provider_options"
        )
        circuits = []
        for index, pub in enumerate(spec.pubs):
            field = circuit_field(index, pub)
            circuits.append(
                await self.compiler.compile(tenant, runtime.name, adapter, pub.circuit, field)
            )
        if adapter.prepare_is_cheap(spec):
            prepared = adapter.prepare(spec, seed, circuits)
        else:
            prepared = await anyio.to_thread.run_sync(
                adapter.prepare, spec, seed, circuits, limiter=self._limiter
            )
        return dataclasses.replace(
            prepared,
            prepare_seconds=time.perf_counter() - started,
            # Part of the stored spec, so a re-queued job keeps its limit after a restart.
            max_run_time_s=spec.options.max_execution_time_s,
        )

    # ------------------------------------------------------------------ queries

    async def get(self, tenant: str, job_id: str) -> Job:
        """The job, with its queue position while QUEUED."""
        job = await self._store.get_job(job_id, tenant)
        if job is None:
            raise _job_not_found(job_id)
        return self._with_position(job)

    def _with_position(self, job: Job) -> Job:
        """The job with its live queue position (jobs ahead of it on its backend, as
        FairQueue.position estimates it) while QUEUED; unset in every other state."""
        position = None
        if job.state is JobState.QUEUED:
            runtime = self.backends.get(job.placement)
            if runtime is not None:
                position = runtime.queue.position(job.id, job.tenant, runtime.running_by_tenant())
                # QUEUED but out of the queue: the dispatcher has taken it and RUNNING is
                # being written, so nothing is ahead of it.
                if position is None:
                    position = 0
        if position == job.queue_position:
            return job
        return dataclasses.replace(job, queue_position=position)

    async def result(self, job: Job) -> bytes:
        if job.expire_at is not None and _now() >= job.expire_at:
            # Expired results are deleted lazily: here, when one is asked for after its expiry
            # (there is no sweep yet, so an expired result nobody asks for stays on disk).
            await self._store.delete_result(job.id)
            name = f"jobs/{job.id}"
            expired = job.expire_at.isoformat().replace("+00:00", "Z")
            raise NotFound(
                "RESULT_EXPIRED",
                f"the result of job {name} expired at {expired} and is no longer kept",
                metadata={"job": name, "expireTime": expired},
                resource_info=ResourceInfo(JOB_RESULT_RESOURCE, f"{name}/result", "expired"),
            )
        data = self._recent_results.get(job.id) or await self._store.get_result(job.id)
        if data is None:
            name = f"jobs/{job.id}"
            raise NotFound(
                "RESULT_NOT_FOUND",
                f"job {name} has no result",
                metadata={"job": name},
                resource_info=ResourceInfo(JOB_RESULT_RESOURCE, f"{name}/result", "no result"),
            )
        return data

    async def list(
        self, tenant: str, *, filter: JobFilter, after: JobCursor | None, limit: int
    ) -> JobPage:
        return await self._store.list_jobs(tenant, filter=filter, after=after, limit=limit)

    def _interrupted_by_drain(self, job: Job) -> Aborted:
        return Aborted(
            "GATEWAY_DRAINING",
            f"the gateway is shutting down; job jobs/{job.id} is safe in the queue and runs after "
            "the restart (repeat the call with the same request_id, or watch it again)",
            metadata={"job": f"jobs/{job.id}"},
        )

    async def _next_event(self, events: asyncio.Queue[Job], job: Job) -> Job:
        """The next change of `job`. Once the gateway drains, only running jobs will still
        finish in this process; waiting on any other answers ABORTED."""
        while not self.draining.is_set():
            get = asyncio.ensure_future(events.get())
            drain = asyncio.ensure_future(self.draining.wait())
            try:
                done, _ = await asyncio.wait({get, drain}, return_when=asyncio.FIRST_COMPLETED)
            finally:  # also when the watcher goes away mid-wait
                drain.cancel()
                if not get.done():
                    get.cancel()  # a cancelled Queue.get loses no item
            if get in done:
                return get.result()
        if job.state not in (JobState.RUNNING, JobState.CANCELLING):
            raise self._interrupted_by_drain(job)
        return await events.get()

    async def watch(
        self, tenant: str, job_id: str, heartbeat_s: float | None = None
    ) -> AsyncIterator[WatchEvent]:
        """The current state, then every change, ending after a final state; whenever nothing
        changed for `heartbeat_s` seconds (default: the configured interval), the job again as
        a heartbeat, with its queue position refreshed. Event-driven: heartbeats come from a
        timer on the event queue, never from reading the store."""
        interval = self.watch_heartbeat_s if heartbeat_s is None else heartbeat_s
        with self._events.subscribe(job_id) as events:
            job = await self.get(tenant, job_id)
            yield WatchEvent(job)
            while not job.state.is_final:
                try:
                    async with asyncio.timeout(interval):
                        while True:
                            event = await self._next_event(events, job)
                            if event.state != job.state and not _older(event, job):
                                break
                except TimeoutError:
                    job = self._with_position(job)
                    yield WatchEvent(job, heartbeat=True)
                    continue
                job = self._with_position(event)
                yield WatchEvent(job)

    async def wait(self, tenant: str, job_id: str, timeout: float | None) -> Job | None:
        """The job once final, or None if `timeout` seconds pass first."""
        with self._events.subscribe(job_id) as events:
            job = await self.get(tenant, job_id)
            try:
                async with asyncio.timeout(timeout):
                    while not job.state.is_final:
                        job = await self._next_event(events, job)
            except TimeoutError:
                return None
            return job

    # ------------------------------------------------------------------ cancellation

    async def cancel(self, tenant: str, job_id: str) -> Job:
        """Answers at once. A queued job is taken out of its queue and ends CANCELLED now; a
        running one is marked CANCELLING (durably: after a restart it ends CANCELLED, never
        runs again) and its runner stops the worker in the background, ending it CANCELLED, or
        SUCCEEDED/FAILED if it finished first. A CANCELLING or CANCELLED job is a no-op."""
        job = await self.get(tenant, job_id)
        if job.state in (JobState.CANCELLED, JobState.CANCELLING):
            return job
        if job.state.is_final:
            raise _already_finished(job)
        runtime = self.backends.get(job.placement)
        # No await between these two lookups: the dispatcher moves a job from the queue to
        # `running` in one step, so the job is in exactly one of them (or in neither).
        running = None if runtime is None else runtime.running.get(job_id)
        if running is None:
            if runtime is not None:
                runtime.queue.remove(job_id, tenant)
            finished = await self._finish(job, JobState.CANCELLED)
            if finished is not None:
                return finished
        else:
            marked = await self._store.mark_cancelling(job_id, _now())
            if marked is not None:
                self._events.publish(marked)
                # Stopping the worker (a kill; for provider jobs a remote cancel that can take
                # minutes) happens in the job's own runner task, not in this call.
                running.cancel_requested.set()
                return marked
        # It reached a final state (or was cancelled by another call) meanwhile.
        after = await self.get(tenant, job_id)
        if after.state in (JobState.CANCELLED, JobState.CANCELLING):
            return after
        raise _already_finished(after)

    # ------------------------------------------------------------------ dispatch

    async def _wait_for(self, runtime: BackendRuntime, timeout: float | None) -> None:
        runtime.wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(runtime.wake.wait(), timeout)

    async def _dispatch(self, runtime: BackendRuntime) -> None:
        breaker = runtime.breaker
        while True:
            await runtime.queue.wait_nonempty()
            if self.draining.is_set():
                return
            worker = await runtime.pool.acquire(timeout=math.inf)
            # Ask the breaker only now: the job that held this worker may just have opened it.
            trial = breaker.state is BreakerState.HALF_OPEN
            if not breaker.try_dispatch():
                await runtime.pool.release(worker)
                # Open: wake when the cool-down ends; half-open: when the trial finishes.
                delay = breaker.retry_after()
                await self._wait_for(runtime, delay if delay > 0 else None)
                continue
            draining = self.draining.is_set()
            entry = None if draining else runtime.queue.pop(runtime.running_by_tenant())
            if entry is None:  # cancelled or expired while we waited, or draining
                await runtime.pool.release(worker)
                if trial:
                    breaker.release_trial()
                continue
            # No await between taking the job and registering it: cancel() sees it in one place.
            running = RunningJob(entry, trial)
            runtime.running[entry.job.id] = running
            running.task = asyncio.create_task(self._run(runtime, running, worker))

    async def _expire(self, runtime: BackendRuntime) -> None:
        """Fails jobs that waited in the queue past the backend's limit."""
        while True:
            earliest = runtime.queue.earliest_deadline()
            if earliest is None:
                await runtime.queue.wait_nonempty()
                continue
            delay = earliest - time.monotonic()
            if delay > 0:
                # Later arrivals have later deadlines, so nothing can expire sooner than this.
                await asyncio.sleep(delay)
                continue
            for entry in runtime.queue.expired(time.monotonic()):
                if runtime.breaker.state is BreakerState.CLOSED:
                    limit = f"{runtime.settings.max_queue_time_s:g}"
                    error = JobError.of(
                        "QUEUE_TIMEOUT",
                        f"the job waited in the queue past its limit of {limit}s",
                        {"backend": f"backends/{runtime.name}", "limitSeconds": limit},
                    )
                else:
                    error = JobError.of(
                        "BACKEND_UNAVAILABLE",
                        f"backend backends/{runtime.name} stayed unavailable (circuit breaker "
                        f"{runtime.breaker.state.value}) past the job's queue time limit",
                        {
                            "backend": f"backends/{runtime.name}",
                            "breakerState": runtime.breaker.state.value,
                        },
                    )
                await self._finish(entry.job, JobState.FAILED, error=error)

    async def _run(
        self, runtime: BackendRuntime, running: RunningJob, worker: WorkerProcess
    ) -> None:
        job = running.entry.job
        returned = False

        async def give_back(recycle: bool) -> None:
            # The worker goes back as soon as execution ends, before the result is encoded
            # and committed: the next job need not wait for this one's bookkeeping.
            nonlocal returned
            if not returned:
                returned = True
                await runtime.pool.release(worker, broken=recycle or not worker.alive)
                runtime.wake.set()

        try:
            await self._execute(runtime, running, worker, give_back)
        except Exception:
            log.exception("job %s: unexpected failure", job.id)
            if running.trial:
                runtime.breaker.release_trial()
            await give_back(True)
            await self._finish(
                job,
                JobState.FAILED,
                error=JobError.of("INTERNAL_ERROR", "internal error in the gateway"),
            )
        finally:
            runtime.running.pop(job.id, None)
            await give_back(False)

    async def _prepare_again(self, runtime: BackendRuntime, job: Job) -> PreparedJob:
        spec_bytes = await self._store.get_spec(job.id)
        assert spec_bytes is not None
        spec = self._format.decode_spec(spec_bytes)
        return await self.prepare(runtime, job.tenant, spec, job.seed)

    def _record(self, runtime: BackendRuntime, running: RunningJob, reason: str | None) -> None:
        """Tells the breaker how the job went (None: success)."""
        breaker = runtime.breaker
        if reason is None:
            breaker.record_success()
        elif reason in BACKEND_FAULTS:
            breaker.record_failure()
            if breaker.state is not BreakerState.CLOSED:
                log.warning("backend %s: circuit breaker %s", runtime.name, breaker.state.value)
        elif running.trial:
            breaker.release_trial()

    async def _execute(
        self,
        runtime: BackendRuntime,
        running: RunningJob,
        worker: WorkerProcess,
        give_back: Callable[[bool], Awaitable[None]],
    ) -> None:
        """Runs one job to a final state, returning its worker (recycled or not) on the way."""
        job = running.entry.job
        prepared = running.entry.prepared
        if prepared is None:
            try:
                prepared = await self._prepare_again(runtime, job)
            except GatewayError as err:
                self._record(runtime, running, err.reason)
                await give_back(False)
                await self._finish(job, JobState.FAILED, error=JobError.from_error(err))
                return
        t0 = time.perf_counter()
        # The RUNNING commit overlaps the execution: a simulator job interrupted by a crash is
        # re-queued whether or not RUNNING reached the disk.
        marking = asyncio.ensure_future(self._store.mark_running(job.id, _now()))
        execution = asyncio.ensure_future(worker.execute(prepared.payload))
        started = await marking
        if started is None:  # no longer QUEUED: cancelled or finished elsewhere meanwhile
            worker.kill()
            execution.cancel()
            await asyncio.gather(execution, return_exceptions=True)
            self._record(runtime, running, "CANCELLED")
            await give_back(True)
            # CANCELLING is a cancel request, whoever wrote it: the job ends CANCELLED.
            current = await self._store.get_job(job.id)
            if current is not None and current.state is JobState.CANCELLING:
                await self._finish(current, JobState.CANCELLED)
            return
        self._events.publish(started)
        info = ExecutionInfo(
            backend=runtime.name, seed=job.seed, layouts=prepared.layouts, attempts=started.attempts
        )
        # The job's own max_execution_time, when it is the smaller limit, is the client's
        # choice: running past it says nothing about the backend (no breaker failure).
        run_limit = runtime.settings.max_run_time_s
        own_limit = prepared.max_run_time_s
        own_limit_applies = own_limit is not None and own_limit < run_limit
        if own_limit is not None and own_limit_applies:
            run_limit = own_limit
        cancelled = asyncio.ensure_future(running.cancel_requested.wait())
        try:
            await asyncio.wait(
                {execution, cancelled},
                timeout=run_limit,
                return_when=asyncio.FIRST_COMPLETED,
            )
        except asyncio.CancelledError:
            # The gateway is closing: stop the worker; the job is re-queued at the next start.
            worker.kill()
            execution.cancel()
            raise
        finally:
            cancelled.cancel()
        if not execution.done():
            # Cancellation and time limits reach the backend: the worker process is killed.
            worker.kill()
            execution.cancel()
            await asyncio.gather(execution, return_exceptions=True)
            reason = "CANCELLED" if running.cancel_requested.is_set() else "JOB_TIMEOUT"
            self._record(
                runtime,
                running,
                "MAX_EXECUTION_TIME" if reason == "JOB_TIMEOUT" and own_limit_applies else reason,
            )
            await give_back(True)
            if reason == "CANCELLED":
                await self._finish(started, JobState.CANCELLED, execution=info)
            else:
                limit = f"{run_limit:g}"
                whose = (
                    "its max_execution_time of" if own_limit_applies else "the backend's limit of"
                )
                error = JobError.of(
                    "JOB_TIMEOUT",
                    f"the job ran past {whose} {limit}s",
                    {"backend": f"backends/{runtime.name}", "limitSeconds": limit},
                )
                await self._finish(started, JobState.FAILED, error=error, execution=info)
            return
        elapsed = time.perf_counter() - t0
        try:
            outcome = execution.result()
        except ExecutionError as err:
            self._record(runtime, running, err.reason)
            await give_back(err.reason in RECYCLE_WORKER)
            await self._finish(
                started, JobState.FAILED, error=JobError.from_error(err), execution=info
            )
            return
        self._record(runtime, running, None)
        await give_back(False)
        if _result_bytes_hint(outcome.result) <= INLINE_ENCODE_BYTES:
            result = self._format.encode_result(outcome.result)
        else:  # large results are encoded off the event loop
            result = await anyio.to_thread.run_sync(self._format.encode_result, outcome.result)
        self._recent_results.put(job.id, result)
        assert started.started_at is not None
        await self._finish(
            started,
            JobState.SUCCEEDED,
            execution=ExecutionInfo(
                backend=runtime.name,
                seed=job.seed,
                sdk_versions=outcome.sdk_versions,
                layouts=prepared.layouts,
                attempts=started.attempts,
            ),
            timings=JobTimings(
                queued_s=(started.started_at - job.created_at).total_seconds(),
                transpile_s=prepared.prepare_seconds,
                execute_s=elapsed,
            ),
            result=result,
        )

    async def _finish(
        self,
        job: Job,
        state: JobState,
        *,
        error: JobError | None = None,
        execution: ExecutionInfo | None = None,
        timings: JobTimings | None = None,
        result: bytes | None = None,
    ) -> Job | None:
        ended = _now()
        # Retention is fixed when the job ends (a later configuration change keeps it).
        expires = (
            ended + timedelta(seconds=self.result_retention_s)
            if state is JobState.SUCCEEDED
            else None
        )
        # Shielded: once a final state is decided it is written even if the caller goes away.
        finished = await asyncio.shield(
            self._store.finish_job(
                job.id,
                state,
                ended_at=ended,
                error=error,
                execution=execution,
                timings=timings,
                result=result,
                result_expires_at=expires,
            )
        )
        if finished is not None:
            self._events.publish(finished)
        return finished


def _already_finished(job: Job) -> FailedPrecondition:
    name = f"jobs/{job.id}"
    return FailedPrecondition(
        "JOB_ALREADY_FINISHED",
        f"job {name} already {job.state.value}",
        metadata={"job": name, "state": job.state.value},
    )


def _older(event: Job, than: Job) -> bool:
    """Whether `event` is a stale view of the job (its publication overtook by a later one)."""
    return (
        event.updated_at is not None
        and than.updated_at is not None
        and event.updated_at < than.updated_at
    )


def _result_bytes_hint(result: JobResult) -> int:
    """Roughly the encoded size: samples dominate; counts and values cost ~16 bytes each."""
    size = 0
    for pub in result.pubs:
        if isinstance(pub, SamplerResult):
            for reg in pub.registers:
                size += 0 if reg.samples is None else reg.samples.nbytes
                size += 16 * sum(len(c) for c in reg.counts)
        else:
            size += 16 * pub.expectation_values.size
    return size
