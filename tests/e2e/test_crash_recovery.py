"""SIGKILL while jobs run and wait: after a restart every acknowledged job succeeds exactly once."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import grpc
import psutil
import pytest
from qgateway.v1 import job_pb2, job_service_pb2, job_service_pb2_grpc

from tests.gateway_process import GatewayProcess, children_of, write_config
from tests.rpc import ghz, sampler_spec, slow_circuit

BACKENDS = """
[backends.aer]
adapter = "aer"
pool = { min_instances = 1, max_instances = 1 }
options = { method = "statevector" }

[backends.aer-mps]
adapter = "aer"
pool = { min_instances = 1, max_instances = 1 }
options = { method = "matrix_product_state" }
"""


def watch_until(stub: job_service_pb2_grpc.JobServiceStub, name: str, states: set[int]) -> int:
    for event in stub.WatchJob(job_service_pb2.WatchJobRequest(name=name), timeout=90):
        if event.job.state in states:
            return event.job.state
    raise AssertionError(f"{name} ended without reaching {states}")


@pytest.mark.timeout(180)
def test_sigkill_with_running_and_queued_jobs_loses_nothing(tmp_path: Path) -> None:
    data = tmp_path / "data"
    config = write_config(tmp_path / "g.toml", data, BACKENDS)
    gw = GatewayProcess.start(config, tmp_path / "gateway.log")
    acknowledged: list[str] = []
    slow: list[str] = []
    with grpc.insecure_channel(gw.address) as channel:
        stub = job_service_pb2_grpc.JobServiceStub(channel)
        for backend, shots in (("aer", 6000), ("aer-mps", 12000)):
            reply = stub.SubmitJob(
                job_service_pb2.SubmitJobRequest(
                    spec=sampler_spec(slow_circuit(), backend=backend, shots=shots)
                ),
                timeout=30,
            )
            slow.append(reply.job.name)
        acknowledged += slow
        for i in range(12):
            backend = "aer" if i % 2 else "aer-mps"
            reply = stub.SubmitJob(
                job_service_pb2.SubmitJobRequest(
                    request_id=f"quick-{i}", spec=sampler_spec(ghz(4), backend=backend, seed=i)
                ),
                timeout=30,
            )
            acknowledged.append(reply.job.name)
        for name in slow:
            watch_until(stub, name, {job_pb2.JOB_STATE_RUNNING})
        queued = stub.ListJobs(
            job_service_pb2.ListJobsRequest(filter="state = QUEUED", page_size=100),
            timeout=10,
        )
        assert len(queued.jobs) >= 10
        for name in slow:  # still running on both backends at the moment of the kill
            job = stub.GetJob(job_service_pb2.GetJobRequest(name=name), timeout=10).job
            assert job.state == job_pb2.JOB_STATE_RUNNING

    workers = children_of(gw.process.pid)
    assert len(workers) >= 2
    gw.kill()
    _, alive = psutil.wait_procs(workers, timeout=15)
    assert not alive, f"orphaned worker processes: {alive}"

    gw = GatewayProcess.start(config, tmp_path / "gateway.log")
    try:
        with grpc.insecure_channel(gw.address) as channel:
            stub = job_service_pb2_grpc.JobServiceStub(channel)
            # A client retrying after the crash gets the same job back, not a second run.
            again = stub.SubmitJob(
                job_service_pb2.SubmitJobRequest(
                    request_id="quick-0", spec=sampler_spec(ghz(4), backend="aer-mps", seed=0)
                ),
                timeout=30,
            )
            assert again.job.name == acknowledged[2] and not again.created
            for name in acknowledged:
                state = watch_until(
                    stub,
                    name,
                    {
                        job_pb2.JOB_STATE_SUCCEEDED,
                        job_pb2.JOB_STATE_FAILED,
                        job_pb2.JOB_STATE_CANCELLED,
                    },
                )
                assert state == job_pb2.JOB_STATE_SUCCEEDED, name
            for name in slow:
                job = stub.GetJob(job_service_pb2.GetJobRequest(name=name), timeout=30).job
                assert job.execution.attempts == 2  # interrupted once, run again
                result = stub.GetJobResult(
                    job_service_pb2.GetJobResultRequest(name=f"{name}/result"), timeout=30
                ).result
                counts = result.pub_results[0].sampler.registers[0].counts[0]
                assert sum(counts.counts) in (6000, 12000)
    finally:
        workers = children_of(gw.process.pid)
        assert gw.terminate() == 0
        _, alive = psutil.wait_procs(workers, timeout=15)
        assert not alive

    db = sqlite3.connect(f"file:{data / 'qgateway.db'}?mode=ro", uri=True)
    ids = {name.removeprefix("jobs/") for name in acknowledged}
    rows = db.execute("SELECT id, state FROM jobs").fetchall()
    assert {r[0] for r in rows} == ids and len(rows) == len(ids)  # one record per job
    assert {r[1] for r in rows} == {"SUCCEEDED"}
    results = db.execute("SELECT job_id, COUNT(*) FROM results GROUP BY job_id").fetchall()
    assert {r[0] for r in results} == ids and all(r[1] == 1 for r in results)  # one result each
