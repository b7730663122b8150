"""Review of wall-clock steps (NTP corrections, a VM restored, a leap smear): the job core on a
real SQLite store with the harness's injected wall clock, which each test steps backwards while
a job is in flight. Durations and timers run on monotonic clocks (run limits, breakers, rate
limits, pools); what is left on the wall clock are the times a job shows its users, which must
still tell its story in order."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from gateway.api.paging import PageTokens
from gateway.domain.jobs import Job, JobState
from gateway.jobs import runner_step
from gateway.store.sqlite import SqliteStore
from tests.core_harness import ScriptedRunner, build_core, spec

pytestmark = pytest.mark.anyio

# A step back of an hour: an NTP correction of a clock that ran ahead, a VM snapshot restored.
STEP_BACK_S = -3600.0


def _in_order(job: Job) -> None:
    """The job's times as GetJob shows them tell its life in order: it starts after it was
    created, ends after it started, its history's entries follow each other and end with its
    final state, and its update time is that last entry's."""
    assert job.started_at is not None and job.ended_at is not None
    assert job.created_at <= job.started_at <= job.ended_at, (
        job.created_at,
        job.started_at,
        job.ended_at,
    )
    times = [entry.at for entry in job.state_history]
    assert times == sorted(times), job.state_history
    assert job.state_history[-1].state is job.state, job.state_history
    assert job.updated_at == job.ended_at
    assert job.timings is None or job.timings.queued_s >= 0.0


async def test_a_job_that_ran_across_a_step_back_does_not_end_before_it_started(
    store: SqliteStore,
) -> None:
    # The clock stepped back an hour while the job ran (its RUNNING state written): the end
    # was stored as the clock read it, an hour before the start, so GetJob showed end_time <
    # start_time and an update_time earlier than the one it showed while the job ran (a
    # client polling update_time for changes, or computing the run's duration, went wrong).
    runner = ScriptedRunner(slots=1)
    core = await build_core(store, "memory", {"sim": runner})
    try:
        job = await core.submit("alice", spec("sim"))
        running = await core.until("alice", job.id, "RUNNING")
        stored = await store.get_job(job.id)
        assert stored is not None and stored.state is JobState.RUNNING
        core.clock.advance(STEP_BACK_S)
        runner.succeed(job.id)
        await core.until("alice", job.id, "SUCCEEDED")
        done = await store.get_job(job.id)
        assert done is not None and done.state is JobState.SUCCEEDED
        assert running.updated_at is not None and done.updated_at is not None
        assert done.updated_at >= running.updated_at
        _in_order(done)
    finally:
        await core.manager.close()


async def test_a_short_run_across_a_step_back_keeps_its_final_state_last_in_its_history(
    store: SqliteStore,
) -> None:
    # A short local run commits RUNNING with its end (the delayed RUNNING write), and the
    # store sorts that history by time: with the clock stepped back between the start and
    # the end, the final state sorted before RUNNING and before QUEUED, so the history no
    # longer ended with the state the job is in, and the end came before the start.
    runner = ScriptedRunner(slots=1)
    core = await build_core(store, "memory", {"sim": runner})
    try:
        job = await core.submit("alice", spec("sim"))
        await runner.started.wait()
        core.clock.advance(STEP_BACK_S)
        runner.succeed(job.id)
        await core.until("alice", job.id, "SUCCEEDED")
        done = await store.get_job(job.id)
        assert done is not None and done.state is JobState.SUCCEEDED
        assert [entry.state for entry in done.state_history][-1] is JobState.SUCCEEDED
        _in_order(done)
    finally:
        await core.manager.close()


async def test_a_job_queued_before_a_step_back_starts_after_it_was_created_and_is_watched(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The clock stepped back while the job waited: its start was stored an hour before its
    # creation (start_time < create_time, a negative queue time in its timings), and its
    # RUNNING state, updated an hour before its QUEUED one, was dropped by WatchJob as a stale
    # view: a client waiting for the job to start heard nothing until its end.
    monkeypatch.setattr(runner_step, "RUNNING_WRITE_DELAY_S", 0.0)
    written = asyncio.Event()
    mark_running = store.mark_running

    async def spied(job_id: str, *args: Any, **kwargs: Any) -> Job | None:
        marked = await mark_running(job_id, *args, **kwargs)
        written.set()
        return marked

    monkeypatch.setattr(store, "mark_running", spied)
    runner = ScriptedRunner(slots=0)
    core = await build_core(store, "memory", {"sim": runner})
    try:
        job = await core.submit("alice", spec("sim"))
        seen: list[JobState] = []
        first = asyncio.Event()

        async def follow() -> None:
            async for event in core.manager.watch("alice", job.id, heartbeat_s=60):
                seen.append(event.job.state)
                first.set()

        watcher = asyncio.create_task(follow())
        await asyncio.wait_for(first.wait(), 5)
        core.clock.advance(STEP_BACK_S)
        runner.slots = 1
        core.backends["sim"].wake.set()
        await asyncio.wait_for(written.wait(), 5)
        runner.succeed(job.id)
        await asyncio.wait_for(watcher, 5)
        assert seen == [JobState.QUEUED, JobState.RUNNING, JobState.SUCCEEDED]
        done = await store.get_job(job.id)
        assert done is not None and done.state is JobState.SUCCEEDED
        _in_order(done)
    finally:
        await core.manager.close()


def test_a_page_token_issued_before_a_step_back_still_opens() -> None:
    # A client paging through ListJobs while the clock stepped back (more than the 5 minutes
    # allowed for replicas' skew) had its next token refused as "not a token from a previous
    # response to this caller" (INVALID_PAGE_TOKEN, problem "invalid"): the token was this
    # gateway's own, issued seconds before. A step back cannot extend a token's life past a
    # day of the clock's own reading, so tolerating it keeps the bound.
    now = [1_800_000_000.0]
    tokens = PageTokens(bytes(range(32)), clock=lambda: now[0])
    token = tokens.seal(b"cursor", kind="jobs", tenant="alice", query="")
    now[0] += STEP_BACK_S
    assert tokens.open(token, kind="jobs", tenant="alice", query="") == b"cursor"
