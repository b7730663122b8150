"""Typed client errors from google.rpc.Status trailers, and the client's retry rules."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import replace
from types import SimpleNamespace
from typing import Any

import grpc  # type: ignore[import-untyped, unused-ignore]
import pytest
from google.protobuf import duration_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from qgateway import client as client_module
from qgateway.client import (
    DEFAULT_RETRY,
    AsyncClient,
    Client,
    RetryPolicy,
    estimator_pub,
    sampler_pub,
)
from qgateway.errors import (
    ERROR_DOMAIN,
    STATUS_DETAILS_KEY,
    AbortedError,
    AlreadyExistsError,
    CancelledError,
    DataLossError,
    DeadlineExceededError,
    FailedPreconditionError,
    InternalError,
    InvalidArgumentError,
    JobFailedError,
    NotFoundError,
    OutOfRangeError,
    PermissionDeniedError,
    QGatewayError,
    ResourceExhaustedError,
    ResourceInfo,
    UnauthenticatedError,
    UnavailableError,
    UnimplementedError,
    UnknownError,
    from_rpc_error,
    from_status,
)
from qgateway.v1 import job_pb2, job_service_pb2


class FakeRpcError(grpc.RpcError):  # type: ignore[misc, unused-ignore]
    """What a stub raises: an RpcError that is also a Call with code, details and trailers."""

    def __init__(self, code: Any, details: str, trailers: Any = ()) -> None:
        super().__init__(details)
        self._code = code
        self._details = details
        self._trailers = trailers

    def code(self) -> Any:
        return self._code

    def details(self) -> str:
        return self._details

    def trailing_metadata(self) -> Any:
        return self._trailers


def status_trailers(code: Any, message: str, *details: Message) -> tuple[tuple[str, bytes], ...]:
    """Trailing metadata carrying a google.rpc.Status with the given details."""
    status = status_pb2.Status(code=code.value[0], message=message)
    for detail in details:
        status.details.add().Pack(detail)
    return ((STATUS_DETAILS_KEY, status.SerializeToString()),)


def error_info(reason: str, **metadata: str) -> error_details_pb2.ErrorInfo:
    return error_details_pb2.ErrorInfo(reason=reason, domain=ERROR_DOMAIN, metadata=metadata)


def retry_info(seconds: int, nanos: int = 0) -> error_details_pb2.RetryInfo:
    return error_details_pb2.RetryInfo(
        retry_delay=duration_pb2.Duration(seconds=seconds, nanos=nanos)
    )


@pytest.mark.parametrize(
    ("code", "cls"),
    [
        (grpc.StatusCode.CANCELLED, CancelledError),
        (grpc.StatusCode.UNKNOWN, UnknownError),
        (grpc.StatusCode.INVALID_ARGUMENT, InvalidArgumentError),
        (grpc.StatusCode.DEADLINE_EXCEEDED, DeadlineExceededError),
        (grpc.StatusCode.NOT_FOUND, NotFoundError),
        (grpc.StatusCode.ALREADY_EXISTS, AlreadyExistsError),
        (grpc.StatusCode.PERMISSION_DENIED, PermissionDeniedError),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, ResourceExhaustedError),
        (grpc.StatusCode.FAILED_PRECONDITION, FailedPreconditionError),
        (grpc.StatusCode.ABORTED, AbortedError),
        (grpc.StatusCode.OUT_OF_RANGE, OutOfRangeError),
        (grpc.StatusCode.UNIMPLEMENTED, UnimplementedError),
        (grpc.StatusCode.INTERNAL, InternalError),
        (grpc.StatusCode.UNAVAILABLE, UnavailableError),
        (grpc.StatusCode.DATA_LOSS, DataLossError),
        (grpc.StatusCode.UNAUTHENTICATED, UnauthenticatedError),
    ],
)
def test_each_status_code_has_its_class(code: Any, cls: type[QGatewayError]) -> None:
    err = from_rpc_error(FakeRpcError(code, "boom"))
    assert type(err) is cls
    assert isinstance(err, QGatewayError)
    assert err.code == code
    assert err.message == "boom"
    assert err.reason == ""
    assert err.retry_delay is None


def test_invalid_argument_with_error_info_and_field_violations() -> None:
    bad = error_details_pb2.BadRequest(
        field_violations=[
            error_details_pb2.BadRequest.FieldViolation(
                field="spec.pubs[0].sampler.circuit", description="line 3: unknown gate 'foo'"
            ),
            error_details_pb2.BadRequest.FieldViolation(
                field="spec.pubs[1].sampler.shots", description="must be positive"
            ),
        ]
    )
    trailers = status_trailers(
        grpc.StatusCode.INVALID_ARGUMENT,
        "circuit does not parse",
        error_info("INVALID_QASM", pub="0"),
        bad,
    )
    err = from_rpc_error(
        FakeRpcError(grpc.StatusCode.INVALID_ARGUMENT, "circuit does not parse", trailers)
    )
    assert isinstance(err, InvalidArgumentError)
    assert err.reason == "INVALID_QASM"
    assert err.domain == "qgateway.dev" and err.from_gateway
    assert err.metadata == {"pub": "0"}
    assert err.field_violations == [
        ("spec.pubs[0].sampler.circuit", "line 3: unknown gate 'foo'"),
        ("spec.pubs[1].sampler.shots", "must be positive"),
    ]
    assert str(err) == "INVALID_ARGUMENT INVALID_QASM: circuit does not parse"


def test_not_found_carries_resource_info() -> None:
    trailers = status_trailers(
        grpc.StatusCode.NOT_FOUND,
        "job jobs/abc not found",
        error_info("JOB_NOT_FOUND", job="jobs/abc"),
        error_details_pb2.ResourceInfo(
            resource_type="qgateway.dev/Job", resource_name="jobs/abc", description="no such job"
        ),
    )
    err = from_rpc_error(
        FakeRpcError(grpc.StatusCode.NOT_FOUND, "job jobs/abc not found", trailers)
    )
    assert isinstance(err, NotFoundError)
    assert err.resource_info == ResourceInfo("qgateway.dev/Job", "jobs/abc", "no such job")
    assert err.metadata == {"job": "jobs/abc"} and not err.field_violations
    assert from_rpc_error(FakeRpcError(grpc.StatusCode.NOT_FOUND, "x")).resource_info is None


def test_an_error_from_elsewhere_is_not_the_gateways() -> None:
    trailers = status_trailers(
        grpc.StatusCode.UNAVAILABLE,
        "upstream connect error",
        error_details_pb2.ErrorInfo(reason="UPSTREAM", domain="envoy.example"),
    )
    err = from_rpc_error(FakeRpcError(grpc.StatusCode.UNAVAILABLE, "", trailers))
    assert err.domain == "envoy.example" and not err.from_gateway
    assert ERROR_DOMAIN == "qgateway.dev"


def test_a_job_failure_status_becomes_a_typed_error() -> None:
    status = status_pb2.Status(code=grpc.StatusCode.RESOURCE_EXHAUSTED.value[0], message="oom")
    status.details.add().Pack(error_info("OUT_OF_MEMORY", pubIndex="1"))
    err = from_status(status)
    assert isinstance(err, ResourceExhaustedError)
    assert (err.code, err.reason, err.message, err.metadata) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "OUT_OF_MEMORY",
        "oom",
        {"pubIndex": "1"},
    )
    assert err.retry_delay is None and not err.quota_violations
    failed = JobFailedError("jobs/j", "FAILED", error=err)
    assert (failed.reason, failed.message) == ("OUT_OF_MEMORY", "oom")
    assert failed.code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert failed.metadata == {"pubIndex": "1"}
    assert str(failed) == "job jobs/j FAILED OUT_OF_MEMORY: oom"
    cancelled = JobFailedError("jobs/j", "CANCELLED")
    assert (cancelled.code, cancelled.metadata, cancelled.error) == (None, {}, None)


def test_unavailable_carries_retry_delay() -> None:
    trailers = status_trailers(
        grpc.StatusCode.UNAVAILABLE, "breaker open", error_info("BREAKER_OPEN"), retry_info(1, 5)
    )
    err = from_rpc_error(FakeRpcError(grpc.StatusCode.UNAVAILABLE, "breaker open", trailers))
    assert isinstance(err, UnavailableError)
    assert err.reason == "BREAKER_OPEN"
    assert err.retry_delay == pytest.approx(1.000000005)
    half = status_trailers(grpc.StatusCode.UNAVAILABLE, "busy", retry_info(0, 500_000_000))
    assert (
        from_rpc_error(FakeRpcError(grpc.StatusCode.UNAVAILABLE, "busy", half)).retry_delay == 0.5
    )


def test_resource_exhausted_carries_quota_violations_and_delay() -> None:
    quota = error_details_pb2.QuotaFailure(
        violations=[
            error_details_pb2.QuotaFailure.Violation(
                subject="tenant:default", description="shot quota 1000000/day used up"
            )
        ]
    )
    trailers = status_trailers(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "quota",
        error_info("SHOT_QUOTA_EXCEEDED"),
        quota,
        retry_info(30),
    )
    err = from_rpc_error(FakeRpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, "quota", trailers))
    assert isinstance(err, ResourceExhaustedError)
    assert err.reason == "SHOT_QUOTA_EXCEEDED"
    assert err.quota_violations == [("tenant:default", "shot quota 1000000/day used up")]
    assert err.retry_delay == 30.0


def test_run_deadline_names_the_job() -> None:
    trailers = status_trailers(
        grpc.StatusCode.DEADLINE_EXCEEDED, "still running", error_info("DEADLINE", job="jobs/j1")
    )
    err = from_rpc_error(FakeRpcError(grpc.StatusCode.DEADLINE_EXCEEDED, "still running", trailers))
    assert isinstance(err, DeadlineExceededError)
    assert err.job == "jobs/j1"


def test_deadline_without_details_has_no_job() -> None:
    err = from_rpc_error(FakeRpcError(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded"))
    assert isinstance(err, DeadlineExceededError)
    assert err.job is None


def test_aio_metadata_trailers() -> None:
    (key, value) = status_trailers(
        grpc.StatusCode.NOT_FOUND, "no such job", error_info("JOB_NOT_FOUND")
    )[0]
    trailers = grpc.aio.Metadata(("x-other", "1"), (key, value))
    err = from_rpc_error(FakeRpcError(grpc.StatusCode.NOT_FOUND, "no such job", trailers))
    assert isinstance(err, NotFoundError)
    assert err.reason == "JOB_NOT_FOUND"


def test_garbled_trailer_still_gives_typed_error() -> None:
    trailers = ((STATUS_DETAILS_KEY, b"\xff\xff not a status"),)
    err = from_rpc_error(FakeRpcError(grpc.StatusCode.INTERNAL, "oops", trailers))
    assert isinstance(err, InternalError)
    assert err.reason == ""
    assert err.message == "oops"


def test_message_falls_back_to_status_message() -> None:
    trailers = status_trailers(grpc.StatusCode.ABORTED, "from status", error_info("X"))
    err = from_rpc_error(FakeRpcError(grpc.StatusCode.ABORTED, "", trailers))
    assert err.message == "from status"
    # The call's own message, when it has one, is the one raised.
    err = from_rpc_error(FakeRpcError(grpc.StatusCode.ABORTED, "from call", trailers))
    assert err.message == "from call" and err.reason == "X"


def test_bare_rpc_error_is_unknown() -> None:
    err = from_rpc_error(grpc.RpcError("bare"))
    assert isinstance(err, UnknownError)


# --- Retries ----------------------------------------------------------------------------------

FAST = RetryPolicy(initial_backoff=0.01, max_backoff=0.02, max_attempts=4, jitter=0.0)


def refusal(
    code: grpc.StatusCode, message: str, info: Message, delay: int | None = None
) -> FakeRpcError:
    details: list[Message] = [info]
    if delay is not None:
        details.append(retry_info(delay))
    return FakeRpcError(code, message, status_trailers(code, message, *details))


def unavailable(delay: int | None = None) -> FakeRpcError:
    return refusal(grpc.StatusCode.UNAVAILABLE, "breaker open", error_info("BREAKER_OPEN"), delay)


class FakeUnary:
    """A stub method answering with the given outcomes in turn, recording every request."""

    def __init__(self, outcomes: Sequence[Any]) -> None:
        self.outcomes = list(outcomes)
        self.requests: list[Any] = []
        self.timeouts: list[float | None] = []

    def __call__(self, request: Any, timeout: float | None = None, metadata: Any = None) -> Any:
        self.requests.append(request)
        self.timeouts.append(timeout)
        outcome = self.outcomes.pop(0)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome


class CutStream:
    """A server-streaming call (sync or aio) cut after it delivered its messages: with
    `error`, or as a proxy cuts it (UNAVAILABLE)."""

    def __init__(self, responses: Sequence[Any], error: FakeRpcError | None = None) -> None:
        self._responses = responses
        self._error = error or FakeRpcError(
            grpc.StatusCode.UNAVAILABLE, "upstream connect error / stream reset"
        )

    def __iter__(self) -> Iterator[Any]:
        yield from self._responses
        raise self._error

    async def __aiter__(self) -> AsyncIterator[Any]:
        for response in self._responses:
            yield response
        raise self._error

    def cancel(self) -> None:
        pass


class EndedStream:
    """A server-streaming call that delivers its messages and ends."""

    def __init__(self, responses: Sequence[Any]) -> None:
        self._responses = responses

    def __iter__(self) -> Iterator[Any]:
        yield from self._responses

    def cancel(self) -> None:
        pass


def finished_run() -> job_service_pb2.RunResponse:
    return job_service_pb2.RunResponse(
        job=job_pb2.Job(name="jobs/j1", state=job_pb2.JOB_STATE_SUCCEEDED),
        result=job_pb2.JobResult(
            name="jobs/j1/result",
            pub_results=[
                job_pb2.PubResult(
                    sampler=job_pb2.SamplerPubResult(
                        shots=4,
                        registers=[
                            job_pb2.RegisterResult(
                                name="c",
                                num_bits=2,
                                counts=[job_pb2.Counts(outcomes=b"\x00\x03", counts=[3, 1])],
                            )
                        ],
                    )
                )
            ],
        ),
    )


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    recorded: list[float] = []
    monkeypatch.setattr(client_module, "_sleep", recorded.append)
    return recorded


def make_client(**methods: Any) -> Client:
    client = Client("127.0.0.1:1", retry=FAST)
    client._jobs_stub = SimpleNamespace(**methods)
    return client


def test_run_retries_unavailable_with_the_same_request_id(sleeps: list[float]) -> None:
    run = FakeUnary([unavailable(), unavailable(2), finished_run()])
    with make_client(Run=run) as client:
        result = client.run("OPENQASM 3.0;", shots=4, timeout=30)
    assert result.counts() == {"00": 3, "11": 1}
    ids = [r.request_id for r in run.requests]
    assert len(ids) == 3
    assert ids[0] and len(set(ids)) == 1
    # Backoff first, then the gateway's RetryInfo delay, only ever lengthened by the jitter.
    assert sleeps[0] == pytest.approx(0.01)
    assert 2.0 <= sleeps[1] <= 2.0 * (1 + FAST.jitter)
    assert all(t is not None and 0 < t <= 30 for t in run.timeouts)


def test_caller_request_id_is_kept(sleeps: list[float]) -> None:
    run = FakeUnary([unavailable(), finished_run()])
    with make_client(Run=run) as client:
        client.run("OPENQASM 3.0;", request_id="mine")
    assert [r.request_id for r in run.requests] == ["mine", "mine"]


def test_a_zero_seed_and_a_zero_precision_are_sent_not_dropped(sleeps: list[float]) -> None:
    # 0 is a seed like any other, and precision 0 asks for exact values: neither is "unset".
    submit = FakeUnary([job_service_pb2.SubmitJobResponse(job=job_pb2.Job(name="jobs/j1"))])
    pub = estimator_pub("OPENQASM 3.0;", "Z", precision=0.0)
    with make_client(SubmitJob=submit) as client:
        client.submit_pubs([pub], seed=0, default_precision=0.0)
    spec = submit.requests[0].spec
    assert spec.options.HasField("seed") and spec.options.seed == 0
    assert spec.options.HasField("default_precision")
    assert spec.pubs[0].estimator.HasField("precision")


def test_submit_pubs_sends_every_job_option(sleeps: list[float]) -> None:
    submit = FakeUnary([job_service_pb2.SubmitJobResponse(job=job_pb2.Job(name="jobs/j1"))])
    with make_client(SubmitJob=submit) as client:
        client.submit_pubs(
            [sampler_pub("OPENQASM 3.0;")],
            backend="aer",
            default_shots=100,
            max_execution_time=1.5,
            fallback_backend="braket",
            session="s1",
            labels={"team": "a"},
        )
    spec = submit.requests[0].spec
    assert spec.backend == "backends/aer" and spec.session == "sessions/s1"
    assert spec.options.default_shots == 100
    assert spec.options.max_execution_time == duration_pb2.Duration(seconds=1, nanos=500_000_000)
    assert spec.options.fallback_backend == "backends/braket"
    assert dict(spec.labels) == {"team": "a"}


def test_counts_only_and_sampler_output_are_sent_or_refused(sleeps: list[float]) -> None:
    submit = FakeUnary(
        [job_service_pb2.SubmitJobResponse(job=job_pb2.Job(name="jobs/j1")) for _ in range(2)]
    )
    with make_client(SubmitJob=submit) as client:
        client.submit("OPENQASM 3.0;", counts_only=True)
        client.submit("OPENQASM 3.0;", sampler_output="samples")
        with pytest.raises(ValueError, match="unknown sampler output"):
            client.submit("OPENQASM 3.0;", sampler_output=99)
        with pytest.raises(ValueError, match="contradicts"):
            client.submit("OPENQASM 3.0;", counts_only=True, sampler_output="samples")
    outputs = [r.spec.options.sampler_output for r in submit.requests]
    assert outputs == [job_pb2.SAMPLER_OUTPUT_COUNTS, job_pb2.SAMPLER_OUTPUT_SAMPLES]


def test_a_run_whose_job_was_cancelled_raises_job_failed(sleeps: list[float]) -> None:
    cancelled = job_pb2.Job(name="jobs/j1", state=job_pb2.JOB_STATE_CANCELLED)
    run = FakeUnary([job_service_pb2.RunResponse(job=cancelled)])
    with make_client(Run=run) as client, pytest.raises(JobFailedError) as info:
        client.run("OPENQASM 3.0;")
    assert info.value.job == "jobs/j1" and info.value.state == "CANCELLED"


def test_a_retry_that_gets_its_own_job_back_says_the_call_created_it(
    sleeps: list[float],
) -> None:
    # The first attempt created the job; its answer was lost (a reset) and the retry got the
    # job back, created=False: the call reported it had not created the job it had.
    def again(response: Any) -> Any:
        repeated = type(response)()
        repeated.CopyFrom(response)
        repeated.created = False
        return repeated

    created = job_service_pb2.SubmitJobResponse(job=job_pb2.Job(name="jobs/j1"), created=True)
    with make_client(
        Run=FakeUnary([unavailable(), again(finished_run())]),
        SubmitJob=FakeUnary([unavailable(), again(created)]),
    ) as client:
        assert client.run_pubs([sampler_pub("OPENQASM 3.0;", shots=4)]).created is True
        assert client.submit("OPENQASM 3.0;", shots=4).created is True
    # A request_id of the caller's own may have been an earlier call's: the answer stands.
    with make_client(Run=FakeUnary([again(finished_run())])) as client:
        pubs = [sampler_pub("OPENQASM 3.0;", shots=4)]
        assert client.run_pubs(pubs, request_id="mine").created is False


def test_other_codes_are_not_retried(sleeps: list[float]) -> None:
    bad = FakeRpcError(grpc.StatusCode.INVALID_ARGUMENT, "no")
    run = FakeUnary([bad])
    with make_client(Run=run) as client, pytest.raises(InvalidArgumentError) as info:
        client.run("OPENQASM 3.0;")
    assert len(run.requests) == 1
    assert sleeps == []
    assert info.value.request_id == run.requests[0].request_id


def test_a_cancel_the_gateways_stop_sent_is_retried_and_a_local_one_is_not(
    sleeps: list[float],
) -> None:
    # A call reaching the gateway as its drain ends is cancelled by gRPC's server stop: the
    # client gave up on it (a planned restart failed callers), though it is as repeatable as
    # the UNAVAILABLE a moment later gives.
    run = FakeUnary([FakeRpcError(grpc.StatusCode.CANCELLED, "CANCELLED"), finished_run()])
    with make_client(Run=run) as client:
        client.run("OPENQASM 3.0;")
    assert len(run.requests) == 2 and len(sleeps) == 1
    assert run.requests[0].request_id == run.requests[1].request_id
    # Cancelled on this side (the channel closed under it): nothing to repeat.
    local = FakeUnary([FakeRpcError(grpc.StatusCode.CANCELLED, "Channel closed!")])
    with make_client(Run=local) as client, pytest.raises(CancelledError):
        client.run("OPENQASM 3.0;")
    assert len(local.requests) == 1


def test_attempts_are_bounded(sleeps: list[float]) -> None:
    run = FakeUnary([unavailable() for _ in range(10)])
    with make_client(Run=run) as client, pytest.raises(UnavailableError):
        client.run("OPENQASM 3.0;")
    assert len(run.requests) == FAST.max_attempts


def test_retry_delay_beyond_the_timeout_gives_up_at_once(sleeps: list[float]) -> None:
    run = FakeUnary([unavailable(60), finished_run()])
    with make_client(Run=run) as client, pytest.raises(UnavailableError) as info:
        client.run("OPENQASM 3.0;", timeout=5)
    assert len(run.requests) == 1
    assert info.value.retry_delay == 60.0


def test_a_retry_delay_as_long_as_the_timeout_gives_up_at_once(sleeps: list[float]) -> None:
    # The next attempt could not start before the deadline: raised now, not slept into it.
    run = FakeUnary([unavailable(5), finished_run()])
    with make_client(Run=run) as client, pytest.raises(UnavailableError) as info:
        client.run("OPENQASM 3.0;", timeout=5)
    assert len(run.requests) == 1 and sleeps == []
    assert info.value.retry_delay == 5.0


def test_a_retry_delay_past_the_policys_longest_is_raised_not_slept(
    sleeps: list[float],
) -> None:
    # No timeout: an hour-long RetryInfo (a breaker's cooldown) was slept max_attempts times.
    run = FakeUnary([unavailable(3600), finished_run()])
    with make_client(Run=run) as client, pytest.raises(UnavailableError) as info:
        client.run("OPENQASM 3.0;")
    assert len(run.requests) == 1 and sleeps == []
    assert info.value.retry_delay == 3600.0


def test_a_negative_retry_delay_is_no_delay(sleeps: list[float]) -> None:
    run = FakeUnary([unavailable(-1), finished_run()])
    with make_client(Run=run) as client:
        client.run("OPENQASM 3.0;")
    assert sleeps == [0.0]


def aborted(reason: str, delay: int | None = None) -> FakeRpcError:
    return refusal(grpc.StatusCode.ABORTED, "stopped", error_info(reason, job="jobs/j1"), delay)


def test_a_long_drain_is_waited_out_within_the_timeout(sleeps: list[float]) -> None:
    # A draining gateway answers a queued job's Run GATEWAY_DRAINING for its whole grace
    # period (its running jobs may take all of it): the client spent its attempts in seconds
    # and gave up while it still drained. Its answers spend no attempt; RetryInfo paces them.
    drained = [aborted("GATEWAY_DRAINING", 5) for _ in range(3 * FAST.max_attempts)]
    run = FakeUnary([*drained, unavailable(), finished_run()])
    with make_client(Run=run) as client:
        assert client.run("OPENQASM 3.0;", shots=4, timeout=3600).counts()
    assert len(run.requests) == len(drained) + 2
    assert sleeps[: len(drained)] == [5.0] * len(drained)  # jitter 0 in FAST
    once = FakeUnary([aborted("GATEWAY_DRAINING", 5)])
    with make_client(Run=once) as client, pytest.raises(AbortedError):
        client.run("OPENQASM 3.0;", shots=4, timeout=2)  # within its deadline only


def test_a_run_cut_by_a_drain_is_repeated_with_its_request_id(sleeps: list[float]) -> None:
    # A Run cut by a shutdown is ABORTED GATEWAY_DRAINING ("the job is safe, repeat the call"):
    # it reached the caller as an error at every planned restart.
    run = FakeUnary([aborted("GATEWAY_DRAINING"), unavailable(), finished_run()])
    with make_client(Run=run) as client:
        result = client.run("OPENQASM 3.0;", shots=4, timeout=30)
    assert result.counts() == {"00": 3, "11": 1}
    ids = [r.request_id for r in run.requests]
    assert len(ids) == 3 and len(set(ids)) == 1 and len(sleeps) == 2


def test_a_watch_cut_by_a_drain_is_resumed(sleeps: list[float]) -> None:
    queued = job_service_pb2.WatchJobResponse(
        job=job_pb2.Job(name="jobs/j1", state=job_pb2.JOB_STATE_QUEUED)
    )
    done = job_service_pb2.WatchJobResponse(
        job=job_pb2.Job(name="jobs/j1", state=job_pb2.JOB_STATE_SUCCEEDED)
    )
    streams = [CutStream([queued], aborted("GATEWAY_DRAINING")), EndedStream([queued, done])]
    with make_client(WatchJob=lambda *args, **kwargs: streams.pop(0)) as client:
        states = [job.state.name for job in client.watch("j1", timeout=30)]
    assert states == ["QUEUED", "SUCCEEDED"] and len(sleeps) == 1


def test_other_aborted_answers_are_not_retried(sleeps: list[float]) -> None:
    run = FakeUnary([aborted("ETAG_MISMATCH")])
    with make_client(Run=run) as client, pytest.raises(AbortedError):
        client.run("OPENQASM 3.0;")
    assert len(run.requests) == 1 and sleeps == []


def test_the_default_policy_waits_out_a_restarting_gateway() -> None:
    # 5 attempts gave up after 1.5 s of back-off: a gateway restart (~3.5 s here) reached
    # every caller of Run or wait as UNAVAILABLE, whatever its timeout.
    policy = replace(DEFAULT_RETRY, jitter=0.0)
    waited = sum(policy.backoff(n) for n in range(1, policy.max_attempts))
    assert waited >= 20.0


def test_cancel_is_never_retried(sleeps: list[float]) -> None:
    cancel = FakeUnary([unavailable(), job_service_pb2.CancelJobResponse()])
    with make_client(CancelJob=cancel) as client, pytest.raises(UnavailableError):
        client.cancel("j1")
    assert len(cancel.requests) == 1
    assert cancel.requests[0].name == "jobs/j1"


def test_run_deadline_error_carries_request_id_and_job(sleeps: list[float]) -> None:
    deadline = FakeRpcError(
        grpc.StatusCode.DEADLINE_EXCEEDED,
        "job jobs/j1 did not finish within the deadline",
        status_trailers(
            grpc.StatusCode.DEADLINE_EXCEEDED, "late", error_info("DEADLINE", job="jobs/j1")
        ),
    )
    run = FakeUnary([deadline])
    with make_client(Run=run) as client, pytest.raises(DeadlineExceededError) as info:
        client.run("OPENQASM 3.0;", request_id="r1", timeout=1)
    assert info.value.job == "jobs/j1"
    assert info.value.request_id == "r1"
    assert sleeps == []


def test_async_client_retries_with_the_same_request_id(monkeypatch: pytest.MonkeyPatch) -> None:
    recorded: list[float] = []

    async def fake_sleep(delay: float) -> None:
        recorded.append(delay)

    monkeypatch.setattr(client_module, "_async_sleep", fake_sleep)
    outcomes: list[Any] = [unavailable(1), finished_run()]
    requests: list[Any] = []

    async def run(request: Any, timeout: float | None = None, metadata: Any = None) -> Any:
        requests.append(request)
        outcome = outcomes.pop(0)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    async def scenario() -> dict[str, int]:
        async with AsyncClient("127.0.0.1:1", retry=FAST) as client:
            _ = client.channel  # opened inside the loop, then its stub replaced
            client._jobs_stub = SimpleNamespace(Run=run)
            result = await client.run("OPENQASM 2.0;\nqreg q[1];", shots=4)
            return result.counts()

    assert asyncio.run(scenario()) == {"00": 3, "11": 1}
    assert recorded == [1.0]
    assert len(requests) == 2
    assert requests[0].request_id and requests[0].request_id == requests[1].request_id
    assert requests[0].spec.pubs[0].sampler.circuit.WhichOneof("source") == "qasm2"


def test_retry_policy_backoff_grows_and_is_capped() -> None:
    policy = RetryPolicy(initial_backoff=0.1, max_backoff=0.5, multiplier=2.0, jitter=0.0)
    assert [policy.backoff(n) for n in (1, 2, 3, 4)] == pytest.approx([0.1, 0.2, 0.4, 0.5])
    jittered = RetryPolicy(initial_backoff=1.0, max_backoff=10.0, jitter=0.5)
    assert all(0.5 <= jittered.backoff(1) <= 1.5 for _ in range(50))
    with pytest.raises(ValueError):
        RetryPolicy(max_attempts=0)


def test_retry_policy_jitter_spreads_both_ways(monkeypatch: pytest.MonkeyPatch) -> None:
    policy = RetryPolicy(initial_backoff=1.0, max_backoff=10.0, jitter=0.5)
    monkeypatch.setattr(random, "random", lambda: 0.0)
    assert policy.backoff(1) == pytest.approx(0.5)
    monkeypatch.setattr(random, "random", lambda: 1.0)
    assert policy.backoff(1) == pytest.approx(1.5)


def test_a_receive_limit_the_caller_set_is_kept() -> None:
    limit = ("grpc.max_receive_message_length", 1024)
    assert client_module._channel_options([limit]) == [limit]
    assert client_module._channel_options([]) == [("grpc.max_receive_message_length", -1)]


def test_the_client_reads_answers_above_grpcs_default_receive_limit() -> None:
    """A gateway whose operator raised server.max_response_bytes above 4 MiB sends larger
    answers; the client's own default limit turned a fetched result into a bare
    RESOURCE_EXHAUSTED (and invited a retry that runs the job again)."""
    from concurrent import futures

    from qgateway.v1 import job_service_pb2_grpc

    shots = 5 << 20  # one byte per shot: a 5 MiB answer
    response = job_service_pb2.GetJobResultResponse()
    sampler = response.result.pub_results.add().sampler
    sampler.shots = shots
    sampler.registers.add(name="c", num_bits=1, samples=b"\x01" * shots)

    class Jobs(job_service_pb2_grpc.JobServiceServicer):
        def GetJobResult(self, request: Any, context: Any) -> Any:
            return response

    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=2),
        options=[("grpc.max_send_message_length", 16 << 20)],
    )
    job_service_pb2_grpc.add_JobServiceServicer_to_server(Jobs(), server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with Client(f"127.0.0.1:{port}") as client:
            result = client.get_result("jobs/big", timeout=30)
        assert result.sampler(0).counts() == {"1": shots}
        # A limit the caller sets is kept.
        small = Client(f"127.0.0.1:{port}", options=[("grpc.max_receive_message_length", 1 << 20)])
        with small, pytest.raises(QGatewayError) as info:
            small.get_result("jobs/big", timeout=30)
        assert info.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        server.stop(None)


def test_a_closed_async_client_is_not_reopened() -> None:
    # It used to open a new channel on the next call, which nothing ever closed.
    async def main() -> None:
        client = AsyncClient("127.0.0.1:1")
        _ = client.channel
        await client.close()
        with pytest.raises(RuntimeError, match="closed"):
            _ = client.channel
        with pytest.raises(RuntimeError, match="closed"):
            await client.get_job("j1")

    asyncio.run(main())


def test_a_refused_certificate_is_not_retried_as_an_outage() -> None:
    # A wrong --ca was retried ten times over ~20 s before its clear error was shown.
    refused = UnavailableError(
        "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:5: Ssl "
        "handshake failed: SSL_ERROR_SSL: error:1000007d:SSL routines:OPENSSL_internal:"
        "CERTIFICATE_VERIFY_FAILED"
    )
    assert client_module._retry_delay(DEFAULT_RETRY, refused, 1, None) is None
    outage = UnavailableError("failed to connect to all addresses; connection refused")
    assert client_module._retry_delay(DEFAULT_RETRY, outage, 1, None) is not None
