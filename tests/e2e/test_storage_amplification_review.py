"""An attacker's review of what the gateway writes and keeps, over real gRPC: requests that make
it store far more than they carry or than the documented limits allow, or that keep retention
from reclaiming space.

One gateway (aer priced per task, so jobs carry a cost); a user of tenant "alice". The
retention sweep runs only every 10 minutes and deletes jobs at least 7 days old, so the test
runs the gateway's own RetentionSweep, with a clock a year ahead, on a copy of the database the
gateway wrote (sqlite3's backup API: a consistent snapshot of the live WAL database).
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from qgateway.v1 import (
    job_pb2,
    job_service_pb2,
    job_service_pb2_grpc,
    session_pb2,
    session_service_pb2,
    session_service_pb2_grpc,
)

from gateway.jobs.retention_sweep import RetentionSweep, Swept
from gateway.security.api_keys import generate_key
from gateway.store.sqlite import SqliteStore
from tests.gateway_process import GatewayProcess, keys_toml, write_config
from tests.rpc import ghz, sampler_spec

ALICE = generate_key("alice")
FINAL = {job_pb2.JOB_STATE_SUCCEEDED, job_pb2.JOB_STATE_FAILED, job_pb2.JOB_STATE_CANCELLED}
JOB_RETENTION_S = 90 * 86400.0  # server.job_retention_days' default

CONFIG = """
[backends.aer]
adapter = "aer"
pool = { min_instances = 1, max_instances = 1 }
price = { per_task = 0.5, per_shot = 0.0, unit = "USD" }
"""


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    root = tmp_path_factory.mktemp("storage-review")
    config = write_config(root / "g.toml", root / "data", CONFIG + keys_toml(ALICE))
    process = GatewayProcess.start(config, root / "gateway.log")
    yield process
    assert process.terminate() == 0, process.log_path.read_text()[-3000:]


@pytest.fixture(scope="module")
def channel(gw: GatewayProcess) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(gw.address) as ch:
        yield ch


def _md() -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {ALICE.key}")]


def _db_path(gw: GatewayProcess) -> Path:
    return gw.log_path.parent / "data" / "qgateway.db"


def _final(jobs: job_service_pb2_grpc.JobServiceStub, name: str) -> job_pb2.Job:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        job = jobs.GetJob(job_service_pb2.GetJobRequest(name=name), metadata=_md(), timeout=10)
        if job.job.state in FINAL:
            return job.job  # type: ignore[no-any-return]
        time.sleep(0.05)
    raise AssertionError(f"{name} did not end within 30 s")


def _closed(sessions: session_service_pb2_grpc.SessionServiceStub, name: str) -> Any:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        reply = sessions.GetSession(
            session_service_pb2.GetSessionRequest(name=name), metadata=_md(), timeout=10
        )
        if reply.session.state == session_pb2.SESSION_STATE_CLOSED:
            return reply.session
        time.sleep(0.05)
    raise AssertionError(f"{name} did not close within 30 s")


def _snapshot(source: Path, target: Path) -> None:
    """A consistent copy of the live database (its WAL included)."""
    with (
        sqlite3.connect(f"file:{source}?mode=ro", uri=True) as live,
        sqlite3.connect(target) as copy,
    ):
        live.backup(copy)
    copy.close()
    live.close()


def _count(db: Path, table: str) -> int:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


async def _sweep_a_year_later(db: Path) -> Swept:
    store = SqliteStore(db)
    await store.open()
    try:
        later = datetime.now(UTC) + timedelta(days=365)
        return await RetentionSweep(store, lambda: later, JOB_RETENTION_S).sweep()
    finally:
        await store.close()


# ----------------------------------------------------------------------------------- findings


def test_retention_deletes_an_ended_session_whose_jobs_were_priced(
    gw: GatewayProcess, channel: grpc.Channel, tmp_path: Path
) -> None:
    """A session that ran one priced job (three small requests by any user) left cost rows
    that named it: past job_retention_days every sweep failed 'FOREIGN KEY constraint
    failed' and rolled its whole batch back, so nothing of any tenant was deleted again."""
    jobs = job_service_pb2_grpc.JobServiceStub(channel)  # type: ignore[no-untyped-call]
    sessions = session_service_pb2_grpc.SessionServiceStub(channel)  # type: ignore[no-untyped-call]
    session = sessions.CreateSession(
        session_service_pb2.CreateSessionRequest(
            session=session_pb2.Session(backend="backends/aer")
        ),
        metadata=_md(),
        timeout=10,
    ).session
    in_session = sampler_spec(ghz(2), shots=8, seed=3)
    in_session.session = session.name
    priced = jobs.SubmitJob(
        job_service_pb2.SubmitJobRequest(spec=in_session), metadata=_md(), timeout=30
    ).job
    # Another job of no session: the sweep that fails takes it down with it.
    alone = jobs.SubmitJob(
        job_service_pb2.SubmitJobRequest(spec=sampler_spec(ghz(2), shots=8, seed=4)),
        metadata=_md(),
        timeout=30,
    ).job
    done = _final(jobs, priced.name)
    assert done.state == job_pb2.JOB_STATE_SUCCEEDED
    assert done.cost.amount == pytest.approx(0.5) and done.cost.unit == "USD"
    assert _final(jobs, alone.name).state == job_pb2.JOB_STATE_SUCCEEDED
    sessions.CloseSession(
        session_service_pb2.CloseSessionRequest(name=session.name), metadata=_md(), timeout=10
    )
    _closed(sessions, session.name)

    copy = tmp_path / "qgateway.db"
    _snapshot(_db_path(gw), copy)
    jobs_before, sessions_before = _count(copy, "jobs"), _count(copy, "sessions")
    assert jobs_before >= 2 and sessions_before >= 1

    swept = asyncio.run(_sweep_a_year_later(copy))

    # Everything ended a year before the sweep's clock, past the 90-day retention.
    assert (swept.jobs, swept.sessions) == (jobs_before, sessions_before)
    assert (_count(copy, "jobs"), _count(copy, "sessions")) == (0, 0)
    assert _count(copy, "job_specs") == 0
