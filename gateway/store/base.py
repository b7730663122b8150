"""The Store protocol. Every state change of a job is one committed transaction.

A write that has been called runs to its end even if the awaiting caller is cancelled (it is
queued before the call's first await): the job core relies on it to write a final state it has
decided while the gateway closes.

Specs and results are stored as opaque bytes (serialised qgateway.v1 JobSpec / JobResult), so
the store never needs to understand them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from gateway.domain.api_keys import ApiKeyPage, ApiKeyRecord
from gateway.domain.audit import AuditFilter, AuditPage, AuditRecord, ChainPoint
from gateway.domain.errors import FieldViolation, InvalidArgument
from gateway.domain.job_filter import JobFilter
from gateway.domain.jobs import (
    ExecutionInfo,
    Job,
    JobError,
    JobState,
    JobTimings,
    SamplerOutput,
)
from gateway.domain.pricing import Totals
from gateway.domain.sessions import Session

# A repeated request_id is recognised for this long; after it, the id may name a new job.
REQUEST_ID_DEDUP_WINDOW_S = 7 * 24 * 3600


def request_id_reused(request_id: str, job_id: str) -> InvalidArgument:
    """The error for a request_id that names a job with a different payload."""
    return InvalidArgument(
        "REQUEST_ID_REUSED",
        f"request_id {request_id!r} was already used for job jobs/{job_id} with a different "
        "request",
        metadata={"job": f"jobs/{job_id}", "requestId": request_id},
        field_violations=[
            FieldViolation("request_id", "already used for another request; use a new request_id")
        ],
    )


@dataclass(frozen=True)
class QuotaCharge:
    """What admitting a job holds against its tenant's quota (issue 11): reserved in the
    transaction that creates the job, settled (what it used) or released in the one that ends
    it, exactly once (a ledger row per job id).

    Attributes:
        period_start, period_end: The quota period the job is charged to (the one it was
            admitted in, also when it finishes in a later one).
        shots: Shots it will run.
        cost: Its estimated cost in `cost_unit` (0 when not priced in that unit).
        cost_unit: The unit of the tenant's cost quota ("" without one).
        priced: The backend charges in `cost_unit`. Its estimate may be 0 (a per-second price
            is known only after the run), yet once the quota is spent such a job is refused.
        max_shots, max_cost: The period's quota; None: not limited (still counted).
        max_queued_jobs: The tenant's limit of QUEUED jobs over all backends; None: none.
    """

    period_start: datetime
    period_end: datetime
    shots: int
    cost: float = 0.0
    cost_unit: str = ""
    priced: bool = False
    max_shots: int | None = None
    max_cost: float | None = None
    max_queued_jobs: int | None = None

    @property
    def limited(self) -> bool:
        """Whether the store may refuse the job for its tenant's quota or queued-job limit."""
        return (
            self.max_shots is not None
            or self.max_cost is not None
            or self.max_queued_jobs is not None
        )


@dataclass(frozen=True)
class Recovered:
    """What Store.recover found and changed. The caller publishes the changes (watchers and
    lifecycle hooks hear of them as of any other committed transition).

    Attributes:
        jobs: Every non-final job, oldest first (create time, then id).
        cancelled: The jobs it moved CANCELLING -> CANCELLED, oldest first (final: not in
            `jobs`).
        requeued: The jobs it moved RUNNING -> QUEUED, oldest first (also in `jobs`).
    """

    jobs: Sequence[Job] = ()
    cancelled: Sequence[Job] = ()
    requeued: Sequence[Job] = ()


@dataclass(frozen=True)
class StoredTenant:
    """A tenant created through AdminService; its policy is JSON the security layer reads
    (gateway.security.tenant_policy), opaque to the store."""

    id: str
    display_name: str
    policy_json: str
    etag: str
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class TenantUsageRecord:
    """A tenant's quota figures for one period and what it holds now."""

    shots_used: int = 0
    shots_reserved: int = 0
    cost_used: float = 0.0
    cost_reserved: float = 0.0
    queued_jobs: int = 0
    open_sessions: int = 0


