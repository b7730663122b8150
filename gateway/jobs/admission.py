"""Admission: may this job be accepted, where does it run, is it a retry, and is it ready.

Policy (the backends a caller may use) answers NOT_FOUND for a backend the caller may not see;
placement picks the backend or its fallback by breaker state; dedup finds an earlier job of the
same request_id; prepare compiles every PUB in compile workers and assembles the job. A job is
written QUEUED and committed before it is queued and before the reply.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import secrets
import time
import uuid
from collections.abc import Callable, Container, Mapping
from typing import Protocol

from gateway.backends.base import BackendAdapter, PreparedJob
from gateway.domain import audit, pricing, queue_share
from gateway.domain.circuits import CircuitSource, circuit_field
from gateway.domain.errors import (
    BACKEND_RESOURCE,
    GatewayError,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    QuotaViolation,
    ResourceExhausted,
    ResourceInfo,
    Unavailable,
)
from gateway.domain.jobs import Job, JobSpec, JobState
from gateway.jobs.backend import BackendRuntime
from gateway.jobs.transitions import Transitions
from gateway.runtime.breaker import BreakerState
from gateway.runtime.fair_share import FairShare
from gateway.security.policies import PolicyBook
from gateway.store.base import CreateOutcome, NewJob, QuotaCharge, Store, request_id_reused
from gateway.telemetry import active as telemetry


class CompileStep(Protocol):
    """Compiles one client circuit for a backend, in compile workers under their limits, with
    a cache by content (gateway.runtime.compiler.Compiler)."""

    async def compile(
        self,
        tenant: str,
        backend: str,
        adapter: BackendAdapter,
        source: CircuitSource,
        field: str,
    ) -> object: ...


class Admission:
    def __init__(
        self,
        store: Store,
        backends: Mapping[str, BackendRuntime],
        compiler: CompileStep,
        transitions: Transitions,
        draining: asyncio.Event,
        *,
        prepare_threads: int,
        policies: PolicyBook | None = None,
    ) -> None:
        self._store = store
        self._backends = backends
        self._compiler = compiler
        self._transitions = transitions
        self._draining = draining
        # Shared fairly: first come first served, one tenant's burst of large sweeps queued
        # every other tenant's prepare behind all of it.
        self._prepares = FairShare(prepare_threads)
        self._policies = policies if policies is not None else PolicyBook()
        # By (tenant, request_id): the submission of that request in progress here.
        self._creating: dict[tuple[str, str], _Twin] = {}

    def check_allowed(self, tenant: str, backend: str, field: str = "spec.backend") -> None:
        """NOT_FOUND for a backend that does not exist or is outside the tenant's policy, the
        same answer for both: a tenant naming another's private backend learned it existed."""
        runtime = self._backends.get(backend)
        policy = self._policies.policy(tenant)
        if runtime is None or not policy.allows(backend, runtime.info.kind):
            raise _backend_not_found(backend, field)

    def _check_policy(self, tenant: str, spec: JobSpec) -> None:
        self.check_allowed(tenant, spec.backend)
        if spec.options.fallback_backend:
            self.check_allowed(
                tenant, spec.options.fallback_backend, "spec.options.fallback_backend"
            )

    def _check_job(self, tenant: str, spec: JobSpec, backend: str, prepared: PreparedJob) -> None:
        """The policy's backends and per-job limits on the job prepared for `backend` (qubits
        per circuit: those it acts on). The backends are asked again: a backend
        an administrator removed while the job compiled was admitted, though its limits
        followed the new policy."""
        self._check_policy(tenant, spec)
        self._policies.check_job(tenant, backend, prepared.qubits, prepared.shots)

    def _charge(self, tenant: str, runtime: BackendRuntime, prepared: PreparedJob) -> QuotaCharge:
        """What the job holds against its tenant's quota in the current period."""
        policy = self._policies.policy(tenant)
        period = policy.period(self._transitions.clock())
        quota = policy.quota
        unit = quota.cost_unit if quota is not None else ""
        estimated = pricing.estimate(runtime.settings.price, prepared.shots, prepared.tasks)
        estimate = estimated.cost
        # A zero price table charges nothing: a tenant whose quota is spent may still use it.
        priced = (
            estimate is not None
            and estimate.unit == unit
            and (estimate.amount > 0 or estimated.per_second_excluded)
        )
        cost = estimate.amount if estimate is not None and priced else 0.0
        price = runtime.settings.price
        if priced and price is not None and price.per_second > 0:
            # Held at the most its run can be charged (it is stopped at its run-time limit):
            # held at 0, every job of a tenant with anything left of its quota was admitted,
            # and a few hundred hour-long jobs could spend far past it before one settled.
            limit = runtime.settings.max_run_time_s
            if prepared.max_run_time_s is not None:
                limit = min(limit, prepared.max_run_time_s)
            cost += price.per_second * limit
        return QuotaCharge(
            period_start=period.start,
            period_end=period.end,
            shots=prepared.shots,
            cost=cost,
            cost_unit=unit,
            priced=priced,
            max_shots=None if quota is None else quota.shots,
            max_cost=None if quota is None else quota.cost,
            max_queued_jobs=policy.max_queued_jobs,
        )

    def runtime(
        self, backend: str, field: str = "spec.backend", visible: Container[str] | None = None
    ) -> BackendRuntime:
        """The backend named `backend`; NOT_FOUND when it does not exist, or when `visible` (the
        backends the caller may use) leaves it out: a caller cannot tell the two apart."""
        runtime = self._backends.get(backend)
        if runtime is None or (visible is not None and backend not in visible):
            raise _backend_not_found(backend, field)
        return runtime

    def _placement(self, spec: JobSpec) -> BackendRuntime:
        runtime = self.runtime(spec.backend)
        fallback_name = spec.options.fallback_backend
        fallback = (
            self.runtime(fallback_name, "spec.options.fallback_backend") if fallback_name else None
        )
        # A half-open backend whose one trial is out, or whose probe fails, would hold the job
        # until the trial ends and then perhaps make it the next trial (failing it): a job
        # that names a fallback taking jobs runs there instead.
        if fallback is not None and not _taking_jobs(runtime) and _taking_jobs(fallback):
            return fallback
        if _usable(runtime):
            return runtime
        if fallback is not None and _usable(fallback):
            return fallback
        if runtime.target_pending:
            raise runtime.target_pending_error()
        raise _breaker_open(runtime, fallback)

    async def _admit(self, tenant: str, spec: JobSpec, runtime: BackendRuntime) -> _Place:
        """The job's place on `runtime`, the backend it will queue on, or an admission
        refusal."""
        if self._draining.is_set():
            raise Unavailable(
                "DRAINING",
                "the gateway is shutting down and accepts no new jobs; nothing was accepted, "
                "retry (another replica or after the restart)",
                retry_after=1.0,
            )
        limit = runtime.info.limits.max_queued_jobs
        depth = await runtime.queue.depth() + runtime.admitting.total()
        if depth >= limit:
            raise _queue_full(
                runtime.name,
                f"has {depth} queued jobs, its limit of {limit}",
                {"queuedJobs": str(depth), "limit": str(limit)},
                "queued jobs at the limit",
            )
        # Taken with no await since the check (see BackendRuntime.admitting); the share check
        # below awaits, and concurrent submissions must see this one.
        place = _Place(runtime, tenant)
        if 2 * depth >= limit:
            try:
                await self._check_share(runtime, tenant, depth)
            except BaseException:
                place.release()
                raise
        return place

    async def _check_share(self, runtime: BackendRuntime, tenant: str, depth: int) -> None:
        """QUEUE_FULL when the tenant has its share of the backend's queue waiting
        (gateway.domain.queue_share), counting its submissions being admitted but this one."""
        limit = runtime.info.limits.max_queued_jobs
        waiting = await runtime.queue.waiting_by_tenant()
        for admitting, count in runtime.admitting.items():
            waiting[admitting] = waiting.get(admitting, 0) + count - (admitting == tenant)
        if not waiting.get(tenant):
            waiting.pop(tenant, None)
        share = queue_share.over_share(limit, depth, waiting, tenant)
        if share is None:
            return
        own = waiting[tenant]
        raise _queue_full(
            runtime.name,
            f"is over half full ({depth} of {limit} queued jobs) and this tenant has {own} of "
            f"them waiting, its share being {share} while {len(waiting) - 1} other tenants "
            "have jobs waiting",
            {
                "queuedJobs": str(depth),
                "limit": str(limit),
                "tenantQueuedJobs": str(own),
                "tenantShare": str(share),
            },
            "this tenant's share of the queued jobs",
        )

    async def submit(
        self, tenant: str, request_id: str, spec: JobSpec, spec_bytes: bytes, digest: bytes
    ) -> CreateOutcome:
        """Admits, prepares and durably queues a job. `digest` is the canonical request digest
        (gateway.api.request_digest); the caller looked the request_id up before validating
        (find_request). A concurrent request with the same request_id may still have created
        the job meanwhile: the store deduplicates atomically, and the outcome says which.

        The tenant's policy is asked first (backends allowed), then after prepare (per-job
        limits); its quota and queued-job limit are checked and reserved by the store in the
        transaction that creates the job."""
        self._check_policy(tenant, spec)
        key = (tenant, request_id)
        # A twin being created now: a refusal waits for its create before looking it up.
        earlier = self._creating.get(key) if request_id else None
        before = None if earlier is None else earlier.answered
        try:
            placed = self._placement(spec)
            try:
                place = await self._admit(tenant, spec, placed)
            except ResourceExhausted:
                # A fallback preferred to a half-open backend's trial, its queue full: the
                # backend, as for a job naming no fallback.
                backend = self.runtime(spec.backend)
                if placed is backend or not _usable(backend):
                    raise
                place = await self._admit(tenant, spec, backend)
        except (Unavailable, ResourceExhausted) as refused:
            return await self._twin_or_raise(tenant, request_id, digest, refused, before)
        runtime = place.runtime
        # A stand-in started before its commit and then refused is taken back from its
        # worker, which for a simulator is a worker kill and respawn: a tenant over its
        # limits, or a client sending twins of one request_id at once, would keep every
        # tenant's workers restarting. Those jobs are queued only once created, a twin after
        # the first one's create has answered (the store then gives it that job). Registered
        # before preparing: the first twin's prepare may end after the second's. Looked up
        # again: a twin may have started during the admission's awaits.
        twin = self._creating.get(key) if request_id else None
        first = None if twin is None else twin.answered
        mine = None
        if request_id and twin is None:
            mine = self._creating[key] = _Twin()
        try:
            try:
                return await self._queue(
                    runtime, place, first, mine, tenant, request_id, spec, spec_bytes, digest
                )
            except _FallbackRefused as fallback:
                place.release()
                try:
                    place = await self._after_fallback_refused(tenant, spec, runtime, fallback)
                except (Unavailable, ResourceExhausted) as refused:
                    return await self._twin_or_raise(tenant, request_id, digest, refused, first)
            return await self._queue(
                place.runtime, place, first, mine, tenant, request_id, spec, spec_bytes, digest
            )
        finally:
            place.release()
            if mine is not None:
                self._answer_twins(key, mine)

    async def _twin_or_raise(
        self,
        tenant: str,
        request_id: str,
        digest: bytes,
        refused: GatewayError,
        first: asyncio.Future[None] | None,
    ) -> CreateOutcome:
        """A submission `refused` at admission: a concurrent twin may have been accepted since
        the caller's lookup, and it gets its job back even while the backend refuses new work
        (nothing new is accepted); else the refusal stands. `first`: the twin being created,
        whose create is awaited before the lookup."""
        if first is not None:
            await asyncio.shield(first)
        existing = await self.find_request(tenant, request_id, digest)
        if existing is None:
            raise refused
        return CreateOutcome(existing, created=False)

    async def _after_fallback_refused(
        self, tenant: str, spec: JobSpec, fallback: BackendRuntime, refused: _FallbackRefused
    ) -> _Place:
        """The place of a job its fallback cannot run (fewer qubits, a gate it lacks): on its
        own backend when that takes jobs at all (half-open: the fallback was only preferred
        to waiting behind the trial), as if it had named no fallback. Else the backend's
        refusal: its breaker's BACKEND_UNAVAILABLE if it could run the job (compiled for it,
        so the retry finds it cached), its own refusal if the request is at fault there too.
        """
        runtime = self.runtime(spec.backend)
        if _usable(runtime):
            return await self._admit(tenant, spec, runtime)
        seed = spec.options.seed if spec.options.seed is not None else 0
        prepared = await self.prepare(runtime, tenant, spec, seed)
        self._check_job(tenant, spec, runtime.name, prepared)
        raise _fallback_refused(runtime, fallback, refused.error)

    def _answer_twins(self, key: tuple[str, str], mine: _Twin) -> None:
        """Lets the twins of a submission go on once its create has answered: at once if it
        started none, else when the create ends, which runs on after a caller that went away
        (a client's deadline). Its retry, let go before, found no job yet and started a
        stand-in that the store's answer then took back from its worker."""

        def answered(_: object = None) -> None:
            mine.answered.set_result(None)
            del self._creating[key]

        if mine.create is None or mine.create.done():
            answered()
        else:
            mine.create.add_done_callback(answered)

    async def _queue(
        self,
        runtime: BackendRuntime,
        place: _Place,
        first: asyncio.Future[None] | None,
        mine: _Twin | None,
        tenant: str,
        request_id: str,
        spec: JobSpec,
        spec_bytes: bytes,
        digest: bytes,
    ) -> CreateOutcome:
        """Prepares the admitted job, then creates and queues it (a twin of a request_id
        being created, `first`, once that create has answered)."""
        seed = spec.options.seed if spec.options.seed is not None else secrets.randbits(63)
        try:
            prepared = await self.prepare(runtime, tenant, spec, seed)
        except InvalidArgument as refused:
            if runtime.name == spec.backend:
                raise
            raise _FallbackRefused(refused) from None
        audit.note(shots=prepared.shots)  # for the submission's audit record (issue 11)
        try:
            self._check_job(tenant, spec, runtime.name, prepared)
        except PermissionDenied as refused:
            # Over the tenant's per-job limits as the fallback prepared it (its own
            # default_shots): a job its backend may run was refused for good ("repeating
            # cannot help"), and naming a fallback was worse than naming none. The fallback
            # cannot run it, as for a circuit it cannot compile.
            if runtime.name == spec.backend:
                raise
            raise _FallbackRefused(refused) from None
        new = NewJob(
            id=uuid.uuid4().hex,
            tenant=tenant,
            request_id=request_id,
            request_hash=digest,
            backend=spec.backend,
            placement=runtime.name,
            spec=spec_bytes,
            num_pubs=len(spec.pubs),
            seed=seed,
            created_at=self._transitions.clock(),
            labels=spec.labels,
            sampler_output=spec.options.sampler_output,
            session=spec.session,
            charge=self._charge(tenant, runtime, prepared),
            trace_context=telemetry.job_traceparent(),
        )
        queue = runtime.queue
        limited = new.charge is not None and new.charge.limited
        try:
            if first is not None:
                await asyncio.shield(first)
            # A retry of a request whose job exists (found on the loop's own read connection,
            # in microseconds) starts nothing: a stand-in started first ran the circuit again
            # and was then taken back from its worker, a kill and a respawn per retry, a cheap
            # way to cost every tenant. It goes the commit-first way, where the store finds
            # the job and commits the call's audit record with it.
            before_commit = (
                queue.queues_before_commit
                and not limited
                and first is None
                and await self.find_request(tenant, request_id, digest) is None
            )
        except BaseException:
            # The RPC's context was kept for this job (job_traceparent) until its create is
            # heard of; a request refused here (REQUEST_ID_REUSED, a caller gone) has none,
            # and any client could fill that memory with them.
            telemetry.job_not_created(new.trace_context)
            raise
        if before_commit:
            return await self._start_before_commit(runtime, place, new, prepared, mine)
        # Shielded as in _start_before_commit: the store commits a create whose caller went
        # away (a client's deadline), and that job must then be queued, or it stayed QUEUED in
        # no queue, holding its quota reservation and queued-job count, until a restart.
        creating = self._start_create(new, mine)
        try:
            outcome = await asyncio.shield(creating)
        except asyncio.CancelledError:
            creating.add_done_callback(_queue_if_created(runtime, prepared))
            raise
        except ResourceExhausted as refused:
            # The tenant's quota refused the job as priced on its fallback (another price, its
            # own default_shots): refused COST_QUOTA_EXCEEDED until the period's end, naming a
            # fallback was worse than naming none. The backend answers for itself: queued there
            # while it is half-open (it may still fit), its retryable BACKEND_UNAVAILABLE while
            # it is open (a tenant's queued-job limit refuses it there too).
            if runtime.name != spec.backend:
                raise _FallbackRefused(refused) from None
            raise
        if outcome.created:
            await _queue_created(runtime, outcome.job, prepared)
            place.release()
        return outcome

    async def _start_before_commit(
        self,
        runtime: BackendRuntime,
        place: _Place,
        new: NewJob,
        prepared: PreparedJob,
        mine: _Twin | None,
    ) -> CreateOutcome:
        queue = runtime.queue
        # The job starts while its QUEUED commit is in flight; the answer still waits for
        # that commit. If the store creates nothing (an earlier job of this request_id, a
        # quota or queue limit reached), the stand-in is taken back: never claimed, or, if
        # already running, stopped (a refused request must not keep a worker busy).
        creating = self._start_create(new, mine)
        await queue.put(_queued(new), prepared)
        place.release()  # the queue counts it now
        runtime.wake.set()
        try:
            # Shielded: the store commits a write whose caller was cancelled anyway, so the
            # create must not be cancelled with the call (a client's deadline): taking the
            # stand-in back then left the committed job QUEUED in the store but in no queue,
            # holding its quota reservation and queued-job count, never run (a retry with its
            # request_id got it back, stuck) until a restart.
            outcome = await asyncio.shield(creating)
        except asyncio.CancelledError:
            creating.add_done_callback(_take_back_unless_created(runtime, new))
            raise
        except BaseException:
            await _take_back(runtime, new)
            raise
        if not outcome.created:
            await _take_back(runtime, new)
        return outcome

    async def validate(self, tenant: str, spec: JobSpec) -> pricing.CostEstimate:
        """SubmitJob's validate_only (AIP-163): the checks a submission passes (the backend,
        every circuit compiled, every limit) and the job's estimated cost; nothing is created
        or queued. The backend's momentary state (breaker, queue depth, draining) is not part
        of the verdict: it says nothing about the request; nor is the tenant's period quota,
        which validation neither checks nor reserves. Its policy's backends and per-job limits
        are."""
        self._check_policy(tenant, spec)
        runtime = self.runtime(spec.backend)
        seed = spec.options.seed if spec.options.seed is not None else 0
        prepared = await self.prepare(runtime, tenant, spec, seed)
        self._check_job(tenant, spec, runtime.name, prepared)
        return pricing.estimate(runtime.settings.price, prepared.shots, prepared.tasks)

    def _start_create(self, new: NewJob, mine: _Twin | None) -> asyncio.Future[CreateOutcome]:
        creating = asyncio.ensure_future(self._create(new))
        if mine is not None:
            mine.create = creating
        return creating

    async def _create(self, new: NewJob) -> CreateOutcome:
        try:
            outcome = await self._store.create_job(new)
        except BaseException:
            telemetry.job_not_created(new.trace_context)
            raise
        # Published here, one step after the commit like RUNNING's publication, so watchers
        # and hooks hear QUEUED before RUNNING even when both commit in one batch.
        if outcome.created:
            self._transitions.committed(outcome.job, None)
        else:
            telemetry.job_not_created(new.trace_context)
        return outcome

    async def find_request(self, tenant: str, request_id: str, digest: bytes) -> Job | None:
        """The job an earlier request with this request_id created within the dedup window, if
        its digest is `digest`; None if there is none (or request_id is empty).

        Raises:
            InvalidArgument: reason REQUEST_ID_REUSED, when the earlier request was different.
        """
        if not request_id:
            return None
        found = await self._store.find_request(tenant, request_id, self._transitions.clock())
        if found is None:
            return None
        job, existing_digest = found
        if existing_digest != digest:
            raise request_id_reused(request_id, job.id)
        return job

    async def prepare(
        self, runtime: BackendRuntime, tenant: str, spec: JobSpec, seed: int
    ) -> PreparedJob:
        """Compiles every PUB's circuit in compile workers, then assembles the job."""
        if runtime.target_pending:  # validate_only, which has no placement
            raise runtime.target_pending_error()
        started = time.perf_counter()
        adapter = runtime.adapter
        # Bounded in size and depth at the API edge; what the keys mean is the backend's (its
        # schema refuses unknown keys), checked before any compile is paid for.
        adapter.validate_provider_options(
            spec.options.provider_options, "spec.options.provider_options"
        )
        circuits = []
        for index, pub in enumerate(spec.pubs):
            field = circuit_field(index, pub)
            circuits.append(
                await self._compiler.compile(tenant, runtime.name, adapter, pub.circuit, field)
            )
        if adapter.prepare_is_cheap(spec):
            prepared = adapter.prepare(spec, seed, circuits)
        else:
            prepared = await self._prepares.run_blocking(
                tenant, functools.partial(adapter.prepare, spec, seed, circuits)
            )
        return dataclasses.replace(
            prepared,
            prepare_seconds=time.perf_counter() - started,
            # Part of the stored spec, so a re-queued job keeps its limit after a restart.
            max_run_time_s=spec.options.max_execution_time_s,
        )


