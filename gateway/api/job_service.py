"""qgateway.v1.JobService: translation between messages and the JobManager."""

from __future__ import annotations

from collections.abc import AsyncIterator

from qgateway.v1 import job_pb2, job_service_pb2, job_service_pb2_grpc

from gateway import codec
from gateway.api import paging
from gateway.api.context import Context
from gateway.api.result_stream import DEFAULT_CHUNK_BYTES, MAX_CHUNK_BYTES, result_chunks
from gateway.domain.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
)
from gateway.domain.jobs import Job, JobState
from gateway.jobs.manager import JobManager
from gateway.security.principals import tenant_of

MAX_REQUEST_ID_LENGTH = 128
# Run answers this long before the caller's deadline (less for short deadlines).
RUN_ANSWER_MARGIN_S = 0.05


def _request_id(value: str) -> str:
    if len(value) > MAX_REQUEST_ID_LENGTH or not value.isprintable():
        raise InvalidArgument(
            "INVALID_REQUEST_ID",
            f"request_id must be printable and at most {MAX_REQUEST_ID_LENGTH} characters",
            metadata={"maxLength": str(MAX_REQUEST_ID_LENGTH)},
            field_violations=[FieldViolation("request_id", "too long or not printable")],
        )
    return value


def run_wait_timeout(remaining: float | None) -> float | None:
    """How long Run waits for its job, given the call's remaining time (None: no deadline):
    until RUN_ANSWER_MARGIN_S, or a tenth of what remains if less, before the deadline."""
    if remaining is None:
        return None
    return max(0.0, remaining - min(RUN_ANSWER_MARGIN_S, 0.1 * remaining))


