"""The runner step: one claimed job from its claim to a final state.

It prepares the job again if the claim carries no prepared job, hands it to the backend's runner
(or re-attaches to a provider job that was already submitted), waits for it under the run-time
limit while renewing the claim's lease, stops it on CancelJob, accounts its outcome to the
breaker with the permit the scheduler got (only the half-open trial's own outcome can close the
breaker, and only the failures FailureKind.counts_for_breaker names count), and commits the
final state.

Usage: a job that succeeded reports its shots (from the prepared job, or from its quota
reservation for a job re-attached after a restart) and its execution time (the provider's, else
the time it ran); a job that failed or was cancelled after it ran reports its execution time
only (its shots are not known to have run): a simulator's time on the worker, a provider's
reported QPU seconds (none when the provider reports none: the time it spent in the provider's
queue is not execution), charged per second only (pricing.charge_time).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta

import anyio

from gateway import offload
from gateway.backends.base import ExecutionOutcome, PreparedJob
from gateway.backends.runner import ExecutionModel, RunHandle
from gateway.domain import pricing
from gateway.domain.errors import Code, ExecutionError, GatewayError, StoreUnavailable
from gateway.domain.failures import FailureKind
from gateway.domain.jobs import (
    ExecutionInfo,
    Job,
    JobError,
    JobResult,
    JobSpec,
    JobState,
    JobTimings,
    SamplerResult,
)
from gateway.jobs.backend import BackendRuntime, RunningJob
from gateway.jobs.result_cache import RecentResults
from gateway.jobs.stored_format import StoredFormat
from gateway.jobs.transitions import Transitions

log = logging.getLogger(__name__)

# Preparing a recovered or re-claimed job again: refusals that say "retry" (the compile pool
# busy) are retried after this (doubling, to the max).
_PREPARE_RETRY_S = 0.5
_PREPARE_RETRY_MAX_S = 30.0

# A local run's RUNNING state is written with its end when it ends within this delay (one
# commit instead of two), else when the delay is over. Meanwhile the store still says QUEUED:
# a job that ran this briefly is seen going from QUEUED to its end, its history and start
# time complete. A simulator job interrupted by a crash is re-queued either way.
RUNNING_WRITE_DELAY_S = 0.05
# Cancels of a provider job nobody follows (cancelled while it was being submitted): asked this
# many times, with back-off, before it is given up with an error in the log.
STOP_ATTEMPTS_UNFOLLOWED = 5
# How long a stopped job's runner has to report the stop.
WAIT_AFTER_STOP_S = 300.0
# A finished job's end the store could not write is tried again after this (doubling, to the
# maximum), for up to the limit.
FINISH_RETRY_S = 1.0
FINISH_RETRY_MAX_S = 30.0
FINISH_RETRY_LIMIT_S = 600.0

Prepare = Callable[[BackendRuntime, str, JobSpec, int], Awaitable[PreparedJob]]


class RunnerStep:
    def __init__(
        self,
        transitions: Transitions,
        stored_format: StoredFormat,
        prepare: Prepare,
        recent_results: RecentResults,
    ) -> None:
        self._t = transitions
        self._format = stored_format
        self._prepare = prepare
        self._recent = recent_results

    async def run(self, runtime: BackendRuntime, running: RunningJob) -> None:
        """Runs the job to a final state; always ends the claim and frees the slot."""
        job = running.claim.job
        # Whether the job reached a final state (or was handed on): only then is its claim
        # ended. A job whose end could not be written keeps its claim, which lapses and hands
        # the job out again; an ended claim left it RUNNING, claimable by nobody.
        settled = False
        try:
            await self._run(runtime, running)
            settled = True
        except asyncio.CancelledError:
            # The gateway is closing: the job stays where it is and is recovered (re-queued or
            # re-attached) at the next start. Its claim is left to lapse, not ended: a shared
            # store hands an unclaimed job that is not QUEUED to nobody, so ending the claim
            # left it RUNNING (or CANCELLING) for ever.
            runtime.breaker.release(running.permit)
            running.released = True
            raise
        except Exception:
            log.exception("job %s: unexpected failure", job.id)
            runtime.breaker.release(running.permit)
            if running.handle is not None:
                # The job is failed here, so its run must not go on (a worker busy, a
                # provider job billing, nobody following either).
                await self._stop_after_failure(runtime, running.handle)
            try:
                await self._t.finish(
                    job,
                    JobState.FAILED,
                    error=JobError.of("INTERNAL_ERROR", "internal error in the gateway"),
                    started_at=running.unwritten_start,
                    holder=_holder(runtime, running),
                )
                settled = True
            except Exception:
                log.exception("job %s: its failure could not be written either", job.id)
        finally:
            # The queue hears of the end before the slot counts as free, so a session's next
            # job (let in by `done`) is queued before the scheduler looks for work.
            try:
                # Not shielded: a claim whose end is interrupted (the gateway closing) lapses.
                # The current claim: a lapsed one that came back was handed to this step.
                if settled and not running.released:
                    await runtime.queue.done(running.claim)
            finally:
                if runtime.running.get(job.id) is running:
                    del runtime.running[job.id]
                if not running.slot_freed:  # (a success already woke the scheduler)
                    runtime.wake.set()

    async def _stop_after_failure(self, runtime: BackendRuntime, handle: RunHandle) -> None:
        try:
            await runtime.runner.cancel(handle)
        except Exception:
            log.exception("job %s: stopping its run failed; it may still run", handle.job_id)

    async def _prepared(self, runtime: BackendRuntime, running: RunningJob) -> PreparedJob | None:
        """The claim's prepared job, or the job prepared again from its stored spec (after a
        restart or on another replica); None when it no longer prepares (the job failed)."""
        prepared = running.claim.prepared
        if prepared is not None:
            return prepared
        job = running.claim.job
        spec_bytes = await self._t.store.get_spec(job.id)
        if spec_bytes is None:
            raise RuntimeError(f"job {job.id} has no stored spec")
        spec = await self._decode(spec_bytes)
        deadline = job.created_at + timedelta(seconds=runtime.settings.max_queue_time_s)
        backoff = _PREPARE_RETRY_S
        while True:
            try:
                return await self._prepare(runtime, job.tenant, spec, job.seed)
            except GatewayError as err:
                retry = err.retry_after is not None or err.code is Code.UNAVAILABLE
                if retry and self._t.clock() + timedelta(seconds=backoff) < deadline:
                    # The compile pool busy (a restart with a backlog): the job was accepted,
                    # so it waits, up to its queue time, not fails. Refusals that do not say
                    # "retry" (a cached compile failure) would come back the same. The claim
                    # is kept meanwhile (_claim_kept); a CancelJob ends the wait.
                    log.warning("job %s: preparing again failed (%s); retrying", job.id, err)
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(backoff):
                            await running.cancel_requested.wait()
                    if running.cancel_requested.is_set():
                        runtime.breaker.release(running.permit)
                        await self._t.finish(
                            job, JobState.CANCELLED, holder=_holder(runtime, running)
                        )
                        return None
                    backoff = min(backoff * 2, _PREPARE_RETRY_MAX_S)
                    continue
                # A spec that validated at admission and no longer does (a limit lowered, the
                # backend reconfigured): the job's own problem, not the backend's.
                runtime.breaker.release(running.permit)
                await self._t.finish(
                    job,
                    JobState.FAILED,
                    error=JobError.from_error(err),
                    holder=_holder(runtime, running),
                )
                return None

    async def _run(self, runtime: BackendRuntime, running: RunningJob) -> None:
        job = running.claim.job
        if job.state is not JobState.QUEUED:
            # Recovered or re-claimed: it may have been cancelled since it was read.
            current = await self._t.store.get_job(job.id)
            if current is None or current.state.is_final:
                runtime.breaker.release(running.permit)
                return
            job = current
            running.attempts = current.attempts
        cancelling = job.state is JobState.CANCELLING
        if cancelling and job.remote_id is None and runtime.runner.model is ExecutionModel.LOCAL:
            # Its holder died while stopping a local run, which died with it.
            runtime.breaker.release(running.permit)
            await self._t.finish(job, JobState.CANCELLED, holder=_holder(runtime, running))
            return
        handle: RunHandle | None = None
        started: Job | None = None
        if job.state is not JobState.QUEUED:
            # Recovered after a restart, or a claim whose holder died: the backend may already
            # have the job. Never submit what it has. A job cancelled while it was being
            # submitted is looked up too: the provider may have it, and it must be stopped.
            try:
                handle = await self._reattach(runtime, running, job)
                if handle is None and not cancelling and running.cancel_requested.is_set():
                    # Cancelled while it was looked up: looked up again as cancelled, so a
                    # runner that has part of it (Braket: some of its tasks) stops that part
                    # rather than leave it running for a job that ends CANCELLED unsent.
                    current = await self._t.store.get_job(job.id)
                    if current is not None and current.state is JobState.CANCELLING:
                        job, cancelling = current, True
                        handle = await self._reattach(runtime, running, job)
            except ExecutionError as err:
                if not await self._still_held(runtime, running):
                    return
                if job.remote_id is None:  # never found: its submit may have reached it
                    await self._abandon(runtime, job)
                await self._failed(runtime, running, job, err, None)
                return
            if handle is None and cancelling:
                if not await self._still_held(runtime, running):
                    return
                if job.remote_id is None:  # its submit may have reached the provider
                    await self._abandon(runtime, job)
                runtime.breaker.release(running.permit)
                await self._t.finish(job, JobState.CANCELLED, holder=_holder(runtime, running))
                return
            if handle is not None:
                running.handle = handle
                started = job
                if job.state is JobState.SUBMITTING and handle.remote_id is not None:
                    # Found by its token or tag after a crash before its id was stored: store
                    # it now, so a second crash re-attaches by id.
                    holder = _holder(runtime, running)
                    write = self._t.running(job, handle.remote_id, holder=holder)
                    started = await _start_write(running, write) or job
        prepared: PreparedJob | None = None
        t0 = time.perf_counter()
        if handle is None:
            async with _claim_kept(runtime, running):
                prepared = await self._prepared(runtime, running)
                if prepared is None:
                    return
                if running.lost_claim is not None:
                    await self._let_go(runtime, running, None, None)
                    return
                if running.cancel_requested.is_set():
                    # Cancelled while it was prepared again (recovered, or claimed from a
                    # shared queue): it never reaches a worker or the provider.
                    runtime.breaker.release(running.permit)
                    await self._t.finish(job, JobState.CANCELLED, holder=_holder(runtime, running))
                    return
                submitted = await self._submit(runtime, running, prepared)
            if submitted is None:
                return
            handle, started = submitted
            t0 = time.perf_counter()
        assert started is not None
        await self._follow(runtime, running, handle, started, prepared, t0)

    async def _reattach(
        self, runtime: BackendRuntime, running: RunningJob, job: Job
    ) -> RunHandle | None:
        """The runner's handle on a job it may already have; a provider out of reach
        (TRANSIENT) is asked again with back-off until the backend's run-time limit."""
        deadline = time.monotonic() + runtime.settings.max_run_time_s
        backoff = runtime.settings.remote_retry_s
        while True:
            try:
                return await runtime.runner.reattach(job, job.remote_id)
            except ExecutionError as err:
                if err.kind is not FailureKind.TRANSIENT or time.monotonic() + backoff >= deadline:
                    raise
                log.warning("job %s: provider out of reach (%s); re-attaching later", job.id, err)
            await self._pause(runtime, running, backoff)
            backoff = min(backoff * 2, 60.0)

    async def _pause(
        self,
        runtime: BackendRuntime,
        running: RunningJob,
        seconds: float,
        waiting: asyncio.Future[ExecutionOutcome] | None = None,
    ) -> None:
        """Backs off for `seconds` (less if `waiting` ends) outside the follow loop, renewing
        the claim as that loop does: a lease left to lapse hands the job out a second time."""
        end = time.monotonic() + seconds
        renew_every = runtime.settings.lease_s / 3
        while (left := end - time.monotonic()) > 0:
            step = min(left, renew_every)
            if waiting is None:
                await asyncio.sleep(step)
            else:
                await asyncio.wait({waiting}, timeout=step)
                if waiting.done():
                    return
            await _renew(runtime, running)

    async def _stop(
        self,
        runtime: BackendRuntime,
        running: RunningJob,
        handle: RunHandle,
        waiting: asyncio.Future[ExecutionOutcome] | None,
    ) -> None:
        """Cancels the job on its runner. A provider that could not be told (out of reach,
        throttling) is asked again with back-off while the job is followed (`waiting`), or a
        few times (nothing follows it): a job left running bills for nothing. One that
        answered no (a refusal, not an outage) is not asked again: the caller then waits
        WAIT_AFTER_STOP_S for the job's end and gives it up, rather than hold its slot for
        as long as the provider keeps a job it will not cancel."""
        backoff = runtime.settings.remote_retry_s
        for attempt in itertools.count(1):
            try:
                await runtime.runner.cancel(handle)
                return
            except ExecutionError as err:
                # Only a refusal (the provider answered no) ends the asking: an outage can be
                # reported as a backend fault too (IBM's SDK gives up on a 5xx that way).
                if err.kind is FailureKind.CLIENT_ERROR:
                    log.error(
                        "job %s: the provider refused to cancel %s (%s); it may still run",
                        handle.job_id,
                        handle.remote_id,
                        err,
                    )
                    return
                if waiting is None and attempt >= STOP_ATTEMPTS_UNFOLLOWED:
                    log.error(
                        "job %s: the provider was not told to cancel %s (%s); it may still run",
                        handle.job_id,
                        handle.remote_id,
                        err,
                    )
                    return
                log.warning(
                    "job %s: cancel did not reach the provider (%s); asking again in %gs",
                    handle.job_id,
                    err,
                    backoff,
                )
            await self._pause(runtime, running, backoff, waiting)
            if waiting is not None and waiting.done():
                if not _lost_touch(waiting):
                    return  # it ended: nothing left to cancel
                waiting = None  # the gateway gave up following it, not the job: keep asking
            backoff = min(backoff * 2, 60.0)

    async def _after_uncertain_submit(
        self, runtime: BackendRuntime, running: RunningJob, job: Job, err: ExecutionError
    ) -> RunHandle | None:
        """The provider's handle on a job whose submit failed for a reason that may have come
        after the provider created it (a lost answer, a timeout), found by the job's id; None
        when the job ended here: CANCELLED (cancelled meanwhile, and the provider does not
        have it), else FAILED with the submit's error. Failing it unlooked-for would leave a
        job running and billing that nobody follows, and a client retrying would pay twice.
        A CancelJob meanwhile leaves the job CANCELLING while the provider is out of reach:
        the provider may run it, and is asked until the run-time limit (a found job is then
        followed and cancelled there)."""
        log.warning("job %s: submit failed (%s); looking for it at the provider", job.id, err)
        try:
            found = await self._reattach(runtime, running, job)
            if found is None and running.cancel_requested.is_set():
                # Cancelled while it was looked up: looked up again as cancelled, so a runner
                # that has part of it (Braket: some of its tasks) stops that part, then ended
                # CANCELLED, never sent (not FAILED for a submit the cancel made moot).
                current = await self._t.store.get_job(job.id)
                if current is not None and current.state is JobState.CANCELLING:
                    found = await self._reattach(runtime, running, current)
                    if found is None:
                        if not await self._still_held(runtime, running):
                            return None
                        await self._abandon(runtime, current)
                        runtime.breaker.release(running.permit)
                        await self._t.finish(
                            current, JobState.CANCELLED, holder=_holder(runtime, running)
                        )
                        return None
        except ExecutionError as lookup:
            # Out of reach until the run-time limit: whether the provider runs the job is not
            # known, so it fails with the submit's error, also when cancelled (CANCELLED would
            # say it does not run).
            log.warning("job %s: the provider could not be asked (%s)", job.id, lookup)
            found = None
        if found is None:
            if not await self._still_held(runtime, running):
                return None
            await self._abandon(runtime, job)
            await self._failed(runtime, running, job, err, None)
        return found

    async def _still_held(self, runtime: BackendRuntime, running: RunningJob) -> bool:
        """Whether the step still holds the job's claim before it abandons and ends a job it
        looked up (a look-up retried while the provider is out of reach can outlast the lease:
        this process stalled, or cut off from the store). A claim gone to another holder
        leaves the job to it, which re-attaches or submits it and follows the provider's job:
        abandoning here would cancel that (by the job's tag), and ending it would end the job
        that holder runs. Let go, as a follow loop that finds its claim lost does."""
        if await _claim_lost(runtime, running):
            await self._let_go(runtime, running, None, None)
            return False
        return True

    async def _abandon(self, runtime: BackendRuntime, job: Job) -> None:
        """A job whose submit may have reached the provider ends without a handle (called
        before its end is stored): the runner stops what the provider has of it, or shows
        later (Braket: tasks its lagging tag search did not show, or a part of the job it
        found), rather than leave it running and billing for nobody."""
        try:
            await runtime.runner.abandon(job)
        except Exception:  # the job has ended; its runner's upkeep must not end the step
            log.exception("job %s: could not hand its provider work over to be stopped", job.id)

    async def _submit(
        self, runtime: BackendRuntime, running: RunningJob, prepared: PreparedJob
    ) -> tuple[RunHandle, Job] | None:
        """Starts the job on the runner and commits RUNNING (with the provider's id)."""
        job = running.claim.job
        runner = runtime.runner
        if runner.model is ExecutionModel.REMOTE:
            # SUBMITTING is committed before the provider hears of the job: after a crash, a
            # SUBMITTING job is looked up at the provider by its id before anything is resent.
            if job.state is JobState.QUEUED:
                marked = await self._t.submitting(job, _holder(runtime, running))
                if marked is None:
                    await self._no_longer_queued(runtime, running)
                    return None
                job = marked
            try:
                if job.session and runtime.provider_session is not None:
                    # The provider's own session (IBM Runtime Session/Batch) the job runs in.
                    await runtime.provider_session(runner, job)
                    if running.cancel_requested.is_set():
                        # Cancelled (or its session ended) while that session opened: the
                        # provider never hears of the job.
                        await self._no_longer_queued(runtime, running)
                        return None
                handle = await runner.submit(prepared, job)
            except ExecutionError as err:
                if err.kind in (FailureKind.CREDENTIALS, FailureKind.THROTTLED):
                    await self._requeue(runtime, running, job, err)
                    return None
                if err.kind is not FailureKind.TRANSIENT:
                    # It ends here without a handle, and an earlier attempt of this submit may
                    # have reached the provider (a create retried after an uncertain one, a
                    # Braket task made before another failed): the runner stops what it has,
                    # or shows later (it watches a job for strays only once abandoned).
                    if not await self._still_held(runtime, running):
                        return None
                    await self._abandon(runtime, job)
                    await self._failed(runtime, running, job, err, None)
                    return None
                found = await self._after_uncertain_submit(runtime, running, job, err)
                if found is None:  # ended there
                    return None
                handle = found
            running.handle = handle
            started = await _start_write(
                running, self._t.running(job, handle.remote_id, holder=_holder(runtime, running))
            )
            if started is None and await _claim_lost(runtime, running):
                # This holder's lease lapsed while the provider answered, and the job is
                # another holder's now, which finds the provider's job by its id or tag:
                # stopping it here would cancel the run that holder follows.
                await self._let_go(runtime, running, handle, None)
                return None
            if started is None:  # cancelled while it was being submitted
                # The provider has the job, and may run it before the cancel reaches it: it
                # is followed as a running job being cancelled (stopped; SUCCEEDED with its
                # result if it finished first, else CANCELLED with what it ran), under its
                # provider id, never ended CANCELLED unaccounted while the provider bills it.
                cancelling = None
                if handle.remote_id is not None:
                    cancelling = await self._t.store.record_remote_id(job.id, handle.remote_id)
                if cancelling is None:
                    await self._stop(runtime, running, handle, None)
                    await self._no_longer_queued(runtime, running)
                    return None
                return handle, cancelling
            return handle, started
        # A local run starts at once; its RUNNING write waits (RUNNING_WRITE_DELAY_S).
        running.unwritten_start = self._t.clock()
        try:
            handle = await runner.submit(prepared, job)
        except ExecutionError as err:
            await self._failed(runtime, running, job, err, None)
            return None
        running.handle = handle
        return handle, job

    async def _write_running(
        self,
        runtime: BackendRuntime,
        running: RunningJob,
        job: Job,
        handle: RunHandle,
        waiting: asyncio.Future[ExecutionOutcome],
    ) -> Job | None:
        """Writes the delayed RUNNING state of a local run that is still going; None (the run
        stopped) when the job is no longer QUEUED: cancelled, or a stand-in whose create found
        another job of its request_id."""
        started_at = running.unwritten_start
        assert started_at is not None
        started = await _start_write(
            running, self._t.running(job, started_at=started_at, holder=_holder(runtime, running))
        )
        if started is not None:
            running.unwritten_start = None
            return started
        await runtime.runner.cancel(handle)
        await asyncio.gather(waiting, return_exceptions=True)
        running.unwritten_start = None  # it did not run as this job
        await self._no_longer_queued(runtime, running)
        return None

    async def _requeue(
        self, runtime: BackendRuntime, running: RunningJob, job: Job, err: ExecutionError
    ) -> None:
        """The provider refused the backend's credentials, or throttled the create, and
        created nothing: the breaker counts it, and the job goes back to the queue (its place
        kept), to wait like any queued job, up to its queue time limit, while the backend is
        out (its probe reports it NOT_SERVING) or throttled."""
        moved = runtime.breaker.record_failure(running.permit)
        what = "throttled" if err.kind is FailureKind.THROTTLED else "refused the credentials"
        log.warning(
            "job %s: backends/%s %s (%s); the job is queued again",
            job.id,
            runtime.name,
            what,
            err.reason,
        )
        requeued = await self._t.queued_again(job, moved, _holder(runtime, running))
        if requeued is None:  # no longer SUBMITTING: cancelled meanwhile
            current = await self._t.store.get_job(job.id)
            if current is not None and current.state is JobState.CANCELLING:
                await self._t.finish(current, JobState.CANCELLED, holder=_holder(runtime, running))
            return
        running.released = True
        await runtime.queue.release(running.claim, requeued)

    async def _no_longer_queued(self, runtime: BackendRuntime, running: RunningJob) -> None:
        runtime.breaker.release(running.permit)
        # CANCELLING is a cancel request, whoever wrote it: the job ends CANCELLED.
        current = await self._t.store.get_job(running.claim.job.id)
        if current is not None and current.state is JobState.CANCELLING:
            await self._t.finish(current, JobState.CANCELLED, holder=_holder(runtime, running))

    async def _follow(
        self,
        runtime: BackendRuntime,
        running: RunningJob,
        handle: RunHandle,
        started: Job,
        prepared: PreparedJob | None,
        t0: float,
    ) -> None:
        """Waits for the job under its limits, renewing the lease; commits its final state."""
        runner = runtime.runner
        if started.state is JobState.CANCELLING:
            running.cancel_requested.set()
        # The job's own max_execution_time, when it is the smaller limit, is the client's
        # choice: running past it says nothing about the backend (no breaker failure).
        run_limit = runtime.settings.max_run_time_s
        if prepared is not None:
            own_limit = prepared.max_run_time_s
        else:  # re-attached: the limits count from its start, not from this process's
            own_limit = await self._stored_own_limit(started)
        # The limit that stops the job, and whether running past it is the job's doing.
        whose, jobs_own = "the backend's limit of", False
        if own_limit is not None and own_limit < run_limit:
            run_limit, whose, jobs_own = own_limit, "its max_execution_time of", True
        loop_limit = runtime.settings.max_loop_run_time_s
        if (
            prepared is not None
            and prepared.has_while_loop
            and runner.model is ExecutionModel.LOCAL
            and loop_limit < run_limit
        ):
            # A while loop may never end: only a provider bounds it on its own.
            run_limit, whose, jobs_own = loop_limit, "the backend's limit for while loops of", True
        ran_before = 0.0
        if prepared is None and started.started_at is not None:
            ran_before = max(0.0, (self._t.clock() - started.started_at).total_seconds())
        running.run_limit_s = run_limit
        deadline = time.monotonic() + run_limit - ran_before
        renew_every = runtime.settings.lease_s / 3
        write_running_at = time.monotonic() + RUNNING_WRITE_DELAY_S
        if runner.model is ExecutionModel.REMOTE:
            waiting = asyncio.ensure_future(self._wait_remote(runtime, started, handle, deadline))
        else:
            waiting = asyncio.ensure_future(runner.wait(handle))
        loop = asyncio.get_running_loop()
        try:
            while not waiting.done() and not running.stopping:
                now = time.monotonic()
                remaining = deadline - now
                if remaining <= 0:
                    break
                timer = min(remaining, renew_every)
                if running.unwritten_start is not None:
                    timer = min(timer, max(write_running_at - now, 0.0))
                # One future wakes the step: the job ending, a cancel request, or the timer (the
                # time limit, or the next lease renewal).
                poke: asyncio.Future[None] = loop.create_future()
                running.poke = poke

                def finished(_: object, poke: asyncio.Future[None] = poke) -> None:
                    if not poke.done():
                        poke.set_result(None)

                waiting.add_done_callback(finished)
                try:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(timer):
                            await poke
                finally:
                    waiting.remove_done_callback(finished)
                    running.poke = None
                if waiting.done() or running.stopping:
                    break
                if running.unwritten_start is not None:
                    if time.monotonic() >= write_running_at:
                        written = await self._write_running(
                            runtime, running, started, handle, waiting
                        )
                        if written is None:
                            return
                        started = written
                else:
                    await _renew(runtime, running)
        except asyncio.CancelledError:
            # The gateway is closing. A local job cannot outlive it: stop the worker. A remote
            # job goes on at the provider and is re-attached at the next start.
            if runner.model is ExecutionModel.LOCAL:
                await runner.cancel(handle)
            waiting.cancel()
            raise
        except Exception:
            # The step failed (a store error writing RUNNING): run() stops the run and fails
            # the job; nobody follows this wait any more.
            waiting.cancel()
            raise
        if running.lost_claim is not None:
            # Also when its run has just ended: the job is another holder's (or came back to
            # this process after another holder ran it, Scheduler.start_job), and this run's
            # end, written under this process's name, would end the job that holder ran.
            await self._let_go(runtime, running, handle, waiting)
            return
        info = ExecutionInfo(
            backend=runtime.name,
            seed=started.seed,
            layouts=prepared.layouts if prepared is not None else (),
            attempts=_as_started(started, running).attempts,
        )

        def ran() -> ExecutionInfo:
            """`info` with what a job that failed or was cancelled after it ran used."""
            seconds = _charged_seconds(handle.execution_seconds, running)
            if seconds is None and runner.model is ExecutionModel.LOCAL:
                seconds = _charged_seconds(time.perf_counter() - t0, running)
            if seconds is None:
                return info
            usage = pricing.Usage(shots=0, execution_seconds=seconds)
            cost = pricing.charge_time(runtime.settings.price, usage)
            return dataclasses.replace(info, usage=usage, cost=cost)

        if not waiting.done():
            # Cancellation and time limits reach the backend: the worker is killed (a job
            # that has run under KILL_AFTER_S finishes on it first), the provider job cancelled.
            try:
                await self._stop(runtime, running, handle, waiting)
                # The runner's wait reports the stop; one that does not (a provider call that
                # never answers) is given up, or the step would hold its slot for ever.
                await self._pause(runtime, running, WAIT_AFTER_STOP_S, waiting)
            except BaseException:
                # The gateway closing (or a store error renewing the claim): nobody follows
                # this wait any more, as in the loop above.
                waiting.cancel()
                raise
            if not waiting.done():
                log.error("job %s: no answer from its runner after it was stopped", started.id)
                waiting.cancel()
            outcome = await asyncio.gather(waiting, return_exceptions=True)
            if not isinstance(outcome[0], BaseException):  # it finished first after all
                await self._succeeded(runtime, running, started, outcome[0], prepared, t0)
                return
            if running.cancel_requested.is_set():
                runtime.breaker.release(running.permit)
                await self._t.finish(
                    started,
                    JobState.CANCELLED,
                    execution=ran(),
                    started_at=running.unwritten_start,
                    holder=_holder(runtime, running),
                )
                return
            limit = f"{run_limit:g}"
            moved = None
            if jobs_own:
                runtime.breaker.release(running.permit)
            else:
                # Running past the backend's own limit is the backend's fault; a half-open
                # trial that did so opens the breaker again (released first, it no longer
                # counted as the trial, and the next job became one). Not only while the
                # probe fails, as for SDK_ERROR: a backend whose every worker hangs is never
                # probed ("busy is not sick"), so its probe would pass for ever.
                moved = runtime.breaker.record_failure(running.permit)
            error = JobError.of(
                "JOB_TIMEOUT",
                f"the job ran past {whose} {limit}s",
                {"backend": f"backends/{runtime.name}", "limitSeconds": limit},
            )
            await self._t.finish(
                started,
                JobState.FAILED,
                error=error,
                execution=ran(),
                started_at=running.unwritten_start,
                breaker=moved,
                holder=_holder(runtime, running),
            )
            return
        try:
            result = waiting.result()
        except ExecutionError as err:
            if runner.model is ExecutionModel.REMOTE and _lost_touch(waiting):
                # The provider was out of reach until the run deadline: the job goes on there,
                # billing, unless it is told to stop (it was failed with nobody cancelling it).
                await self._stop(runtime, running, handle, None)
            await self._failed(runtime, running, started, err, ran())
            return
        await self._succeeded(runtime, running, started, result, prepared, t0)

    async def _let_go(
        self,
        runtime: BackendRuntime,
        running: RunningJob,
        handle: RunHandle | None,
        waiting: asyncio.Future[ExecutionOutcome] | None,
    ) -> None:
        """Ends the step without writing the job: a renewal found its claim lost (this
        process did not renew it in time: a stalled loop, the store out of reach), so the job
        is another holder's, which runs it again (a local run) or re-attaches to it (a
        provider job). A local run is stopped here, or the job would run twice at once, each
        holding a worker; a provider job is left to its new holder, only no longer followed."""
        log.warning("job %s: its claim went to another holder; stopping here", running.claim.job.id)
        runtime.breaker.release(running.permit)
        running.released = True  # the claim is not this step's to end
        if waiting is not None and not waiting.done():
            if handle is not None and runtime.runner.model is ExecutionModel.LOCAL:
                await self._stop_after_failure(runtime, handle)
                await asyncio.wait({waiting}, timeout=WAIT_AFTER_STOP_S)
            waiting.cancel()
        if running.claim is not running.lost_claim:
            # The job came back to this process meanwhile: given back to the queue at once,
            # for the scheduler to start it afresh, instead of left to lapse.
            await runtime.queue.release(running.claim)

    async def _wait_remote(
        self, runtime: BackendRuntime, job: Job, handle: RunHandle, deadline: float
    ) -> ExecutionOutcome:
        """Follows a provider job through outages: losing touch with the provider (TRANSIENT,
        after the runner's own retries) says nothing about the job, which goes on there; the
        step backs off, re-attaches by its remote id and follows it again, until the run
        deadline."""
        runner = runtime.runner
        backoff = runtime.settings.remote_retry_s
        following = handle
        while True:
            try:
                return await runner.wait(following)
            except ExecutionError as err:
                # What the provider reported the job used, on the handle the step holds.
                handle.execution_seconds = following.execution_seconds
                if err.kind is not FailureKind.TRANSIENT or time.monotonic() + backoff >= deadline:
                    raise
                log.warning("job %s: lost touch with its provider (%s); re-attaching", job.id, err)
            while True:
                await asyncio.sleep(backoff)  # the provider is unreachable: back off
                backoff = min(backoff * 2, 60.0)
                try:
                    found = await runner.reattach(job, following.remote_id)
                    break
                except ExecutionError as err:
                    if err.kind is not FailureKind.TRANSIENT or time.monotonic() >= deadline:
                        raise
            if found is None:
                raise ExecutionError(
                    "EXECUTION_FAILED",
                    "the provider no longer knows the job",
                    kind=FailureKind.BACKEND_FAULT,
                    metadata={"providerJobId": following.remote_id or ""},
                )
            following = found

    async def _failed(
        self,
        runtime: BackendRuntime,
        running: RunningJob,
        job: Job,
        err: ExecutionError,
        info: ExecutionInfo | None,
    ) -> None:
        breaker = runtime.breaker
        moved = None
        if err.kind.counts_for_breaker(runtime.health.serving):
            moved = breaker.record_failure(running.permit)
            if breaker.state.value != "CLOSED":
                log.warning("backend %s: circuit breaker %s", runtime.name, breaker.state.value)
        else:
            breaker.release(running.permit)
        start = running.unwritten_start
        if err.kind is FailureKind.CANCELLED:
            await self._t.finish(
                job,
                JobState.CANCELLED,
                execution=info,
                started_at=start,
                holder=_holder(runtime, running),
            )
            return
        await self._t.finish(
            job,
            JobState.FAILED,
            error=JobError.from_error(err),
            execution=info,
            started_at=start,
            breaker=moved,
            holder=_holder(runtime, running),
        )

    async def _succeeded(
        self,
        runtime: BackendRuntime,
        running: RunningJob,
        started: Job,
        outcome: ExecutionOutcome,
        prepared: PreparedJob | None,
        t0: float,
    ) -> None:
        elapsed = time.perf_counter() - t0
        moved = runtime.breaker.record_success(running.permit)
        if not started.session:
            # The slot is free for the next job before this one's result is encoded and
            # committed. Not for a session's job: its successor enters the queue only when
            # this one is done, and must not lose the slot to a job queued after it.
            running.slot_freed = True
            runtime.wake.set()
        if _encodes_inline(outcome.result):
            result = self._format.encode_result(outcome.result)
        else:  # large results are encoded off the event loop
            result = await anyio.to_thread.run_sync(self._format.encode_result, outcome.result)
        seconds = _charged_seconds(outcome.execution_seconds, running)
        if seconds is None:
            # A simulator's time on its worker, within its limit like a report (a job stopped
            # at its limit may finish first). A provider that reports none is not charged the
            # time it followed the job: that includes the provider's queue (hours).
            seconds = 0.0
            if runtime.runner.model is ExecutionModel.LOCAL:
                seconds = _charged_seconds(elapsed, running) or 0.0
            if runtime.runner.model is ExecutionModel.REMOTE:
                log.warning("job %s: the provider reported no execution time", started.id)
        tasks = outcome.tasks
        if tasks is None:
            tasks = prepared.tasks if prepared is not None else 1
        usage = pricing.Usage(
            shots=prepared.shots if prepared is not None else await self._stored_shots(started),
            execution_seconds=seconds,
            provider_cost=pricing.reported(outcome.provider_cost),
            provider_unit=outcome.provider_unit,
            tasks=tasks,
        )
        ran = _as_started(started, running)
        queued_s = 0.0
        if ran.started_at is not None:
            # Not negative when the wall clock stepped back while the job waited (the
            # store keeps its start from coming before its creation, too).
            queued_s = max(0.0, (ran.started_at - ran.created_at).total_seconds())
        ended = await self._stored_end(
            runtime,
            running,
            lambda: self._t.finish(
                started,
                JobState.SUCCEEDED,
                execution=ExecutionInfo(
                    backend=runtime.name,
                    seed=started.seed if outcome.seeded else None,
                    sdk_versions=outcome.sdk_versions,
                    layouts=prepared.layouts if prepared is not None else (),
                    attempts=ran.attempts,
                    usage=usage,
                    cost=pricing.charge(runtime.settings.price, usage),
                ),
                timings=JobTimings(
                    queued_s=queued_s,
                    transpile_s=prepared.prepare_seconds if prepared is not None else 0.0,
                    execute_s=elapsed,
                ),
                result=result,
                started_at=running.unwritten_start,
                breaker=moved,
                holder=_holder(runtime, running),
            ),
        )
        if ended is not None:
            # Kept only once it is the job's result: put before a write that was refused (the
            # job's lease went to another holder, which ended it with its own run's result)
            # or failed, this replica answered GetJobResult with this run's result meanwhile,
            # or for good. Put as the write returns, before Run and WaitJob woken by it read it.
            self._recent.put(started.id, result)

    async def _stored_end(
        self,
        runtime: BackendRuntime,
        running: RunningJob,
        write: Callable[[], Awaitable[Job | None]],
    ) -> Job | None:
        """Writes a finished job's end, again while the store cannot write (a full disk): its
        result is in hand, and failing the job for it threw a finished run away. The claim is
        renewed meanwhile; after FINISH_RETRY_LIMIT_S the error goes on (the job FAILED)."""
        backoff = FINISH_RETRY_S
        deadline = time.monotonic() + FINISH_RETRY_LIMIT_S
        while True:
            try:
                return await write()
            except StoreUnavailable as err:
                if time.monotonic() + backoff > deadline:
                    raise
                log.warning(
                    "job %s: its end could not be stored (%s); again in %gs",
                    running.claim.job.id,
                    err.message,
                    backoff,
                )
            await self._pause(runtime, running, backoff)
            backoff = min(backoff * 2, FINISH_RETRY_MAX_S)

    async def _decode(self, spec_bytes: bytes) -> JobSpec:
        """A stored spec, decoded off the event loop when large: decoding walks every Pauli
        term and binding in Python (seconds for a spec of megabytes)."""
        return await offload.by_size(len(spec_bytes), self._format.decode_spec, spec_bytes)

    async def _stored_own_limit(self, job: Job) -> float | None:
        """The job's own max_execution_time, from its stored spec (a re-attached job has no
        prepared job); None when it set none or the spec cannot be read."""
        try:
            spec_bytes = await self._t.store.get_spec(job.id)
            if spec_bytes is None:
                return None
            return (await self._decode(spec_bytes)).options.max_execution_time_s
        except Exception:  # the backend's own limit still applies
            log.exception("job %s: its time limit could not be read from its stored spec", job.id)
            return None

    async def _stored_shots(self, job: Job) -> int:
        """The shots of a job that has no prepared job (re-attached after a restart): what its
        prepare counted at admission, as its quota reservation keeps it. Not counted again
        from its spec: only compiling tells a PUB that writes no bit (Braket runs no task for
        it)."""
        try:
            shots = await self._t.store.reserved_shots(job.id)
        except Exception:  # usage is not worth failing a finished job for
            log.exception("job %s: its shots could not be read", job.id)
            return 0
        if shots is None:
            log.warning("job %s: no quota reservation holds its shots; usage says 0", job.id)
            return 0
        return shots


