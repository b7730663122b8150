"""Tenants' policies over real gRPC (issue 11, item 3): one gateway, tenants declared in its TOML
file (and one created through AdminService), each with the one policy its test needs.

Backends outside a policy are absent from the tenant's listings and NOT_FOUND wherever named,
as one that does not exist; per-job limits are PERMISSION_DENIED with the limit in metadata and
no RetryInfo; rates and period quotas are RESOURCE_EXHAUSTED with QuotaFailure and RetryInfo; a
cancelled job's reservation is released; GetTenantUsage shows all of it; a policy changed
through AdminService applies to the next call.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator

import grpc
import pytest
from google.protobuf import field_mask_pb2
from qgateway import Client, PermissionDeniedError
from qgateway.v1 import (
    admin_pb2,
    admin_service_pb2,
    admin_service_pb2_grpc,
    backend_service_pb2,
    backend_service_pb2_grpc,
    job_pb2,
    job_service_pb2,
    job_service_pb2_grpc,
    session_pb2,
    session_service_pb2,
    session_service_pb2_grpc,
)

from gateway import cli
from gateway.security.api_keys import NewKey, generate_key
from gateway.security.principals import Role
from tests.gateway_process import GatewayProcess, keys_toml, write_config
from tests.rpc import StatusInfo, ghz, sampler_spec, status_of

LIMITED = generate_key("limited")  # "aer" only, 3 qubits, 100 shots per job, 1 session
RATED = generate_key("rated")  # 2 submissions, then one per 10 s
CHATTY = generate_key("chatty")  # 3 requests, then one per 10 s
QUOTA = generate_key("quota")  # 100 shots per day
REFILL = generate_key("refill")  # 50 shots per second
BETA = generate_key("beta")  # a stored tenant, created by the admin
OPS = generate_key("ops", role=Role.ADMIN)
STREAMER = generate_key("streamer")  # 2 open streams at most (the server's limit here)
MAX_STREAMS = 2
STREAM_PACE = 100  # result-stream messages a second per tenant (the server's pace here)
STUCK = "pol-stuck"  # every job hangs until cancelled

CONFIG = f"""
[backends.aer]
adapter = "aer"
pool = {{ min_instances = 1, max_instances = 1 }}

[backends.{STUCK}]
adapter = "aer"
pool = {{ min_instances = 1, max_instances = 1, max_creations_per_s = 10 }}
health_interval_s = 3600
probe_timeout_s = 1
faults = {{ hang = true }}

[tenants.limited]
display_name = "Limited"

[tenants.limited.policy]
allowed_simulators = ["aer"]
max_qubits = 3
max_shots_per_job = 100
max_sessions = 1

[tenants.rated.policy]
submit_rate = {{ per_second = 0.1, burst = 2 }}

[tenants.chatty.policy]
request_rate = {{ per_second = 0.1, burst = 3 }}

[tenants.quota.policy]
quota = {{ shots = 100 }}

