"""Amazon Braket in the cloud, up to the network boundary: real gateways over real gRPC, the
Braket SDK and boto3 pointed at a stub of Braket's task API and S3 (its own process, loopback
only), which runs every task with Braket's local simulator.

Shown: submit -> QUEUED -> RUNNING (queued at Braket, its queue position published) -> done
with the real result; a ValidationException fails the job as the client's (the provider's code
in the Status metadata), a FAILED task as the backend's, throttling is retried; CancelJob
cancels the task; a gateway SIGKILLed while Braket withholds its create answer re-attaches by
tag after a restart (one task, one create call); rejected credentials turn the backend
NOT_SERVING and open its breaker while queued jobs wait, then all finish; a burst never passes
20 CreateQuantumTask calls in any second at the stub.
"""

from __future__ import annotations

import math
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from qgateway import Client, JobState, RetryPolicy, sampler_pub
from qgateway.v1 import backend_pb2, backend_service_pb2, backend_service_pb2_grpc

from gateway.security.api_keys import generate_key
from gateway.security.principals import Role
from tests.braket_stub import AWS_ENV, SV1, BraketStubProcess
from tests.gateway_process import GatewayProcess, keys_toml, write_config
from tests.loopback_service import TWO_REGISTERS

OPS = generate_key("ops", role=Role.ADMIN)
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def _ops_toml() -> str:
    # One compile worker: the gateways here compile one small circuit.
    return "[compiler]\nworkers = 1\n\n" + keys_toml(OPS) + "\n"


SV1_PRICE = '{ per_task = 0.3, per_shot = 0.001, unit = "USD" }'
RESERVATION = "arn:aws:braket:us-east-1:123456789012:reservation/r-0f1e2d"


def _backend(
    name: str, url: str, extra: str = "", max_concurrent_tasks: int = 32, options: str = ""
) -> str:
    return (
        f"[backends.{name}]\n"
        'adapter = "braket"\n'
        "health_interval_s = 0.3\n"
        "probe_timeout_s = 5\n"
        f"{extra}"
        f'options = {{ device = "{SV1}", region = "us-east-1", s3_bucket = "results", '
        f's3_prefix = "gw/{name}", endpoint_url = "{url}", poll_interval_s = 0.1, '
        "retry_backoff_s = 0.05, max_retry_backoff_s = 0.5, "
        f"max_concurrent_tasks = {max_concurrent_tasks}{options} }}\n\n"
    )


def _client(gw: Gateway) -> Client:
    return Client(
        gw.address,
        metadata=[("authorization", f"Bearer {OPS.key}")],
        retry=RetryPolicy(max_attempts=1),
    )


def _get_backend(gw: Gateway, name: str) -> backend_pb2.Backend:
    with grpc.insecure_channel(gw.address) as ch:
        return (
            backend_service_pb2_grpc.BackendServiceStub(ch)
            .GetBackend(
                backend_service_pb2.GetBackendRequest(
                    name=f"backends/{name}", view=backend_pb2.BACKEND_VIEW_FULL
                ),
                timeout=10,
                metadata=[("authorization", f"Bearer {OPS.key}")],
            )
            .backend
        )


def _health(gw: Gateway, name: str) -> int:
    with grpc.insecure_channel(gw.address) as ch:
        reply = health_pb2_grpc.HealthStub(ch).Check(
            health_pb2.HealthCheckRequest(service=f"qgateway.backend.{name}"), timeout=5
        )
        return int(reply.status)


def _until(predicate: object, timeout: float, what: str) -> object:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()  # type: ignore[operator]
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {timeout} s")
        time.sleep(0.05)


def _watch_until(client: Client, name: str, state: JobState) -> JobState:
    for job in client.watch(name, timeout=30):
        if job.state is state or job.done:
            return job.state
    raise AssertionError(f"{name} ended its watch without reaching {state}")


@pytest.fixture(scope="module")
def stub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BraketStubProcess]:
    root = tmp_path_factory.mktemp("braket-stub")
    process = BraketStubProcess.start(root / "state", root / "stub.log")
    yield process
    assert process.stop() == 0