@contextlib.asynccontextmanager
async def _claim_kept(runtime: BackendRuntime, running: RunningJob) -> AsyncIterator[None]:
    """Renews the claim while the step prepares and submits the job, as the follow loop does
    while it runs: compiling every PUB again, a pool's acquire or a provider's retries can
    outlast a lease, and a lapsed claim is handed out again. The renewing task starts at the
    first renewal: most steps are done long before it (a cached prepare, a local submit),
    and a task made, cancelled and waited for cost each job ~2% of the event loop."""
    every = runtime.settings.lease_s / 3
    keeper: asyncio.Task[None] | None = None

    async def keep() -> None:
        while True:
            await _renew(runtime, running)
            await asyncio.sleep(every)

    def start() -> None:
        nonlocal keeper
        keeper = asyncio.create_task(keep())

    first = asyncio.get_running_loop().call_later(every, start)
    try:
        yield
    finally:
        first.cancel()
        if keeper is not None:
            keeper.cancel()
            # Waited on, not awaited: awaiting it would swallow this step's own cancellation.
            await asyncio.wait({keeper})


async def _start_write(running: RunningJob, write: Awaitable[Job | None]) -> Job | None:
    """Awaits a write that starts the job's run (attempts + 1), and tells `running` what it
    wrote: a claim of the job that came back to this process meanwhile may carry that count
    before the step has seen it (its answer takes more loop turns than the scheduler's claim),
    and is judged against it (RunningJob.start_written), not taken for another holder's run."""
    running.starting = True
    started: Job | None = None
    try:
        started = await write
    finally:
        running.start_written(started)
    return started


