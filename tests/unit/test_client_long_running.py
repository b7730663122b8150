"""Client and CLI side of issue 7's long-running behaviour: the new Job fields, the CANCELLING
state, heartbeats in watch(), and the queue position where the CLI shows a state."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import grpc  # type: ignore[import-untyped, unused-ignore]
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from qgateway import AsyncClient, Client, DeadlineExceededError, NotFoundError
from qgateway import client as client_module
from qgateway.results import Job, JobState, StateTransition
from qgateway.v1 import job_pb2, job_service_pb2

from gateway import cli
from tests.unit.test_client_errors import (
    CutStream,
    FakeRpcError,
    FakeUnary,
    error_info,
    status_trailers,
)

T0 = datetime(2026, 12, 1, 10, 0, 0, tzinfo=UTC)


def _ts(seconds: int) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(T0.replace(second=seconds))
    return ts


def test_job_fields_from_proto() -> None:
    msg = job_pb2.Job(
        name="jobs/j1",
        state=job_pb2.JOB_STATE_CANCELLING,
        update_time=_ts(3),
        state_history=[
            job_pb2.StateTransition(state=job_pb2.JOB_STATE_QUEUED, time=_ts(1)),
            job_pb2.StateTransition(state=job_pb2.JOB_STATE_RUNNING, time=_ts(2)),
            job_pb2.StateTransition(state=job_pb2.JOB_STATE_CANCELLING, time=_ts(3)),
        ],
    )
    job = Job.from_proto(msg)
    assert job.state is JobState.CANCELLING and not job.done
    assert job.update_time == T0.replace(second=3)
    assert job.state_history == (
        StateTransition(JobState.QUEUED, T0.replace(second=1)),
        StateTransition(JobState.RUNNING, T0.replace(second=2)),
        StateTransition(JobState.CANCELLING, T0.replace(second=3)),
    )
    assert job.queue_position is None and job.expire_time is None
    queued = Job.from_proto(job_pb2.Job(name="jobs/j2", state=job_pb2.JOB_STATE_QUEUED))
    assert queued.queue_position is None  # unset is not 0
    queued = Job.from_proto(
        job_pb2.Job(name="jobs/j2", state=job_pb2.JOB_STATE_QUEUED, queue_position=0)
    )
    assert queued.queue_position == 0


def test_cli_shows_the_queue_position_with_the_state() -> None:
    when = T0
    assert cli.state_text(Job("jobs/a", JobState.QUEUED, queue_position=0)) == "QUEUED (next)"
    assert cli.state_text(Job("jobs/a", JobState.QUEUED, queue_position=3)) == "QUEUED (3 ahead)"
    assert cli.state_text(Job("jobs/a", JobState.QUEUED)) == "QUEUED"
    assert cli.state_text(Job("jobs/a", JobState.CANCELLING)) == "CANCELLING"
    queued = Job("jobs/a", JobState.QUEUED, queue_position=2)
    assert cli.format_event(queued, when) == "2026-12-01 10:00:00Z jobs/a QUEUED (2 ahead)"
    assert _fields(cli.format_job(queued))["state"] == "QUEUED (2 ahead)"
    done = Job(
        "jobs/b",
        JobState.SUCCEEDED,
        state_history=(
            StateTransition(JobState.QUEUED, T0),
            StateTransition(JobState.SUCCEEDED, T0.replace(second=5)),
        ),
        expire_time=T0.replace(day=31),
    )
    fields = _fields(cli.format_job(done))
    assert fields["history"] == "QUEUED 2026-12-01 10:00:00Z, SUCCEEDED 2026-12-01 10:00:05Z"
    assert fields["result expires"] == "2026-12-31 10:00:00Z"


def _fields(text: str) -> dict[str, str]:
    return {k: v.strip() for k, v in (line.split(":", 1) for line in text.splitlines())}


class _Stream:
    """A WatchJob call: yields the responses, then ends."""

    def __init__(self, responses: list[job_service_pb2.WatchJobResponse]) -> None:
        self._responses = responses

    def __iter__(self) -> Any:
        return iter(self._responses)

    def cancel(self) -> None:
        pass


def _watching(responses: list[job_service_pb2.WatchJobResponse]) -> Client:
    client = Client("127.0.0.1:1")
    client._jobs_stub = type("Jobs", (), {"WatchJob": lambda self, *a, **k: _Stream(responses)})()
    return client


def _event(state: int, position: int | None, heartbeat: bool) -> job_service_pb2.WatchJobResponse:
    job = job_pb2.Job(name="jobs/w", state=state)
    if position is not None:
        job.queue_position = position
    return job_service_pb2.WatchJobResponse(job=job, heartbeat=heartbeat)


WATCHED = [
    _event(job_pb2.JOB_STATE_QUEUED, 1, False),
    _event(job_pb2.JOB_STATE_QUEUED, 1, True),  # nothing new
    _event(job_pb2.JOB_STATE_QUEUED, 0, True),  # moved up
    _event(job_pb2.JOB_STATE_QUEUED, 0, True),
    _event(job_pb2.JOB_STATE_RUNNING, None, False),
    _event(job_pb2.JOB_STATE_SUCCEEDED, None, False),
]


def test_watch_skips_heartbeats_with_nothing_new_by_default() -> None:
    with _watching(WATCHED) as client:
        seen = [(j.state, j.queue_position, j.heartbeat) for j in client.watch("w")]
    assert seen == [
        (JobState.QUEUED, 1, False),
        (JobState.QUEUED, 0, True),  # a heartbeat whose position moved is news
        (JobState.RUNNING, None, False),
        (JobState.SUCCEEDED, None, False),
    ]


def test_watch_yields_every_heartbeat_when_asked() -> None:
    with _watching(WATCHED) as client:
        seen = [(j.queue_position, j.heartbeat) for j in client.watch("w", heartbeats=True)]
    assert seen == [(1, False), (1, True), (0, True), (0, True), (None, False), (None, False)]


def _capped(job: str | None, reason: str = "RUN_DEADLINE_EXCEEDED") -> DeadlineExceededError:
    metadata = {} if job is None else {"job": job}
    return DeadlineExceededError("capped", reason=reason, metadata=metadata)


def test_a_run_capped_by_the_server_is_followed_while_the_caller_has_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [100.0]
    monkeypatch.setattr(client_module.time, "monotonic", lambda: now[0])
    capped = client_module._capped_run
    assert capped(_capped("jobs/j"), None) == "jobs/j"  # no timeout: keep following
    assert capped(_capped("jobs/j"), 130.0) == "jobs/j"  # 30 s of the caller's time left
    # The answer came at the caller's own deadline (Run answers just before it): it stands.
    assert capped(_capped("jobs/j"), 100.05) is None
    assert capped(_capped(None), None) is None  # no job to follow
    assert capped(_capped("jobs/j", reason="OTHER"), None) is None


def test_a_followed_run_keeps_whether_it_created_the_job() -> None:
    job = Job.from_proto(job_pb2.Job(name="jobs/j", state=job_pb2.JOB_STATE_SUCCEEDED))
    assert job.created is None  # what wait() knows
    first = DeadlineExceededError(
        "capped", reason="RUN_DEADLINE_EXCEEDED", metadata={"job": "jobs/j", "created": "true"}
    )
    repeat = DeadlineExceededError(
        "capped", reason="RUN_DEADLINE_EXCEEDED", metadata={"job": "jobs/j", "created": "false"}
    )
    assert client_module._created_as(first, job, "mine").created is True
    assert client_module._created_as(repeat, job, "mine").created is False
    # A request_id the client drew was no other call's: its own earlier attempt created it.
    assert client_module._created_as(repeat, job, None).created is True
    assert client_module._created_as(_capped("jobs/j"), job, None).created is None  # older


def test_a_watch_cut_again_and_again_after_delivering_goes_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A mesh that ends every stream after a while: each resumed stream repeats the current
    state and a heartbeat (nothing new), and the watch must not count those as failures."""
    running = [
        _event(job_pb2.JOB_STATE_RUNNING, None, False),
        _event(job_pb2.JOB_STATE_RUNNING, None, True),
    ]
    streams: list[Any] = [CutStream(running) for _ in range(12)]
    streams.append(_Stream([_event(job_pb2.JOB_STATE_SUCCEEDED, None, False)]))
    monkeypatch.setattr(client_module, "_sleep", lambda seconds: None)
    with Client("127.0.0.1:1") as client:
        client._jobs_stub = type("Jobs", (), {"WatchJob": lambda self, *a, **k: streams.pop(0)})()
        seen = [j.state for j in client.watch("w")]
    assert seen == [JobState.RUNNING, JobState.SUCCEEDED]
    assert streams == []