@dataclass(frozen=True)
class NewJob:
    id: str
    tenant: str
    request_id: str  # "" when the client gave none
    request_hash: bytes  # gateway.api.request_digest: SHA-256 of the canonical request
    backend: str
    spec: bytes
    num_pubs: int
    seed: int
    created_at: datetime
    # Where the job queues and runs, if not `backend` (a fallback backend).
    placement: str = ""
    # Validated labels (JobSpec.labels).
    labels: Mapping[str, str] = field(default_factory=dict)
    sampler_output: SamplerOutput = SamplerOutput.SAMPLES_AND_COUNTS
    # The session it runs in (bare id; "" for none).
    session: str = ""
    # Its tenant's quota charge, checked and reserved with the job (None: not counted).
    charge: QuotaCharge | None = None
    # The W3C traceparent it was created under (Job.trace_context; "" with tracing off).
    trace_context: str = ""


@dataclass(frozen=True)
class CreateOutcome:
    job: Job
    created: bool  # False: an earlier job with the same (tenant, request_id, hash) was returned


# Where a sweep of expired results stopped: the last job walked (its result expiry, its id).
ExpiryCursor = tuple[datetime, str]


@dataclass(frozen=True)
class JobCursor:
    """A position in a tenant's job list (newest first): the last job of a page. Made of that
    job's own fields, so a page token reveals nothing about other tenants' jobs."""

    created_at: datetime
    id: str


@dataclass(frozen=True)
class SessionPage:
    sessions: Sequence[Session]
    # Position after the last session of this page (its create time and id); None at the end.
    next_cursor: JobCursor | None


@dataclass(frozen=True)
class JobPage:
    jobs: Sequence[Job]
    # Position after the last job of this page, for the next page's `after`; None at the end.
    next_cursor: JobCursor | None


