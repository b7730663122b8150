"""Telemetry over real gRPC (issue 12): one gateway process with tracing, metrics (Prometheus
and OTLP) and JSON logs on, exporting to a loopback OTLP receiver this module starts.

The gateway and its worker processes are other processes: what is asserted is what really
arrived over OTLP, at the scrape endpoint, and in the gateway's log file.
"""

from __future__ import annotations

import json
import random
import re
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from qgateway import (
    Client,
    DeadlineExceededError,
    InvalidArgumentError,
    RetryPolicy,
    UnavailableError,
    sampler_pub,
)
from qgateway.results import Job, JobState
from qgateway.v1 import admin_service_pb2, admin_service_pb2_grpc

from gateway.security.api_keys import NewKey, generate_key
from gateway.security.principals import Role
from gateway.telemetry import metric_names
from tests.gateway_process import GatewayProcess, write_config
from tests.otlp_receiver import OtlpReceiver, ReceivedSpan
from tests.rpc import slow_circuit

# A tenant admin: it also reads its tenant's audit records.
KEY: NewKey = generate_key("acme", role=Role.TENANT_ADMIN)
SERVER_KIND = 2  # opentelemetry.proto.trace.v1.Span.SpanKind.SPAN_KIND_SERVER
ERROR_STATUS = 2
ONCE = RetryPolicy(max_attempts=1)


def _config(endpoint: str, switch: Path) -> str:
    c = KEY.config
    return f"""
[[auth.api_keys]]
prefix = "{c.prefix}"
sha256 = "{c.sha256}"
tenant = "{c.tenant}"
role = "{c.role}"

[backends.aer]
adapter = "aer"
pool = {{ min_instances = 1, max_instances = 1 }}
options = {{ method = "statevector" }}
price = {{ per_task = 0.5, per_shot = 0.0, unit = "USD" }}

[backends.sick]
adapter = "aer"
pool = {{ min_instances = 1, max_instances = 1 }}
health_interval_s = 600
breaker = {{ failure_threshold = 1, window_s = 60, cooldown_s = 600 }}
faults = {{ fail_while_exists = "{switch}" }}

[backends.blip]
adapter = "aer"
pool = {{ min_instances = 1, max_instances = 1 }}
health_interval_s = 600
faults = {{ transient_errors = 2, retry_attempts = 4, retry_backoff_s = 0.01 }}

[telemetry.tracing]
enabled = true
otlp_endpoint = "{endpoint}"
export_interval_s = 0.1

[telemetry.metrics]
prometheus_listen = "127.0.0.1:0"
otlp_endpoint = "{endpoint}"
otlp_interval_s = 0.5
sample_interval_s = 0.1

[telemetry.logs]
json = true
"""


@dataclass
class Env:
    gateway: GatewayProcess
    receiver: OtlpReceiver
    log: Path
    metrics_url: str
    switch: Path


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    root = tmp_path_factory.mktemp("telemetry")
    receiver = OtlpReceiver().start()
    switch = root / "sick"
    config = write_config(root / "g.toml", root / "data", _config(receiver.endpoint, switch))
    log = root / "gateway.log"
    gateway = GatewayProcess.start(config, log)
    try:
        found = re.search(r"http://127\.0\.0\.1:(\d+)/metrics", log.read_text())
        assert found is not None, "the gateway logged no Prometheus endpoint"
        yield Env(gateway, receiver, log, found.group(0), switch)
    finally:
        gateway.terminate()
        receiver.stop()


def _client(env: Env, **kwargs: object) -> Client:
    md = [("authorization", f"Bearer {KEY.key}")]
    return Client(env.gateway.address, metadata=md, retry=ONCE, **kwargs)  # type: ignore[arg-type]


def _distinct_circuit() -> str:
    # A circuit no earlier test compiled: the compile cache would skip the compile worker.
    angle = random.random()
    return (
        'OPENQASM 3.0;\ninclude "stdgates.inc";\nqubit[2] q;\nbit[2] c;\n'
        f"rx({angle}) q[0];\ncx q[0], q[1];\nc = measure q;\n"
    )


def _run(client: Client, backend: str, shots: int, seed: int = 1) -> Job:
    pub = sampler_pub(_distinct_circuit(), shots=shots)
    return client.run_pubs([pub], backend=backend, seed=seed, timeout=30)


def _scrape(env: Env) -> str:
    with urllib.request.urlopen(env.metrics_url, timeout=10) as reply:
        text: str = reply.read().decode()
    return text


