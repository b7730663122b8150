"""Review of the stopped-job change of the LOCAL runner (a stopped job's worker is killed only
once the job has run KILL_AFTER_S, else let finish and reused; the job answers CANCELLED once
its worker is free).

In process, with fake worker processes (a job on one runs until the test finishes it or the
worker is killed), so no real simulator is started. Kill timers are set far out (600 s) where
a test must see the state before they fire: nothing here waits on the wall clock.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
from typing import Any, cast

import numpy as np
import pytest

from gateway.backends.base import ExecutionOutcome, PreparedJob
from gateway.domain.errors import ExecutionError
from gateway.domain.failures import FailureKind
from gateway.domain.jobs import Job, JobState
from gateway.runtime.pool import Pool, PoolLimits
from gateway.runtime.simulator_runner import WorkerPoolRunner, WorkerRunHandle
from gateway.runtime.worker import WorkerCrashed, WorkerProcess
from gateway.store.sqlite import SqliteStore
from tests.core_harness import T0, Core, build_core, spec

pytestmark = pytest.mark.anyio

FAR = 600.0  # a kill timer that never fires during a test


class FakeWorker:
    """A worker process: a job runs until `finish` or until the worker is killed."""

    def __init__(self, number: int) -> None:
        self.number = number
        self.payloads: list[object] = []
        self.killed = False
        self._dead = asyncio.Event()
        self._running: asyncio.Future[ExecutionOutcome] | None = None

    @property
    def alive(self) -> bool:
        return not self.killed

    @property
    def busy(self) -> bool:
        return self._running is not None and not self._running.done() and not self.killed

    async def execute(self, payload: object) -> ExecutionOutcome:
        self.payloads.append(payload)
        running: asyncio.Future[ExecutionOutcome] = asyncio.get_running_loop().create_future()
        self._running = running
        dead = asyncio.ensure_future(self._dead.wait())
        either: set[asyncio.Future[Any]] = {running, dead}
        try:
            await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
        finally:
            dead.cancel()
        if self.killed:
            raise WorkerCrashed("the worker process was killed (SIGKILL)")
        return running.result()

    def finish(self, outcome: ExecutionOutcome) -> None:
        assert self._running is not None
        self._running.set_result(outcome)

    def kill(self) -> None:
        self.killed = True
        self._dead.set()


class FakeFactory:
    def __init__(self) -> None:
        self.workers: list[FakeWorker] = []

    async def create(self) -> FakeWorker:
        worker = FakeWorker(len(self.workers))
        self.workers.append(worker)
        return worker

    async def check(self, instance: FakeWorker) -> bool:
        return instance.alive

    async def destroy(self, instance: FakeWorker) -> None:
        instance.kill()


def make_runner(
    max_instances: int, kill_after_s: float = FAR
) -> tuple[WorkerPoolRunner, FakeFactory]:
    factory = FakeFactory()
    pool = Pool(
        factory,
        PoolLimits(min_instances=0, max_instances=max_instances, acquire_timeout_s=60),
    )
    runner = WorkerPoolRunner(cast(Pool[WorkerProcess], pool), kill_after_s=kill_after_s)
    return runner, factory


def a_job(number: int = 1, tenant: str = "t") -> Job:
    return Job(
        id=f"job-{number}",
        tenant=tenant,
        request_id=f"r-{number}",
        backend="sim",
        state=JobState.QUEUED,
        created_at=T0,
        num_pubs=1,
        seed=number,
    )


def a_prepared(name: str = "payload") -> PreparedJob:
    return PreparedJob(payload=(name,), memory_bytes=0, layouts=())


# A finished run's outcome: the runner hands it through without looking inside.
OUTCOME = cast(ExecutionOutcome, object())


async def settle() -> None:
    for _ in range(50):
        await asyncio.sleep(0)


def kind_of(error: BaseException | None) -> FailureKind | None:
    return error.kind if isinstance(error, ExecutionError) else None


# ---------------------------------------------------- findings of the review, fixed since


async def test_a_job_cancelled_before_its_worker_took_the_payload_never_runs() -> None:
    runner, factory = make_runner(1)
    await runner.start()
    try:
        handle = await runner.submit(a_prepared(), a_job())
        # No await between: the execution task has not begun, the worker holds nothing yet.
        await runner.cancel(handle)
        with pytest.raises(ExecutionError) as info:
            await runner.wait(handle)
        assert info.value.kind is FailureKind.CANCELLED
        await settle()
        assert [w.payloads for w in factory.workers] == [[]]
        assert runner.stats().discarded == 0 and runner.stats().in_use == 0
    finally:
        for worker in factory.workers:
            worker.kill()
        await runner.close()


async def test_a_stopped_job_answers_cancelled_once_its_worker_is_free_and_ever_after() -> None:
    # Answering at once, before the worker was free, left the job's slot and share to the
    # next job while its worker still ran (and a second wait then returned the discarded
    # result).
    runner, factory = make_runner(1)
    await runner.start()
    try:
        handle = await runner.submit(a_prepared(), a_job())
        await settle()  # the worker took the payload
        await runner.cancel(handle)
        waiting = asyncio.ensure_future(runner.wait(handle))
        await settle()
        assert not waiting.done()  # its worker still runs it
        factory.workers[0].finish(OUTCOME)  # the stopped job is let finish, result discarded
        for answer in (waiting, runner.wait(handle)):
            with pytest.raises(ExecutionError) as info:
                await answer
            assert info.value.kind is FailureKind.CANCELLED
        assert runner.stats().discarded == 0 and not factory.workers[0].killed
    finally:
        for worker in factory.workers:
            worker.kill()
        await runner.close()


async def _running(core: Core, tenant: str, text: str) -> Job:
    job = await core.submit(tenant, spec("sim", text))
    return await core.until(tenant, job.id, "RUNNING")


async def test_stopped_jobs_keep_their_slots_until_their_workers_are_free(
    store: SqliteStore,
) -> None:
    runner, factory = make_runner(2)
    core = await build_core(store, "memory", cast(Any, {"sim": runner}))
    try:
        first = await _running(core, "mallory", "m1")
        second = await _running(core, "mallory", "m2")
        for job in (first, second):
            await core.manager.cancel("mallory", job.id)
        alice = await core.submit("alice", spec("sim", "a1"))
        await settle()
        # Both workers still run mallory's stopped jobs: they hold both slots, and alice's
        # job waits in the queue (not in the pool behind a slot that looked free).
        assert set(core.backends["sim"].running) == {first.id, second.id}
        assert not core.backends["sim"].has_free_slot()
        assert ("a1",) not in [p for w in factory.workers for p in w.payloads]
        for worker in factory.workers:
            worker.finish(OUTCOME)
        for job in (first, second):
            await core.until("mallory", job.id, "CANCELLED")
        await core.until("alice", alice.id, "RUNNING")
        assert ("a1",) in [p for w in factory.workers for p in w.payloads]
    finally:
        for worker in factory.workers:
            worker.kill()
        await core.manager.close()


# ------------------------------------------------------------------ verified behaviour (passing)


async def test_a_hung_job_stopped_early_is_killed_by_its_timer_and_replaced() -> None:
    runner, factory = make_runner(1, kill_after_s=0.01)
    await runner.start()
    try:
        handle = await runner.submit(a_prepared(), a_job())
        await settle()
        await runner.cancel(handle)
        assert isinstance(handle, WorkerRunHandle) and handle.execution is not None
        assert handle.kill_timer is not None  # armed, not killed at once
        # The hung worker never ends on its own: the timer's kill ends the execution, our
        # kill, not a crash.
        with pytest.raises(ExecutionError) as info:
            await runner.wait(handle)
        assert info.value.kind is FailureKind.CANCELLED
        assert factory.workers[0].killed and runner.stats().discarded == 1
    finally:
        for worker in factory.workers:
            worker.kill()
        await runner.close()


async def test_a_pinned_sessions_stopped_job_gives_its_worker_to_the_sessions_next_job() -> None:
    # A pool of one: the session's next job waits in the pool for the stopped job's worker,
    # which goes back there (not kept) once the job finishes; no deadlock, and the worker is
    # kept for the session after the next job.
    runner, factory = make_runner(1)
    await runner.start()
    try:
        runner.pin_session("s")
        first = await runner.submit(a_prepared("one"), dataclasses.replace(a_job(1), session="s"))
        await settle()
        await runner.cancel(first)
        second_submit = asyncio.ensure_future(
            runner.submit(a_prepared("two"), dataclasses.replace(a_job(2), session="s"))
        )
        await settle()
        assert not second_submit.done()  # waiting for the only worker
        factory.workers[0].finish(OUTCOME)  # the stopped job ends; result discarded
        with pytest.raises(ExecutionError):
            await runner.wait(first)
        second = await second_submit
        await settle()
        assert factory.workers[0].payloads == [("one",), ("two",)]
        factory.workers[0].finish(OUTCOME)
        assert await runner.wait(second) is OUTCOME
        assert runner.pinned_worker("s") is cast(Any, factory.workers[0])
        assert len(factory.workers) == 1 and runner.stats().discarded == 0
    finally:
        runner.unpin_session("s")
        for worker in factory.workers:
            worker.kill()
        await runner.close()


async def test_closing_the_runner_ends_a_stopped_jobs_worker_and_its_timer() -> None:
    runner, factory = make_runner(1)
    await runner.start()
    handle = await runner.submit(a_prepared(), a_job())
    await settle()
    await runner.cancel(handle)
    assert isinstance(handle, WorkerRunHandle) and handle.execution is not None
    assert factory.workers[0].busy
    await runner.close()
    with pytest.raises(ExecutionError) as info:
        await runner.wait(handle)
    assert info.value.kind is FailureKind.CANCELLED
    assert factory.workers[0].killed
    assert handle.kill_timer is not None and handle.kill_timer.cancelled()


# ------------------------------------------------------------------ IBM squared coefficients

# Three merged terms at 9.5e153: each square (9.0e307) is finite, their sum (2.7e308) is not.
THREE_BIG: list[tuple[str, tuple[int, ...], float]] = [
    ("ZZ", (0, 1), 9.5e153),
    ("Z", (0,), 9.5e153),
    ("Z", (1,), 9.5e153),
]


def test_ibm_runtime_answers_terms_whose_squares_only_sum_past_the_largest_float(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The evidence for the finding below: with the gateway's check bypassed, the runtime's
    # estimator answers this observable (finite value and standard error). Only a single
    # merged coefficient above ~1.34e154 raises its OverflowError (coeff**2 of a float).
    from qiskit.quantum_info import SparsePauliOp

    from gateway.backends.ibm import adapter as ibm
    from gateway.domain.circuits import Bindings, EstimatorPub, Observable, PauliTerm
    from gateway.domain.jobs import EstimatorResult
    from tests.unit.test_ibm_adapter import context, q3, run
    from tests.unit.test_ibm_adapter import spec as ibm_spec

    monkeypatch.setattr(
        ibm,
        "runtime_observable",
        lambda terms, n, index, backend: SparsePauliOp.from_sparse_list(terms, n),
    )
    adapter = ibm.IbmAdapter(context())
    adapter.warm_up()
    observable = Observable(
        (
            PauliTerm("ZZ", 9.5e153),
            PauliTerm("Z", 9.5e153, (0,)),
            PauliTerm("Z", 9.5e153, (1,)),
        )
    )
    pub = EstimatorPub(
        circuit=q3("qubit[2] q; h q[0]; cx q[0], q[1];"),
        observables=(observable,),
        observables_shape=(1,),
        bindings=Bindings(),
    )
    with np.errstate(over="ignore"):
        _, results = run(adapter, ibm_spec(pub))
    result = results[0]
    assert isinstance(result, EstimatorResult)
    assert np.all(np.isfinite(result.expectation_values))
    assert result.standard_errors is not None and np.all(np.isfinite(result.standard_errors))
    assert 5e153 < float(result.expectation_values[0]) <= 3 * 9.5e153


def test_ibm_accepts_terms_whose_squares_only_sum_past_the_largest_float() -> None:
    from gateway.backends.ibm.adapter import runtime_observable

    # Only their sum overflows; each square is finite, and the runtime answers (above).
    with np.errstate(over="ignore"):
        assert not math.isfinite(sum(c * c for _, _, c in THREE_BIG))
    runtime_observable(THREE_BIG, 2, 0, "ibm-fake-manila")


def test_ibm_still_refuses_one_coefficient_whose_square_overflows() -> None:
    from gateway.backends.ibm.adapter import runtime_observable

    with pytest.raises(ExecutionError) as info:
        runtime_observable([("ZZ", (0, 1), 1.4e154)], 2, 0, "ibm-fake-manila")
    assert info.value.reason == "INVALID_OBSERVABLE"
    assert info.value.kind is FailureKind.CLIENT_ERROR


# ------------------------------------------------------------------ other changes, verified


def test_a_msgpack_timestamp_as_a_map_key_is_refused() -> None:
    from gateway.runtime import reply_codec

    # {timestamp: 1}: strict_map_key refuses a key that is no str or bytes, as a RefusedReply.
    with pytest.raises(reply_codec.RefusedReply):
        reply_codec.decode(b"\x92\xa2ok\x81\xd6\xff\x00\x00\x00\x00\x01")


def test_quota_periods_that_are_no_valid_duration_are_refused() -> None:
    from google.protobuf.duration_pb2 import Duration
    from qgateway.v1 import admin_pb2

    from gateway.api import tenant_codec
    from gateway.domain.errors import InvalidArgument

    def period(seconds: int, nanos: int) -> admin_pb2.TenantPolicy:
        msg = admin_pb2.TenantPolicy()
        msg.quota.shots = 10
        msg.quota.period.CopyFrom(Duration(seconds=seconds, nanos=nanos))
        return msg

    for seconds, nanos in ((10, -999_999_999), (0, 2_000_000_000), (-10, 5), (3600, 10**9)):
        with pytest.raises(InvalidArgument) as caught:
            tenant_codec.decode_policy(period(seconds, nanos))
        assert caught.value.reason == "INVALID_POLICY"
        fields = [v.field for v in caught.value.field_violations]
        assert "tenant.policy.quota.period" in fields, (seconds, nanos, fields)
    decoded = tenant_codec.decode_policy(period(3600, 500_000_000))
    assert decoded.quota is not None and decoded.quota.period_s == 3600.5


def test_filter_times_take_ascii_digits_only() -> None:
    from gateway.api.job_filter import parse_filter
    from gateway.domain.errors import InvalidArgument

    for text in (
        'create_time > "\u0662\u0660\u0662\u0666-01-01T00:00:00Z"',
        'create_time > "2026-01-01T00:00:00.\u0665Z"',
        'create_time > "2026-01-01T00:00:00+\u0660\u0661:00"',
    ):
        with pytest.raises(InvalidArgument):
            parse_filter(text)
    assert parse_filter('create_time > "2026-01-01T00:00:00Z"').clauses
