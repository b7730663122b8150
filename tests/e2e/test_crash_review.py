"""Crash review: SIGKILL during a concurrent batch of SubmitJob/CancelJob/CloseSession under a
shot quota, with the store (lease) queue, at fixed-seed moments; after each restart every
acknowledged request_id maps to the same job, every job ends once with one result, a CancelJob
answered CANCELLING ends CANCELLED, the quota ledger and session totals match the jobs, no
worker of the killed gateway is left, ListJobs pages each job once, and the database is sound.

No violation was found in the review (42 kill cycles on both queues); this passing probe keeps
one cycle (~15 s).
"""

from __future__ import annotations

import json
import random
import sqlite3
import threading
import time
from pathlib import Path

import grpc
import psutil
import pytest
from qgateway.v1 import (
    job_pb2,
    session_pb2,
    session_service_pb2,
    session_service_pb2_grpc,
)
from qgateway.v1 import job_service_pb2 as js
from qgateway.v1 import job_service_pb2_grpc as jsg

from gateway.security.api_keys import generate_key
from tests.gateway_process import GatewayProcess, children_of, keys_toml, write_config
from tests.rpc import ghz, sampler_spec, slow_circuit

KEY = generate_key("crashreview")
MD = [("authorization", f"Bearer {KEY.key}")]
FINAL = {job_pb2.JOB_STATE_SUCCEEDED, job_pb2.JOB_STATE_FAILED, job_pb2.JOB_STATE_CANCELLED}
BACKENDS = """
[backends.aer]
adapter = "aer"
pool = { min_instances = 2, max_instances = 2 }
options = { method = "statevector" }

[tenants.crashreview.policy]
quota = { shots = 100000000 }
""" + keys_toml(KEY)


def shots_of(i: int) -> int:
    return 400 + i if i % 10 == 0 else 50 + i


def spec_of(i: int) -> job_pb2.JobSpec:
    circuit = slow_circuit() if i % 10 == 0 else ghz(3)
    return sampler_spec(circuit, backend="aer", shots=shots_of(i), seed=i)


class World:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.sent: dict[str, int] = {}
        self.acked: dict[str, str] = {}
        self.cancelled: dict[str, int] = {}
        self.closed: set[str] = set()
        self.sessions: dict[int, str] = {}


