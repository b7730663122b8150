"""The job core when a caller goes away mid-write (a client's deadline, a disconnect, the
gateway closing): the store commits what it was asked regardless, so what follows a commit in
this process (publishing the change, stopping a worker, letting twins of a request go on) must
happen too. Found by a randomized interleaving review of the core (2026-12-04)."""

from __future__ import annotations

import asyncio
import gc
import pickle
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from gateway.backends.runner import ExecutionModel, RunHandle
from gateway.domain.jobs import Job, JobState
from gateway.store.sqlite import SqliteStore
from tests.core_harness import HeldCall, ScriptedRunner, build_core, caller_leaves_inside, spec

pytestmark = pytest.mark.anyio


async def test_a_cancel_whose_caller_went_away_is_heard_by_waiters_watchers_and_hooks(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A queued job (no free slot); its CANCELLED write commits after CancelJob's caller left.
    # It was committed but never published: Run and WaitJob waited for ever, WatchJob sent
    # heartbeats of the QUEUED job, hooks (metrics, traces) never heard of it.
    core = await build_core(store, "memory", {"sim": ScriptedRunner(slots=0)})
    try:
        job = await core.submit("alice", spec("sim"))
        waiting = asyncio.ensure_future(core.manager.wait("alice", job.id, timeout=5.0))
        watched = asyncio.ensure_future(core.until("alice", job.id, "CANCELLED"))
        inside = HeldCall(store.finish_job)
        monkeypatch.setattr(store, "finish_job", inside)
        await caller_leaves_inside(core.manager.cancel("alice", job.id), inside)
        ended = await waiting
        assert ended is not None and ended.state is JobState.CANCELLED
        assert (await watched).state is JobState.CANCELLED
        assert core.recorder.states(job.id) == ["QUEUED", "CANCELLED"]
    finally:
        await core.manager.close()


async def test_a_running_job_whose_cancels_caller_went_away_is_still_stopped(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # CANCELLING committed after the caller left, but the runner was never told: the job ran on,
    # CANCELLING, until it ended by itself (a retried CancelJob of a CANCELLING job is a no-op).
    runner = ScriptedRunner(slots=1)
    core = await build_core(store, "memory", {"sim": runner})
    try:
        job = await core.submit("alice", spec("sim"))
        await core.until("alice", job.id, "RUNNING")
        inside = HeldCall(store.mark_cancelling)
        monkeypatch.setattr(store, "mark_cancelling", inside)
        await caller_leaves_inside(core.manager.cancel("alice", job.id), inside)
        ended = await core.until("alice", job.id, "CANCELLED")
        assert runner.cancelled == [job.id]
        assert ended.state is JobState.CANCELLED
    finally:
        await core.manager.close()


async def test_a_retry_after_its_first_caller_went_away_starts_no_stand_in(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The first submission's caller left while its create was in flight; its retry (same
    # request_id) was let go at once, found no job yet, started a stand-in on a worker, and the
    # store's answer (the first one's job) took it back: a worker kill and respawn per retry.
    runner = ScriptedRunner(slots=2)
    core = await build_core(store, "memory", {"sim": runner})
    try:
        inside = HeldCall(store.create_job)
        monkeypatch.setattr(store, "create_job", inside)
        job_spec = spec("sim")
        data = pickle.dumps(job_spec)
        first = core.manager.submit("alice", "req-1", job_spec, data, b"d")
        await caller_leaves_inside(first, inside)
        outcome = await core.manager.submit("alice", "req-1", job_spec, data, b"d")
        assert not outcome.created
        await core.until("alice", outcome.job.id, "RUNNING")
        assert runner.submitted == [outcome.job.id]
        assert runner.cancelled == []
    finally:
        await core.manager.close()


async def test_closing_while_a_stopped_provider_job_has_not_ended_leaves_no_wait_behind(
    store: SqliteStore,
) -> None:
    # A provider job cancelled: the provider took the cancel, the job has not ended, and the
    # step waits for it; the gateway closing there left its wait task running.
    class SlowCancel(ScriptedRunner):
        async def cancel(self, handle: RunHandle) -> None:
            self.cancelled.append(handle.job_id)  # accepted; the job would end later

    runner = SlowCancel(slots=1, model=ExecutionModel.REMOTE)
    before = asyncio.all_tasks()
    core = await build_core(store, "store", {"sim": runner})
    job = await core.submit("alice", spec("sim"))
    await core.until("alice", job.id, "RUNNING")
    stopped = asyncio.Event()
    runner.cancel = _then_set(runner.cancel, stopped)  # type: ignore[method-assign]
    await core.manager.cancel("alice", job.id)
    await stopped.wait()
    await core.manager.close()
    await core.settle()
    left = [t for t in asyncio.all_tasks() - before if not t.done()]
    for task in left:
        task.cancel()
    assert left == []


def _then_set(
    call: Callable[[RunHandle], Awaitable[None]], event: asyncio.Event
) -> Callable[[RunHandle], Awaitable[None]]:
    async def wrapped(handle: RunHandle) -> None:
        await call(handle)
        event.set()

    return wrapped


async def test_changes_in_flight_at_close_are_written_and_published(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # close() waits for changes whose callers it cancelled, before the store closes.
    core = await build_core(store, "memory", {"sim": ScriptedRunner(slots=0)})
    job = await core.submit("alice", spec("sim"))
    inside = HeldCall(store.finish_job)
    monkeypatch.setattr(store, "finish_job", inside)
    cancelling = asyncio.ensure_future(core.manager.cancel("alice", job.id))
    await inside.entered.wait()
    closing = asyncio.ensure_future(core.manager.close())
    await core.settle()
    assert not closing.done()  # waiting for the write
    inside.go.set()
    await closing
    ended: Job = await cancelling
    assert ended.state is JobState.CANCELLED
    assert core.recorder.states(job.id) == ["QUEUED", "CANCELLED"]


async def test_a_refusal_nobody_waits_for_any_more_is_not_logged_as_an_error(
    store: SqliteStore, caplog: pytest.LogCaptureFixture
) -> None:
    # A CancelJob whose caller left, of a job that had finished: the refusal (FAILED_PRECONDITION)
    # came out of the task carrying the cancel on, unretrieved, and asyncio logged it at ERROR
    # with a traceback; any client could fill the log with them.
    runner = ScriptedRunner(slots=1)
    core = await build_core(store, "memory", {"sim": runner})
    try:
        job = await core.submit("alice", spec("sim"))
        await runner.started.wait()
        runner.succeed(job.id)
        await core.until("alice", job.id, "SUCCEEDED")
        inside = HeldCall(store.get_job)
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(store, "get_job", inside)
            await caller_leaves_inside(core.manager.cancel("alice", job.id), inside)
        carried = {t for t in asyncio.all_tasks() if "_cancel" in repr(t.get_coro())}
        assert carried
        await asyncio.wait(carried)  # ended, its outcome not read (as nobody reads it)
        del carried
        gc.collect()
        assert [r for r in caplog.records if r.levelname == "ERROR"] == []
    finally:
        await core.manager.close()


async def test_a_change_published_late_never_follows_a_later_one(store: SqliteStore) -> None:
    # A change whose caller left is published when it commits, before the caller of an earlier
    # change (committed in the same batch) resumes: watchers and hooks heard SUCCEEDED, then
    # CANCELLING, and the latest state this process kept was CANCELLING.
    from datetime import UTC, datetime

    from gateway.jobs.events import MemoryEventBus
    from gateway.jobs.hooks import Hooks
    from gateway.jobs.transitions import Transitions
    from tests.contract.test_store_contract import new_job
    from tests.core_harness import Recorder

    job = (await store.create_job(new_job(job_id="j1"))).job
    running = await store.mark_running(job.id, job.created_at)
    assert running is not None
    gate = asyncio.get_running_loop().create_future()

    def held(write: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        async def call(*args: Any, **kwargs: Any) -> Any:
            await gate  # both answer in one batch, the first asked first
            return await write(*args, **kwargs)

        return call

    recorder = Recorder()
    transitions = Transitions(
        store, MemoryEventBus(), Hooks([recorder]), lambda: datetime.now(UTC), 60.0
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(store, "mark_cancelling", held(store.mark_cancelling))
        patch.setattr(store, "finish_job", held(store.finish_job))
        first = asyncio.ensure_future(transitions.cancelling(running))  # its caller stays
        second = asyncio.ensure_future(transitions.finish(running, JobState.SUCCEEDED))
        for _ in range(3):
            await asyncio.sleep(0)  # both are waiting at the gate now
        second.cancel()  # its caller leaves
        await asyncio.gather(second, return_exceptions=True)
        gate.set_result(None)
        await first
        await transitions.settle()
    assert recorder.states(job.id)[-1] == "SUCCEEDED"
    latest = transitions.latest(job.id)
    assert latest is not None and latest.state is JobState.SUCCEEDED


async def test_a_stop_waits_for_work_carried_on_for_callers_that_left() -> None:
    from gateway.runtime import shielded

    go, finished = asyncio.Event(), asyncio.Event()

    async def write() -> None:
        await go.wait()
        finished.set()

    caller = asyncio.ensure_future(shielded.to_the_end(write()))
    await asyncio.sleep(0)
    caller.cancel()
    await asyncio.gather(caller, return_exceptions=True)
    stopping = asyncio.ensure_future(shielded.carried_on(5.0))
    await asyncio.sleep(0)
    assert not stopping.done()  # the write is still going
    go.set()
    await stopping
    assert finished.is_set()
