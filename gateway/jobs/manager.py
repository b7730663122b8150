"""The life of a job: admission, durable queueing, dispatch to workers, cancellation, recovery.

Everything here is event-driven: the dispatcher waits on the queue and on the pool, watchers wait
on published events; nothing polls the store.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Collection, Mapping
from datetime import UTC, datetime

import anyio
from qgateway.v1 import job_pb2

from gateway import codec
from gateway.backends.base import PreparedJob
from gateway.backends.worker import WorkerProcess
from gateway.domain.errors import (
    ExecutionError,
    FailedPrecondition,
    GatewayError,
    NotFound,
    QuotaViolation,
    ResourceExhausted,
)
from gateway.domain.jobs import (
    ExecutionInfo,
    Job,
    JobError,
    JobResult,
    JobSpec,
    JobState,
    JobTimings,
)
from gateway.jobs.backend import BackendRuntime, RunningJob
from gateway.jobs.events import JobEvents
from gateway.jobs.queue import QueuedJob
from gateway.store.base import JobPage, NewJob, Store

log = logging.getLogger(__name__)


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
        *,
        prepare_threads: int,
    ) -> None:
        self._store = store
        self.backends = backends
        self._events = JobEvents()
        self._limiter = anyio.CapacityLimiter(prepare_threads)
        self._dispatchers: list[asyncio.Task[None]] = []

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Re-queues interrupted jobs, then starts one dispatcher per backend."""
        for job in await self._store.requeue_interrupted():
            runtime = self.backends.get(job.backend)
            if runtime is None:
                await self._finish(
                    job,
                    JobState.FAILED,
                    error=JobError("BACKEND_NOT_FOUND", f"backend {job.backend} is not configured"),
                )
                continue
            runtime.queue.put(QueuedJob(job, None, time.monotonic()))
        for runtime in self.backends.values():
            self._dispatchers.append(asyncio.create_task(self._dispatch(runtime)))

    async def close(self) -> None:
        for task in self._dispatchers:
            task.cancel()
        await asyncio.gather(*self._dispatchers, return_exceptions=True)
        running = [r.task for rt in self.backends.values() for r in rt.running.values() if r.task]
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)

    # ------------------------------------------------------------------ admission

    def runtime(self, backend: str) -> BackendRuntime:
        runtime = self.backends.get(backend)
        if runtime is None:
            raise NotFound(
                "BACKEND_NOT_FOUND",
                f"backend backends/{backend} does not exist",
                metadata={"backend": backend},
            )
        return runtime

    async def submit(self, tenant: str, request_id: str, spec: JobSpec, spec_bytes: bytes) -> Job:
        """Validates, prepares and durably queues a job; a repeated request_id returns its job."""
        runtime = self.runtime(spec.backend)
        limits = runtime.info.limits
        if len(runtime.queue) >= limits.max_queued_jobs:
            raise ResourceExhausted(
                "QUEUE_FULL",
                f"backend {spec.backend} has {len(runtime.queue)} queued jobs, its limit",
                metadata={"backend": spec.backend, "limit": str(limits.max_queued_jobs)},
                quota_violations=[
                    QuotaViolation(f"backends/{spec.backend}", "queued jobs at the limit")
                ],
                retry_after=1.0,
            )
        seed = spec.options.seed if spec.options.seed is not None else secrets.randbits(63)
        prepared = await anyio.to_thread.run_sync(
            runtime.adapter.prepare, spec, seed, limiter=self._limiter
        )
        outcome = await self._store.create_job(
            NewJob(
                id=uuid.uuid4().hex,
                tenant=tenant,
                request_id=request_id,
                request_hash=request_hash(spec_bytes),
                backend=spec.backend,
                spec=spec_bytes,
                num_pubs=len(spec.pubs),
                seed=seed,
                created_at=_now(),
            )
        )
        if outcome.created:
            runtime.queue.put(QueuedJob(outcome.job, prepared, time.monotonic()))
        return outcome.job

    # ------------------------------------------------------------------ queries

    async def get(self, tenant: str, job_id: str) -> Job:
        job = await self._store.get_job(job_id, tenant)
        if job is None:
            raise _job_not_found(job_id)
        return job

    async def result(self, job: Job) -> bytes:
        data = await self._store.get_result(job.id)
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

    async def watch(self, tenant: str, job_id: str) -> AsyncIterator[Job]:
        """The current state, then every change, ending after a final state."""
        with self._events.subscribe(job_id) as events:
            job = await self.get(tenant, job_id)
            yield job
            seen = job.state
            while not seen.is_final:
                job = await events.get()
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
                        job = await events.get()
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
        runtime = self.backends.get(job.backend)
        if runtime is not None:
            running = runtime.running.get(job_id)
            if running is not None:
                running.cancel_requested.set()
                assert running.task is not None
                await asyncio.shield(running.task)
                return await self.get(tenant, job_id)
            runtime.queue.remove(job_id, tenant)
        finished = await self._finish(job, JobState.CANCELLED)
        return finished or await self.get(tenant, job_id)

    # ------------------------------------------------------------------ execution

    async def _dispatch(self, runtime: BackendRuntime) -> None:
        while True:
            worker = await runtime.pool.checkout()
            try:
                entry = await runtime.queue.get()
            except asyncio.CancelledError:
                runtime.pool.checkin(worker)
                raise
            # No await between taking the job and registering it: cancel() sees it in one place.
            running = RunningJob(entry)
            runtime.running[entry.job.id] = running
            running.task = asyncio.create_task(self._run(runtime, running, worker))

    async def _run(
        self, runtime: BackendRuntime, running: RunningJob, worker: WorkerProcess
    ) -> None:
        job = running.entry.job
        try:
            await self._execute(runtime, running, worker)
        except Exception:
            log.exception("job %s: unexpected failure", job.id)
            await self._finish(
                job, JobState.FAILED, error=JobError("INTERNAL", "internal error in the gateway")
            )
        finally:
            runtime.running.pop(job.id, None)
            runtime.pool.checkin(worker)

    async def _prepare_again(self, runtime: BackendRuntime, job: Job) -> PreparedJob:
        spec_bytes = await self._store.get_spec(job.id)
        assert spec_bytes is not None
        spec = codec.decode_spec(job_pb2.JobSpec.FromString(spec_bytes))
        return await anyio.to_thread.run_sync(
            runtime.adapter.prepare, spec, job.seed, limiter=self._limiter
        )

    async def _execute(
        self, runtime: BackendRuntime, running: RunningJob, worker: WorkerProcess
    ) -> None:
        job = running.entry.job
        prepared = running.entry.prepared
        if prepared is None:
            try:
                prepared = await self._prepare_again(runtime, job)
            except GatewayError as err:
                await self._finish(job, JobState.FAILED, error=JobError(err.reason, err.message))
                return
        started = await self._store.mark_running(job.id, _now())
        if started is None:  # cancelled while it waited for a worker
            return
        self._events.publish(started)
        t0 = time.perf_counter()
        execution = asyncio.ensure_future(worker.execute(prepared.payload))
        cancelled = asyncio.ensure_future(running.cancel_requested.wait())
        await asyncio.wait({execution, cancelled}, return_when=asyncio.FIRST_COMPLETED)
        cancelled.cancel()
        info = ExecutionInfo(
            backend=runtime.name,
            seed=job.seed,
            layouts=prepared.layouts,
            attempts=started.attempts,
        )
        if not execution.done():
            # Cancellation reaches the backend: the worker process is killed, then replaced.
            worker.kill()
            execution.cancel()
            await asyncio.gather(execution, return_exceptions=True)
            await self._finish(started, JobState.CANCELLED, execution=info)
            return
        elapsed = time.perf_counter() - t0
        try:
            outcome = execution.result()
        except ExecutionError as err:
            await self._finish(
                started, JobState.FAILED, error=JobError(err.reason, err.message), execution=info
            )
            return
        result = await anyio.to_thread.run_sync(_serialise_result, outcome.result)
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


def _serialise_result(result: JobResult) -> bytes:
    return codec.encode_result(result).SerializeToString()
