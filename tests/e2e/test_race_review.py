"""A race review over real gRPC: many clients acting at once on one object (a request id, a
tenant's quota, a session, an API key, a job) from barrier-synchronised threads.

No race broke an invariant in this review, so every test here is a probe that held; each is
deterministic in what it asserts (the outcome may vary in which thread wins, never in the
invariant) and cheap. One gateway (aer), users of tenant "alice", an admin, and tenants made
through AdminService for quota, rate and key races.
"""

# Each loop builds its thread work and runs it to the end (_at_once) within one iteration.
# ruff: noqa: B023

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import grpc
import pytest
from google.protobuf import field_mask_pb2
from qgateway.v1 import (
    admin_pb2,
    admin_service_pb2,
    admin_service_pb2_grpc,
    job_pb2,
    job_service_pb2,
    job_service_pb2_grpc,
    session_pb2,
    session_service_pb2,
    session_service_pb2_grpc,
)

from gateway.security.api_keys import generate_key
from gateway.security.principals import Role
from tests.gateway_process import GatewayProcess, keys_toml, write_config
from tests.rpc import ghz, sampler_spec, slow_circuit, status_of

ALICE = generate_key("alice")
OPS = generate_key("ops", role=Role.ADMIN)
FINAL = {job_pb2.JOB_STATE_SUCCEEDED, job_pb2.JOB_STATE_FAILED, job_pb2.JOB_STATE_CANCELLED}
SLOW = slow_circuit()
T = TypeVar("T")

CONFIG = """
[backends.aer]
adapter = "aer"
pool = { min_instances = 1, max_instances = 2 }
"""


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    root = tmp_path_factory.mktemp("race")
    config = write_config(root / "g.toml", root / "data", CONFIG + keys_toml(ALICE, OPS))
    process = GatewayProcess.start(config, root / "gateway.log")
    yield process
    assert process.terminate() == 0, process.log_path.read_text()[-3000:]


@pytest.fixture(scope="module")
def channel(gw: GatewayProcess) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(gw.address) as ch:
        yield ch


@pytest.fixture(scope="module")
def jobs(channel: grpc.Channel) -> job_service_pb2_grpc.JobServiceStub:
    return job_service_pb2_grpc.JobServiceStub(channel)


@pytest.fixture(scope="module")
def admin(channel: grpc.Channel) -> admin_service_pb2_grpc.AdminServiceStub:
    return admin_service_pb2_grpc.AdminServiceStub(channel)


def _md(key: Any) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {key if isinstance(key, str) else key.key}")]


def _outcome(err: grpc.RpcError) -> str:
    info = status_of(err)
    return f"{info.code.name}:{info.reason}"


def _at_once(n: int, work: Callable[[int, threading.Barrier], T]) -> list[T]:
    """`work(i, barrier)` in n threads; each waits on the barrier before its call."""
    barrier = threading.Barrier(n)
    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(lambda i: work(i, barrier), range(n)))


def _final(jobs: job_service_pb2_grpc.JobServiceStub, name: str, key: Any) -> job_pb2.Job:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        job = jobs.GetJob(job_service_pb2.GetJobRequest(name=name), metadata=_md(key), timeout=10)
        if job.job.state in FINAL:
            return job.job  # type: ignore[no-any-return]
        time.sleep(0.02)
    raise AssertionError(f"{name} did not end within 30 s")


def _tenant(
    admin: admin_service_pb2_grpc.AdminServiceStub, policy: admin_pb2.TenantPolicy
) -> tuple[str, str, str]:
    """A new tenant with `policy`: (its id, a user key's secret, the key's name)."""
    tid = f"r-{uuid.uuid4().hex[:10]}"
    admin.CreateTenant(
        admin_service_pb2.CreateTenantRequest(
            tenant_id=tid, tenant=admin_pb2.Tenant(policy=policy)
        ),
        metadata=_md(OPS),
        timeout=10,
    )
    made = admin.CreateApiKey(
        admin_service_pb2.CreateApiKeyRequest(
            parent=f"tenants/{tid}", api_key=admin_pb2.ApiKey(display_name="race")
        ),
        metadata=_md(OPS),
        timeout=10,
    )
    return tid, made.key, made.api_key.name


