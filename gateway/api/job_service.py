"""qgateway.v1.JobService: translation between messages and the JobManager."""

from __future__ import annotations

import functools
import struct
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta

from qgateway.v1 import job_pb2, job_service_pb2, job_service_pb2_grpc

from gateway import offload
from gateway.api import codec, paging, preserialized, result_stream
from gateway.api.context import Context, request_bytes
from gateway.api.job_filter import parse_filter
from gateway.api.preserialized import Preserialized
from gateway.api.request_digest import request_digest
from gateway.api.result_views import Split, split_result
from gateway.api.spec_cache import SpecCache
from gateway.api.stream_budget import StreamBudget
from gateway.api.stream_pace import StreamPace
from gateway.api.wire_format import length_delimited
from gateway.domain.errors import (
    DataLoss,
    DeadlineExceeded,
    FailedPrecondition,
    FieldViolation,
    GatewayError,
    InvalidArgument,
)
from gateway.domain.jobs import Job, JobSpec, JobState
from gateway.jobs.manager import JobManager
from gateway.jobs.sessions import SessionCore
from gateway.runtime.fair_share import FairShare
from gateway.security.principals import tenant_of
from gateway.store.base import JobCursor
from gateway.telemetry import active as telemetry

MAX_REQUEST_ID_LENGTH = 128
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_CREATED_US = struct.Struct(">q")
# Bytes of a result field's framing and of its name's, beyond the stored result (generous).
RESULT_FRAMING_BYTES = 64
# Stored results up to this size are parsed and hashed on the event loop (a millisecond or so).
INLINE_PARSE_BYTES = 1 << 20
# Where a stored result goes in the responses that carry one (gateway.api.preserialized).
_GET_RESULT_FIELD = job_service_pb2.GetJobResultResponse.DESCRIPTOR.fields_by_name["result"].number
_RUN_RESULT_FIELD = job_service_pb2.RunResponse.DESCRIPTOR.fields_by_name["result"].number
# Run answers this long before the caller's deadline (less for short deadlines).
RUN_ANSWER_MARGIN_S = 0.05
# Specs above offload.INLINE_BYTES derived (digested and decoded, pure Python) at once, at
# most one per tenant, the next going to the tenant deriving the fewest: each holds ~10x its
# size meanwhile, and every such thread competes with the event loop for the GIL. Two at once
# in arrival order, four clients of one tenant sending validate_only specs of 500,000 Pauli
# terms took a bystander's GetJob p50 from 2.4 to 21 ms and its Run from 7 to 47 ms; one at a
# time, 6 and 15 ms (bench/noisy_neighbour.py). Two slots: another tenant's spec does not wait
# for one tenant's (a million terms take seconds).
LARGE_SPECS_AT_ONCE = 2
LARGE_SPECS_PER_TENANT = 1


def _request_id(value: str) -> str:
    """AIP-155 request_id: empty (no deduplication) or 1 to 128 printable ASCII characters."""
    if len(value) > MAX_REQUEST_ID_LENGTH or not (value.isascii() and value.isprintable()):
        raise InvalidArgument(
            "INVALID_REQUEST_ID",
            f"request_id must be at most {MAX_REQUEST_ID_LENGTH} printable ASCII characters "
            "(a UUID is recommended)",
            metadata={"maxLength": str(MAX_REQUEST_ID_LENGTH)},
            field_violations=[
                FieldViolation("request_id", "at most 128 printable ASCII characters")
            ],
        )
    return value


def _after(job: Job) -> JobCursor:
    return JobCursor(job.created_at, job.id)


def _job_cursor(cursor: JobCursor) -> bytes:
    """A ListJobs cursor as page-token bytes: the page's last job's create time and id."""
    created_us = (cursor.created_at - _EPOCH) // timedelta(microseconds=1)
    return _CREATED_US.pack(created_us) + cursor.id.encode()


def _job_cursor_from(data: bytes) -> JobCursor:
    # Only bytes a token sealed by our key can get here: a bad one is a bug or a stolen key.
    if len(data) <= _CREATED_US.size:
        raise paging.invalid_page_token()
    (created_us,) = _CREATED_US.unpack_from(data)
    try:
        created_at = _EPOCH + timedelta(microseconds=created_us)
        job_id = data[_CREATED_US.size :].decode()
    except (OverflowError, UnicodeDecodeError):
        raise paging.invalid_page_token() from None
    return JobCursor(created_at, job_id)


def run_wait_timeout(remaining: float | None, max_wait: float) -> float:
    """How long Run waits for its job, given the call's remaining time (None: no deadline):
    until RUN_ANSWER_MARGIN_S, or a tenth of what remains if less, before the deadline, and
    never longer than the server's Run wait limit `max_wait`."""
    if remaining is None:
        return max_wait
    return min(max_wait, max(0.0, remaining - min(RUN_ANSWER_MARGIN_S, 0.1 * remaining)))


