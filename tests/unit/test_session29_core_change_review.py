"""Review of the session's job-core changes: what a holder whose lease lapsed while its run went
on leaves behind once its end is refused (only the lease's holder ends a claimed job), and what
forgetting idle rate-limit buckets costs. In process, on the job-core harness: two replicas on
one store, injected clocks."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from gateway.backends.base import ExecutionOutcome
from gateway.domain.jobs import Job, JobResult, JobState, SamplerResult
from gateway.jobs.queue_port import Claim
from gateway.security.rate_limits import RateLimiter
from gateway.security.tenant_policy import RateLimit
from gateway.store.sqlite import SqliteStore
from tests.core_harness import Clock, Core, ScriptedRunner, build_core, spec

pytestmark = pytest.mark.anyio


async def _two_holders(
    store: SqliteStore, runner_a: ScriptedRunner, runner_b: ScriptedRunner
) -> tuple[Clock, Core, Core]:
    """As tests/unit/test_job_core.py: A (holder-1) schedules, B (holder-2) once started."""
    clock = Clock()
    a = await build_core(store, "store", {"sim": runner_a}, clock=clock, lease_s=0.3)
    b = await build_core(
        store,
        "store",
        {"sim": runner_b},
        clock=clock,
        owner="holder-2",
        lease_s=0.3,
        schedule=False,
    )
    return clock, a, b


def _outcome(shots: int) -> ExecutionOutcome:
    # Distinct shots make each run's encoded result distinct (ScriptedRunner.succeed gives
    # every run the same empty result, which could not tell A's from B's).
    return ExecutionOutcome(
        JobResult(pubs=(SamplerResult(shape=(), shots=shots, registers=()),)), {}
    )


async def _attempts(store: SqliteStore, job_id: str) -> int:
    job = await store.get_job(job_id)
    assert job is not None
    return job.attempts


async def test_a_stale_holders_result_is_never_served_for_the_job_the_next_holder_ended(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A's lease lapsed while its run went on; B claimed the job, ran it again and ended it
    # SUCCEEDED with its result. A's run then succeeded too: RunnerStep._succeeded put A's
    # result in A's RecentResults, then wrote the end (refused: B's lease), then dropped it.
    # While that write is in flight (and for good when it raises, the store busy past
    # FINISH_RETRY_LIMIT_S: the discard is skipped), GetJobResult on A found the job SUCCEEDED
    # in the store and answered A's result from its cache: another run's counts than the
    # job's, on one replica only.
    runner_a, runner_b = ScriptedRunner(slots=1), ScriptedRunner(slots=1)
    clock, a, b = await _two_holders(store, runner_a, runner_b)
    try:
        job = await a.submit("alice", spec("sim"))
        await a.until("alice", job.id, "RUNNING")

        async def stale_renewal(claim: Claim) -> Claim:
            return claim  # A believes it still holds the claim

        monkeypatch.setattr(a.backends["sim"].queue, "renew", stale_renewal)
        clock.advance(0.35)  # A's lease lapses
        b.manager.start_scheduling()
        await asyncio.wait_for(runner_b.started.wait(), 5)
        async with asyncio.timeout(5):
            while (await _attempts(store, job.id)) < 2:  # B's RUNNING is written
                await asyncio.sleep(0.01)
        runner_b.handles[job.id].done.set_result(_outcome(222))
        done = await b.until("alice", job.id, "SUCCEEDED")
        stored = await store.get_result(job.id)
        assert stored is not None

        # What A's replica answers for the job while A's own end is being written.
        seen: list[bytes] = []
        finish_job = store.finish_job

        async def observed_finish(job_id: str, state: JobState, **kw: Any) -> Job | None:
            if job_id == job.id and kw.get("holder") == "holder-1":
                seen.append(await a.manager.result(done))
            return await finish_job(job_id, state, **kw)

        monkeypatch.setattr(store, "finish_job", observed_finish)
        runner_a.handles[job.id].done.set_result(_outcome(111))
        async with asyncio.timeout(5):
            while a.backends["sim"].running:  # A's step ends, its write refused
                await asyncio.sleep(0.01)
        assert seen, "A wrote an end"
        assert seen == [stored]  # the job's result, B's: not A's run's
        assert await a.manager.result(done) == stored
    finally:
        await _close_all(a, b)


async def _close_all(*cores: Core) -> None:
    for core in reversed(cores):
        await core.manager.close()


class _CountingClock:
    """A frozen clock that counts its reads: each read is one bucket looked at (a refill)."""

    def __init__(self) -> None:
        self.reads = 0

    def __call__(self) -> float:
        self.reads += 1
        return 0.0


def test_forgetting_idle_rate_buckets_costs_no_scan_of_every_busy_tenant_per_request() -> None:
    # RateLimiter drops full buckets once 1024 are kept, looking at each. While more than
    # 1024 buckets are not full (busy tenants, or one client spreading requests over tenant
    # ids its JWTs name), none is dropped and the next new key scans them all again: with
    # 5000 busy tenants each such request took 3.3 ms of the event loop (a known key 1.2 us),
    # and a stream of requests from tenants whose idle buckets were dropped pays it each time.
    clock = _CountingClock()
    limiter = RateLimiter(clock)
    rate = RateLimit(per_second=1.0, burst=10)
    for i in range(1500):
        limiter.check(f"busy{i}", "request", rate)  # one token taken: not full (frozen clock)
    clock.reads = 0
    for i in range(100):
        limiter.check(f"new{i}", "request", rate)
    # Amortized, a new bucket costs a few reads (its own, its take); a scan now and then is
    # paid for by the buckets added since the last one. 150,000 reads here before.
    assert clock.reads < 20 * 100