@pytest.mark.parametrize(
    ("final", "code"),
    [
        (job_pb2.JOB_STATE_SUCCEEDED, 0),
        (job_pb2.JOB_STATE_CANCELLED, cli.JOB_NOT_SUCCEEDED),
        (job_pb2.JOB_STATE_FAILED, cli.JOB_NOT_SUCCEEDED),
    ],
)
def test_jobs_watch_exits_with_the_jobs_outcome(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], final: int, code: int
) -> None:
    # As `run`: a script that waits on `jobs watch` learns from the exit code how the job ended.
    events = [_event(job_pb2.JOB_STATE_RUNNING, None, False), _event(final, None, False)]
    monkeypatch.setattr(cli, "_client", lambda args: _watching(events))
    assert cli.main(["jobs", "watch", "jobs/w"]) == code
    assert len(capsys.readouterr().out.splitlines()) == 2


# --- A SUCCEEDED job whose result expired -----------------------------------------------------


def _not_found(reason: str) -> FakeRpcError:
    message = f"the result of job jobs/old: {reason}"
    trailers = status_trailers(
        grpc.StatusCode.NOT_FOUND, message, error_info(reason, job="jobs/old")
    )
    return FakeRpcError(grpc.StatusCode.NOT_FOUND, message, trailers)