# Stand-ins being taken back, and jobs being queued, after their caller went away (a reference
# keeps each task alive).
_detached: set[asyncio.Future[None]] = set()


async def _take_back(runtime: BackendRuntime, new: NewJob) -> None:
    """A stand-in whose job the store did not create: out of the queue, or stopped if it
    already runs (its end then finds no job to write)."""
    if await runtime.queue.remove(new.id, new.tenant):
        return
    running = runtime.running.get(new.id)
    if running is not None:
        running.request_cancel()


def _take_back_unless_created(
    runtime: BackendRuntime, new: NewJob
) -> Callable[[asyncio.Future[CreateOutcome]], None]:
    """For a create whose caller went away: the stand-in stays queued if the job was
    created, and is taken back otherwise."""

    def done(creating: asyncio.Future[CreateOutcome]) -> None:
        if not creating.cancelled() and creating.exception() is None and creating.result().created:
            return
        removing = asyncio.ensure_future(_take_back(runtime, new))
        _detached.add(removing)
        removing.add_done_callback(_detached.discard)

    return done


async def _queue_created(runtime: BackendRuntime, job: Job, prepared: PreparedJob) -> None:
    await runtime.queue.put(job, prepared)
    runtime.wake.set()


def _queue_if_created(
    runtime: BackendRuntime, prepared: PreparedJob
) -> Callable[[asyncio.Future[CreateOutcome]], None]:
    """For a create (committed before queueing) whose caller went away: its job is queued
    if the store created it."""

    def done(creating: asyncio.Future[CreateOutcome]) -> None:
        if creating.cancelled() or creating.exception() is not None:
            return
        outcome = creating.result()
        if outcome.created:
            queueing = asyncio.ensure_future(_queue_created(runtime, outcome.job, prepared))
            _detached.add(queueing)
            queueing.add_done_callback(_detached.discard)

    return done