[tenants.refill.policy]
quota = {{ shots = 50, period_s = 1 }}
"""

DENIED = grpc.StatusCode.PERMISSION_DENIED
EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED
Q = job_pb2.JobState


class Caller:
    def __init__(self, channel: grpc.Channel, key: NewKey) -> None:
        self.tenant = key.config.tenant
        self.md = [("authorization", f"Bearer {key.key}")]
        self.jobs = job_service_pb2_grpc.JobServiceStub(channel)
        self.backends = backend_service_pb2_grpc.BackendServiceStub(channel)
        self.admin = admin_service_pb2_grpc.AdminServiceStub(channel)

    def submit(self, spec: job_pb2.JobSpec, validate_only: bool = False) -> job_pb2.Job:
        request = job_service_pb2.SubmitJobRequest(
            request_id=uuid.uuid4().hex, spec=spec, validate_only=validate_only
        )
        return self.jobs.SubmitJob(request, metadata=self.md, timeout=30).job

    def refused(self, spec: job_pb2.JobSpec, validate_only: bool = False) -> StatusInfo:
        with pytest.raises(grpc.RpcError) as caught:
            self.submit(spec, validate_only)
        return status_of(caught.value)

    def run(self, spec: job_pb2.JobSpec) -> job_pb2.Job:
        request = job_service_pb2.RunRequest(request_id=uuid.uuid4().hex, spec=spec)
        job = self.jobs.Run(request, metadata=self.md, timeout=60).job
        assert job.state == Q.JOB_STATE_SUCCEEDED, job
        return job

    def usage(self) -> admin_pb2.TenantUsage:
        request = admin_service_pb2.GetTenantUsageRequest(name=f"tenants/{self.tenant}/usage")
        return self.admin.GetTenantUsage(request, metadata=self.md, timeout=10).usage

    def backend_names(self) -> list[str]:
        request = backend_service_pb2.ListBackendsRequest()
        return [b.name for b in self.backends.ListBackends(request, metadata=self.md).backends]

    def until(self, name: str, state: int) -> job_pb2.Job:
        request = job_service_pb2.WatchJobRequest(name=name)
        for event in self.jobs.WatchJob(request, metadata=self.md, timeout=30):
            if event.job.state == state:
                return event.job
        raise AssertionError(f"{name} ended before {Q.Name(state)}")


def spec(qubits: int = 2, shots: int = 10, backend: str = "aer") -> job_pb2.JobSpec:
    return sampler_spec(ghz(qubits), backend=backend, shots=shots, seed=3)


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    root = tmp_path_factory.mktemp("policies")
    keys = keys_toml(LIMITED, RATED, CHATTY, QUOTA, REFILL, BETA, OPS, STREAMER)
    config = write_config(
        root / "g.toml",
        root / "data",
        CONFIG + keys,
        server=(f"max_streams_per_tenant = {MAX_STREAMS}\nstream_messages_per_s = {STREAM_PACE}\n"),
    )
    process = GatewayProcess.start(config, root / "gateway.log")
    yield process
    assert process.terminate() == 0, process.log_path.read_text()[-3000:]


@pytest.fixture(scope="module")
def channel(gw: GatewayProcess) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(gw.address) as ch:
        yield ch


def caller(channel: grpc.Channel, key: NewKey) -> Caller:
    return Caller(channel, key)


def test_backends_outside_the_policy_are_absent_and_refused(channel: grpc.Channel) -> None:
    limited, ops = caller(channel, LIMITED), caller(channel, OPS)
    assert limited.backend_names() == ["backends/aer"]
    assert ops.backend_names() == ["backends/aer", f"backends/{STUCK}"]  # no policy: all
    with pytest.raises(grpc.RpcError) as hidden:
        limited.backends.GetBackend(
            backend_service_pb2.GetBackendRequest(name=f"backends/{STUCK}"), metadata=limited.md
        )
    assert hidden.value.code() == grpc.StatusCode.NOT_FOUND
    # Named in a job, its validation or as a fallback: the very answer a backend that does not
    # exist gets (PERMISSION_DENIED BACKEND_NOT_ALLOWED told a tenant another's private
    # backend existed).
    for validate_only in (False, True):
        err = limited.refused(spec(backend=STUCK), validate_only)
        absent = limited.refused(spec(backend="no-such-backend"), validate_only)
        assert (err.code, err.reason) == (absent.code, absent.reason)
        assert (err.code, err.reason) == (grpc.StatusCode.NOT_FOUND, "BACKEND_NOT_FOUND")
        assert err.message == absent.message.replace("no-such-backend", STUCK)
        assert err.metadata == {"backend": f"backends/{STUCK}"}
    fallback = spec()
    fallback.options.fallback_backend = f"backends/{STUCK}"
    assert limited.refused(fallback).reason == "BACKEND_NOT_FOUND"


def test_per_job_limits_are_denied_with_the_limit_and_no_retry(channel: grpc.Channel) -> None:
    limited = caller(channel, LIMITED)
    for validate_only in (True, False):
        qubits = limited.refused(spec(qubits=4), validate_only)
        assert (qubits.code, qubits.reason) == (DENIED, "QUBIT_LIMIT_EXCEEDED")
        assert qubits.metadata["maxQubits"] == "3" and qubits.metadata["qubits"] == "4"
        assert qubits.retry_delay_s is None and not qubits.has_quota_failure
        shots = limited.refused(spec(shots=101), validate_only)
        assert (shots.code, shots.reason) == (DENIED, "SHOT_LIMIT_EXCEEDED")
        assert shots.metadata["maxShotsPerJob"] == "100" and shots.retry_delay_s is None
    limited.run(spec(qubits=3, shots=100))  # at the limits: accepted


def test_the_qubit_limit_counts_the_qubits_a_circuit_uses_not_its_width(
    channel: grpc.Channel,
) -> None:
    # A circuit transpiled for a device (an ISA circuit) is as wide as the device: counted by
    # its width, a 2-qubit Bell pair laid out on a 127-qubit device was over every limit.
    limited = caller(channel, LIMITED)

    def wide(used: int) -> job_pb2.JobSpec:
        gates = "".join(f"cx q[0], q[{i}];\n" for i in range(1, used))
        program = (
            f'OPENQASM 3.0;\ninclude "stdgates.inc";\nqubit[10] q;\nbit[{used}] c;\n'
            f"h q[0];\n{gates}barrier q;\n"
            + "".join(f"c[{i}] = measure q[{i}];\n" for i in range(used))
        )
        return sampler_spec(program, shots=10, seed=3)

    result = limited.run(wide(3))  # 3 of 10 qubits used: at the limit
    assert result.state == Q.JOB_STATE_SUCCEEDED
    over = limited.refused(wide(4))
    assert (over.code, over.reason) == (DENIED, "QUBIT_LIMIT_EXCEEDED")
    assert over.metadata["qubits"] == "4"


def test_submit_rate_is_exhausted_with_quota_failure_and_retry_info(channel: grpc.Channel) -> None:
    rated = caller(channel, RATED)
    rated.submit(spec())
    rated.submit(spec())
    err = rated.refused(spec())
    assert (err.code, err.reason) == (EXHAUSTED, "RATE_LIMITED")
    assert err.has_quota_failure and err.metadata["limit"] == "submit_rate"
    # One token per 10 s: the next one refills within that.
    assert err.retry_delay_s is not None and 0 < err.retry_delay_s <= 10
    rated.usage()  # other calls are not submissions


def test_request_rate_counts_every_rpc(channel: grpc.Channel) -> None:
    chatty = caller(channel, CHATTY)
    chatty.backend_names()
    chatty.usage()
    chatty.backend_names()
    with pytest.raises(grpc.RpcError) as caught:
        chatty.usage()
    err = status_of(caught.value)
    assert (err.code, err.reason) == (EXHAUSTED, "RATE_LIMITED")
    assert err.metadata["limit"] == "request_rate" and err.retry_delay_s is not None


def test_shot_quota_is_reserved_settled_and_released(channel: grpc.Channel) -> None:
    quota = caller(channel, QUOTA)
    quota.run(spec(shots=60))
    usage = quota.usage()
    assert (usage.shots_used, usage.shots_reserved) == (60, 0)
    assert usage.policy.quota.shots == 100
    err = quota.refused(spec(shots=50))
    assert (err.code, err.reason) == (EXHAUSTED, "SHOT_QUOTA_EXCEEDED")
    assert err.has_quota_failure and err.metadata["quota"] == "100"
    period_left = usage.period_end_time.ToNanoseconds() / 1e9 - time.time()
    assert err.retry_delay_s is not None and abs(err.retry_delay_s - period_left) < 60
    # validate_only checks the policy and reserves nothing (nor is the quota its verdict).
    quota.submit(spec(shots=50), validate_only=True)
    # A job that holds 30 shots while it runs, then is cancelled: its reservation is released.
    stuck = spec(shots=30, backend=STUCK)
    job = quota.submit(stuck)
    quota.until(job.name, Q.JOB_STATE_RUNNING)
    usage = quota.usage()
    assert (usage.shots_used, usage.shots_reserved) == (60, 30)
    assert quota.refused(spec(shots=20)).reason == "SHOT_QUOTA_EXCEEDED"
    quota.jobs.CancelJob(job_service_pb2.CancelJobRequest(name=job.name), metadata=quota.md)
    quota.until(job.name, Q.JOB_STATE_CANCELLED)
    usage = quota.usage()
    assert (usage.shots_used, usage.shots_reserved) == (60, 0)
    quota.run(spec(shots=40))  # exactly the rest
    usage = quota.usage()
    assert (usage.shots_used, usage.shots_reserved, usage.queued_jobs) == (100, 0, 0)


def test_open_streams_per_tenant_are_limited(channel: grpc.Channel) -> None:
    streamer, ops = caller(channel, STREAMER), caller(channel, OPS)
    job = streamer.submit(spec(backend=STUCK))  # runs until cancelled: its watches stay open
    request = job_service_pb2.WatchJobRequest(name=job.name)
    watches = [streamer.jobs.WatchJob(request, metadata=streamer.md, timeout=60) for _ in "ab"]
    try:
        for watch in watches:
            next(watch)  # open on the server: its first event arrived
        with pytest.raises(grpc.RpcError) as caught:
            next(streamer.jobs.WatchJob(request, metadata=streamer.md, timeout=10))
        err = status_of(caught.value)
        assert (err.code, err.reason) == (EXHAUSTED, "TOO_MANY_STREAMS")
        assert err.metadata["maxStreams"] == str(MAX_STREAMS)
        assert err.metadata["openStreams"] == str(MAX_STREAMS)
        assert err.has_quota_failure and err.retry_delay_s is not None
        # A Run holds a waiter until its job ends: counted like a stream.
        with pytest.raises(grpc.RpcError) as run_refused:
            streamer.run(spec())
        assert status_of(run_refused.value).reason == "TOO_MANY_STREAMS"
        # Other unary calls are not counted, nor are another tenant's streams.
        streamer.jobs.GetJob(job_service_pb2.GetJobRequest(name=job.name), metadata=streamer.md)
        own = ops.submit(spec(backend=STUCK))  # queued behind the stuck one
        other = ops.jobs.WatchJob(
            job_service_pb2.WatchJobRequest(name=own.name), metadata=ops.md, timeout=10
        )
        assert next(other).job.name == own.name
        other.cancel()
        ops.jobs.CancelJob(job_service_pb2.CancelJobRequest(name=own.name), metadata=ops.md)
        # A stream the caller closes frees its place (once the server has seen it go).
        watches.pop().cancel()
        deadline = time.monotonic() + 10
        while True:
            again = streamer.jobs.WatchJob(request, metadata=streamer.md, timeout=10)
            try:
                assert next(again).job.name == job.name
                watches.append(again)
                break
            except grpc.RpcError as refused:
                assert status_of(refused).reason == "TOO_MANY_STREAMS"
                assert time.monotonic() < deadline, "a closed stream kept its place"
    finally:
        for watch in watches:
            watch.cancel()
        streamer.jobs.CancelJob(
            job_service_pb2.CancelJobRequest(name=job.name), metadata=streamer.md
        )
    streamer.until(job.name, Q.JOB_STATE_CANCELLED)


def test_result_streams_keep_to_the_tenants_message_pace(channel: grpc.Channel) -> None:
    streamer = caller(channel, STREAMER)
    # 300,000 one-byte samples in 1 KiB messages: ~300 messages at 100 a second after a
    # burst of 100. A message costs the server the same however small (stream_pace).
    job = streamer.run(sampler_spec(ghz(5), shots=300_000, seed=3))
    request = job_service_pb2.StreamJobResultRequest(name=f"{job.name}/result", chunk_bytes=1024)
    started = time.monotonic()
    messages = list(streamer.jobs.StreamJobResult(request, metadata=streamer.md, timeout=60))
    elapsed = time.monotonic() - started
    samples = b"".join(m.samples.data for m in messages if m.WhichOneof("chunk") == "samples")
    assert len(samples) == 300_000 and set(samples) <= {0b00000, 0b11111}
    assert messages[-1].WhichOneof("chunk") == "digest"
    assert len(messages) > 290
    # A lower bound only: the pace is what the stream cannot beat.
    assert elapsed >= (len(messages) - STREAM_PACE) / STREAM_PACE * 0.95


def test_shot_quota_refills_with_the_period(channel: grpc.Channel) -> None:
    refill = caller(channel, REFILL)
    # Spend the period's 50 shots until a submission is refused within one period (a period
    # ending between two calls refills it, so this may take another try).
    refill.submit(spec(shots=50))
    for _ in range(5):
        try:
            err = refill.refused(spec(shots=50))
        except pytest.fail.Exception:
            # The period ended in between: that submission spent the new one (submitting once
            # more here, as before, was itself refused when no period ended next: a flake).
            continue
        break
    else:
        pytest.fail("five periods ended between two submissions")
    assert (err.code, err.reason) == (EXHAUSTED, "SHOT_QUOTA_EXCEEDED")
    assert err.retry_delay_s is not None and 0 < err.retry_delay_s <= 1.0
    time.sleep(err.retry_delay_s + 0.01)  # the wait the RetryInfo asks for: a new period
    refill.submit(spec(shots=50))


def test_a_stored_tenants_policy_changes_apply_at_once(channel: grpc.Channel) -> None:
    ops, beta = caller(channel, OPS), caller(channel, BETA)
    created = ops.admin.CreateTenant(
        admin_service_pb2.CreateTenantRequest(
            tenant_id="beta",
            tenant=admin_pb2.Tenant(
                display_name="Beta",
                policy=admin_pb2.TenantPolicy(allowed_simulators=["aer"], max_qubits=2),
            ),
        ),
        metadata=ops.md,
    ).tenant
    assert beta.refused(spec(qubits=3)).reason == "QUBIT_LIMIT_EXCEEDED"
    assert beta.backend_names() == ["backends/aer"]
    mask = field_mask_pb2.FieldMask(paths=["policy.max_qubits", "policy.allowed_simulators"])
    update = admin_pb2.Tenant(
        name="tenants/beta",
        etag=created.etag,
        policy=admin_pb2.TenantPolicy(allowed_simulators=["*"], max_qubits=5),
    )
    updated = ops.admin.UpdateTenant(
        admin_service_pb2.UpdateTenantRequest(tenant=update, update_mask=mask), metadata=ops.md
    ).tenant
    assert updated.policy.max_qubits == 5 and updated.display_name == "Beta"
    beta.run(spec(qubits=3))
    assert beta.backend_names() == ["backends/aer", f"backends/{STUCK}"]
    # The first etag is stale now.
    with pytest.raises(grpc.RpcError) as stale:
        ops.admin.UpdateTenant(
            admin_service_pb2.UpdateTenantRequest(tenant=update, update_mask=mask),
            metadata=ops.md,
        )
    assert status_of(stale.value).reason == "ETAG_MISMATCH"
    assert stale.value.code() == grpc.StatusCode.ABORTED
    # A tenant declared in the file is the file's.
    with pytest.raises(grpc.RpcError) as managed:
        ops.admin.UpdateTenant(
            admin_service_pb2.UpdateTenantRequest(
                tenant=admin_pb2.Tenant(name="tenants/limited", display_name="x")
            ),
            metadata=ops.md,
        )
    assert managed.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    names = [
        t.name
        for t in ops.admin.ListTenants(
            admin_service_pb2.ListTenantsRequest(), metadata=ops.md
        ).tenants
    ]
    assert names == [
        "tenants/beta",
        "tenants/chatty",
        "tenants/limited",
        "tenants/quota",
        "tenants/rated",
        "tenants/refill",
    ]
    # A user may read its own tenant's usage, not another's, nor change policies.
    with pytest.raises(grpc.RpcError) as other:
        beta.admin.GetTenantUsage(
            admin_service_pb2.GetTenantUsageRequest(name="tenants/quota/usage"),
            metadata=beta.md,
        )
    assert other.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as denied:
        beta.admin.UpdateTenant(
            admin_service_pb2.UpdateTenantRequest(tenant=update), metadata=beta.md
        )
    assert denied.value.code() == DENIED


def test_client_and_cli_read_usage_and_manage_tenants(
    gw: GatewayProcess, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with Client(gw.address, metadata=[("authorization", f"Bearer {LIMITED.key}")]) as client:
        usage = client.get_tenant_usage("limited")
        assert usage.name == "tenants/limited/usage" and usage.shots_left is None
        assert usage.policy["max_qubits"] == 3 and usage.period_end is not None
        with pytest.raises(PermissionDeniedError):
            client.create_tenant("nope")
    monkeypatch.setenv("QGATEWAY_API_KEY", OPS.key)
    policy = '{"allowed_simulators": ["aer"], "quota": {"shots": 500, "period": "3600s"}}'
    assert cli.main(["tenants", "create", "gamma", "--target", gw.address, "--policy", policy]) == 0
    created = json.loads(capsys.readouterr().out)
    assert created["policy"]["quota"] == {"shots": "500", "period": "3600s"}
    update = ["tenants", "update", "gamma", "--target", gw.address, "--etag", created["etag"]]
    assert cli.main([*update, "--policy", '{"max_sessions": 2}']) == 0
    updated = json.loads(capsys.readouterr().out)
    assert updated["policy"]["max_sessions"] == 2 and updated["policy"]["quota"]["shots"] == "500"
    assert cli.main([*update, "--display-name", "stale etag"]) == 1
    assert "ETAG_MISMATCH" in capsys.readouterr().err
    assert cli.main(["usage", "gamma", "--target", gw.address]) == 0
    out = capsys.readouterr().out
    assert "tenants/gamma/usage" in out and "0 used, 0 reserved of 500" in out
    assert cli.main(["tenants", "list", "--target", gw.address]) == 0
    assert "tenants/gamma" in capsys.readouterr().out


def test_sessions_follow_the_policy(channel: grpc.Channel) -> None:
    limited = caller(channel, LIMITED)
    sessions = session_service_pb2_grpc.SessionServiceStub(channel)

    def create(backend: str) -> session_pb2.Session:
        request = session_service_pb2.CreateSessionRequest(
            request_id=uuid.uuid4().hex, session=session_pb2.Session(backend=backend)
        )
        return sessions.CreateSession(request, metadata=limited.md, timeout=10).session

    with pytest.raises(grpc.RpcError) as denied:
        create(f"backends/{STUCK}")
    assert status_of(denied.value).reason == "BACKEND_NOT_FOUND"
    first = create("backends/aer")
    try:
        # max_sessions = 1 supersedes the server's default of 10.
        with pytest.raises(grpc.RpcError) as full:
            create("backends/aer")
        err = status_of(full.value)
        assert (err.code, err.reason) == (EXHAUSTED, "SESSION_LIMIT_REACHED")
        assert limited.usage().open_sessions == 1
    finally:
        sessions.CancelSession(
            session_service_pb2.CancelSessionRequest(name=first.name), metadata=limited.md
        )