@dataclass
class Gateway:
    """The module's gateway; the SIGKILL test kills and restarts it on the same data."""

    process: GatewayProcess
    config: Path
    data: Path
    log: Path

    @property
    def address(self) -> str:
        return self.process.address

    def restart(self) -> None:
        self.process = GatewayProcess.start(self.config, self.log, env=AWS_ENV, start_timeout=300)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, stub: BraketStubProcess) -> Iterator[Gateway]:
    root = tmp_path_factory.mktemp("braket-gateway")
    # Braket bills per task: the price's per_task counts once per task, not per job.
    backends = _backend("sv1", stub.url, f"price = {SV1_PRICE}\n") + _backend(
        "sv1-fragile",
        stub.url,
        "breaker = { failure_threshold = 1, window_s = 60, cooldown_s = 3.0 }\n",
        max_concurrent_tasks=1,
    )
    backends += _backend("sv1-reserved", stub.url, options=f', reservation_arn = "{RESERVATION}"')
    config = write_config(root / "g.toml", root / "data", _ops_toml() + backends)
    gw = Gateway(
        GatewayProcess.start(config, root / "gateway.log", env=AWS_ENV, start_timeout=300),
        config,
        root / "data",
        root / "gateway.log",
    )
    yield gw
    assert gw.process.terminate() == 0


@pytest.fixture(autouse=True)
def _clean_stub(stub: BraketStubProcess) -> Iterator[None]:
    yield
    stub.control("release")
    stub.control("credentials", valid=True)
    stub.control("throttle", count=0)


def test_a_job_is_queued_at_braket_then_runs_with_a_real_result(
    gateway: Gateway, stub: BraketStubProcess
) -> None:
    stub.control("hold", run=True)
    with _client(gateway) as client:
        job = client.submit(TWO_REGISTERS, backend="sv1", shots=64, request_id="sv1-first")
        assert _watch_until(client, job.name, JobState.RUNNING) is JobState.RUNNING
        task = stub.task(job.id)  # the gateway job id is the task's clientToken
        assert task is not None and task["status"] == "QUEUED"
        assert task["tags"]["qgateway:job-name"] == f"jobs/{job.id}"
        assert task["shots"] == 64
        key = f"queue_position/jobs/{job.id}"
        # The task's queue position and the device's queue depth, as the backend's properties.
        props = _until(
            lambda: (p := dict(_get_backend(gateway, "sv1").properties)).get(key) and p,
            10,
            "queue position",
        )
        assert props[key] == "1"  # type: ignore[index]
        _until(
            lambda: dict(_get_backend(gateway, "sv1").properties).get("queue_depth") == "1",
            10,
            "queue depth",
        )
        stub.control("release")
        done = client.wait(job.name, timeout=30)
        assert done.state is JobState.SUCCEEDED, done.error_message
        assert done.result is not None
        assert done.result.counts(register="a") == {"01": 64}
        assert done.result.counts(register="b") == {"011": 64}
        states = [t.state for t in done.state_history]
        assert states[-2:] == [JobState.RUNNING, JobState.SUCCEEDED]
        assert key not in dict(_get_backend(gateway, "sv1").properties)
    task = stub.task(job.id)
    assert task is not None and task["status"] == "COMPLETED"


def test_tasks_carry_the_reservation_and_report_their_execution_time(
    gateway: Gateway, stub: BraketStubProcess
) -> None:
    # The stub's managed simulator reports 1.5 s per task in its results.
    stub.control("usage", execution_ms=1500)
    try:
        with _client(gateway) as client:
            reserved = client.submit(TWO_REGISTERS, backend="sv1-reserved", shots=16)
            plain = client.submit(TWO_REGISTERS, backend="sv1", shots=16)
            done = [client.wait(j.name, timeout=30) for j in (reserved, plain)]
    finally:
        stub.control("usage", execution_ms=None)
    assert [j.state for j in done] == [JobState.SUCCEEDED] * 2, [j.error_message for j in done]
    task = stub.task(reserved.id)
    assert task is not None
    assert task["associations"] == [{"arn": RESERVATION, "type": "RESERVATION_TIME_WINDOW_ARN"}]
    other = stub.task(plain.id)
    assert other is not None and other["associations"] == []
    for job in done:
        assert job.usage is not None and job.usage.shots == 16
        assert job.usage.execution_time.total_seconds() == pytest.approx(1.5)


SWEEP = """OPENQASM 3.0;
include "stdgates.inc";
input float theta;
qubit[2] q;
bit[2] c;
rx(theta) q[1];
c = measure q;
"""


