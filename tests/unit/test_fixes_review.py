"""Hostile review of the fixes since 6d62826: holes the fixes themselves left (all fixed; 1 in a
later session).

1. BackendAdapter.spec_shots (the shots charged to a job re-attached after a restart) did not
   agree with the Braket cloud adapter's prepare, which takes a PUB that writes no bit out of
   the job's shots: the re-attached job was charged shots Braket never ran.
2. SessionCore.load awaits the retried `_job_ended` of an ABORT failure found at start, which
   is now retried for as long as the session is open: a store that cannot write holds the
   gateway's start for ever (before: one try, logged; the start then failed on the store).
3. The audit record's resource built from a tenant_id is the clipped id plus "tenants/", past
   MAX_CLIENT_TEXT.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import pytest

from gateway.backends.runner import ExecutionModel
from gateway.domain.circuits import Bindings, CircuitLanguage, CircuitSource, SamplerPub
from gateway.domain.errors import StoreUnavailable
from gateway.domain.jobs import JobError, JobSpec, JobState
from gateway.domain.sessions import FailurePolicy
from gateway.interceptors.audit import MAX_CLIENT_TEXT, _request_fields
from gateway.store.sqlite import SqliteStore
from tests.core_harness import QueueKind, build_core
from tests.unit.test_crash_cost_review import (
    PRICE,
    SECONDS,
    BillingRunner,
    charged,
    priced,
    restarted,
    usage,
)
from tests.unit.test_sessions import build, session_spec

# --- 1. a re-attached job was charged its spec's shots, not its prepare's --------------------
#
# Fixed: the Braket cloud adapter's prepare takes a PUB that writes no bit out of the job's
# shots (no task runs for it), but a job re-attached after a restart counted its stored spec
# again (BackendAdapter.spec_shots, now gone), so it was charged the shots of that PUB too
# (1100 vs 100). Now it reports what its prepare counted, as its quota reservation keeps it.


@pytest.mark.anyio
@pytest.mark.parametrize("kind", ["memory", "store"])
async def test_a_re_attached_job_is_charged_the_shots_its_prepare_counted(
    store: SqliteStore, kind: QueueKind
) -> None:
    model = ExecutionModel.REMOTE
    runner = BillingRunner(slots=1, model=model)
    first = await build_core(store, kind, {"b": runner})
    priced(first)
    pubs = (
        SamplerPub(CircuitSource(CircuitLanguage.QASM3, "x"), Bindings(), 100),
        SamplerPub(CircuitSource(CircuitLanguage.QASM3, "no-measure"), Bindings(), 1000),
    )
    job = await first.submit("alice", JobSpec(backend="b", pubs=pubs))
    await first.until("alice", job.id, "RUNNING")
    await first.manager.close()  # the crash
    first.clock.advance(40)  # past the dead holder's lease (the claim queue)
    core, again = await restarted(store, kind, model, first, runner)
    try:
        await asyncio.wait_for(again.started.wait(), 5)
        assert again.reattached == [job.id] and again.submitted == []
        again.succeed(job.id)
        done = await core.until("alice", job.id, "SUCCEEDED")
        assert done.execution is not None and done.execution.usage is not None
        assert done.execution.usage.shots == 100
        assert charged(done) == pytest.approx(
            PRICE.per_task + PRICE.per_shot * 100 + PRICE.per_second * SECONDS
        )
        assert (await usage(core)).shots_used == 100
    finally:
        await core.manager.close()


# --- 2. load() retries in the foreground for ever --------------------------------------------


@pytest.mark.anyio
async def test_load_does_not_retry_an_abort_save_for_ever(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    core = await build(store)
    s = await core.create(failure_policy=FailurePolicy.ABORT)
    jobs = [await core.submit("alice", session_spec(s, f"j{i}")) for i in range(2)]
    await core.until("alice", jobs[0].id, "RUNNING")
    await core.close()
    # The job's FAILED commit landed; the gateway died before the session heard of it.
    failed = await store.finish_job(
        jobs[0].id,
        JobState.FAILED,
        ended_at=core.clock.now,
        error=JobError.of("EXECUTION_FAILED", "boom"),
    )
    assert failed is not None
    attempts = [0]

    async def cannot_write(session: Any) -> Any:
        attempts[0] += 1
        raise StoreUnavailable("STORE_UNAVAILABLE", "injected: the store cannot write")

    monkeypatch.setattr(store, "save_session", cannot_write)
    # The start returns (the ABORT failure retried in a task) instead of retrying in the
    # foreground until the store comes back; the session's other job is held meanwhile.
    again = await asyncio.wait_for(build(store, clock=core.clock), 10)
    try:
        assert attempts[0] >= 1
        assert (await again.manager.get("alice", jobs[1].id)).state is JobState.QUEUED
        assert s.id in again.sessions._halted
    finally:
        await again.close()


# --- 3. the audit resource past MAX_CLIENT_TEXT -----------------------------------------------


@dataclass
class _CreateTenantLike:
    tenant_id: str
    name: str = ""
    parent: str = ""
    request_id: str = ""


def test_audit_resource_from_a_tenant_id_is_clipped() -> None:
    fields = _request_fields(_CreateTenantLike(tenant_id="t" * 10_000))
    assert fields["resource"].startswith("tenants/")
    assert len(fields["resource"]) <= MAX_CLIENT_TEXT
