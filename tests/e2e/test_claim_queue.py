"""The store-backed claim queue end to end (issue 8): a gateway with `server.queue = "store"`
claims jobs as leases in SQLite; after a SIGKILL, the dead process's claim on a running job
lapses and the restarted gateway runs the job again, once, to success — with no start-up
recovery, the way a replica would take over."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
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


@pytest.mark.timeout(240)
def test_replicas_hear_each_others_jobs_and_take_over_a_dead_ones(tmp_path: Path) -> None:
    # SQLite tells no process of another's commits: a wait on replica B for a job replica A
    # ran never ended (heartbeats of a stale QUEUED until the deadline), an idle B claimed
    # none of the jobs A queued, and none of those A left behind when it died.
    data = tmp_path / "data"
    config = _config(tmp_path / "g.toml", data)
    log = tmp_path / "gateway.log"
    a = GatewayProcess.start(config, log)
    b = GatewayProcess.start(config, log)
    try:
        with Client(a.address) as on_a, Client(b.address) as on_b:
            jobs = [on_a.submit(ghz(2), backend="slow", shots=20, seed=i) for i in range(4)]
            # Each replica runs one slow job at a time: B, which was sent nothing, takes some.
            first = on_b.wait(jobs[0].name, timeout=60)  # whoever ran it, B hears it end
            assert first.state is JobState.SUCCEEDED
            # A holds a running job (and maybe a queued one): left to its lapsing lease, with
            # nothing sent to B from now on.
            a.kill()
            for job in jobs:
                assert on_b.wait(job.name, timeout=90).state is JobState.SUCCEEDED
    finally:
        a.kill()
        b.terminate()
    with sqlite3.connect(data / "qgateway.db") as db:
        rows = db.execute(
            "SELECT owner, count(*) FROM jobs JOIN (SELECT job_id, count(*) AS owner FROM results"
            " GROUP BY job_id) ON job_id = jobs.id GROUP BY owner"
        ).fetchall()
    assert rows == [(1, 4)]  # four jobs, one result each


@pytest.mark.timeout(120)
def test_a_migration_older_replicas_cannot_run_beside_waits_for_them_to_stop(
    tmp_path: Path,
) -> None:
    """Migration 17 drops jobs.spec, which a running gateway of an older version reads and
    writes: a new gateway started beside it (sharing the data directory) refuses to start,
    changing nothing, and migrates once it is alone."""
    from gateway.store.data_dir_lock import lock_data_dir
    from tests.gateway_process import write_config
    from tests.unit.test_sqlite_store import _database_at

    data = tmp_path / "data"
    _database_at(data / "qgateway.db", 16)
    config = write_config(
        tmp_path / "g.toml",
        data,
        '[backends.aer]\nadapter = "aer"\n',
        server='queue = "store"',
    )
    older = lock_data_dir(data, exclusive=False)  # a running gateway of the older version
    try:
        # The real command, with the wait for a peer of this version to apply the migration
        # (30 s) cut to 1 s: the refusal, not the wait, is what this test is about.
        shorter_wait = (
            "import gateway.store.sqlite as s; s.PEER_MIGRATION_WAIT_S = 1.0; "
            "from gateway.cli import main; raise SystemExit(main())"
        )
        refused = subprocess.run(
            [sys.executable, "-c", shorter_wait, "serve", "--config", str(config)],
            capture_output=True,
            text=True,
            timeout=90,
            stdin=subprocess.DEVNULL,
        )
    finally:
        older.release()
    assert refused.returncode == 2, refused.stderr[-2000:]
    assert "schema migration 17" in refused.stderr and "Traceback" not in refused.stderr
    with sqlite3.connect(data / "qgateway.db") as db:
        assert db.execute("SELECT max(version) FROM schema_migrations").fetchone() == (16,)
    gw = GatewayProcess.start(config, tmp_path / "gateway.log", start_timeout=90)
    try:
        with Client(gw.address) as client:
            assert client.run(ghz(2), shots=10, seed=1).counts().keys() <= {"00", "11"}
    finally:
        gw.terminate()
