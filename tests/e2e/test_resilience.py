"""One sick backend never takes the gateway or the other backends down: breaker, fallback,
crash and memory isolation, time limits, health, fair share, queue cap. Real gateway process,
real gRPC, real workers; `faults = {...}` blocks inject the faults deterministically."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from qgateway import (
    DEFAULT_RETRY,
    Client,
    QGatewayError,
    ResourceExhaustedError,
    RetryPolicy,
    UnavailableError,
    sampler_pub,
)
from qgateway.results import Job, JobState
from qgateway.v1 import backend_pb2, backend_service_pb2, backend_service_pb2_grpc

from gateway.security.api_keys import generate_key
from gateway.security.principals import Role
from tests.gateway_process import GatewayProcess, keys_toml, write_config
from tests.rpc import ghz, slow_circuit

ALICE = generate_key("alice")
BOB = generate_key("bob")
# Health, breaker and pool are the FULL view of a backend: an operator's key reads them.
OPS = generate_key("ops", role=Role.ADMIN)
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def _backends(switch: Path, stuck_switch: Path, blip_switch: Path) -> str:
    one = "pool = { min_instances = 1, max_instances = 1 }"
    return f"""
[backends.aer]
adapter = "aer"
{one}

[backends.fault-switch]
adapter = "aer"
{one}
health_interval_s = 0.2
probe_timeout_s = 10
breaker = {{ failure_threshold = 2, window_s = 60, cooldown_s = 5.0 }}
faults = {{ fail_while_exists = "{switch}", latency_s = 0.5 }}

[backends.fault-stuck]
adapter = "aer"
{one}
max_queue_time_s = 1.5
breaker = {{ failure_threshold = 2, window_s = 60, cooldown_s = 600 }}
faults = {{ fail_while_exists = "{stuck_switch}", latency_s = 0.5 }}

[backends.fault-crash]
adapter = "aer"
{one}
faults = {{ crash_rate = 0.5 }}

[backends.fault-hang]
adapter = "aer"
{one}
max_run_time_s = 2
probe_timeout_s = 1
faults = {{ hang = true }}

[backends.aer-lean]
adapter = "aer"
{one}
worker_memory_limit_mb = 700
options = {{ method = "statevector" }}

[backends.fault-transient]
adapter = "aer"
{one}
breaker = {{ failure_threshold = 1, window_s = 60, cooldown_s = 600 }}
faults = {{ transient_errors = 2, retry_attempts = 4, retry_backoff_s = 0.01 }}

[backends.fault-exhausted]
adapter = "aer"
{one}
breaker = {{ failure_threshold = 1, window_s = 60, cooldown_s = 600 }}
faults = {{ transient_errors = 9, retry_attempts = 3, retry_backoff_s = 0.01 }}

[backends.fault-blip]
adapter = "aer"
{one}
breaker = {{ failure_threshold = 1, window_s = 60, cooldown_s = 3.0 }}
faults = {{ fail_while_exists = "{blip_switch}" }}

[backends.fair]
adapter = "aer"
{one}