def test_a_sweep_runs_one_task_per_binding_with_its_angles(
    gateway: Gateway, stub: BraketStubProcess
) -> None:
    angles = [[0.0], [3.141592653589793], [0.0]]
    with _client(gateway) as client:
        # Three tasks of 16 shots, estimated and charged as three tasks.
        estimate = client.validate(
            [sampler_pub(SWEEP, shots=16, parameter_values=angles)], backend="sv1"
        )
        assert estimate.cost is not None
        assert math.isclose(estimate.cost.amount, 3 * 0.3 + 48 * 0.001)
        job = client.submit(
            SWEEP, backend="sv1", shots=16, parameter_values=angles, request_id="sv1-sweep"
        )
        done = client.wait(job.name, timeout=30)
        assert done.state is JobState.SUCCEEDED, done.error_message
        assert done.cost is not None
        assert math.isclose(done.cost.amount, 3 * 0.3 + 48 * 0.001)
        assert done.result is not None
        # Braket ran rx(theta) on qubit 1 with each binding's angle: c[1] reads theta / pi.
        assert [done.result.counts(index=i) for i in range(3)] == [
            {"00": 16},
            {"10": 16},
            {"00": 16},
        ]
    tasks = [stub.task(f"{job.id}-{i}") for i in range(3)]
    assert all(t is not None and t["tags"]["qgateway:tasks"] == "3" for t in tasks)
    assert stub.task(job.id) is None  # several tasks: each has its own token


def test_provider_failures_map_to_failure_kinds(gateway: Gateway, stub: BraketStubProcess) -> None:
    with _client(gateway) as client:
        # A ValidationException: the job's own fault, the provider's code in the metadata.
        stub.control("fail", code="ValidationException", status=400, message="bad program")
        job = client.submit(TWO_REGISTERS, backend="sv1", shots=8, request_id="sv1-invalid")
        done = client.wait(job.name, timeout=30)
        assert done.state is JobState.FAILED
        assert done.error is not None
        assert done.error.reason == "PROVIDER_REJECTED"
        assert done.error.code is grpc.StatusCode.FAILED_PRECONDITION
        assert done.error.metadata["providerErrorCode"] == "ValidationException"
        assert stub.task(job.id) is None

        # A task that FAILED at Braket: the backend's fault, Braket's reason in the metadata.
        stub.control("fail", task_failure="device calibration lost")
        job = client.submit(TWO_REGISTERS, backend="sv1", shots=8, request_id="sv1-taskfail")
        done = client.wait(job.name, timeout=30)
        assert done.state is JobState.FAILED
        assert done.error is not None and done.error.reason == "EXECUTION_FAILED"
        assert done.error.metadata["providerFailureReason"] == "device calibration lost"
        task = stub.task(job.id)
        assert task is not None and done.error.metadata["providerJobId"] == task["quantumTaskArn"]

        # Throttling is transient: retried with backoff, the job succeeds, one task.
        before = stub.stats()["calls"].get("CreateQuantumTask", 0)
        stub.control("throttle", count=2)
        job = client.submit(TWO_REGISTERS, backend="sv1", shots=8, request_id="sv1-throttled")
        done = client.wait(job.name, timeout=30)
        assert done.state is JobState.SUCCEEDED, done.error_message
        assert stub.stats()["calls"]["CreateQuantumTask"] - before == 3
        # Throttled at every attempt (5): nothing was made, the job goes back to the queue and
        # runs on a later create instead of failing.
        before = stub.stats()["calls"]["CreateQuantumTask"]
        stub.control("throttle", count=5)
        job = client.submit(TWO_REGISTERS, backend="sv1", shots=8, request_id="sv1-throttled-5")
        done = client.wait(job.name, timeout=30)
        assert done.state is JobState.SUCCEEDED, done.error_message
        assert stub.stats()["calls"]["CreateQuantumTask"] - before == 6
        assert f"job {job.id}: backends/sv1 throttled" in gateway.log.read_text()

        # A 500 after Braket made the task: the retry, same clientToken, finds that task.
        before_creates = stub.stats()
        stub.control("lose_answer", count=1)
        job = client.submit(TWO_REGISTERS, backend="sv1", shots=8, request_id="sv1-lost")
        done = client.wait(job.name, timeout=30)
        assert done.state is JobState.SUCCEEDED, done.error_message
        after = stub.stats()
        assert after["create_calls"] - before_creates["create_calls"] == 2
        assert after["creates"] - before_creates["creates"] == 1