class JobServicer(job_service_pb2_grpc.JobServiceServicer):
    def __init__(
        self,
        manager: JobManager,
        max_response_bytes: int,
        run_max_wait_s: float = 60.0,
        *,
        page_tokens: paging.PageTokens,
        sessions: SessionCore,
        stream_budget: StreamBudget,
        stream_pace: StreamPace,
    ) -> None:
        self._manager = manager
        self._stream_budget = stream_budget
        self._stream_pace = stream_pace
        # Jobs naming a session are admitted through it (gateway.jobs.sessions).
        self._sessions = sessions
        self._page_tokens = page_tokens
        self._max_response = max_response_bytes
        self._run_max_wait = run_max_wait_s
        self._specs = SpecCache(request_digest, codec.decode_spec)
        self._large_specs = FairShare(LARGE_SPECS_AT_ONCE, per_tenant=LARGE_SPECS_PER_TENANT)

    async def _stored_result(self, job: Job, reserved: int = 0) -> bytes | int:
        """The job's result as the wire bytes of a JobResult named "jobs/{job}/result", never
        parsed (gateway.api.preserialized), or its stored size when that message and
        `reserved` bytes of the rest of the response would exceed the response limit."""
        name = f"{codec.JOB_PREFIX}{job.id}/result"
        # The name and the framing of the result field and of the name; refused before the
        # result is read.
        room = self._max_response - len(name) - RESULT_FRAMING_BYTES - reserved
        data = await self._manager.result_within(job, room)
        if isinstance(data, int):
            return data
        try:
            return preserialized.named_result(data, name, job.num_pubs)
        except ValueError as exc:
            raise _damaged(job, exc) from None

    async def _derived(
        self, tenant: str, spec: job_pb2.JobSpec, *, digest: bool
    ) -> tuple[bytes, bytes, JobSpec | GatewayError]:
        """The spec's stored bytes, its request digest (b"" unless `digest`) and its domain form,
        or the error decoding it raised (the caller may still look its request_id up). A large
        request is derived in a thread, LARGE_SPECS_AT_ONCE at a time shared fairly across
        tenants, with a cache that keeps nothing: the servicer's is the event loop's (and
        keeps small specs only)."""
        if request_bytes() > offload.INLINE_BYTES:
            uncached = SpecCache(request_digest, codec.decode_spec, max_spec_bytes=0)
            return await self._large_specs.run_blocking(
                tenant, functools.partial(_derive, spec, digest, uncached)
            )
        return _derive(spec, digest, self._specs)

    async def _submit(
        self, context: Context, request_id: str, spec: job_pb2.JobSpec, *, position: bool = True
    ) -> tuple[Job, bool]:
        """The job and whether this call created it (False: an earlier request's job)."""
        tenant = tenant_of(context)
        request_id = _request_id(request_id)
        spec_bytes, digest, decoded = await self._derived(tenant, spec, digest=True)
        try:
            if isinstance(decoded, GatewayError):
                raise decoded
            domain_spec = decoded
            submit = self._manager.submit
            if domain_spec.session:
                submit = self._sessions.submit
            # A retry that validates is found by the store, which deduplicates atomically
            # when it creates the job (the outcome says created or found).
            with telemetry.span("qgateway.admission"):  # validate, compile, store
                outcome = await submit(
                    tenant, request_id, domain_spec, spec_bytes, digest, position=position
                )
        except GatewayError:
            # A retry gets its job even when the request would no longer be accepted (a
            # backend removed from the configuration, a limit lowered, the gateway draining):
            # looked up only when the request fails, so the common first try pays no lookup.
            existing = await self._manager.find_request(tenant, request_id, digest)
            if existing is not None:
                telemetry.job_known()
                return existing, False
            raise
        telemetry.job_known()  # an error from here on is no refusal: the job exists
        return outcome.job, outcome.created

    async def SubmitJob(
        self, request: job_service_pb2.SubmitJobRequest, context: Context
    ) -> job_service_pb2.SubmitJobResponse:
        if request.validate_only:
            return await self._validate(context, request.request_id, request.spec)
        job, created = await self._submit(context, request.request_id, request.spec)
        return job_service_pb2.SubmitJobResponse(job=codec.encode_job(job), created=created)

    async def _validate(
        self, context: Context, request_id: str, spec: job_pb2.JobSpec
    ) -> job_service_pb2.SubmitJobResponse:
        """validate_only (AIP-163): the submission's checks and its cost estimate; no job is
        created and the request_id is not recorded. A request_id is checked as a submission
        checks it: its form, and REQUEST_ID_REUSED when an earlier request used it for
        another spec (one indexed lookup)."""
        tenant = tenant_of(context)
        request_id = _request_id(request_id)
        _, digest, decoded = await self._derived(tenant, spec, digest=bool(request_id))
        earlier = await self._manager.find_request(tenant, request_id, digest)
        try:
            if isinstance(decoded, GatewayError):
                raise decoded
            domain_spec = decoded
            if domain_spec.session:
                await self._sessions.check_accepts(tenant, domain_spec)
            with telemetry.span("qgateway.validate"):
                estimate = await self._manager.validate(tenant, domain_spec)
        except GatewayError:
            if earlier is None:
                raise
            # The submission would answer its earlier job, whatever changed since (its
            # backend removed, a limit lowered): so does its validation, with no estimate.
            return job_service_pb2.SubmitJobResponse(created=False)
        return job_service_pb2.SubmitJobResponse(
            created=False, cost_estimate=codec.encode_cost_estimate(estimate)
        )

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
    ) -> Preserialized:
        job = await self._succeeded(context, request.name)
        result = await self._stored_result(job)
        if isinstance(result, int):
            raise FailedPrecondition(
                "RESULT_TOO_LARGE",
                f"the result of jobs/{job.id} is {result} bytes, more than one response holds "
                f"({self._max_response} bytes); fetch it with StreamJobResult",
                metadata={
                    "job": f"jobs/{job.id}",
                    "resultBytes": str(result),
                    "maxResponseBytes": str(self._max_response),
                },
            )
        return Preserialized(length_delimited(_GET_RESULT_FIELD, result))

    async def WatchJob(
        self, request: job_service_pb2.WatchJobRequest, context: Context
    ) -> AsyncIterator[job_service_pb2.WatchJobResponse]:
        async for event in self._manager.watch(tenant_of(context), codec.job_id(request.name)):
            yield job_service_pb2.WatchJobResponse(
                job=codec.encode_job(event.job), heartbeat=event.heartbeat
            )

    async def CancelJob(
        self, request: job_service_pb2.CancelJobRequest, context: Context
    ) -> job_service_pb2.CancelJobResponse:
        job = await self._manager.cancel(tenant_of(context), codec.job_id(request.name))
        return job_service_pb2.CancelJobResponse(job=codec.encode_job(job))

    async def ListJobs(
        self, request: job_service_pb2.ListJobsRequest, context: Context
    ) -> job_service_pb2.ListJobsResponse:
        limit = paging.page_size(request.page_size)
        tenant = tenant_of(context)
        job_filter = parse_filter(request.filter)
        # Bound to the tenant and the normalised filter (not the page size, AIP-158).
        where = {"kind": "jobs", "tenant": tenant, "query": job_filter.canonical()}
        sealed = self._page_tokens.open(request.page_token, **where)
        after = None if sealed is None else _job_cursor_from(sealed)
        page = await self._manager.list(tenant, filter=job_filter, after=after, limit=limit)
        jobs, next_cursor = paging.within_response(
            page.jobs, page.next_cursor, self._max_response, codec.encode_job, _after
        )
        return job_service_pb2.ListJobsResponse(
            jobs=jobs,
            next_page_token=(
                self._page_tokens.seal(_job_cursor(next_cursor), **where)
                if next_cursor is not None
                else ""
            ),
        )

    async def Run(
        self, request: job_service_pb2.RunRequest, context: Context
    ) -> job_service_pb2.RunResponse | Preserialized:
        job, created = await self._submit(context, request.request_id, request.spec, position=False)
        # Answer a little before the deadline, so the caller gets our error with the job name
        # rather than its own bare DEADLINE_EXCEEDED; the margin shrinks with the deadline, so a
        # short deadline still gives a fast job its chance instead of being answered at once.
        # Without a deadline (or with a long one) the wait is capped too: a call through
        # proxies that cut quiet calls must not hang on a job that takes hours.
        remaining = context.time_remaining()
        timeout = run_wait_timeout(remaining, self._run_max_wait)
        finished = await self._manager.wait(job.tenant, job.id, timeout)
        if finished is None:
            capped = remaining is None or timeout >= self._run_max_wait
            # The limit that applied: the server's cap, or the caller's own deadline (as much
            # of it as was left when the call arrived).
            limit = f"{self._run_max_wait:g}" if capped else f"{round(remaining or 0.0, 3):g}"
            waited = f"the server's Run wait limit of {limit}s" if capped else "the deadline"
            raise DeadlineExceeded(
                "RUN_DEADLINE_EXCEEDED",
                f"job jobs/{job.id} did not finish within {waited}; it keeps running "
                "(repeat Run with the same request_id, or WatchJob, to get it)",
                # Whether this call created the job: the caller follows it and still knows.
                metadata={
                    "job": f"jobs/{job.id}",
                    "limitSeconds": limit,
                    "created": "true" if created else "false",
                },
            )
        response = job_service_pb2.RunResponse(job=codec.encode_job(finished), created=created)
        if finished.state is JobState.SUCCEEDED:
            # The rest of the response counts against the same message limit; a result that
            # cannot fit is not read (a repeated Run must not cost a read of up to max_result_mb
            # on a store's result reader each time).
            result = await self._stored_result(finished, response.ByteSize())
            if isinstance(result, int):
                response.result_too_large = True
            else:
                rest = response.SerializeToString()
                return Preserialized(rest + length_delimited(_RUN_RESULT_FIELD, result))
        return response

    async def StreamJobResult(
        self, request: job_service_pb2.StreamJobResultRequest, context: Context
    ) -> AsyncIterator[job_service_pb2.StreamJobResultResponse | Preserialized]:
        # The request's own fields first: a bad request is refused before any lookup.
        chunk = result_stream.chunk_size(request.chunk_bytes, self._max_response)
        start_pub, start_binding = request.start_pub_index, request.start_binding_index
        result_stream.check_start_fields(start_pub, start_binding)
        job = await self._succeeded(context, request.name)
        result_stream.check_pub_position(start_pub, job.num_pubs)
        # Held from before the read until the stream ends: the size alone is read first.
        with self._stream_budget.hold(job.tenant, await self._manager.result_size(job)) as held:
            # The read and the parse each hold the result in a thread that a cancelled caller
            # leaves running: released with the call, a tenant cancelling such streams over
            # and over held memory uncharged.
            data = await held.through(self._manager.result(job))
            # The samples and counts stay views of the stored bytes (held once, as charged);
            # only the rest is parsed.
            size = len(data)
            try:
                digest, stored = await held.through(
                    offload.by_size(
                        size, _split, data, job.num_pubs, inline_bytes=INLINE_PARSE_BYTES
                    )
                )
            except ValueError as exc:
                raise _damaged(job, exc) from None
            del data
            result_stream.check_position(stored.result, start_pub, start_binding)
            chunks = result_stream.result_chunks(stored, chunk, start_pub, start_binding)
            # Each message of a large result is built in a thread, as its split was: a counts
            # slice of 3 MiB took ~11 ms on the event loop, no other tenant's call progressing
            # meanwhile. In the thread its Python work gives the loop the GIL every switch
            # interval, and its bytes are cut from the stored ones (no C parse or
            # serialisation of the counts holds it throughout).
            while True:
                try:
                    response = await held.through(
                        offload.by_size(size, _next_chunk, chunks, inline_bytes=INLINE_PARSE_BYTES)
                    )
                except ValueError as exc:
                    raise _damaged(job, exc) from None
                if response is None:
                    break
                await self._stream_pace.next_message(job.tenant)
                yield response
            yield result_stream.digest_response(digest)


