"""A runner observed by telemetry: spans around runner (and so provider) calls, and the backend
named for retry counts. Wrapped around a backend's runner only when `[telemetry]` is on.

The job's execute span is current while the runner submits and waits, so a simulator
worker's own span (gateway.runtime.worker) and a provider adapter's retries land under it.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from gateway.backends.base import ExecutionOutcome, PreparedJob
from gateway.backends.runner import DelegatingRunner, ExecutionModel, RunHandle, Runner
from gateway.domain.jobs import Job
from gateway.telemetry import active

SUBMIT = "qgateway.runner.submit"


class ObservedRunner(DelegatingRunner):
    """Delegates everything to `inner`; its job calls run in the job's trace.

    Args:
        inner: The backend's runner.
        backend: The backend's name.
    """

    def __init__(self, inner: Runner, backend: str) -> None:
        super().__init__(inner)
        self.backend = backend

    @contextlib.asynccontextmanager
    async def _observed(
        self, name: str, job_id: str, job: Job | None = None
    ) -> AsyncIterator[None]:
        token = active.backend.set(self.backend)
        try:
            tracing = active.tracing
            if tracing is None:
                yield
                return
            parent = (
                tracing.job_context_for(job) if job is not None else tracing.job_context(job_id)
            )
            if parent is None:
                yield
                return
            if self.model is ExecutionModel.LOCAL:
                # The worker's own span (started inside submit) is the work: no submit or wait
                # span around it, only the job's context for it to hang under.
                with tracing.current(parent):
                    yield
                return
            attributes = {"qgateway.job.id": job_id}
            with tracing.tracer.start_as_current_span(name, context=parent, attributes=attributes):
                yield
        finally:
            active.backend.reset(token)

    async def submit(self, prepared: PreparedJob, job: Job) -> RunHandle:
        async with self._observed(SUBMIT, job.id, job):
            return await self.inner.submit(prepared, job)

    async def wait(self, handle: RunHandle) -> ExecutionOutcome:
        async with self._observed("qgateway.runner.wait", handle.job_id):
            return await self.inner.wait(handle)

    async def cancel(self, handle: RunHandle) -> None:
        async with self._observed("qgateway.runner.cancel", handle.job_id):
            await self.inner.cancel(handle)

    async def reattach(self, job: Job, remote_id: str | None) -> RunHandle | None:
        async with self._observed("qgateway.runner.reattach", job.id, job):
            return await self.inner.reattach(job, remote_id)

    async def probe(self, prepared: PreparedJob, timeout: float) -> None:
        token = active.backend.set(self.backend)
        try:
            await self.inner.probe(prepared, timeout)
        finally:
            active.backend.reset(token)
