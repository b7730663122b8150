"""Review (session 29): the promises the .proto doc comments make to a client in any language,
checked against what the servicers answer. Each test pins one promise that did not hold."""

from __future__ import annotations

import pytest

from gateway.api import codec
from gateway.backends.runner import ExecutionModel
from gateway.store.sqlite import SqliteStore
from tests.core_harness import ScriptedRunner, build_core, spec

pytestmark = pytest.mark.anyio


async def test_a_provider_job_shows_the_provider_s_job_id_in_its_execution_info(
    store: SqliteStore,
) -> None:
    # job.proto, ExecutionInfo.provider_job_id: "The provider's own job or task id, for
    # provider backends." The gateway stores it in the transaction that leaves SUBMITTING
    # (Job.remote_id, the id recovery re-attaches with, and the "providerJobId" of a
    # PROVIDER_ERROR), but GetJob (manager.get + codec.encode_job) never wrote it into the
    # message: a user could not find their job in the IBM or Braket console, nor tell support
    # which provider job a gateway job was.
    remote = ScriptedRunner(slots=1, model=ExecutionModel.REMOTE)
    core = await build_core(store, "memory", {"qpu": remote})
    try:
        job = await core.submit("alice", spec("qpu"))
        await core.until("alice", job.id, "RUNNING")
        # What GetJob answers while the provider runs it: the id is known and shown.
        running = codec.encode_job(await core.manager.get("alice", job.id))
        assert running.execution.provider_job_id == f"r-{job.id}"
        remote.succeed(job.id)
        await core.until("alice", job.id, "SUCCEEDED")
        # And once it finished (ExecutionInfo then also holds backend, seed, usage...).
        done = codec.encode_job(await core.manager.get("alice", job.id))
        assert done.execution.provider_job_id == f"r-{job.id}"
        assert done.execution.backend == "backends/qpu"
    finally:
        await core.manager.close()


async def test_a_simulator_job_has_no_provider_job_id(store: SqliteStore) -> None:
    # The other side of the promise ("for provider backends"): a job run in a local worker
    # has no provider id, and the field stays empty rather than holding a gateway-made id.
    local = ScriptedRunner(slots=1)
    core = await build_core(store, "memory", {"sim": local})
    try:
        job = await core.submit("alice", spec("sim"))
        await core.until("alice", job.id, "RUNNING")
        local.succeed(job.id)
        await core.until("alice", job.id, "SUCCEEDED")
        done = codec.encode_job(await core.manager.get("alice", job.id))
        assert done.execution.provider_job_id == ""
    finally:
        await core.manager.close()
