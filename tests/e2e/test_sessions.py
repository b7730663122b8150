"""Sessions over real gRPC (issue 10, item 5): SessionService through the Python client, jobs
submitted into sessions, their order, SESSION_CLOSED, TTLs, the per-tenant cap, the ABORT policy,
tenancy, a dedicated session beside another tenant's jobs, and a SIGKILL + restart."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import qgateway
from qgateway import (
    Client,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    ResourceExhaustedError,
)
from qgateway.errors import from_rpc_error
from qgateway.v1 import (
    job_pb2,
    job_service_pb2,
    job_service_pb2_grpc,
    session_pb2,
    session_service_pb2,
    session_service_pb2_grpc,
)

from gateway.backends.fault import injected_failure
from gateway.security.api_keys import NewKey, generate_key
from tests.gateway_process import GatewayProcess, keys_toml
from tests.rpc import ghz, sampler_spec, slow_circuit

ALICE = generate_key("alice")
BOB = generate_key("bob")
CAPPED = generate_key("capped")
CAP = 2
FINAL = {job_pb2.JOB_STATE_SUCCEEDED, job_pb2.JOB_STATE_FAILED, job_pb2.JOB_STATE_CANCELLED}
FLAKY_RATE = 0.5
# Seeds the flaky backend fails (and one it runs), chosen by the fault backend's own rule.
FAILING_SEED = next(s for s in range(1000) if injected_failure(s, FLAKY_RATE))
PASSING_SEED = next(s for s in range(1000) if not injected_failure(s, FLAKY_RATE))


def _config(root: Path, *, workers: int = 2) -> Path:
    text = f"""data_dir = "{root / "data"}"

[server]
listen = "127.0.0.1:0"
grace_period_s = 2
max_sessions_per_tenant = {CAP}
session_max_ttl_s = 600
session_idle_ttl_s = 60

[backends.aer]
adapter = "aer"
pool = {{ min_instances = {workers}, max_instances = {workers} }}
options = {{ method = "statevector" }}

[backends.flaky]
adapter = "aer"
pool = {{ min_instances = 1, max_instances = 1 }}
health_interval_s = 3600
breaker = {{ failure_threshold = 1000 }}
faults = {{ failure_rate = {FLAKY_RATE}, latency_s = 2.0 }}

