"""The job core in process (issue 8, item 4): admission, scheduling, fair share, breaker
accounting, leases, recovery and lifecycle hooks, on a real SQLite store, with a scripted runner
and an injected wall clock. The scheduling tests run on both queue implementations: they are
the scheduler's contract suite."""

from __future__ import annotations

import asyncio
import dataclasses
import pickle
import sqlite3
import time
from datetime import timedelta
from typing import Any

import pytest
from opentelemetry import context
from opentelemetry.sdk.trace import TracerProvider

from gateway.backends.runner import ExecutionModel, RunHandle
from gateway.domain.errors import (
    ExecutionError,
    Internal,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    StoreUnavailable,
    Unavailable,
)
from gateway.domain.failures import FailureKind
from gateway.domain.jobs import Job, JobSpec, JobState
from gateway.jobs import runner_step
from gateway.jobs.queue_port import Claim
from gateway.jobs.retention_sweep import FIRST_SWEEP_S, RETENTION_SWEEP_S, Swept
from gateway.runtime.breaker import BreakerPolicy, BreakerState, CircuitBreaker, Permit
from gateway.security.policies import PolicyBook
from gateway.security.tenant_policy import TenantPolicy
from gateway.store.sqlite import SqliteStore
from gateway.telemetry import active
from gateway.telemetry.tracing import RPC_CONTEXT, Tracing
from tests.core_harness import (
    Clock,
    Core,
    DirectCompiler,
    FailFirst,
    QueueKind,
    ScriptedRunner,
    ThrottledOnce,
    build_core,
    make_queue,
    spec,
)

pytestmark = pytest.mark.anyio

QUEUES: list[QueueKind] = ["memory", "store"]


async def _close(core: Core) -> None:
    await core.manager.close()


async def _failed_job(
    core: Core, runner: ScriptedRunner, backend: str, tenant: str, kind: FailureKind
) -> Job:
    """A job of `tenant` on `backend` (run by `runner`), failed with `kind` once it runs."""
    job = await core.submit(tenant, spec(backend))
    await core.until(tenant, job.id, "RUNNING")
    runner.fail(job.id, kind)
    return await core.until(tenant, job.id, "FAILED")


async def _succeeded_job(core: Core, runner: ScriptedRunner, backend: str) -> Job:
    """A job of alice on `backend` (run by `runner`, with one slot), succeeded once it runs."""
    job = await core.submit("alice", spec(backend))
    await runner.started.wait()
    runner.succeed(job.id)
    return await core.until("alice", job.id, "SUCCEEDED")


def _released_permits(monkeypatch: pytest.MonkeyPatch, breaker: CircuitBreaker) -> list[Permit]:
    """The permits given back to `breaker` (CircuitBreaker.release) from now on."""
    released: list[Permit] = []
    release = breaker.release

    def spy(permit: Permit) -> None:
        released.append(permit)
        release(permit)

    monkeypatch.setattr(breaker, "release", spy)
    return released


async def _queued_before_a_restart(store: SqliteStore) -> tuple[Job, Clock]:
    """A job a gateway accepted and stopped before running (it is recovered at the next start),
    and that gateway's clock."""
    first = await build_core(store, "memory", {"sim": ScriptedRunner(slots=0)})
    job = await first.submit("alice", spec("sim"))
    await _close(first)
    return job, first.clock


async def _claimed_by_a_dead_holder(core: Core, kind: QueueKind, job: Job) -> tuple[Any, Claim]:
    """The job claimed by a holder that then never renews nor ends its claim: another replica
    on the shared store, or, in one process, a runner task that vanished."""
    holder = (
        make_queue(kind, core.store, "sim", "dead-holder", core.clock, 3600.0)
        if kind == "store"
        else core.backends["sim"].queue
    )
    claim = await holder.claim()
    assert claim is not None and claim.job.id == job.id
    return holder, claim


# ---------------------------------------------------------------- admission


async def test_admission_commits_queued_before_answering_and_hooks_see_it(
    store: SqliteStore,
) -> None:
    runner = ScriptedRunner(slots=1)
    core = await build_core(store, "memory", {"sim": runner})
    try:
        job = await core.submit("alice", spec("sim"), request_id="r1")
        stored = await store.get_job(job.id)
        assert stored is not None and stored.state in (JobState.QUEUED, JobState.RUNNING)
        assert core.recorder.states(job.id)[0] == "QUEUED"
        # A retry with the same request_id gets the same job, and nothing new runs.
        again = await core.manager.submit("alice", "r1", spec("sim"), b"", b"r1")
        assert not again.created and again.job.id == job.id
    finally:
        await _close(core)


async def test_concurrent_twins_make_one_job_and_start_one_run(store: SqliteStore) -> None:
    # The in-memory queue takes a job while its QUEUED commit is in flight: a twin that the
    # store then deduplicates must leave no trace but the one job, and must not start (a
    # stand-in taken back from a simulator worker kills the worker).
    runner = ScriptedRunner(slots=2)
    core = await build_core(store, "memory", {"sim": runner})
    try:
        job_spec = spec("sim")
        data = pickle.dumps(job_spec)
        first, second = await asyncio.gather(
            core.manager.submit("alice", "twin", job_spec, data, b"same"),
            core.manager.submit("alice", "twin", job_spec, data, b"same"),
        )
        assert sorted([first.created, second.created]) == [False, True]
        assert first.job.id == second.job.id
        job_id = first.job.id
        await core.until("alice", job_id, "RUNNING")
        await core.settle()
        page = await store.list_jobs("alice", limit=10)
        assert [j.id for j in page.jobs] == [job_id]
        assert runner.submitted == [job_id] and runner.cancelled == []
        runner.succeed(job_id)
        await core.until("alice", job_id, "SUCCEEDED")
    finally:
        await _close(core)


