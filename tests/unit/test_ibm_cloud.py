"""The IBM cloud runner's logic, in process: pacing, failure kinds, never creating twice, and
reading the runtime's results into the gateway's."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import numpy as np
import pytest
from pydantic import SecretStr
from qiskit.primitives import BitArray, DataBin, PrimitiveResult, SamplerPubResult
from qiskit.primitives.containers import PubResult

from gateway.backends.base import TargetUnavailable
from gateway.backends.ibm import cloud
from gateway.backends.ibm.options import IbmOptions
from gateway.backends.qiskit.adapter import QiskitPayload
from gateway.domain.errors import ExecutionError
from gateway.domain.failures import FailureKind
from gateway.domain.jobs import EstimatorResult, SamplerOutput, SamplerResult


def settings(**kw: Any) -> cloud.CloudSettings:
    return cloud.CloudSettings(
        name="ibmq",
        device="ibm_test",
        channel="ibm_cloud",
        instance="crn:v1:bluemix:public:quantum-computing:us-east:a/0:1::",
        url=None,
        iam_url=None,
        token=SecretStr("secret-key"),
        **kw,
    )


def test_creates_are_spaced_one_over_the_rate() -> None:
    now = [0.0]
    bucket = cloud._TokenBucket(4.0, clock=lambda: now[0])
    delays = [bucket.delay() for _ in range(5)]
    # Taken at once: the first goes now, each next one 0.25 s after the one before.
    assert delays == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0])
    now[0] = 10.0  # idle: no saved-up burst
    assert bucket.delay() == 0.0
    assert bucket.delay() == pytest.approx(0.25)


class IBMNotAuthorizedError(Exception):
    pass


class RequestsApiError(Exception):
    def __init__(self, message: str, status_code: int = -1) -> None:
        super().__init__(message)
        self.status_code = status_code


class Response:
    def __init__(self, status: int, body: object) -> None:
        self.status_code = status
        self._body = body

    def json(self) -> object:
        return self._body


class HTTPError(Exception):
    def __init__(self, response: Response) -> None:
        super().__init__(f"{response.status_code} Client Error")
        self.response = response


def raised(exc: BaseException, wrap: bool) -> BaseException:
    """`exc` as the SDK raises it: re-raised from None (the status only on the context)."""
    if not wrap:
        return exc
    try:
        try:
            raise exc
        except BaseException:
            raise RuntimeError("Failed to run program") from None
    except RuntimeError as outer:
        return outer


@pytest.mark.parametrize(
    ("exc", "kind", "reason"),
    [
        (IBMNotAuthorizedError("401 Client Error"), FailureKind.CREDENTIALS, "PROVIDER_ERROR"),
        (RequestsApiError("429", 429), FailureKind.TRANSIENT, "PROVIDER_ERROR"),
        (RequestsApiError("502", 502), FailureKind.TRANSIENT, "PROVIDER_ERROR"),
        (ConnectionResetError("reset"), FailureKind.TRANSIENT, "PROVIDER_ERROR"),
        (
            HTTPError(Response(400, {"error": {"code": 1216}})),
            FailureKind.CLIENT_ERROR,
            "PROVIDER_REJECTED",
        ),
        (ValueError("something else"), FailureKind.BACKEND_FAULT, "EXECUTION_FAILED"),
    ],
)
@pytest.mark.parametrize("wrap", [False, True])
def test_provider_errors_become_failure_kinds(
    exc: BaseException, kind: FailureKind, reason: str, wrap: bool
) -> None:
    runner = cloud.IbmCloudRunner(settings())
    err = runner._error(raised(exc, wrap), "r-1")
    assert (err.kind, err.reason) == (kind, reason)
    assert err.metadata["providerJobId"] == "r-1"
    if reason == "PROVIDER_REJECTED":
        assert err.metadata["providerErrorCode"] == "1216"
        assert err.metadata["providerStatus"] == "400"
    assert "secret-key" not in err.message


def test_refused_credentials_while_following_a_job_are_transient() -> None:
    runner = cloud.IbmCloudRunner(settings())
    fault = runner._error(IBMNotAuthorizedError("401"), "r-1")
    assert cloud._while_following(fault).kind is FailureKind.TRANSIENT
    other = ExecutionError("EXECUTION_FAILED", "x", kind=FailureKind.BACKEND_FAULT)
    assert cloud._while_following(other) is other


def test_a_transient_create_is_retried_only_when_no_job_carries_the_tag() -> None:
    runner = cloud.IbmCloudRunner(settings(retry_backoff_s=0.01), sleep=lambda s: None)
    creates: list[list[str]] = []
    found: list[str | None] = ["r-made-by-the-lost-reply"]

    def create(primitive: str, pubs: Any, tags: list[str], options: Any, job: Any) -> str:
        creates.append(tags)
        raise ExecutionError("PROVIDER_ERROR", "503", kind=FailureKind.TRANSIENT)

    runner._create = create  # type: ignore[method-assign]
    runner._find = lambda job_id, remote_id: found[0]  # type: ignore[method-assign]
    job = type("J", (), {"id": "job-1"})()
    payload = QiskitPayload("local_mode", SamplerOutput.COUNTS, ())
    assert runner._submit(payload, None, job) == "r-made-by-the-lost-reply"  # type: ignore[arg-type]
    layout = "qgateway-layout:" + cloud._layout_digest([])
    assert creates == [["qgateway-job:job-1", "qgateway-output:COUNTS", "qgateway-pubs:0", layout]]

    # No job under the tag: created again, up to the attempts.
    found[0] = None
    creates.clear()
    with pytest.raises(ExecutionError) as info:
        runner._submit(payload, None, job)  # type: ignore[arg-type]
    assert info.value.kind is FailureKind.TRANSIENT
    assert len(creates) == runner.settings.retry_attempts

    # The key refused while looking by tag after an uncertain create: TRANSIENT (looked up
    # again later), never CREDENTIALS, which would queue the job and create it again unlooked.
    def refused(job_id: str, remote_id: str | None) -> str | None:
        raise ExecutionError("PROVIDER_ERROR", "401", kind=FailureKind.CREDENTIALS)

    runner._find = refused  # type: ignore[method-assign]
    with pytest.raises(ExecutionError) as lookup:
        runner._submit(payload, None, job)  # type: ignore[arg-type]
    assert lookup.value.kind is FailureKind.TRANSIENT


def test_a_create_throttled_at_every_attempt_is_throttled() -> None:
    # 429 at every attempt made nothing: THROTTLED, which queues the job again (it was
    # TRANSIENT, and the accepted job failed within seconds of throttling).
    runner = cloud.IbmCloudRunner(settings(retry_backoff_s=0.01), sleep=lambda s: None)
    statuses = ["429"] * runner.settings.retry_attempts

    def create(primitive: str, pubs: Any, tags: list[str], options: Any, job: Any) -> str:
        status = statuses.pop(0)
        raise ExecutionError(
            "PROVIDER_ERROR",
            status,
            kind=FailureKind.TRANSIENT,
            metadata={"providerStatus": status},
        )

    runner._create = create  # type: ignore[method-assign]
    runner._find = lambda job_id, remote_id: None  # type: ignore[method-assign]
    job = type("J", (), {"id": "job-1"})()
    payload = QiskitPayload("local_mode", SamplerOutput.COUNTS, ())
    with pytest.raises(ExecutionError) as info:
        runner._submit(payload, None, job)  # type: ignore[arg-type]
    assert info.value.kind is FailureKind.THROTTLED and statuses == []
    # One 503 among them: that create's outcome is unknown, so it stays TRANSIENT.
    statuses[:] = ["503"] + ["429"] * (runner.settings.retry_attempts - 1)
    with pytest.raises(ExecutionError) as mixed:
        runner._submit(payload, None, job)  # type: ignore[arg-type]
    assert mixed.value.kind is FailureKind.TRANSIENT


def test_a_key_refused_after_an_uncertain_create_is_transient() -> None:
    # The first create timed out (the service may still make that job), the retry's key was
    # refused: CREDENTIALS queued the job again without a look, so it was created twice, or
    # the first copy ran on unfollowed if the job was cancelled meanwhile.
    runner = cloud.IbmCloudRunner(settings(retry_backoff_s=0.01), sleep=lambda s: None)
    errors = [
        ExecutionError("PROVIDER_ERROR", "timed out", kind=FailureKind.TRANSIENT),
        ExecutionError("PROVIDER_ERROR", "401", kind=FailureKind.CREDENTIALS),
    ]

    def create(primitive: str, pubs: Any, tags: list[str], options: Any, job: Any) -> str:
        raise errors.pop(0)

    runner._create = create  # type: ignore[method-assign]
    runner._find = lambda job_id, remote_id: None  # type: ignore[method-assign]
    job = type("J", (), {"id": "job-1"})()
    payload = QiskitPayload("local_mode", SamplerOutput.COUNTS, ())
    with pytest.raises(ExecutionError) as info:
        runner._submit(payload, None, job)  # type: ignore[arg-type]
    assert info.value.kind is FailureKind.TRANSIENT and not errors

    # Refused on the first attempt, nothing was made: CREDENTIALS (queued again).
    errors[:] = [ExecutionError("PROVIDER_ERROR", "401", kind=FailureKind.CREDENTIALS)]
    with pytest.raises(ExecutionError) as first:
        runner._submit(payload, None, job)  # type: ignore[arg-type]
    assert first.value.kind is FailureKind.CREDENTIALS


class _TaggedJob:
    def __init__(self, remote_id: str, ended: bool = False) -> None:
        self.remote_id = remote_id
        self.ended = ended
        self.cancelled = False
        self.tags = ["qgateway-job:job-1"]

    def job_id(self) -> str:
        return self.remote_id

    def cancel(self) -> None:
        if self.ended:
            raise RuntimeError("job already ended")
        self.cancelled = True


def test_extra_copies_under_a_jobs_tag_are_cancelled() -> None:
    # Two creates of one job both made one: the oldest was followed and the others ran and
    # billed for nothing.
    runner = cloud.IbmCloudRunner(settings(retry_attempts=1), sleep=lambda s: None)
    newest, ended, oldest = _TaggedJob("r-3"), _TaggedJob("r-2", ended=True), _TaggedJob("r-1")
    asked: list[list[str]] = []

    class Service:
        def jobs(self, job_tags: list[str], limit: int) -> list[_TaggedJob]:
            asked.append(job_tags)
            return [newest, ended, oldest]  # newest first, as the service lists them

    runner._client.service = Service  # type: ignore[method-assign]
    assert runner._find("job-1", None) == "r-1"
    assert asked == [["qgateway-job:job-1"]]
    assert newest.cancelled and not oldest.cancelled


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_provider_call_that_never_answers_gives_up_transient(anyio_backend: str) -> None:
    # The SDK reads GET and cancel answers without a read timeout: a stalled connection held
    # the job's step, and its slot, for ever.
    runner = cloud.IbmCloudRunner(
        settings(retry_attempts=1, request_timeout_s=0.05, max_retry_backoff_s=0.05)
    )
    stalled = threading.Event()

    def hang(job_id: str, remote_id: str | None) -> str | None:
        stalled.wait(10)  # released when the test ends
        return None

    runner._find = hang  # type: ignore[method-assign]
    job = type("J", (), {"id": "job-1"})()
    try:
        with pytest.raises(ExecutionError) as info:
            await runner.reattach(job, "r-1")  # type: ignore[arg-type]
        assert info.value.kind is FailureKind.TRANSIENT
        assert "did not answer within 0.1s" in info.value.message
    finally:
        stalled.set()


def test_runtime_results_read_as_the_gateways() -> None:
    # Register a: 2 bits, "01" then "10"; b: 3 bits, "011" twice. Shape (2,), 2 shots.
    a = BitArray.from_samples(["01", "10", "01", "01"], num_bits=2).reshape(2, 2)
    b = BitArray.from_samples(["011"] * 4, num_bits=3).reshape(2, 2)
    sampler = SamplerPubResult(DataBin(a=a, b=b, shape=(2,)), metadata={"shots": 2})
    evs = np.array([0.5, -0.25])
    estimator = PubResult(
        DataBin(evs=evs, stds=np.array([0.01, 0.02]), shape=(2,)),
        metadata={"target_precision": 0.01},
    )
    outcome = cloud._outcome(
        PrimitiveResult([sampler, estimator]), SamplerOutput.SAMPLES_AND_COUNTS
    )
    first, second = outcome.result.pubs
    assert isinstance(first, SamplerResult) and isinstance(second, EstimatorResult)
    assert (first.shape, first.shots) == ((2,), 2)
    reg_a, reg_b = first.registers
    assert (reg_a.name, reg_a.num_bits, reg_b.name, reg_b.num_bits) == ("a", 2, "b", 3)
    assert [dict(c) for c in reg_a.counts] == [{"01": 1, "10": 1}, {"01": 2}]
    assert [dict(c) for c in reg_b.counts] == [{"011": 2}, {"011": 2}]
    assert reg_a.samples is not None and reg_a.samples.shape == (2, 2, 1)
    assert reg_a.samples[0, :, 0].tolist() == [1, 2]  # Qiskit's BitArray layout
    assert second.expectation_values.tolist() == [0.5, -0.25]
    assert second.precision == 0.01
    counts_only = cloud._outcome(PrimitiveResult([sampler]), SamplerOutput.COUNTS)
    assert counts_only.result.pubs[0].registers[0].samples is None  # type: ignore[union-attr]


def test_the_output_tag_is_read_back() -> None:
    assert cloud._output_from_tags(["qgateway-job:x", "qgateway-output:COUNTS"]) is (
        SamplerOutput.COUNTS
    )
    assert cloud._output_from_tags([]) is SamplerOutput.SAMPLES_AND_COUNTS


def test_shots_rounded_up_by_twirling_are_cut_to_the_ones_asked_for() -> None:
    # Twirling ran 3 shots per binding where the job asked for 2: the first 2 are kept.
    a = BitArray.from_samples(["01", "10", "11", "00", "00", "01"], num_bits=2).reshape(2, 3)
    sampler = SamplerPubResult(DataBin(a=a, shape=(2,)), metadata={"shots": 3})
    tags = ["qgateway-job:x", "qgateway-shots:2"]
    outcome = cloud._outcome(
        PrimitiveResult([sampler]), SamplerOutput.COUNTS, None, cloud._shots_from_tags(tags)
    )
    (pub,) = outcome.result.pubs
    assert isinstance(pub, SamplerResult) and pub.shots == 2
    assert [dict(c) for c in pub.registers[0].counts] == [{"01": 1, "10": 1}, {"00": 2}]
    assert cloud._shots_from_tags(["qgateway-job:x"]) is None


def test_a_result_that_does_not_answer_the_job_is_refused() -> None:
    # A result with fewer PUBs or fewer shots than the job asked for was a SUCCEEDED job,
    # charged in full, with less than it asked.
    a = BitArray.from_samples(["01", "10", "11", "00"], num_bits=2).reshape(2, 2)
    sampler = SamplerPubResult(DataBin(a=a, shape=(2,)), metadata={"shots": 2})
    tags = ["qgateway-job:x", "qgateway-shots:2", "qgateway-pubs:2"]
    assert cloud._pubs_from_tags(tags) == 2 and cloud._pubs_from_tags(tags[:2]) is None
    with pytest.raises(cloud._Mismatch, match="1 PUB results for the job's 2 PUBs"):
        cloud._outcome(PrimitiveResult([sampler]), SamplerOutput.COUNTS, None, 2, 2)
    with pytest.raises(cloud._Mismatch, match="register a holds 2 shots, the job asked for 4"):
        cloud._outcome(PrimitiveResult([sampler]), SamplerOutput.COUNTS, None, 4, 1)
    answered = cloud._outcome(PrimitiveResult([sampler]), SamplerOutput.COUNTS, None, 2, 1)
    assert len(answered.result.pubs) == 1


def test_a_device_that_never_answers_is_waited_for_briefly_one_fetch_at_a_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # An address that accepts connections and never answers: the SDK reads without a read
    # timeout, and the gateway's start waited minutes for the device's target.
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    accepted: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                accepted.append(server.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    address = f"http://127.0.0.1:{server.getsockname()[1]}"
    monkeypatch.setenv("IAM_URL", address)
    options = IbmOptions(
        backend="ibm_test",
        channel="ibm_cloud",
        instance="crn:v1:bluemix:public:quantum-computing:us-east:a/0:1::",
        token=SecretStr("secret-key"),
        url=f"{address}/api/v1",
        iam_url=address,
    )
    device = cloud.DeviceTarget("ibmq", options, wait_s=0.2)

    def threads() -> int:
        return sum(t.name == "ibm-target" and t.is_alive() for t in threading.enumerate())

    def until_accepted(count: int) -> None:
        deadline = time.monotonic() + 30  # the fetch thread imports the SDK first
        while len(accepted) < count and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(accepted) == count

    try:
        for _ in range(cloud.DeviceTarget.ABANDON_AFTER):
            with pytest.raises(TargetUnavailable, match=r"no answer within 0\.2 s"):
                device.get()
        until_accepted(1)
        assert threads() == 1  # the hung fetch is waited on again, not repeated
        # Hung for as many waits as it may: the next call starts a fetch of its own.
        with pytest.raises(TargetUnavailable):
            device.get()
        assert threads() == 2
        until_accepted(2)
        # That one hangs too, while the first still does: no third thread and socket.
        for _ in range(2 * cloud.DeviceTarget.ABANDON_AFTER):
            with pytest.raises(TargetUnavailable):
                device.get()
        assert threads() == 2 and len(accepted) == 2
    finally:
        server.close()
        for connection in accepted:
            connection.close()


def test_a_session_open_whose_answer_was_lost_is_not_sent_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Constructing the runtime's Session creates it at the service (POST /sessions); the open
    # was retried after a lost answer like a read, opening a second session while the first
    # stayed open, known to nobody (a dedicated one holds the device until its max time).
    opened: list[str] = []

    class LostAnswer:
        def __init__(self, backend: Any, max_time: int) -> None:
            self.session_id = f"s-{len(opened) + 1}"
            opened.append(self.session_id)  # created at the service
            raise TimeoutError("read timed out")  # its answer lost

    runner = cloud.IbmCloudRunner(settings(retry_attempts=4), sleep=lambda s: None)
    runner._client.backend = lambda: object()  # type: ignore[method-assign]
    monkeypatch.setattr(cloud, "_session_class", lambda batch: LostAnswer)
    with pytest.raises(ExecutionError) as failed:
        runner._create_session(_gateway_session())
    assert failed.value.kind is FailureKind.TRANSIENT
    assert opened == ["s-1"]  # one create, not one per attempt


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_session_open_slower_than_a_lookup_is_waited_for(
    anyio_backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The open was bounded like a lookup: given up (TRANSIENT) while its thread went on and
    # opened the session at the service, whose id nobody learned, or closed.
    answer = threading.Event()

    class SlowOpen:
        def __init__(self, backend: Any, max_time: int) -> None:
            answer.wait(10)
            self.session_id = "s-1"

    runner = cloud.IbmCloudRunner(
        settings(retry_attempts=1, request_timeout_s=0.05, max_retry_backoff_s=0.0)
    )
    runner._client.backend = lambda: object()  # type: ignore[method-assign]
    runner._client.service = lambda: object()  # type: ignore[method-assign]
    monkeypatch.setattr(cloud, "_session_class", lambda batch: SlowOpen)
    late = threading.Timer(0.3, answer.set)  # well past a lookup's bound of 0.05 s
    late.start()
    try:
        assert await runner.open_session(_gateway_session()) == "s-1"
    finally:
        answer.set()
        late.cancel()


def _gateway_session() -> Any:
    from datetime import UTC, datetime

    from gateway.domain.sessions import FailurePolicy, Session, SessionMode, SessionState

    return Session(
        id="g-1",
        tenant="alice",
        backend="ibmq",
        mode=SessionMode.DEDICATED,
        state=SessionState.PENDING,
        failure_policy=FailurePolicy.CONTINUE,
        max_ttl_s=3600.0,
        idle_ttl_s=300.0,
        created_at=datetime(2026, 12, 1, tzinfo=UTC),
        request_id="",
        labels={},
        last_activity_at=None,
    )


class _RuntimeJob:
    """A runtime job as the SDK's service returns it: a status, metrics and a result."""

    def __init__(self, status: str, metrics: object = None, result: object = None) -> None:
        self._status = status
        self._metrics = metrics
        self._result = result
        self.tags: list[str] = []
        self.cancels = 0

    def status(self) -> str:
        return self._status

    def metrics(self) -> object:
        return self._metrics

    def result(self) -> object:
        return self._result

    def error_message(self) -> str:
        return "calibration lost"

    def job_id(self) -> str:
        return "r-1"

    def cancel(self) -> None:
        from qiskit_ibm_runtime.exceptions import RuntimeInvalidStateError

        self.cancels += 1
        if self._status in ("DONE", "ERROR", "CANCELLED"):
            raise RuntimeInvalidStateError("the job has already ended")


