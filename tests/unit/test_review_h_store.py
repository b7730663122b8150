"""Hostile review H: store reads on reader threads (gateway.store.sqlite_readers) and the
callers whose reads were ordered after this process's writes on the writer thread."""

from __future__ import annotations

import asyncio
import pathlib
from collections.abc import AsyncIterator

import anyio
import pytest

from gateway.backends.base import PreparedJob
from gateway.jobs.claim_queue import ClaimQueue
from gateway.store.sqlite import SqliteStore
from tests.unit.test_sqlite_store import T0, WriterGate, new_job

pytestmark = pytest.mark.anyio


@pytest.fixture
async def store(tmp_path: pathlib.Path) -> AsyncIterator[SqliteStore]:
    s = SqliteStore(tmp_path / "gateway.db")
    await s.open()
    yield s
    await s.close()


async def test_a_released_claims_prepared_job_survives_a_position_read_during_the_release(
    store: SqliteStore,
) -> None:
    queue = ClaimQueue(store, "aer", "owner-a", 3600.0, 60.0, lambda: T0)
    job = (await store.create_job(new_job(job_id="j1"))).job
    prepared = PreparedJob(payload="compiled", memory_bytes=1, layouts=())
    await queue.put(job, prepared)
    claim = await queue.claim()
    assert claim is not None and claim.prepared is prepared
    # The writer busy with another tenant's batch (a commit's fsync) while the release waits.
    gate = WriterGate()
    held = asyncio.ensure_future(store._call(gate.op))
    await anyio.to_thread.run_sync(gate.started.wait, 10)
    releasing = asyncio.ensure_future(queue.release(claim))
    await asyncio.sleep(0)  # the release has recorded its prepared job and queued end_claim
    # Another caller's GetJob asks for this job's queue position meanwhile.
    positioned = asyncio.ensure_future(queue.position(job.id, job.tenant))
    await asyncio.sleep(0.05)  # a reader thread would answer it now, before the requeue
    gate.release.set()
    await held
    await releasing
    await asyncio.wait_for(positioned, 10)
    again = await queue.claim()
    assert again is not None and again.job.id == job.id
    assert again.prepared is prepared
