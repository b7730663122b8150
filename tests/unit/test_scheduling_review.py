"""Scheduling review: adversarial or unlucky workloads against the job core (in process, with
the harness's scripted runner and hand-moved clock). Its finding, fixed: jobs in flight through
an outage reopened a breaker its trial had closed (gateway.runtime.breaker)."""

from __future__ import annotations

import pytest

from gateway.domain.failures import FailureKind
from gateway.runtime.breaker import BreakerPolicy, BreakerState
from gateway.store.sqlite import SqliteStore
from tests.core_harness import Clock, QueueKind, ScriptedRunner, build_core, spec

pytestmark = pytest.mark.anyio

QUEUES: list[QueueKind] = ["memory", "store"]


@pytest.mark.parametrize("kind", QUEUES)
async def test_jobs_in_flight_through_an_outage_do_not_reopen_a_breaker_its_trial_closed(
    store: SqliteStore, kind: QueueKind
) -> None:
    runner = ScriptedRunner(slots=5)
    clock = Clock()
    policy = BreakerPolicy(failure_threshold=2, window_s=60, cooldown_s=10)
    core = await build_core(store, kind, {"sim": runner}, clock=clock, breaker=policy)
    breaker = core.backends["sim"].breaker
    try:
        # Two long jobs start while the backend is healthy (the breaker CLOSED).
        in_flight = [await core.submit("alice", spec("sim")) for _ in range(2)]
        for job in in_flight:
            await core.until("alice", job.id, "RUNNING")
        # The outage: two other jobs fail with backend faults, and the breaker opens.
        for _ in range(2):
            job = await core.submit("bob", spec("sim"))
            await core.until("bob", job.id, "RUNNING")
            runner.fail(job.id, FailureKind.BACKEND_FAULT)
            await core.until("bob", job.id, "FAILED")
        assert breaker.state is BreakerState.OPEN
        # The cool-down passes; the trial succeeds: the backend is healthy, the breaker closes.
        clock.advance(10)
        core.backends["sim"].wake.set()
        trial = await core.submit("carol", spec("sim"))
        await core.until("carol", trial.id, "RUNNING")
        runner.succeed(trial.id)
        await core.until("carol", trial.id, "SUCCEEDED")
        assert breaker.state is BreakerState.CLOSED
        # The jobs that were in flight through the outage now report it (a provider job's
        # failure arrives late). They started before the breaker opened: they prove nothing
        # about the backend now, as the breaker's own rule says of them while it is open.
        for job in in_flight:
            runner.fail(job.id, FailureKind.BACKEND_FAULT)
            await core.until("alice", job.id, "FAILED")
        assert breaker.state is BreakerState.CLOSED
    finally:
        await core.manager.close()