class _Twin:
    """A submission of a request_id in progress: its twins (the same request_id at once, a
    retry after its caller went away) wait until its create has answered, then find its job."""

    def __init__(self) -> None:
        self.answered: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.create: asyncio.Future[CreateOutcome] | None = None


class _Place:
    """A submission's place in its backend's queue-depth count (BackendRuntime.admitting),
    from the depth check until the queue holds the job or the submission ends."""

    def __init__(self, runtime: BackendRuntime, tenant: str) -> None:
        self.runtime = runtime
        self._tenant = tenant
        self._held = True
        runtime.admitting[tenant] += 1

    def release(self) -> None:
        if self._held:
            admitting = self.runtime.admitting
            admitting[self._tenant] -= 1
            if not admitting[self._tenant]:
                del admitting[self._tenant]
            self._held = False


def _queue_full(
    backend: str, why: str, metadata: dict[str, str], violation: str
) -> ResourceExhausted:
    """QUEUE_FULL: the backend's queue is at its limit, or at this tenant's share of it
    (gateway.domain.queue_share)."""
    name = f"backends/{backend}"
    return ResourceExhausted(
        "QUEUE_FULL",
        f"backend {name} {why}; nothing was accepted, retry later",
        metadata={"backend": name, **metadata},
        quota_violations=[QuotaViolation(name, violation)],
        retry_after=1.0,
    )