def workload(address: str, w: World, cycle: int, rng: random.Random) -> list[threading.Thread]:
    channel = grpc.insecure_channel(address)
    jobs = jsg.JobServiceStub(channel)
    sessions = session_service_pb2_grpc.SessionServiceStub(channel)

    def submitter(t: int) -> None:
        try:
            for k in range(8):
                i = cycle * 100 + t * 10 + k
                rid, spec = f"r-{i}", spec_of(i)
                if t == 2:  # jobs inside sessions, closed every 3 jobs
                    if k // 3 not in w.sessions:
                        made = sessions.CreateSession(
                            session_service_pb2.CreateSessionRequest(
                                request_id=f"s-{cycle}-{k // 3}",
                                session=session_pb2.Session(backend="backends/aer"),
                            ),
                            metadata=MD,
                            timeout=10,
                        )
                        w.sessions[k // 3] = made.session.name
                    spec.session = w.sessions[k // 3]
                with w.lock:
                    w.sent[rid] = i
                reply = jobs.SubmitJob(
                    js.SubmitJobRequest(request_id=rid, spec=spec), metadata=MD, timeout=10
                )
                with w.lock:
                    w.acked[rid] = reply.job.name
                if t == 2 and k % 3 == 2:
                    sessions.CloseSession(
                        session_service_pb2.CloseSessionRequest(name=spec.session),
                        metadata=MD,
                        timeout=10,
                    )
                    with w.lock:
                        w.closed.add(spec.session)
                if t == 1 and k % 2 == 0:
                    name = rng.choice(sorted(w.acked.values()))
                    try:
                        answer = jobs.CancelJob(
                            js.CancelJobRequest(name=name), metadata=MD, timeout=10
                        )
                    except grpc.RpcError as err:
                        if err.code() != grpc.StatusCode.FAILED_PRECONDITION:
                            raise
                    else:
                        with w.lock:
                            w.cancelled[name] = answer.job.state
        except grpc.RpcError:
            return  # the gateway was killed under this call

    w.sessions = {}
    threads = [threading.Thread(target=submitter, args=(t,), daemon=True) for t in range(3)]
    for thread in threads:
        thread.start()
    return threads


def check(address: str, w: World, db_path: Path) -> None:
    with grpc.insecure_channel(address) as channel:
        jobs = jsg.JobServiceStub(channel)
        for rid, i in sorted(w.sent.items()):
            if i % 100 // 10 == 2:
                continue  # its session may be closed: checked in the database only
            reply = jobs.SubmitJob(
                js.SubmitJobRequest(request_id=rid, spec=spec_of(i)), metadata=MD, timeout=15
            )
            if rid in w.acked:
                assert (reply.job.name, reply.created) == (w.acked[rid], False), rid
            w.acked[rid] = reply.job.name
        by_name = {name: rid for rid, name in w.acked.items()}
        deadline = time.monotonic() + 60
        for name in sorted(by_name):
            while True:
                job = jobs.GetJob(js.GetJobRequest(name=name), metadata=MD, timeout=10).job
                if job.state in FINAL:
                    break
                assert time.monotonic() < deadline, f"{name} stuck {job.state}"
                time.sleep(0.2)
            if job.state == job_pb2.JOB_STATE_SUCCEEDED:
                result = jobs.GetJobResult(
                    js.GetJobResultRequest(name=f"{name}/result"), metadata=MD, timeout=30
                ).result
                counts = result.pub_results[0].sampler.registers[0].counts[0]
                assert sum(counts.counts) == shots_of(w.sent[by_name[name]]), name
        seen: list[str] = []
        token = ""
        while True:
            page = jobs.ListJobs(
                js.ListJobsRequest(page_size=7, page_token=token), metadata=MD, timeout=10
            )
            seen += [j.name for j in page.jobs]
            token = page.next_page_token
            if not token:
                break
        assert len(seen) == len(set(seen)) and set(by_name) <= set(seen)

    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert db.execute("PRAGMA foreign_key_check").fetchall() == []
        rows = dict(db.execute("SELECT id, state FROM jobs").fetchall())
        assert {n.removeprefix("jobs/") for n in by_name} <= set(rows)
        results = dict(db.execute("SELECT job_id, COUNT(*) FROM results GROUP BY job_id"))
        assert set(results) == {j for j, s in rows.items() if s == "SUCCEEDED"}
        assert set(results.values()) <= {1}
        for name, answered in w.cancelled.items():
            if answered in (job_pb2.JOB_STATE_CANCELLING, job_pb2.JOB_STATE_CANCELLED):
                assert rows[name.removeprefix("jobs/")] == "CANCELLED", name
        ledger = {
            r[0]: r[1:]
            for r in db.execute(
                "SELECT job_id, state, shots_reserved, shots_used FROM quota_ledger"
            )
        }
        expect = {"SUCCEEDED": "SETTLED", "FAILED": "RELEASED", "CANCELLED": "RELEASED"}
        for job_id, state in rows.items():
            assert ledger[job_id][0] == expect[state], job_id
            if state == "SUCCEEDED":
                assert ledger[job_id][2] == ledger[job_id][1], job_id
        totals = db.execute("SELECT sum(shots_reserved), sum(shots_used) FROM quota_totals")
        assert tuple(totals.fetchone()) == (0, sum(v[2] for v in ledger.values()))
        for session in w.closed:
            state = db.execute(
                "SELECT state FROM sessions WHERE id = ?", (session.removeprefix("sessions/"),)
            ).fetchone()
            assert state is not None and state[0] in ("CLOSING", "CLOSED", "FAILED"), session
        for session_id, shots_total in db.execute("SELECT id, shots_total FROM sessions"):
            executions = db.execute(
                "SELECT execution FROM jobs WHERE session_id = ? AND execution IS NOT NULL"
                " AND state IN ('SUCCEEDED', 'FAILED', 'CANCELLED')",
                (session_id,),
            )
            used = [json.loads(e).get("usage") for (e,) in executions]
            assert shots_total == sum(u["shots"] for u in used if u), session_id
    finally:
        db.close()


@pytest.mark.timeout(120)
def test_sigkill_mid_batch_with_store_queue_keeps_invariants(tmp_path: Path) -> None:
    rng = random.Random(20261205)
    config = write_config(
        tmp_path / "g.toml", tmp_path / "data", BACKENDS, server='queue = "store"\nlease_s = 2\n'
    )
    log = tmp_path / "gateway.log"
    w = World()
    gw = GatewayProcess.start(config, log)
    try:
        for cycle in range(1):
            threads = workload(gw.address, w, cycle, rng)
            time.sleep(rng.uniform(0.1, 1.0))
            workers = children_of(gw.pid)
            gw.kill()
            for thread in threads:
                thread.join(15)
            _, alive = psutil.wait_procs(workers, timeout=15)
            assert not alive, f"orphaned worker processes: {alive}"
            gw = GatewayProcess.start(config, log)
            check(gw.address, w, tmp_path / "data" / "qgateway.db")
        assert w.acked
    finally:
        workers = children_of(gw.pid)
        gw.terminate()
        psutil.wait_procs(workers, timeout=15)
