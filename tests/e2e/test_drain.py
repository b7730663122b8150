"""SIGTERM drains: readiness goes NOT_SERVING while liveness stays SERVING, new jobs are refused
UNAVAILABLE, the running job finishes, the queued job stays durable for the next start, and the
process exits 0."""

from __future__ import annotations

import socket
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from qgateway import AbortedError, Client, RetryPolicy, UnavailableError
from qgateway.results import Job, JobResult, JobState

from tests.gateway_process import GatewayProcess, write_config
from tests.rpc import ghz, slow_circuit

BACKENDS = """
[backends.aer-mps]
adapter = "aer"
pool = { min_instances = 1, max_instances = 1 }
options = { method = "matrix_product_state" }
"""
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.mark.timeout(180)
def test_sigterm_drains(tmp_path: Path) -> None:
    data = tmp_path / "data"
    config = write_config(tmp_path / "g.toml", data, BACKENDS, grace_period_s=60)
    gw = GatewayProcess.start(config, tmp_path / "gateway.log")
    once = RetryPolicy(max_attempts=1)
    with Client(gw.address, retry=once) as client, grpc.insecure_channel(gw.address) as ch:
        running = client.submit(slow_circuit(), backend="aer-mps", shots=8000, seed=1)
        queued = client.submit(ghz(3), backend="aer-mps", shots=10, seed=2)
        events = client.watch(running.name, timeout=120)
        for event in events:
            if event.state is JobState.RUNNING:
                break
        health = health_pb2_grpc.HealthStub(ch)
        readiness = health.Watch(
            health_pb2.HealthCheckRequest(service="qgateway.v1.JobService"), timeout=60
        )
        assert next(readiness).status == SERVING

        gw.process.send_signal(15)
        assert next(readiness).status == NOT_SERVING
        readiness.cancel()
        live = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
        assert live.status == SERVING  # draining is alive: no restart by the orchestrator
        with pytest.raises(UnavailableError) as exc:
            client.submit(ghz(2), backend="aer-mps", shots=10, seed=3)
        assert exc.value.reason == "DRAINING"
        # A watcher of a queued job is told it will not finish in this process.
        with pytest.raises(AbortedError) as aborted:
            list(client.watch(queued.name, timeout=30))
        assert aborted.value.reason == "GATEWAY_DRAINING"
        # Come back once this process is gone, or in 5 s: at once, the same drain answers.
        assert aborted.value.retry_delay is not None and 1 <= aborted.value.retry_delay <= 5
        # The running job finishes and its watcher sees it.
        final = [e.state for e in events]
        assert final[-1] is JobState.SUCCEEDED
    assert gw.process.wait(timeout=90) == 0

    db = sqlite3.connect(f"file:{data / 'qgateway.db'}?mode=ro", uri=True)
    states = dict(db.execute("SELECT id, state FROM jobs").fetchall())
    db.close()
    assert states[running.name.removeprefix("jobs/")] == "SUCCEEDED"
    assert states[queued.name.removeprefix("jobs/")] == "QUEUED"  # durable for the next start

    gw = GatewayProcess.start(config, tmp_path / "gateway.log")
    try:
        with Client(gw.address) as client:
            assert client.wait(queued.name, timeout=60).state is JobState.SUCCEEDED
    finally:
        assert gw.terminate() == 0


def _free_port() -> int:
    # The restarted gateway must listen where the clients' channels point.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.mark.timeout(240)
def test_a_restart_is_waited_out_by_runs_and_waits(tmp_path: Path) -> None:
    # A Run or a wait cut by a drain (ABORTED GATEWAY_DRAINING: "the job is safe, repeat the
    # call") reached the caller as an error, and UNAVAILABLE was given up after 1.5 s of
    # back-off: every planned restart failed the calls in flight, whatever their timeouts.
    data = tmp_path / "data"
    port = _free_port()
    config = write_config(tmp_path / "g.toml", data, BACKENDS, grace_period_s=0.5)
    config.write_text(config.read_text().replace('"127.0.0.1:0"', f'"127.0.0.1:{port}"'))
    gw = GatewayProcess.start(config, tmp_path / "gateway.log")
    # The test's budget, not the default's ~21 s: a loaded CI machine may take longer to
    # start the gateway again (the default's sum is a unit test's concern).
    patient = RetryPolicy(max_attempts=40, max_backoff=2.0)
    outcomes: dict[str, object] = {}
    with (
        Client(gw.address, retry=patient) as client,
        Client(gw.address, retry=RetryPolicy(max_attempts=1)) as once,
    ):
        blocker = client.submit(slow_circuit(), backend="aer-mps", shots=30_000, seed=1)
        queued = client.submit(ghz(3), backend="aer-mps", shots=100, seed=2)
        # A watcher of the job still running when the grace period ends was cut UNAVAILABLE
        # with no reason ("nothing was accepted") when the server stopped.
        running = once.watch(blocker.name, timeout=120)
        for event in running:
            if event.state is JobState.RUNNING:
                break

        def run() -> None:
            outcomes["run"] = client.run(
                ghz(3), backend="aer-mps", shots=100, seed=3, request_id="r-1", timeout=180
            )

        def wait() -> None:
            outcomes["wait"] = client.wait(queued.name, timeout=180)

        callers = [threading.Thread(target=f) for f in (run, wait)]
        for caller in callers:
            caller.start()
        gw.terminate()  # drains: the queued jobs' callers are told GATEWAY_DRAINING
        with pytest.raises(AbortedError) as cut:
            list(running)
        assert cut.value.reason == "GATEWAY_DRAINING"
        assert cut.value.metadata["job"] == blocker.name
        assert "still running when the grace period ended" in cut.value.message
        gw = GatewayProcess.start(config, tmp_path / "gateway.log")
        try:
            for caller in callers:
                caller.join(timeout=180)
            assert not any(caller.is_alive() for caller in callers)
            ran, waited = outcomes["run"], outcomes["wait"]
            assert isinstance(ran, JobResult) and isinstance(waited, Job)
            assert waited.state is JobState.SUCCEEDED and waited.result is not None
            for result in (ran, waited.result):
                counts = result.counts()
                assert set(counts) == {"000", "111"} and sum(counts.values()) == 100
            # One job for the Run's request_id, however many times it was sent.
            names = {job.name for job in client.list_jobs()}
            assert len(names) == 3 and {blocker.name, queued.name} < names
        finally:
            assert gw.terminate() == 0


