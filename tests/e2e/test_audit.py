"""The audit log over real gRPC (issue 11, items 5 and 7).

One gateway with API keys serves the tests in order; the last ones stop it (gracefully, which
writes every buffered record and the final head) and read the data directory offline with
`qgateway audit verify|export`, then restart it once for the SIGKILL test.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from qgateway.v1 import (
    admin_pb2,
    admin_service_pb2,
    admin_service_pb2_grpc,
    job_service_pb2,
    job_service_pb2_grpc,
)

from gateway.security.api_keys import NewKey, generate_key
from gateway.security.principals import Role
from tests.gateway_process import GatewayProcess, keys_toml, write_config
from tests.rpc import ghz, sampler_spec, slow_circuit, status_of

ADMIN = generate_key("ops", role=Role.ADMIN)
ACME_ADMIN = generate_key("acme", role=Role.TENANT_ADMIN)
ACME = generate_key("acme")
OTHER = generate_key("globex")
# A well-formed key nobody issued: its secret must not be stored either.
BOGUS = "qgw_deadbeef00_" + "S3cretThatMustNeverBeStored-xyz"
FLOOD = 150
READS = 3
READ_JOBS: list[str] = []
CREATED_KEYS: list[str] = []
REPO = Path(__file__).resolve().parents[2]

BACKENDS = """
[backends.aer]
adapter = "aer"
pool = { min_instances = 1, max_instances = 1 }
options = { method = "statevector" }

