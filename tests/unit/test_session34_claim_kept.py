"""A runner step renews its claim while it prepares and submits a job (runner_step._claim_kept):
a slow submit (a provider's retries, a pool's acquire) outlasting the lease must not lose the
claim. The renewing task now starts only at the first renewal; these tests keep the renewals
coming on time for a step that takes long, for both queues."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Coroutine
from typing import Any

import pytest

from gateway.backends.base import PreparedJob
from gateway.backends.runner import RunHandle
from gateway.domain.jobs import Job
from gateway.jobs import runner_step
from gateway.store.sqlite import SqliteStore
from tests.core_harness import QueueKind, ScriptedRunner, build_core, spec

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(30)]

LEASE_S = 1.0  # renewed every third of it: a loaded machine's stalls stay well inside


class SlowSubmit(ScriptedRunner):
    """A submit that returns only once `go` is set."""

    def __init__(self) -> None:
        super().__init__(slots=1)
        self.go = asyncio.Event()
        self.entered = asyncio.Event()

    async def submit(self, prepared: PreparedJob, job: Job) -> RunHandle:
        self.entered.set()
        await self.go.wait()
        return await super().submit(prepared, job)


@pytest.mark.parametrize("kind", ["memory", "store"])
async def test_a_submit_that_outlasts_the_lease_keeps_its_claim(
    store: SqliteStore, kind: QueueKind
) -> None:
    runner = SlowSubmit()
    core = await build_core(store, kind, {"sim": runner}, lease_s=LEASE_S)
    queue = core.backends["sim"].queue
    real = queue.renew
    during: list[float] = []  # renewals while the step is stuck in its submit
    renewed_thrice = asyncio.Event()

    async def renew(claim: Any) -> Any:
        if runner.entered.is_set():
            during.append(time.monotonic())
            if len(during) >= 3:
                renewed_thrice.set()
        return await real(claim)

    queue.renew = renew  # type: ignore[method-assign]
    try:
        job = await core.submit("alice", spec("sim"))
        await asyncio.wait_for(runner.entered.wait(), 5)
        # Stuck in its submit past a lease (real time: the lease's timers run on the event
        # loop's clock); no renewal at all fails here, late ones in the gaps below.
        await asyncio.wait_for(renewed_thrice.wait(), 10 * LEASE_S)
        gaps = [b - a for a, b in itertools.pairwise(during)]
        assert all(gap < LEASE_S for gap in gaps), gaps
        runner.go.set()
        await core.until("alice", job.id, "RUNNING")
        assert runner.submitted == [job.id]
    finally:
        runner.go.set()
        await core.manager.close()


async def test_a_quick_step_makes_no_renewal(store: SqliteStore) -> None:
    # A step done within a third of its lease renews nothing (and starts no renewing task).
    runner = ScriptedRunner(slots=1)
    core = await build_core(store, "memory", {"sim": runner}, lease_s=30.0)
    queue = core.backends["sim"].queue
    real = queue.renew
    renewed: list[object] = []

    async def renew(claim: Any) -> Any:
        renewed.append(claim)
        return await real(claim)

    queue.renew = renew  # type: ignore[method-assign]
    try:
        job = await core.submit("alice", spec("sim"))
        await core.until("alice", job.id, "RUNNING")
        assert renewed == []
    finally:
        await core.manager.close()


async def test_a_quick_step_starts_no_renewing_task(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The timer's point: no task made, cancelled and waited for per job. The step's own test
    # (renewed == []) held before the change too (the old task slept a third of the lease).
    made: list[str] = []
    create_task = asyncio.create_task

    def counted(coro: Coroutine[Any, Any, Any], **kwargs: Any) -> asyncio.Task[Any]:
        made.append(coro.__qualname__)
        return create_task(coro, **kwargs)

    monkeypatch.setattr(runner_step.asyncio, "create_task", counted)
    runner = ScriptedRunner(slots=1)
    core = await build_core(store, "memory", {"sim": runner}, lease_s=30.0)
    try:
        job = await core.submit("alice", spec("sim"))
        await core.until("alice", job.id, "RUNNING")
        assert runner.submitted == [job.id]
        assert "_claim_kept.<locals>.keep" not in made, made
    finally:
        await core.manager.close()
