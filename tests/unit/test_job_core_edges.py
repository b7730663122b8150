"""Edges of the job core that earlier tests left open, found by hand mutation: recovery of a job
whose backend is gone, the order watchers and hooks hear of changes, session TTLs and the
retention sweep, in process with an injected clock."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from datetime import datetime, timedelta

import pytest

from gateway.backends.runner import ExecutionModel
from gateway.domain import sessions as domain
from gateway.domain.errors import (
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    StoreUnavailable,
    Unavailable,
)
from gateway.domain.failures import FailureKind
from gateway.domain.job_filter import JobFilter
from gateway.domain.jobs import Job, JobState, StateTransition
from gateway.domain.pricing import Price
from gateway.domain.sessions import EndReason, SessionState
from gateway.jobs.events import MemoryEventBus
from gateway.jobs.hooks import Hooks, Transition
from gateway.jobs.memory_queue import MemoryQueue
from gateway.jobs.peer_events import PeerEventBus
from gateway.jobs.queue_port import Claim
from gateway.jobs.result_cache import RecentResults
from gateway.jobs.retention_sweep import SWEEP_BATCH, RetentionSweep, Swept
from gateway.jobs.sessions import SessionQueue
from gateway.jobs.transitions import LATEST_JOBS, Transitions
from gateway.security.policies import PolicyBook
from gateway.security.tenant_policy import PeriodQuota, TenantPolicy
from gateway.store.base import ExpiryCursor
from gateway.store.sqlite import SqliteStore
from tests.core_harness import T0, Clock, Core, Recorder, ScriptedRunner, build_core, spec
from tests.unit.test_sessions import _session, build, session_spec

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(30)]


@pytest.mark.parametrize("model", [ExecutionModel.LOCAL, ExecutionModel.REMOTE])
async def test_a_job_whose_backend_is_gone_after_a_restart_fails_backend_not_found(
    store: SqliteStore, model: ExecutionModel
) -> None:
    gone = ScriptedRunner(slots=1, model=model)
    core = await build_core(store, "memory", {"gone": gone, "sim": ScriptedRunner(slots=0)})
    running = await core.submit("alice", spec("gone"))
    await core.until("alice", running.id, "RUNNING")
    queued = await core.submit("alice", spec("gone"))
    await core.manager.close()
    # Started again without the backend: its jobs end, FAILED, instead of waiting for ever.
    core2 = await build_core(store, "memory", {"sim": ScriptedRunner(slots=0)}, clock=core.clock)
    try:
        for job_id in (running.id, queued.id):
            stored = await store.get_job(job_id)
            assert stored is not None and stored.state is JobState.FAILED
            assert stored.error is not None and stored.error.reason == "BACKEND_NOT_FOUND"
            assert stored.error.metadata == {"backend": "backends/gone"}
            # Hooks (audit, metrics) hear of the end, as of every final state.
            assert core2.recorder.states(job_id)[-1:] == ["FAILED"]
    finally:
        await core2.manager.close()


async def test_hooks_hear_each_transition_with_the_state_it_left(store: SqliteStore) -> None:
    local = ScriptedRunner(slots=1)
    core = await build_core(store, "memory", {"sim": local})
    try:
        job = await core.submit("alice", spec("sim"))
        await core.until("alice", job.id, "RUNNING")
        local.succeed(job.id)
        await core.until("alice", job.id, "SUCCEEDED")
        await core.heard(job.id, "SUCCEEDED")  # `until` may have read the store's row first
        moves = [
            (t.previous.value if t.previous else None, t.job.state.value)
            for t in core.recorder.transitions
            if t.job.id == job.id
        ]
        assert moves == [(None, "QUEUED"), ("QUEUED", "RUNNING"), ("RUNNING", "SUCCEEDED")]
        # Each at the time of its commit, as stored (audit and spans carry these times).
        final = await store.get_job(job.id)
        assert final is not None
        assert core.recorder.transitions[-1].at == final.updated_at
    finally:
        await core.manager.close()


def _transitions() -> tuple[Transitions, MemoryEventBus, Recorder]:
    bus, recorder = MemoryEventBus(), Recorder()
    clock = Clock()
    return Transitions(None, bus, Hooks([recorder]), clock, 60.0), bus, recorder  # type: ignore[arg-type]


def _job(job_id: str, *states: JobState) -> Job:
    history = tuple(StateTransition(s, T0 + timedelta(seconds=i)) for i, s in enumerate(states))
    return Job(
        id=job_id,
        tenant="alice",
        request_id="",
        backend="sim",
        state=states[-1],
        created_at=T0,
        num_pubs=1,
        seed=0,
        updated_at=history[-1].at,
        state_history=history,
    )


def test_the_latest_map_keeps_the_jobs_changed_most_recently() -> None:
    transitions, _bus, _recorder = _transitions()
    first = _job("j-first", JobState.QUEUED)
    transitions.committed(first, None)
    for n in range(LATEST_JOBS - 1):
        transitions.committed(_job(f"j{n}", JobState.QUEUED), None)
    # The first job changes again: it is now the most recent, and stays past the bound.
    running = _job("j-first", JobState.QUEUED, JobState.RUNNING)
    transitions.committed(running, JobState.QUEUED)
    transitions.committed(_job("j-new", JobState.QUEUED), None)
    assert transitions.latest("j-first") is running
    assert transitions.latest("j-new") is not None
    assert transitions.latest("j0") is None  # the least recently changed went
    assert len(transitions._latest) == LATEST_JOBS


async def test_every_watcher_hears_every_change_in_order_and_never_an_older_one() -> None:
    transitions, bus, recorder = _transitions()
    queued = _job("j", JobState.QUEUED)
    running = _job("j", JobState.QUEUED, JobState.RUNNING)
    done = _job("j", JobState.QUEUED, JobState.RUNNING, JobState.SUCCEEDED)
    with bus.subscribe("j") as one, bus.subscribe("j") as two:
        transitions.committed(queued, None)
        transitions.committed(running, JobState.QUEUED)
        transitions.committed(done, JobState.RUNNING)
        # A change whose caller left, published late: older than what was told, dropped.
        transitions.committed(running, JobState.QUEUED)
        for queue in (one, two):
            heard = [queue.get_nowait().state for _ in range(queue.qsize())]
            assert heard == [JobState.QUEUED, JobState.RUNNING, JobState.SUCCEEDED]
    assert [t.job.state for t in recorder.transitions] == [
        JobState.QUEUED,
        JobState.RUNNING,
        JobState.SUCCEEDED,
    ]
    # Each at the time its change was committed, not when it was published.
    assert [t.at for t in recorder.transitions] == [j.updated_at for j in (queued, running, done)]
    assert not bus.has_subscribers("j")  # the last watcher gone, nothing kept for the job


async def test_a_run_ending_within_the_delay_tells_hooks_it_left_running(
    store: SqliteStore,
) -> None:
    # RUNNING commits with the end: hooks still hear QUEUED -> RUNNING at the start and
    # RUNNING -> SUCCEEDED at the end (a metric of run time keys on the state left).
    runner = ScriptedRunner(slots=1)
    core = await build_core(store, "memory", {"sim": runner})
    try:
        job = await core.submit("alice", spec("sim"))
        await runner.started.wait()
        started_at = core.clock()
        core.clock.advance(2.0)
        runner.succeed(job.id)
        await core.until("alice", job.id, "SUCCEEDED")
        await core.heard(job.id, "SUCCEEDED")  # `until` may have read the store's row first
        heard = [t for t in core.recorder.transitions if t.job.id == job.id]
        assert [(t.previous, t.job.state) for t in heard] == [
            (None, JobState.QUEUED),
            (JobState.QUEUED, JobState.RUNNING),
            (JobState.RUNNING, JobState.SUCCEEDED),
        ]
        assert [t.at for t in heard[1:]] == [started_at, core.clock()]
        # The RUNNING event is the job as it entered RUNNING: its history ends there.
        assert [h.state for h in heard[1].job.state_history] == [JobState.QUEUED, JobState.RUNNING]
    finally:
        await core.manager.close()


class _PeerStore:
    """A store as a peer's signal finds it: `get_job` reads the job as it is at the call, then
    waits at `gate` (a busy store thread) while newer changes may be committed."""

    def __init__(self) -> None:
        self.jobs: dict[str, Job] = {}
        self.reads = 0
        self.reading = asyncio.Event()
        self.gate = asyncio.Event()
        self.gate.set()

    async def get_job(self, job_id: str) -> Job | None:
        self.reads += 1
        found = self.jobs.get(job_id)
        self.reading.set()
        await self.gate.wait()
        return found


async def test_a_peer_change_heard_during_a_read_is_read_again_once() -> None:
    store = _PeerStore()
    bus = PeerEventBus(store, lambda *signal: None)  # type: ignore[arg-type]
    running = _job("j", JobState.QUEUED, JobState.RUNNING)
    done = _job("j", JobState.QUEUED, JobState.RUNNING, JobState.SUCCEEDED)
    store.jobs["j"] = running
    try:
        with bus.subscribe("j") as heard:
            store.gate.clear()
            bus.heard("j", "sim", "RUNNING")
            await asyncio.wait_for(store.reading.wait(), 5)  # read RUNNING, not yet back
            store.jobs["j"] = done  # a peer ends the job meanwhile, and says so (twice)
            bus.heard("j", "sim", "SUCCEEDED")
            bus.heard("j", "sim", "SUCCEEDED")
            store.gate.set()
            async with asyncio.timeout(5):
                assert (await heard.get()).state is JobState.RUNNING
                # Read again: the watcher is not left on the state read before the change.
                assert (await heard.get()).state is JobState.SUCCEEDED
            await bus.close()
            assert store.reads == 2  # once more, however many signals came during the read
            assert heard.empty()
    finally:
        await bus.close()


async def test_a_peer_change_of_a_job_nobody_watches_is_not_read() -> None:
    store = _PeerStore()
    woken: list[str] = []
    bus = PeerEventBus(store, lambda *signal: None)  # type: ignore[arg-type]
    bus.wake_on_changes("sim", lambda: woken.append("sim"))
    store.jobs["j"] = _job("j", JobState.QUEUED)
    bus.heard("j", "sim", "QUEUED")
    assert woken == ["sim"]
    assert not bus._tasks  # no read started: it would cost a store read per signal
    await bus.close()
    assert store.reads == 0


def test_a_change_is_signalled_under_the_backend_the_job_is_placed_on() -> None:
    sent: list[tuple[str, str, str]] = []
    bus = PeerEventBus(_PeerStore(), lambda *signal: sent.append(signal))  # type: ignore[arg-type]
    placed = dataclasses.replace(_job("j", JobState.QUEUED), backend="qpu", placement="fallback")
    bus.publish(placed)
    bus.publish(_job("k", JobState.QUEUED))  # no placement yet: its backend
    # The peers wake the scheduler of the backend the job waits on (its fallback here).
    assert sent == [("j", "fallback", "QUEUED"), ("k", "sim", "QUEUED")]


def test_the_idle_ttl_counts_from_when_the_last_job_ended() -> None:
    at = T0 + timedelta(seconds=5)
    active = domain.job_accepted(_session(max_ttl_s=1000.0), at)
    # The job runs for 45 s: no idleness meanwhile.
    assert domain.expire(active, T0 + timedelta(seconds=50), has_work=True) is None
    ended_at = T0 + timedelta(seconds=50)
    after = domain.job_ended(active, False, ended_at, has_work=False)
    assert after.state is SessionState.ACTIVE and after.last_activity_at == ended_at
    # Idle from the job's end, not from its acceptance: 10 s from 50 s.
    assert domain.deadline(after, has_work=False) == (
        T0 + timedelta(seconds=60),
        EndReason.IDLE_TTL,
    )
    assert domain.expire(after, T0 + timedelta(seconds=59), has_work=False) is None


async def test_a_closing_session_with_work_left_stays_closing_across_a_restart(
    store: SqliteStore,
) -> None:
    core = await build(store, slots=1)
    s = await core.create()
    first = await core.submit("alice", session_spec(s, "a"))
    await core.until("alice", first.id, "RUNNING")
    second = await core.submit("alice", session_spec(s, "b"))
    closing = await core.sessions.close_session("alice", s.id)
    assert closing.state is SessionState.CLOSING
    await core.close()  # a crash: both jobs unfinished
    again = await build(store, slots=1, clock=core.clock)
    try:
        # Its jobs still run, in order; it closes once they are done, not at start.
        stored = await store.get_session(s.id)
        assert stored is not None and stored.state is SessionState.CLOSING
        for job in (first, second):
            await again.until("alice", job.id, "RUNNING")
            again.runner.succeed(job.id)
            await again.until("alice", job.id, "SUCCEEDED")
        closed = await again.session_until(s.id, SessionState.CLOSED)
        assert closed.end_reason is EndReason.CLOSED
    finally:
        await again.close()


async def test_session_totals_answer_every_session_asked_for(store: SqliteStore) -> None:
    core = await build(store, slots=2)
    try:
        sessions = [await core.create(), await core.create()]
        for s in sessions:
            job = await core.submit("alice", session_spec(s))
            await core.until("alice", job.id, "RUNNING")
            core.runner.succeed(job.id)
            await core.until("alice", job.id, "SUCCEEDED")
        totals = await core.sessions.totals(sessions)
        assert set(totals) == {s.id for s in sessions}  # ListSessions shows a total for each
    finally:
        await core.close()


def _queued(job_id: str, session: str, age_s: float) -> Job:
    return Job(
        id=job_id,
        tenant="alice",
        request_id="",
        backend="sim",
        placement="sim",
        state=JobState.QUEUED,
        created_at=T0 - timedelta(seconds=age_s),
        num_pubs=1,
        seed=1,
        session=session,
    )


async def test_pinned_sessions_ready_jobs_are_claimed_oldest_first() -> None:
    queue = SessionQueue(MemoryQueue("sim", 3600, 30.0, Clock()))
    queue.dedicated = lambda _session: True
    queue.capacity = lambda: 8
    older, newer = _queued("old", "s-b", 20), _queued("new", "s-a", 10)
    await queue.put(newer, None)
    await queue.put(older, None)
    claimed = []
    for _ in range(2):
        claim = await queue.claim()
        assert claim is not None
        claimed.append(claim.job.id)
    assert claimed == ["old", "new"]


async def test_a_claim_whose_end_failed_leaves_no_slot_taken_beside_pinned_sessions() -> None:
    # Found in review: a job without a session whose claim could not be ended (a store error)
    # stayed counted among the claims out of the inner queue, so with a dedicated session
    # pinned, the slots left to other jobs shrank by one for good.
    class FailingEnds(MemoryQueue):
        async def done(self, claim: Claim) -> None:
            raise StoreUnavailable("STORE_UNAVAILABLE", "disk full")

        async def release(self, claim: Claim, job: Job | None = None) -> None:
            raise StoreUnavailable("STORE_UNAVAILABLE", "disk full")

    queue = SessionQueue(FailingEnds("sim", 3600, 30.0, Clock()))
    queue.dedicated = lambda session: session == "s-pinned"
    queue.capacity = lambda: 2  # one slot for the pinned session, one for the rest
    await queue.put(_queued("pinned", "s-pinned", 30), None)
    pinned = await queue.claim()
    assert pinned is not None and pinned.job.id == "pinned"
    for end in ("done", "release"):
        await queue.put(_queued(f"plain-{end}", "", 20), None)
        claim = await queue.claim()
        assert claim is not None and claim.job.id == f"plain-{end}"
        with pytest.raises(StoreUnavailable):
            await (queue.done(claim) if end == "done" else queue.release(claim))
        await queue.put(_queued(f"next-{end}", "", 10), None)
        after = await queue.claim()  # the one slot beside the pinned session is free again
        assert after is not None and after.job.id == f"next-{end}"
        await MemoryQueue.done(queue.inner, after)  # type: ignore[arg-type]
        queue._inner_out.discard(after.job.id)


def test_recent_results_keep_the_most_recently_used_within_their_bytes() -> None:
    recent = RecentResults(max_bytes=100)
    recent.put("a", b"a" * 20)
    recent.put("b", b"b" * 20)
    recent.put("c", b"c" * 20)
    assert recent.get("a") == b"a" * 20  # used: now the most recent
    recent.put("d", b"d" * 20)
    recent.put("e", b"e" * 20)  # 100 bytes: all kept
    recent.put("f", b"f" * 20)  # over: the least recently used ("b") goes
    assert recent.get("b") is None
    assert [recent.get(k) is not None for k in "acdef"] == [True] * 5
    # A result over a quarter of the bound is not kept (it would push out many others).
    recent.put("big", b"x" * 26)
    assert recent.get("big") is None and recent.get("c") is not None


def test_recent_results_put_again_keeps_the_latest_bytes() -> None:
    recent = RecentResults(max_bytes=100)
    recent.put("a", b"1" * 10)
    recent.put("a", b"2" * 10)
    assert recent.get("a") == b"2" * 10


def test_recent_results_put_again_does_not_leak_its_byte_count() -> None:
    # A job whose result is put again (a job run again under the same id in one process)
    # counted both copies: each re-put leaked bytes until the cache kept nothing at all.
    recent = RecentResults(max_bytes=100)
    for _ in range(10):
        recent.put("a", b"a" * 20)
    recent.put("b", b"b" * 20)
    assert recent.get("b") == b"b" * 20


def test_a_result_put_again_too_large_to_keep_is_not_read_stale() -> None:
    recent = RecentResults(max_bytes=100)
    recent.put("a", b"old")
    recent.put("a", b"n" * 26)  # over a quarter of the cache: not kept
    assert recent.get("a") is None


class _SweptStore:
    """A store whose delete calls answer as scripted, and record what they were asked."""

    def __init__(
        self,
        results: list[tuple[int, int, ExpiryCursor | None]],
        jobs: list[tuple[int, int]],
    ) -> None:
        self.results = results
        self.jobs = jobs
        self.result_calls: list[tuple[ExpiryCursor | None, datetime, int]] = []
        self.job_calls: list[tuple[datetime, int]] = []

    async def delete_expired_results(
        self, after: ExpiryCursor | None, until: datetime, limit: int
    ) -> tuple[int, int, ExpiryCursor | None]:
        self.result_calls.append((after, until, limit))
        return self.results.pop(0)

    async def delete_ended_jobs(self, until: datetime, limit: int) -> tuple[int, int]:
        self.job_calls.append((until, limit))
        return self.jobs.pop(0)


async def test_the_sweep_walks_every_full_batch_and_keeps_its_cursor() -> None:
    first, last = (T0, "j1000"), (T0 + timedelta(seconds=1), "j1003")
    store = _SweptStore(
        results=[(1000, SWEEP_BATCH, first), (2, 3, last), (0, 0, None), (0, 0, None)],
        # Jobs and sessions go in their own batches: a full one of either means more.
        jobs=[(5, SWEEP_BATCH), (0, 2), (0, 0), (0, 0)],
    )
    clock = Clock()
    sweep = RetentionSweep(store, clock, job_retention_s=3600.0, monotonic=clock.monotonic)
    assert await sweep.sweep() == Swept(results=1002, jobs=5, sessions=SWEEP_BATCH + 2)
    assert [call[0] for call in store.result_calls] == [None, first]
    assert store.result_calls[0][1] == T0
    # Past retention: ended an hour ago or more, never later (a job just ended stays).
    assert store.job_calls == [(T0 - timedelta(hours=1), SWEEP_BATCH)] * 2
    # The next sweeps go on from where this one stopped, even after one that found nothing
    # new (a walk over every swept job each time would grow with the store).
    for _ in range(2):
        clock.advance(600)
        assert await sweep.sweep() == Swept()
        assert store.result_calls[-1][0] == last
    assert store.results == [] and store.jobs == []


def test_a_hook_that_raises_breaks_neither_the_change_nor_the_hooks_after_it() -> None:
    class Broken:
        def on_transition(self, transition: Transition) -> None:
            raise RuntimeError("hook bug")

    heard: list[str] = []

    class Named:
        def __init__(self, name: str) -> None:
            self.name = name

        def on_transition(self, transition: Transition) -> None:
            heard.append(self.name)

    hooks = Hooks([Named("first"), Broken()])
    hooks.add(Named("last"))
    hooks.notify(Transition(_job("j", JobState.QUEUED), None, T0))  # logged, not raised
    assert heard == ["first", "last"]  # in registration order, each once


class _SlowStore:
    """`mark_cancelling` commits once `gates[job_id]` opens (for held jobs), a few loop turns
    after it is called otherwise; `written` lists the commits."""

    def __init__(self) -> None:
        self.gates: dict[str, asyncio.Event] = {}
        self.entered = asyncio.Event()
        self.written: list[str] = []

    async def mark_cancelling(self, job_id: str, at: datetime) -> Job:
        gate = self.gates.get(job_id)
        if gate is not None:
            self.entered.set()
            await gate.wait()
        else:
            for _ in range(3):
                await asyncio.sleep(0)  # a commit on the store's thread: not at once
        self.written.append(job_id)
        return _job(job_id, JobState.QUEUED, JobState.CANCELLING)


async def test_settle_waits_for_writes_started_by_the_publication_of_earlier_ones() -> None:
    # At close, settle() comes before the store closes: a change a hook started when a left
    # caller's change was published (a session cancelling its next job) must commit too.
    store = _SlowStore()
    store.gates["a"] = asyncio.Event()
    started: list[asyncio.Task[Job | None]] = []

    class Chained:
        def on_transition(self, transition: Transition) -> None:
            if transition.job.id == "a":
                task = asyncio.get_running_loop().create_task(
                    transitions.cancelling(_job("b", JobState.QUEUED))
                )
                started.append(task)

    transitions = Transitions(store, MemoryEventBus(), Hooks([Chained()]), Clock(), 60.0)  # type: ignore[arg-type]
    left = asyncio.ensure_future(transitions.cancelling(_job("a", JobState.QUEUED)))
    await asyncio.wait_for(store.entered.wait(), 5)  # the write is under way
    left.cancel()  # its caller goes away
    await asyncio.gather(left, return_exceptions=True)
    store.gates["a"].set()
    await asyncio.wait_for(transitions.settle(), 5)
    assert store.written == ["a", "b"]
    await asyncio.gather(*started)


async def test_a_sweep_that_deleted_something_says_so(caplog: pytest.LogCaptureFixture) -> None:
    store = _SweptStore(results=[(2, 2, (T0, "j2")), (0, 0, None)], jobs=[(1, 0), (0, 0)])
    sweep = RetentionSweep(store, Clock(), job_retention_s=3600.0)  # type: ignore[arg-type]
    with caplog.at_level(logging.INFO, logger="gateway.jobs.retention_sweep"):
        await sweep._sweep_and_tell()
        await sweep._sweep_and_tell()  # nothing this time: nothing said
    said = [r.getMessage() for r in caplog.records if r.name == "gateway.jobs.retention_sweep"]
    assert said == ["deleted 2 expired results, 1 jobs and 0 sessions past retention"]


# ------------------------------------------------------------------ admission and façade edges


async def test_a_retried_request_id_returns_its_job_and_queues_it_only_once(
    store: SqliteStore,
) -> None:
    local = ScriptedRunner(slots=1)
    core = await build_core(store, "memory", {"sim": local})
    try:
        first = await core.manager.submit("alice", "r1", spec("sim"), b"spec", b"digest")
        await core.until("alice", first.job.id, "RUNNING")
        local.succeed(first.job.id)
        await core.until("alice", first.job.id, "SUCCEEDED")
        # Finished, so out of the queue: a retry must not put its job back there (where the
        # scheduler would claim a final job again).
        again = await core.manager.submit("alice", "r1", spec("sim"), b"spec", b"digest")
        assert first.created and not again.created
        assert again.job.id == first.job.id
        assert again.job.state is JobState.SUCCEEDED
        assert await core.backends["sim"].queue.depth() == 0
        assert local.submitted == [first.job.id]
    finally:
        await core.manager.close()


async def test_a_request_id_reused_for_a_different_request_is_refused(
    store: SqliteStore,
) -> None:
    core = await build_core(store, "memory", {"sim": ScriptedRunner(slots=0)})
    try:
        first = await core.manager.submit("alice", "r1", spec("sim"), b"spec", b"digest")
        found = await core.manager.find_request("alice", "r1", b"digest")
        assert found is not None and found.id == first.job.id
        # The API looks the request_id up before validating: a different body must be refused
        # there, not answered with the other request's job.
        with pytest.raises(InvalidArgument) as refused:
            await core.manager.find_request("alice", "r1", b"another body")
        assert refused.value.reason == "REQUEST_ID_REUSED"
    finally:
        await core.manager.close()


async def test_a_seed_of_zero_is_kept_not_replaced_by_a_random_one(store: SqliteStore) -> None:
    core = await build_core(store, "memory", {"sim": ScriptedRunner(slots=0)})
    try:
        job = await core.submit("alice", spec("sim", seed=0))
        assert job.seed == 0
    finally:
        await core.manager.close()


async def test_submit_answers_the_queue_position_unless_asked_not_to(store: SqliteStore) -> None:
    core = await build_core(store, "memory", {"sim": ScriptedRunner(slots=0)})
    try:
        await core.submit("alice", spec("sim"))
        second = await core.submit("alice", spec("sim"))
        assert second.queue_position == 1
        unpositioned = await core.manager.submit(
            "alice", "", spec("sim"), b"spec", b"d", position=False
        )
        assert unpositioned.job.queue_position is None
    finally:
        await core.manager.close()


async def test_a_draining_gateway_admits_nothing(store: SqliteStore) -> None:
    core = await build_core(store, "memory", {"sim": ScriptedRunner(slots=0)})
    try:
        core.manager.begin_drain()
        with pytest.raises(Unavailable) as refused:
            await core.submit("alice", spec("sim"))
        assert refused.value.reason == "DRAINING"
        page = await core.manager.list("alice", filter=JobFilter(), after=None, limit=10)
        assert page.jobs == []
    finally:
        await core.manager.close()


async def test_wait_past_its_deadline_answers_none_for_a_job_still_queued(
    store: SqliteStore,
) -> None:
    core = await build_core(store, "memory", {"sim": ScriptedRunner(slots=0)})
    try:
        job = await core.submit("alice", spec("sim"))
        # A zero deadline expires at the first wait: the job is not final, so no job.
        assert await core.manager.wait("alice", job.id, 0) is None
    finally:
        await core.manager.close()


async def test_wait_on_another_tenants_job_is_not_found_even_when_just_changed(
    store: SqliteStore,
) -> None:
    # The job is in the latest-commit map, which holds every tenant's jobs.
    core = await build_core(store, "memory", {"sim": ScriptedRunner(slots=0)})
    try:
        job = await core.submit("alice", spec("sim"))
        with pytest.raises(NotFound) as missing:
            await core.manager.wait("mallory", job.id, 0)
        assert missing.value.reason == "JOB_NOT_FOUND"
    finally:
        await core.manager.close()


async def test_cancelling_a_cancelled_job_again_is_a_no_op(store: SqliteStore) -> None:
    core = await build_core(store, "memory", {"sim": ScriptedRunner(slots=0)})
    try:
        job = await core.submit("alice", spec("sim"))
        cancelled = await core.manager.cancel("alice", job.id)
        assert cancelled.state is JobState.CANCELLED
        # A retried CancelJob (its first answer lost) must not fail JOB_ALREADY_FINISHED.
        again = await core.manager.cancel("alice", job.id)
        assert again.state is JobState.CANCELLED
        assert again.state_history == cancelled.state_history
    finally:
        await core.manager.close()


async def test_only_a_succeeded_job_gets_a_result_expiry(store: SqliteStore) -> None:
    local = ScriptedRunner(slots=2)
    core = await build_core(store, "memory", {"sim": local})
    try:
        ok = await core.submit("alice", spec("sim"))
        bad = await core.submit("alice", spec("sim"))
        await core.until("alice", ok.id, "RUNNING")
        await core.until("alice", bad.id, "RUNNING")
        local.succeed(ok.id)
        local.fail(bad.id, FailureKind.CLIENT_ERROR)
        succeeded = await core.until("alice", ok.id, "SUCCEEDED")
        failed = await core.until("alice", bad.id, "FAILED")
        assert succeeded.expire_at is not None
        # A failed job has no result to expire; an expiry would have the sweep look for one.
        assert failed.expire_at is None
    finally:
        await core.manager.close()


def _priced(core: Core, price: Price) -> None:
    runtime = core.backends["sim"]
    runtime.settings = dataclasses.replace(runtime.settings, price=price)


async def test_a_job_priced_in_another_unit_does_not_count_against_the_cost_quota(
    store: SqliteStore,
) -> None:
    quota = PeriodQuota(cost=5.0, cost_unit="USD")
    policies = PolicyBook(default=TenantPolicy(quota=quota))
    core = await build_core(store, "memory", {"sim": ScriptedRunner(slots=0)}, policies=policies)
    try:
        # One task at 10.0: twice the quota, were it in the quota's unit.
        _priced(core, Price(per_task=10.0, unit="EUR"))
        accepted = await core.submit("alice", spec("sim"))
        assert accepted.state is JobState.QUEUED
        _priced(core, Price(per_task=10.0, unit="USD"))
        with pytest.raises(ResourceExhausted) as refused:
            await core.submit("alice", spec("sim"))
        assert refused.value.reason == "COST_QUOTA_EXCEEDED"
    finally:
        await core.manager.close()


async def test_a_free_backend_stays_usable_once_the_cost_quota_is_spent(
    store: SqliteStore,
) -> None:
    quota = PeriodQuota(cost=5.0, cost_unit="USD")
    policies = PolicyBook(default=TenantPolicy(quota=quota))
    core = await build_core(store, "memory", {"sim": ScriptedRunner(slots=0)}, policies=policies)
    try:
        _priced(core, Price(per_task=5.0, unit="USD"))
        await core.submit("alice", spec("sim"))  # one task: the whole quota
        with pytest.raises(ResourceExhausted):
            await core.submit("alice", spec("sim"))
        # A zero price table charges nothing, so nothing is over the spent quota.
        _priced(core, Price(unit="USD"))
        free = await core.submit("alice", spec("sim"))
        assert free.state is JobState.QUEUED
    finally:
        await core.manager.close()


async def test_a_backend_the_caller_may_not_see_is_not_found_as_if_it_did_not_exist(
    store: SqliteStore,
) -> None:
    core = await build_core(store, "memory", {"sim": ScriptedRunner(slots=0)})
    try:
        assert core.manager.runtime("sim", visible={"sim"}) is core.backends["sim"]
        # GetBackend of another tenant's private backend must not tell it exists.
        with pytest.raises(NotFound) as hidden:
            core.manager.runtime("sim", visible=set())
        with pytest.raises(NotFound) as missing:
            core.manager.runtime("nope")
        assert hidden.value.reason == missing.value.reason == "BACKEND_NOT_FOUND"
    finally:
        await core.manager.close()


async def test_cancelling_a_recovered_provider_job_before_it_reattaches_marks_it_cancelling(
    store: SqliteStore,
) -> None:
    provider: dict[str, str] = {}
    first = ScriptedRunner(slots=1, model=ExecutionModel.REMOTE, remote=provider)
    core = await build_core(store, "memory", {"sim": first})
    job = await core.submit("alice", spec("sim"))
    await core.until("alice", job.id, "RUNNING")
    await core.manager.close()
    # Restarted, its runner step not started yet: the job is in no queue and not running here.
    again = ScriptedRunner(slots=1, model=ExecutionModel.REMOTE, remote=provider)
    core2 = await build_core(store, "memory", {"sim": again}, clock=core.clock, schedule=False)
    try:
        marked = await core2.manager.cancel("alice", job.id)
        # Ended CANCELLED here, the provider's job would run on with nobody to stop it.
        assert marked.state is JobState.CANCELLING
        core2.manager.start_scheduling()
        await core2.until("alice", job.id, "CANCELLED")
        assert again.cancelled == [job.id]
    finally:
        await core2.manager.close()


async def test_a_retry_refused_at_admission_still_gets_the_job_its_request_created(
    store: SqliteStore,
) -> None:
    core = await build_core(store, "memory", {"sim": ScriptedRunner(slots=0)})
    try:
        first = await core.manager.submit("alice", "r1", spec("sim"), b"spec", b"digest")
        core.manager.begin_drain()
        # Nothing new is accepted, but the request was: its retry is answered with its job.
        again = await core.manager.submit("alice", "r1", spec("sim"), b"spec", b"digest")
        assert not again.created and again.job.id == first.job.id
    finally:
        await core.manager.close()