async def test_a_twin_prepared_after_the_first_ones_create_answered_does_not_start(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Twins were recognised only after preparing: a twin whose compile ended after the first
    # one's create had answered found no create in flight and started a stand-in, which the
    # store's dedup then took back from its worker.
    release = asyncio.Event()
    calls = 0

    async def second_waits(self: Any, *args: Any) -> object:
        nonlocal calls
        calls += 1
        if calls == 2:
            await release.wait()
        return args[2].compile_circuit(args[3])

    monkeypatch.setattr(DirectCompiler, "compile", second_waits)
    runner = ScriptedRunner(slots=2)
    core = await build_core(store, "memory", {"sim": runner})
    try:
        job_spec = spec("sim")
        data = pickle.dumps(job_spec)
        first = asyncio.ensure_future(core.manager.submit("alice", "twin", job_spec, data, b"d"))
        await asyncio.sleep(0)
        second = asyncio.ensure_future(core.manager.submit("alice", "twin", job_spec, data, b"d"))
        created = await first
        release.set()
        again = await second
        assert created.created and not again.created and again.job.id == created.job.id
        await core.until("alice", created.job.id, "RUNNING")
        await core.settle()
        assert runner.submitted == [created.job.id] and runner.cancelled == []
        assert not core.backends["sim"].admitting
        runner.succeed(created.job.id)
        await core.until("alice", created.job.id, "SUCCEEDED")
    finally:
        await _close(core)


async def test_a_submission_over_the_tenants_limits_never_starts(store: SqliteStore) -> None:
    # Refused by the store after its stand-in started, a job was taken back from its worker:
    # for a simulator a worker kill and respawn, for every tenant, at the refused one's rate.
    runner = ScriptedRunner(slots=1)
    policies = PolicyBook(default=TenantPolicy(max_queued_jobs=1))
    core = await build_core(store, "memory", {"sim": runner}, policies=policies)
    try:
        first = await core.submit("mallory", spec("sim"))
        await core.until("mallory", first.id, "RUNNING")  # RUNNING: no longer QUEUED
        second = await core.submit("mallory", spec("sim", text="y"))
        for i in range(5):
            with pytest.raises(ResourceExhausted) as refused:
                await core.submit("mallory", spec("sim", text=f"z{i}"))
            assert refused.value.reason == "TENANT_QUEUE_FULL"
        await core.settle()
        assert runner.submitted == [first.id] and runner.cancelled == []
        runner.succeed(first.id)
        await core.until("mallory", second.id, "RUNNING")
        runner.succeed(second.id)
        await core.until("mallory", second.id, "SUCCEEDED")
    finally:
        await _close(core)


async def test_a_retry_of_a_created_request_starts_nothing(store: SqliteStore) -> None:
    # A retry whose job existed was started as a stand-in before the store's dedup answered,
    # ran the circuit again and was taken back from its worker: a worker kill and respawn per
    # retry, which any client could repeat at will.
    runner = ScriptedRunner(slots=1)
    core = await build_core(store, "memory", {"sim": runner})
    try:
        first = await core.submit("alice", spec("sim"), request_id="r-1")
        await core.until("alice", first.id, "RUNNING")
        again = await core.submit("alice", spec("sim"), request_id="r-1")
        assert again.id == first.id
        runner.succeed(first.id)
        await core.until("alice", first.id, "SUCCEEDED")
        after = await core.submit("alice", spec("sim"), request_id="r-1")
        assert after.id == first.id
        await core.settle()
        assert runner.submitted == [first.id] and runner.cancelled == []
    finally:
        await _close(core)


async def test_a_limited_submission_whose_caller_left_during_its_commit_still_runs(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A tenant with limits has its job committed before it is queued. The caller's deadline
    # cancelled the commit's await: the store committed the job anyway, but it was never
    # queued (QUEUED in no queue, its quota reservation held, until a restart).
    runner = ScriptedRunner(slots=1)
    policies = PolicyBook(default=TenantPolicy(max_queued_jobs=5))
    core = await build_core(store, "memory", {"sim": runner}, policies=policies)
    real = store.create_job
    entered, go = asyncio.Event(), asyncio.Event()

    async def slow_create(*args: Any, **kwargs: Any) -> Any:
        entered.set()
        await go.wait()
        return await real(*args, **kwargs)

    try:
        monkeypatch.setattr(store, "create_job", slow_create)
        submitting = asyncio.ensure_future(core.submit("alice", spec("sim"), request_id="r-2"))
        await entered.wait()
        submitting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await submitting
        go.set()
        async with asyncio.timeout(5):
            while not runner.submitted:
                await core.settle()
        found = await store.find_request("alice", "r-2", core.clock())
        assert found is not None and runner.submitted == [found[0].id]
    finally:
        await _close(core)


async def test_a_refused_submission_keeps_no_trace_context(store: SqliteStore) -> None:
    # A submission refused after its job was stamped with the RPC's trace context (a reused
    # request_id) kept that context for ever: with tracing on, any client could grow the
    # gateway's memory by ~3 KB per request, up to 100,000 of them.
    provider = TracerProvider()
    tracing = Tracing(provider.get_tracer("test"), max_header_bytes=256)
    active.install(tracing, None)
    runner = ScriptedRunner(slots=1)
    core = await build_core(store, "memory", {"sim": runner})

    async def submit_job(request: JobSpec, digest: bytes) -> Job:
        with tracing.tracer.start_as_current_span("SubmitJob"):  # one RPC span per call
            token = RPC_CONTEXT.set(context.get_current())
            try:
                outcome = await core.manager.submit(
                    "alice", "r-1", request, pickle.dumps(request), digest
                )
            finally:
                RPC_CONTEXT.reset(token)
        return outcome.job

    try:
        first = await submit_job(spec("sim"), b"first")
        await core.until("alice", first.id, "RUNNING")
        kept = len(tracing._origins)
        for seed in range(5):
            with pytest.raises(InvalidArgument) as refused:
                await submit_job(spec("sim", text=f"other{seed}"), b"other%d" % seed)
            assert refused.value.reason == "REQUEST_ID_REUSED"
        assert len(tracing._origins) == kept
    finally:
        await _close(core)
        active.install(None, None)
        provider.shutdown()


async def test_a_full_queue_refuses_with_nothing_accepted(store: SqliteStore) -> None:
    runner = ScriptedRunner(slots=1)
    core = await build_core(store, "memory", {"sim": runner}, max_queued_jobs=1)
    try:
        first = await core.submit("alice", spec("sim"))
        await core.until("alice", first.id, "RUNNING")  # the slot is taken
        await core.submit("alice", spec("sim"))  # waits in the queue
        with pytest.raises(ResourceExhausted) as refused:
            await core.submit("alice", spec("sim"))
        assert refused.value.reason == "QUEUE_FULL"
        page = await store.list_jobs("alice", limit=10)
        assert len(page.jobs) == 2
    finally:
        await _close(core)


@pytest.mark.parametrize("kind", QUEUES)
async def test_one_tenant_cannot_fill_the_queue_others_need(
    store: SqliteStore, kind: QueueKind
) -> None:
    # One tenant submitting as fast as it could filled the backend's queue, and every other
    # tenant was refused QUEUE_FULL until that backlog drained.
    runner = ScriptedRunner(slots=0)  # nothing runs: every accepted job waits
    core = await build_core(store, kind, {"sim": runner}, max_queued_jobs=10)

    async def fill(tenant: str) -> tuple[int, ResourceExhausted]:
        for i in range(11):
            try:
                await core.submit(tenant, spec("sim", text=f"{tenant}{i}"))
            except ResourceExhausted as refused:
                return i, refused
        raise AssertionError(f"{tenant} was never refused")

    try:
        accepted, refused = await fill("mallory")
        assert accepted == 5 and refused.reason == "QUEUE_FULL"  # half the queue
        assert refused.metadata["tenantQueuedJobs"] == "5"
        assert refused.metadata["tenantShare"] == "5"
        assert refused.retry_after is not None
        accepted, refused = await fill("alice")  # an equal share with mallory and one more
        assert accepted == 10 // 3 and refused.metadata["tenantShare"] == "3"
        accepted, refused = await fill("bob")  # the rest, to the queue's limit
        assert accepted == 2 and "limit of 10" in str(refused)
        assert await core.backends["sim"].queue.waiting_by_tenant() == {
            "mallory": 5,
            "alice": 3,
            "bob": 2,
        }
        assert not core.backends["sim"].admitting
    finally:
        await _close(core)


@pytest.mark.parametrize("kind", QUEUES)
async def test_concurrent_submissions_cannot_overfill_the_queue(
    store: SqliteStore, kind: QueueKind, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The depth check ran before the compile's await, and nothing checked again: 40 concurrent
    # submissions of new circuits all passed a limit of 3.
    async def slow_compile(self: Any, *args: Any) -> object:
        await asyncio.sleep(0)  # a compile worker's round trip
        await asyncio.sleep(0)
        return args[2].compile_circuit(args[3])

    monkeypatch.setattr(DirectCompiler, "compile", slow_compile)
    runner = ScriptedRunner(slots=0)  # nothing runs: every accepted job waits
    core = await build_core(store, kind, {"sim": runner}, max_queued_jobs=3)
    try:

        async def one(i: int) -> str:
            job_spec = spec("sim", text=f"x{i}")
            try:
                out = await core.manager.submit(
                    f"t{i}", "", job_spec, pickle.dumps(job_spec), b"d%d" % i
                )
            except ResourceExhausted as refused:
                return refused.reason
            return out.job.state.value

        results = await asyncio.gather(*(one(i) for i in range(40)))
        assert results.count("QUEUED") == 3 and results.count("QUEUE_FULL") == 37
        assert await core.backends["sim"].queue.depth() == 3
        assert not core.backends["sim"].admitting
    finally:
        await _close(core)


# A backend `main` and its fallback `spare`, whose breakers open at one backend fault and
# half-open 30 s later.
ONE_FAULT_OPENS = BreakerPolicy(failure_threshold=1, window_s=60, cooldown_s=30)


async def _with_fallback(
    store: SqliteStore, main_slots: int = 1, spare_slots: int = 1, **options: Any
) -> Core:
    runners = {"main": ScriptedRunner(slots=main_slots), "spare": ScriptedRunner(slots=spare_slots)}
    return await build_core(store, "memory", runners, breaker=ONE_FAULT_OPENS, **options)


async def _half_open(core: Core) -> None:
    """Opens `main`'s breaker with a backend fault and lets its cool-down pass; its health
    probe passes."""
    core.backends["main"].health.serving = True
    await _failed_job(core, core.runners["main"], "main", "alice", FailureKind.BACKEND_FAULT)
    core.clock.advance(30)


def _refuse_on(core: Core, backend: str, error: Exception, text: str | None = None) -> None:
    """`backend`'s compiler refuses circuits (those whose text is `text`, else all) with
    `error`."""
    adapter = core.backends[backend].adapter
    compile_circuit = adapter.compile_circuit

    def refusing(source: Any) -> object:
        if text is None or source.text == text:
            raise error
        return compile_circuit(source)

    adapter.compile_circuit = refusing  # type: ignore[method-assign]


class _TwinCompiler:
    """The admission's compiler, except that the first compile of the circuit "twin" for
    `main` waits for `hold` (`held` says it waits) and `spare` refuses every circuit
    (TOO_MANY_QUBITS; `refused` says it did): twins of one request_id, one kept mid-admission
    while the other meets the fallback."""

    def __init__(self, core: Core) -> None:
        admission = core.manager._admission
        self._real = admission._compiler
        self.held, self.hold, self.refused = asyncio.Event(), asyncio.Event(), asyncio.Event()
        admission._compiler = self

    async def compile(
        self, tenant: str, backend: str, adapter: Any, source: Any, field: str
    ) -> object:
        if source.text == "twin" and backend == "main" and not self.held.is_set():
            self.held.set()
            await self.hold.wait()
        if backend == "spare":
            self.refused.set()
            raise InvalidArgument("TOO_MANY_QUBITS", "this backend has 3")
        return await self._real.compile(tenant, backend, adapter, source, field)


async def test_an_open_breaker_refuses_or_places_on_the_fallback(store: SqliteStore) -> None:
    core = await _with_fallback(store)
    main = core.runners["main"]
    try:
        await _failed_job(core, main, "main", "alice", FailureKind.BACKEND_FAULT)
        assert core.backends["main"].breaker.state is BreakerState.OPEN
        with pytest.raises(Unavailable) as refused:
            await core.submit("alice", spec("main"))
        assert refused.value.reason == "BACKEND_UNAVAILABLE"
        placed = await core.submit("alice", spec("main", fallback_backend="spare"))
        assert placed.placement == "spare"
    finally:
        await _close(core)


async def test_a_full_fallback_of_an_open_backend_refuses_rather_than_queue_on_the_backend(
    store: SqliteStore,
) -> None:
    core = await _with_fallback(store, spare_slots=0, max_queued_jobs=1)
    main = core.runners["main"]
    try:
        await _failed_job(core, main, "main", "alice", FailureKind.BACKEND_FAULT)
        assert core.backends["main"].breaker.state is BreakerState.OPEN
        await core.submit("alice", spec("spare"))  # the fallback's one queued place
        # The backend is no way out: its breaker is open, so the answer is the full queue.
        with pytest.raises(ResourceExhausted) as refused:
            await core.submit("alice", spec("main", fallback_backend="spare"))
        assert refused.value.reason == "QUEUE_FULL"
        assert refused.value.metadata["backend"] == "backends/spare"
        assert await core.backends["main"].queue.depth() == 0
    finally:
        await _close(core)


async def test_a_job_naming_a_fallback_is_not_held_behind_a_half_open_trial(
    store: SqliteStore,
) -> None:
    # Placed on the half-open backend while its trial was out (its probe failing too), a job
    # naming a healthy fallback waited for the trial, then became the next trial and failed:
    # three such jobs failed in turn on a real gateway, none ran on the fallback.
    core = await _with_fallback(store, main_slots=2)
    runtime = core.backends["main"]
    try:
        await _half_open(core)
        assert runtime.breaker.state is BreakerState.HALF_OPEN
        runtime.health.serving = False
        placed = await core.submit("bob", spec("main", text="a", fallback_backend="spare"))
        assert placed.placement == "spare"  # no trial out, but its probe fails
        runtime.health.serving = True
        trial = await core.submit("bob", spec("main", text="b", fallback_backend="spare"))
        assert trial.placement == "main"  # it may be the trial
        runtime.wake.set()
        await core.until("bob", trial.id, "RUNNING")
        assert runtime.breaker.trial_running
        placed = await core.submit("bob", spec("main", text="c", fallback_backend="spare"))
        assert placed.placement == "spare"
        assert (await core.submit("bob", spec("main", text="d"))).placement == "main"
    finally:
        await _close(core)


async def test_a_refusal_with_an_open_fallback_names_it_and_the_sooner_retry(
    store: SqliteStore,
) -> None:
    # It named only the backend, its retry delay, and told the caller to "name a
    # fallback_backend", which it had done.
    core = await _with_fallback(store)
    main, fallback = core.runners["main"], core.runners["spare"]
    try:
        await _failed_job(core, fallback, "spare", "alice", FailureKind.BACKEND_FAULT)
        core.clock.advance(20)
        await _failed_job(core, main, "main", "alice", FailureKind.BACKEND_FAULT)
        with pytest.raises(Unavailable) as refused:
            await core.submit("alice", spec("main", text="y", fallback_backend="spare"))
        error = refused.value
        assert error.reason == "BACKEND_UNAVAILABLE"
        assert "name a fallback_backend" not in error.message
        assert "its fallback backends/spare is failing too" in error.message
        assert error.metadata["fallbackBackend"] == "backends/spare"
        assert error.metadata["fallbackBreakerState"] == "OPEN"
        assert error.retry_after == pytest.approx(10.0, abs=0.1)  # spare half-opens first
        assert error.metadata["retryDelaySeconds"] == "10.0"
    finally:
        await _close(core)


async def test_a_fallback_that_cannot_run_the_job_is_the_backends_unavailability(
    store: SqliteStore,
) -> None:
    # A 5-qubit job with a 3-qubit fallback ran while its backend was closed and, once the
    # breaker opened, was refused INVALID_ARGUMENT TOO_MANY_QUBITS naming no backend: a
    # refusal the client never retries, of a request that is fine as sent.
    core = await _with_fallback(store)
    main = core.runners["main"]
    too_big = InvalidArgument("TOO_MANY_QUBITS", "the circuit uses 5 qubits; this backend has 3")
    _refuse_on(core, "spare", too_big)
    try:
        job = await core.submit("alice", spec("main", fallback_backend="spare"))
        assert job.placement == "main"
        main.succeed(job.id)
        await core.until("alice", job.id, "SUCCEEDED")
        await _failed_job(core, main, "main", "alice", FailureKind.BACKEND_FAULT)
        with pytest.raises(Unavailable) as refused:
            await core.submit("alice", spec("main", text="y", fallback_backend="spare"))
        error = refused.value
        assert error.reason == "BACKEND_UNAVAILABLE"
        assert error.metadata["fallbackBackend"] == "backends/spare"
        assert error.metadata["fallbackReason"] == "TOO_MANY_QUBITS"
        assert error.metadata["breakerState"] == "OPEN"
        assert error.retry_after == pytest.approx(30.0, abs=1.0)
        assert "this backend has 3" in error.message
    finally:
        await _close(core)


async def test_an_sdk_error_opens_the_breaker_only_while_the_backend_fails_its_probe(
    store: SqliteStore,
) -> None:
    """A circuit that trips an SDK bug fails with SDK_ERROR on a backend that still passes
    its probe: one tenant's such jobs must not open the breaker every tenant shares (five
    QPY jobs did, on ibm-fake-*). A backend gone bad fails its probe too: then they count."""
    main = ScriptedRunner()
    policy = BreakerPolicy(failure_threshold=2, window_s=60, cooldown_s=30)
    core = await build_core(store, "memory", {"main": main}, breaker=policy)
    runtime = core.backends["main"]
    try:
        runtime.health.serving = True
        for _ in range(3):
            await _failed_job(core, main, "main", "mallory", FailureKind.SDK_ERROR)
        assert runtime.breaker.state is BreakerState.CLOSED
        runtime.health.serving = False  # its probe fails: the same errors are the backend's
        for _ in range(2):
            await _failed_job(core, main, "main", "alice", FailureKind.SDK_ERROR)
        assert runtime.breaker.state is BreakerState.OPEN
    finally:
        await _close(core)


async def test_a_backend_without_its_target_refuses_jobs_or_places_on_the_fallback(
    store: SqliteStore,
) -> None:
    main, fallback = ScriptedRunner(), ScriptedRunner()
    core = await build_core(store, "memory", {"main": main, "spare": fallback})
    try:
        core.backends["main"].target_pending = "the device could not be described (HTTP 503)"
        for refused_call in (
            core.submit("alice", spec("main")),
            core.manager.validate("alice", spec("main")),
        ):
            with pytest.raises(Unavailable) as refused:
                await refused_call
            assert refused.value.reason == "BACKEND_UNAVAILABLE"
            assert refused.value.metadata["targetFetched"] == "false"
            assert "HTTP 503" in refused.value.message
            assert refused.value.retry_after is not None
        placed = await core.submit("alice", spec("main", fallback_backend="spare"))
        assert placed.placement == "spare"
        core.backends["main"].target_pending = ""
        job = await core.submit("alice", spec("main"))
        assert job.placement == "main"
    finally:
        await _close(core)


async def test_a_while_loop_on_a_simulator_stops_at_the_loop_limit_as_its_own_fault(
    store: SqliteStore,
) -> None:
    # A ~150-byte loop that never ends held a simulator worker for the backend's hour.
    local, remote = ScriptedRunner(), ScriptedRunner(model=ExecutionModel.REMOTE)
    policy = BreakerPolicy(failure_threshold=1, window_s=60, cooldown_s=30)
    core = await build_core(
        store, "memory", {"sim": local, "qpu": remote}, breaker=policy, max_loop_run_time_s=0.2
    )
    try:
        # A provider bounds loops itself: its job is not stopped at the loop limit.
        at_provider = await core.submit("alice", spec("qpu", text="while forever"))
        await core.until("alice", at_provider.id, "RUNNING")
        looping = await core.submit("alice", spec("sim", text="while forever"))
        failed = await core.until("alice", looping.id, "FAILED")
        assert failed.error is not None and failed.error.reason == "JOB_TIMEOUT"
        assert "while loops of 0.2s" in failed.error.message
        assert failed.error.metadata["limitSeconds"] == "0.2"
        # The job's doing, not the backend's: the breaker (threshold 1) stays closed.
        assert core.backends["sim"].breaker.state is BreakerState.CLOSED
        assert (await core.store.get_job(at_provider.id)).state.value == "RUNNING"  # type: ignore[union-attr]
        remote.succeed(at_provider.id)
        await core.until("alice", at_provider.id, "SUCCEEDED")
        # A job without a loop keeps the backend's own limit.
        plain = await core.submit("alice", spec("sim"))
        await core.until("alice", plain.id, "RUNNING")
        local.succeed(plain.id)
        await core.until("alice", plain.id, "SUCCEEDED")
    finally:
        await _close(core)


# ---------------------------------------------------------------- scheduling (both queues)


@pytest.mark.parametrize("kind", QUEUES)
async def test_runs_no_more_than_the_runner_capacity(store: SqliteStore, kind: QueueKind) -> None:
    runner = ScriptedRunner(slots=2)
    core = await build_core(store, kind, {"sim": runner})
    try:
        jobs = [await core.submit("alice", spec("sim")) for _ in range(3)]
        await core.until("alice", jobs[1].id, "RUNNING")
        await core.settle()
        assert runner.submitted == [jobs[0].id, jobs[1].id]
        runner.succeed(jobs[0].id)
        await core.until("alice", jobs[2].id, "RUNNING")
        assert (await core.until("alice", jobs[0].id, "SUCCEEDED")).state is JobState.SUCCEEDED
    finally:
        await _close(core)


@pytest.mark.parametrize("kind", QUEUES)
async def test_a_failed_queue_call_does_not_end_the_scheduler(
    store: SqliteStore, kind: QueueKind
) -> None:
    # One store error (SQLITE_BUSY past the busy timeout, a full disk) inside a scheduler turn
    # ended the backend's only scheduler task: later jobs stayed QUEUED with nothing to run them.
    runner = ScriptedRunner(slots=1)
    core = await build_core(store, kind, {"sim": runner})
    queue = core.backends["sim"].queue
    real_claim = queue.claim
    calls = 0

    async def flaky_claim() -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise sqlite3.OperationalError("database is locked")
        return await real_claim()

    queue.claim = flaky_claim  # type: ignore[method-assign]
    try:
        job = await core.submit("alice", spec("sim"))
        await core.until("alice", job.id, "RUNNING")
        assert calls >= 2 and runner.submitted == [job.id]
        runner.succeed(job.id)
        await core.until("alice", job.id, "SUCCEEDED")
    finally:
        await _close(core)


@pytest.mark.parametrize("kind", QUEUES)
async def test_fair_share_across_tenants(store: SqliteStore, kind: QueueKind) -> None:
    runner = ScriptedRunner(slots=1)
    core = await build_core(store, kind, {"sim": runner})
    try:
        blocker = await core.submit("carol", spec("sim"))
        await core.until("carol", blocker.id, "RUNNING")
        a = [await core.submit("alice", spec("sim")) for _ in range(3)]
        b = await core.submit("bob", spec("sim"))
        runner.succeed(blocker.id)
        order = []
        for _ in range(4):
            await asyncio.wait_for(_next_start(runner, len(order) + 2), 5)
            current = runner.submitted[-1]
            order.append(current)
            runner.succeed(current)
        # Bob queued after all of Alice's jobs, yet runs second: tenants take turns.
        assert order == [a[0].id, b.id, a[1].id, a[2].id]
    finally:
        await _close(core)


async def _next_start(runner: ScriptedRunner, count: int) -> None:
    while len(runner.submitted) < count:
        runner.started.clear()
        await runner.started.wait()


@pytest.mark.parametrize("kind", QUEUES)
async def test_a_lease_whose_holder_died_is_claimed_again(
    store: SqliteStore, kind: QueueKind
) -> None:
    runner = ScriptedRunner(slots=1)
    clock = Clock()
    core = await build_core(store, kind, {"sim": runner}, clock=clock)
    try:
        blocker = await core.submit("alice", spec("sim"))
        await core.until("alice", blocker.id, "RUNNING")
        job = await core.submit("alice", spec("sim"))
        holder, claim = await _claimed_by_a_dead_holder(core, kind, job)
        runner.succeed(blocker.id)
        await core.until("alice", blocker.id, "SUCCEEDED")
        await core.settle()
        assert runner.submitted == [blocker.id]  # the claim is held: nobody runs the job
        clock.advance(31)  # the lease (30 s) lapses
        core.backends["sim"].wake.set()
        await core.until("alice", job.id, "RUNNING")
        assert runner.submitted == [blocker.id, job.id]
        runner.succeed(job.id)
        await core.until("alice", job.id, "SUCCEEDED")
        assert await holder.renew(claim) is None  # the dead holder's claim is gone
    finally:
        await _close(core)


async def test_jobs_whose_expiry_could_not_be_stored_expire_later_not_never(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The memory queue hands expired jobs out of the queue before the store fails them: a
    # store error on the first lost the rest (in no queue, QUEUED in the store) until a restart.
    runner = ScriptedRunner(slots=0)
    clock = Clock()
    core = await build_core(store, "memory", {"sim": runner}, clock=clock, max_queue_time_s=60)
    try:
        jobs = [await core.submit(f"t{i}", spec("sim", text=f"x{i}")) for i in range(2)]
        flaky_finish = FailFirst(store.finish_job, 1)
        monkeypatch.setattr(store, "finish_job", flaky_finish)
        clock.advance(61)
        core.backends["sim"].wake.set()
        for i, job in enumerate(jobs):
            failed = await core.until(f"t{i}", job.id, "FAILED")
            assert failed.error is not None and failed.error.reason == "QUEUE_TIMEOUT"
        assert flaky_finish.left == 0
    finally:
        await _close(core)


@pytest.mark.parametrize("kind", QUEUES)
async def test_a_lapsed_claim_does_not_spin_a_scheduler_without_a_free_slot(
    store: SqliteStore, kind: QueueKind
) -> None:
    # A lapsed lease's expiry stays in the past until someone claims it: a scheduler with no
    # free slot took it as its timer and turned with timeout 0 (thousands of store reads and
    # a write transaction per second) until a slot freed.
    runner = ScriptedRunner(slots=1)
    clock = Clock()
    core = await build_core(store, kind, {"sim": runner}, clock=clock)
    try:
        blocker = await core.submit("alice", spec("sim"))
        await core.until("alice", blocker.id, "RUNNING")
        job = await core.submit("bob", spec("sim"))
        await _claimed_by_a_dead_holder(core, kind, job)
        queue = core.backends["sim"].queue
        real_next_wakeup = queue.next_wakeup
        turns = 0

        async def counting(*, leases: bool = True) -> Any:
            nonlocal turns
            turns += 1
            return await real_next_wakeup(leases=leases)

        queue.next_wakeup = counting  # type: ignore[method-assign]
        clock.advance(31)  # the lease lapses while the only slot is busy
        core.backends["sim"].wake.set()
        for _ in range(20):
            await core.settle()
        assert turns <= 2, f"{turns} scheduler turns while nothing could change"
        runner.succeed(blocker.id)  # a slot frees: the lapsed job is claimed and runs
        await core.until("bob", job.id, "RUNNING")
        runner.succeed(job.id)
        await core.until("bob", job.id, "SUCCEEDED")
    finally:
        await _close(core)


@pytest.mark.parametrize("kind", QUEUES)
async def test_a_lapsed_claim_past_the_queue_deadline_fails_instead_of_running(
    store: SqliteStore, kind: QueueKind
) -> None:
    runner = ScriptedRunner(slots=1)
    clock = Clock()
    core = await build_core(store, kind, {"sim": runner}, clock=clock, max_queue_time_s=20)
    try:
        blocker = await core.submit("alice", spec("sim"))
        await core.until("alice", blocker.id, "RUNNING")
        job = await core.submit("alice", spec("sim"))
        holder = (
            make_queue(kind, store, "sim", "dead-holder", clock, 20.0)
            if kind == "store"
            else core.backends["sim"].queue
        )
        assert (claim := await holder.claim()) is not None and claim.job.id == job.id
        clock.advance(31)  # the lease lapses, and the job's 20 s in the queue are over
        runner.succeed(blocker.id)
        failed = await core.until("alice", job.id, "FAILED")
        assert failed.error is not None and failed.error.reason == "QUEUE_TIMEOUT"
        assert runner.submitted == [blocker.id]
    finally:
        await _close(core)


@pytest.mark.parametrize("kind", QUEUES)
async def test_a_lapsed_claim_at_exactly_the_queue_deadline_fails_as_a_waiting_job_would(
    store: SqliteStore, kind: QueueKind
) -> None:
    # A waiting job expires when its deadline is reached (take_expired: deadline <= now); a
    # claim that lapses at that very instant must not run it instead.
    runner = ScriptedRunner(slots=1)
    clock = Clock()
    core = await build_core(
        store, kind, {"sim": runner}, clock=clock, max_queue_time_s=30, lease_s=30
    )
    try:
        blocker = await core.submit("alice", spec("sim"))
        await core.until("alice", blocker.id, "RUNNING")
        job = await core.submit("alice", spec("sim"))
        holder = (
            make_queue(kind, store, "sim", "dead-holder", clock, 30.0)
            if kind == "store"
            else core.backends["sim"].queue
        )
        assert (claim := await holder.claim()) is not None and claim.job.id == job.id
        clock.advance(30)  # the lease lapses as the job's 30 s in the queue end
        runner.succeed(blocker.id)
        failed = await core.until("alice", job.id, "FAILED")
        assert failed.error is not None and failed.error.reason == "QUEUE_TIMEOUT"
        assert runner.submitted == [blocker.id]
    finally:
        await _close(core)


# ---------------------------------------------------------------- breaker accounting


async def test_only_backend_faults_count_and_only_the_trial_closes(store: SqliteStore) -> None:
    runner = ScriptedRunner(slots=2)
    clock = Clock()
    policy = BreakerPolicy(failure_threshold=2, window_s=60, cooldown_s=10)
    core = await build_core(store, "memory", {"sim": runner}, clock=clock, breaker=policy)
    breaker = core.backends["sim"].breaker
    try:
        # Client errors, out-of-memory and the job's own time limit say nothing about the
        # backend.
        for kind in (FailureKind.CLIENT_ERROR, FailureKind.OUT_OF_MEMORY, FailureKind.TIMEOUT):
            await _failed_job(core, runner, "sim", "alice", kind)
        assert breaker.state is BreakerState.CLOSED
        early = await core.submit("alice", spec("sim"))  # started while CLOSED
        first = await core.submit("alice", spec("sim"))
        await core.until("alice", first.id, "RUNNING")
        runner.fail(first.id, FailureKind.BACKEND_FAULT)
        await core.until("alice", first.id, "FAILED")
        second = await core.submit("alice", spec("sim"))
        await core.until("alice", second.id, "RUNNING")
        runner.fail(second.id, FailureKind.BACKEND_FAULT)
        await core.until("alice", second.id, "FAILED")
        assert breaker.state is BreakerState.OPEN
        clock.advance(10)  # half-open: the next job is the trial
        trial = await core.submit("alice", spec("sim"))
        core.backends["sim"].wake.set()
        await core.until("alice", trial.id, "RUNNING")
        runner.succeed(early.id)  # the early job succeeds while the trial runs
        await core.until("alice", early.id, "SUCCEEDED")
        assert breaker.state is BreakerState.HALF_OPEN
        runner.succeed(trial.id)
        await core.until("alice", trial.id, "SUCCEEDED")
        assert breaker.state is BreakerState.CLOSED
    finally:
        await _close(core)


@pytest.mark.parametrize("kind", QUEUES)
async def test_a_half_open_trial_found_no_job_and_the_next_job_still_runs(
    store: SqliteStore, kind: QueueKind, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The scheduler takes the half-open trial's permit before it claims: with the queue empty
    # the permit must be given back, or no job is ever let through (stuck HALF_OPEN).
    runner = ScriptedRunner()
    clock = Clock()
    policy = BreakerPolicy(failure_threshold=1, window_s=60, cooldown_s=10)
    core = await build_core(store, kind, {"sim": runner}, clock=clock, breaker=policy)
    runtime = core.backends["sim"]
    try:
        failed = await core.submit("alice", spec("sim"))
        await core.until("alice", failed.id, "RUNNING")
        runner.fail(failed.id, FailureKind.BACKEND_FAULT)
        await core.until("alice", failed.id, "FAILED")
        assert runtime.breaker.state is BreakerState.OPEN
        breaker = runtime.breaker
        taken: list[Permit] = []
        given_back = asyncio.Event()
        dispatch, release = breaker.try_dispatch, breaker.release

        def took() -> Permit | None:
            permit = dispatch()
            if permit is not None and permit.trial:
                taken.append(permit)
            return permit

        def gave_back(permit: Permit) -> None:
            release(permit)
            if permit in taken:
                given_back.set()

        monkeypatch.setattr(breaker, "try_dispatch", took)
        monkeypatch.setattr(breaker, "release", gave_back)
        clock.advance(10)  # half-open, and nothing queued
        runtime.wake.set()
        # The scheduler's turn takes the trial's permit, finds no job, gives the permit back.
        async with asyncio.timeout(5):
            await given_back.wait()
        assert len(taken) == 1
        trial = await core.submit("alice", spec("sim"))
        await core.until("alice", trial.id, "RUNNING", timeout=2.0)
        runner.succeed(trial.id)
        await core.until("alice", trial.id, "SUCCEEDED")
        assert runtime.breaker.state.value == "CLOSED"
    finally:
        await _close(core)


@pytest.mark.parametrize("kind", QUEUES)
async def test_a_running_job_whose_claim_lapsed_past_its_queue_time_is_not_failed(
    store: SqliteStore, kind: QueueKind
) -> None:
    # The wall clock stepped past the lease (NTP, a VM resumed) while the job ran: the lapsed
    # claim came back to the scheduler carrying the job as queued, which was then failed with
    # QUEUE_TIMEOUT while its run went on (and its real end was thrown away).
    runner = ScriptedRunner(slots=2)
    clock = Clock()
    core = await build_core(store, kind, {"sim": runner}, clock=clock, max_queue_time_s=20)
    try:
        job = await core.submit("alice", spec("sim"))
        await core.until("alice", job.id, "RUNNING")
        await core.settle()
        clock.advance(31)
        core.backends["sim"].wake.set()
        await core.settle()
        current = await store.get_job(job.id)
        assert current is not None and current.state is JobState.RUNNING
        runner.succeed(job.id)
        await core.until("alice", job.id, "SUCCEEDED")
        assert runner.cancelled == []
    finally:
        await _close(core)


async def test_a_lapsed_claim_of_a_running_job_gives_back_a_half_open_trials_place(
    store: SqliteStore,
) -> None:
    # A lapsed claim of a job this process still runs goes back to its step; the permit the
    # scheduler took for it must be given back, or a half-open trial's place is lost for good
    # (no job is let through again).
    runner = ScriptedRunner(slots=2)
    core = await build_core(store, "memory", {"sim": runner})
    runtime = core.backends["sim"]
    try:
        job = await core.submit("alice", spec("sim"))
        await core.until("alice", job.id, "RUNNING")
        running = runtime.running[job.id]
        now = [0.0]
        breaker = CircuitBreaker(BreakerPolicy(failure_threshold=1, cooldown_s=10), lambda: now[0])
        runtime.breaker = breaker
        opener = breaker.try_dispatch()
        assert opener is not None
        breaker.record_failure(opener)
        now[0] = 10.0
        trial = breaker.try_dispatch()
        assert trial is not None and trial.trial
        scheduler = core.manager._schedulers["sim"]
        kept = scheduler.start_job(dataclasses.replace(running.claim), trial)
        assert kept is running
        assert breaker.try_dispatch() is not None  # the trial's place went to the next job
        runner.succeed(job.id)
        await core.until("alice", job.id, "SUCCEEDED")
    finally:
        await _close(core)


@pytest.mark.parametrize("model", [ExecutionModel.LOCAL, ExecutionModel.REMOTE])
async def test_a_failed_lease_renewal_is_retried_not_a_job_failure(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch, model: ExecutionModel
) -> None:
    # One store error while renewing failed the job INTERNAL_ERROR and left its run going
    # (a worker busy or a provider job billing, followed by nobody).
    runner = ScriptedRunner(slots=1, model=model)
    core = await build_core(store, "store", {"sim": runner}, clock=Clock(), lease_s=0.3)
    real = store.renew_claim
    failed, renewed = asyncio.Event(), asyncio.Event()

    async def flaky(*args: Any, **kwargs: Any) -> Any:
        if not failed.is_set():
            failed.set()
            raise sqlite3.OperationalError("database is locked")
        renewed.set()
        return await real(*args, **kwargs)

    try:
        job = await core.submit("alice", spec("sim"))
        await core.until("alice", job.id, "RUNNING")
        monkeypatch.setattr(store, "renew_claim", flaky)
        async with asyncio.timeout(5):
            await renewed.wait()  # the next renewal, after the failed one
        current = await store.get_job(job.id)
        assert current is not None and current.state is JobState.RUNNING
        runner.succeed(job.id)
        await core.until("alice", job.id, "SUCCEEDED")
        assert runner.cancelled == []
    finally:
        await _close(core)


@pytest.mark.parametrize("model", [ExecutionModel.LOCAL, ExecutionModel.REMOTE])
async def test_a_running_jobs_lease_is_renewed_well_before_it_lapses(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch, model: ExecutionModel
) -> None:
    # A holder that renews less often than its lease lasts loses the claim while the job runs:
    # another holder claims it again and the job runs twice.
    lease_s = 1.0  # renewed every third of it; a loaded machine's stalls stay well inside
    runner = ScriptedRunner(slots=1, model=model)
    core = await build_core(store, "store", {"sim": runner}, clock=Clock(), lease_s=lease_s)
    real = store.renew_claim
    times: list[float] = []
    enough = asyncio.Event()

    async def counted(*args: Any, **kwargs: Any) -> Any:
        times.append(time.monotonic())
        if len(times) >= 3:
            enough.set()
        return await real(*args, **kwargs)

    try:
        job = await core.submit("alice", spec("sim"))
        await core.until("alice", job.id, "RUNNING")
        monkeypatch.setattr(store, "renew_claim", counted)
        start = time.monotonic()
        async with asyncio.timeout(5):
            await enough.wait()
        gaps = [b - a for a, b in zip([start, *times], times, strict=False)]
        assert max(gaps) < lease_s, f"renewals {gaps} apart, the lease lasts {lease_s}s"
        runner.succeed(job.id)
        await core.until("alice", job.id, "SUCCEEDED")
    finally:
        await _close(core)


async def test_a_step_that_fails_after_its_run_started_stops_the_run(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Writing RUNNING failed (a disk error): the job was failed INTERNAL_ERROR but its run
    # went on, its slot counted free, so the backend ran past its capacity.
    runner = ScriptedRunner(slots=1)
    core = await build_core(store, "memory", {"sim": runner})

    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise sqlite3.OperationalError("disk I/O error")

    try:
        monkeypatch.setattr(store, "mark_running", broken)
        job = await core.submit("alice", spec("sim"))
        failed = await core.until("alice", job.id, "FAILED")
        assert failed.error is not None and failed.error.reason == "INTERNAL_ERROR"
        assert runner.cancelled == [job.id]
    finally:
        await _close(core)


async def test_a_finished_jobs_end_is_stored_again_while_the_store_cannot_write(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A full disk refused the SUCCEEDED write (the result is the large part); the smaller
    # INTERNAL_ERROR write that replaced it fitted: a finished run's result was thrown away
    # and the client told "internal error" for a transient condition.
    runner = ScriptedRunner(slots=1)
    core = await build_core(store, "memory", {"sim": runner})
    real = store.finish_job
    refusals = 2

    async def full_disk(job_id: str, state: JobState, **kwargs: Any) -> Any:
        nonlocal refusals
        if state is JobState.SUCCEEDED and refusals:
            refusals -= 1
            raise StoreUnavailable("STORE_UNAVAILABLE", "database or disk is full")
        return await real(job_id, state, **kwargs)

    monkeypatch.setattr(runner_step, "FINISH_RETRY_S", 0.01)
    try:
        job = await core.submit("alice", spec("sim"))
        await runner.started.wait()
        monkeypatch.setattr(store, "finish_job", full_disk)
        runner.succeed(job.id)
        done = await core.until("alice", job.id, "SUCCEEDED")
        assert refusals == 0 and done.error is None
        assert await store.get_result(job.id) is not None
    finally:
        await _close(core)


async def test_expired_results_then_old_jobs_are_swept_from_the_store(
    store: SqliteStore,
) -> None:
    # Expired results were deleted only when someone asked for them again, and jobs never:
    # the database only grew.
    runner = ScriptedRunner(slots=1)
    core = await build_core(store, "memory", {"sim": runner})
    try:
        job = done = await _succeeded_job(core, runner, "sim")
        assert done.expire_at is not None and await store.get_result(job.id) is not None
        sweep = core.manager.retention_sweep
        assert await sweep.sweep() == Swept()  # not expired yet
        core.clock.now = done.expire_at + timedelta(seconds=1)
        assert await sweep.sweep() == Swept(results=1)
        assert await store.get_result(job.id) is None
        assert (await store.get_job(job.id)) == done  # the job itself is kept
        assert done.ended_at is not None
        core.clock.now = done.ended_at + timedelta(days=90)
        assert await sweep.sweep() == Swept(jobs=1)
        with pytest.raises(NotFound):
            await core.manager.get("alice", job.id)
    finally:
        await _close(core)


async def test_a_result_expires_by_the_cores_clock_not_the_wall_clock(
    store: SqliteStore,
) -> None:
    # Expiry was stamped from the injected clock but checked against the wall clock, so a
    # result read before the sweep came was served past its expire_at (and, with a clock
    # ahead of the wall, refused before it).
    runner = ScriptedRunner(slots=1)
    core = await build_core(store, "memory", {"sim": runner})
    try:
        done = await _succeeded_job(core, runner, "sim")
        assert done.expire_at is not None
        assert await core.manager.result(done)  # kept, and served from the recent results
        core.clock.now = done.expire_at
        with pytest.raises(NotFound) as expired:
            await core.manager.result(done)
        assert expired.value.reason == "RESULT_EXPIRED"
        assert await store.get_result(done.id) is None  # deleted when asked for
    finally:
        await _close(core)


async def test_the_first_sweep_comes_soon_after_a_start(store: SqliteStore) -> None:
    # The first sweep came RETENTION_SWEEP_S (10 minutes) after a start: a gateway restarted
    # more often than that (rolling deploys, autoscaled replicas) never swept.
    runner = ScriptedRunner(slots=1)
    core = await build_core(store, "memory", {"sim": runner})
    try:
        job = await core.submit("alice", spec("sim"))
        await runner.started.wait()
        runner.succeed(job.id)
        done = await core.until("alice", job.id, "SUCCEEDED")
        assert done.ended_at is not None
        core.clock.now = done.ended_at + timedelta(days=91)
        waits: list[float] = []

        async def sleep(seconds: float) -> None:
            waits.append(seconds)
            if len(waits) == 2:  # after one sweep: stop the loop
                raise asyncio.CancelledError

        with pytest.raises(asyncio.CancelledError):
            await core.manager.retention_sweep.run(sleep)
        assert waits == [FIRST_SWEEP_S, RETENTION_SWEEP_S]
        assert FIRST_SWEEP_S < RETENTION_SWEEP_S
        assert await store.get_job(job.id) is None  # swept between the two waits
    finally:
        await _close(core)


async def test_a_job_whose_end_could_not_be_written_is_handed_out_again(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Both the end and the INTERNAL_ERROR that replaced it failed to commit, then the claim
    # was ended anyway: on the shared store the job stayed RUNNING, claimable by nobody.
    runner = ScriptedRunner(slots=1)
    clock = Clock()
    core = await build_core(store, "store", {"sim": runner}, clock=clock)
    flaky = FailFirst(store.finish_job, 2)
    try:
        job = await core.submit("alice", spec("sim"))
        await core.until("alice", job.id, "RUNNING")
        monkeypatch.setattr(store, "finish_job", flaky)
        runner.succeed(job.id)
        async with asyncio.timeout(5):
            while job.id in core.backends["sim"].running:
                await core.settle()
        assert flaky.left == 0
        row = await store.get_job(job.id)
        assert row is not None and row.state is JobState.RUNNING
        clock.advance(3600)  # its lease lapses: the job is handed out again and runs
        core.backends["sim"].wake.set()
        async with asyncio.timeout(5):
            while len(runner.submitted) < 2:
                await core.settle()
        runner.succeed(job.id)
        await core.until("alice", job.id, "SUCCEEDED")
    finally:
        await _close(core)


class _Outage(ScriptedRunner):
    """A provider out of reach (429s, 5xx) for following jobs; cancels still get through after
    `cancel_failures` refusals."""

    def __init__(self, cancel_failures: int) -> None:
        super().__init__(slots=1, model=ExecutionModel.REMOTE)
        self.cancel_failures = cancel_failures

    async def wait(self, handle: RunHandle) -> Any:
        raise ExecutionError("PROVIDER_ERROR", "503", kind=FailureKind.TRANSIENT)

    async def reattach(self, job: Job, remote_id: str | None) -> RunHandle | None:
        raise ExecutionError("PROVIDER_ERROR", "503", kind=FailureKind.TRANSIENT)

    async def cancel(self, handle: RunHandle) -> None:
        if self.cancel_failures:
            self.cancel_failures -= 1
            raise ExecutionError("PROVIDER_ERROR", "503", kind=FailureKind.TRANSIENT)
        await super().cancel(handle)


async def test_a_throttled_create_queues_the_job_again(store: SqliteStore) -> None:
    # Throttled at every create attempt (nothing made), an accepted job failed PROVIDER_ERROR.
    runner = ThrottledOnce()
    core = await build_core(store, "memory", {"cloud": runner})
    try:
        job = await core.submit("alice", spec("cloud"))
        await runner.started.wait()  # submitted again after it went back to the queue
        runner.succeed(job.id)
        done = await core.until("alice", job.id, "SUCCEEDED")
        assert runner.throttled == 1 and runner.submitted == [job.id]
        assert "QUEUED" in core.recorder.states(job.id)[2:]  # QUEUED, SUBMITTING, QUEUED again
        assert done.error is None
    finally:
        await _close(core)


@pytest.mark.parametrize("kind", QUEUES)
async def test_a_job_cancelled_as_its_throttled_create_goes_back_to_the_queue_ends(
    store: SqliteStore, kind: QueueKind
) -> None:
    # Found by a fuzzer: the step gave the job back (QUEUED, its claim released) but was still
    # in `running` when a CancelJob came; the cancel marked it CANCELLING for a step that was
    # returning. In the store's queue nothing hands out an unclaimed CANCELLING job: it stayed
    # CANCELLING, its quota reserved, for ever.
    runner = ThrottledOnce()
    core = await build_core(store, kind, {"cloud": runner})
    try:
        job = await core.submit("alice", spec("cloud"))
        queue = core.backends["cloud"].queue
        release = queue.release
        answer: asyncio.Future[JobState] = asyncio.get_running_loop().create_future()

        async def release_then_cancel(claim: Claim, requeued: Job | None = None) -> None:
            await release(claim, requeued)
            if not answer.done():
                answer.set_result((await core.manager.cancel("alice", job.id)).state)

        queue.release = release_then_cancel  # type: ignore[method-assign]
        ended = await core.until("alice", job.id, "CANCELLED")
        async with asyncio.timeout(5):
            assert await answer is JobState.CANCELLED
        assert ended.state is JobState.CANCELLED
    finally:
        await _close(core)


class _HeldSubmit(ScriptedRunner):
    """A provider whose create answers only when `answer` is set; with `done_first`, its job
    has already finished by then."""

    def __init__(self, done_first: bool) -> None:
        super().__init__(slots=1, model=ExecutionModel.REMOTE)
        self.done_first = done_first
        self.asked = asyncio.Event()
        self.answer = asyncio.Event()

    async def submit(self, prepared: Any, job: Job) -> RunHandle:
        self.asked.set()
        await self.answer.wait()
        handle = await super().submit(prepared, job)
        if self.done_first:
            self.succeed(job.id)
        return handle


@pytest.mark.parametrize("done_first", [True, False])
async def test_a_job_cancelled_while_submitting_is_stopped_and_accounted_for(
    store: SqliteStore, done_first: bool
) -> None:
    # Cancelled while the provider's create was in flight, the job ended CANCELLED with no
    # provider id, no usage and its result (if the provider ran it first) thrown away, while
    # the provider billed the run.
    runner = _HeldSubmit(done_first)
    core = await build_core(store, "memory", {"cloud": runner})
    try:
        job = await core.submit("alice", spec("cloud"))
        await runner.asked.wait()
        cancelling = await core.manager.cancel("alice", job.id)
        assert cancelling.state is JobState.CANCELLING
        runner.answer.set()
        final = await core.until("alice", job.id, "SUCCEEDED" if done_first else "CANCELLED")
        assert final.remote_id == f"r-{job.id}"  # kept: the provider's job can be found
        if done_first:
            assert await store.get_result(job.id) is not None  # its result, not thrown away
            assert runner.cancelled == [job.id]  # told to stop, too late
        else:
            assert runner.cancelled == [job.id]
    finally:
        await _close(core)


@pytest.mark.parametrize("cancel_failures", [0, 1])
async def test_a_provider_job_the_gateway_lost_touch_with_is_cancelled(
    store: SqliteStore, cancel_failures: int
) -> None:
    # Out of reach until the run deadline, the job was failed while it went on at the
    # provider, billing, with nobody cancelling it.
    runner = _Outage(cancel_failures)
    core = await build_core(store, "memory", {"cloud": runner}, max_run_time_s=0.001)
    try:
        job = await core.submit("alice", spec("cloud"))
        failed = await core.until("alice", job.id, "FAILED")
        assert failed.error is not None and failed.error.reason == "PROVIDER_ERROR"
        assert runner.cancelled == [job.id]
    finally:
        await _close(core)


async def test_a_trial_that_runs_past_the_backends_limit_opens_the_breaker_again(
    store: SqliteStore,
) -> None:
    # The step released the trial's permit before counting the timeout against it, so the
    # hung backend's trial failed without reopening the breaker and the next job was let in
    # as a new trial (each hanging for the backend's whole limit).
    runner = ScriptedRunner(slots=2)
    clock = Clock()
    policy = BreakerPolicy(failure_threshold=1, window_s=60, cooldown_s=10)
    core = await build_core(
        store, "memory", {"sim": runner}, clock=clock, breaker=policy, max_run_time_s=0.2
    )
    breaker = core.backends["sim"].breaker
    try:
        first = await core.submit("alice", spec("sim"))
        await core.until("alice", first.id, "RUNNING")
        runner.fail(first.id, FailureKind.BACKEND_FAULT)
        await core.until("alice", first.id, "FAILED")
        assert breaker.state is BreakerState.OPEN
        clock.advance(10)
        trial = await core.submit("alice", spec("sim"))
        core.backends["sim"].wake.set()
        failed = await core.until("alice", trial.id, "FAILED")  # never answers: its limit
        assert failed.error is not None and failed.error.reason == "JOB_TIMEOUT"
        assert breaker.state is BreakerState.OPEN
        assert breaker.try_dispatch() is None
    finally:
        await _close(core)


# ---------------------------------------------------------------- cancellation and hooks


async def test_a_watch_ends_with_the_final_state_though_the_clock_stepped_back(
    store: SqliteStore,
) -> None:
    # A final event whose updated_at was earlier than the state the watch held was dropped
    # as stale: with the wall clock stepped back (NTP), the watch never ended.
    runner = ScriptedRunner(slots=1)
    core = await build_core(store, "memory", {"sim": runner})
    try:
        job = await core.submit("alice", spec("sim"))
        await core.until("alice", job.id, "RUNNING")
        seen: list[str] = []
        first = asyncio.Event()

        async def follow() -> None:
            async for event in core.manager.watch("alice", job.id, heartbeat_s=60):
                seen.append(event.job.state.value)
                first.set()

        watcher = asyncio.create_task(follow())
        await asyncio.wait_for(first.wait(), 5)
        assert seen == ["RUNNING"]
        core.clock.advance(-2.0)
        runner.succeed(job.id)
        await asyncio.wait_for(watcher, 5)
        assert seen == ["RUNNING", "SUCCEEDED"]
    finally:
        await _close(core)


async def test_cancel_of_a_running_job_reaches_the_runner_and_hooks_see_every_transition(
    store: SqliteStore,
) -> None:
    runner = ScriptedRunner(slots=1)
    core = await build_core(store, "memory", {"sim": runner})
    try:
        job = await core.submit("alice", spec("sim"))
        await core.until("alice", job.id, "RUNNING")
        marked = await core.manager.cancel("alice", job.id)
        assert marked.state is JobState.CANCELLING
        await core.until("alice", job.id, "CANCELLED")
        await core.heard(job.id, "CANCELLED")  # `until` may have read the store's row first
        assert runner.cancelled == [job.id]
        assert core.recorder.states(job.id) == ["QUEUED", "RUNNING", "CANCELLING", "CANCELLED"]
    finally:
        await _close(core)


# ---------------------------------------------------------------- the delayed RUNNING write


async def test_a_run_ending_within_the_delay_commits_running_with_its_end(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    runner = ScriptedRunner(slots=1)
    core = await build_core(store, "memory", {"sim": runner})
    try:
        marked: list[str] = []
        mark_running = store.mark_running

        async def counted(job_id: str, *args: Any, **kwargs: Any) -> Job | None:
            marked.append(job_id)
            return await mark_running(job_id, *args, **kwargs)

        monkeypatch.setattr(store, "mark_running", counted)
        job = await core.submit("alice", spec("sim"))
        await runner.started.wait()
        started_at = core.clock()
        core.clock.advance(2.0)
        runner.succeed(job.id)
        done = await core.until("alice", job.id, "SUCCEEDED")
        await core.heard(job.id, "SUCCEEDED")  # `until` may have read the store's row first
        assert marked == []  # RUNNING committed with the end, in finish_job's transaction
        assert done.started_at == started_at and done.ended_at == core.clock()
        assert done.attempts == 1
        assert [t.state.value for t in done.state_history] == ["QUEUED", "RUNNING", "SUCCEEDED"]
        assert done.state_history[1].at == started_at
        assert done.timings is not None
        assert done.timings.queued_s == (started_at - job.created_at).total_seconds()
        # Watchers and hooks still hear every state, in order.
        assert core.recorder.states(job.id) == ["QUEUED", "RUNNING", "SUCCEEDED"]
        running = [t.job for t in core.recorder.transitions if t.job.state is JobState.RUNNING]
        assert running[0].started_at == started_at and running[0].ended_at is None
        assert running[0].updated_at == started_at
    finally:
        await _close(core)


async def test_a_longer_run_commits_running_once_the_delay_is_over(store: SqliteStore) -> None:
    runner = ScriptedRunner(slots=1)
    core = await build_core(store, "memory", {"sim": runner})
    try:
        job = await core.submit("alice", spec("sim"))
        await runner.started.wait()
        started_at = core.clock()
        stored = await store.get_job(job.id)
        assert stored is not None and stored.state is JobState.QUEUED  # within the delay
        running = await core.until("alice", job.id, "RUNNING")
        assert running.started_at == started_at and running.attempts == 1
        runner.succeed(job.id)
        done = await core.until("alice", job.id, "SUCCEEDED")
        assert [t.state.value for t in done.state_history] == ["QUEUED", "RUNNING", "SUCCEEDED"]
        assert done.attempts == 1
    finally:
        await _close(core)


async def test_a_cancel_within_the_delay_stops_the_run_and_records_its_start(
    store: SqliteStore,
) -> None:
    runner = ScriptedRunner(slots=1)
    core = await build_core(store, "memory", {"sim": runner})
    try:
        job = await core.submit("alice", spec("sim"))
        await runner.started.wait()
        started_at = core.clock()
        core.clock.advance(1.0)
        marked = await core.manager.cancel("alice", job.id)
        assert marked.state is JobState.CANCELLING
        done = await core.until("alice", job.id, "CANCELLED")
        assert runner.cancelled == [job.id]
        assert done.started_at == started_at and done.attempts == 1
        # In time order: it started before the cancel came.
        states = [t.state.value for t in done.state_history]
        assert states == ["QUEUED", "RUNNING", "CANCELLING", "CANCELLED"]
        assert done.state_history[1].at == started_at
    finally:
        await _close(core)


async def test_a_cancel_accepted_by_another_process_stops_the_holders_run(
    store: SqliteStore,
) -> None:
    # Two processes share the store's queue: A runs the job, B (no free slot) takes the
    # CancelJob. B must not finish a job whose worker runs in A: it marks it CANCELLING and A
    # stops it when it renews its claim (every lease_s / 3).
    runner_a, runner_b = ScriptedRunner(slots=1), ScriptedRunner(slots=0)
    clock = Clock()
    a = await build_core(store, "store", {"sim": runner_a}, clock=clock, lease_s=0.3)
    b = await build_core(
        store, "store", {"sim": runner_b}, clock=clock, owner="holder-2", lease_s=0.3
    )
    try:
        job = await a.submit("alice", spec("sim"))
        await a.until("alice", job.id, "RUNNING")
        marked = await b.manager.cancel("alice", job.id)
        assert marked.state is JobState.CANCELLING
        done = await a.until("alice", job.id, "CANCELLED")
        assert runner_a.cancelled == [job.id] and runner_b.submitted == []
        states = [t.state.value for t in done.state_history]
        assert states == ["QUEUED", "RUNNING", "CANCELLING", "CANCELLED"]
    finally:
        await _close(b)
        await _close(a)


@pytest.mark.parametrize("model", [ExecutionModel.LOCAL, ExecutionModel.REMOTE])
async def test_a_holder_whose_claim_went_to_another_lets_the_job_go(
    store: SqliteStore, model: ExecutionModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A stopped renewing in time (a stalled loop, the store out of reach) and its lease
    # lapsed: the job is B's now. A kept its local run going beside B's (two workers on one
    # job, and the first end won); it must stop it and write nothing. A provider job is not
    # cancelled: B re-attaches to it, and nothing is submitted twice.
    remote: dict[str, str] = {}
    runner_a = ScriptedRunner(slots=1, model=model, remote=remote)
    runner_b = ScriptedRunner(slots=1, model=model, remote=remote)
    clock = Clock()
    a = await build_core(store, "store", {"sim": runner_a}, clock=clock, lease_s=0.3)
    job = await a.submit("alice", spec("sim"))
    await a.until("alice", job.id, "RUNNING")
    permit = a.backends["sim"].running[job.id].permit
    released = _released_permits(monkeypatch, a.backends["sim"].breaker)
    b = await build_core(
        store, "store", {"sim": runner_b}, clock=clock, owner="holder-2", lease_s=0.3
    )
    try:
        clock.advance(1.0)  # A's lease (0.3 s) lapses before its next renewal, and B claims
        b.backends["sim"].wake.set()
        await asyncio.wait_for(runner_b.started.wait(), 5)
        async with asyncio.timeout(5):
            while a.backends["sim"].running:  # A's next renewal finds the claim lost
                await asyncio.sleep(0.01)
        runner_b.succeed(job.id)
        done = await b.until("alice", job.id, "SUCCEEDED")
        if model is ExecutionModel.LOCAL:
            assert runner_a.cancelled == [job.id]  # A's worker is free again
            assert runner_b.submitted == [job.id]  # B runs it afresh
        else:
            assert runner_a.cancelled == []  # the provider job goes on, for B
            assert runner_a.submitted == [job.id]
            assert runner_b.submitted == [] and runner_b.reattached == [job.id]
        ran = (
            ["QUEUED", "RUNNING"]
            if model is ExecutionModel.LOCAL
            else ["QUEUED", "SUBMITTING", "RUNNING"]
        )
        assert [t.state.value for t in done.state_history] == [*ran, "SUCCEEDED"]
        assert a.recorder.states(job.id) == ran  # A wrote nothing more
        assert a.backends["sim"].breaker.state is BreakerState.CLOSED
        assert permit in released  # a half-open trial's place is not kept by a step gone
        assert await a.backends["sim"].queue.claims_by_tenant() == {}
    finally:
        await _close(b)
        await _close(a)


async def _two_holders(
    store: SqliteStore, runner_a: ScriptedRunner, runner_b: ScriptedRunner
) -> tuple[Clock, Core, Core]:
    """Two replicas on one store's queue with short leases: A schedules, B (holder-2) only
    once the test starts it (b.manager.start_scheduling) or claims by hand."""
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


async def test_a_holder_whose_lease_lapsed_before_its_running_write_leaves_the_job_to_the_next(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Found by a fuzzer of replicas: A's local run waited to write RUNNING (within
    # RUNNING_WRITE_DELAY_S); its lease lapsed meanwhile and B claimed the job, still QUEUED,
    # and ran it too. A's late write committed RUNNING over B's claim, B's own write then failed
    # (the job was no longer QUEUED), B stopped and ended its claim, A let go at its renewal:
    # the job stayed RUNNING, claimed by nobody, its quota reserved, for ever.
    runner_a, runner_b = ScriptedRunner(slots=1), ScriptedRunner(slots=1)
    clock, a, b = await _two_holders(store, runner_a, runner_b)
    try:
        job = await a.submit("alice", spec("sim"))
        await asyncio.wait_for(runner_a.started.wait(), 5)  # A runs it; RUNNING not written
        permit = a.backends["sim"].running[job.id].permit
        released = _released_permits(monkeypatch, a.backends["sim"].breaker)
        clock.advance(0.35)  # A's lease lapses
        b.manager.start_scheduling()
        await asyncio.wait_for(runner_b.started.wait(), 5)  # B claimed it and runs it
        # B's RUNNING is written (A's, refused, would have left B's refused instead).
        running = await b.until("alice", job.id, "RUNNING")
        assert running.attempts == 1
        runner_b.succeed(job.id)
        done = await b.until("alice", job.id, "SUCCEEDED")
        assert runner_a.cancelled == [job.id]  # A's run stopped when its write was refused
        assert [t.state.value for t in done.state_history] == ["QUEUED", "RUNNING", "SUCCEEDED"]
        assert a.recorder.states(job.id) == ["QUEUED"]  # A wrote nothing
        async with asyncio.timeout(5):
            while a.backends["sim"].running:  # A's step ends
                await asyncio.sleep(0.01)
        assert permit in released
    finally:
        await _close(b)
        await _close(a)


async def test_a_holder_whose_lease_lapsed_leaves_a_job_given_back_to_the_queue(
    store: SqliteStore,
) -> None:
    # As above, but B claimed the job and gave it back (its scheduler draining): unleased and
    # QUEUED, the job was anyone's, and A's late write made it RUNNING, claimed by nobody.
    runner_a, runner_b = ScriptedRunner(slots=1), ScriptedRunner(slots=1)
    clock, a, b = await _two_holders(store, runner_a, runner_b)
    try:
        job = await a.submit("alice", spec("sim"))
        await asyncio.wait_for(runner_a.started.wait(), 5)  # RUNNING not written yet
        clock.advance(0.35)  # A's lease lapses
        queue_b = b.backends["sim"].queue
        claim = await queue_b.claim()
        assert claim is not None and claim.job.id == job.id
        await queue_b.release(claim)
        async with asyncio.timeout(5):
            # A's write is refused: it stops its run, and claims the job afresh from the queue.
            while len(runner_a.submitted) < 2:
                await asyncio.sleep(0.01)
        assert runner_a.cancelled == [job.id]
        runner_a.succeed(job.id)
        done = await a.until("alice", job.id, "SUCCEEDED")
        assert [t.state.value for t in done.state_history] == ["QUEUED", "RUNNING", "SUCCEEDED"]
    finally:
        await _close(b)
        await _close(a)


async def test_a_holder_whose_lease_lapsed_during_its_run_does_not_end_the_next_holders_job(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A's run ended after its lease had lapsed and B had claimed the job and run it again, and
    # before any renewal of A's told it so (a stalled process, a renewal that passed just before
    # the lapse). A's final write, naming no holder, ended the job B runs: SUCCEEDED with A's
    # result, B's own end refused. Only the lease's holder may end a claimed job.
    runner_a, runner_b = ScriptedRunner(slots=1), ScriptedRunner(slots=1)
    clock, a, b = await _two_holders(store, runner_a, runner_b)
    try:
        job = await a.submit("alice", spec("sim"))
        await a.until("alice", job.id, "RUNNING")  # A runs it, RUNNING written

        async def stale_renewal(claim: Claim) -> Claim:
            return claim  # A believes it still holds the claim

        monkeypatch.setattr(a.backends["sim"].queue, "renew", stale_renewal)
        clock.advance(0.35)  # A's lease lapses
        b.manager.start_scheduling()
        await asyncio.wait_for(runner_b.started.wait(), 5)  # B claimed it and runs it again
        async with asyncio.timeout(5):
            while (await _attempts(store, job.id)) < 2:  # B's RUNNING is written
                await asyncio.sleep(0.01)
        runner_a.succeed(job.id)
        async with asyncio.timeout(5):
            while a.backends["sim"].running:  # A's step ends, its write refused
                await asyncio.sleep(0.01)
        current = await store.get_job(job.id)
        assert current is not None and current.state is JobState.RUNNING  # still B's
        assert await store.get_result(job.id) is None
        runner_b.succeed(job.id)
        done = await b.until("alice", job.id, "SUCCEEDED")
        assert done.attempts == 2  # B's end, of B's run
        assert [t.state.value for t in done.state_history] == ["QUEUED", "RUNNING", "SUCCEEDED"]
    finally:
        await _close(b)
        await _close(a)


async def test_a_cancel_racing_another_leaves_the_job_to_its_holder_in_another_process(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # B read the job RUNNING (held by A), another CancelJob marked it CANCELLING before B's
    # own mark: B's mark found nothing to change and B went on to end the job CANCELLED, which
    # A still ran (its provider job, if any, then went on with nobody following it).
    runner_a, runner_b = ScriptedRunner(slots=1), ScriptedRunner(slots=1)
    clock, a, b = await _two_holders(store, runner_a, runner_b)
    try:
        job = await a.submit("alice", spec("sim"))
        running = await a.until("alice", job.id, "RUNNING")
        real_get = b.manager.get
        reads = 0

        async def read_before_the_other_cancel(tenant: str, job_id: str) -> Job:
            nonlocal reads
            reads += 1
            if reads == 1:
                assert await store.mark_cancelling(job_id, clock()) is not None  # the other
                return running
            return await real_get(tenant, job_id)

        monkeypatch.setattr(b.manager, "get", read_before_the_other_cancel)
        answered = await b.manager.cancel("alice", job.id)
        assert answered.state is JobState.CANCELLING
        current = await store.get_job(job.id)
        assert current is not None and current.state is JobState.CANCELLING  # A's to end
        done = await a.until("alice", job.id, "CANCELLED")  # A stops its run and ends it
        assert runner_a.cancelled == [job.id]
        assert done.state is JobState.CANCELLED
    finally:
        await _close(b)
        await _close(a)


async def _attempts(store: SqliteStore, job_id: str) -> int:
    job = await store.get_job(job_id)
    assert job is not None
    return job.attempts


class _SlowAnswer(ScriptedRunner):
    """A provider that creates the job at once and answers the create when `answer` is set."""

    def __init__(self, remote: dict[str, str]) -> None:
        super().__init__(slots=1, model=ExecutionModel.REMOTE, remote=remote)
        self.created = asyncio.Event()
        self.answer = asyncio.Event()

    async def submit(self, prepared: Any, job: Job) -> RunHandle:
        handle = await super().submit(prepared, job)
        self.created.set()
        await self.answer.wait()
        return handle


async def test_a_holder_whose_lease_lapsed_during_its_create_leaves_the_provider_job_running(
    store: SqliteStore,
) -> None:
    # A's create reached the provider and its answer came after A's lease lapsed and B had
    # claimed the job: A's RUNNING write was refused (the job is B's), A took that for a cancel
    # and cancelled at the provider the job B was re-attaching to.
    remote: dict[str, str] = {}
    runner_a = _SlowAnswer(remote)
    runner_b = ScriptedRunner(slots=1, model=ExecutionModel.REMOTE, remote=remote)
    clock, a, b = await _two_holders(store, runner_a, runner_b)
    try:
        job = await a.submit("alice", spec("sim"))
        await asyncio.wait_for(runner_a.created.wait(), 5)
        clock.advance(1.0)  # A's lease lapses
        b.manager.start_scheduling()
        await asyncio.wait_for(runner_b.started.wait(), 5)  # B re-attached to the provider job
        runner_a.answer.set()
        async with asyncio.timeout(5):
            while a.backends["sim"].running:  # A's write is refused; it lets the job go
                await asyncio.sleep(0.01)
        assert runner_a.cancelled == []  # the provider job goes on, for B
        assert runner_b.reattached == [job.id]
        runner_b.succeed(job.id)
        assert (await b.until("alice", job.id, "SUCCEEDED")).state is JobState.SUCCEEDED
    finally:
        await _close(b)
        await _close(a)


async def test_a_claim_lapsed_in_memory_stays_with_its_only_holder(store: SqliteStore) -> None:
    # The in-memory queue has one holder: a renewal that finds the lease lapsed (a wall-clock
    # step) is not a loss, and the run goes on to its end.
    runner = ScriptedRunner(slots=1)
    core = await build_core(store, "memory", {"sim": runner}, lease_s=0.3)
    try:
        job = await core.submit("alice", spec("sim"))
        await core.until("alice", job.id, "RUNNING")
        core.clock.advance(1.0)
        renewed = 0
        real_renew = core.backends["sim"].queue.renew

        async def counted(claim: Claim) -> Claim | None:
            nonlocal renewed
            renewed += 1
            return await real_renew(claim)

        core.backends["sim"].queue.renew = counted  # type: ignore[method-assign]
        async with asyncio.timeout(5):
            while renewed < 2:
                await asyncio.sleep(0.01)
        assert runner.cancelled == []
        runner.succeed(job.id)
        await core.until("alice", job.id, "SUCCEEDED")
    finally:
        await _close(core)


# ---------------------------------------------------------------- recovery


async def test_a_recovered_job_waits_for_a_busy_compile_pool_instead_of_failing(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A recovered job is prepared again; COMPILERS_BUSY there (a restart with a backlog)
    # failed the accepted job for good, with a message telling the client nothing was accepted.
    job, clock = await _queued_before_a_restart(store)
    refusals = 2

    async def busy_then_free(self: Any, *args: Any) -> object:
        nonlocal refusals
        if refusals:
            refusals -= 1
            raise ResourceExhausted(
                "COMPILERS_BUSY", "no compile worker became free", retry_after=1.0
            )
        return args[2].compile_circuit(args[3])

    monkeypatch.setattr(DirectCompiler, "compile", busy_then_free)
    monkeypatch.setattr(runner_step, "_PREPARE_RETRY_S", 0.01, raising=False)
    runner = ScriptedRunner(slots=1)
    second = await build_core(store, "memory", {"sim": runner}, clock=clock)
    try:
        await second.until("alice", job.id, "RUNNING")
        assert refusals == 0 and runner.submitted == [job.id]
        runner.succeed(job.id)
        await second.until("alice", job.id, "SUCCEEDED")
    finally:
        await _close(second)


async def test_a_claim_lapsing_under_a_live_step_does_not_run_the_job_twice(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A recovered job's step was still compiling when its claim lapsed (a clock step, or
    # compiles slower than the lease): the scheduler handed the job to a second step, both
    # ran it, and the loser's end unregistered the winner, so CancelJob missed the live run.
    job, clock = await _queued_before_a_restart(store)
    gate = asyncio.Event()
    compiling = asyncio.Event()
    compiles = 0

    async def gated(self: Any, *args: Any) -> object:
        nonlocal compiles
        compiles += 1
        compiling.set()
        await gate.wait()
        return args[2].compile_circuit(args[3])

    monkeypatch.setattr(DirectCompiler, "compile", gated)
    runner = ScriptedRunner(slots=2)
    second = await build_core(store, "memory", {"sim": runner}, clock=clock)
    try:
        queue = second.backends["sim"].queue
        real_claim = queue.claim
        reclaimed = asyncio.Event()

        async def claim() -> Any:
            found = await real_claim()
            if found is not None and found.job.id == job.id and compiling.is_set():
                reclaimed.set()
            return found

        queue.claim = claim  # type: ignore[method-assign]
        await asyncio.wait_for(compiling.wait(), 5)
        second.clock.advance(31)  # the lease (30 s) lapses while the step compiles
        second.backends["sim"].wake.set()
        await asyncio.wait_for(reclaimed.wait(), 5)  # handed out again
        await second.settle()
        gate.set()
        await second.until("alice", job.id, "RUNNING")
        await second.settle()
        assert runner.submitted == [job.id]
        assert job.id in second.backends["sim"].running
        await second.manager.cancel("alice", job.id)
        await second.until("alice", job.id, "CANCELLED")
        assert runner.cancelled == [job.id]
        # The claim the step was handed ended with the job: nothing lapses and runs it again.
        await second.settle()
        assert await real_claim() is None and await queue.claims_by_tenant() == {}
        second.clock.advance(31)
        second.backends["sim"].wake.set()
        for _ in range(5):
            await second.settle()
        assert runner.submitted == [job.id]
    finally:
        await _close(second)


async def test_a_job_cancelled_while_prepared_again_never_starts(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A recovered job is compiled again in its runner step; CancelJob meanwhile marked it
    # CANCELLING, yet the step still started it on a worker and killed it after: its history
    # went CANCELLING -> RUNNING -> CANCELLED, one more attempt, a worker respawned.
    job, clock = await _queued_before_a_restart(store)
    gate, compiling = asyncio.Event(), asyncio.Event()

    async def gated(self: Any, *args: Any) -> object:
        compiling.set()
        await gate.wait()
        return args[2].compile_circuit(args[3])

    monkeypatch.setattr(DirectCompiler, "compile", gated)
    runner = ScriptedRunner(slots=1)
    second = await build_core(store, "memory", {"sim": runner}, clock=clock)
    try:
        await asyncio.wait_for(compiling.wait(), 5)
        marked = await second.manager.cancel("alice", job.id)
        assert marked.state is JobState.CANCELLING
        gate.set()
        done = await second.until("alice", job.id, "CANCELLED")
        assert runner.submitted == [] and runner.cancelled == []
        assert [t.state.value for t in done.state_history] == ["QUEUED", "CANCELLING", "CANCELLED"]
        assert done.attempts == 0 and done.started_at is None
    finally:
        gate.set()
        await _close(second)


async def test_a_recovered_job_waiting_for_the_compile_pool_can_be_cancelled(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    job, clock = await _queued_before_a_restart(store)
    refused = asyncio.Event()

    async def always_busy(self: Any, *args: Any) -> object:
        refused.set()
        raise ResourceExhausted("COMPILERS_BUSY", "no compile worker", retry_after=1.0)

    monkeypatch.setattr(DirectCompiler, "compile", always_busy)
    monkeypatch.setattr(runner_step, "_PREPARE_RETRY_S", 30.0)  # waits until cancelled
    runner = ScriptedRunner(slots=1)
    second = await build_core(store, "memory", {"sim": runner}, clock=clock)
    try:
        await asyncio.wait_for(refused.wait(), 5)
        await second.manager.cancel("alice", job.id)
        await second.until("alice", job.id, "CANCELLED")
        assert runner.submitted == []
    finally:
        await _close(second)


async def test_a_recovered_job_whose_compile_fails_for_good_fails_at_once(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A refusal that does not say "retry" (a cached compile failure) comes back the same:
    # retrying it held a runner slot until the job's queue deadline.
    job, clock = await _queued_before_a_restart(store)

    async def broken(self: Any, *args: Any) -> object:
        raise Internal("COMPILER_FAILED", "the compiler failed on this circuit")

    monkeypatch.setattr(DirectCompiler, "compile", broken)
    second = await build_core(store, "memory", {"sim": ScriptedRunner(slots=1)}, clock=clock)
    try:
        failed = await second.until("alice", job.id, "FAILED")
        assert failed.error is not None and failed.error.reason == "COMPILER_FAILED"
    finally:
        await _close(second)


async def test_recovery_requeues_local_jobs_and_reattaches_remote_ones(
    store: SqliteStore,
) -> None:
    local = ScriptedRunner(slots=1)
    remote = ScriptedRunner(slots=2, model=ExecutionModel.REMOTE)
    core = await build_core(store, "memory", {"sim": local, "qpu": remote})
    sim_job = await core.submit("alice", spec("sim"))
    qpu_job = await core.submit("alice", spec("qpu"))
    await core.until("alice", sim_job.id, "RUNNING")
    running = await core.until("alice", qpu_job.id, "RUNNING")
    assert running.remote_id == f"r-{qpu_job.id}"
    assert remote.submitted == [qpu_job.id]
    # The gateway dies (its tasks are cancelled; nothing is finished) and starts again with the
    # same provider.
    await core.manager.close()
    local2 = ScriptedRunner(slots=1)
    remote2 = ScriptedRunner(slots=2, model=ExecutionModel.REMOTE, remote=remote.remote)
    # The same clock: time does not run backwards across the restart.
    core2 = await build_core(store, "memory", {"sim": local2, "qpu": remote2}, clock=core.clock)
    try:
        await core2.until("alice", sim_job.id, "RUNNING")
        assert local2.submitted == [sim_job.id]  # a simulator job runs again
        await asyncio.wait_for(remote2.started.wait(), 5)
        assert remote2.reattached == [qpu_job.id] and remote2.submitted == []  # never twice
        remote2.succeed(qpu_job.id)
        done = await core2.until("alice", qpu_job.id, "SUCCEEDED")
        assert done.attempts == 1
    finally:
        await _close(core2)


async def test_losing_touch_with_the_provider_re_attaches_instead_of_failing(
    store: SqliteStore,
) -> None:
    remote = ScriptedRunner(slots=1, model=ExecutionModel.REMOTE)
    core = await build_core(store, "memory", {"qpu": remote})
    try:
        job = await core.submit("alice", spec("qpu"))
        await core.until("alice", job.id, "RUNNING")
        remote.started.clear()
        remote.fail(job.id, FailureKind.TRANSIENT, "PROVIDER_ERROR")  # the provider is unreachable
        await asyncio.wait_for(remote.started.wait(), 5)  # re-attached after a back-off
        assert remote.reattached == [job.id] and remote.submitted == [job.id]
        remote.succeed(job.id)
        done = await core.until("alice", job.id, "SUCCEEDED")
        assert done.attempts == 1
        assert core.backends["qpu"].breaker.state is BreakerState.CLOSED
    finally:
        await _close(core)


async def _crashed_while_submitting(store: SqliteStore) -> tuple[Job, Clock]:
    """A provider job the gateway crashed on after SUBMITTING was stored, before its id was."""
    remote = ScriptedRunner(slots=0, model=ExecutionModel.REMOTE)  # nothing starts
    core = await build_core(store, "memory", {"qpu": remote})
    job = await core.submit("alice", spec("qpu"))
    await core.manager.close()
    await store.mark_submitting(job.id, core.clock())
    return job, core.clock


async def test_a_crash_between_submit_and_storing_the_id_reattaches_by_job_id(
    store: SqliteStore,
) -> None:
    # The provider has the job (under the gateway job id as its token); the store still says
    # SUBMITTING, with no remote id.
    job, clock = await _crashed_while_submitting(store)
    provider = {"r-by-token": job.id}
    remote2 = ScriptedRunner(slots=1, model=ExecutionModel.REMOTE, remote=provider)
    core2 = await build_core(store, "memory", {"qpu": remote2}, clock=clock)
    try:
        await asyncio.wait_for(remote2.started.wait(), 5)
        assert remote2.reattached == [job.id] and remote2.submitted == []
        # The id found by token is stored at once, with RUNNING: a second crash re-attaches by
        # id. (Reads do not queue behind writes: wait for the write to be published.)
        await core2.until("alice", job.id, "RUNNING")
        stored = await store.get_job(job.id)
        assert stored is not None and stored.remote_id == "r-by-token"
        assert stored.state is JobState.RUNNING
        remote2.succeed(job.id)
        await core2.until("alice", job.id, "SUCCEEDED")
    finally:
        await _close(core2)


@dataclasses.dataclass
class _LookedUpSlowly(ScriptedRunner):
    """A provider whose first look-up of a job waits at a gate; records the state each look-up
    was asked with."""

    gate: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    asked: list[JobState] = dataclasses.field(default_factory=list)
    looking: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)

    async def reattach(self, job: Job, remote_id: str | None) -> RunHandle | None:
        self.asked.append(job.state)
        self.looking.set()
        await self.gate.wait()
        return await super().reattach(job, remote_id)


async def test_a_job_cancelled_while_it_is_looked_up_is_looked_up_again_as_cancelled(
    store: SqliteStore,
) -> None:
    # A CancelJob during a recovered job's look-up (Braket: its tag search, finding part of
    # its tasks) ended it CANCELLED unsent, and the runner, asked as SUBMITTING, kept what it
    # had of the job running and billing.
    job, clock = await _crashed_while_submitting(store)
    remote2 = _LookedUpSlowly(slots=1, model=ExecutionModel.REMOTE)
    core2 = await build_core(store, "memory", {"qpu": remote2}, clock=clock)
    try:
        await asyncio.wait_for(remote2.looking.wait(), 5)
        assert (await core2.manager.cancel("alice", job.id)).state is JobState.CANCELLING
        remote2.gate.set()
        await core2.until("alice", job.id, "CANCELLED")
        assert remote2.asked == [JobState.SUBMITTING, JobState.CANCELLING]
        assert remote2.submitted == []
    finally:
        await _close(core2)


class _Unreachable(ScriptedRunner):
    """A provider out of reach at start: its first `outages` re-attach calls fail TRANSIENT."""

    outages: int = 0

    async def reattach(self, job: Job, remote_id: str | None) -> RunHandle | None:
        if self.outages:
            self.outages -= 1
            raise ExecutionError("PROVIDER_ERROR", "unreachable", kind=FailureKind.TRANSIENT)
        return await super().reattach(job, remote_id)


async def test_recovery_waits_out_a_provider_out_of_reach(
    store: SqliteStore,
) -> None:
    remote = ScriptedRunner(slots=1, model=ExecutionModel.REMOTE)
    core = await build_core(store, "memory", {"qpu": remote})
    job = await core.submit("alice", spec("qpu"))
    await asyncio.wait_for(remote.started.wait(), 5)
    await core.manager.close()
    # At the restart the provider is out of reach twice, then answers: re-attached, not resent.
    remote2 = _Unreachable(slots=1, model=ExecutionModel.REMOTE, remote=remote.remote)
    remote2.outages = 2
    core2 = await build_core(store, "memory", {"qpu": remote2}, clock=core.clock)
    try:
        await asyncio.wait_for(remote2.started.wait(), 5)
        assert remote2.outages == 0  # both outages were met
        assert remote2.reattached == [job.id] and remote2.submitted == []
        remote2.succeed(job.id)
        await core2.until("alice", job.id, "SUCCEEDED")
    finally:
        await _close(core2)


async def test_recovery_gives_up_on_a_provider_out_of_reach_past_the_run_time_limit(
    store: SqliteStore,
) -> None:
    remote = ScriptedRunner(slots=1, model=ExecutionModel.REMOTE)
    core = await build_core(store, "memory", {"qpu": remote})
    job = await core.submit("alice", spec("qpu"))
    await asyncio.wait_for(remote.started.wait(), 5)
    await core.manager.close()
    # Out of reach for good, and the backend's run-time limit (1 ms) is shorter than the first
    # back-off (remote_retry_s, 10 ms): the look-up gives up at once rather than retrying for
    # ever, and the job fails TRANSIENT; it is never submitted again.
    remote2 = _Unreachable(slots=1, model=ExecutionModel.REMOTE, remote=remote.remote)
    remote2.outages = 1_000_000
    core2 = await build_core(
        store, "memory", {"qpu": remote2}, clock=core.clock, max_run_time_s=0.001
    )
    try:
        failed = await core2.until("alice", job.id, "FAILED")
        assert failed.error is not None and failed.error.reason == "PROVIDER_ERROR"
        assert remote2.outages == 1_000_000 - 1 and remote2.submitted == []
    finally:
        await _close(core2)


# ---------------------------------------------------------------- placement and the half-open trial


async def _opened_then_half_open(core: Core, runner: ScriptedRunner, clock: Clock) -> None:
    """Opens the breaker of `sim` (threshold 1) with a backend fault, then lets its cool-down
    (10 s) pass, waking the scheduler for the trial."""
    await _failed_job(core, runner, "sim", "alice", FailureKind.BACKEND_FAULT)
    assert core.backends["sim"].breaker.state is BreakerState.OPEN
    clock.advance(10)
    core.backends["sim"].wake.set()


@pytest.mark.parametrize("ending", ["client_error", "cancelled"])
async def test_a_trial_ended_by_no_fault_of_the_backend_lets_the_next_job_be_the_trial(
    store: SqliteStore, ending: str
) -> None:
    # A half-open trial that fails by its own fault (or is cancelled) says nothing about the
    # backend: its place must go to the next job, or the breaker stays half-open for good.
    runner = ScriptedRunner()
    clock = Clock()
    policy = BreakerPolicy(failure_threshold=1, window_s=60, cooldown_s=10)
    core = await build_core(store, "memory", {"sim": runner}, clock=clock, breaker=policy)
    breaker = core.backends["sim"].breaker
    try:
        await _opened_then_half_open(core, runner, clock)
        trial = await core.submit("alice", spec("sim"))
        await core.until("alice", trial.id, "RUNNING")
        if ending == "client_error":
            runner.fail(trial.id, FailureKind.CLIENT_ERROR)
            await core.until("alice", trial.id, "FAILED")
        else:
            await core.manager.cancel("alice", trial.id)
            await core.until("alice", trial.id, "CANCELLED")
        assert breaker.state is BreakerState.HALF_OPEN
        following = await core.submit("alice", spec("sim"))
        await core.until("alice", following.id, "RUNNING", timeout=2.0)
        runner.succeed(following.id)
        await core.until("alice", following.id, "SUCCEEDED")
        assert breaker.state is BreakerState.CLOSED
    finally:
        await _close(core)


async def test_a_throttled_create_counts_for_the_breaker(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A provider throttling every create attempt for long is out for this gateway: the
    # breaker counts it (FailureKind.THROTTLED), and the job waits in the queue meanwhile.
    runner = ThrottledOnce()
    clock = Clock()
    policy = BreakerPolicy(failure_threshold=1, window_s=60, cooldown_s=10)
    core = await build_core(store, "memory", {"cloud": runner}, clock=clock, breaker=policy)
    runtime = core.backends["cloud"]
    requeued = asyncio.Event()
    release = runtime.queue.release

    async def released(*args: Any, **kwargs: Any) -> Any:
        try:
            return await release(*args, **kwargs)
        finally:
            requeued.set()

    monkeypatch.setattr(runtime.queue, "release", released)
    try:
        job = await core.submit("alice", spec("cloud"))
        async with asyncio.timeout(5):
            await requeued.wait()
        assert runner.throttled == 1 and runner.submitted == []
        assert runtime.breaker.state is BreakerState.OPEN
        clock.advance(10)  # half-open: the queued job is the trial
        runtime.wake.set()
        async with asyncio.timeout(5):
            await runner.started.wait()
        runner.succeed(job.id)
        await core.until("alice", job.id, "SUCCEEDED")
        assert runtime.breaker.state is BreakerState.CLOSED
    finally:
        await _close(core)


async def test_a_usable_backend_is_used_though_a_fallback_is_named(store: SqliteStore) -> None:
    main, spare = ScriptedRunner(slots=2), ScriptedRunner()
    clock = Clock()
    policy = BreakerPolicy(failure_threshold=1, window_s=60, cooldown_s=10)
    core = await build_core(
        store, "memory", {"sim": main, "spare": spare}, clock=clock, breaker=policy
    )
    try:
        placed = await core.submit("alice", spec("sim", fallback_backend="spare"))
        assert placed.placement == "sim"
        # Half-open, no trial out and its probe passing: the job may be the trial.
        await _opened_then_half_open(core, main, clock)
        core.backends["sim"].health.serving = True
        placed = await core.submit("alice", spec("sim", fallback_backend="spare"))
        assert placed.placement == "sim"
    finally:
        await _close(core)


async def test_a_fallback_whose_breaker_is_open_is_not_used(store: SqliteStore) -> None:
    main, spare = ScriptedRunner(), ScriptedRunner()
    policy = BreakerPolicy(failure_threshold=1, window_s=60, cooldown_s=30)
    core = await build_core(store, "memory", {"main": main, "spare": spare}, breaker=policy)
    try:
        await _failed_job(core, main, "main", "alice", FailureKind.BACKEND_FAULT)
        await _failed_job(core, spare, "spare", "alice", FailureKind.BACKEND_FAULT)
        with pytest.raises(Unavailable) as refused:
            await core.submit("alice", spec("main", fallback_backend="spare"))
        assert refused.value.reason == "BACKEND_UNAVAILABLE"
        assert refused.value.metadata["backend"] == "backends/main"
        assert refused.value.retry_after is not None and refused.value.retry_after > 0
        status = await core.backends["spare"].status()
        assert status.breaker_state == "OPEN"
    finally:
        await _close(core)


async def test_a_fallback_outside_the_tenants_policy_is_refused(store: SqliteStore) -> None:
    # Named as the fallback, a backend the tenant may not use is NOT_FOUND like any other,
    # whether or not the job would be placed on it.
    policies = PolicyBook(default=TenantPolicy(allowed_simulators=("main",)))
    main, private = ScriptedRunner(), ScriptedRunner()
    core = await build_core(store, "memory", {"main": main, "private": private}, policies=policies)
    try:
        with pytest.raises(NotFound) as refused:
            await core.submit("alice", spec("main", fallback_backend="private"))
        assert refused.value.reason == "BACKEND_NOT_FOUND"
        assert refused.value.metadata["backend"] == "backends/private"
    finally:
        await _close(core)


async def test_a_trial_whose_step_failed_lets_the_next_job_be_the_trial(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The step itself failed (writing RUNNING: a disk error): the job is failed
    # INTERNAL_ERROR, which says nothing about the backend, and the trial's place is given
    # back.
    runner = ScriptedRunner()
    clock = Clock()
    policy = BreakerPolicy(failure_threshold=1, window_s=60, cooldown_s=10)
    core = await build_core(store, "memory", {"sim": runner}, clock=clock, breaker=policy)
    breaker = core.backends["sim"].breaker
    mark_running = store.mark_running

    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise sqlite3.OperationalError("disk I/O error")

    try:
        await _opened_then_half_open(core, runner, clock)
        monkeypatch.setattr(store, "mark_running", broken)
        trial = await core.submit("alice", spec("sim"))
        failed = await core.until("alice", trial.id, "FAILED")
        assert failed.error is not None and failed.error.reason == "INTERNAL_ERROR"
        monkeypatch.setattr(store, "mark_running", mark_running)
        assert breaker.state is BreakerState.HALF_OPEN
        following = await core.submit("alice", spec("sim"))
        await core.until("alice", following.id, "RUNNING", timeout=2.0)
        runner.succeed(following.id)
        await core.until("alice", following.id, "SUCCEEDED")
        assert breaker.state is BreakerState.CLOSED
    finally:
        await _close(core)


async def test_a_recovered_trial_whose_compile_fails_for_good_gives_its_place_back(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A spec that no longer prepares is the job's own problem: failed, it leaves the
    # half-open trial's place to the next job.
    job, clock = await _queued_before_a_restart(store)
    compile = DirectCompiler.compile

    async def broken(self: Any, *args: Any) -> object:
        raise Internal("COMPILER_FAILED", "the compiler failed on this circuit")

    monkeypatch.setattr(DirectCompiler, "compile", broken)
    runner = ScriptedRunner(slots=1)
    second = await build_core(store, "memory", {"sim": runner}, clock=clock, schedule=False)
    now = [0.0]
    breaker = CircuitBreaker(BreakerPolicy(failure_threshold=1, cooldown_s=10), lambda: now[0])
    opener = breaker.try_dispatch()
    assert opener is not None
    breaker.record_failure(opener)
    now[0] = 10.0  # half-open: the recovered job is the trial
    second.backends["sim"].breaker = breaker
    try:
        second.manager.start_scheduling()
        failed = await second.until("alice", job.id, "FAILED")
        assert failed.error is not None and failed.error.reason == "COMPILER_FAILED"
        monkeypatch.setattr(DirectCompiler, "compile", compile)
        assert breaker.state is BreakerState.HALF_OPEN
        following = await second.submit("alice", spec("sim"))
        await second.until("alice", following.id, "RUNNING", timeout=2.0)
        runner.succeed(following.id)
        await second.until("alice", following.id, "SUCCEEDED")
        assert breaker.state is BreakerState.CLOSED
    finally:
        await _close(second)


@pytest.mark.parametrize("kind", [FailureKind.BACKEND_FAULT, FailureKind.TRANSIENT])
async def test_a_backend_fault_or_a_provider_out_of_reach_counts_for_the_breaker(
    store: SqliteStore, kind: FailureKind
) -> None:
    runner = ScriptedRunner()
    policy = BreakerPolicy(failure_threshold=1, window_s=60, cooldown_s=30)
    core = await build_core(store, "memory", {"sim": runner}, breaker=policy)
    try:
        await _failed_job(core, runner, "sim", "alice", kind)
        assert core.backends["sim"].breaker.state is BreakerState.OPEN
    finally:
        await _close(core)


async def test_a_lapsed_claim_of_a_job_already_ended_gives_back_a_half_open_trials_place(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A claim that lapsed and came back carrying a job another step has since ended: the
    # step finds it final and does nothing, but the trial permit it was started with must
    # go back.
    runner = ScriptedRunner()
    core = await build_core(store, "memory", {"sim": runner})
    runtime = core.backends["sim"]
    try:
        job = await core.submit("alice", spec("sim"))
        await core.until("alice", job.id, "RUNNING")
        claim = runtime.running[job.id].claim
        runner.succeed(job.id)
        await core.until("alice", job.id, "SUCCEEDED")
        now = [0.0]
        breaker = CircuitBreaker(BreakerPolicy(failure_threshold=1, cooldown_s=10), lambda: now[0])
        runtime.breaker = breaker
        opener = breaker.try_dispatch()
        assert opener is not None
        breaker.record_failure(opener)
        now[0] = 10.0
        trial = breaker.try_dispatch()
        assert trial is not None and trial.trial
        given_back = asyncio.Event()
        release = breaker.release

        def gave_back(permit: Permit) -> None:
            release(permit)
            if permit == trial:
                given_back.set()

        monkeypatch.setattr(breaker, "release", gave_back)
        lapsed = dataclasses.replace(
            claim, job=dataclasses.replace(claim.job, state=JobState.RUNNING)
        )
        core.manager._schedulers["sim"].start_job(lapsed, trial)
        async with asyncio.timeout(5):
            await given_back.wait()
        assert breaker.state is BreakerState.HALF_OPEN
        current = await store.get_job(job.id)
        assert current is not None and current.state is JobState.SUCCEEDED
    finally:
        await _close(core)


# ---------------------------------------------------------------- fallbacks that cannot run the job


async def test_a_job_its_fallback_cannot_run_still_queues_behind_a_half_open_trial(
    store: SqliteStore,
) -> None:
    # Placed on the fallback while the half-open backend's trial is out, and refused there, a
    # job was answered BACKEND_UNAVAILABLE for as long as the trial ran (minutes on a
    # provider): naming a fallback made it worse than naming none, which queues it.
    core = await _with_fallback(store, main_slots=2)
    runtime = core.backends["main"]
    _refuse_on(core, "spare", InvalidArgument("TOO_MANY_QUBITS", "this backend has 3"))
    try:
        await _half_open(core)
        trial = await core.submit("bob", spec("main", text="trial"))
        await core.until("bob", trial.id, "RUNNING")
        assert runtime.breaker.trial_running
        plain = await core.submit("bob", spec("main", text="big"))
        assert plain.placement == "main"
        named = await core.submit("bob", spec("main", text="big2", fallback_backend="spare"))
        assert named.placement == "main"
    finally:
        await _close(core)


async def test_a_circuit_refused_for_itself_on_the_fallback_stays_invalid_argument(
    store: SqliteStore,
) -> None:
    # A circuit no backend can compile (a syntax error) is refused for what it is, with its
    # field violation, not as the backend's retryable BACKEND_UNAVAILABLE: the Python client
    # retries that up to 10 times at the breaker's cool-down (up to minutes) and then raises
    # UnavailableError, never the INVALID_ARGUMENT the caller must fix.
    core = await _with_fallback(store)
    main = core.runners["main"]
    syntax = InvalidArgument("INVALID_CIRCUIT", "line 1: syntax error")
    _refuse_on(core, "main", syntax, text="bad")
    _refuse_on(core, "spare", syntax, text="bad")
    try:
        with pytest.raises(InvalidArgument):  # on the backend itself
            await core.submit("alice", spec("main", text="bad", fallback_backend="spare"))
        await _failed_job(core, main, "main", "alice", FailureKind.BACKEND_FAULT)
        assert core.backends["main"].breaker.state is BreakerState.OPEN
        with pytest.raises(InvalidArgument) as refused:
            await core.submit("alice", spec("main", text="bad", fallback_backend="spare"))
        assert refused.value.reason == "INVALID_CIRCUIT"
    finally:
        await _close(core)


async def test_compilers_busy_on_the_fallback_is_not_the_backends_unavailability(
    store: SqliteStore,
) -> None:
    # COMPILERS_BUSY (RESOURCE_EXHAUSTED, retry in 1 s) says nothing about what the fallback
    # can run: it became BACKEND_UNAVAILABLE "its fallback cannot run this job
    # (COMPILERS_BUSY ...)" with the breaker's 30 s cool-down as the delay.
    core = await _with_fallback(store)
    main = core.runners["main"]
    busy = ResourceExhausted("COMPILERS_BUSY", "no compile worker", retry_after=1.0)
    _refuse_on(core, "spare", busy)
    try:
        await _failed_job(core, main, "main", "alice", FailureKind.BACKEND_FAULT)
        with pytest.raises(ResourceExhausted) as refused:
            await core.submit("alice", spec("main", text="y", fallback_backend="spare"))
        assert refused.value.reason == "COMPILERS_BUSY"
        assert refused.value.retry_after == 1.0
    finally:
        await _close(core)


async def test_a_simulator_whose_workers_all_hang_opens_its_breaker(store: SqliteStore) -> None:
    # Counting a job past the backend's limit only while the probe fails (as for SDK_ERROR)
    # was tried: the probe is skipped while every worker is busy ("busy is not sick"), so a
    # simulator whose every job hangs kept serving=True from its last probe and its breaker
    # never opened.
    from gateway.backends.base import PreparedJob
    from gateway.backends.runner import ProbeSkipped
    from gateway.runtime.health import HealthMonitor

    class Busy(ScriptedRunner):
        async def probe(self, prepared: PreparedJob, timeout: float) -> None:
            pending = [h for h in self.handles.values() if not h.done.done()]
            if len(pending) >= self.slots:
                raise ProbeSkipped("every worker is busy")

    main, fallback = Busy(), ScriptedRunner()
    policy = BreakerPolicy(failure_threshold=2, window_s=60, cooldown_s=30)
    core = await build_core(
        store, "memory", {"main": main, "spare": fallback}, breaker=policy, max_run_time_s=0.2
    )
    runtime = core.backends["main"]

    async def prepare_probe(seed: int) -> PreparedJob:
        return PreparedJob(payload=(), memory_bytes=0, layouts=())

    async def on_change(_: str) -> None:
        return None

    monitor = HealthMonitor(
        "main",
        main,
        prepare_probe,
        runtime.health,
        interval_s=0.05,
        timeout_s=0.05,
        on_change=on_change,
    )
    try:
        await monitor.probe()
        assert runtime.health.serving  # it passed before it went bad
        for i in range(4):
            if runtime.breaker.state is BreakerState.OPEN:
                break
            hung = await core.submit("alice", spec("main", text=f"hung {i}"))
            await core.until("alice", hung.id, "RUNNING")
            await monitor.probe()  # a round while its one worker is busy: skipped
            failed = await core.until("alice", hung.id, "FAILED")
            assert failed.error is not None and failed.error.reason == "JOB_TIMEOUT"
        assert runtime.breaker.state is BreakerState.OPEN
    finally:
        await _close(core)


async def test_a_full_fallback_queue_leaves_the_job_behind_its_half_open_trial(
    store: SqliteStore,
) -> None:
    # While the half-open backend's trial is out, a job naming a fallback is placed there and
    # the fallback's admission checks are the only ones asked: its full queue answered
    # QUEUE_FULL naming the fallback, while the backend (empty queue) takes a job that names
    # no fallback. As for a fallback that cannot run the job, naming one must not make the
    # submission worse than naming none.
    core = await _with_fallback(store, main_slots=2, max_queued_jobs=2)
    runtime = core.backends["main"]
    try:
        busy = await core.submit("carol", spec("spare", text="busy"))
        await core.until("carol", busy.id, "RUNNING")
        await core.submit("carol", spec("spare", text="wait1"))
        await core.submit("dave", spec("spare", text="wait2"))
        assert await core.backends["spare"].queue.depth() == 2  # at its limit
        await _half_open(core)
        trial = await core.submit("bob", spec("main", text="trial"))
        await core.until("bob", trial.id, "RUNNING")
        assert runtime.breaker.trial_running
        # A job naming no fallback queues on the backend; one naming the full fallback must too.
        named = await core.submit("bob", spec("main", text="named", fallback_backend="spare"))
        assert named.placement == "main"
    finally:
        await _close(core)


async def test_a_job_over_the_tenants_limits_on_its_open_backend_is_refused_by_policy(
    store: SqliteStore,
) -> None:
    # While the backend is open and its fallback cannot run the job, the job is compiled for
    # the backend to tell "the backend could run it" (retryable BACKEND_UNAVAILABLE) from
    # "neither can" (the backend's own refusal). The tenant's per-job limits were not asked:
    # a job over max_shots_per_job was told to retry at the cool-down (the Python client
    # retries UNAVAILABLE), then refused PERMISSION_DENIED once the breaker closed; with the
    # backend closed it is refused at once, and validate_only refuses it too.
    from gateway.domain.circuits import Bindings, CircuitLanguage, CircuitSource, SamplerPub
    from gateway.domain.errors import PermissionDenied
    from gateway.domain.jobs import JobOptions

    policies = PolicyBook(default=TenantPolicy(max_shots_per_job=10))
    core = await _with_fallback(store, policies=policies)
    main = core.runners["main"]
    _refuse_on(core, "spare", InvalidArgument("TOO_MANY_QUBITS", "this backend has 3"))
    for adapter in (core.backends["main"].adapter, core.backends["spare"].adapter):
        echo = adapter.prepare

        def counting(job_spec: JobSpec, seed: int, circuits: Any, echo: Any = echo) -> Any:
            # The echo adapter reports no shots; a real one reports the PUBs' shots.
            shots = sum(pub.shots for pub in job_spec.pubs)
            return dataclasses.replace(echo(job_spec, seed, circuits), shots=shots)

        adapter.prepare = counting  # type: ignore[method-assign]
    big = JobSpec(
        backend="main",
        pubs=(SamplerPub(CircuitSource(CircuitLanguage.QASM3, "big"), Bindings(), shots=20),),
        options=JobOptions(fallback_backend="spare"),
    )
    try:
        with pytest.raises(PermissionDenied):  # the backend closed
            await core.submit("alice", big)
        await _failed_job(core, main, "main", "alice", FailureKind.BACKEND_FAULT)
        assert core.backends["main"].breaker.state is BreakerState.OPEN
        with pytest.raises(PermissionDenied) as refused:
            await core.submit("alice", big)
        assert refused.value.reason == "SHOT_LIMIT_EXCEEDED"
    finally:
        await _close(core)


@pytest.mark.parametrize("trial_fails", [False, True])
async def test_a_twin_that_meets_a_refusing_fallback_gets_the_first_twins_job(
    store: SqliteStore, trial_fails: bool
) -> None:
    # Twins of one request_id (a retry after the caller's deadline): the first is admitted on
    # the half-open backend (no trial out yet) and is being compiled; another job becomes the
    # trial, which runs on (half-open, trial out) or fails (open); the second twin is placed
    # on the fallback, which cannot run it. It must get the first twin's job, not a refusal:
    # it was refused BACKEND_UNAVAILABLE "nothing was accepted" while the first twin's job was
    # created (it looked the job up before that one's create had answered).
    core = await _with_fallback(store, main_slots=2)
    runtime = core.backends["main"]
    compiler = _TwinCompiler(core)
    try:
        await _half_open(core)
        twin = spec("main", text="twin", fallback_backend="spare")
        first = asyncio.ensure_future(core.submit("bob", twin, request_id="r1"))
        await compiler.held.wait()
        if trial_fails:
            main = core.runners["main"]
            await _failed_job(core, main, "main", "carol", FailureKind.BACKEND_FAULT)
            assert runtime.breaker.state is BreakerState.OPEN
        else:
            trial = await core.submit("carol", spec("main", text="trial"))
            await core.until("carol", trial.id, "RUNNING")
            assert runtime.breaker.trial_running
        second = asyncio.ensure_future(core.submit("bob", twin, request_id="r1"))
        await compiler.refused.wait()
        compiler.hold.set()
        job = await first
        assert job.placement == "main"
        assert (await second).id == job.id
    finally:
        compiler.hold.set()
        await _close(core)
