"""Replicas on one data directory (`server.queue = "store"`), review: two real gateways share a
store; a job submitted on one and run by the other is seen, cancelled, waited for and streamed
from either; one request_id sent to both is one job; a tenant changed on one applies on the
other at once (found: only at the other's periodic reload, up to 10 s later). The review also
checked SIGKILL of a holder, a dead replica's cancelled job and a draining replica's queued
jobs on two gateways each (all fine; test_claim_queue keeps a dead replica's takeover).

Two gateways for the module. Which replica runs a job is read from the store (the claim's
holder names its pid), so no test depends on who wins a claim."""

from __future__ import annotations

import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import grpc
import pytest
from google.protobuf import field_mask_pb2
from qgateway import Client
from qgateway.errors import QGatewayError
from qgateway.results import JobState
from qgateway.v1 import admin_pb2, admin_service_pb2, admin_service_pb2_grpc

from gateway.security.api_keys import generate_key
from gateway.security.principals import Role
from tests.gateway_process import GatewayProcess, keys_toml, write_config
from tests.rpc import ghz

LEASE_S = 3.0
START_TIMEOUT = 60.0
T = TypeVar("T")

USER = generate_key("beta")  # a stored tenant, created by the admin
OPS = generate_key("ops", role=Role.ADMIN)

BACKENDS = """
[backends.aer]
adapter = "aer"
pool = { min_instances = 1, max_instances = 1 }

[backends.slow]
adapter = "aer"
pool = { min_instances = 1, max_instances = 1 }
faults = { latency_s = 4.0 }

[backends.stuck]
adapter = "aer"
pool = { min_instances = 1, max_instances = 1, max_creations_per_s = 10 }
health_interval_s = 3600
probe_timeout_s = 1
faults = { hang = true }
"""


def _config(root: Path, grace_s: float = 2) -> Path:
    return write_config(
        root / "g.toml",
        root / "data",
        BACKENDS + keys_toml(USER, OPS),
        grace_period_s=grace_s,
        server=f'queue = "store"\nlease_s = {LEASE_S}\n',
    )


def _md(key: object) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {key.key}")]  # type: ignore[attr-defined]


def _client(gw: GatewayProcess) -> Client:
    return Client(gw.address, metadata=_md(USER))


def _until(what: Callable[[], T | None], timeout: float, message: str) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = what()
        if got:
            return got
        time.sleep(0.05)
    raise AssertionError(f"timed out: {message}")


def _row(data: Path, job_name: str, columns: str) -> tuple:  # type: ignore[type-arg]
    with sqlite3.connect(data / "qgateway.db", timeout=30) as db:
        return db.execute(
            f"SELECT {columns} FROM jobs WHERE id = ?", (job_name.split("/")[1],)
        ).fetchone()


def _holder_pid(data: Path, job_name: str) -> int | None:
    owner = _row(data, job_name, "lease_owner")[0]
    return None if owner is None else int(str(owner).split(":")[1])


def _running_on(data: Path, job_name: str, pair: tuple[GatewayProcess, GatewayProcess]):  # type: ignore[no-untyped-def]
    """(holder, other) once the job is RUNNING under a claim."""

    def look() -> tuple[GatewayProcess, GatewayProcess] | None:
        state = _row(data, job_name, "state")[0]
        pid = _holder_pid(data, job_name)
        if state != "RUNNING" or pid is None:
            return None
        a, b = pair
        return (a, b) if a.pid == pid else (b, a)

    return _until(look, 60, f"{job_name} running under a claim")


def _create_tenant(gw: GatewayProcess) -> str:
    with grpc.insecure_channel(gw.address) as ch:
        admin = admin_service_pb2_grpc.AdminServiceStub(ch)
        created = admin.CreateTenant(
            admin_service_pb2.CreateTenantRequest(
                tenant_id="beta",
                tenant=admin_pb2.Tenant(
                    display_name="Beta",
                    policy=admin_pb2.TenantPolicy(allowed_simulators=["*"], max_shots_per_job=1000),
                ),
            ),
            metadata=_md(OPS),
            timeout=30,
        ).tenant
    return str(created.etag)


@pytest.fixture(scope="module")
def pair(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[GatewayProcess, GatewayProcess, Path]]:
    tmp_path = tmp_path_factory.mktemp("replicas")
    config = _config(tmp_path)
    log = tmp_path / "gateway.log"
    a = GatewayProcess.start(config, log, start_timeout=START_TIMEOUT)
    try:
        _create_tenant(a)
        b = GatewayProcess.start(config, log, start_timeout=START_TIMEOUT)
    except BaseException:
        a.kill()
        raise
    try:
        yield a, b, tmp_path / "data"
    finally:
        a.kill()
        b.kill()


# ---------------------------------------------------------------------- seen from the other