def _old_job() -> job_pb2.Job:
    return job_pb2.Job(name="jobs/old", state=job_pb2.JOB_STATE_SUCCEEDED, expire_time=_ts(9))


def _expired_client() -> Client:
    """A gateway that still has jobs/old but no longer its result."""
    client = Client("127.0.0.1:1")
    client._jobs_stub = SimpleNamespace(
        GetJob=FakeUnary([job_service_pb2.GetJobResponse(job=_old_job())]),
        GetJobResult=FakeUnary([_not_found("RESULT_EXPIRED")]),
        WatchJob=lambda *a, **k: _Stream([job_service_pb2.WatchJobResponse(job=_old_job())]),
    )
    return client


def _is_expired_old_job(job: Job) -> bool:
    return (
        job.name == "jobs/old"
        and job.state is JobState.SUCCEEDED
        and job.result is None
        and job.result_expired
        and job.expire_time == T0.replace(second=9)
    )


def test_get_job_and_wait_return_a_job_whose_result_expired() -> None:
    """They raised NotFoundError RESULT_EXPIRED for a job that exists."""
    with _expired_client() as client:
        assert _is_expired_old_job(client.get_job("old"))
    with _expired_client() as client:
        assert _is_expired_old_job(client.wait("old"))
    # Other answers about the result are still raised.
    with Client("127.0.0.1:1") as client:
        client._jobs_stub = SimpleNamespace(
            GetJob=FakeUnary([job_service_pb2.GetJobResponse(job=_old_job())]),
            GetJobResult=FakeUnary([_not_found("RESULT_NOT_FOUND")]),
        )
        with pytest.raises(NotFoundError, match="RESULT_NOT_FOUND"):
            client.get_job("old")


def test_the_async_get_job_returns_a_job_whose_result_expired() -> None:
    async def answer(outcome: Any) -> Any:
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    async def get() -> Job:
        async with AsyncClient("127.0.0.1:1") as client:
            _ = client.channel  # opened inside the loop, then its stub replaced
            client._jobs_stub = SimpleNamespace(
                GetJob=lambda *a, **k: answer(job_service_pb2.GetJobResponse(job=_old_job())),
                GetJobResult=lambda *a, **k: answer(_not_found("RESULT_EXPIRED")),
            )
            return await client.get_job("old")

    assert _is_expired_old_job(asyncio.run(get()))


def test_run_says_the_result_expired() -> None:
    # Run answered without the result (too large) and it expired before the stream began.
    with Client("127.0.0.1:1") as client:
        client._jobs_stub = SimpleNamespace(
            Run=FakeUnary([job_service_pb2.RunResponse(job=_old_job(), result_too_large=True)]),
            StreamJobResult=lambda *a, **k: CutStream([], _not_found("RESULT_EXPIRED")),
        )
        assert _is_expired_old_job(client.run_pubs([client_module.sampler_pub("qubit q;")]))
        client._jobs.Run.outcomes.append(
            job_service_pb2.RunResponse(job=_old_job(), result_too_large=True)
        )
        with pytest.raises(NotFoundError, match="result of job jobs/old expired") as expired:
            client.run("qubit q;")
        # A typed error, as GetJobResult answers it (a RuntimeError escaped error handling).
        assert expired.value.reason == "RESULT_EXPIRED"
        assert expired.value.metadata["job"] == "jobs/old"


