"""A provider job whose submit's outcome is uncertain (a timeout, a reset connection: the provider
may or may not have made it) is looked up at the provider before anything else happens to it,
again while the provider is out of reach. A CancelJob during that look-up is honoured: the job
is looked up as cancelled (a runner that has part of it stops that part), cancelled at the
provider when it has it, ended CANCELLED when it does not, and stays CANCELLING (the cancel not
yet confirmed) while the provider cannot be asked. The same after a restart. A real SQLite store,
a scripted provider, an injected wall clock."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from gateway.backends.base import PreparedJob
from gateway.backends.runner import ExecutionModel, RunHandle
from gateway.domain.errors import ExecutionError
from gateway.domain.failures import FailureKind
from gateway.domain.jobs import Job, JobState
from gateway.store.sqlite import SqliteStore
from tests.core_harness import Core, ScriptedRunner, build_core, spec

pytestmark = pytest.mark.anyio


@dataclasses.dataclass
class OutOfReachProvider(ScriptedRunner):
    """A provider whose creates time out (after making the job, or before it arrived) and
    whose look-ups fail TRANSIENT while `reachable` is clear. Records the state each look-up
    was asked with, and, like Braket's tag search, holds `part` of a job that it stops when
    asked about that job as CANCELLING (a job it does not have whole is answered None)."""

    made: bool = False
    part: set[str] = dataclasses.field(default_factory=set)
    stopped_parts: list[str] = dataclasses.field(default_factory=list)
    asked: list[JobState] = dataclasses.field(default_factory=list)
    reachable: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    looked_up: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)

    async def submit(self, prepared: PreparedJob, job: Job) -> RunHandle:
        if self.made:
            await super().submit(prepared, job)
        raise ExecutionError("PROVIDER_ERROR", "read timed out", kind=FailureKind.TRANSIENT)

    async def reattach(self, job: Job, remote_id: str | None) -> RunHandle | None:
        self.asked.append(job.state)
        self.looked_up.set()
        if not self.reachable.is_set():
            raise ExecutionError("PROVIDER_ERROR", "unreachable", kind=FailureKind.TRANSIENT)
        if job.id in self.part:
            if job.state is JobState.CANCELLING:
                self.stopped_parts.append(job.id)
            return None
        return await super().reattach(job, remote_id)


async def cancelled_while_out_of_reach(core: Core, provider: OutOfReachProvider) -> Job:
    """Submits a job whose submit times out, cancels it while its look-up meets an outage, and
    returns it once CANCELLING."""
    job = await core.submit("alice", spec("qpu"))
    await asyncio.wait_for(provider.looked_up.wait(), 5)
    cancelling = await core.manager.cancel("alice", job.id)
    assert cancelling.state is JobState.CANCELLING
    return job


async def test_a_job_cancelled_during_the_look_up_ends_cancelled_when_the_provider_lacks_it(
    store: SqliteStore,
) -> None:
    # The submit never reached the provider, and the user cancelled while the gateway looked
    # for it. Before: it ended FAILED PROVIDER_ERROR (the submit's timeout), though the user
    # had cancelled a job that never ran.
    provider = OutOfReachProvider(slots=1, model=ExecutionModel.REMOTE)
    core = await build_core(store, "memory", {"qpu": provider})
    try:
        job = await cancelled_while_out_of_reach(core, provider)
        provider.reachable.set()
        cancelled = await core.until("alice", job.id, "CANCELLED")
        assert cancelled.error is None
        assert provider.submitted == [] and provider.cancelled == []
    finally:
        await core.manager.close()


async def test_a_job_cancelled_during_the_look_up_is_asked_about_as_cancelled(
    store: SqliteStore,
) -> None:
    # The provider made part of the job (Braket: some of its tasks) and is out of reach when
    # the user cancels. Before: the look-ups went on asking about a SUBMITTING job (the cancel
    # was not checked), so the part the provider held kept running and billing.
    provider = OutOfReachProvider(slots=1, model=ExecutionModel.REMOTE)
    core = await build_core(store, "memory", {"qpu": provider})
    try:
        job = await core.submit("alice", spec("qpu"))
        provider.part.add(job.id)
        await asyncio.wait_for(provider.looked_up.wait(), 5)
        await core.manager.cancel("alice", job.id)
        provider.reachable.set()
        await core.until("alice", job.id, "CANCELLED")
        assert provider.stopped_parts == [job.id]
    finally:
        await core.manager.close()


async def test_a_job_cancelled_during_the_look_up_is_cancelled_at_a_provider_that_has_it(
    store: SqliteStore,
) -> None:
    # The provider made the job; the answer was lost, and it is out of reach when the user
    # cancels. Once reached, the job it has is cancelled there (never left running and
    # billing), and the job ends CANCELLED.
    provider = OutOfReachProvider(slots=1, model=ExecutionModel.REMOTE, made=True)
    core = await build_core(store, "memory", {"qpu": provider})
    try:
        job = await cancelled_while_out_of_reach(core, provider)
        provider.reachable.set()
        cancelled = await core.until("alice", job.id, "CANCELLED")
        assert cancelled.error is None and cancelled.remote_id == f"r-{job.id}"
        assert provider.cancelled == [job.id]
    finally:
        await core.manager.close()


async def test_a_cancelled_job_stays_cancelling_while_the_provider_cannot_be_asked(
    store: SqliteStore,
) -> None:
    # While the provider is out of reach it may run the job: the job is not called CANCELLED
    # (README: the job stays CANCELLING while a cancel has not reached the provider). When the
    # provider is still out of reach at the backend's run-time limit, its fate there is
    # unknown: it fails with the submit's error (as an uncancelled one does), not CANCELLED.
    provider = OutOfReachProvider(slots=1, model=ExecutionModel.REMOTE, made=True)
    core = await build_core(store, "memory", {"qpu": provider}, max_run_time_s=0.5)
    try:
        job = await cancelled_while_out_of_reach(core, provider)
        provider.looked_up.clear()
        await asyncio.wait_for(provider.looked_up.wait(), 5)  # looked up again, unreached
        stored = await core.store.get_job(job.id)
        assert stored is not None and stored.state is JobState.CANCELLING
        failed = await core.until("alice", job.id, "FAILED")
        assert failed.error is not None and failed.error.reason == "PROVIDER_ERROR"
        assert provider.cancelled == []
    finally:
        await core.manager.close()


class NeverAnswers(ScriptedRunner):
    """A provider whose create never answers (the gateway dies meanwhile): it may or may not
    have made the job."""

    async def submit(self, prepared: PreparedJob, job: Job) -> RunHandle:
        self.started.set()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


@pytest.mark.parametrize("made", [True, False])
async def test_a_job_stored_cancelling_with_an_uncertain_submit_is_settled_after_a_restart(
    store: SqliteStore, made: bool
) -> None:
    # Recovery: a job cancelled while its submit was unanswered is stored CANCELLING with no
    # provider id; at the restart the provider is out of reach, then answers. It has the job:
    # cancelled there; it does not: CANCELLED, never sent.
    first = NeverAnswers(slots=1, model=ExecutionModel.REMOTE)
    core = await build_core(store, "memory", {"qpu": first})
    job = await core.submit("alice", spec("qpu"))
    await asyncio.wait_for(first.started.wait(), 5)
    await core.manager.cancel("alice", job.id)
    await core.until("alice", job.id, "CANCELLING")
    assert core.recorder.states(job.id) == ["QUEUED", "SUBMITTING", "CANCELLING"]
    await core.manager.close()
    provider = OutOfReachProvider(slots=1, model=ExecutionModel.REMOTE)
    if made:
        provider.remote[f"r-{job.id}"] = job.id
    core2 = await build_core(store, "memory", {"qpu": provider}, clock=core.clock)
    try:
        await asyncio.wait_for(provider.looked_up.wait(), 5)
        stored = await core2.store.get_job(job.id)
        assert stored is not None and stored.state is JobState.CANCELLING
        provider.reachable.set()
        cancelled = await core2.until("alice", job.id, "CANCELLED")
        assert cancelled.error is None
        assert provider.cancelled == ([job.id] if made else [])
        assert provider.submitted == [] and set(provider.asked) == {JobState.CANCELLING}
    finally:
        await core2.manager.close()