@pytest.mark.timeout(150)
def test_a_job_run_by_one_replica_is_watched_waited_and_streamed_on_the_other(pair) -> None:  # type: ignore[no-untyped-def]
    a, b, data = pair
    with _client(a) as on_a:
        job = on_a.submit(ghz(3), backend="slow", shots=64, seed=11)
    holder, other = _running_on(data, job.name, (a, b))
    with _client(other) as there:
        states = []
        for event in there.watch(job.name, timeout=60):
            states.append(event.state)
            if event.state.is_final:
                break
        assert states[-1] is JobState.SUCCEEDED and JobState.RUNNING in states
        assert there.get_job(job.name).state is JobState.SUCCEEDED
        streamed = there.stream_result(job.name, timeout=30).counts()
        fetched = there.get_result(job.name, timeout=30).counts()
        assert streamed == fetched and sum(fetched.values()) == 64
        assert set(fetched) <= {"000", "111"}
        # Run on the replica that did not run the job it names by request_id.
        rid = uuid.uuid4().hex
        first = there.submit(ghz(2), backend="slow", shots=10, seed=5, request_id=rid)
    with _client(holder) as here:
        done = here.run(ghz(2), backend="slow", shots=10, seed=5, request_id=rid, timeout=60)
        assert sum(done.counts().values()) == 10
        assert here.get_job(first.name).state is JobState.SUCCEEDED
    with sqlite3.connect(data / "qgateway.db", timeout=30) as db:
        assert db.execute("SELECT count(*) FROM jobs WHERE request_id = ?", (rid,)).fetchone() == (
            1,
        )


@pytest.mark.timeout(150)
def test_cancel_on_one_replica_stops_the_job_the_other_runs(pair) -> None:  # type: ignore[no-untyped-def]
    a, b, data = pair
    with _client(a) as on_a:
        job = on_a.submit(ghz(2), backend="stuck", shots=10, seed=1)
    holder, other = _running_on(data, job.name, (a, b))
    with _client(other) as there:
        there.cancel(job.name)
        final = there.wait(job.name, timeout=60)
    assert final.state is JobState.CANCELLED
    # The holder's worker was stopped: its slot runs the next job.
    with _client(holder) as here:
        nxt = here.submit(ghz(2), backend="stuck", shots=10, seed=2)
        _until(lambda: _row(data, nxt.name, "state")[0] == "RUNNING", 60, "next job runs")
        here.cancel(nxt.name)
        assert here.wait(nxt.name, timeout=60).state is JobState.CANCELLED


@pytest.mark.timeout(150)
def test_one_request_id_sent_to_both_replicas_at_once_is_one_job(pair) -> None:  # type: ignore[no-untyped-def]
    a, b, _ = pair
    names: list[str] = []
    errors: list[BaseException] = []
    for round_ in range(8):
        rid = f"dedup-{round_}"
        gate = threading.Barrier(2)

        def send(gw: GatewayProcess, rid: str = rid, gate: threading.Barrier = gate) -> None:
            try:
                with _client(gw) as c:
                    gate.wait(10)
                    names.append(c.submit(ghz(2), shots=10, seed=3, request_id=rid).name)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=send, args=(gw,)) for gw in (a, b)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors, errors
        assert len(set(names[-2:])) == 1, names[-2:]


@pytest.mark.timeout(150)
def test_a_tenant_policy_update_on_one_replica_applies_on_the_other(pair) -> None:  # type: ignore[no-untyped-def]
    """README (tenants): a stored tenant's change applies to the very next call. On a replica
    other than the one that took the UpdateTenant, it applied only at the next periodic reload
    (POLICY_REFRESH_S, 10 s): a tenant cut off, or a per-job limit lowered, was still admitted
    there meanwhile. Now a peer signal tells the others at once. Last in this module: it
    changes the tenant the others use."""
    a, b, _ = pair
    with _client(b) as on_b:  # b has read the tenant (created before it started)
        assert on_b.submit(ghz(2), shots=500, seed=1).name
    with grpc.insecure_channel(a.address) as ch:
        admin = admin_service_pb2_grpc.AdminServiceStub(ch)
        admin.UpdateTenant(
            admin_service_pb2.UpdateTenantRequest(
                tenant=admin_pb2.Tenant(
                    name="tenants/beta", policy=admin_pb2.TenantPolicy(max_shots_per_job=100)
                ),
                update_mask=field_mask_pb2.FieldMask(paths=["policy.max_shots_per_job"]),
            ),
            metadata=_md(OPS),
            timeout=30,
        )
    with _client(a) as on_a, pytest.raises(QGatewayError) as on_a_refused:
        on_a.submit(ghz(2), shots=500, seed=1)
    assert on_a_refused.value.reason == "SHOT_LIMIT_EXCEEDED"
    # b hears a's signal and re-reads the tenant at once: well within the 10 s of its
    # periodic reload, which alone carried the change before.
    with _client(b) as on_b:
        deadline = time.monotonic() + 1.5
        while True:
            try:
                on_b.submit(ghz(2), shots=500, seed=1)
            except QGatewayError as refused:
                assert refused.reason == "SHOT_LIMIT_EXCEEDED"
                break
            assert time.monotonic() < deadline, "b still admits what the new policy refuses"