@pytest.mark.timeout(180)
def test_a_second_signal_ends_the_grace_period(tmp_path: Path) -> None:
    # Ctrl-C twice (or SIGTERM twice) waited out the whole grace period all the same.
    data = tmp_path / "data"
    config = write_config(tmp_path / "g.toml", data, BACKENDS, grace_period_s=3600)
    gw = GatewayProcess.start(config, tmp_path / "gateway.log")
    try:
        running = _second_signal(gw)
    finally:
        if gw.process.poll() is None:  # a failure above must not leave it running
            gw.kill()
    db = sqlite3.connect(f"file:{data / 'qgateway.db'}?mode=ro", uri=True)
    (state,) = db.execute(
        "SELECT state FROM jobs WHERE id = ?", (running.removeprefix("jobs/"),)
    ).fetchone()
    db.close()
    assert state == "RUNNING"  # re-queued when the gateway starts again
    assert "ending the grace period" in (tmp_path / "gateway.log").read_text()


def _second_signal(gw: GatewayProcess) -> str:
    """SIGTERM, then SIGINT once draining; the name of the job left running."""
    with (
        Client(gw.address, retry=RetryPolicy(max_attempts=1)) as client,
        grpc.insecure_channel(gw.address) as ch,
    ):
        running = client.submit(slow_circuit(), backend="aer-mps", shots=30_000, seed=1)
        for event in client.watch(running.name, timeout=120):
            if event.state is JobState.RUNNING:
                break
        readiness = health_pb2_grpc.HealthStub(ch).Watch(
            health_pb2.HealthCheckRequest(service="qgateway.v1.JobService"), timeout=60
        )
        assert next(readiness).status == SERVING
        gw.process.send_signal(15)
        assert next(readiness).status == NOT_SERVING  # draining: the first signal was taken
        readiness.cancel()
        gw.process.send_signal(2)
        # Well inside the hour of grace: the job is left to the next start.
        assert gw.process.wait(timeout=90) == 0
    return running.name


SLOW_TO_START = """
[backends.slow]
adapter = "aer"
pool = { min_instances = 1, max_instances = 1 }
faults = { latency_s = 4.0 }
"""


@pytest.mark.timeout(120)
def test_a_gateway_stopped_while_starting_never_turns_ready(tmp_path: Path) -> None:
    # SIGTERM while the gateway started (its backends' first probes can take up to
    # probe_timeout_s) was acted on only after it had announced itself ready, turned readiness
    # SERVING and dispatched recovered jobs.
    port = _free_port()
    config = write_config(tmp_path / "g.toml", tmp_path / "data", SLOW_TO_START)
    config.write_text(config.read_text().replace('"127.0.0.1:0"', f'"127.0.0.1:{port}"'))
    with (tmp_path / "gateway.log").open("w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve", "--config", str(config)],
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            cwd=Path(__file__).resolve().parents[2],
        )
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            health = health_pb2_grpc.HealthStub(ch)
            # Liveness answers once the port is open, while the slow backend's first probe
            # (4 s of injected latency) still holds the start.
            request = health_pb2.HealthCheckRequest(service="")
            assert health.Check(request, wait_for_ready=True, timeout=60).status == SERVING
            readiness = health_pb2.HealthCheckRequest(service="qgateway.v1.JobService")
            assert health.Check(readiness, timeout=10).status == NOT_SERVING
        process.send_signal(15)
        out, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0
    assert out == ""  # no "qgateway listening on" line: never announced ready
    assert "asked to stop while starting" in (tmp_path / "gateway.log").read_text()
