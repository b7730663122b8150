"""The IBM cloud runner through real gateways, against the Runtime stub in its own process.

qiskit-ibm-runtime's own client talks to a loopback stub of the Runtime REST API and IAM
(gateway.backends.ibm.stub_service), which runs the ISA circuits on Aer and answers in the
Runtime's result format: everything up to the network boundary is the SDK's real code.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from qgateway import Client, JobState, RetryPolicy
from qgateway.client import sampler_pub
from qgateway.errors import InvalidArgumentError, UnavailableError

from tests.gateway_process import GatewayProcess, children_of, write_config
from tests.ibm_stub import API_KEY, IbmStub
from tests.loopback_service import TWO_REGISTERS

# One compile worker: each imports qiskit-ibm-runtime and fetches the device target.
ADMIN = "\n[compiler]\nworkers = 1\n\n[auth]\nanonymous_admin = true\n"
# The module gateway's "ibmq" price table.
PRICE = '{ per_task = 0.5, per_shot = 0.01, per_second = 1.6, unit = "USD" }'


@pytest.fixture(scope="module")
def stub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[IbmStub]:
    root = tmp_path_factory.mktemp("ibm-stub")
    process = IbmStub.start(root / "state", root / "stub.log")
    yield process
    assert process.stop() == 0


@pytest.fixture(scope="module")
def gateway(stub: IbmStub, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    root = tmp_path_factory.mktemp("ibm-gw")
    # "ibmq1" runs one job at a time and opens its breaker at the first backend fault.
    strict = stub.backend_block(
        "ibmq1",
        extra="health_interval_s = 0.3\nbreaker = { failure_threshold = 1, cooldown_s = 2 }\n",
        max_concurrent_jobs=1,
    )
    # "ibmq2": jobs wait at most 3 s in its queue; its breaker stays open once it opens.
    short = stub.backend_block(
        "ibmq2",
        extra="health_interval_s = 0.3\nmax_queue_time_s = 3\n"
        "breaker = { failure_threshold = 1, cooldown_s = 60 }\n",
        max_concurrent_jobs=1,
    )
    # Probed often: it is back SERVING soon after a test refused its key.
    priced = stub.backend_block(extra=f"health_interval_s = 0.5\nprice = {PRICE}\n")
    config = write_config(root / "g.toml", root / "data", priced + strict + short + ADMIN)
    gw = GatewayProcess.start(config, root / "gateway.log")
    yield gw
    assert gw.terminate() == 0
    assert API_KEY not in (root / "gateway.log").read_text()
    # Nor in the store (jobs, sessions, audit records) or any other file the gateway keeps.
    stored = [p for p in (root / "data").iterdir() if p.is_file()]
    assert any(p.name.startswith("qgateway.db") for p in stored)
    for path in stored:
        assert API_KEY.encode() not in path.read_bytes(), f"the IBM token in {path.name}"


def until(client: Client, name: str, state: JobState) -> JobState:
    for job in client.watch(name, timeout=20):
        if job.state is state or job.done:
            return job.state
    raise AssertionError(f"{name} never reached {state}")


def wait_for(check: object, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def runtime_session(stub: IbmStub, provider_id: str) -> dict[str, object]:
    (found,) = [s for s in stub.stats()["sessions"] if s["id"] == provider_id]
    return found


def session_ids(stub: IbmStub, job_id: str) -> list[object]:
    return [j["session_id"] for j in stub.jobs_tagged(job_id)]


def test_a_job_runs_queued_running_done_with_a_real_result(
    stub: IbmStub, gateway: GatewayProcess
) -> None:
    stub.control("hold_jobs", {"on": True})
    try:
        with Client(gateway.address, retry=RetryPolicy(max_attempts=1)) as client:
            # A device is hardware: only tenants whose allowed_hardware names it may use it.
            assert client.get_backend("ibmq").kind == "HARDWARE"
            job = client.submit(TWO_REGISTERS, backend="ibmq", shots=32, request_id="ibm-1")
            assert until(client, job.name, JobState.RUNNING) is JobState.RUNNING
            (remote,) = stub.jobs_tagged(job.id)
            assert remote["status"] == "Queued"  # held at the provider, RUNNING at the gateway
            stub.control("hold_jobs", {"on": False})
            done = client.wait(job.name, timeout=20)
        assert done.state is JobState.SUCCEEDED, done.error_message
        assert done.result is not None
        assert done.result.counts(register="a") == {"01": 32}
        assert done.result.counts(register="b") == {"011": 32}
        assert [j["status"] for j in stub.jobs_tagged(job.id)] == ["Completed"]
        assert remote["max_execution_time"] is None  # none asked: IBM's own default
    finally:
        stub.control("hold_jobs", {"on": False})


def test_a_jobs_execution_time_limit_bounds_the_runtime_job_too(
    stub: IbmStub, gateway: GatewayProcess
) -> None:
    # The gateway's limit counts IBM's queue and cancels; the runtime job now carries it too
    # (whole seconds), so a cancel that does not get through still leaves it bounded at IBM.
    with Client(gateway.address, retry=RetryPolicy(max_attempts=1)) as client:
        pub = sampler_pub(TWO_REGISTERS, shots=8)
        done = client.run_pubs([pub], backend="ibmq", max_execution_time=90.5, timeout=30)
    assert done.state is JobState.SUCCEEDED, done.error_message
    (remote,) = stub.jobs_tagged(done.id)
    assert remote["max_execution_time"] == 91


X_ON_QUBIT_0 = 'OPENQASM 3.0;\ninclude "stdgates.inc";\nqubit[2] q;\nx q[0];\n'


def test_estimator_pubs_and_pubs_the_runtime_cannot_group(
    stub: IbmStub, gateway: GatewayProcess
) -> None:
    with Client(gateway.address, retry=RetryPolicy(max_attempts=1)) as client:
        # Through the runtime's client-side Estimator: "IZ" is Z on qubit 0 (flipped), "ZI"
        # on qubit 1; basis states give exactly -1 and +1 whatever the sampling.
        values = client.estimate(
            X_ON_QUBIT_0, ["IZ", "ZI"], backend="ibmq", precision=0.05, timeout=30
        )
        assert values.expectation_values == [-1.0, 1.0]
        # Its primitives run one shot count per job: PUBs asking for different ones are
        # refused when submitted (the runtime's guidance: one job per group); no job is made.
        pubs = [sampler_pub(TWO_REGISTERS, shots=8), sampler_pub(TWO_REGISTERS, shots=16)]
        jobs = len(list(client.list_jobs()))
        runtime_jobs = len(stub.stats()["jobs"])
        with pytest.raises(InvalidArgumentError) as refused:
            client.submit_pubs(pubs, backend="ibmq")
        assert refused.value.reason == "UNSUPPORTED_FEATURE"
        assert "one shots per job" in str(refused.value)
        assert len(list(client.list_jobs())) == jobs
        assert len(stub.stats()["jobs"]) == runtime_jobs


def test_provider_failures_and_cancel(stub: IbmStub, gateway: GatewayProcess) -> None:
    with Client(gateway.address, retry=RetryPolicy(max_attempts=1)) as client:
        # A job that fails at the provider.
        stub.control("fail", {"jobs": 1, "message": "calibration drifted"})
        failed = client.wait(client.submit(TWO_REGISTERS, backend="ibmq", shots=8).name, timeout=20)
        assert failed.state is JobState.FAILED
        assert failed.error_reason == "EXECUTION_FAILED"
        assert "calibration drifted" in (failed.error_message or "")
        # A create the provider refuses as invalid: its code in the job's error metadata.
        stub.control("fail", {"creates": 1, "status": 400, "code": 1216, "message": "bad pub"})
        refused = client.wait(
            client.submit(TWO_REGISTERS, backend="ibmq", shots=8).name, timeout=20
        )
        assert refused.state is JobState.FAILED
        assert refused.error_reason == "PROVIDER_REJECTED"
        assert refused.error is not None
        assert refused.error.metadata.get("providerErrorCode") == "1216"
        # CancelJob cancels the runtime job.
        stub.control("hold_jobs", {"on": True})
        try:
            doomed = client.submit(TWO_REGISTERS, backend="ibmq", shots=8)
            assert until(client, doomed.name, JobState.RUNNING) is JobState.RUNNING
            client.cancel(doomed.name)
            assert client.wait(doomed.name, timeout=20).state is JobState.CANCELLED
            assert [j["status"] for j in stub.jobs_tagged(doomed.id)] == ["Cancelled"]
        finally:
            stub.control("hold_jobs", {"on": False})


def test_a_burst_keeps_to_the_create_rate(stub: IbmStub, gateway: GatewayProcess) -> None:
    # The stub answers 429 above 5 creates in any second; the gateway paces itself to 4/s.
    stub.control("throttle", {"creates_per_s": 5})
    before = stub.stats()
    try:
        with Client(gateway.address, retry=RetryPolicy(max_attempts=1)) as client:
            jobs = [client.submit(TWO_REGISTERS, backend="ibmq", shots=4) for _ in range(10)]
            for job in jobs:
                assert client.wait(job.name, timeout=20).state is JobState.SUCCEEDED
    finally:
        stub.control("throttle", {"creates_per_s": None})
    after = stub.stats()
    assert after["creates"] - before["creates"] == 10
    assert after["create_calls"] - before["create_calls"] == 10  # none refused, none repeated
    per_second = {
        k: v - before["create_calls_per_second"].get(k, 0)
        for k, v in after["create_calls_per_second"].items()
    }
    assert max(per_second.values()) <= 5, per_second


@pytest.mark.timeout(60)
def test_sigkill_between_create_and_storing_the_id_makes_one_runtime_job(
    stub: IbmStub, tmp_path: Path
) -> None:
    # The job belongs to a session: its runtime session survives the restart too.
    config = write_config(tmp_path / "g.toml", tmp_path / "data", stub.backend_block() + ADMIN)
    log = tmp_path / "gateway.log"
    stub.control("hold_create", {"count": 1})
    try:
        gw = GatewayProcess.start(config, log)
        with Client(gw.address, retry=RetryPolicy(max_attempts=1)) as client:
            s = client.create_session("ibmq", mode="DEDICATED")
            job = client.submit(
                TWO_REGISTERS, backend="ibmq", shots=16, request_id="kill-1", session=s.name
            )
        # The runtime job exists; its id never reached the gateway.
        wait_for(lambda: len(stub.jobs_tagged(job.id)) == 1)
        gw.kill()
    finally:
        stub.control("release_create")
    (provider_id,) = session_ids(stub, job.id)
    opened = len(stub.stats()["sessions"])
    gw = GatewayProcess.start(config, log)
    try:
        with Client(gw.address, retry=RetryPolicy(max_attempts=1)) as client:
            done = client.wait(job.name, timeout=30)
            # The stored runtime session is re-used by the session's next job, not re-opened.
            assert client.get_session(s.name).provider_session_id == provider_id
            second = client.submit(TWO_REGISTERS, backend="ibmq", shots=8, session=s.name)
            assert client.wait(second.name, timeout=20).state is JobState.SUCCEEDED
            assert session_ids(stub, second.id) == [provider_id]
            assert len(stub.stats()["sessions"]) == opened
            client.close_session(s.name)
            wait_for(lambda: runtime_session(stub, provider_id)["accepting_jobs"] is False)
    finally:
        assert gw.terminate() == 0
    assert done.state is JobState.SUCCEEDED, done.error_message
    assert done.result is not None and done.result.counts(register="a") == {"01": 16}
    assert len(stub.jobs_tagged(job.id)) == 1  # found by its tag, never submitted again
    # Its usage, with no prepared job after the restart: shots from the stored spec, the
    # runtime job's quantum seconds (the stub's default, 1).
    assert done.usage is not None
    assert (done.usage.shots, done.usage.execution_time.total_seconds()) == (16, 1.0)
    assert API_KEY not in log.read_text()


def test_a_rejected_key_stops_the_backend_and_queued_jobs_wait(
    stub: IbmStub, gateway: GatewayProcess
) -> None:
    # ibmq1 runs one job at a time: `running` holds the slot while the others queue.
    stub.control("hold_jobs", {"on": True})
    try:
        with Client(gateway.address, retry=RetryPolicy(max_attempts=1)) as client:
            running = client.submit(TWO_REGISTERS, backend="ibmq1", shots=8)
            assert until(client, running.name, JobState.RUNNING) is JobState.RUNNING
            queued = [client.submit(TWO_REGISTERS, backend="ibmq1", shots=8) for _ in range(2)]
            stub.control("reject_token", {"on": True})

            def serving(expected: bool) -> bool:
                health = client.get_backend("ibmq1", view="FULL").health
                return health is not None and health.serving is expected

            wait_for(lambda: serving(False))  # the probe's status call is refused
            # The running job finishes at the provider while the gateway cannot read it:
            # it is followed again later, not failed; the queued jobs wait.
            stub.control("hold_jobs", {"on": False})
            wait_for(lambda: stub.jobs_tagged(running.id)[0]["status"] == "Completed")
            assert client.get_job(running.name).state is JobState.RUNNING
            assert [client.get_job(j.name).state for j in queued] == [JobState.QUEUED] * 2
            stub.control("reject_token", {"on": False})
            for job in [running, *queued]:
                assert client.wait(job.name, timeout=20).state is JobState.SUCCEEDED
            wait_for(lambda: serving(True))
            # A submission the provider refuses for the key created nothing: the job goes
            # back to the queue, and the breaker (threshold 1) counts a backend fault.
            stub.control("reject_token", {"on": True})
            refused = client.submit(TWO_REGISTERS, backend="ibmq1", shots=8)
            wait_for(lambda: client.get_backend("ibmq1", view="FULL").breaker_state == "OPEN")
            wait_for(lambda: serving(False))
            job = client.get_job(refused.name)
            assert job.state is JobState.QUEUED
            assert JobState.SUBMITTING in [t.state for t in job.state_history]
            assert stub.jobs_tagged(refused.id) == []
            # The key works again: after the cool-down the job runs, created once.
            stub.control("reject_token", {"on": False})
            done = client.wait(refused.name, timeout=20)
            assert done.state is JobState.SUCCEEDED, done.error_message
            assert len(stub.jobs_tagged(refused.id)) == 1
    finally:
        stub.control("hold_jobs", {"on": False})
        stub.control("reject_token", {"on": False})


def test_a_job_refused_for_the_key_waits_up_to_its_queue_time_limit(
    stub: IbmStub, gateway: GatewayProcess
) -> None:
    stub.control("reject_token", {"on": True})
    try:
        with Client(gateway.address, retry=RetryPolicy(max_attempts=1)) as client:
            job = client.submit(TWO_REGISTERS, backend="ibmq2", shots=8)
            done = client.wait(job.name, timeout=20)
            # Back in the queue after the refusal, behind the open breaker until its 3 s were
            # over: failed as queued jobs fail there, never created at the provider.
            assert done.state is JobState.FAILED
            assert done.error_reason == "BACKEND_UNAVAILABLE", done.error_message
            assert client.get_backend("ibmq2", view="FULL").breaker_state == "OPEN"
            assert stub.jobs_tagged(job.id) == []
    finally:
        stub.control("reject_token", {"on": False})


def test_a_session_runs_in_a_runtime_session_or_batch_that_ends_with_it(
    stub: IbmStub, gateway: GatewayProcess
) -> None:
    with Client(gateway.address, retry=RetryPolicy(max_attempts=1)) as client:
        # DEDICATED: an IBM Runtime Session, opened when the first job runs; CloseSession
        # closes it (no more jobs) without cancelling.
        s = client.create_session("ibmq", mode="DEDICATED", max_ttl=600)
        assert client.get_session(s.name).provider_session_id == ""  # nothing ran yet
        jobs = [client.submit(TWO_REGISTERS, backend="ibmq", shots=8, session=s.name)]
        jobs.append(client.submit(TWO_REGISTERS, backend="ibmq", shots=8, session=s.name))
        for job in jobs:
            assert client.wait(job.name, timeout=20).state is JobState.SUCCEEDED
        provider_id = client.get_session(s.name).provider_session_id
        assert provider_id
        assert [session_ids(stub, j.id) for j in jobs] == [[provider_id], [provider_id]]
        opened = runtime_session(stub, provider_id)
        assert (opened["mode"], opened["max_ttl"], opened["accepting_jobs"]) == (
            "dedicated",
            600,
            True,
        )
        client.close_session(s.name)
        wait_for(lambda: runtime_session(stub, provider_id)["accepting_jobs"] is False)
        assert runtime_session(stub, provider_id)["cancelled"] is False

        # BATCH: an IBM Runtime Batch; CancelSession cancels it (and its queued jobs).
        b = client.create_session("ibmq", mode="BATCH")
        stub.control("hold_jobs", {"on": True})
        try:
            held = client.submit(TWO_REGISTERS, backend="ibmq", shots=8, session=b.name)
            assert until(client, held.name, JobState.RUNNING) is JobState.RUNNING
            batch_id = client.get_session(b.name).provider_session_id
            assert batch_id and batch_id != provider_id
            assert runtime_session(stub, batch_id)["mode"] == "batch"
            assert session_ids(stub, held.id) == [batch_id]
            client.cancel_session(b.name)
            assert client.wait(held.name, timeout=20).state is JobState.CANCELLED
            wait_for(lambda: runtime_session(stub, batch_id)["cancelled"] is True)
            assert [j["status"] for j in stub.jobs_tagged(held.id)] == ["Cancelled"]
        finally:
            stub.control("hold_jobs", {"on": False})

        # A session whose idle TTL passes ends by itself, and its runtime session with it.
        e = client.create_session("ibmq", mode="DEDICATED", idle_ttl=1.0)
        only = client.submit(TWO_REGISTERS, backend="ibmq", shots=8, session=e.name)
        assert client.wait(only.name, timeout=20).state is JobState.SUCCEEDED
        expiring_id = client.get_session(e.name).provider_session_id
        wait_for(lambda: runtime_session(stub, expiring_id)["accepting_jobs"] is False)
        assert client.get_session(e.name).state.name == "CLOSED"


def test_a_compile_worker_gets_the_device_target_from_the_gateway(
    stub: IbmStub, gateway: GatewayProcess
) -> None:
    # Each compile worker fetched the device's target from IBM at its start, and a worker
    # replaced after a kill (a hostile circuit's) asked again: calls to IBM, and seconds of
    # a blackholed network in every worker start.
    (compiler,) = [w for w in children_of(gateway.pid) if "compile" in w.cmdline()]
    before = stub.stats()["calls"].get("GET /backends/{id}/configuration", 0)
    compiler.kill()
    compiler.wait(10)
    with Client(gateway.address, retry=RetryPolicy(max_attempts=1)) as client:
        # A circuit not compiled before: the new worker compiles it for the device.
        job = client.submit(X_ON_QUBIT_0 + "bit[2] c;\nc = measure q;\n", backend="ibmq")
        done = client.wait(job.name, timeout=30)
    assert done.state is JobState.SUCCEEDED, done.error_message
    assert [w.pid for w in children_of(gateway.pid) if "compile" in w.cmdline()] != [compiler.pid]
    assert stub.stats()["calls"].get("GET /backends/{id}/configuration", 0) == before


def test_a_key_refused_at_start_stops_only_its_backend_until_the_target_is_fetched(
    stub: IbmStub, tmp_path: Path
) -> None:
    # Last in the module: the refused key also stops the module gateway's probes meanwhile.
    stub.control("reject_token", {"on": True})
    try:
        aer = '[backends.aer]\nadapter = "aer"\npool = { min_instances = 1, max_instances = 1 }\n'
        ibm = stub.backend_block(extra="health_interval_s = 0.3\n")
        config = write_config(tmp_path / "g.toml", tmp_path / "data", aer + ibm + ADMIN)
        gateway = GatewayProcess.start(config, tmp_path / "gateway.log")
        try:
            with Client(gateway.address, retry=RetryPolicy(max_attempts=1)) as client:
                # The gateway serves; its other backend runs jobs.
                ran = client.run(TWO_REGISTERS, backend="aer", shots=8)
                assert ran.counts(register="b") == {"011": 8}
                device = client.get_backend("ibmq", view="FULL")
                assert device.health is not None and not device.health.serving
                assert device.health.last_error == "TARGET_UNAVAILABLE"
                assert device.num_qubits == 0  # nothing is claimed before the device says it
                with pytest.raises(UnavailableError) as refused:
                    client.submit(TWO_REGISTERS, backend="ibmq", shots=8)
                assert refused.value.reason == "BACKEND_UNAVAILABLE"
                assert refused.value.metadata["targetFetched"] == "false"
                assert "HTTP 401" in refused.value.message
                assert refused.value.retry_delay == pytest.approx(0.3)
                with pytest.raises(UnavailableError):
                    client.get_backend_target("ibmq")
                # The key works again: a probe fetches the target and the device serves.
                stub.control("reject_token", {"on": False})
                wait_for(lambda: client.get_backend("ibmq", view="FULL").health.serving)
                assert client.get_backend("ibmq").num_qubits == 5
                assert client.get_backend_target("ibmq").num_qubits == 5
                done = client.wait(
                    client.submit(TWO_REGISTERS, backend="ibmq", shots=8).name, timeout=20
                )
                assert done.state is JobState.SUCCEEDED, done.error_message
                # A compile worker started from now on gets the target the gateway fetched:
                # the replacement of a killed one compiles without asking IBM.
                (compiler,) = [w for w in children_of(gateway.pid) if "compile" in w.cmdline()]
                before = stub.stats()["calls"].get("GET /backends/{id}/configuration", 0)
                compiler.kill()
                compiler.wait(10)
                job = client.submit(
                    X_ON_QUBIT_0 + "bit[2] c;\nc = measure q;\nx q[1];\n", backend="ibmq"
                )
                done = client.wait(job.name, timeout=30)
                assert done.state is JobState.SUCCEEDED, done.error_message
                after = stub.stats()["calls"].get("GET /backends/{id}/configuration", 0)
                assert after == before
        finally:
            assert gateway.terminate() == 0
        assert API_KEY not in (tmp_path / "gateway.log").read_text()
    finally:
        stub.control("reject_token", {"on": False})


def test_a_poll_the_provider_never_answers_gives_its_slot_back(
    stub: IbmStub, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The SDK read answers with no read timeout: a provider that accepted a job's GET and
    # never answered held the poll's thread, and its slot of the polls' limit
    # (max_concurrent_jobs), for ever; once that many polls hung, no job was polled again.
    # The runner here is built in this process, against the stub, through the real SDK.
    import anyio
    from pydantic import SecretStr
    from requests.adapters import HTTPAdapter

    from gateway.backends.ibm import cloud
    from gateway.domain.errors import ExecutionError
    from gateway.domain.failures import FailureKind
    from tests.ibm_stub import CRN, DEVICE

    monkeypatch.setenv("IAM_URL", "restored-by-the-test")  # the runner sets it process-wide
    monkeypatch.delenv("IAM_URL")
    settings = cloud.CloudSettings(
        name="ibm-stalled",
        device=DEVICE,
        channel="ibm_cloud",
        instance=CRN,
        url=f"http://{stub.address}/api/v1",
        iam_url=f"http://{stub.address}",
        token=SecretStr(API_KEY),
        max_concurrent_jobs=1,
        request_timeout_s=0.5,
        retry_attempts=1,
    )
    runner = cloud.IbmCloudRunner(settings)
    service = runner._client.service()  # built (and authenticated) before the stall
    # The SDK's session retries a timed-out read 5 times with back-off (~16 s); not here.
    service._active_api_client._session.mount("http://", HTTPAdapter(max_retries=0))
    stub.control("stall_job_gets", {"on": True})
    try:

        async def poll() -> None:
            with anyio.fail_after(20):  # the stub holds a stalled GET for 60 s
                await runner.wait(cloud.IbmCloudHandle("job-1", "d-stalled"))

        with pytest.raises(ExecutionError) as given_up:
            anyio.run(poll)
        assert given_up.value.kind is FailureKind.TRANSIENT
        assert runner._waits.borrowed_tokens == 0  # the slot came back with the thread
    finally:
        stub.control("stall_job_gets", {"on": False})