def _usage(admin: admin_service_pb2_grpc.AdminServiceStub, tid: str) -> admin_pb2.TenantUsage:
    request = admin_service_pb2.GetTenantUsageRequest(name=f"tenants/{tid}/usage")
    return admin.GetTenantUsage(request, metadata=_md(OPS), timeout=10).usage


# ------------------------------------------------------------- probes that were handled right


def test_one_request_id_from_20_clients_makes_one_job(
    jobs: job_service_pb2_grpc.JobServiceStub,
) -> None:
    """20 SubmitJob/Run calls at once with one request_id: 10 with spec A (half of them Run),
    10 with spec B. One job; exactly one answer says created; every spec-A answer names it
    (or every spec-B one) and the other spec is REQUEST_ID_REUSED throughout."""
    for rep in range(3):
        rid = str(uuid.uuid4())
        specs = [sampler_spec(ghz(2), shots=8, seed=1), sampler_spec(ghz(2), shots=8, seed=2)]

        def submit(i: int, barrier: threading.Barrier) -> tuple[int, str, bool]:
            spec = specs[i % 2]
            barrier.wait()
            try:
                if i % 4 == 1:
                    run = jobs.Run(
                        job_service_pb2.RunRequest(spec=spec, request_id=rid),
                        metadata=_md(ALICE),
                        timeout=30,
                    )
                    return i % 2, run.job.name, run.created
                sub = jobs.SubmitJob(
                    job_service_pb2.SubmitJobRequest(spec=spec, request_id=rid),
                    metadata=_md(ALICE),
                    timeout=30,
                )
                return i % 2, sub.job.name, sub.created
            except grpc.RpcError as err:
                return i % 2, _outcome(err), False

        outcomes = _at_once(20, submit)
        names = {name for _, name, _ in outcomes if name.startswith("jobs/")}
        assert len(names) == 1, (rep, outcomes)
        assert sum(created for _, _, created in outcomes) == 1, (rep, outcomes)
        winner = next(spec for spec, name, _ in outcomes if name.startswith("jobs/"))
        for spec, name, _ in outcomes:
            if spec == winner:
                assert name.startswith("jobs/"), (rep, outcomes)
            else:
                assert name == "INVALID_ARGUMENT:REQUEST_ID_REUSED", (rep, outcomes)


def test_shot_quota_at_the_edge_admits_n_and_gives_back_what_ended(
    jobs: job_service_pb2_grpc.JobServiceStub, admin: admin_service_pb2_grpc.AdminServiceStub
) -> None:
    """Quota for 10 jobs of 8 shots; 20 submissions at once: exactly 10 admitted, 10
    SHOT_QUOTA_EXCEEDED. Retries of the admitted requests (same request ids, 3 each, at once)
    return their jobs though the quota is spent. After every job ended, nothing is reserved and
    used is 8 shots per job that succeeded."""
    tid, key, _ = _tenant(admin, admin_pb2.TenantPolicy(quota=admin_pb2.PeriodQuota(shots=80)))
    requests = [
        job_service_pb2.SubmitJobRequest(
            spec=sampler_spec(ghz(2), shots=8, seed=i), request_id=str(uuid.uuid4())
        )
        for i in range(20)
    ]

    def submit(i: int, barrier: threading.Barrier) -> str:
        barrier.wait()
        try:
            return jobs.SubmitJob(requests[i], metadata=_md(key), timeout=30).job.name
        except grpc.RpcError as err:
            return _outcome(err)

    outcomes = _at_once(20, submit)
    admitted = {i: name for i, name in enumerate(outcomes) if name.startswith("jobs/")}
    assert len(admitted) == 10, outcomes
    assert Counter(o for o in outcomes if not o.startswith("jobs/")) == {
        "RESOURCE_EXHAUSTED:SHOT_QUOTA_EXCEEDED": 10
    }
    order = sorted(admitted)

    def retry(i: int, barrier: threading.Barrier) -> tuple[bool, bool]:
        index = order[i % 10]
        barrier.wait()
        answer = jobs.SubmitJob(requests[index], metadata=_md(key), timeout=30)
        return answer.job.name == admitted[index], answer.created

    assert set(_at_once(30, retry)) == {(True, False)}
    ended = [_final(jobs, name, key) for name in admitted.values()]
    usage = _usage(admin, tid)
    succeeded = sum(job.state == job_pb2.JOB_STATE_SUCCEEDED for job in ended)
    assert (usage.shots_reserved, usage.shots_used) == (0, 8 * succeeded), usage