def _following(job: _RuntimeJob) -> cloud.IbmCloudRunner:
    runner = cloud.IbmCloudRunner(settings(retry_attempts=1), sleep=lambda s: None)
    service = type("Service", (), {"job": lambda self, remote_id: job})()
    runner._client.service = lambda: service  # type: ignore[method-assign]
    return runner


@pytest.mark.parametrize(
    ("metrics", "seconds"),
    [
        ({"usage": {"quantum_seconds": 0}}, 0.0),  # ran nothing billable: zero, not unknown
        ({"usage": {"quantum_seconds": 3, "seconds": 9}}, 3.0),  # the charged time first
        ({"usage": {"qpu_charge_time_seconds": 2.5}}, 2.5),
        ({"usage": {"quantum_seconds": True}}, None),  # a flag is no count of seconds
        ({"usage": {"quantum_seconds": -1}}, None),
        ({"usage": None}, None),
    ],
)
def test_the_charged_quantum_seconds_are_read_from_the_metrics(
    metrics: object, seconds: float | None
) -> None:
    job = _RuntimeJob("DONE", metrics=metrics)
    assert _following(job)._quantum_seconds(job, "r-1") == seconds


def test_a_runtime_job_that_ended_without_a_result_reports_what_it_used() -> None:
    # A cancelled or failed job may have run first: its charged seconds go on the handle,
    # and it ends CANCELLED or BACKEND_FAULT, never as a job still running (None).
    cancelled = _RuntimeJob("CANCELLED", metrics={"usage": {"quantum_seconds": 4}})
    handle = cloud.IbmCloudHandle("job-1", "r-1")
    with pytest.raises(ExecutionError) as stopped:
        _following(cancelled)._poll_once(handle, "r-1")
    assert stopped.value.kind is FailureKind.CANCELLED
    assert stopped.value.metadata["providerJobId"] == "r-1"
    assert handle.execution_seconds == 4.0

    failed = _RuntimeJob("ERROR", metrics={"usage": {"quantum_seconds": 1}})
    handle = cloud.IbmCloudHandle("job-1", "r-1")
    with pytest.raises(ExecutionError) as fault:
        _following(failed)._poll_once(handle, "r-1")
    assert fault.value.kind is FailureKind.BACKEND_FAULT
    assert "calibration lost" in fault.value.message and handle.execution_seconds == 1.0

    running = _RuntimeJob("RUNNING")
    assert _following(running)._poll_once(cloud.IbmCloudHandle("job-1", "r-1"), "r-1") is None