def test_cancel_job_cancels_the_task(gateway: Gateway, stub: BraketStubProcess) -> None:
    stub.control("hold", run=True)
    with _client(gateway) as client:
        job = client.submit(TWO_REGISTERS, backend="sv1", shots=8, request_id="sv1-cancel")
        assert _watch_until(client, job.name, JobState.RUNNING) is JobState.RUNNING
        client.cancel(job.name)
        assert client.wait(job.name, timeout=30).state is JobState.CANCELLED
    task = stub.task(job.id)
    assert task is not None and task["status"] == "CANCELLED"


def test_expired_credentials_take_the_backend_out_and_queued_jobs_wait(
    gateway: Gateway, stub: BraketStubProcess
) -> None:
    name = "sv1-fragile"  # one job at Braket at a time, the breaker opens at one fault
    _until(lambda: _health(gateway, name) == SERVING, 10, "SERVING")
    stub.control("hold", before_create=True)
    with _client(gateway) as client:
        first = client.submit(TWO_REGISTERS, backend=name, shots=8, request_id="fragile-1")
        stub.wait_for(lambda s: s["held_creates"] == 1, 20, "held create")
        waiting = [
            client.submit(TWO_REGISTERS, backend=name, shots=8, request_id=f"fragile-{i}")
            for i in range(2, 5)
        ]
        # The credentials expire while the first create is on its way.
        stub.control("credentials", valid=False, code="ExpiredTokenException")
        _until(lambda: _health(gateway, name) == NOT_SERVING, 10, "NOT_SERVING")
        stub.control("release")
        # The job that met the refusal created nothing: it is queued again, and the breaker
        # counted the refusal as the backend's fault.
        _until(
            lambda: _get_backend(gateway, name).breaker_state == backend_pb2.BREAKER_STATE_OPEN,
            10,
            "breaker OPEN",
        )
        assert _get_backend(gateway, name).status == backend_pb2.BACKEND_STATUS_OFFLINE
        assert stub.task(first.id) is None
        time.sleep(0.5)
        for job in [first, *waiting]:  # queued behind the open breaker, not failed
            assert client.get_job(job.name).state is JobState.QUEUED
        stub.control("credentials", valid=True)
        _until(lambda: _health(gateway, name) == SERVING, 10, "SERVING again")
        for job in [first, *waiting]:  # after the cool-down, every one runs
            finished = client.wait(job.name, timeout=30)
            assert finished.state is JobState.SUCCEEDED, finished.error_message
    for job in [first, *waiting]:
        assert stub.task(job.id) is not None


def test_a_burst_never_passes_twenty_creates_a_second(
    gateway: Gateway, stub: BraketStubProcess
) -> None:
    before = stub.stats()["create_calls"]
    jobs = 45
    with _client(gateway) as client:
        t0 = time.monotonic()
        submitted = [
            client.submit(TWO_REGISTERS, backend="sv1", shots=4, request_id=f"burst-{i}")
            for i in range(jobs)
        ]
        for job in submitted:
            assert client.wait(job.name, timeout=30).state is JobState.SUCCEEDED
        elapsed = time.monotonic() - t0
    stats = stub.stats(since=before)
    assert stats["create_calls"] - before == jobs
    assert stats["max_creates_in_1s"] <= 20
    assert elapsed >= 1.0  # 45 creates at 20/s cannot all go within one second


@pytest.mark.timeout(240)
def test_a_gateway_killed_while_braket_withholds_the_create_answer_never_creates_twice(
    gateway: Gateway, stub: BraketStubProcess
) -> None:
    before = stub.stats()["create_calls"]
    stub.control("hold", create=True)
    with _client(gateway) as client:
        job = client.submit(TWO_REGISTERS, backend="sv1", shots=16, request_id="held-create")
    stub.wait_for(lambda s: s["held_creates"] == 1, 30, "held create")
    gateway.process.kill()  # the task exists at Braket; its ARN never reached the gateway
    stub.control("release")
    db = sqlite3.connect(f"file:{gateway.data / 'qgateway.db'}?mode=ro", uri=True)
    state, remote_id = db.execute(
        "SELECT state, remote_id FROM jobs WHERE id = ?", (job.id,)
    ).fetchone()
    db.close()
    assert (state, remote_id) == ("SUBMITTING", None)

    gateway.restart()
    with _client(gateway) as client:
        done = client.wait(job.name, timeout=30)
        assert done.state is JobState.SUCCEEDED, done.error_message
        assert done.result is not None and done.result.counts(register="b") == {"011": 16}
    assert stub.task(job.id) is not None
    # One create call in all: the restart found the task by its tag, it did not create again.
    assert stub.stats()["create_calls"] - before == 1