[audit]
flush_interval_s = 0.05
failure_window_s = 600
"""


@dataclass
class Env:
    root: Path
    config: Path
    data: Path
    log: Path
    gateway: GatewayProcess | None


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    root = tmp_path_factory.mktemp("audit")
    keys = keys_toml(ADMIN, ACME_ADMIN, ACME, OTHER)
    config = write_config(root / "g.toml", root / "data", keys + BACKENDS)
    log = root / "gateway.log"
    state = Env(root, config, root / "data", log, GatewayProcess.start(config, log))
    yield state
    if state.gateway is not None:
        state.gateway.kill()


def _md(key: NewKey | str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {key if isinstance(key, str) else key.key}")]


def _stubs(env: Env) -> tuple[grpc.Channel, Any, Any]:
    assert env.gateway is not None
    channel = grpc.insecure_channel(env.gateway.address)
    jobs = job_service_pb2_grpc.JobServiceStub(channel)  # type: ignore[no-untyped-call]
    admin = admin_service_pb2_grpc.AdminServiceStub(channel)  # type: ignore[no-untyped-call]
    return channel, jobs, admin


def _records(admin: Any, key: NewKey, filter: str = "", page_size: int = 1000) -> list[Any]:
    out: list[Any] = []
    token = ""
    while True:
        reply = admin.ListAuditRecords(
            admin_service_pb2.ListAuditRecordsRequest(
                filter=filter, page_size=page_size, page_token=token
            ),
            metadata=_md(key),
            timeout=10,
        )
        out.extend(reply.audit_records)
        token = reply.next_page_token
        if not token:
            return out


def _submit(jobs: Any, key: NewKey, request_id: str) -> Any:
    return jobs.SubmitJob(
        job_service_pb2.SubmitJobRequest(
            request_id=request_id, spec=sampler_spec(ghz(3), shots=96, seed=5)
        ),
        metadata=[*_md(key), ("traceparent", f"00-{'ab' * 16}-{'cd' * 8}-01")],
        timeout=30,
    ).job


def test_a_submission_has_exactly_one_record_committed_with_the_job(env: Env) -> None:
    channel, jobs, admin = _stubs(env)
    with channel:
        job = _submit(jobs, ACME, "audit-submit-1")
        # Committed with the job: readable the moment the submission is acknowledged.
        found = [
            r for r in _records(admin, ADMIN, 'method = "SubmitJob"') if r.resource == job.name
        ]
        assert len(found) == 1
        record = found[0]
        assert record.principal == f"apiKeys/{ACME.config.prefix}"
        assert (record.tenant, record.key_prefix) == ("acme", ACME.config.prefix)
        assert (record.service, record.backend, record.shots) == (
            "qgateway.v1.JobService",
            "aer",
            96,
        )
        assert len(record.circuit_digest) == 64 and int(record.circuit_digest, 16) >= 0
        assert (record.code, record.request_id, record.trace_id) == (0, "audit-submit-1", "ab" * 16)
        assert record.peer.startswith("ipv4:127.0.0.1:")
        # A retry of the same request is a call of its own: one more record, same job.
        again = _submit(jobs, ACME, "audit-submit-1")
        assert again.name == job.name
        found = [
            r for r in _records(admin, ADMIN, 'method = "SubmitJob"') if r.resource == job.name
        ]
        assert len(found) == 2
        assert len({r.sequence for r in found}) == 2


def test_cancel_commits_its_record_and_reads_and_streams_write_one_each(env: Env) -> None:
    channel, jobs, admin = _stubs(env)
    with channel:
        slow = jobs.SubmitJob(
            job_service_pb2.SubmitJobRequest(spec=sampler_spec(slow_circuit(), shots=50_000)),
            metadata=_md(ACME),
            timeout=30,
        ).job
        jobs.CancelJob(
            job_service_pb2.CancelJobRequest(name=slow.name), metadata=_md(ACME), timeout=10
        )
        # The cancel's record committed with the cancel: there when the call answers.
        cancels = [
            r for r in _records(admin, ADMIN, 'method = "CancelJob"') if r.resource == slow.name
        ]
        assert [(r.code, r.tenant) for r in cancels] == [(0, "acme")]
        for _ in range(READS):
            jobs.GetJob(job_service_pb2.GetJobRequest(name=slow.name), metadata=_md(ACME))
        # The stream ends when the job is final (CANCELLED): one record, written at its end.
        events = list(
            jobs.WatchJob(
                job_service_pb2.WatchJobRequest(name=slow.name), metadata=_md(ACME), timeout=60
            )
        )
        assert events
    READ_JOBS.append(slow.name)


def test_admin_writes_commit_their_records_and_a_new_key_is_never_stored(env: Env) -> None:
    channel, _, admin = _stubs(env)
    with channel:
        created = admin.CreateApiKey(
            admin_service_pb2.CreateApiKeyRequest(
                parent="tenants/acme", api_key=admin_pb2.ApiKey(display_name="ci")
            ),
            metadata=_md(ACME_ADMIN),
            timeout=10,
        )
        CREATED_KEYS.append(created.key)
        name = created.api_key.name
        admin.RevokeApiKey(
            admin_service_pb2.RevokeApiKeyRequest(name=name), metadata=_md(ADMIN), timeout=10
        )
        # Both committed with their change: listed the moment the calls answer.
        found = [r for r in _records(admin, ADMIN, 'service = "qgateway.v1.AdminService"')]
        writes = [(r.method, r.principal, r.code) for r in found if r.resource == name]
        assert writes == [
            ("CreateApiKey", f"apiKeys/{ACME_ADMIN.config.prefix}", 0),
            ("RevokeApiKey", f"apiKeys/{ADMIN.config.prefix}", 0),
        ]


def test_list_audit_records_is_scoped_by_role_and_tenant(env: Env) -> None:
    channel, jobs, admin = _stubs(env)
    with channel:
        _submit(jobs, OTHER, "audit-globex-1")
        mine = _records(admin, ACME_ADMIN)
        assert mine and {r.tenant for r in mine} == {"acme"}
        # Asking for another tenant's records is an empty answer, not a hint.
        assert _records(admin, ACME_ADMIN, 'tenant = "globex"') == []
        every = _records(admin, ADMIN, '(tenant = "acme" OR tenant = "globex")')
        assert {"acme", "globex"} <= {r.tenant for r in every}
        # Paging walks the same records by sequence (batched reads may have landed since:
        # always after them).
        paged = _records(admin, ADMIN, '(tenant = "acme" OR tenant = "globex")', page_size=2)
        assert [r.sequence for r in paged][: len(every)] == [r.sequence for r in every]
        assert [r.sequence for r in every] == sorted(r.sequence for r in every)
        # A page token is bound to its caller's scope: the global admin's token, replayed by a
        # tenant admin with the same filter and page size, is refused, not a next page of
        # every tenant's records.
        first = admin.ListAuditRecords(
            admin_service_pb2.ListAuditRecordsRequest(page_size=1),
            metadata=_md(ADMIN),
            timeout=10,
        )
        assert first.next_page_token
        with pytest.raises(grpc.RpcError) as err:
            admin.ListAuditRecords(
                admin_service_pb2.ListAuditRecordsRequest(
                    page_size=1, page_token=first.next_page_token
                ),
                metadata=_md(ACME_ADMIN),
                timeout=10,
            )
        assert status_of(err.value).code == grpc.StatusCode.INVALID_ARGUMENT
        assert status_of(err.value).reason == "INVALID_PAGE_TOKEN"
        for key in (ACME, OTHER):
            with pytest.raises(grpc.RpcError) as err:
                _records(admin, key)
            assert status_of(err.value).code == grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(grpc.RpcError) as err:
            _records(admin, ADMIN, 'tenant > "a"')
        assert status_of(err.value).reason == "INVALID_FILTER"


def test_a_failed_authentication_flood_is_aggregated(env: Env) -> None:
    channel, jobs, admin = _stubs(env)
    with channel:
        for _ in range(FLOOD):
            with pytest.raises(grpc.RpcError) as err:
                jobs.GetJob(job_service_pb2.GetJobRequest(name="jobs/x"), metadata=_md(BOGUS))
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        # A request that cannot be decoded never reaches authentication: recorded all the same.
        garbage = channel.unary_unary("/qgateway.v1.JobService/GetJob")
        with pytest.raises(grpc.RpcError) as err:
            garbage(b"\xff\xff\xff", metadata=_md(ACME), timeout=10)
        assert status_of(err.value).reason == "MALFORMED_REQUEST"
        # The first failure is written at once (in the next batch); the rest wait for the end
        # of the window, written when the gateway stops (test_offline_verify...).
        failed = _records(admin, ADMIN, 'principal = ""')
        first = [r for r in failed if r.reason == "API_KEY_INVALID"]
        assert len(first) <= 1


def test_offline_verify_export_and_no_secret_anywhere(env: Env) -> None:
    assert env.gateway is not None
    assert env.gateway.terminate() == 0, env.log.read_text()[-3000:]
    env.gateway = None
    ok = _cli("verify", "--config", str(env.config))
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith("OK: ")
    exported = _cli("export", "--config", str(env.config))
    assert exported.returncode == 0, exported.stderr
    records = [json.loads(line) for line in exported.stdout.splitlines()]
    assert [r["sequence"] for r in records] == list(range(1, len(records) + 1))
    # Every call but health and reflection: the flood is a bounded number of records that
    # still count every call.
    flood = [r for r in records if r["principal"] == "" and r["reason"] == "API_KEY_INVALID"]
    assert 1 <= len(flood) <= 2
    assert sum(r["count"] for r in flood) == FLOOD
    assert {r["key_prefix"] for r in flood} == {"deadbeef00"}
    assert {r["code"] for r in flood} == {16}
    malformed = [r for r in records if r["reason"] == "MALFORMED_REQUEST"]
    assert [(r["method"], r["code"], r["count"]) for r in malformed] == [("GetJob", 3, 1)]
    # Reads and streams: one record per call (batched, all written by the graceful stop).
    for name in READ_JOBS:
        mine = [r for r in records if r["resource"] == name]
        assert sorted(r["method"] for r in mine) == sorted(
            ["SubmitJob", "CancelJob", "WatchJob"] + ["GetJob"] * READS
        )
        watch = next(r for r in mine if r["method"] == "WatchJob")
        assert watch["end_time"] > watch["time"]
    # No key, whole or its secret part, in the log, the records or the database files.
    secrets = [k.key for k in (ADMIN, ACME_ADMIN, ACME, OTHER)] + [BOGUS, *CREATED_KEYS]
    assert CREATED_KEYS
    haystacks = {"log": env.log.read_bytes(), "export": exported.stdout.encode()}
    for path in sorted(env.data.iterdir()):
        if path.name.startswith("qgateway.db"):
            haystacks[path.name] = path.read_bytes()
    audit_key = (env.data / "audit.key").read_bytes()
    for secret in secrets:
        # The secret part: everything after "qgw_<prefix>_" (it may hold "_" itself).
        for part in (secret, secret.split("_", 2)[2]):
            assert len(part) >= 20  # long enough that a match would mean the secret
            for name, data in haystacks.items():
                assert part.encode() not in data, f"a secret in {name}"
    assert audit_key.hex().encode() not in haystacks["log"]
    # Editing a record is named by verify.
    conn = sqlite3.connect(env.data / "qgateway.db")
    conn.execute("DROP TRIGGER audit_records_no_update")
    conn.execute("UPDATE audit_records SET shots = shots + 1 WHERE seq = 3")
    conn.commit()
    conn.close()
    bad = _cli("verify", "--config", str(env.config))
    assert bad.returncode == 1
    assert "record 3 altered" in bad.stderr
    conn = sqlite3.connect(env.data / "qgateway.db")
    conn.execute("UPDATE audit_records SET shots = shots - 1 WHERE seq = 3")
    conn.commit()
    conn.close()


def test_a_submission_acknowledged_before_sigkill_keeps_its_record(env: Env) -> None:
    env.gateway = GatewayProcess.start(env.config, env.log)
    channel, jobs, _ = _stubs(env)
    with channel:
        job = _submit(jobs, ACME, "audit-before-kill")
    env.gateway.kill()
    env.gateway = None
    conn = sqlite3.connect(env.data / "qgateway.db")
    rows = conn.execute(
        "SELECT method, tenant, shots FROM audit_records WHERE resource = ?", (job.name,)
    ).fetchall()
    conn.close()
    assert rows == [("SubmitJob", "acme", 96)]
    ok = _cli("verify", "--config", str(env.config))
    assert ok.returncode == 0, ok.stderr


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", "audit", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        check=False,
    )
