"""Hostile review of the JobService API: validate_only of a retry answered an error where the
submission answered its job, INVALID_FILTER quoted a limit its metadata lacked (both fixed); a
job committed after a newer one of its tenant was passed by a paged listing and by a
`create_time >` poll (fixed: create times rise in commit order).

In process: the real JobServicer on the job core (tests/core_harness.py: a real SQLite store,
the in-memory queue, a scripted runner, a hand-moved clock), its specs and results stored in
the gateway's own format (codec.STORED_FORMAT) instead of the harness's pickles.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import Any

import pytest
from qgateway.v1 import circuit_pb2, job_pb2, job_service_pb2

from gateway.api import codec
from gateway.api.job_filter import MAX_DEPTH, parse_filter
from gateway.api.job_service import JobServicer
from gateway.api.paging import PageTokens
from gateway.api.stream_budget import StreamBudget
from gateway.api.stream_pace import StreamPace
from gateway.domain.errors import GatewayError, InvalidArgument
from gateway.security.principals import Principal, current_principal
from gateway.store.sqlite import SqliteStore
from tests import core_harness
from tests.core_harness import Core, ScriptedRunner, build_core

pytestmark = pytest.mark.anyio


class _Context:
    def time_remaining(self) -> float | None:
        return 30.0


@contextlib.contextmanager
def _as_tenant(tenant: str) -> Iterator[None]:
    token = current_principal.set(Principal(tenant=tenant, id=f"test/{tenant}"))
    try:
        yield
    finally:
        current_principal.reset(token)


async def _core(store: SqliteStore, monkeypatch: pytest.MonkeyPatch) -> Core:
    # Specs arrive from the servicer as JobSpec messages: stored and read back as the gateway
    # does. No slots: every job stays QUEUED (nothing here depends on running them).
    monkeypatch.setattr(core_harness, "PickleFormat", lambda: codec.STORED_FORMAT)
    return await build_core(store, "memory", {"sim": ScriptedRunner(slots=0)})


def _servicer(core: Core) -> JobServicer:
    return JobServicer(
        core.manager,
        4 << 20,
        5.0,
        page_tokens=PageTokens(bytes(32)),
        sessions=None,  # type: ignore[arg-type]  # no job here names a session
        stream_budget=StreamBudget(1 << 30, 1 << 30),
        stream_pace=StreamPace(100_000),
    )


def _spec(text: str = "OPENQASM 3.0;", **labels: str) -> job_pb2.JobSpec:
    pub = circuit_pb2.SamplerPub(circuit=circuit_pb2.Circuit(qasm3=text), shots=10)
    return job_pb2.JobSpec(
        backend="backends/sim", pubs=[circuit_pb2.Pub(sampler=pub)], labels=labels
    )


async def _submit(servicer: JobServicer, request_id: str, spec: job_pb2.JobSpec) -> str:
    request = job_service_pb2.SubmitJobRequest(request_id=request_id, spec=spec)
    return (await servicer.SubmitJob(request, _Context())).job.name


# --- 1. ListJobs: a job committed between pages, older than the cursor, was never listed -----
#
# A job's create time was the clock's reading before its row committed (Admission builds
# NewJob, then awaits find_request and the store's writer); ListJobs pages by (create_time, id)
# below the last item, so a job whose commit a newer one's overtook landed behind a cursor
# already handed out: neither the listing nor a `create_time >` poll past the newer job ever
# returned it. Fixed: a tenant's create times rise in commit order
# (gateway.store.sqlite_pages.creation_us).


async def test_a_job_committed_after_a_newer_one_is_found_after_the_newest_listed(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    core = await _core(store, monkeypatch)
    servicer = _servicer(core)
    create_job = core.store.create_job
    held = asyncio.Event()
    release = asyncio.Event()

    async def create_held(new: Any) -> Any:
        # Stands for a commit that takes a little longer (its find_request read, the
        # writer's batch): the job's clock reading is already taken.
        if new.labels.get("slow") == "yes":
            held.set()
            await release.wait()
        return await create_job(new)

    monkeypatch.setattr(core.store, "create_job", create_held)
    with _as_tenant("alice"):
        oldest = await _submit(servicer, "d", _spec("OPENQASM 3.0; // d"))
        core.clock.advance(1)
        older = await _submit(servicer, "c", _spec("OPENQASM 3.0; // c"))
        core.clock.advance(1)
        slow_spec = _spec("OPENQASM 3.0; // a", slow="yes")
        slow = asyncio.ensure_future(_submit(servicer, "a", slow_spec))
        await asyncio.wait_for(held.wait(), 5)
        core.clock.advance(1)
        newest = await _submit(servicer, "b", _spec("OPENQASM 3.0; // b"))

        first = await servicer.ListJobs(
            job_service_pb2.ListJobsRequest(page_size=2),
            _Context(),
        )
        release.set()
        acknowledged = await asyncio.wait_for(slow, 5)  # SubmitJob answered: the job exists
        second = await servicer.ListJobs(
            job_service_pb2.ListJobsRequest(page_size=2, page_token=first.next_page_token),
            _Context(),
        )
        listed = [j.name for j in first.jobs] + [j.name for j in second.jobs]
        assert second.next_page_token == ""
        assert listed == [newest, older, oldest]
        # Committed after the first page was served: newer than everything on it, so the
        # client's next poll from the newest job it saw finds it (and only it).
        newest_seen = first.jobs[0].create_time.ToDatetime().isoformat() + "Z"
        polled = await servicer.ListJobs(
            job_service_pb2.ListJobsRequest(filter=f'create_time > "{newest_seen}"'),
            _Context(),
        )
        assert [j.name for j in polled.jobs] == [acknowledged]
        # Its own clock reading was older: its create time is just after the newest's.
        assert polled.jobs[0].create_time.ToNanoseconds() == (
            first.jobs[0].create_time.ToNanoseconds() + 1000
        )
    await core.manager.close()


# --- 2. validate_only of a retry: an error where the submission it validates succeeds -------


async def test_validate_only_of_a_retry_answers_as_the_submission_would(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    core = await _core(store, monkeypatch)
    servicer = _servicer(core)
    with _as_tenant("alice"):
        name = await _submit(servicer, "retry-1", _spec())
        backends: Any = core.manager.backends
        backends.pop("sim")  # the backend left the configuration
        retry = job_service_pb2.SubmitJobRequest(request_id="retry-1", spec=_spec())
        submitted = await servicer.SubmitJob(retry, _Context())
        assert (submitted.job.name, submitted.created) == (name, False)  # as documented

        retry.validate_only = True
        try:
            await servicer.SubmitJob(retry, _Context())
        except GatewayError as err:
            pytest.fail(f"validate_only answered {err.code.name} {err.reason}; SubmitJob: OK")
    await core.manager.close()


# --- 3. INVALID_FILTER quotes a limit its ErrorInfo metadata does not hold --------------------


def test_a_filter_nested_too_deep_names_the_limit_in_metadata() -> None:
    too_deep = "(" * (MAX_DEPTH + 1) + "state = RUNNING" + ")" * (MAX_DEPTH + 1)
    with pytest.raises(InvalidArgument) as refused:
        parse_filter(too_deep)
    err = refused.value
    assert err.reason == "INVALID_FILTER" and err.field_violations
    assert str(MAX_DEPTH) in err.message
    assert err.metadata.get("limit") == str(MAX_DEPTH)