def _value(text: str, name: str, **labels: str) -> float:
    """The sum of the samples of `name` whose labels include `labels`."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        head, _, value = line.rpartition(" ")
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            total += float(value)
    return total


def _by_name(spans: list[ReceivedSpan], name: str) -> list[ReceivedSpan]:
    return [s for s in spans if s.name == name]


@pytest.mark.timeout(60)
def test_one_run_yields_the_span_tree_under_the_callers_trace(env: Env) -> None:
    provider = TracerProvider()  # the caller's own tracer, not the process-global one
    with (
        provider.get_tracer("test").start_as_current_span("caller") as root,
        _client(env) as client,
    ):
        job = _run(client, "aer", 100, seed=3)
        got = client.get_job(job.name)
    trace_id = trace.format_trace_id(root.get_span_context().trace_id)
    assert job.state is JobState.SUCCEEDED
    assert got.trace_id == trace_id  # GetJob shows the trace the job was created in

    want = {
        "qgateway.v1.JobService/Run",
        "qgateway.admission",
        "qgateway.compile",
        "qgateway.store.create_job",
        "qgateway.job.queue",
        "qgateway.job.execute",
        "qgateway.worker.execute",
        "qgateway.store.finish_job",
    }

    def complete(r: OtlpReceiver) -> list[ReceivedSpan] | None:
        spans = r.trace(trace_id)
        return spans if want <= {s.name for s in spans} else None

    spans = env.receiver.wait_for(complete)
    (server,) = _by_name(spans, "qgateway.v1.JobService/Run")
    assert server.parent_span_id == format(root.get_span_context().span_id, "016x")
    assert server.kind == SERVER_KIND
    assert server.attributes["rpc.system.name"] == "grpc"
    assert server.attributes["rpc.method"] == "qgateway.v1.JobService/Run"
    assert server.attributes["rpc.response.status_code"] == "OK"
    (admission,) = _by_name(spans, "qgateway.admission")
    assert admission.parent_span_id == server.span_id
    compiles = _by_name(spans, "qgateway.compile")
    assert compiles and all(c.parent_span_id == admission.span_id for c in compiles)
    (queue,) = _by_name(spans, "qgateway.job.queue")
    (execute,) = _by_name(spans, "qgateway.job.execute")
    assert queue.parent_span_id == server.span_id == execute.parent_span_id
    assert execute.attributes["qgateway.job.id"] == job.id
    assert execute.attributes["qgateway.job.state"] == "SUCCEEDED"
    assert execute.attributes["qgateway.tenant"] == "acme"
    assert "state" in execute.events
    (create,) = _by_name(spans, "qgateway.store.create_job")
    assert create.parent_span_id == admission.span_id
    (finish,) = _by_name(spans, "qgateway.store.finish_job")
    assert finish.parent_span_id == execute.span_id
    (worker,) = _by_name(spans, "qgateway.worker.execute")
    assert worker.parent_span_id == execute.span_id
    # Timed inside the simulator worker, a process of its own.
    assert worker.attributes["process.pid"] not in (env.gateway.pid, 0)
    assert worker.start_ns >= execute.start_ns - 50_000_000
    assert compiles[0].attributes["process.pid"] != env.gateway.pid

    # The JSON log: one line per transition, carrying the job's trace.
    lines = [json.loads(x) for x in env.log.read_text().splitlines() if x.startswith("{")]
    mine = [x for x in lines if x.get("job") == f"jobs/{job.id}"]
    assert [x["state"] for x in mine] == ["QUEUED", "RUNNING", "SUCCEEDED"]
    assert all(x["trace_id"] == trace_id for x in mine)
    assert all(x["tenant"] == "acme" and x["backend"] == "aer" for x in mine)
    assert all(len(x["span_id"]) == 16 for x in mine)


@pytest.mark.timeout(60)
def test_refused_calls_have_error_spans_and_oversized_headers_are_ignored(env: Env) -> None:
    provider = TracerProvider()
    with provider.get_tracer("test").start_as_current_span("caller") as root:
        trace_id = trace.format_trace_id(root.get_span_context().trace_id)
        with _client(env) as client, pytest.raises(InvalidArgumentError):
            client.submit("OPENQASM 3.0; qubit[1] q; nonsense q[0];", backend="aer", shots=10)
    spans = env.receiver.wait_for(lambda r: r.trace(trace_id) or None)
    (server,) = _by_name(spans, "qgateway.v1.JobService/SubmitJob")
    assert server.status_code == ERROR_STATUS
    assert server.attributes["rpc.response.status_code"] == "INVALID_ARGUMENT"

    # An oversized traceparent is ignored: the call works and starts a trace of its own.
    huge = "00-" + "a" * 5000
    with Client(
        env.gateway.address,
        metadata=[("authorization", f"Bearer {KEY.key}"), ("traceparent", huge)],
        retry=ONCE,
    ) as client:
        job = _run(client, "aer", 10)
    assert job.state is JobState.SUCCEEDED
    assert len(job.trace_id) == 32 and job.trace_id != "a" * 32


@pytest.mark.timeout(60)
def test_metrics_move_as_jobs_run_fail_and_get_refused(env: Env) -> None:
    def probed(_: OtlpReceiver) -> str | None:
        # blip's start-up health probe goes through the same faulty provider call and retries
        # twice too (its next probe is 600 s away): counting starts once it has.
        text = _scrape(env)
        return (
            text if _value(text, "qgateway_provider_retries_total", backend="blip") >= 2 else None
        )

    before = env.receiver.wait_for(probed, timeout=10)
    with _client(env) as client:
        assert _run(client, "aer", 50).state is JobState.SUCCEEDED
        assert _run(client, "blip", 10).state is JobState.SUCCEEDED
        env.switch.touch()
        try:
            failed = _run(client, "sick", 10)
            assert failed.state is JobState.FAILED
            with pytest.raises(UnavailableError):  # the breaker opened: refused at admission
                client.submit(_distinct_circuit(), backend="sick", shots=10)
        finally:
            env.switch.unlink()

    def moved(_: OtlpReceiver) -> str | None:
        text = _scrape(env)
        return (
            text if _value(text, "qgateway_breaker_state", backend="sick", state="OPEN") else None
        )

    after = env.receiver.wait_for(moved, timeout=10)

    def delta(name: str, **labels: str) -> float:
        return _value(after, name, **labels) - _value(before, name, **labels)

    assert delta("qgateway_jobs_finished_total", tenant="acme", backend="aer", state="SUCCEEDED")
    assert delta("qgateway_jobs_finished_total", backend="sick", state="FAILED") == 1
    assert delta("qgateway_jobs_submitted_total", tenant="acme", backend="aer") >= 1
    assert delta("qgateway_job_shots_total", tenant="acme", backend="aer") >= 50
    assert delta("qgateway_job_cost_total", tenant="acme", backend="aer", currency="USD") >= 0.5
    assert delta("qgateway_jobs_refused_total", rpc_response_status_code="UNAVAILABLE") == 1
    assert (
        delta(
            "rpc_server_call_duration_seconds_count",
            rpc_method="qgateway.v1.JobService/Run",
            rpc_response_status_code="OK",
        )
        >= 2
    )
    assert delta("qgateway_job_phase_duration_seconds_count", phase="execute", backend="aer")
    assert delta("qgateway_job_queue_wait_seconds_count", backend="aer") >= 1
    assert delta("qgateway_provider_retries_total", backend="blip") == 2
    assert delta("qgateway_breaker_transitions_total", backend="sick", state="OPEN") == 1
    assert _value(after, "qgateway_breaker_state", backend="aer", state="CLOSED") == 1
    assert _value(after, "qgateway_backend_health", backend="aer") == 1
    assert _value(after, "qgateway_pool_instances", pool="aer", state="idle") >= 1

    # Every catalogued metric is exported under its documented Prometheus names.
    exported = {line.split("{")[0].split(" ")[0] for line in after.splitlines() if line[:1] != "#"}
    for metric in metric_names.ALL:
        for series in metric.prometheus_series:
            assert series in exported, series

    # The failure that opened the breaker is an event on its job's span, which is an error.
    def failed_span(r: OtlpReceiver) -> ReceivedSpan | None:
        return next(
            (
                x
                for x in r.trace(failed.trace_id)
                if x.name == "qgateway.job.execute" and x.attributes["qgateway.job.id"] == failed.id
            ),
            None,
        )

    span = env.receiver.wait_for(failed_span)
    assert "breaker transition" in span.events and span.status_code == ERROR_STATUS

    # ...and pushed over OTLP under their OpenTelemetry names.
    want = {m.name for m in metric_names.ALL}
    env.receiver.wait_for(lambda r: want <= r.metric_names, timeout=10)

    # A Run that outlasts its deadline answers DEADLINE_EXCEEDED while its job runs on: not a
    # refusal (it was counted as one, and again for every retry of it).
    with _client(env) as client:
        with pytest.raises(DeadlineExceededError) as late:
            client.run(slow_circuit(), backend="aer", shots=100_000, seed=3, timeout=1.0)
        assert late.value.reason == "RUN_DEADLINE_EXCEEDED"
        client.cancel(late.value.metadata["job"], timeout=30)
    late_run = {
        "rpc_method": "qgateway.v1.JobService/Run",
        "rpc_response_status_code": "DEADLINE_EXCEEDED",
    }

    def counted(_: OtlpReceiver) -> str | None:
        text = _scrape(env)
        return text if _value(text, "rpc_server_call_duration_seconds_count", **late_run) else None

    last = env.receiver.wait_for(counted, timeout=10)
    assert _value(last, "qgateway_jobs_refused_total", **late_run) == 0


@pytest.mark.timeout(30)
def test_secrets_never_reach_the_log(env: Env) -> None:
    with _client(env) as client:
        _run(client, "aer", 10)
    wrong = generate_key("acme").key
    with (
        Client(env.gateway.address, metadata=[("authorization", f"Bearer {wrong}")]) as other,
        pytest.raises(Exception),  # noqa: B017 - refused: unauthenticated
    ):
        other.run(_distinct_circuit(), backend="aer", shots=10, timeout=10)
    text = env.log.read_text()
    for key in (KEY.key, wrong):
        secret = key.split("_", 2)[2]  # qgw_<prefix>_<secret>; the secret may hold "_"
        assert len(secret) >= 20 and secret not in text


RECOVERY_CONFIG = """
[backends.aer]
adapter = "aer"
pool = {{ min_instances = 1, max_instances = 1 }}
options = {{ method = "statevector" }}

