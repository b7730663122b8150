"""IBM runtime jobs whose create was uncertain (made at IBM, the answer lost: a read timeout, a
reset, a 5xx after the commit) must never be left running with no gateway job following them:
the job core plus the real IBM cloud runner, down to the SDK's service object (a scripted
QiskitRuntimeService) whose tag search (`jobs(job_tags=...)`) does not show a job yet. IBM
documents no consistency for that listing, and a create the client gave up on may still be
committed after the look-up (the runner's own comments say so): either way the job shows up
only after the gateway looked, as Braket's lagging search does (test_braket_stray_tasks_review).
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

# Imported when the module is collected, not in a test: importing the SDK's primitives takes
# seconds, which would land in whichever test runs first.
import qiskit_ibm_runtime.executor_estimator as executor_estimator
import qiskit_ibm_runtime.executor_sampler as executor_sampler
from pydantic import SecretStr
from qiskit_ibm_runtime.exceptions import RuntimeInvalidStateError, RuntimeJobNotFound

from gateway.backends.base import PreparedJob
from gateway.backends.ibm import cloud
from gateway.backends.qiskit.adapter import QiskitPayload
from gateway.backends.runner import DelegatingRunner, RunHandle
from gateway.domain.jobs import Job, SamplerOutput
from gateway.store.sqlite import SqliteStore
from tests.core_harness import build_core, spec

pytestmark = pytest.mark.anyio

_FINAL = ("DONE", "CANCELLED", "ERROR")


class FakeRuntimeJob:
    """A runtime job as the SDK's service returns it."""

    def __init__(self, remote_id: str, tags: list[str]) -> None:
        self.remote_id = remote_id
        self.tags = tags
        self.state = "QUEUED"

    def job_id(self) -> str:
        return self.remote_id

    def status(self) -> str:
        return self.state

    def cancel(self) -> None:
        if self.state in _FINAL:
            raise RuntimeInvalidStateError("the job has already ended")
        self.state = "CANCELLED"

    def metrics(self) -> dict[str, Any]:
        return {"usage": {"quantum_seconds": 0}}


class LaggingRuntime:
    """The service: creates made by the primitives, a tag search that does not show the jobs in
    `hidden` yet, and `lose_answers` creates (the next ones) that make their job and then lose
    the answer (a read timeout), the job hidden from the search until `hidden` is cleared."""

    def __init__(self, *, lose_answers: int = 0) -> None:
        self.made: dict[str, FakeRuntimeJob] = {}
        self.hidden: set[str] = set()
        self.lose_answers = lose_answers
        # Set: a create makes its job (shown in the search) and then waits for it to answer.
        self.slow_answer: threading.Event | None = None
        self.made_one = threading.Event()

    def create(self, tags: list[str]) -> str:
        remote_id = f"r-{len(self.made) + 1}"
        self.made[remote_id] = FakeRuntimeJob(remote_id, list(tags))
        self.made_one.set()
        if self.slow_answer is not None:
            self.slow_answer.wait(5)
        if self.lose_answers > 0:
            self.lose_answers -= 1
            self.hidden.add(remote_id)
            raise TimeoutError("read timed out")  # committed at IBM, the answer lost
        return remote_id

    def job(self, remote_id: str) -> FakeRuntimeJob:
        if remote_id not in self.made:
            raise RuntimeJobNotFound("no such job")
        return self.made[remote_id]

    def jobs(self, job_tags: list[str], limit: int) -> list[FakeRuntimeJob]:
        shown = [
            j
            for j in reversed(self.made.values())  # newest first, as the service lists them
            if j.remote_id not in self.hidden and all(t in j.tags for t in job_tags)
        ]
        return shown[:limit]

    def running(self) -> set[str]:
        """Runtime jobs IBM would run and bill: made and not ended."""
        return {i for i, j in self.made.items() if j.state not in _FINAL}