def test_concurrent_cancels_of_queued_and_running_jobs_release_their_quota(
    jobs: job_service_pb2_grpc.JobServiceStub, admin: admin_service_pb2_grpc.AdminServiceStub
) -> None:
    """Ten slow jobs (one or two running, the rest queued), three CancelJob calls each, all 30
    at once. Each job's end agrees with every answer about it: CANCELLED (no result) when one
    answered CANCELLED, SUCCEEDED (its result readable) only when none did, which on a loaded
    machine a job that ended before its cancels arrived may (JOB_ALREADY_FINISHED); the
    tenant's reservation returns to 0 with only the succeeded jobs' shots used."""
    tid, key, _ = _tenant(admin, admin_pb2.TenantPolicy(quota=admin_pb2.PeriodQuota(shots=3000)))
    names = [
        jobs.SubmitJob(
            job_service_pb2.SubmitJobRequest(
                spec=sampler_spec(SLOW, shots=300, seed=i), request_id=str(uuid.uuid4())
            ),
            metadata=_md(key),
            timeout=30,
        ).job.name
        for i in range(10)
    ]

    def cancel(i: int, barrier: threading.Barrier) -> int | str:
        barrier.wait()
        try:
            request = job_service_pb2.CancelJobRequest(name=names[i % 10])
            return int(jobs.CancelJob(request, metadata=_md(key), timeout=10).job.state)
        except grpc.RpcError as err:
            return _outcome(err)

    answers = _at_once(30, cancel)
    finished = "FAILED_PRECONDITION:JOB_ALREADY_FINISHED"
    allowed = {job_pb2.JOB_STATE_CANCELLING, job_pb2.JOB_STATE_CANCELLED, finished}
    assert set(answers) <= allowed, answers
    succeeded = 0
    for k, name in enumerate(names):
        mine = set(answers[k::10])
        state = _final(jobs, name, key).state
        result = job_service_pb2.GetJobResultRequest(name=f"{name}/result")
        if state == job_pb2.JOB_STATE_SUCCEEDED:
            # Ended first (CANCELLING can still end SUCCEEDED: the run finished first).
            assert job_pb2.JOB_STATE_CANCELLED not in mine, (name, mine)
            jobs.GetJobResult(result, metadata=_md(key), timeout=10)
            succeeded += 1
            continue
        assert state == job_pb2.JOB_STATE_CANCELLED and finished not in mine, (name, mine)
        with pytest.raises(grpc.RpcError):
            jobs.GetJobResult(result, metadata=_md(key), timeout=10)
    usage = _usage(admin, tid)
    assert (usage.shots_reserved, usage.queued_jobs) == (0, 0), usage
    assert usage.shots_used == 300 * succeeded, usage