"""
    path = root / "g.toml"
    path.write_text(text + keys_toml(ALICE, BOB, CAPPED))
    return path


def _md(key: NewKey) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {key.key}")]


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    root = tmp_path_factory.mktemp("sessions")
    process = GatewayProcess.start(_config(root), root / "gateway.log")
    yield process
    assert process.terminate() == 0, process.log_path.read_text()[-3000:]


@pytest.fixture(scope="module")
def clients(gw: GatewayProcess) -> Iterator[dict[str, Client]]:
    made = {
        name: Client(gw.address, metadata=_md(key))
        for name, key in (("alice", ALICE), ("bob", BOB), ("capped", CAPPED))
    }
    yield made
    for client in made.values():
        client.close()


class Jobs:
    """Raw JobService calls of one tenant (the client has no session argument on submit)."""

    def __init__(self, client: Client, key: NewKey) -> None:
        self.stub = job_service_pb2_grpc.JobServiceStub(client.channel)  # type: ignore[no-untyped-call]
        self.md = _md(key)

    def submit(self, spec: job_pb2.JobSpec, session: str = "") -> job_pb2.Job:
        spec.session = session
        try:
            reply = self.stub.SubmitJob(
                job_service_pb2.SubmitJobRequest(spec=spec), timeout=30, metadata=self.md
            )
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from exc
        return reply.job

    def get(self, name: str) -> job_pb2.Job:
        request = job_service_pb2.GetJobRequest(name=name)
        return self.stub.GetJob(request, timeout=10, metadata=self.md).job

    def final(self, name: str, timeout: float = 25) -> job_pb2.Job:
        request = job_service_pb2.WatchJobRequest(name=name)
        for event in self.stub.WatchJob(request, timeout=timeout, metadata=self.md):
            if event.job.state in FINAL:
                return event.job
        raise AssertionError(f"{name} ended without a final state")

    def until(self, name: str, state: int, timeout: float = 25) -> job_pb2.Job:
        request = job_service_pb2.WatchJobRequest(name=name)
        for event in self.stub.WatchJob(request, timeout=timeout, metadata=self.md):
            if event.job.state == state or event.job.state in FINAL:
                return event.job
        raise AssertionError(f"{name} ended without reaching {state}")


@pytest.fixture(scope="module")
def alice(clients: dict[str, Client]) -> Jobs:
    return Jobs(clients["alice"], ALICE)


@pytest.fixture(scope="module")
def bob(clients: dict[str, Client]) -> Jobs:
    return Jobs(clients["bob"], BOB)


def _session_until(
    client: Client, name: str, done: Callable[[qgateway.Session], bool], timeout: float
) -> qgateway.Session:
    """Reads the session until `done` holds; bounded. Sessions have no watch call, and a TTL is
    time passing by design."""
    deadline = time.monotonic() + timeout
    while True:
        session = client.get_session(name, timeout=10)
        if done(session) or time.monotonic() > deadline:
            return session
        time.sleep(0.05)


def _in_order(jobs: list[job_pb2.Job]) -> None:
    """Each job started after the one before it ended: one at a time, in submission order."""
    for before, after in itertools.pairwise(jobs):
        assert before.end_time.ToDatetime() <= after.start_time.ToDatetime(), (before, after)


def test_create_get_list_close_and_cancel(clients: dict[str, Client], alice: Jobs) -> None:
    client = clients["alice"]
    s = client.create_session(
        "aer", mode="BATCH", max_ttl=300, idle_ttl=30, failure_policy="ABORT", labels={"k": "v"}
    )
    assert s.name.startswith("sessions/") and s.tenant == "alice"
    assert (s.backend, s.mode, s.failure_policy) == ("backends/aer", "BATCH", "ABORT")
    assert s.state is qgateway.SessionState.PENDING and s.accepting_jobs
    assert (s.max_ttl, s.idle_ttl, dict(s.labels)) == (300, 30, {"k": "v"})
    assert client.get_session(s.name) == s
    listed = list(client.list_sessions(filter='labels.k = "v" AND state = PENDING', page_size=1))
    assert [x.name for x in listed] == [s.name]
    job = alice.submit(sampler_spec(ghz(3)), s.name)
    assert job.session == s.name
    assert alice.final(job.name).state == job_pb2.JOB_STATE_SUCCEEDED
    # The client's own submit takes the session too (a bare id is completed).
    by_client = client.submit(ghz(3), backend="aer", session=s.name.removeprefix("sessions/"))
    assert client.wait(by_client.name, timeout=25).state is qgateway.JobState.SUCCEEDED
    assert client.get_session(s.name).state is qgateway.SessionState.ACTIVE
    closed = client.close_session(s.name)
    assert closed.state is qgateway.SessionState.CLOSED and not closed.accepting_jobs
    assert closed.end_time is not None
    # The filter machinery of ListJobs: jobs by session.
    jobs = list(client.list_jobs(filter=f'session = "{s.name}"'))
    assert [j.name for j in jobs] == [by_client.name, job.name]

    # CancelSession: running and queued jobs are cancelled, the session ends CLOSED.
    c = client.create_session("aer")
    running = alice.submit(sampler_spec(slow_circuit(), shots=20000), c.name)
    queued = alice.submit(sampler_spec(ghz(3)), c.name)
    assert alice.until(running.name, job_pb2.JOB_STATE_RUNNING).state == job_pb2.JOB_STATE_RUNNING
    cancelled = client.cancel_session(c.name)
    assert cancelled.state is qgateway.SessionState.CLOSED
    assert alice.final(running.name).state == job_pb2.JOB_STATE_CANCELLED
    assert alice.final(queued.name).state == job_pb2.JOB_STATE_CANCELLED


def test_jobs_of_a_session_run_one_at_a_time_in_submission_order(
    clients: dict[str, Client], alice: Jobs
) -> None:
    client = clients["alice"]
    s = client.create_session("aer")
    # Two workers: without the session, these would run two at a time.
    submitted = [
        alice.submit(sampler_spec(slow_circuit(), shots=1500, seed=i), s.name) for i in range(4)
    ]
    finished = [alice.final(j.name) for j in submitted]
    assert all(j.state == job_pb2.JOB_STATE_SUCCEEDED for j in finished)
    _in_order(finished)
    client.close_session(s.name)


def test_a_closed_session_refuses_jobs_with_session_closed_and_resource_info(
    clients: dict[str, Client], alice: Jobs
) -> None:
    client = clients["alice"]
    s = client.create_session("aer")
    first = alice.submit(sampler_spec(slow_circuit(), shots=3000), s.name)
    assert alice.until(first.name, job_pb2.JOB_STATE_RUNNING).state == job_pb2.JOB_STATE_RUNNING
    closing = client.close_session(s.name)
    assert closing.state is qgateway.SessionState.CLOSING and not closing.accepting_jobs
    with pytest.raises(FailedPreconditionError) as refused:
        alice.submit(sampler_spec(ghz(3)), s.name)
    assert refused.value.reason == "SESSION_CLOSED"
    assert refused.value.resource_info is not None
    assert refused.value.resource_info.type == "qgateway.dev/Session"
    assert refused.value.resource_info.name == s.name
    # The job it held still runs; then the session is CLOSED.
    assert alice.final(first.name).state == job_pb2.JOB_STATE_SUCCEEDED
    ended = _session_until(client, s.name, lambda x: x.state.is_final, timeout=10)
    assert ended.state is qgateway.SessionState.CLOSED
    with pytest.raises(FailedPreconditionError) as again:
        alice.submit(sampler_spec(ghz(3)), s.name)
    assert again.value.reason == "SESSION_CLOSED"


def test_idle_ttl_closes_a_session_by_itself(clients: dict[str, Client], alice: Jobs) -> None:
    client = clients["alice"]
    s = client.create_session("aer", idle_ttl=1.0)
    job = alice.final(alice.submit(sampler_spec(ghz(3)), s.name).name)
    assert job.state == job_pb2.JOB_STATE_SUCCEEDED
    ended = _session_until(client, s.name, lambda x: x.state.is_final, timeout=10)
    assert ended.state is qgateway.SessionState.CLOSED
    # Idle from when its job ended, not from its creation.
    assert ended.end_time is not None
    assert ended.end_time >= job.end_time.ToDatetime(tzinfo=ended.end_time.tzinfo)


def test_the_number_of_open_sessions_per_tenant_is_capped(clients: dict[str, Client]) -> None:
    client = clients["capped"]
    made = [client.create_session("aer") for _ in range(CAP)]
    with pytest.raises(ResourceExhaustedError) as refused:
        client.create_session("aer")
    assert refused.value.reason == "SESSION_LIMIT_REACHED"
    assert refused.value.quota_violations
    # Another tenant's cap is its own; an ended session frees a place.
    other = clients["bob"].create_session("aer")
    clients["bob"].close_session(other.name)
    client.cancel_session(made[0].name)
    client.close_session(client.create_session("aer").name)
    for s in made[1:]:
        client.close_session(s.name)


def test_a_retry_spelling_out_the_defaults_is_the_same_create_session(
    clients: dict[str, Client],
) -> None:
    # The digest was of the raw message: a retry naming the default mode, policy or TTLs of a
    # request that left them unset was REQUEST_ID_REUSED, with an error naming a "job".
    client = clients["bob"]
    stub = session_service_pb2_grpc.SessionServiceStub(client.channel)  # type: ignore[no-untyped-call]
    bare = session_service_pb2.CreateSessionRequest(
        request_id="defaults-1", session=session_pb2.Session(backend="backends/aer")
    )
    made = stub.CreateSession(bare, timeout=10, metadata=_md(BOB))
    assert made.created
    # The client sends mode DEDICATED and policy CONTINUE; the TTLs are the server's.
    again = client.create_session("backends/aer", max_ttl=600, idle_ttl=60, request_id="defaults-1")
    assert again.name == made.session.name
    with pytest.raises(InvalidArgumentError) as reused:
        client.create_session("aer", labels={"k": "v"}, request_id="defaults-1")
    assert reused.value.reason == "REQUEST_ID_REUSED"
    assert reused.value.metadata == {"session": made.session.name, "requestId": "defaults-1"}
    assert f"session {made.session.name}" in str(reused.value)
    client.cancel_session(made.session.name)


def test_abort_policy_fails_the_session_and_cancels_the_rest(
    clients: dict[str, Client], alice: Jobs
) -> None:
    client = clients["alice"]
    s = client.create_session("flaky", failure_policy="ABORT")
    failing = alice.submit(sampler_spec(ghz(3), backend="flaky", seed=FAILING_SEED), s.name)
    rest = [
        alice.submit(sampler_spec(ghz(3), backend="flaky", seed=PASSING_SEED), s.name)
        for _ in range(2)
    ]
    # Every job is in the session before the first one fails (each takes latency_s).
    assert alice.get(failing.name).state not in FINAL
    assert alice.final(failing.name).state == job_pb2.JOB_STATE_FAILED
    for job in rest:
        ended = alice.final(job.name)
        assert ended.state == job_pb2.JOB_STATE_CANCELLED
        assert not ended.HasField("start_time")  # never ran
    failed = _session_until(client, s.name, lambda x: x.state.is_final, timeout=10)
    assert failed.state is qgateway.SessionState.FAILED
    with pytest.raises(FailedPreconditionError) as refused:
        alice.submit(sampler_spec(ghz(3), backend="flaky", seed=PASSING_SEED), s.name)
    assert refused.value.reason == "SESSION_CLOSED"


def test_a_tenant_sees_only_its_own_sessions(
    clients: dict[str, Client], alice: Jobs, bob: Jobs
) -> None:
    s = clients["alice"].create_session("aer")
    calls: list[Callable[[], Any]] = [
        lambda: clients["bob"].get_session(s.name),
        lambda: clients["bob"].close_session(s.name),
        lambda: clients["bob"].cancel_session(s.name),
        lambda: bob.submit(sampler_spec(ghz(3)), s.name),
    ]
    for call in calls:
        with pytest.raises(NotFoundError) as missing:
            call()
        assert missing.value.reason == "SESSION_NOT_FOUND"
    assert s.name not in {x.name for x in clients["bob"].list_sessions()}
    assert clients["alice"].get_session(s.name).state is qgateway.SessionState.PENDING
    clients["alice"].close_session(s.name)


def test_a_dedicated_session_does_not_starve_another_tenants_jobs(
    clients: dict[str, Client], alice: Jobs, bob: Jobs
) -> None:
    s = clients["alice"].create_session("aer", mode="DEDICATED")
    mine = [
        alice.submit(sampler_spec(slow_circuit(), shots=1500, seed=i), s.name) for i in range(4)
    ]
    theirs = [bob.submit(sampler_spec(ghz(4), seed=i)) for i in range(3)]
    for job in theirs:
        assert bob.final(job.name).state == job_pb2.JOB_STATE_SUCCEEDED
    # Bob's jobs were all done while Alice's session still had work.
    assert alice.get(mine[-1].name).state not in FINAL
    clients["alice"].cancel_session(s.name)


@pytest.mark.timeout(240)
def test_queued_session_jobs_run_in_order_after_sigkill_and_restart(tmp_path: Path) -> None:
    config = _config(tmp_path, workers=1)
    gw = GatewayProcess.start(config, tmp_path / "gateway.log")
    with Client(gw.address, metadata=_md(ALICE)) as client:
        jobs = Jobs(client, ALICE)
        s = client.create_session("aer")
        submitted = [
            jobs.submit(sampler_spec(slow_circuit(), shots=1000, seed=i), s.name) for i in range(3)
        ]
        assert jobs.until(submitted[0].name, job_pb2.JOB_STATE_RUNNING).state == (
            job_pb2.JOB_STATE_RUNNING
        )
    gw.kill()
    gw = GatewayProcess.start(config, tmp_path / "gateway.log")
    try:
        with Client(gw.address, metadata=_md(ALICE)) as client:
            jobs = Jobs(client, ALICE)
            assert client.get_session(s.name).state is qgateway.SessionState.ACTIVE
            finished = [jobs.final(j.name, timeout=60) for j in submitted]
            assert all(j.state == job_pb2.JOB_STATE_SUCCEEDED for j in finished)
            _in_order(finished)
            closed = client.close_session(s.name)
            assert closed.state is qgateway.SessionState.CLOSED
    finally:
        assert gw.terminate() == 0, gw.log_path.read_text()[-3000:]