def _holder(runtime: BackendRuntime, running: RunningJob) -> str | None:
    """Who a state write names as the job's holder: the claim's owner when the store is the
    queue (its lease there is the truth); None for the in-memory queue, which leases nothing
    in the store."""
    return None if runtime.queue.queues_before_commit else running.claim.owner


async def _claim_lost(runtime: BackendRuntime, running: RunningJob) -> bool:
    """Whether the job's claim went to another holder (a renewal finds out)."""
    await _renew(runtime, running)
    return running.lost_claim is not None


async def _renew(runtime: BackendRuntime, running: RunningJob) -> None:
    """Extends the job's claim; a renewal that carries CANCELLING (a CancelJob accepted by
    another process) stops the job, one that finds the claim lost lets it go. A renewal that
    fails (the store busy, a disk error) is logged and tried again at the next one: a lease
    outlasts two missed renewals, and failing the job for it left its run going."""
    claim = running.claim
    try:
        renewed = await runtime.queue.renew(claim)
    except Exception:
        log.exception("job %s: renewing its claim failed", claim.job.id)
        return
    if renewed is None:
        # A shared queue hands a lapsed claim to another holder. The in-memory queue's only
        # holder is this process: a claim lapsed there (a wall-clock step) comes back to this
        # step (Scheduler.start_job), which goes on.
        if not runtime.queue.queues_before_commit and running.claim is claim:
            running.lose_claim(claim)
        return
    running.claim = renewed
    if renewed.job.state is JobState.CANCELLING:
        running.request_cancel()