def test_a_done_job_whose_result_cannot_be_read_is_still_charged() -> None:
    job = _RuntimeJob("DONE", metrics={"usage": {"quantum_seconds": 7}}, result=object())
    handle = cloud.IbmCloudHandle("job-1", "r-1")
    with pytest.raises(ExecutionError) as unreadable:
        _following(job)._poll_once(handle, "r-1")
    assert unreadable.value.kind is FailureKind.BACKEND_FAULT
    assert handle.execution_seconds == 7.0


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_cancelling_a_runtime_job_that_already_ended_is_no_failure(
    anyio_backend: str,
) -> None:
    ended = _RuntimeJob("DONE")
    await _following(ended).cancel(cloud.IbmCloudHandle("job-1", "r-1"))
    assert ended.cancels == 1
    running = _RuntimeJob("RUNNING")
    await _following(running).cancel(cloud.IbmCloudHandle("job-1", "r-1"))
    assert running.cancels == 1


def test_a_stored_id_the_service_does_not_know_is_no_job() -> None:
    # reattach by the stored id: a job the service no longer has is None (the job core then
    # decides), not a failure; any other error is raised as it is.
    from qiskit_ibm_runtime.exceptions import RuntimeJobNotFound

    runner = cloud.IbmCloudRunner(settings(retry_attempts=1), sleep=lambda s: None)
    errors: list[Exception] = [RuntimeJobNotFound("no such job"), ValueError("boom")]

    class Service:
        def job(self, remote_id: str) -> _RuntimeJob:
            raise errors.pop(0)

        def jobs(self, job_tags: list[str], limit: int) -> list[_RuntimeJob]:
            return []

    runner._client.service = Service  # type: ignore[method-assign]
    assert runner._find("job-1", "r-1") is None
    with pytest.raises(ExecutionError) as other:
        runner._find("job-1", "r-1")
    assert other.value.kind is FailureKind.BACKEND_FAULT
    assert runner._find("job-1", None) is None  # nothing under the tag