[backends.capped]
adapter = "aer"
{one}
max_queued_jobs = 3
"""


@pytest.fixture(scope="module")
def switches(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("switches")
    return root / "sick", root / "stuck-sick", root / "blip"


@pytest.fixture(scope="module")
def gw(
    tmp_path_factory: pytest.TempPathFactory, switches: tuple[Path, Path, Path]
) -> Iterator[GatewayProcess]:
    root = tmp_path_factory.mktemp("resilience")
    config = write_config(
        root / "g.toml",
        root / "data",
        keys_toml(ALICE, BOB, OPS) + _backends(*switches),
    )
    process = GatewayProcess.start(config, root / "gateway.log")
    yield process
    assert process.terminate() == 0, process.log_path.read_text()[-3000:]


def _client(gw: GatewayProcess, key: object = ALICE, retry: RetryPolicy = DEFAULT_RETRY) -> Client:
    return Client(
        gw.address,
        metadata=[("authorization", f"Bearer {key.key}")],  # type: ignore[attr-defined]
        retry=retry,
    )


@pytest.fixture
def alice(gw: GatewayProcess) -> Iterator[Client]:
    # No automatic retries: an unexpected refusal fails the test at once instead of waiting
    # out a breaker's cool-down.
    with _client(gw, retry=RetryPolicy(max_attempts=1)) as c:
        yield c


def _backend(gw: GatewayProcess, name: str) -> backend_pb2.Backend:
    with grpc.insecure_channel(gw.address) as ch:
        stub = backend_service_pb2_grpc.BackendServiceStub(ch)
        return stub.GetBackend(
            backend_service_pb2.GetBackendRequest(
                name=f"backends/{name}", view=backend_pb2.BACKEND_VIEW_FULL
            ),
            timeout=10,
            metadata=[("authorization", f"Bearer {OPS.key}")],
        ).backend


def _final(client: Client, name: str) -> Job:
    return client.wait(name, timeout=60)


def _first_seed(pred: object) -> int:
    return next(s for s in range(1000) if pred(random.Random(f"{s}:crash").random()))  # type: ignore[operator]


def test_unauthenticated_calls_are_refused(gw: GatewayProcess) -> None:
    with Client(gw.address) as anonymous, pytest.raises(QGatewayError) as exc:
        anonymous.list_backends()
    assert exc.value.code == grpc.StatusCode.UNAUTHENTICATED
    assert exc.value.reason == "API_KEY_MISSING"
    bad_key = [("authorization", "Bearer qgw_x_y")]
    with Client(gw.address, metadata=bad_key) as bad, pytest.raises(QGatewayError) as exc:
        bad.list_backends()
    assert exc.value.reason == "API_KEY_INVALID"
    with grpc.insecure_channel(gw.address) as ch:  # probes need no key
        reply = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert reply.status == SERVING


def test_tenants_do_not_see_each_others_jobs(gw: GatewayProcess, alice: Client) -> None:
    job = alice.submit(ghz(2), backend="aer", shots=10, seed=1)
    with _client(gw, BOB) as bob:
        with pytest.raises(QGatewayError) as exc:
            bob.get_job(job.name)
        assert exc.value.code == grpc.StatusCode.NOT_FOUND
        assert job.name not in [j.name for j in bob.list_jobs()]
        # The same request_id in another tenant is another job.
        a = alice.submit(ghz(2), backend="aer", shots=10, seed=1, request_id="shared-id")
        b = bob.submit(ghz(2), backend="aer", shots=10, seed=1, request_id="shared-id")
        assert a.name != b.name and a.tenant == "alice" and b.tenant == "bob"


def test_breaker_opens_refuses_falls_back_and_recovers(
    gw: GatewayProcess, alice: Client, switches: tuple[Path, Path, Path]
) -> None:
    switch = switches[0]
    switch.touch()
    try:
        failing = [alice.submit(ghz(2), backend="fault-switch", shots=10, seed=i) for i in range(2)]
        # Accepted before the breaker opens: it must wait in the queue, not fail.
        waiting = alice.submit(ghz(2), backend="fault-switch", shots=10, seed=7)
        for job in failing:
            done = _final(alice, job.name)
            assert done.state is JobState.FAILED and done.error_reason == "EXECUTION_FAILED"
        assert _backend(gw, "fault-switch").breaker_state == backend_pb2.BREAKER_STATE_OPEN
        # New submissions: UNAVAILABLE with RetryInfo; nothing was accepted. (A client that
        # retries, like the default one, would wait out the cool-down instead.)
        with (
            _client(gw, retry=RetryPolicy(max_attempts=1)) as once,
            pytest.raises(UnavailableError) as exc,
        ):
            once.submit(ghz(2), backend="fault-switch", shots=10, seed=3)
        assert exc.value.reason == "BACKEND_UNAVAILABLE"
        assert exc.value.retry_delay is not None and 0 < exc.value.retry_delay <= 5.0
        # With a fallback the job runs elsewhere and says where.
        fallback = alice.run_pubs(
            [sampler_pub(ghz(2), shots=10)], backend="fault-switch", seed=4, fallback_backend="aer"
        )
        assert fallback.state is JobState.SUCCEEDED
        assert fallback.backend == "backends/fault-switch"
        assert fallback.execution is not None and fallback.execution.backend == "backends/aer"
        assert alice.get_job(waiting.name).state is JobState.QUEUED
    finally:
        switch.unlink()
    # After the cool-down the queued job is the half-open trial; its success closes the breaker.
    assert _final(alice, waiting.name).state is JobState.SUCCEEDED
    assert _backend(gw, "fault-switch").breaker_state == backend_pb2.BREAKER_STATE_CLOSED
    assert alice.run(ghz(2), backend="fault-switch", shots=10, seed=5).counts()


def test_jobs_waiting_on_an_open_breaker_fail_after_their_time_limit(
    gw: GatewayProcess, alice: Client, switches: tuple[Path, Path, Path]
) -> None:
    switches[1].touch()
    # The failing jobs take 0.5 s each, so the third is queued before the breaker opens.
    failing = [alice.submit(ghz(2), backend="fault-stuck", shots=10, seed=i) for i in range(2)]
    stuck = alice.submit(ghz(2), backend="fault-stuck", shots=10, seed=9)
    for job in failing:
        assert _final(alice, job.name).state is JobState.FAILED
    done = _final(alice, stuck.name)
    assert done.state is JobState.FAILED
    assert done.error_reason == "BACKEND_UNAVAILABLE"
    assert done.start_time is None  # it never ran


def test_health_watch_sees_the_backend_go_sick_and_recover(
    gw: GatewayProcess, switches: tuple[Path, Path, Path]
) -> None:
    switch = switches[0]
    seen: list[int] = []
    with grpc.insecure_channel(gw.address) as ch:
        stream = health_pb2_grpc.HealthStub(ch).Watch(
            health_pb2.HealthCheckRequest(service="qgateway.backend.fault-switch"), timeout=30
        )
        for reply in stream:
            seen.append(reply.status)
            if seen == [SERVING]:
                switch.touch()
            elif seen[-1] == NOT_SERVING and SERVING in seen[:-1]:
                # Probes keep failing while the switch exists: the error is stable here, and
                # it is a reason, not the injected failure's text (which names the path).
                assert _backend(gw, "fault-switch").health.last_error == (
                    "PROBE_FAILED: execution failed"
                )
                switch.unlink()
            elif seen[-1] == SERVING and NOT_SERVING in seen:
                stream.cancel()
                break
    assert seen == [SERVING, NOT_SERVING, SERVING]
    backend = _backend(gw, "fault-switch")
    assert backend.health.serving and backend.health.HasField("last_probe_time")


def test_a_worker_crash_fails_only_its_job(gw: GatewayProcess, alice: Client) -> None:
    crash_seed = _first_seed(lambda x: x < 0.5)
    ok_seed = _first_seed(lambda x: x >= 0.5)
    crashing = alice.submit(ghz(3), backend="fault-crash", shots=10, seed=crash_seed)
    after = alice.submit(ghz(3), backend="fault-crash", shots=10, seed=ok_seed)
    elsewhere = alice.submit(ghz(3), backend="aer", shots=10, seed=1)
    done = _final(alice, crashing.name)
    assert done.state is JobState.FAILED and done.error_reason == "WORKER_CRASHED"
    assert _final(alice, after.name).state is JobState.SUCCEEDED  # on a replacement worker
    assert _final(alice, elsewhere.name).state is JobState.SUCCEEDED


def test_a_hung_job_hits_its_time_limit_and_its_worker_is_replaced(
    gw: GatewayProcess, alice: Client
) -> None:
    job = alice.submit(ghz(2), backend="fault-hang", shots=10, seed=1)
    done = _final(alice, job.name)
    assert done.state is JobState.FAILED and done.error_reason == "JOB_TIMEOUT"
    assert alice.run(ghz(2), backend="aer", shots=10, seed=1).counts()


def test_memory_over_the_worker_limit_fails_only_its_job(gw: GatewayProcess, alice: Client) -> None:
    # 25 qubits need 512 MiB of state vector on top of the worker's own ~250 MiB: a real
    # allocation over the worker's 700 MiB RLIMIT_DATA. The gateway and the next job go on.
    big = alice.submit(ghz(25), backend="aer-lean", shots=10, seed=1)
    done = _final(alice, big.name)
    assert done.state is JobState.FAILED
    assert done.error_reason in {"OUT_OF_MEMORY", "WORKER_CRASHED"}
    small = alice.run(ghz(3), backend="aer-lean", shots=10, seed=1).counts()
    assert set(small) <= {"000", "111"}


def test_fair_share_across_tenants(gw: GatewayProcess, alice: Client) -> None:
    # One worker: Alice's long job holds it while her backlog and then Bob's one job queue, so
    # the order in which they start is the scheduler's choice alone, not submission timing.
    blocker = alice.submit(slow_circuit(8, 2), backend="fair", shots=50_000, seed=99)
    for event in alice.watch(blocker.name):
        if event.state is not JobState.QUEUED:
            break
    backlog = [
        alice.submit(slow_circuit(8, 2), backend="fair", shots=300, seed=i) for i in range(11)
    ]
    with _client(gw, BOB) as bob:
        single = bob.submit(ghz(2), backend="fair", shots=10, seed=1)
        assert _final(alice, blocker.name).state is JobState.SUCCEEDED
        bob_done = bob.wait(single.name, timeout=60)
    alice_done = [_final(alice, j.name) for j in backlog]
    assert bob_done.state is JobState.SUCCEEDED
    # Bob's one job runs next, before every job of Alice's backlog that queued before it.
    assert bob_done.start_time is not None
    later = [j for j in alice_done if j.start_time and j.start_time > bob_done.start_time]
    assert len(later) == len(backlog)


def test_full_queue_is_resource_exhausted_with_retry_info(
    gw: GatewayProcess, alice: Client
) -> None:
    # A queue of 3: Alice alone may fill half of it (rounded up, 2), and Bob, who has nothing
    # waiting, still finds room; then the queue's own limit refuses everyone.
    blocker = alice.submit(slow_circuit(), backend="capped", shots=100_000, seed=1)
    for event in alice.watch(blocker.name):
        if event.state is JobState.RUNNING:
            break
    queued = [alice.submit(ghz(2), backend="capped", shots=10, seed=i) for i in range(2)]
    with pytest.raises(ResourceExhaustedError) as share:
        alice.submit(ghz(2), backend="capped", shots=10, seed=99)
    with _client(gw, BOB, retry=RetryPolicy(max_attempts=1)) as bob:
        queued.append(bob.submit(ghz(2), backend="capped", shots=10, seed=1))
        with pytest.raises(ResourceExhaustedError) as full:
            bob.submit(ghz(2), backend="capped", shots=10, seed=2)
        bob.cancel(queued.pop().name)
    for job in [*queued, blocker]:
        alice.cancel(job.name)
    assert share.value.reason == "QUEUE_FULL"
    assert share.value.metadata["tenantQueuedJobs"] == "2"
    assert share.value.retry_delay is not None and share.value.quota_violations
    assert full.value.reason == "QUEUE_FULL" and full.value.metadata["queuedJobs"] == "3"
    assert full.value.retry_delay is not None and full.value.quota_violations


def test_pool_and_breaker_are_visible(gw: GatewayProcess) -> None:
    backend = _backend(gw, "aer")
    assert backend.pool.min_instances == 1 and backend.pool.max_instances == 1
    assert backend.pool.in_use + backend.pool.idle >= 1
    assert backend.breaker_state == backend_pb2.BREAKER_STATE_CLOSED


def test_transient_provider_errors_are_retried_before_the_breaker_counts(
    gw: GatewayProcess, alice: Client
) -> None:
    # Two transient errors per job, four attempts: every job succeeds, and the breaker (which
    # opens on a single counted failure here) never hears of them.
    for seed in range(3):
        assert alice.run(ghz(2), backend="fault-transient", shots=10, seed=seed).counts()
    assert _backend(gw, "fault-transient").breaker_state == backend_pb2.BREAKER_STATE_CLOSED
    # Retries exhausted: the job fails as a provider error and that one does count.
    job = alice.submit(ghz(2), backend="fault-exhausted", shots=10, seed=1)
    done = _final(alice, job.name)
    assert done.state is JobState.FAILED and done.error_reason == "PROVIDER_ERROR"
    assert "after 3 attempts" in done.error_message
    assert _backend(gw, "fault-exhausted").breaker_state == backend_pb2.BREAKER_STATE_OPEN


def test_the_client_retries_unavailable_with_the_same_request_id(
    gw: GatewayProcess, alice: Client, switches: tuple[Path, Path, Path]
) -> None:
    blip = switches[2]
    blip.touch()
    try:
        failed = _final(alice, alice.submit(ghz(2), backend="fault-blip", shots=10, seed=1).name)
        assert failed.error_reason == "EXECUTION_FAILED"
    finally:
        blip.unlink()
    with pytest.raises(UnavailableError):  # the breaker is open: a client without retries fails
        alice.submit(ghz(2), backend="fault-blip", shots=10, seed=2, request_id="blip-1")
    # The default client meets UNAVAILABLE (nothing accepted), waits the RetryInfo delay and
    # retries with the same request_id: one job, run once the breaker half-opens.
    with _client(gw) as retrying:
        result = retrying.run(
            ghz(2), backend="fault-blip", shots=10, seed=2, request_id="blip-1", timeout=30
        )
    assert set(result.counts()) <= {"00", "11"}
    again = alice.submit(ghz(2), backend="fault-blip", shots=10, seed=2, request_id="blip-1")
    assert not again.created and again.state is JobState.SUCCEEDED
    ran = [
        j
        for j in alice.list_jobs(backend="fault-blip", states=[JobState.SUCCEEDED])
        if j.execution is not None and j.execution.seed == 2
    ]
    assert [j.name for j in ran] == [again.name]  # one job, run once
