"""The life of a job: admission, durable queueing, dispatch to pooled instances, breaker,
time limits, cancellation, recovery and drain.

Everything here is event-driven: dispatchers wait on their queue, breaker and pool; watchers wait
on published events; timers wait for known deadlines. Nothing polls the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import logging
import math
import secrets
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping
from datetime import UTC, datetime

import anyio
from qgateway.v1 import job_pb2

from gateway import codec
from gateway.backends.base import PreparedJob
from gateway.backends.breaker import BreakerState
from gateway.backends.worker import WORKER_CRASHED, WorkerProcess
from gateway.domain.errors import (
    Aborted,
    ExecutionError,
    FailedPrecondition,
    FieldViolation,
    GatewayError,
    NotFound,
    QuotaViolation,
    ResourceExhausted,
    Unavailable,
)
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
from gateway.jobs.compiler import Compiler, circuit_field
from gateway.jobs.events import JobEvents
from gateway.jobs.queue import QueuedJob
from gateway.store.base import JobPage, NewJob, Store, request_id_reused

log = logging.getLogger(__name__)

# Failures that say something about the backend, so the breaker counts them. Client errors found
# late (a spec that no longer validates) and out-of-memory of one big job do not.
BACKEND_FAULTS = frozenset({WORKER_CRASHED, "EXECUTION_FAILED", "JOB_TIMEOUT", "PROVIDER_ERROR"})
# After these the worker is replaced: its process is gone or its heap may be fragmented.
RECYCLE_WORKER = frozenset({WORKER_CRASHED, "RESOURCE_EXHAUSTED", "JOB_TIMEOUT"})


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


def request_hash(spec_bytes: bytes) -> bytes:
    """What "same payload" means for request_id reuse: the deterministically serialised spec."""
    return hashlib.sha256(spec_bytes).digest()


def _job_not_found(job_id: str) -> NotFound:
    return NotFound("JOB_NOT_FOUND", f"job jobs/{job_id} not found", metadata={"job": job_id})


class JobManager:
    def __init__(
        self,
        store: Store,
        backends: Mapping[str, BackendRuntime],
        compiler: Compiler,
        *,
        prepare_threads: int,
    ) -> None:
        self._store = store
        self.backends = backends
        self.compiler = compiler
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
                    error=JobError(
                        "BACKEND_NOT_FOUND", f"backend {job.placement} is no longer configured"
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

    def runtime(self, backend: str, field: str = "spec.backend") -> BackendRuntime:
        runtime = self.backends.get(backend)
        if runtime is None:
            raise NotFound(
                "BACKEND_NOT_FOUND",
                f"backend backends/{backend} does not exist",
                metadata={"backend": backend},
                field_violations=[FieldViolation(field, "no such backend")],
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
            f"backend {spec.backend} is failing (circuit breaker open); nothing was accepted, "
            f"retry in {retry:.1f}s or name a fallback_backend",
            metadata={"backend": spec.backend, "breaker_state": "OPEN"},
            retry_after=retry,
        )

    async def submit(self, tenant: str, request_id: str, spec: JobSpec, spec_bytes: bytes) -> Job:
        """Validates, prepares and durably queues a job; a repeated request_id returns its job
        (the store deduplicates atomically, so concurrent repeats make one job)."""
        digest = request_hash(spec_bytes)
        try:
            runtime = self._admit(spec)
        except (Unavailable, ResourceExhausted):
            # A retry of an accepted job gets its job back even while the backend refuses new
            # work (breaker open, draining, full queue): nothing new is accepted either way.
            existing = await self._existing(tenant, request_id, digest)
            if existing is None:
                raise
            return existing
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
            )
        )
        if outcome.created:
            deadline = time.monotonic() + runtime.settings.max_queue_time_s
            runtime.queue.put(QueuedJob(outcome.job, prepared, deadline))
        return outcome.job

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
                f"backend {runtime.name} has {len(runtime.queue)} queued jobs, its limit",
                metadata={"backend": runtime.name, "limit": str(limits.max_queued_jobs)},
                quota_violations=[
                    QuotaViolation(f"backends/{runtime.name}", "queued jobs at the limit")
                ],
                retry_after=1.0,
            )
        return runtime

    async def _existing(self, tenant: str, request_id: str, digest: bytes) -> Job | None:
        if not request_id:
            return None
        found = await self._store.find_request(tenant, request_id, _now())
        if found is None:
            return None
        job, existing_digest = found
        if existing_digest != digest:
            raise request_id_reused(request_id, job.id)
        return job

    async def prepare(
        self, runtime: BackendRuntime, tenant: str, spec: JobSpec, seed: int
    ) -> PreparedJob:
        """Compiles every PUB's circuit in compile workers, then assembles the job."""
        started = time.perf_counter()
        adapter = runtime.adapter
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
        return dataclasses.replace(prepared, prepare_seconds=time.perf_counter() - started)

    # ------------------------------------------------------------------ queries

    async def get(self, tenant: str, job_id: str) -> Job:
        job = await self._store.get_job(job_id, tenant)
        if job is None:
            raise _job_not_found(job_id)
        return job

    async def result(self, job: Job) -> bytes:
        data = self._recent_results.get(job.id) or await self._store.get_result(job.id)
        if data is None:
            raise NotFound("RESULT_NOT_FOUND", f"job jobs/{job.id} has no result")
        return data

    async def list(
        self,
        tenant: str,
        *,
        states: Collection[JobState],
        backend: str,
        after: int | None,
        limit: int,
    ) -> JobPage:
        return await self._store.list_jobs(
            tenant, states=states, backend=backend, after=after, limit=limit
        )

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
        if job.state is not JobState.RUNNING:
            raise self._interrupted_by_drain(job)
        return await events.get()

    async def watch(self, tenant: str, job_id: str) -> AsyncIterator[Job]:
        """The current state, then every change, ending after a final state."""
        with self._events.subscribe(job_id) as events:
            job = await self.get(tenant, job_id)
            yield job
            seen = job.state
            while not seen.is_final:
                job = await self._next_event(events, job)
                if job.state != seen:
                    seen = job.state
                    yield job

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
        job = await self.get(tenant, job_id)
        if job.state is JobState.CANCELLED:
            return job
        if job.state.is_final:
            raise FailedPrecondition(
                "JOB_ALREADY_FINISHED",
                f"job jobs/{job_id} already {job.state.value}",
                metadata={"job": job_id, "state": job.state.value},
            )
        runtime = self.backends.get(job.placement)
        if runtime is not None:
            running = runtime.running.get(job_id)
            if running is not None:
                running.cancel_requested.set()
                assert running.task is not None
                await asyncio.shield(running.task)
                after = await self.get(tenant, job_id)
                if after.state is not JobState.CANCELLED:  # it ended before the cancel landed
                    raise FailedPrecondition(
                        "JOB_ALREADY_FINISHED",
                        f"job jobs/{job_id} already {after.state.value}",
                        metadata={"job": job_id, "state": after.state.value},
                    )
                return after
            runtime.queue.remove(job_id, tenant)
        finished = await self._finish(job, JobState.CANCELLED)
        return finished or await self.get(tenant, job_id)

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
                    error = JobError("QUEUE_TIMEOUT", "the job waited in the queue past its limit")
                else:
                    error = JobError(
                        "BACKEND_UNAVAILABLE",
                        f"backend {runtime.name} stayed unavailable (circuit breaker open) past "
                        "the job's queue time limit",
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
                job, JobState.FAILED, error=JobError("INTERNAL", "internal error in the gateway")
            )
        finally:
            runtime.running.pop(job.id, None)
            await give_back(False)

    async def _prepare_again(self, runtime: BackendRuntime, job: Job) -> PreparedJob:
        spec_bytes = await self._store.get_spec(job.id)
        assert spec_bytes is not None
        spec = codec.decode_spec(job_pb2.JobSpec.FromString(spec_bytes))
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
                await self._finish(job, JobState.FAILED, error=JobError(err.reason, err.message))
                return
        t0 = time.perf_counter()
        # The RUNNING commit overlaps the execution: a simulator job interrupted by a crash is
        # re-queued whether or not RUNNING reached the disk.
        marking = asyncio.ensure_future(self._store.mark_running(job.id, _now()))
        execution = asyncio.ensure_future(worker.execute(prepared.payload))
        started = await marking
        if started is None:  # no longer QUEUED: it was finished elsewhere meanwhile
            worker.kill()
            execution.cancel()
            await asyncio.gather(execution, return_exceptions=True)
            self._record(runtime, running, "CANCELLED")
            await give_back(True)
            return
        self._events.publish(started)
        info = ExecutionInfo(
            backend=runtime.name, seed=job.seed, layouts=prepared.layouts, attempts=started.attempts
        )
        cancelled = asyncio.ensure_future(running.cancel_requested.wait())
        try:
            await asyncio.wait(
                {execution, cancelled},
                timeout=runtime.settings.max_run_time_s,
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
            self._record(runtime, running, reason)
            await give_back(True)
            if reason == "CANCELLED":
                await self._finish(started, JobState.CANCELLED, execution=info)
            else:
                limit = runtime.settings.max_run_time_s
                error = JobError("JOB_TIMEOUT", f"the job ran past the backend's {limit}s limit")
                await self._finish(started, JobState.FAILED, error=error, execution=info)
            return
        elapsed = time.perf_counter() - t0
        try:
            outcome = execution.result()
        except ExecutionError as err:
            self._record(runtime, running, err.reason)
            await give_back(err.reason in RECYCLE_WORKER)
            await self._finish(
                started, JobState.FAILED, error=JobError(err.reason, err.message), execution=info
            )
            return
        self._record(runtime, running, None)
        await give_back(False)
        if _result_bytes_hint(outcome.result) <= INLINE_ENCODE_BYTES:
            result = _serialise_result(outcome.result)
        else:  # large results are encoded off the event loop
            result = await anyio.to_thread.run_sync(_serialise_result, outcome.result)
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
        # Shielded: once a final state is decided it is written even if the caller goes away.
        finished = await asyncio.shield(
            self._store.finish_job(
                job.id,
                state,
                ended_at=_now(),
                error=error,
                execution=execution,
                timings=timings,
                result=result,
            )
        )
        if finished is not None:
            self._events.publish(finished)
        return finished


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


def _serialise_result(result: JobResult) -> bytes:
    return codec.encode_result(result).SerializeToString()
