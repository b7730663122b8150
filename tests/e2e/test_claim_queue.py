"""The store-backed claim queue end to end (issue 8): a gateway with `server.queue = "store"`
claims jobs as leases in SQLite; after a SIGKILL, the dead process's claim on a running job
lapses and the restarted gateway runs the job again, once, to success — with no start-up
recovery, the way a replica would take over."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest
from qgateway import Client
from qgateway.results import JobState

from tests.gateway_process import GatewayProcess
from tests.rpc import ghz

LEASE_S = 2.0


def _config(path: Path, data: Path) -> Path:
    path.write_text(
        f'data_dir = "{data}"\n\n[server]\nlisten = "127.0.0.1:0"\ngrace_period_s = 1\n'
        f'queue = "store"\nlease_s = {LEASE_S}\n\n'
        '[backends.aer]\nadapter = "aer"\npool = { min_instances = 1, max_instances = 1 }\n\n'
        # Every job takes 3 s in its worker: long enough to be killed mid-run.
        '[backends.slow]\nadapter = "aer"\npool = { min_instances = 1, max_instances = 1 }\n'
        "faults = { latency_s = 3.0 }\n"
    )
    return path


@pytest.mark.timeout(180)
def test_a_dead_gateways_claim_lapses_and_the_job_runs_again(tmp_path: Path) -> None:
    data = tmp_path / "data"
    config = _config(tmp_path / "g.toml", data)
    log = tmp_path / "gateway.log"
    gw = GatewayProcess.start(config, log)
    try:
        with Client(gw.address) as client:
            # The claim queue serves ordinary traffic.
            done = client.run(ghz(3), backend="aer", shots=50, seed=7)
            assert set(done.counts()) <= {"000", "111"} and sum(done.counts().values()) == 50
            job = client.submit(ghz(2), backend="slow", shots=20, seed=3)
            for event in client.watch(job.name):
                if event.state is JobState.RUNNING:
                    break
    finally:
        gw.kill()
    with sqlite3.connect(data / "qgateway.db") as db:
        owner, state = db.execute(
            "SELECT lease_owner, state FROM jobs WHERE id = ?", (job.name.split("/")[1],)
        ).fetchone()
    assert owner is not None and state == "RUNNING"  # held by the process that died

    killed_at = time.monotonic()
    gw = GatewayProcess.start(config, log)
    try:
        with Client(gw.address) as client:
            final = client.wait(job.name, timeout=90)
            assert final.state is JobState.SUCCEEDED
            assert time.monotonic() - killed_at >= LEASE_S  # not before the lease lapsed
            counts = client.get_result(job.name, timeout=30).counts()
            assert set(counts) <= {"00", "11"} and sum(counts.values()) == 20
            listed = list(client.list_jobs(filter='backend = "backends/slow"'))
            assert [j.name for j in listed] == [job.name]  # one record
    finally:
        gw.terminate()
    with sqlite3.connect(data / "qgateway.db") as db:
        attempts, results, new_owner = db.execute(
            "SELECT attempts, (SELECT count(*) FROM results WHERE job_id = jobs.id), lease_owner"
            " FROM jobs WHERE id = ?",
            (job.name.split("/")[1],),
        ).fetchone()
    assert attempts == 2 and results == 1 and new_owner is None  # ran again, one result
