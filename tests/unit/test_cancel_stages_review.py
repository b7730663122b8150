"""CancelJob at the stages of a job's life the core tests leave out (review: cancel)."""

from __future__ import annotations

import sqlite3

import pytest

from gateway.domain.jobs import JobState
from gateway.store.sqlite import SqliteStore
from tests.core_harness import FailFirst, ScriptedRunner, build_core, spec

pytestmark = pytest.mark.anyio


async def test_a_queued_job_whose_cancel_could_not_be_stored_stays_queued(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The memory queue takes a cancelled job out before the store ends it CANCELLED: a store
    # error there (SQLite busy, a full disk) left the job QUEUED in the store and in no queue,
    # so it never ran nor expired until a restart (holding its place under max_queued_jobs,
    # and a Run waiting on it waited out its deadline). The CancelJob failed, so the job was
    # not cancelled: it stays queued and runs when its turn comes.
    runner = ScriptedRunner(slots=1)
    core = await build_core(store, "memory", {"sim": runner})
    try:
        blocker = await core.submit("alice", spec("sim"))
        await core.until("alice", blocker.id, "RUNNING")
        job = await core.submit("bob", spec("sim"))
        flaky = FailFirst(store.finish_job, 1)
        monkeypatch.setattr(store, "finish_job", flaky)
        with pytest.raises(sqlite3.OperationalError):
            await core.manager.cancel("bob", job.id)
        assert flaky.left == 0
        assert await core.backends["sim"].queue.depth() == 1
        runner.succeed(blocker.id)
        await core.until("bob", job.id, "RUNNING", timeout=2)
        runner.succeed(job.id)
        ended = await core.until("bob", job.id, "SUCCEEDED", timeout=2)
        assert ended.state is JobState.SUCCEEDED
    finally:
        await core.manager.close()