@pytest.mark.parametrize("how", ["CloseSession", "CancelSession"])
def test_ending_a_session_while_15_clients_submit_into_it(
    channel: grpc.Channel, jobs: job_service_pb2_grpc.JobServiceStub, how: str
) -> None:
    """A session holding one slow job; 15 SubmitJob into it and its end, all at once. Every
    refusal is SESSION_CLOSED; every admitted job ends (CANCELLED after CancelSession); the
    session ends CLOSED once they have."""
    sessions = session_service_pb2_grpc.SessionServiceStub(channel)
    for rep in range(2):
        name = sessions.CreateSession(
            session_service_pb2.CreateSessionRequest(
                session=session_pb2.Session(backend="backends/aer"),
                request_id=str(uuid.uuid4()),
            ),
            metadata=_md(ALICE),
            timeout=20,
        ).session.name
        spec = sampler_spec(SLOW, shots=200, seed=rep)
        spec.session = name
        first = jobs.SubmitJob(
            job_service_pb2.SubmitJobRequest(spec=spec, request_id=str(uuid.uuid4())),
            metadata=_md(ALICE),
            timeout=30,
        ).job.name

        def act(i: int, barrier: threading.Barrier) -> str:
            if i == 7:
                barrier.wait()
                if how == "CloseSession":
                    sessions.CloseSession(
                        session_service_pb2.CloseSessionRequest(name=name),
                        metadata=_md(ALICE),
                        timeout=20,
                    )
                else:
                    sessions.CancelSession(
                        session_service_pb2.CancelSessionRequest(name=name),
                        metadata=_md(ALICE),
                        timeout=20,
                    )
                return "ended"
            job_spec = sampler_spec(ghz(2), shots=8, seed=100 + i)
            job_spec.session = name
            barrier.wait()
            try:
                return jobs.SubmitJob(
                    job_service_pb2.SubmitJobRequest(spec=job_spec, request_id=str(uuid.uuid4())),
                    metadata=_md(ALICE),
                    timeout=30,
                ).job.name
            except grpc.RpcError as err:
                return _outcome(err)

        outcomes = _at_once(16, act)
        refused = {o for o in outcomes if not o.startswith("jobs/") and o != "ended"}
        assert refused <= {"FAILED_PRECONDITION:SESSION_CLOSED"}, outcomes
        admitted = [first] + [o for o in outcomes if o.startswith("jobs/")]
        states = {_final(jobs, job, ALICE).state for job in admitted}
        # A job may end before the session does (on a loaded machine the slow one can), but
        # none fails, and with CancelSession what had not ended is cancelled.
        ended_as = {job_pb2.JOB_STATE_SUCCEEDED, job_pb2.JOB_STATE_CANCELLED}
        if how == "CloseSession":
            ended_as = {job_pb2.JOB_STATE_SUCCEEDED}
        assert states <= ended_as, (outcomes, states)
        deadline = time.monotonic() + 20
        while True:
            session = sessions.GetSession(
                session_service_pb2.GetSessionRequest(name=name), metadata=_md(ALICE), timeout=10
            ).session
            if session.state == session_pb2.SESSION_STATE_CLOSED or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert session.state == session_pb2.SESSION_STATE_CLOSED, session


def test_a_revoked_key_is_refused_from_the_revoke_on(
    jobs: job_service_pb2_grpc.JobServiceStub, admin: admin_service_pb2_grpc.AdminServiceStub
) -> None:
    """Six clients submit and read with a key while a seventh watches a slow job and an admin
    revokes the key (ten RevokeApiKey at once): every call is answered OK or
    API_KEY_REVOKED (never INTERNAL), none started after the revoke answered succeeds, the
    stream opened before it finishes, and every revoke answers the same revoke_time."""
    _, key, key_name = _tenant(admin, admin_pb2.TenantPolicy())
    slow = jobs.SubmitJob(
        job_service_pb2.SubmitJobRequest(
            spec=sampler_spec(SLOW, shots=300), request_id=str(uuid.uuid4())
        ),
        metadata=_md(key),
        timeout=30,
    ).job.name
    watch = jobs.WatchJob(job_service_pb2.WatchJobRequest(name=slow), metadata=_md(key), timeout=30)
    first_event = next(watch)  # the stream is authenticated and open
    assert first_event.job.name == slow
    stop = threading.Event()
    calls: list[tuple[float, str]] = []
    lock = threading.Lock()
    running = threading.Barrier(7)

    def client(i: int) -> None:
        running.wait()
        seed = 0
        while not stop.is_set():
            started = time.monotonic()
            try:
                if i % 2:
                    seed += 1
                    jobs.SubmitJob(
                        job_service_pb2.SubmitJobRequest(
                            spec=sampler_spec(ghz(2), shots=8, seed=i * 1000 + seed),
                            request_id=str(uuid.uuid4()),
                        ),
                        metadata=_md(key),
                        timeout=30,
                    )
                else:
                    jobs.GetJob(
                        job_service_pb2.GetJobRequest(name=slow), metadata=_md(key), timeout=10
                    )
                outcome = "OK"
            except grpc.RpcError as err:
                outcome = _outcome(err)
            with lock:
                calls.append((started, outcome))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    running.wait()

    def revoke(i: int, barrier: threading.Barrier) -> tuple[int, int]:
        barrier.wait()
        answer = admin.RevokeApiKey(
            admin_service_pb2.RevokeApiKeyRequest(name=key_name), metadata=_md(OPS), timeout=10
        ).api_key
        return int(answer.state), answer.revoke_time.ToNanoseconds()

    revokes = set(_at_once(10, revoke))
    revoked_at = time.monotonic()
    # Until every client has made a call after the revoke answered.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with lock:
            if sum(started > revoked_at for started, _ in calls) >= 12:
                break
        time.sleep(0.01)
    stop.set()
    for thread in threads:
        thread.join()
    states = [event.job.state for event in watch]
    assert len(revokes) == 1 and next(iter(revokes))[0] == admin_pb2.API_KEY_STATE_REVOKED
    assert {o for _, o in calls} <= {"OK", "UNAUTHENTICATED:API_KEY_REVOKED"}, Counter(calls)
    assert not [o for started, o in calls if started > revoked_at and o == "OK"]
    assert states and states[-1] in FINAL, states