def _runner(fake: LaggingRuntime, monkeypatch: pytest.MonkeyPatch) -> cloud.IbmCloudRunner:
    """The real runner, its SDK client the fake service (the primitives create through it)."""

    class Primitive:
        def __init__(self, mode: Any, options: dict[str, Any]) -> None:
            self.options = options

        def run(self, pubs: Any) -> Any:
            remote_id = fake.create(self.options["environment"]["job_tags"])
            return fake.job(remote_id)

    monkeypatch.setattr(executor_sampler, "Sampler", Primitive)
    monkeypatch.setattr(executor_estimator, "Estimator", Primitive)
    settings = cloud.CloudSettings(
        name="ibmq",
        device="ibm_test",
        channel="ibm_cloud",
        instance="crn:v1:bluemix:public:quantum-computing:us-east:a/0:1::",
        url=None,
        iam_url=None,
        token=SecretStr("secret-key"),
        retry_attempts=2,
        retry_backoff_s=0.0,
        poll_interval_s=0.01,
        creates_per_s=1000.0,
    )
    runner = cloud.IbmCloudRunner(settings, sleep=lambda s: None)
    runner._client.service = lambda: fake  # type: ignore[method-assign]
    runner._client.backend = lambda: object()  # type: ignore[method-assign]
    return runner


async def _upkeeps_until(
    ibm: cloud.IbmCloudRunner, fake: LaggingRuntime, running: set[str]
) -> None:
    """The backend's upkeeps (before each health probe) until IBM runs `running` alone: a job
    is searched for strays once it is abandoned, or while this runner follows it (which starts
    a moment after its RUNNING write). A followed job cancelled never comes back: times out."""
    async with asyncio.timeout(5):
        while fake.running() != running:
            await ibm.maintain()
            await asyncio.sleep(0.005)


class IbmUnderCore(DelegatingRunner):
    """The real IBM runner under the job core, whose test adapter prepares text: every job is
    sent as a runtime job of no PUBs (what the fake service needs of it is its tags)."""

    PREPARED = PreparedJob(
        payload=QiskitPayload("local_mode", SamplerOutput.COUNTS, ()), memory_bytes=0, layouts=()
    )

    async def submit(self, prepared: PreparedJob, job: Job) -> RunHandle:
        return await self.inner.submit(self.PREPARED, job)