def _queued(new: NewJob) -> Job:
    """The job as the store will hold it once created: QUEUED, never started."""
    return Job(
        id=new.id,
        tenant=new.tenant,
        request_id=new.request_id,
        backend=new.backend,
        state=JobState.QUEUED,
        created_at=new.created_at,
        num_pubs=new.num_pubs,
        seed=new.seed,
        placement=new.placement,
        updated_at=new.created_at,
        labels=new.labels,
        sampler_output=new.sampler_output,
        session=new.session,
        trace_context=new.trace_context,
    )


def _backend_not_found(backend: str, field: str) -> NotFound:
    name = f"backends/{backend}"
    return NotFound(
        "BACKEND_NOT_FOUND",
        f"backend {name} does not exist",
        metadata={"backend": name},
        resource_info=ResourceInfo(BACKEND_RESOURCE, name, f"named by {field}"),
    )


def _usable(runtime: BackendRuntime) -> bool:
    return runtime.breaker.state is not BreakerState.OPEN and not runtime.target_pending


def _taking_jobs(runtime: BackendRuntime) -> bool:
    """Whether a job placed on the backend now starts once a slot is free: its breaker is
    closed, or half-open with no trial out and its health probe passing."""
    if runtime.target_pending:
        return False
    state = runtime.breaker.state
    if state is BreakerState.CLOSED:
        return True
    breaker = runtime.breaker
    return state is BreakerState.HALF_OPEN and not breaker.trial_running and runtime.health.serving