def test_jobs_get_result_shows_the_job_and_says_its_result_expired(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(cli, "_client", lambda args: _expired_client())
    assert cli.main(["jobs", "get", "old", "--result"]) == 0
    fields = _fields(capsys.readouterr().out)
    assert fields["name"] == "jobs/old" and fields["state"] == "SUCCEEDED"
    assert fields["result"] == "expired at 2026-12-01 10:00:09Z, no longer kept"
    assert "result expires" not in fields


class _AsyncStream:
    """An AsyncClient's WatchJob call: yields the responses, then ends with OK."""

    def __init__(self, responses: list[job_service_pb2.WatchJobResponse]) -> None:
        self._responses = list(responses)

    def __aiter__(self) -> Any:
        return self

    async def __anext__(self) -> job_service_pb2.WatchJobResponse:
        if not self._responses:
            raise StopAsyncIteration
        return self._responses.pop(0)

    def cancel(self) -> None:
        pass


RUNNING_ONLY = [_event(job_pb2.JOB_STATE_RUNNING, None, False)]
SUCCEEDED_ONLY = [_event(job_pb2.JOB_STATE_SUCCEEDED, None, False)]


def test_a_watch_that_ends_with_ok_before_a_final_state_is_resumed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A proxy that closes streams cleanly: wait() raised RuntimeError, watch() just stopped.
    sleeps: list[float] = []
    monkeypatch.setattr(client_module, "_sleep", sleeps.append)
    streams: list[Any] = [_Stream(RUNNING_ONLY), _Stream(RUNNING_ONLY), _Stream(SUCCEEDED_ONLY)]
    with Client("127.0.0.1:1") as client:
        client._jobs_stub = type("Jobs", (), {"WatchJob": lambda self, *a, **k: streams.pop(0)})()
        seen = [j.state for j in client.watch("w")]
    assert seen == [JobState.RUNNING, JobState.SUCCEEDED]
    assert streams == [] and len(sleeps) == 2


def test_a_watch_that_keeps_ending_without_news_gives_up_with_unavailable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(client_module, "_sleep", lambda seconds: None)
    with _watching([]) as client, pytest.raises(client_module.UnavailableError) as info:
        client.wait("w")
    assert "ended before the job's final state" in info.value.message


def test_the_async_watch_that_ends_with_ok_before_a_final_state_is_resumed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def no_sleep(seconds: float) -> None:
        pass

    monkeypatch.setattr(client_module, "_async_sleep", no_sleep)
    streams: list[Any] = [_AsyncStream(RUNNING_ONLY), _AsyncStream(SUCCEEDED_ONLY)]

    async def scenario() -> list[JobState]:
        async with AsyncClient("127.0.0.1:1") as client:
            _ = client.channel
            client._jobs_stub = SimpleNamespace(WatchJob=lambda *a, **k: streams.pop(0))
            return [j.state async for j in client.watch("w")]

    assert asyncio.run(scenario()) == [JobState.RUNNING, JobState.SUCCEEDED]
    assert streams == []


def test_streams_that_end_with_ok_without_news_use_up_the_retries(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Every message reset the count, so streams that each repeated RUNNING and ended with OK
    # were resumed forever (with no timeout, the watch never ended).
    monkeypatch.setattr(client_module, "_sleep", lambda seconds: None)
    streams = 0

    def watch(*args: Any, **kwargs: Any) -> _Stream:
        nonlocal streams
        streams += 1
        return _Stream(RUNNING_ONLY)

    seen: list[JobState] = []
    with Client("127.0.0.1:1") as client, pytest.raises(client_module.UnavailableError):
        client._jobs_stub = type("Jobs", (), {"WatchJob": lambda self, *a, **k: watch()})()
        for job in client.watch("w"):
            seen.append(job.state)
    assert seen == [JobState.RUNNING]
    assert streams == client.retry.max_attempts


def test_a_state_this_client_does_not_know_ends_the_watch() -> None:
    # A newer gateway's state: not resumed (it may be final there).
    with _watching([_event(99, None, False)]) as client:
        assert [j.state for j in client.watch("w")] == [JobState.UNSPECIFIED]