async def test_a_lost_runtime_job_the_search_shows_late_is_not_left_running(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Both creates made a runtime job and lost the answer; the tag search shows neither yet,
    # not to submit's look-ups nor to the job core's, so the job fails. The runtime jobs then
    # show up (IBM had them all along): they run on the tenant's instance, no gateway job
    # follows them, and the tenant is charged nothing for them. The runner had no `abandon`:
    # the core's hand-over was a no-op, and `maintain` looked for nothing.
    fake = LaggingRuntime(lose_answers=2)
    ibm = _runner(fake, monkeypatch)
    core = await build_core(store, "memory", {"ibmq": IbmUnderCore(ibm)})  # type: ignore[dict-item]
    try:
        job = await core.submit("alice", spec("ibmq"))
        failed = await core.until("alice", job.id, "FAILED")
    finally:
        await core.manager.close()
    assert failed.error is not None and len(fake.made) == 2
    assert fake.running() == set(fake.made)  # not in the search: not known yet
    fake.hidden.clear()  # the search catches up
    await ibm.maintain()  # the backend's next upkeep (before each health probe)
    assert fake.running() == set()


async def test_a_retried_create_leaves_no_unfollowed_copy(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The first create made a runtime job and lost the answer; the tag search missed it, so the
    # create was sent again and succeeded. Submit searches once more (the comment in `_submit`
    # names this very case: "a slow service may have committed the attempt that timed out
    # after the tag search missed it"), but the first is still not shown: the job follows the
    # second, and the first runs and bills for nobody, never looked for again.
    fake = LaggingRuntime(lose_answers=1)
    ibm = _runner(fake, monkeypatch)
    core = await build_core(store, "memory", {"ibmq": IbmUnderCore(ibm)})  # type: ignore[dict-item]
    try:
        job = await core.submit("alice", spec("ibmq"))
        running = await core.until("alice", job.id, "RUNNING")
        assert running.remote_id == "r-2" and len(fake.made) == 2
        fake.hidden.clear()  # the search catches up
        # The copy nobody follows is cancelled by an upkeep while the job is followed here
        # (its follow starts just after the RUNNING write); the followed one runs on.
        await _upkeeps_until(ibm, fake, {"r-2"})
    finally:
        await core.manager.close()


class DiesAfterCreating(IbmUnderCore):
    """The gateway dies (SIGKILL, simulated: the core is closed) after IBM made the runtime job
    and before its id was stored: the create's answer never reaches the core."""

    def __init__(self, inner: cloud.IbmCloudRunner) -> None:
        super().__init__(inner)
        self.created = asyncio.Event()

    async def submit(self, prepared: PreparedJob, job: Job) -> RunHandle:
        await super().submit(prepared, job)
        self.created.set()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


@pytest.mark.parametrize("cancelled", [False, True])
async def test_a_restart_between_create_and_storing_the_id_leaves_no_stray(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch, cancelled: bool
) -> None:
    # The runtime job was made, then the gateway died; at the restart the tag search does not
    # show it yet. Not cancelled: IBM has no idempotency token, so the job is created a second
    # time and followed, while the first runs for nobody. Cancelled while its submit was
    # unanswered: CANCELLED unsent, and the runtime job it has runs for nobody.
    fake = LaggingRuntime()
    first = DiesAfterCreating(_runner(fake, monkeypatch))
    core = await build_core(store, "memory", {"ibmq": first})  # type: ignore[dict-item]
    job = await core.submit("alice", spec("ibmq"))
    await asyncio.wait_for(first.created.wait(), 5)
    if cancelled:
        await core.manager.cancel("alice", job.id)
        await core.until("alice", job.id, "CANCELLING")
    await core.manager.close()
    assert list(fake.made) == ["r-1"]
    fake.hidden.add("r-1")
    ibm = _runner(fake, monkeypatch)  # a new process: nothing in memory, IBM kept its job
    core2 = await build_core(store, "memory", {"ibmq": IbmUnderCore(ibm)}, clock=core.clock)  # type: ignore[dict-item]
    try:
        if cancelled:
            await core2.until("alice", job.id, "CANCELLED")
            followed: set[str] = set()
        else:
            running = await core2.until("alice", job.id, "RUNNING")
            assert running.remote_id is not None
            followed = {running.remote_id}
        fake.hidden.clear()
        await _upkeeps_until(ibm, fake, followed)
    finally:
        await core2.manager.close()


async def test_an_upkeep_during_a_submit_spares_the_runtime_job_it_makes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The guard of the fix above: a job watched (its look-up by tag found nothing) is submitted
    # again; while the create's answer is on its way, the search already shows the new runtime
    # job, which no handle follows yet. An upkeep then must not cancel the job about to be
    # followed.
    fake = LaggingRuntime()
    ibm = _runner(fake, monkeypatch)
    job: Any = type("J", (), {"id": "job-1", "session": ""})()
    assert await ibm.reattach(job, None) is None  # watched from now on
    fake.slow_answer = threading.Event()
    submit = asyncio.create_task(ibm.submit(IbmUnderCore.PREPARED, job))
    try:
        while not fake.made_one.is_set():
            await asyncio.sleep(0.005)
        await ibm.maintain()
        assert fake.running() == {"r-1"}
    finally:
        fake.slow_answer.set()
    handle = await asyncio.wait_for(submit, 5)
    assert handle.remote_id == "r-1" and fake.running() == {"r-1"}
    await ibm.maintain()
    assert fake.running() == {"r-1"}


def test_the_fake_service_keeps_the_state_it_is_given() -> None:
    # The fake's own bookkeeping, which the tests above read: a lost answer, a lagging search.
    fake = LaggingRuntime(lose_answers=1)
    with pytest.raises(TimeoutError):
        fake.create(["qgateway-job:j"])
    assert fake.jobs(["qgateway-job:j"], 10) == [] and fake.running() == {"r-1"}
    assert fake.create(["qgateway-job:j"]) == "r-2"
    assert [j.remote_id for j in fake.jobs(["qgateway-job:j"], 10)] == ["r-2"]
    fake.hidden.clear()
    assert [j.remote_id for j in fake.jobs(["qgateway-job:j"], 10)] == ["r-2", "r-1"]