def test_a_create_is_sent_once_even_when_its_answer_is_lost(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A create whose answer was lost may have made the job: the one call never retries it
    # (only _submit does, after looking the job up by its tag).
    import qiskit_ibm_runtime.executor_sampler as executor_sampler

    runs: list[dict[str, Any]] = []

    class LostSampler:
        def __init__(self, mode: Any, options: dict[str, Any]) -> None:
            self.options = options

        def run(self, pubs: Any) -> Any:
            runs.append(self.options)
            raise RequestsApiError("503 Service Unavailable", 503)

    monkeypatch.setattr(executor_sampler, "Sampler", LostSampler)
    runner = cloud.IbmCloudRunner(settings(retry_attempts=4), sleep=lambda s: None)
    runner._client.backend = lambda: object()  # type: ignore[method-assign]
    job = type("J", (), {"id": "job-1", "session": None})()
    twirling = {"twirling": {"enable_gates": True}}
    with pytest.raises(ExecutionError) as lost:
        runner._create("sampler", [], ["qgateway-job:job-1"], twirling, job)  # type: ignore[arg-type]
    assert lost.value.kind is FailureKind.TRANSIENT
    # One create, with the job's options and its tags.
    assert runs == [{**twirling, "environment": {"job_tags": ["qgateway-job:job-1"]}}]


def test_an_expired_token_is_exchanged_again_once() -> None:
    runner = cloud.IbmCloudRunner(settings(retry_attempts=1), sleep=lambda s: None)
    resets: list[bool] = []
    runner._client.reset = lambda: resets.append(True)  # type: ignore[method-assign]
    answers: list[object] = [IBMNotAuthorizedError("401"), "answered"]

    def call() -> object:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    assert runner._call(call, None) == "answered" and resets == [True]
    # Still refused after the fresh exchange: CREDENTIALS.
    answers[:] = [IBMNotAuthorizedError("401"), IBMNotAuthorizedError("401")]
    with pytest.raises(ExecutionError) as refused:
        runner._call(call, None)
    assert refused.value.kind is FailureKind.CREDENTIALS and not answers


@pytest.mark.parametrize(
    ("exc", "kind", "code"),
    [
        # A job or session the service no longer has is no refusal of the request.
        (HTTPError(Response(404, {})), FailureKind.BACKEND_FAULT, None),
        (HTTPError(Response(409, {"errors": [{"code": 3211}]})), FailureKind.CLIENT_ERROR, "3211"),
    ],
)
def test_more_provider_errors_become_failure_kinds(
    exc: BaseException, kind: FailureKind, code: str | None
) -> None:
    err = cloud.IbmCloudRunner(settings())._error(exc, None)
    assert err.kind is kind and err.metadata.get("providerErrorCode") == code


def test_a_register_one_shot_short_is_refused() -> None:
    a = BitArray.from_samples(["01", "10", "11", "00"], num_bits=2).reshape(2, 2)
    sampler = SamplerPubResult(DataBin(a=a, shape=(2,)), metadata={"shots": 2})
    with pytest.raises(cloud._Mismatch, match="holds 2 shots, the job asked for 3"):
        cloud._outcome(PrimitiveResult([sampler]), SamplerOutput.COUNTS, None, 3, 1)


def test_cloud_settings_from_the_options(monkeypatch: pytest.MonkeyPatch) -> None:
    crn = "crn:v1:bluemix:public:quantum-computing:us-east:a/0:1::"
    options = IbmOptions(
        backend="ibm_test", instance=crn, token=SecretStr("k"), channel="ibm_cloud", creates_per_s=2
    )
    built = cloud.CloudSettings.from_options("ibmq", options)
    assert (built.channel, built.creates_per_s, built.device) == ("ibm_cloud", 2.0, "ibm_test")
    assert cloud.CloudSettings.from_options("ibmq", options.model_copy(update={"channel": None}))
    # An instance name instead of its CRN: refused (the runner does not list instances).
    with pytest.raises(ValueError, match="CRN"):
        cloud.CloudSettings.from_options("ibmq", options.model_copy(update={"instance": "my-inst"}))


def test_a_url_with_a_path_is_the_api_base_itself() -> None:
    url, resolver = cloud._runtime_url(settings_with_url("http://127.0.0.1:9/api/v1"))
    assert url == "http://127.0.0.1:9/api/v1" and resolver is not None
    assert resolver("http://x/api/v1", "crn") == "http://x/api/v1"
    for regional in ("https://cloud.ibm.com", "https://cloud.ibm.com/"):
        assert cloud._runtime_url(settings_with_url(regional)) == (regional, None)


def settings_with_url(url: str) -> cloud.CloudSettings:
    import dataclasses

    return dataclasses.replace(settings(), url=url)


def test_one_process_names_one_iam_address(monkeypatch: pytest.MonkeyPatch) -> None:
    # Set first so that the test's end removes what _set_iam_url writes.
    monkeypatch.setenv("IAM_URL", "unset-by-the-test")
    monkeypatch.delenv("IAM_URL")
    cloud._set_iam_url("http://127.0.0.1:1")
    cloud._set_iam_url("http://127.0.0.1:1")  # the same again: fine
    with pytest.raises(ValueError, match="one IBM IAM address"):
        cloud._set_iam_url("http://127.0.0.1:2")


def test_a_zero_observable_is_the_clients_fault_and_never_created() -> None:
    # The runtime's estimator refuses it at create with a ValueError, which the cloud path
    # read as a backend fault: a tenant repeating it would open the breaker for everyone.
    from qiskit import QuantumCircuit

    from gateway.backends.qiskit.adapter import CircuitRef, EstimatorTask
    from gateway.backends.qiskit.observables import PackedObservables

    observables = PackedObservables.pack([[("IZ", 1.0)], [("XI", 0.5), (("X", (1,)), -0.5)]])
    task = EstimatorTask(
        CircuitRef.of(QuantumCircuit(2)), (), np.zeros((0,)), (), observables, (2,), (2,), 0.0, 1
    )
    with pytest.raises(ExecutionError) as info:
        cloud._estimator_pub(task, "ibm-cloud")
    assert info.value.reason == "INVALID_OBSERVABLE"
    assert info.value.kind is FailureKind.CLIENT_ERROR
    assert "observable 1 is zero" in info.value.message
