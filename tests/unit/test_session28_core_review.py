"""Review of this session's changes to the job core, store and cloud runners (clock steps,
recovery, stray provider work): defects found, each a test of what users should see."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from gateway.backends.base import PreparedJob
from gateway.backends.braket.cloud import BraketCloudRunner
from gateway.backends.runner import DelegatingRunner
from gateway.domain.jobs import JobState
from gateway.runtime.health import HealthMonitor
from gateway.store.sqlite import SqliteStore
from tests.core_harness import ScriptedRunner, build_core, spec
from tests.unit.test_braket_cloud import _client_error
from tests.unit.test_braket_stray_tasks_review import LaggingBraket, _failed_job

pytestmark = pytest.mark.anyio

# A step back of an hour: an NTP correction of a clock that ran ahead, a VM snapshot restored.
STEP_BACK_S = -3600.0


async def test_a_short_run_after_a_requeue_and_a_step_back_starts_after_it_was_queued(
    store: SqliteStore,
) -> None:
    # A short local run's RUNNING is written with its end (finish_job's `started_at`), and
    # that start was kept at or after the job's creation only, not after its last transition
    # as every other transition time is (_NOT_BEFORE_LAST). A job queued again (recovery's
    # RUNNING -> QUEUED at restart) and then run after the clock stepped back started before
    # it was queued again: its history, sorted by time, read RUNNING, QUEUED, SUCCEEDED.
    first = await build_core(store, "memory", {"sim": ScriptedRunner(slots=0)})
    job = await first.submit("alice", spec("sim"))
    await first.manager.close()
    clock = first.clock
    clock.advance(60)
    assert await store.mark_running(job.id, clock()) is not None  # the crashed run
    clock.advance(60)
    runner = ScriptedRunner(slots=0)
    core = await build_core(store, "memory", {"sim": runner}, clock=clock)
    try:
        queued = await store.get_job(job.id)
        assert queued is not None and queued.state is JobState.QUEUED
        requeued_at = queued.state_history[-1].at
        clock.advance(STEP_BACK_S)
        runner.slots = 1
        core.backends["sim"].wake.set()
        await runner.started.wait()
        runner.succeed(job.id)
        await core.until("alice", job.id, "SUCCEEDED")
        done = await store.get_job(job.id)
        assert done is not None and done.state is JobState.SUCCEEDED
        states = [entry.state for entry in done.state_history]
        assert states[-3:] == [JobState.QUEUED, JobState.RUNNING, JobState.SUCCEEDED], (
            done.state_history
        )
        assert done.started_at is not None and done.started_at >= requeued_at
    finally:
        await core.manager.close()


class HangingSearch(LaggingBraket):
    """A tag search that hangs once `hang` is set (an endpoint black-holed: each call waits
    for its read timeout, 60 s in botocore, times its retries), released by `release`."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.hang = False
        self.release = threading.Event()

    def search_quantum_tasks(self, **kwargs: Any) -> dict[str, Any]:
        if self.hang:
            self.release.wait(10)
            raise _client_error("InternalServiceException", 500)
        return super().search_quantum_tasks(**kwargs)


class Probed(DelegatingRunner):
    """The Braket runner with its probe recorded (the fake has no GetDevice)."""

    def __init__(self, inner: BraketCloudRunner) -> None:
        super().__init__(inner)
        self.probed = asyncio.Event()

    async def probe(self, prepared: PreparedJob, timeout: float) -> None:
        self.probed.set()


async def test_a_stray_watch_out_of_reach_does_not_hold_back_the_health_probes(
    store: SqliteStore,
) -> None:
    # The stray watch's tag searches run in the runner's upkeep, which the health monitor
    # awaits before each probe. With Braket out of reach (exactly when the probe should mark
    # the backend NOT_SERVING), every watched job's search waits for its timeouts, one job
    # after another (up to 100 of them, 20 pages each): the probe waits for all of them, and
    # the backend's health stays SERVING, admitting jobs to a dead endpoint, for that long.
    fake = HangingSearch(lose_answer=0, hide_lost=True)
    failed, braket = await _failed_job(store, fake, tasks=1)
    assert failed.error is not None  # and watched: its lost task may show up later
    fake.hang = True
    runner = Probed(braket)
    core = await build_core(store, "memory", {"qpu": runner})  # type: ignore[dict-item]

    async def prepare_probe(seed: int) -> PreparedJob:
        return PreparedJob(payload=(), memory_bytes=0, layouts=())

    async def on_change(_: str) -> None:
        return None

    monitor = HealthMonitor(
        "qpu",
        runner,
        prepare_probe,
        core.backends["qpu"].health,
        interval_s=0.05,
        timeout_s=1.0,
        on_change=on_change,
    )
    loop = asyncio.create_task(monitor.run())
    try:
        await asyncio.wait_for(runner.probed.wait(), 1.0)
    finally:
        fake.release.set()
        loop.cancel()
        await asyncio.gather(loop, return_exceptions=True)
        await core.manager.close()