def test_20_concurrent_submits_against_a_submit_rate_burst_of_5(
    jobs: job_service_pb2_grpc.JobServiceStub, admin: admin_service_pb2_grpc.AdminServiceStub
) -> None:
    """A submit rate of burst 5 refilling once in ~11 days: exactly 5 of 20 at once pass."""
    _, key, _ = _tenant(
        admin, admin_pb2.TenantPolicy(submit_rate=admin_pb2.RateLimit(per_second=1e-6, burst=5))
    )

    def submit(i: int, barrier: threading.Barrier) -> str:
        barrier.wait()
        try:
            jobs.SubmitJob(
                job_service_pb2.SubmitJobRequest(
                    spec=sampler_spec(ghz(2), shots=8, seed=i), request_id=str(uuid.uuid4())
                ),
                metadata=_md(key),
                timeout=30,
            )
            return "OK"
        except grpc.RpcError as err:
            return _outcome(err)

    assert Counter(_at_once(20, submit)) == {
        "OK": 5,
        "RESOURCE_EXHAUSTED:RATE_LIMITED": 15,
    }


def test_updates_with_one_etag_from_16_admins_let_exactly_one_through(
    admin: admin_service_pb2_grpc.AdminServiceStub,
) -> None:
    """16 UpdateTenant calls at once carrying the same etag: one applies, 15 ETAG_MISMATCH,
    and the stored tenant is the winner's (the policy enforced, from GetTenantUsage, too)."""
    tid, _, _ = _tenant(admin, admin_pb2.TenantPolicy())
    for rep in range(3):
        etag = admin.GetTenant(
            admin_service_pb2.GetTenantRequest(name=f"tenants/{tid}"), metadata=_md(OPS)
        ).tenant.etag

        def update(i: int, barrier: threading.Barrier) -> int | str:
            request = admin_service_pb2.UpdateTenantRequest(
                tenant=admin_pb2.Tenant(
                    name=f"tenants/{tid}",
                    etag=etag,
                    policy=admin_pb2.TenantPolicy(max_qubits=10 + 16 * rep + i),
                ),
                update_mask=field_mask_pb2.FieldMask(paths=["policy.max_qubits"]),
            )
            barrier.wait()
            try:
                return admin.UpdateTenant(
                    request, metadata=_md(OPS), timeout=20
                ).tenant.policy.max_qubits
            except grpc.RpcError as err:
                return _outcome(err)

        outcomes = _at_once(16, update)
        winners = [o for o in outcomes if isinstance(o, int)]
        assert len(winners) == 1, outcomes
        assert outcomes.count("ABORTED:ETAG_MISMATCH") == 15, outcomes
        stored = admin.GetTenant(
            admin_service_pb2.GetTenantRequest(name=f"tenants/{tid}"), metadata=_md(OPS)
        ).tenant
        assert stored.policy.max_qubits == winners[0]
        assert _usage(admin, tid).policy.max_qubits == winners[0]
