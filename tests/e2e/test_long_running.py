"""Long-running behaviour (issue 7, defect 8) and sessions declared (issue 7, point 9) over real
gRPC: CancelJob answers at once with CANCELLING and the worker is stopped in the background;
WatchJob heartbeats with queue positions; Run's wait is capped by the server; every job keeps
its state history; a session that does not exist is NOT_FOUND for SessionService and for a job
naming it (sessions themselves: tests/e2e/test_sessions.py).

Slow jobs come from injected faults (`faults = {...}`; `hang`: runs until its worker is killed;
`latency_s`: a slow device), never from sleeps in the test. One gateway for the module, with a
short heartbeat interval and Run wait limit.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from datetime import timedelta

import grpc
import psutil
import pytest
from qgateway import AsyncClient, Client, DeadlineExceededError, sampler_pub
from qgateway.results import JobState
from qgateway.v1 import (
    job_pb2,
    job_service_pb2,
    job_service_pb2_grpc,
    session_pb2,
    session_service_pb2,
    session_service_pb2_grpc,
)

from gateway.api.errors import ERROR_DOMAIN
from tests.gateway_process import GatewayProcess, children_of, write_config
from tests.rpc import ghz, sampler_spec, status_of

HEARTBEAT_S = 0.5
RUN_MAX_WAIT_S = 2.0
RETENTION_DAYS = 2
HANG = "lr-hang"  # every job runs until its worker is killed
SLOW = "lr-slow"  # every job takes 3 s, then succeeds

SERVER = f"""run_max_wait_s = {RUN_MAX_WAIT_S}
watch_heartbeat_s = {HEARTBEAT_S}
result_retention_days = {RETENTION_DAYS}
"""
BACKENDS = f"""
[backends.aer]
adapter = "aer"
pool = {{ min_instances = 1, max_instances = 1 }}

[backends.{HANG}]
adapter = "aer"
pool = {{ min_instances = 1, max_instances = 1, max_creations_per_s = 10 }}
health_interval_s = 3600
probe_timeout_s = 1
faults = {{ hang = true }}