def _lost_touch(waiting: asyncio.Future[ExecutionOutcome]) -> bool:
    """Whether a provider job's wait ended because the gateway lost touch with the provider
    (TRANSIENT past the runner's retries): the job itself may still run there."""
    if waiting.cancelled():
        return False
    error = waiting.exception()
    return isinstance(error, ExecutionError) and error.kind is FailureKind.TRANSIENT


def _as_started(job: Job, running: RunningJob) -> Job:
    """The job as its RUNNING write records it, also while that write waits."""
    if running.unwritten_start is None:
        return job
    return dataclasses.replace(job, started_at=running.unwritten_start, attempts=job.attempts + 1)


def _encodes_inline(result: JobResult) -> bool:
    """Whether the result is small enough to encode on the event loop: roughly its encoded
    size (samples dominate; counts and values cost ~16 bytes each), summed only until it is
    too large (a result of 100,000 bindings x registers took 0.2 s to sum whole)."""
    size = 0
    for pub in result.pubs:
        if isinstance(pub, SamplerResult):
            for reg in pub.registers:
                size += 0 if reg.samples is None else reg.samples.nbytes
                for counts in reg.counts:
                    size += 16 * len(counts)
                    if size > offload.INLINE_BYTES:
                        return False
        else:
            size += 16 * pub.expectation_values.size
        if size > offload.INLINE_BYTES:
            return False
    return True


def _charged_seconds(reported: float | None, running: RunningJob) -> float | None:
    """A job's execution time (a runner's report, or the time a simulator's worker took), as
    charged: None when it is not a finite amount >= 0, and at most the limit that stops the
    run, which its quota hold assumed (a provider reporting more is not believed)."""
    seconds = pricing.reported(reported)
    if seconds is None or running.run_limit_s is None:
        return seconds
    return min(seconds, running.run_limit_s)