[telemetry.tracing]
enabled = true
otlp_endpoint = "{endpoint}"
export_interval_s = 0.1
"""


@pytest.mark.timeout(120)
def test_a_job_recovered_after_a_crash_links_to_its_original_trace(
    env: Env, tmp_path: Path
) -> None:
    text = RECOVERY_CONFIG.format(endpoint=env.receiver.endpoint)
    config = write_config(tmp_path / "r.toml", tmp_path / "data", text)
    gateway = GatewayProcess.start(config, tmp_path / "r.log")
    try:
        provider = TracerProvider()
        with (
            provider.get_tracer("test").start_as_current_span("caller") as root,
            Client(gateway.address, retry=ONCE) as client,
        ):
            job = client.submit(slow_circuit(), backend="aer", shots=10000, seed=1)
            for event in client.watch(job.name, timeout=60):
                if event.state is JobState.RUNNING:
                    break
        original = trace.format_trace_id(root.get_span_context().trace_id)
        assert job.trace_id == original
        gateway.kill()  # SIGKILL while it runs: recovered (run again) at the next start
        gateway = GatewayProcess.start(config, tmp_path / "r.log")
        with Client(gateway.address, retry=ONCE) as client:
            done = client.wait(job.name, timeout=90)
        assert done.state is JobState.SUCCEEDED
        assert done.trace_id == original  # the job keeps the trace it was created in

        def relinked(r: OtlpReceiver) -> ReceivedSpan | None:
            return next(
                (
                    s
                    for s in r.spans
                    if s.name == "qgateway.job.execute"
                    and s.attributes.get("qgateway.job.id") == job.id
                    and s.trace_id != original
                ),
                None,
            )

        span = env.receiver.wait_for(relinked)
        assert span.links == (original,)
        assert span.attributes["qgateway.job.state"] == "SUCCEEDED"
    finally:
        gateway.terminate()


def test_the_audit_record_carries_the_trace_the_gateway_started(env: Env) -> None:
    # No traceparent from this caller: the gateway starts the trace, and the call's audit
    # record names it, as GetJob does.
    with _client(env) as client:
        job = _run(client, "aer", shots=16)
    assert job.trace_id
    channel = grpc.insecure_channel(env.gateway.address)
    try:
        admin = admin_service_pb2_grpc.AdminServiceStub(channel)  # type: ignore[no-untyped-call]
        md = [("authorization", f"Bearer {KEY.key}")]
        request = admin_service_pb2.ListAuditRecordsRequest(filter='method = "Run"', page_size=1000)
        records = []
        while True:
            reply = admin.ListAuditRecords(request, metadata=md, timeout=10)
            records += [r for r in reply.audit_records if r.resource == job.name]
            if not reply.next_page_token:
                break
            request.page_token = reply.next_page_token
    finally:
        channel.close()
    assert [r.trace_id for r in records] == [job.trace_id]