[backends.{SLOW}]
adapter = "aer"
pool = {{ min_instances = 1, max_instances = 1 }}
health_interval_s = 3600
faults = {{ latency_s = 3.0 }}
"""

Q = job_pb2.JobState
FINAL = {Q.JOB_STATE_SUCCEEDED, Q.JOB_STATE_FAILED, Q.JOB_STATE_CANCELLED}


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    root = tmp_path_factory.mktemp("long-running")
    # The [server] keys go first: write_config's text ends inside the [server] table.
    config = write_config(root / "g.toml", root / "data", SERVER + BACKENDS)
    process = GatewayProcess.start(config, root / "gateway.log")
    yield process
    assert process.terminate() == 0, process.log_path.read_text()[-3000:]


@pytest.fixture(scope="module")
def channel(gw: GatewayProcess) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(gw.address) as ch:
        yield ch


@pytest.fixture(scope="module")
def jobs(channel: grpc.Channel) -> job_service_pb2_grpc.JobServiceStub:
    return job_service_pb2_grpc.JobServiceStub(channel)  # type: ignore[no-untyped-call]


def _submit(jobs: job_service_pb2_grpc.JobServiceStub, backend: str) -> job_pb2.Job:
    spec = sampler_spec(ghz(3), backend=backend, shots=16, seed=3)
    response = jobs.SubmitJob(job_service_pb2.SubmitJobRequest(spec=spec), timeout=30)
    return response.job


def _watch(
    jobs: job_service_pb2_grpc.JobServiceStub, name: str, timeout: float = 30
) -> Iterator[job_service_pb2.WatchJobResponse]:
    return iter(jobs.WatchJob(job_service_pb2.WatchJobRequest(name=name), timeout=timeout))


def _until(
    events: Iterator[job_service_pb2.WatchJobResponse], state: int
) -> job_service_pb2.WatchJobResponse:
    for event in events:
        if event.job.state == state:
            return event
    raise AssertionError(f"the watch ended before {Q.Name(state)}")


def _final(jobs: job_service_pb2_grpc.JobServiceStub, name: str) -> job_pb2.Job:
    last = None
    for event in _watch(jobs, name):
        last = event.job
    assert last is not None and last.state in FINAL, last
    return last


def _running(jobs: job_service_pb2_grpc.JobServiceStub, backend: str) -> job_pb2.Job:
    job = _submit(jobs, backend)
    return _until(_watch(jobs, job.name), Q.JOB_STATE_RUNNING).job


def _cancel(jobs: job_service_pb2_grpc.JobServiceStub, name: str) -> job_pb2.Job:
    return jobs.CancelJob(job_service_pb2.CancelJobRequest(name=name), timeout=5).job


def _workers(gw: GatewayProcess, backend: str) -> list[psutil.Process]:
    out = []
    for p in children_of(gw.pid):
        try:
            if p.cmdline()[-1:] == [backend]:
                out.append(p)
        except psutil.NoSuchProcess:
            continue
    return out


def _states(job: job_pb2.Job) -> list[str]:
    return [Q.Name(t.state).removeprefix("JOB_STATE_") for t in job.state_history]


def _times_in_order(job: job_pb2.Job) -> None:
    times = [t.time.ToNanoseconds() for t in job.state_history]
    assert times == sorted(times)
    assert job.state_history[0].time == job.create_time
    assert job.update_time == job.state_history[-1].time


# -- CancelJob ---------------------------------------------------------------------------------


def test_cancel_of_a_running_job_answers_cancelling_then_stops_its_worker(
    jobs: job_service_pb2_grpc.JobServiceStub, gw: GatewayProcess
) -> None:
    job = _running(jobs, HANG)
    workers = _workers(gw, HANG)
    assert workers, "the worker running the job"
    # Deadline 5 s: the old CancelJob blocked until the worker was dead and answered CANCELLED.
    cancelled = _cancel(jobs, job.name)
    assert cancelled.state == Q.JOB_STATE_CANCELLING
    assert not cancelled.HasField("end_time")
    assert _states(cancelled) == ["QUEUED", "RUNNING", "CANCELLING"]
    final = _final(jobs, job.name)
    assert final.state == Q.JOB_STATE_CANCELLED
    assert _states(final) == ["QUEUED", "RUNNING", "CANCELLING", "CANCELLED"]
    assert final.end_time == final.state_history[-1].time
    _times_in_order(final)
    # Cancellation reached the backend: the process that ran the job is gone.
    gone, alive = psutil.wait_procs(workers, timeout=10)
    assert not alive and len(gone) == len(workers)


def test_cancel_of_a_queued_job_is_cancelled_at_once(
    jobs: job_service_pb2_grpc.JobServiceStub,
) -> None:
    blocker = _running(jobs, HANG)
    queued = _submit(jobs, HANG)
    got = jobs.GetJob(job_service_pb2.GetJobRequest(name=queued.name), timeout=10).job
    assert got.state == Q.JOB_STATE_QUEUED and got.queue_position == 0
    cancelled = _cancel(jobs, queued.name)
    assert cancelled.state == Q.JOB_STATE_CANCELLED
    assert not cancelled.HasField("start_time")  # it never ran
    assert not cancelled.HasField("queue_position")  # only QUEUED jobs have one
    assert _states(cancelled) == ["QUEUED", "CANCELLED"]
    assert _cancel(jobs, blocker.name).state == Q.JOB_STATE_CANCELLING
    assert _final(jobs, blocker.name).state == Q.JOB_STATE_CANCELLED


def test_cancel_twice_is_a_no_op_and_finished_jobs_refuse(
    jobs: job_service_pb2_grpc.JobServiceStub,
) -> None:
    job = _running(jobs, HANG)
    assert _cancel(jobs, job.name).state == Q.JOB_STATE_CANCELLING
    # Still CANCELLING or already CANCELLED: no error either way, and no second transition.
    again = _cancel(jobs, job.name)
    assert again.state in (Q.JOB_STATE_CANCELLING, Q.JOB_STATE_CANCELLED)
    assert _final(jobs, job.name).state == Q.JOB_STATE_CANCELLED
    after = _cancel(jobs, job.name)
    assert after.state == Q.JOB_STATE_CANCELLED
    assert _states(after) == ["QUEUED", "RUNNING", "CANCELLING", "CANCELLED"]
    # A succeeded job stays FAILED_PRECONDITION.
    done = _final(jobs, _submit(jobs, "aer").name)
    assert done.state == Q.JOB_STATE_SUCCEEDED
    with pytest.raises(grpc.RpcError) as exc:
        _cancel(jobs, done.name)
    info = status_of(exc.value)
    assert info.code == grpc.StatusCode.FAILED_PRECONDITION
    assert info.reason == "JOB_ALREADY_FINISHED"
    assert info.metadata["job"] == done.name
    assert info.metadata["state"] == "SUCCEEDED"


# -- WatchJob: heartbeats and queue positions ---------------------------------------------------


def test_watch_heartbeats_with_queue_positions(
    jobs: job_service_pb2_grpc.JobServiceStub,
) -> None:
    first = _running(jobs, HANG)
    second = _submit(jobs, HANG)
    third = _submit(jobs, HANG)
    events = _watch(jobs, third.name)
    initial = next(events)
    assert not initial.heartbeat
    assert initial.job.state == Q.JOB_STATE_QUEUED and initial.job.queue_position == 1
    # Nothing changes: heartbeats, one per interval, the job again with its position.
    last = time.monotonic()
    for _ in range(3):
        beat = next(events)
        now = time.monotonic()
        assert beat.heartbeat
        assert beat.job.state == Q.JOB_STATE_QUEUED and beat.job.queue_position == 1
        assert beat.job.update_time == initial.job.update_time
        assert now - last >= HEARTBEAT_S * 0.9  # not before the interval has passed
        last = now
    # The job ahead of `second` finishes: `second` runs, `third` is next.
    assert _cancel(jobs, first.name).state == Q.JOB_STATE_CANCELLING
    assert _until(_watch(jobs, second.name), Q.JOB_STATE_RUNNING)
    while (beat := next(events)).job.queue_position != 0:
        assert beat.heartbeat and beat.job.queue_position == 1
    assert beat.heartbeat and beat.job.state == Q.JOB_STATE_QUEUED
    # And then it runs: a change, not a heartbeat, with no queue position.
    _cancel(jobs, second.name)
    running = next(e for e in events if not e.heartbeat)
    assert running.job.state == Q.JOB_STATE_RUNNING
    assert not running.job.HasField("queue_position")
    _cancel(jobs, third.name)
    rest = list(events)
    assert rest[-1].job.state == Q.JOB_STATE_CANCELLED  # the stream ends after a final state
    assert all(not e.job.HasField("queue_position") for e in rest)


def test_submit_and_get_job_report_the_queue_position(
    jobs: job_service_pb2_grpc.JobServiceStub,
) -> None:
    blocker = _running(jobs, HANG)
    queued = [_submit(jobs, HANG) for _ in range(3)]
    assert [j.queue_position for j in queued] == [0, 1, 2]  # SubmitJob's answer says it too
    positions = [
        jobs.GetJob(job_service_pb2.GetJobRequest(name=j.name), timeout=10).job.queue_position
        for j in queued
    ]
    assert positions == [0, 1, 2]
    running = jobs.GetJob(job_service_pb2.GetJobRequest(name=blocker.name), timeout=10).job
    assert not running.HasField("queue_position")
    for job in [*queued, blocker]:
        _cancel(jobs, job.name)
    assert _final(jobs, blocker.name).state == Q.JOB_STATE_CANCELLED


# -- Run: the server's wait limit ----------------------------------------------------------------


def test_run_without_deadline_answers_at_the_server_limit(
    jobs: job_service_pb2_grpc.JobServiceStub,
) -> None:
    spec = sampler_spec(ghz(3), backend=HANG, shots=16, seed=5)
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as exc:
        jobs.Run(job_service_pb2.RunRequest(request_id="lr-run-cap", spec=spec))  # no deadline
    waited = time.monotonic() - started
    info = status_of(exc.value)
    assert info.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert info.reason == "RUN_DEADLINE_EXCEEDED"
    assert info.domain == ERROR_DOMAIN
    assert info.metadata["limitSeconds"] == f"{RUN_MAX_WAIT_S:g}"
    assert info.metadata["created"] == "true"  # a client that follows the job still knows
    name = info.metadata["job"]
    assert name.startswith("jobs/")
    assert waited >= RUN_MAX_WAIT_S * 0.95  # it did wait, up to the limit
    # The job keeps running; Run again with the same request_id finds the same job.
    assert _until(_watch(jobs, name), Q.JOB_STATE_RUNNING).job.name == name
    with pytest.raises(grpc.RpcError) as again:
        jobs.Run(job_service_pb2.RunRequest(request_id="lr-run-cap", spec=spec), timeout=30)
    assert status_of(again.value).metadata["job"] == name
    assert status_of(again.value).metadata["created"] == "false"
    job = jobs.GetJob(job_service_pb2.GetJobRequest(name=name), timeout=10).job
    assert job.state == Q.JOB_STATE_RUNNING
    _cancel(jobs, name)
    assert _final(jobs, name).state == Q.JOB_STATE_CANCELLED


def test_run_with_a_shorter_deadline_answers_before_it(
    jobs: job_service_pb2_grpc.JobServiceStub,
) -> None:
    spec = sampler_spec(ghz(3), backend=HANG, shots=16, seed=6)
    with pytest.raises(grpc.RpcError) as exc:
        jobs.Run(job_service_pb2.RunRequest(spec=spec), timeout=1.0)
    info = status_of(exc.value)
    assert info.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert info.reason == "RUN_DEADLINE_EXCEEDED"  # the gateway's answer, not a bare timeout
    # The limit named is the caller's deadline, not the server's cap it never reached (gRPC
    # rounds the deadline it sends up, by a few ms).
    assert 0.5 < float(info.metadata["limitSeconds"]) <= 1.1 < RUN_MAX_WAIT_S
    _cancel(jobs, info.metadata["job"])
    assert _final(jobs, info.metadata["job"]).state == Q.JOB_STATE_CANCELLED


# -- Timestamps ----------------------------------------------------------------------------------


def test_state_history_of_a_succeeded_job(jobs: job_service_pb2_grpc.JobServiceStub) -> None:
    job = _final(jobs, _submit(jobs, "aer").name)
    assert job.state == Q.JOB_STATE_SUCCEEDED
    assert _states(job) == ["QUEUED", "RUNNING", "SUCCEEDED"]
    _times_in_order(job)
    assert job.state_history[1].time == job.start_time
    assert job.state_history[2].time == job.end_time
    retention = job.expire_time.ToDatetime() - job.end_time.ToDatetime()
    assert retention == timedelta(days=RETENTION_DAYS)
    # Only SUCCEEDED jobs have a result to expire.
    blocker = _running(jobs, HANG)
    assert not blocker.HasField("expire_time") and not blocker.HasField("end_time")
    _cancel(jobs, blocker.name)
    assert not _final(jobs, blocker.name).HasField("expire_time")


# -- Sessions ------------------------------------------------------------------------------------


def _not_found(call: object, request: object, reason: str = "SESSION_NOT_FOUND") -> None:
    with pytest.raises(grpc.RpcError) as exc:
        call(request, timeout=10)  # type: ignore[operator]
    info = status_of(exc.value)
    assert info.code == grpc.StatusCode.NOT_FOUND
    assert info.reason == reason
    assert info.domain == ERROR_DOMAIN


def test_session_service_answers_not_found_for_a_session_that_does_not_exist(
    channel: grpc.Channel,
) -> None:
    sessions = session_service_pb2_grpc.SessionServiceStub(channel)  # type: ignore[no-untyped-call]
    session = session_pb2.Session(backend="backends/no-such-backend")
    _not_found(
        sessions.CreateSession,
        session_service_pb2.CreateSessionRequest(session=session),
        "BACKEND_NOT_FOUND",
    )
    _not_found(sessions.GetSession, session_service_pb2.GetSessionRequest(name="sessions/s1"))
    _not_found(sessions.CloseSession, session_service_pb2.CloseSessionRequest(name="sessions/s1"))
    _not_found(sessions.CancelSession, session_service_pb2.CancelSessionRequest(name="sessions/s1"))
    assert not sessions.ListSessions(session_service_pb2.ListSessionsRequest(), timeout=10).sessions


def test_a_job_naming_a_session_that_does_not_exist_is_not_found(
    jobs: job_service_pb2_grpc.JobServiceStub,
) -> None:
    spec = sampler_spec(ghz(2), backend="aer")
    spec.session = "sessions/s1"
    _not_found(jobs.SubmitJob, job_service_pb2.SubmitJobRequest(spec=spec))
    _not_found(jobs.Run, job_service_pb2.RunRequest(spec=spec))


# -- The Python client ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def client(gw: GatewayProcess) -> Iterator[Client]:
    with Client(gw.address) as c:
        yield c


def test_client_cancel_returns_the_cancelling_job(client: Client) -> None:
    job = client.submit(ghz(3), backend=HANG, shots=16, seed=8)
    for event in client.watch(job.name, timeout=30):
        if event.state is JobState.RUNNING:
            break
    cancelling = client.cancel(job.name, timeout=5)
    assert cancelling.state is JobState.CANCELLING and not cancelling.done
    assert [t.state for t in cancelling.state_history] == [
        JobState.QUEUED,
        JobState.RUNNING,
        JobState.CANCELLING,
    ]
    final = client.wait(job.name, timeout=30)
    assert final.state is JobState.CANCELLED
    assert final.update_time == final.end_time == final.state_history[-1].time


def test_client_watch_surfaces_heartbeats_and_queue_positions(client: Client) -> None:
    blocker = client.submit(ghz(3), backend=HANG, shots=16, seed=9)
    for event in client.watch(blocker.name, timeout=30):
        if event.state is JobState.RUNNING:
            break
    queued = client.submit(ghz(3), backend=HANG, shots=16, seed=10)
    assert client.get_job(queued.name, view_basic=True).queue_position == 0
    with contextlib.closing(client.watch(queued.name, timeout=30, heartbeats=True)) as events:
        first = next(events)
        assert not first.heartbeat and first.queue_position == 0
        for _ in range(2):
            beat = next(events)
            assert beat.heartbeat and beat.state is JobState.QUEUED and beat.queue_position == 0
    client.cancel(blocker.name)
    # By default heartbeats with nothing new are not yielded (the worker's replacement takes
    # seconds, several heartbeat intervals): the next job seen is the change to RUNNING.
    with contextlib.closing(client.watch(queued.name, timeout=30)) as events:
        current = next(events)
        if current.state is JobState.QUEUED:
            current = next(events)
        assert current.state is JobState.RUNNING and not current.heartbeat
        assert current.queue_position is None
    client.cancel(queued.name)
    assert client.wait(queued.name, timeout=30).state is JobState.CANCELLED


def test_client_run_follows_a_job_past_the_server_wait_limit(client: Client) -> None:
    # The slow backend takes 3 s, the server's Run wait limit is 2 s: Run answers
    # DEADLINE_EXCEEDED with the job's name and the client keeps waiting on it.
    started = time.monotonic()
    result = client.run(ghz(3), backend=SLOW, shots=64, seed=12)  # no timeout at all
    assert time.monotonic() - started >= RUN_MAX_WAIT_S
    assert set(result.counts()) <= {"000", "111"} and sum(result.counts().values()) == 64
    # With a timeout that allows it, too; with a shorter one the caller's deadline stands.
    result = client.run(ghz(3), backend=SLOW, shots=64, seed=13, timeout=60)
    assert sum(result.counts().values()) == 64
    with pytest.raises(DeadlineExceededError) as exc:
        client.run(ghz(3), backend=SLOW, shots=64, seed=14, request_id="lr-short", timeout=1.0)
    assert exc.value.job is not None and exc.value.request_id == "lr-short"
    assert client.wait(exc.value.job, timeout=60).state is JobState.SUCCEEDED


@pytest.mark.anyio
async def test_async_client_run_follows_a_job_past_the_server_wait_limit(
    gw: GatewayProcess,
) -> None:
    async with AsyncClient(gw.address) as aclient:
        job = await aclient.run_pubs(
            [sampler_pub(ghz(3), shots=32)], backend=SLOW, seed=15, timeout=60
        )
    assert job.state is JobState.SUCCEEDED and job.result is not None
    assert [t.state for t in job.state_history] == [
        JobState.QUEUED,
        JobState.RUNNING,
        JobState.SUCCEEDED,
    ]