def _breaker_open(runtime: BackendRuntime, fallback: BackendRuntime | None) -> Unavailable:
    """The refusal of a job whose backend's breaker is open and whose fallback, if it named
    one, cannot take it either: the retry delay is the sooner of the two."""
    retry = runtime.breaker.retry_after()
    metadata = {"backend": f"backends/{runtime.name}", "breakerState": "OPEN"}
    if fallback is None:
        advice = "or name a fallback_backend"
    else:
        fallback_retry = (
            fallback.settings.health_interval_s
            if fallback.target_pending
            else fallback.breaker.retry_after()
        )
        retry = min(retry, fallback_retry)
        why = "not described by its provider yet" if fallback.target_pending else "failing too"
        advice = f"its fallback backends/{fallback.name} is {why}"
        metadata["fallbackBackend"] = f"backends/{fallback.name}"
        metadata["fallbackBreakerState"] = fallback.breaker.state.value
    metadata["retryDelaySeconds"] = f"{retry:.1f}"
    return Unavailable(
        "BACKEND_UNAVAILABLE",
        f"backend backends/{runtime.name} is failing (circuit breaker OPEN); nothing was "
        f"accepted, retry in {retry:.1f}s ({advice})",
        metadata=metadata,
        retry_after=retry,
    )


class _FallbackRefused(Exception):
    """The fallback a job was placed on cannot run it (its compiler refused the job, or the
    tenant's per-job limits or quota refused it as prepared and priced there)."""

    def __init__(self, error: GatewayError) -> None:
        super().__init__(error.message)
        self.error = error


def _fallback_refused(
    runtime: BackendRuntime, fallback: BackendRuntime, refused: GatewayError
) -> Unavailable:
    """A job whose backend's breaker is open and could run it, and whose fallback cannot: the
    backend may take it once the breaker closes, so the answer is its retryable
    unavailability, not the fallback's refusal of a request that is fine as sent."""
    retry = runtime.breaker.retry_after()
    return Unavailable(
        "BACKEND_UNAVAILABLE",
        f"backend backends/{runtime.name} is failing (circuit breaker OPEN) and its fallback "
        f"backends/{fallback.name} cannot run this job ({refused.reason}: {refused.message}); "
        f"nothing was accepted, retry in {retry:.1f}s",
        metadata={
            "backend": f"backends/{runtime.name}",
            "breakerState": "OPEN",
            "fallbackBackend": f"backends/{fallback.name}",
            "fallbackReason": refused.reason,
            "retryDelaySeconds": f"{retry:.1f}",
        },
        retry_after=retry,
    )
