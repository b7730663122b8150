"""The job core's façade: what the API layer calls.

It owns nothing but the wiring: admission (policy, placement, dedup, prepare), a scheduler per
backend claiming from that backend's queue port, the runner step, watchers fed by the event-bus
port, recovery at start, and lifecycle hooks that observe every transition. It knows no worker
process, vendor SDK or wire format (gateway.jobs and gateway.store import nothing from
qgateway.v1).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator, Callable, Container, Iterator, Mapping
from datetime import UTC, datetime
from typing import Any, cast

from gateway.backends.base import PreparedJob
from gateway.domain.errors import (
    JOB_RESOURCE,
    JOB_RESULT_RESOURCE,
    Aborted,
    FailedPrecondition,
    NotFound,
    ResourceInfo,
)
from gateway.domain.job_filter import JobFilter
from gateway.domain.jobs import Job, JobSpec, JobState
from gateway.domain.pricing import CostEstimate
from gateway.domain.timestamps import rfc3339
from gateway.jobs.admission import Admission, CompileStep
from gateway.jobs.backend import BackendRuntime
from gateway.jobs.events import EventBus, MemoryEventBus, WatchEvent
from gateway.jobs.hooks import Hooks
from gateway.jobs.queue_port import Claim
from gateway.jobs.recovery import recover
from gateway.jobs.result_cache import RecentResults
from gateway.jobs.retention_sweep import RetentionSweep
from gateway.jobs.runner_step import RunnerStep
from gateway.jobs.scheduler import Scheduler
from gateway.jobs.stored_format import StoredFormat
from gateway.jobs.transitions import Transitions
from gateway.runtime.breaker import Permit
from gateway.runtime.shielded import to_the_end
from gateway.security.policies import PolicyBook
from gateway.store.base import CreateOutcome, JobCursor, JobPage, Store


def _now() -> datetime:
    return datetime.now(UTC)


# Put in watchers' event queues when draining begins: not a job, a reason to look again.
_DRAINING = cast(Job, object())
# The longest RetryInfo a drain's GATEWAY_DRAINING asks for: a drain often ends well before its
# grace period (its running jobs finish), and the caller should not wait much past that.
DRAIN_RETRY_MAX_S = 5.0


def _job_not_found(job_id: str) -> NotFound:
    name = f"jobs/{job_id}"
    return NotFound(
        "JOB_NOT_FOUND",
        f"job {name} not found",
        metadata={"job": name},
        resource_info=ResourceInfo(JOB_RESOURCE, name, "no such job for this caller"),
    )


class JobManager:
    def __init__(
        self,
        store: Store,
        backends: Mapping[str, BackendRuntime],
        compiler: CompileStep,
        stored_format: StoredFormat,
        *,
        prepare_threads: int,
        watch_heartbeat_s: float = 10.0,
        result_retention_s: float = 30 * 86400.0,
        job_retention_s: float = 90 * 86400.0,
        recover_at_start: bool = True,
        hooks: Hooks | None = None,
        bus: EventBus | None = None,
        clock: Callable[[], datetime] = _now,
        monotonic: Callable[[], float] = time.monotonic,
        policies: PolicyBook | None = None,
    ) -> None:
        self._store = store
        self._clock = clock
        self.backends = backends
        # Tenants' policies (gateway.security.policies): admission and backend listings ask.
        self.policies = policies if policies is not None else PolicyBook()
        self.backend_kinds = {name: rt.info.kind for name, rt in backends.items()}
        # WatchJob resends the job after this long without a change (ServerConfig).
        self.watch_heartbeat_s = watch_heartbeat_s
        # With the in-memory queue this process alone owns the store's queue and recovers it
        # at start; with the claim queue, lapsed leases do that (gateway.jobs.recovery).
        self._recover_at_start = recover_at_start
        self.hooks = hooks if hooks is not None else Hooks()
        self._events: EventBus = bus if bus is not None else MemoryEventBus()
        self.draining = asyncio.Event()
        # Set when the drain's grace period is over: jobs still running are left to the next
        # start, so their waiters are answered too.
        self.grace_over = asyncio.Event()
        self._drain_ends = 0.0  # monotonic: when this process stops at the latest
        self._transitions = Transitions(store, self._events, self.hooks, clock, result_retention_s)
        self._admission = Admission(
            store,
            backends,
            compiler,
            self._transitions,
            self.draining,
            prepare_threads=prepare_threads,
            policies=self.policies,
        )
        # Results just written, so Run and GetJobResult right after a job ends skip a read.
        self._recent_results = RecentResults()
        self.retention_sweep = RetentionSweep(store, clock, job_retention_s, monotonic=monotonic)
        self._step = RunnerStep(
            self._transitions, stored_format, self._admission.prepare, self._recent_results
        )
        self._schedulers = {
            name: Scheduler(runtime, self._step, self._transitions, self.draining)
            for name, runtime in backends.items()
        }
        self._tasks: list[asyncio.Task[None]] = []
        # The event queues of every WatchJob and Run waiting now (woken when draining begins).
        self._watchers: set[asyncio.Queue[Job]] = set()
        # Recovered in-flight jobs, started with the schedulers.
        self._adopted: list[Callable[[], None]] = []

    # ------------------------------------------------------------------ lifecycle

    async def start(self, *, schedule: bool = True) -> None:
        """Recovers interrupted jobs (in-memory queue); then starts every scheduler, unless
        `schedule` is False (the caller starts them with `start_scheduling` once its workers
        are up, so a recovered job is not prepared while the compile workers still start)."""
        if self._recover_at_start:
            await recover(self.backends, self._transitions, self._adopt)
        self._tasks.append(asyncio.create_task(self.retention_sweep.run()))
        if schedule:
            self.start_scheduling()

    def start_scheduling(self) -> None:
        for scheduler in self._schedulers.values():
            self._tasks.append(asyncio.create_task(scheduler.run()))
        for job in self._adopted:
            job()
        self._adopted.clear()

    def _adopt(self, runtime: BackendRuntime, claim: Claim) -> None:
        """Runs a recovered in-flight job (a provider job to re-attach) on its backend once
        scheduling starts."""

        def start() -> None:
            permit = runtime.breaker.try_dispatch() or Permit(trial=False, token=0)
            self._schedulers[runtime.name].start_job(claim, permit)

        self._adopted.append(start)

    def begin_drain(self, grace_s: float = 0.0) -> None:
        """Stops admission and dispatch; running jobs go on (for up to `grace_s`), queued
        jobs stay durable."""
        self._drain_ends = time.monotonic() + grace_s
        self.draining.set()
        self._wake_watchers()
        for runtime in self.backends.values():
            runtime.wake.set()

    def end_grace(self) -> None:
        """The grace period is over: Run and WatchJob calls waiting on jobs still running are
        answered ABORTED GATEWAY_DRAINING (with the job's name) before the server stops, not cut
        UNAVAILABLE, which says nothing was accepted."""
        self.grace_over.set()
        self._wake_watchers()

    def _wake_watchers(self) -> None:
        """Every Run and WatchJob waiting on a job looks again at whether it may wait on."""
        for events in self._watchers:
            events.put_nowait(_DRAINING)

    def _running_tasks(self) -> list[asyncio.Task[None]]:
        return [r.task for rt in self.backends.values() for r in rt.running.values() if r.task]

    async def wait_running(self, timeout: float, cut_short: asyncio.Event | None = None) -> bool:
        """Waits for running jobs to finish; False if some still run after `timeout`, or
        when `cut_short` is set first."""
        pending: set[asyncio.Future[Any]] = set(self._running_tasks())
        if not pending:
            return True
        hurry = asyncio.ensure_future((cut_short or asyncio.Event()).wait())
        try:
            async with asyncio.timeout(timeout):
                while pending:
                    done, pending = await asyncio.wait(
                        pending | {hurry}, return_when=asyncio.FIRST_COMPLETED
                    )
                    if hurry in done:
                        return False
                    pending.discard(hurry)
            return True
        except TimeoutError:
            return False
        finally:
            hurry.cancel()

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        running = self._running_tasks()
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        await self._transitions.settle()

    # ------------------------------------------------------------------ admission

    def runtime(
        self, backend: str, field: str = "spec.backend", visible: Container[str] | None = None
    ) -> BackendRuntime:
        """The backend named `backend`, or NOT_FOUND (also when `visible` leaves it out)."""
        return self._admission.runtime(backend, field, visible)

    def check_allowed(self, tenant: str, backend: str, field: str = "spec.backend") -> None:
        """NOT_FOUND for an unknown backend or one outside the tenant's policy
        (Admission.check_allowed)."""
        self._admission.check_allowed(tenant, backend, field)

    async def submit(
        self,
        tenant: str,
        request_id: str,
        spec: JobSpec,
        spec_bytes: bytes,
        digest: bytes,
        *,
        position: bool = True,
    ) -> CreateOutcome:
        """Admits, prepares and durably queues a job (Admission.submit). `position`: fill in
        the job's queue position (SubmitJob shows it; Run, which answers once the job is
        final, does not pay for it)."""
        outcome = await self._admission.submit(tenant, request_id, spec, spec_bytes, digest)
        if not position:
            return outcome
        return dataclasses.replace(outcome, job=await self._with_position(outcome.job))

    async def validate(self, tenant: str, spec: JobSpec) -> CostEstimate:
        """Checks a submission without creating it; its cost estimate (Admission.validate)."""
        return await self._admission.validate(tenant, spec)

    async def find_request(self, tenant: str, request_id: str, digest: bytes) -> Job | None:
        """The job an earlier request with this request_id created (Admission.find_request)."""
        job = await self._admission.find_request(tenant, request_id, digest)
        return None if job is None else await self._with_position(job)

    async def prepare(
        self, runtime: BackendRuntime, tenant: str, spec: JobSpec, seed: int
    ) -> PreparedJob:
        """Compiles and assembles a job (Admission.prepare); health probes use it too."""
        return await self._admission.prepare(runtime, tenant, spec, seed)

    # ------------------------------------------------------------------ queries

    async def get(self, tenant: str, job_id: str) -> Job:
        """The job, with its queue position while QUEUED."""
        job = await self._store.get_job(job_id, tenant)
        if job is None:
            raise _job_not_found(job_id)
        return await self._with_position(job)

    async def _with_position(self, job: Job) -> Job:
        """The job with its live queue position (jobs ahead of it on its backend, as
        its queue port estimates it) while QUEUED; unset in every other state."""
        position = None
        if job.state is JobState.QUEUED:
            runtime = self.backends.get(job.placement)
            if runtime is not None:
                position = await runtime.queue.position(job.id, job.tenant)
                # QUEUED but out of the queue: the dispatcher has taken it and RUNNING is
                # being written, so nothing is ahead of it.
                if position is None:
                    position = 0
        if position == job.queue_position:
            return job
        return dataclasses.replace(job, queue_position=position)

    async def result_within(self, job: Job, max_bytes: int) -> bytes | int:
        """The job's result, or only its size when it is over `max_bytes`: a caller refused
        for its size must not cost a read of up to max_result_mb on a store's result reader.

        Raises:
            NotFound: RESULT_EXPIRED or RESULT_NOT_FOUND, as `result`.
        """
        await self._check_kept(job)
        recent = self._recent_results.get(job.id)
        if recent is not None:
            return recent if len(recent) <= max_bytes else len(recent)
        stored = await self._store.get_result_within(job.id, max_bytes)
        if stored is None:
            await self._check_kept(job)  # swept since the check above: expired, not lost
            raise _no_result(job)
        size, data = stored
        return size if data is None else data

    async def result_size(self, job: Job) -> int:
        """The stored size of the job's result; only its length is read.

        Raises:
            NotFound: RESULT_EXPIRED or RESULT_NOT_FOUND, as `result`.
        """
        found = await self.result_within(job, 0)
        return found if isinstance(found, int) else len(found)

    async def result(self, job: Job) -> bytes:
        await self._check_kept(job)
        data = self._recent_results.get(job.id) or await self._store.get_result(job.id)
        if data is None:
            await self._check_kept(job)  # swept since the check above: expired, not lost
            raise _no_result(job)
        return data

    async def _check_kept(self, job: Job) -> None:
        if job.expire_at is not None and self._clock() >= job.expire_at:
            # Deleted here if asked for before the sweep (gateway.jobs.retention_sweep) came.
            await self._store.delete_result(job.id)
            name = f"jobs/{job.id}"
            expired = rfc3339(job.expire_at)
            raise NotFound(
                "RESULT_EXPIRED",
                f"the result of job {name} expired at {expired} and is no longer kept",
                metadata={"job": name, "expireTime": expired},
                resource_info=ResourceInfo(JOB_RESULT_RESOURCE, f"{name}/result", "expired"),
            )

    async def list(
        self, tenant: str, *, filter: JobFilter, after: JobCursor | None, limit: int
    ) -> JobPage:
        return await self._store.list_jobs(tenant, filter=filter, after=after, limit=limit)

    def _interrupted_by_drain(self, job: Job) -> Aborted:
        running = job.state in (JobState.RUNNING, JobState.CANCELLING)
        where = (
            "was still running when the grace period ended and goes on after the restart"
            if running
            else "is safe in the queue and runs after the restart"
        )
        # Repeated at once, the call meets the same draining process and is answered the
        # same: a client spent its attempts in seconds while the grace period ran. It is told
        # to come back once this process is gone (then a replica or the restarted gateway
        # answers), or DRAIN_RETRY_MAX_S from now if that is sooner.
        after = self._drain_ends - time.monotonic() + 1.0
        return Aborted(
            "GATEWAY_DRAINING",
            f"the gateway is shutting down; job jobs/{job.id} {where} (repeat the call with the "
            "same request_id, or watch it again)",
            metadata={"job": f"jobs/{job.id}"},
            retry_after=min(max(after, 1.0), DRAIN_RETRY_MAX_S),
        )

    async def _next_event(self, events: asyncio.Queue[Job], job: Job) -> Job:
        """The next change of `job`. Once the gateway drains, only running jobs will still
        finish in this process, until the grace period ends; waiting on any other answers
        ABORTED."""
        while True:
            finishing = job.state in (JobState.RUNNING, JobState.CANCELLING)
            if self.draining.is_set() and (self.grace_over.is_set() or not finishing):
                raise self._interrupted_by_drain(job)
            event = await events.get()
            if event is not _DRAINING:  # begin_drain wakes every watcher to look again
                return event

    @contextlib.contextmanager
    def _subscribe(self, job_id: str) -> Iterator[asyncio.Queue[Job]]:
        with self._events.subscribe(job_id) as events:
            self._watchers.add(events)
            try:
                yield events
            finally:
                self._watchers.discard(events)

    async def watch(
        self, tenant: str, job_id: str, heartbeat_s: float | None = None
    ) -> AsyncIterator[WatchEvent]:
        """The current state, then every change, ending after a final state; whenever nothing
        changed for `heartbeat_s` seconds (default: the configured interval), the job again as
        a heartbeat, with its queue position refreshed. Event-driven: heartbeats come from a
        timer on the event queue, never from reading the store."""
        interval = self.watch_heartbeat_s if heartbeat_s is None else heartbeat_s
        with self._subscribe(job_id) as events:
            job = await self.get(tenant, job_id)
            yield WatchEvent(job)
            while not job.state.is_final:
                try:
                    async with asyncio.timeout(interval):
                        while True:
                            event = await self._next_event(events, job)
                            if event.state != job.state and not _older(event, job):
                                break
                except TimeoutError:
                    job = await self._with_position(job)
                    yield WatchEvent(job, heartbeat=True)
                    continue
                job = await self._with_position(event)
                yield WatchEvent(job)

    async def wait(self, tenant: str, job_id: str, timeout: float | None) -> Job | None:
        """The job once final, or None if `timeout` seconds pass first."""
        with self._subscribe(job_id) as events:
            # Subscribed first, so every later change arrives as an event. Where this process
            # is the store's only writer, the state it last committed is the current one.
            found = self._transitions.latest(job_id) if self._recover_at_start else None
            if found is None or found.tenant != tenant:
                found = await self._store.get_job(job_id, tenant)  # no queue position needed
            if found is None:
                raise _job_not_found(job_id)
            job = found
            try:
                async with asyncio.timeout(timeout):
                    while not job.state.is_final:
                        job = await self._next_event(events, job)
            except TimeoutError:
                return None
            return job

    # ------------------------------------------------------------------ cancellation

    async def cancel(self, tenant: str, job_id: str) -> Job:
        """Answers at once. A queued job is taken out of its queue and ends CANCELLED now; a
        running one is marked CANCELLING (durably: after a restart it ends CANCELLED, never
        runs again) and its runner stops the worker in the background, ending it CANCELLED, or
        SUCCEEDED/FAILED if it finished first; a job another process holds (a shared queue) is
        marked CANCELLING and stopped by that holder at its next lease renewal. A CANCELLING or
        CANCELLED job is a no-op."""
        # To its end even if the caller goes away: a running job marked CANCELLING must also
        # be told to stop, or it runs on, CANCELLING, until it ends or reaches its time limit
        # (a retried CancelJob of a CANCELLING job is a no-op).
        return await to_the_end(self._cancel(tenant, job_id))

    async def _still_queued(self, job_id: str) -> bool:
        """Whether the store still has the job QUEUED; True when it cannot say (it failed
        again): the scheduler then finds a final job's state write refused and drops it."""
        try:
            current = await self._transitions.store.get_job(job_id)
        except Exception:  # the cancel's own store error is what the caller hears
            return True
        return current is not None and current.state is JobState.QUEUED

    async def _cancel(self, tenant: str, job_id: str) -> Job:
        job = await self.get(tenant, job_id)
        if job.state in (JobState.CANCELLED, JobState.CANCELLING):
            return job
        if job.state.is_final:
            raise _already_finished(job)
        runtime = self.backends.get(job.placement)
        # No await between these two lookups: the dispatcher moves a job from the queue to
        # `running` in one step, so the job is in exactly one of them (or in neither).
        running = None if runtime is None else runtime.running.get(job_id)
        if running is not None and running.released:
            # Its step gave the job back (to the queue, or to another holder) and is only
            # returning: the job is the queue's now. Marked CANCELLING for that step, an
            # unclaimed job in the store's queue stayed CANCELLING for ever.
            running = None
        if running is None:
            removed = runtime is not None and await runtime.queue.remove(job_id, tenant)
            held = not runtime.queue.queues_before_commit if runtime is not None else False
            if runtime is not None and not removed and (held or job.state is not JobState.QUEUED):
                # Claimed by another process sharing the store's queue: that holder stops it
                # when it next renews its claim; if it died, whoever claims the job next ends
                # it CANCELLED. Or a provider job recovered at start whose runner step has not
                # started yet: it re-attaches and cancels it at the provider. Finishing it
                # here would leave its worker, or the provider's job, running.
                marked = await self._transitions.cancelling(job)
                if marked is not None:
                    return marked
                # Another CancelJob marked it meanwhile (or it ended): its holder stops it.
                # Finished here, it ended a job another process still ran, whose provider job
                # then went on unfollowed.
                return await self._cancelled_meanwhile(tenant, job_id)
            try:
                finished = await self._transitions.finish(job, JobState.CANCELLED)
            except Exception:
                if (
                    removed
                    and runtime is not None
                    and runtime.queue.queues_before_commit
                    # Not when a retried CancelJob ended it meanwhile (it found the job in
                    # no queue): a CANCELLED job put back counted as queued, then ran on a
                    # worker until its RUNNING write was refused. (No await between this
                    # read and the put.)
                    and await self._still_queued(job.id)
                ):
                    # Taken out of this process's queue but still QUEUED in the store (the
                    # store failed): put back, as the scheduler does with an expiry it could
                    # not store, or it runs, expires and is cancelled by nothing until a
                    # restart. (A store queue's claim lapses and hands it out again.)
                    await runtime.queue.put(job, None)
                raise
            if finished is not None:
                return finished
        else:
            marked = await self._transitions.cancelling(job)
            if marked is not None:
                # Stopping the worker (a kill, or up to KILL_AFTER_S of letting it finish; for
                # provider jobs a remote cancel that can take minutes) happens in the job's own
                # runner task, not in this call.
                running.request_cancel()
                return marked
        return await self._cancelled_meanwhile(tenant, job_id)

    async def _cancelled_meanwhile(self, tenant: str, job_id: str) -> Job:
        """The job that reached a final state (or was cancelled by another call) meanwhile."""
        after = await self.get(tenant, job_id)
        if after.state in (JobState.CANCELLED, JobState.CANCELLING):
            return after
        raise _already_finished(after)


def _no_result(job: Job) -> NotFound:
    name = f"jobs/{job.id}"
    return NotFound(
        "RESULT_NOT_FOUND",
        f"job {name} has no result",
        metadata={"job": name},
        resource_info=ResourceInfo(JOB_RESULT_RESOURCE, f"{name}/result", "no result"),
    )


def _already_finished(job: Job) -> FailedPrecondition:
    name = f"jobs/{job.id}"
    return FailedPrecondition(
        "JOB_ALREADY_FINISHED",
        f"job {name} already {job.state.value}",
        metadata={"job": name, "state": job.state.value},
    )


def _older(event: Job, than: Job) -> bool:
    """Whether `event` is a stale view of the job (its publication overtook by a later one).
    A final state never is: a job never leaves one, and the wall clock may have stepped back
    between two commits (a watcher then waited out the job's end sending heartbeats)."""
    return (
        not event.state.is_final
        and event.updated_at is not None
        and than.updated_at is not None
        and event.updated_at < than.updated_at
    )
