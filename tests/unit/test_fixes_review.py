"""Hostile review of the fixes since 6d62826: holes the fixes themselves left (2 and 3 fixed; 1
a documented limit, strict xfail).

1. BackendAdapter.spec_shots (the shots charged to a job re-attached after a restart) does not
   agree with the Braket cloud adapter's prepare, which now takes a PUB that writes no bit out
   of the job's shots: the re-attached job is charged shots Braket never ran.
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

from gateway.domain.errors import StoreUnavailable
from gateway.domain.jobs import JobError, JobState
from gateway.domain.sessions import FailurePolicy
from gateway.interceptors.audit import MAX_CLIENT_TEXT, _request_fields
from gateway.store.sqlite import SqliteStore
from tests.unit.test_quota_review import measured_and_unmeasured
from tests.unit.test_sessions import build, session_spec

# --- 1. spec_shots disagrees with prepare on Braket cloud -------------------------------------


@pytest.mark.xfail(
    strict=True,
    reason="a known limit (README, Cost): a re-attached Braket cloud job's shots come from its "
    "spec without compiling it, so a PUB that writes no bit (no task, taken out by prepare) "
    "is counted (1100 vs 100)",
)
def test_braket_cloud_spec_shots_agree_with_prepare() -> None:
    from tests.adapters import prepare_in_process
    from tests.unit.test_braket_cloud import _cloud_adapter

    adapter = _cloud_adapter()
    spec = measured_and_unmeasured()
    prepared = prepare_in_process(adapter, spec, seed=1)
    assert prepared.shots == 100
    # What runner_step._stored_shots charges the same job once re-attached after a restart.
    assert adapter.spec_shots(spec) == prepared.shots


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