def _damaged(job: Job, exc: ValueError) -> DataLoss:
    """A stored result the gateway never writes: the database was changed under it."""
    return DataLoss(
        "STORE_CORRUPT",
        f"the stored result of jobs/{job.id} is damaged: {exc}",
        metadata={"job": f"jobs/{job.id}"},
    )


def _derive(
    spec: job_pb2.JobSpec, digest: bool, specs: SpecCache
) -> tuple[bytes, bytes, JobSpec | GatewayError]:
    """JobServicer._derived's work, wherever it runs."""
    # Before anything is paid per element (the digest and the decoding walk every term).
    codec.check_counts(spec)
    # Only what the API defines is stored: unknown fields (at any depth) would otherwise be
    # persisted verbatim (the digest ignores them anyway).
    spec.DiscardUnknownFields()
    spec_bytes = spec.SerializeToString(deterministic=True)
    # A repeated spec (the same circuit and options, a new request_id) is digested and
    # decoded once.
    spec_digest = specs.digest(spec_bytes, spec) if digest else b""
    try:
        return spec_bytes, spec_digest, specs.decoded(spec_bytes, spec)
    except GatewayError as err:
        return spec_bytes, spec_digest, err


def _next_chunk(
    chunks: Iterator[job_service_pb2.StreamJobResultResponse | Preserialized],
) -> job_service_pb2.StreamJobResultResponse | Preserialized | None:
    """The stream's next message, None after the last."""
    return next(chunks, None)


def _split(data: bytes, pubs: int) -> tuple[bytes, Split]:
    """StreamJobResult's work on a stored result of a job of `pubs` PUBs, wherever it runs: its
    digest, and the result split from its samples and counts. Another number of PUBs is
    damage, refused as preserialized.named_result refuses it (streamed, a PUB too many was
    sent, and one too few answered a resume position INVALID_ARGUMENT)."""
    stored = split_result(data)
    found = len(stored.result.pub_results)
    if found != pubs:
        raise ValueError(f"it holds {found} PUB results for the job's {pubs} PUBs")
    return result_stream.result_digest(data), stored
