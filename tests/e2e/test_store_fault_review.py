"""Review: a real gateway whose SQLite store misbehaves (a lock held by an operator's shell, and
a start beside that lock). The finding is fixed (a start beside a held lock waits for it, logging
why, instead of dying with a traceback); the other test is a probe of what held."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from qgateway.v1 import job_pb2, job_service_pb2, job_service_pb2_grpc

from tests.gateway_process import GatewayProcess, write_config
from tests.rpc import ghz, sampler_spec, status_of

BACKENDS = """
[backends.aer]
adapter = "aer"
pool = { min_instances = 1, max_instances = 1 }
"""
READINESS = "qgateway.v1.JobService"


def _run(stub: job_service_pb2_grpc.JobServiceStub, request_id: str, seed: int) -> job_pb2.Job:
    request = job_service_pb2.RunRequest(
        request_id=request_id, spec=sampler_spec(ghz(3), seed=seed)
    )
    job = stub.Run(request, timeout=60).job
    assert job.state == job_pb2.JobState.JOB_STATE_SUCCEEDED
    return job


@pytest.mark.timeout(120)
def test_a_lock_held_by_an_operator_shell_is_unavailable_then_clears(tmp_path: Path) -> None:
    # BEGIN IMMEDIATE held in a sqlite3 shell past busy_timeout. SubmitJob answers UNAVAILABLE
    # STORE_UNAVAILABLE with RetryInfo and stores nothing; readiness answers at once, not
    # ready; once the lock goes it is ready again and the same request_id is stored and runs,
    # once.
    data = tmp_path / "data"
    gw = GatewayProcess.start(write_config(tmp_path / "g.toml", data, BACKENDS), tmp_path / "g.log")
    try:
        with grpc.insecure_channel(gw.address) as channel:
            stub = job_service_pb2_grpc.JobServiceStub(channel)
            health = health_pb2_grpc.HealthStub(channel)
            _run(stub, "warm", 1)
            shell = sqlite3.connect(data / "qgateway.db", isolation_level=None)
            try:
                shell.execute("BEGIN IMMEDIATE")
                request = job_service_pb2.SubmitJobRequest(
                    request_id="during-lock", spec=sampler_spec(ghz(3), seed=2)
                )
                with pytest.raises(grpc.RpcError) as refused:
                    stub.SubmitJob(request, timeout=30)
                started = time.monotonic()
                ready = health.Check(health_pb2.HealthCheckRequest(service=READINESS), timeout=5)
                # At once: a readiness that waited on the held lock would take the store's
                # busy_timeout (5 s). Half of that, not 1 s, bounds one call through a gateway
                # that shares two cores with the other test worker and its gateways.
                assert time.monotonic() - started < 2.5
                # Not ready while the store cannot write: a mesh sends calls elsewhere.
                assert ready.status == health_pb2.HealthCheckResponse.NOT_SERVING
            finally:
                shell.execute("ROLLBACK")
                shell.close()
            # Ready again once a probe write commits and none failed for the hold (5 s).
            watch = health.Watch(health_pb2.HealthCheckRequest(service=READINESS), timeout=60)
            for answer in watch:
                if answer.status == health_pb2.HealthCheckResponse.SERVING:
                    watch.cancel()
                    break
            info = status_of(refused.value)
            assert info.code == grpc.StatusCode.UNAVAILABLE, info
            assert info.reason == "STORE_UNAVAILABLE" and info.retry_delay_s, info
            assert info.metadata.get("sqliteError", "").startswith("SQLITE_BUSY"), info
            listed = stub.ListJobs(job_service_pb2.ListJobsRequest(), timeout=30).jobs
            assert len(listed) == 1  # the refused submission stored nothing
            job = stub.SubmitJob(request, timeout=30).job
            again = stub.SubmitJob(request, timeout=30).job
            assert again.name == job.name
            for event in stub.WatchJob(job_service_pb2.WatchJobRequest(name=job.name), timeout=60):
                if event.job.state == job_pb2.JobState.JOB_STATE_SUCCEEDED:
                    break
            else:
                raise AssertionError("the job stored after the lock never succeeded")
    finally:
        gw.terminate(20)


@pytest.mark.timeout(120)
def test_a_start_beside_a_held_lock_waits_for_it(tmp_path: Path) -> None:
    data = tmp_path / "data"
    config = write_config(tmp_path / "g.toml", data, BACKENDS)
    log = tmp_path / "g.log"
    GatewayProcess.start(config, log).terminate(20)  # the database exists, fully migrated
    # Released by the thread below: not tied to the thread that opened it.
    shell = sqlite3.connect(data / "qgateway.db", isolation_level=None, check_same_thread=False)
    shell.execute("BEGIN IMMEDIATE")
    size = log.stat().st_size
    released = threading.Event()

    def release() -> None:
        # The lock goes once the new start gave up, or after 20 s (a long but passing fault).
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with log.open("rb") as f:
                f.seek(size)
                if b"holds the database's write lock" in f.read():
                    break
            released.wait(0.05)
        shell.execute("ROLLBACK")
        released.set()

    releaser = threading.Thread(target=release, daemon=True)
    releaser.start()
    gw = None
    try:
        gw = GatewayProcess.start(config, log, start_timeout=90)
        with grpc.insecure_channel(gw.address) as channel:
            _run(job_service_pb2_grpc.JobServiceStub(channel), "after-start", 1)
    finally:
        released.wait(30)
        releaser.join(30)
        shell.close()
        if gw is not None:
            gw.terminate(20)