class Store(Protocol):
    async def open(self) -> None:
        """Creates or migrates the schema; must be called before anything else."""

    async def close(self) -> None: ...

    def on_write_unavailable(self, callback: Callable[[], None]) -> None:
        """Calls `callback`, on the calling event loop, each time a write fails
        STORE_UNAVAILABLE; one listener (readiness)."""

    async def probe_write(self) -> None:
        """Commits a write that changes nothing, durably like any other.

        Raises:
            StoreUnavailable: The store cannot write now.
        """

    async def create_job(self, new: NewJob) -> CreateOutcome:
        """Inserts a QUEUED job, durably, unless (tenant, request_id) already names one.

        A tenant's create times rise in commit order: the job's is `new.created_at` unless the
        tenant has a job created at or after it (committed first, though its clock was read
        later), then just after that one's. ListJobs pages by create time, so a job committed
        after a page was served is newer than everything on it.

        Raises:
            InvalidArgument: reason REQUEST_ID_REUSED, when the id names a job with another hash.
        """

    async def find_request(
        self, tenant: str, request_id: str, now: datetime
    ) -> tuple[Job, bytes] | None:
        """The job and request hash that (tenant, request_id) names within the dedup window."""

    async def get_job(self, job_id: str, tenant: str | None = None) -> Job | None:
        """The job, or None if absent or (when tenant is given) owned by another tenant."""

    async def list_jobs(
        self,
        tenant: str,
        *,
        filter: JobFilter | None = None,
        after: JobCursor | None = None,
        limit: int = 50,
    ) -> JobPage:
        """The tenant's jobs matching `filter` (None: all), newest first (create time, then id,
        both descending), starting after cursor `after`."""

    async def get_spec(self, job_id: str) -> bytes | None: ...

    async def reserved_shots(self, job_id: str) -> int | None:
        """The shots the job's quota reservation holds (QuotaCharge.shots: what its prepare
        counted when it was admitted), whether or not the reservation has ended; None when
        it has none."""

    async def get_result(self, job_id: str) -> bytes | None: ...

    async def get_result_within(
        self, job_id: str, max_bytes: int
    ) -> tuple[int, bytes | None] | None:
        """The stored result's size, and its bytes when they are at most `max_bytes` (a larger
        one is not read); None without one."""

    async def mark_submitting(
        self, job_id: str, at: datetime, *, holder: str | None = None
    ) -> Job | None:
        """QUEUED -> SUBMITTING (a REMOTE runner is about to hand the job to its provider);
        None from any other state, or when `holder` (the claim's owner, where the store is the
        queue) is given and does not hold the job's lease."""

    async def mark_queued_again(
        self, job_id: str, at: datetime, *, holder: str | None = None
    ) -> Job | None:
        """SUBMITTING with no remote id -> QUEUED (the provider refused the submit and
        created nothing: the job waits in the queue again); None otherwise, or when `holder`
        is given and does not hold its lease (as for mark_submitting)."""

    async def mark_running(
        self,
        job_id: str,
        started_at: datetime,
        remote_id: str | None = None,
        *,
        rerun: bool = False,
        holder: str | None = None,
    ) -> Job | None:
        """QUEUED or SUBMITTING -> RUNNING, incrementing attempts and storing the provider's
        `remote_id` in the same transaction; None otherwise. `rerun`: RUNNING -> RUNNING too, for
        the new holder of a lapsed claim whose job ran on a worker that is gone. `holder`: the
        claim's owner where the store is the queue; None (refused) unless it holds the job's
        lease: a holder whose lease lapsed while its write waited must not move a job another
        holder runs or the queue holds (that job was left RUNNING, claimed by nobody)."""

    async def mark_cancelling(self, job_id: str, at: datetime) -> Job | None:
        """QUEUED, SUBMITTING or RUNNING -> CANCELLING; None otherwise (CANCELLING included)."""

    async def record_remote_id(self, job_id: str, remote_id: str) -> Job | None:
        """Stores the provider's id of a CANCELLING job (cancelled while it was being
        submitted: the provider has it, and it must be stopped and accounted for); None
        when the job is not CANCELLING."""

    async def delete_result(self, job_id: str) -> bool:
        """Deletes a job's stored result (an expired one); False if there was none."""

    async def delete_expired_results(
        self, after: ExpiryCursor | None, until: datetime, limit: int
    ) -> tuple[int, int, ExpiryCursor | None]:
        """Deletes the stored results of up to `limit` jobs whose result expired after the
        cursor `after` (None: from the first) and by `until`, in (expiry, id) order; returns
        (results deleted, jobs walked, the cursor of the last job walked or None)."""

    async def delete_ended_jobs(self, until: datetime, limit: int) -> tuple[int, int]:
        """Deletes up to `limit` final jobs that ended by `until` (oldest end first), with
        their results and quota ledger rows, and up to `limit` ended sessions that ended by
        `until` and hold no job any more, with their cost totals; returns (jobs deleted,
        sessions deleted). A tenant's quota totals are kept."""

    async def finish_job(
        self,
        job_id: str,
        state: JobState,
        *,
        ended_at: datetime,
        error: JobError | None = None,
        execution: ExecutionInfo | None = None,
        timings: JobTimings | None = None,
        result: bytes | None = None,
        result_expires_at: datetime | None = None,
        started_at: datetime | None = None,
        holder: str | None = None,
    ) -> Job | None:
        """Moves a non-final job to a final state, storing its result in the same transaction.

        Every state change records the state entered in the job's state history and update
        time; `result_expires_at` (SUCCEEDED only) is when the result stops being kept.
        `started_at`: the job ran from then without its RUNNING state written; RUNNING is
        written first, in the same transaction, as mark_running(started_at) would have.

        Returns None (and changes nothing) when the job is already final, or when `holder`
        (the claim's owner) is given and does not hold its lease: a holder whose lease lapsed
        while its run went on must not end the job its new holder runs (as for mark_running).
        """

    async def recover(self, now: datetime) -> Recovered:
        """At the start of the only process using this store (in-memory queue): a job that
        had no remote id ran in a worker that is gone, so CANCELLING -> CANCELLED (never run
        again) and RUNNING -> QUEUED; jobs with a remote id (and SUBMITTING ones) keep their
        state for the runner to re-attach. Returns every non-final job, oldest first, and the
        jobs it cancelled and re-queued (their new records, for the caller to publish). Clears
        every claim lease."""

    # ---- the claim queue (gateway.jobs.claim_queue): claims are leases in the store, so
    # several gateway processes can share its queue. A claim is (owner, lease_expires_at) on a
    # non-final job; the job keeps its state. A lease is live while now < lease_expires_at and
    # lapsed (expired) from lease_expires_at on.

    async def claim_next(
        self, placement: str, owner: str, lease_expires_at: datetime, now: datetime
    ) -> Job | None:
        """Atomically leases the next claimable job of `placement` to `owner`, or None.

        Claimable: a QUEUED job with no claim, or any non-final job whose lease expired before
        `now` (its holder died; it comes back in the state it was left in, remote id
        included). Fair across tenants: the tenant holding the fewest live claims on
        `placement` first, then the tenant claimed from least recently on `placement` (this
        history survives an emptied queue), FIFO (create time, id) within a tenant; jobs whose
        lease lapsed go before fresh ones.
        """

    async def renew_claim(
        self, job_id: str, owner: str, lease_expires_at: datetime, now: datetime
    ) -> JobState | None:
        """Extends `owner`'s unexpired lease and returns the job's state (CANCELLING: another
        process accepted a cancel, the holder stops the job); None if the claim is not (or no
        longer) its."""

    async def end_claim(self, job_id: str, owner: str, *, requeue: bool = False) -> None:
        """Drops `owner`'s claim (no-op if not its). `requeue`: the job goes back unstarted and
        keeps its place (its create time orders it); a job no longer QUEUED (a lapsed one
        re-claimed, then given back) keeps its state and is handed out again as lapsed."""

    async def queued_jobs(self, placement: str) -> Sequence[tuple[str, str]]:
        """(job id, tenant) of the unclaimed QUEUED jobs of `placement`, oldest first."""

    async def queued_by_tenant(self, placement: str) -> dict[str, int]:
        """How many unclaimed QUEUED jobs `placement` has per tenant (tenants with none
        absent): queue depth and fair share, without listing the jobs."""

    async def claims_by_tenant(self, placement: str, now: datetime) -> dict[str, int]:
        """Live (unexpired) claims on `placement` per tenant."""

    async def next_lease_expiry(self, placement: str) -> datetime | None:
        """The earliest lease expiry among `placement`'s claimed non-final jobs."""

    # Added with the claim queue's implementation: what ClaimQueue needs beyond the above.

    async def claim_job(
        self, job_id: str, tenant: str, placement: str, owner: str, lease_expires_at: datetime
    ) -> Job | None:
        """Atomically leases one job to `owner` if it is an unclaimed QUEUED job of `tenant` on
        `placement` (CancelJob taking it out of a shared queue: no one else can claim it
        before it is finished); None otherwise. The tenant's claim history is not touched."""

    async def claim_expired(
        self, placement: str, owner: str, created_by: datetime, lease_expires_at: datetime
    ) -> Sequence[Job]:
        """Atomically leases to `owner` every unclaimed QUEUED job of `placement` created at or
        before `created_by` (their queue deadline has passed), oldest first, for the caller to
        fail. The tenants' claim history is not touched."""

    async def oldest_queued_at(self, placement: str) -> datetime | None:
        """The create time of `placement`'s oldest unclaimed QUEUED job (its queue deadline
        comes first), or None."""

    async def last_claims(self, placement: str) -> dict[str, int]:
        """Per tenant ever claimed from on `placement`, the ordinal of its latest claim there
        (larger: more recent): the tie-break claim_next uses, for queue-position estimates."""

    # ---- sessions (issue 10): gateway.jobs.sessions. A session's changing fields are written
    # whole by save_session; an ended session (CLOSED, FAILED) is never changed again.

    async def create_session(
        self, session: Session, request_hash: bytes, *, max_open: int | None = None
    ) -> tuple[Session, bool]:
        """Inserts a session unless (tenant, request_id) already names one created within
        REQUEST_ID_DEDUP_WINDOW_S before `session.created_at`: then that one and False (an
        older one gives the id up). Raises InvalidArgument REQUEST_ID_REUSED for a different
        request, and ResourceExhausted SESSION_LIMIT_REACHED when the tenant already has
        `max_open` open sessions (counted in the same transaction). A tenant's create times
        rise in commit order, as create_job's do."""

    async def find_session_request(
        self, tenant: str, request_id: str, now: datetime
    ) -> tuple[Session, bytes] | None:
        """The session (tenant, request_id) names within the dedup window before `now`, and its
        request hash, or None."""

    async def get_session(self, session_id: str, tenant: str | None = None) -> Session | None:
        """The session, or None if absent or (when tenant is given) another tenant's."""

    async def save_session(self, session: Session) -> Session | None:
        """Writes state, times, end reason and provider id; None when it had already ended."""

    async def list_sessions(
        self,
        tenant: str,
        *,
        filter: JobFilter | None = None,
        after: JobCursor | None = None,
        limit: int = 50,
    ) -> SessionPage:
        """The tenant's sessions matching `filter` (state values: SessionState names; fields
        state, backend, labels, create_time), newest first, after cursor `after`."""

    async def count_open_sessions(self, tenant: str) -> int:
        """How many of the tenant's sessions have not ended."""

    async def open_sessions(self) -> Sequence[Session]:
        """Every session that has not ended, oldest first."""

    async def session_totals(self, session_ids: Sequence[str]) -> dict[str, Totals]:
        """What each session's finished jobs used and cost (costs summed per unit), by id;
        every id asked for is in the answer (zero totals when nothing finished). Read on every
        GetSession and ListSessions: its cost must not grow with a session's job count (kept
        as jobs finish, not summed over them)."""
        ...

    async def session_jobs(self, session_id: str, *, include_final: bool = False) -> Sequence[Job]:
        """The session's jobs (non-final ones unless `include_final`), oldest first."""

    # ---- tenants and quota (issue 11): gateway.store.sqlite_tenants. create_job reserves a
    # job's QuotaCharge and finish_job (and recover, for a cancel it completes) settles it, in
    # their own transactions.

    async def create_tenant(self, tenant: StoredTenant) -> bool:
        """Inserts a tenant; False (nothing changed) when the id exists."""
        ...

    async def get_tenant(self, tenant_id: str) -> StoredTenant | None: ...

    async def list_tenants(
        self, *, after: str | None = None, limit: int = 50
    ) -> list[StoredTenant]:
        """Tenants by id, after `after`."""
        ...

    async def update_tenant(self, tenant: StoredTenant, expected_etag: str) -> StoredTenant | None:
        """Writes display name, policy, etag and update time if the stored etag is still
        `expected_etag` (compare and set); None when it is not (or the tenant is gone)."""
        ...

    async def tenant_usage(
        self, tenant: str, period_start: datetime, period_end: datetime, cost_unit: str = ""
    ) -> TenantUsageRecord:
        """The tenant's quota figures for the period, its QUEUED jobs and open sessions; cost
        in `cost_unit` only ("": in the unit the period's jobs were last charged in): a job
        charged in one unit never counts in another."""
        ...

    # ---- API keys (issue 11): gateway.security.api_keys. Only a key's hash is stored.

    async def create_api_key(
        self, key: ApiKeyRecord, *, max_unrevoked: int | None = None
    ) -> ApiKeyRecord:
        """Inserts a key; ResourceExhausted API_KEY_LIMIT_REACHED when its tenant already has
        `max_unrevoked` keys not revoked (counted in the same transaction)."""
        ...

    async def get_api_key(self, prefix: str) -> ApiKeyRecord | None:
        """The key with this prefix, whatever its state."""
        ...

    async def list_api_keys(
        self,
        tenant: str | None,
        *,
        active_at: datetime | None = None,
        after: tuple[str, str] | None = None,
        limit: int = 50,
    ) -> ApiKeyPage:
        """Keys by (tenant, prefix) after `after`; one tenant's or (None) every tenant's;
        with `active_at`, only keys neither revoked nor expired then."""
        ...

    async def revoke_api_key(self, prefix: str, at: datetime) -> ApiKeyRecord | None:
        """Revokes the key (a revoked key keeps its first revoke time); None if absent."""
        ...

    async def touch_api_keys(self, used: Mapping[str, datetime]) -> None:
        """Records last-used times in one transaction; a time never moves back."""
        ...

    # ---- the audit log (issue 11): gateway.domain.audit; records are chained (HMAC) by
    # the store as it inserts them, a mutating call's record in its effect's transaction.

    def enable_audit(self, key: bytes) -> None:
        """Turns record writing on with the chain's key (kept outside the database)."""
        ...

    async def append_audit(self, records: Sequence[AuditRecord]) -> ChainPoint:
        """Chains and commits records in one transaction; returns the new head."""
        ...

    async def audit_head(self) -> ChainPoint:
        """The newest record's sequence and MAC (the anchor's, or 0, when none is left)."""
        ...

    async def list_audit(
        self,
        *,
        tenant: str | None = None,
        query: AuditFilter | None = None,
        after: int = 0,
        limit: int = 100,
    ) -> AuditPage:
        """Records matching `query` (and `tenant` when given) by sequence, after `after`."""
        ...

    async def expire_audit(self, before: datetime, limit: int) -> int:
        """Deletes the oldest records that ended before `before`, at most `limit` of them
        (oldest first), keeping the chain verifiable (its anchor moves past them); returns
        how many."""
        ...