class JobServicer(job_service_pb2_grpc.JobServiceServicer):
    def __init__(self, manager: JobManager, max_response_bytes: int) -> None:
        self._manager = manager
        self._max_response = max_response_bytes

    async def _result_message(self, job: Job) -> job_pb2.JobResult | None:
        """The job's result as one message, or None when it exceeds the response limit."""
        data = await self._manager.result(job)
        if len(data) + 64 > self._max_response:
            return None
        result = job_pb2.JobResult.FromString(data)
        result.name = f"{codec.JOB_PREFIX}{job.id}/result"
        return result

    async def _submit(self, context: Context, request_id: str, spec: job_pb2.JobSpec) -> Job:
        # Only what the API defines is stored and digested: unknown fields (at any depth) would
        # otherwise be persisted verbatim, and padding would change the request digest.
        spec.DiscardUnknownFields()
        domain_spec = codec.decode_spec(spec)
        return await self._manager.submit(
            tenant_of(context),
            _request_id(request_id),
            domain_spec,
            spec.SerializeToString(deterministic=True),
        )

    async def SubmitJob(
        self, request: job_service_pb2.SubmitJobRequest, context: Context
    ) -> job_service_pb2.SubmitJobResponse:
        job = await self._submit(context, request.request_id, request.spec)
        return job_service_pb2.SubmitJobResponse(job=codec.encode_job(job), created=True)

    async def GetJob(
        self, request: job_service_pb2.GetJobRequest, context: Context
    ) -> job_service_pb2.GetJobResponse:
        job = await self._manager.get(tenant_of(context), codec.job_id(request.name))
        return job_service_pb2.GetJobResponse(job=codec.encode_job(job))

    async def _succeeded(self, context: Context, name: str) -> Job:
        job = await self._manager.get(tenant_of(context), codec.result_job_id(name))
        if job.state is not JobState.SUCCEEDED:
            raise FailedPrecondition(
                "RESULT_NOT_READY",
                f"job jobs/{job.id} is {job.state.value}; results exist only for SUCCEEDED jobs",
                metadata={"job": f"jobs/{job.id}", "state": job.state.value},
            )
        return job

    async def GetJobResult(
        self, request: job_service_pb2.GetJobResultRequest, context: Context
    ) -> job_service_pb2.GetJobResultResponse:
        job = await self._succeeded(context, request.name)
        result = await self._result_message(job)
        if result is None:
            raise FailedPrecondition(
                "RESULT_TOO_LARGE",
                f"the result of jobs/{job.id} exceeds one message ({self._max_response} bytes); "
                "fetch it with StreamJobResult",
                metadata={"job": f"jobs/{job.id}", "limit": str(self._max_response)},
            )
        return job_service_pb2.GetJobResultResponse(result=result)

    async def WatchJob(
        self, request: job_service_pb2.WatchJobRequest, context: Context
    ) -> AsyncIterator[job_service_pb2.WatchJobResponse]:
        async for job in self._manager.watch(tenant_of(context), codec.job_id(request.name)):
            yield job_service_pb2.WatchJobResponse(job=codec.encode_job(job))

    async def CancelJob(
        self, request: job_service_pb2.CancelJobRequest, context: Context
    ) -> job_service_pb2.CancelJobResponse:
        job = await self._manager.cancel(tenant_of(context), codec.job_id(request.name))
        return job_service_pb2.CancelJobResponse(job=codec.encode_job(job))

    async def ListJobs(
        self, request: job_service_pb2.ListJobsRequest, context: Context
    ) -> job_service_pb2.ListJobsResponse:
        limit = paging.page_size(request.page_size)
        if request.filter:
            raise InvalidArgument(
                "INVALID_FILTER",
                "filter is not supported yet",
                field_violations=[FieldViolation("filter", "not supported yet")],
            )
        filters = "jobs"
        cursor = paging.decode_token(request.page_token, filters)
        if cursor is not None and not isinstance(cursor, int):
            raise InvalidArgument(
                "INVALID_PAGE_TOKEN",
                "page_token is not a ListJobs token",
                field_violations=[FieldViolation("page_token", "not a ListJobs token")],
            )
        page = await self._manager.list(
            tenant_of(context), states=(), backend="", after=cursor, limit=limit
        )
        return job_service_pb2.ListJobsResponse(
            jobs=[codec.encode_job(j) for j in page.jobs],
            next_page_token=(
                paging.encode_token(page.next_cursor, filters)
                if page.next_cursor is not None
                else ""
            ),
        )

    async def Run(
        self, request: job_service_pb2.RunRequest, context: Context
    ) -> job_service_pb2.RunResponse:
        job = await self._submit(context, request.request_id, request.spec)
        # Answer a little before the deadline, so the caller gets our error with the job name
        # rather than its own bare DEADLINE_EXCEEDED; the margin shrinks with the deadline, so a
        # short deadline still gives a fast job its chance instead of being answered at once.
        timeout = run_wait_timeout(context.time_remaining())
        finished = await self._manager.wait(job.tenant, job.id, timeout)
        if finished is None:
            raise DeadlineExceeded(
                "RUN_DEADLINE_EXCEEDED",
                f"job jobs/{job.id} did not finish within the deadline; it keeps running "
                "(repeat Run with the same request_id, or WatchJob, to get it)",
                metadata={"job": f"jobs/{job.id}"},
            )
        response = job_service_pb2.RunResponse(job=codec.encode_job(finished), created=True)
        if finished.state is JobState.SUCCEEDED:
            result = await self._result_message(finished)
            if result is None:
                response.result_too_large = True
            else:
                response.result.CopyFrom(result)
        return response

    async def StreamJobResult(
        self, request: job_service_pb2.StreamJobResultRequest, context: Context
    ) -> AsyncIterator[job_service_pb2.StreamJobResultResponse]:
        job = await self._succeeded(context, request.name)
        chunk = min(request.chunk_bytes or DEFAULT_CHUNK_BYTES, MAX_CHUNK_BYTES)
        result = job_pb2.JobResult.FromString(await self._manager.result(job))
        for response in result_chunks(result, chunk):
            yield response
