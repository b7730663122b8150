"""Hand mutation review of the gRPC API layer: in-process checks of what the servicers copy,
refuse and bind, each one failing on a plausible wrong version of the code (a dropped check, a
field not copied, a bound off by one) that the other tests let pass."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest
from grpc_health.v1 import health_pb2
from qgateway.v1 import (
    admin_pb2,
    admin_service_pb2,
    job_pb2,
    job_service_pb2,
    session_pb2,
    session_service_pb2,
)

from gateway.api import job_service
from gateway.api.admin_service import AdminServicer
from gateway.api.backend_service import BackendServicer
from gateway.api.context import request_bytes
from gateway.api.health_service import HealthService
from gateway.api.job_filter import MAX_FILTER_CHARS
from gateway.api.job_service import RESULT_FRAMING_BYTES, JobServicer
from gateway.api.paging import PageTokens
from gateway.api.session_filter import parse_session_filter
from gateway.api.session_service import SessionServicer
from gateway.api.stream_budget import StreamBudget
from gateway.api.stream_pace import StreamPace
from gateway.domain.audit import AuditRecord
from gateway.domain.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    GatewayError,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    ResourceInfo,
)
from gateway.domain.job_filter import JobFilter
from gateway.domain.jobs import Job, JobSpec, JobState
from gateway.domain.pricing import Cost, CostEstimate, Totals
from gateway.domain.sessions import FailurePolicy, Session, SessionMode, SessionState
from gateway.domain.targets import BackendTarget
from gateway.interceptors import boundary, handlers
from gateway.interceptors.decode import DecodeInterceptor
from gateway.interceptors.request_reads import RequestReads
from gateway.jobs.events import WatchEvent
from gateway.security.principals import Principal, Role, current_principal
from gateway.store.base import CreateOutcome, JobCursor, JobPage, SessionPage
from gateway.store.sqlite import SqliteStore
from tests.rpc import ghz, sampler_spec

_T = TypeVar("_T")
T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
MAX_RESPONSE = 4096


class _Manager:
    """The JobManager as the servicer sees it, recording what it is asked."""

    def __init__(self, state: JobState = JobState.SUCCEEDED, result: bytes = b"") -> None:
        self.job = Job(
            id="j1",
            tenant="default",
            request_id="r1",
            backend="aer",
            state=state,
            created_at=T0,
            num_pubs=1,
            seed=1,
        )
        self.result_bytes = result
        self.created = True
        self.submitted: list[tuple[str, str, JobSpec]] = []
        self.validated: list[JobSpec] = []
        self.asked_within: list[int] = []
        self.listed: list[JobCursor | None] = []

    async def submit(
        self, tenant: str, request_id: str, spec: JobSpec, *args: Any, **kwargs: Any
    ) -> CreateOutcome:
        self.submitted.append((tenant, request_id, spec))
        return CreateOutcome(self.job, created=self.created)

    async def validate(self, tenant: str, spec: JobSpec) -> CostEstimate:
        self.validated.append(spec)
        return CostEstimate(shots=64, cost=Cost(1.5, "USD"), per_second_excluded=True)

    async def find_request(self, tenant: str, request_id: str, digest: bytes) -> Job | None:
        return None

    async def get(self, tenant: str, job_id: str) -> Job:
        return self.job

    async def wait(self, tenant: str, job_id: str, timeout: float | None) -> Job | None:
        return self.job

    async def result_within(self, job: Job, max_bytes: int) -> bytes | int:
        self.asked_within.append(max_bytes)
        data = self.result_bytes
        return data if len(data) <= max_bytes else len(data)

    async def watch(self, tenant: str, job_id: str) -> AsyncIterator[WatchEvent]:
        yield WatchEvent(self.job)
        yield WatchEvent(self.job, heartbeat=True)

    async def list(
        self, tenant: str, *, filter: JobFilter, after: JobCursor | None, limit: int
    ) -> JobPage:
        self.listed.append(after)
        return JobPage([self.job], JobCursor(self.job.created_at, self.job.id))


class _Sessions:
    """The SessionCore's admission side, recording what reaches it."""

    def __init__(self, manager: _Manager) -> None:
        self.manager = manager
        self.submitted: list[JobSpec] = []
        self.checked: list[JobSpec] = []

    async def submit(
        self, tenant: str, request_id: str, spec: JobSpec, *args: Any, **kwargs: Any
    ) -> CreateOutcome:
        self.submitted.append(spec)
        return CreateOutcome(self.manager.job, created=True)

    async def check_accepts(self, tenant: str, spec: JobSpec) -> None:
        self.checked.append(spec)


class _Context:
    def time_remaining(self) -> float:
        return 30.0


def _servicer(manager: _Manager, sessions: _Sessions | None = None) -> JobServicer:
    return JobServicer(
        manager,  # type: ignore[arg-type]
        MAX_RESPONSE,
        page_tokens=PageTokens(bytes(32)),
        sessions=sessions or _Sessions(manager),  # type: ignore[arg-type]
        stream_budget=StreamBudget(1 << 20, 1 << 20),
        stream_pace=StreamPace(1000),
    )


def _submit(servicer: JobServicer, request: job_service_pb2.SubmitJobRequest) -> Any:
    return asyncio.run(servicer.SubmitJob(request, _Context()))


def _result(sample_bytes: int) -> job_pb2.JobResult:
    result = job_pb2.JobResult()
    register = result.pub_results.add().sampler.registers.add(name="c", num_bits=8)
    register.samples = bytes(sample_bytes)
    return result


# --- JobService ---------------------------------------------------------------------------


def test_a_request_id_is_at_most_128_printable_ascii_characters() -> None:
    manager = _Manager()
    servicer = _servicer(manager)
    longest = "r" * job_service.MAX_REQUEST_ID_LENGTH
    spec = sampler_spec(ghz(2))
    _submit(servicer, job_service_pb2.SubmitJobRequest(request_id=longest, spec=spec))
    assert [r for _, r, _ in manager.submitted] == [longest]
    for bad in (longest + "r", "tab\there", "new\nline", "\x7f", "caf\u00e9"):
        with pytest.raises(InvalidArgument) as refused:
            _submit(servicer, job_service_pb2.SubmitJobRequest(request_id=bad, spec=spec))
        assert refused.value.reason == "INVALID_REQUEST_ID", bad
        assert [v.field for v in refused.value.field_violations] == ["request_id"]
    assert len(manager.submitted) == 1


@pytest.mark.parametrize("bad", ["r" * 129, "caf\u00e9\n"])
def test_validate_only_refuses_a_request_id_a_submission_would_refuse(bad: str) -> None:
    # "Errors are those a submission would get" (SubmitJobRequest.validate_only): it answered
    # an estimate for a request_id its submission then refused.
    servicer = _servicer(_Manager())
    request = job_service_pb2.SubmitJobRequest(
        request_id=bad, spec=sampler_spec(ghz(2)), validate_only=True
    )
    with pytest.raises(InvalidArgument) as refused:
        _submit(servicer, request)
    assert refused.value.reason == "INVALID_REQUEST_ID"


def test_validate_only_refuses_a_request_id_used_for_another_request() -> None:
    # A submission with a request_id an earlier, different request used is REQUEST_ID_REUSED;
    # validate_only answered an estimate for it. It asks the same lookup, with the digest a
    # submission of the same spec carries.
    asked: list[tuple[str, bytes]] = []
    submitted_digests: list[bytes] = []

    class Used(_Manager):
        async def find_request(self, tenant: str, request_id: str, digest: bytes) -> Job | None:
            asked.append((request_id, digest))
            if request_id == "used":
                raise InvalidArgument("REQUEST_ID_REUSED", "used for another request")
            return None

        async def submit(
            self, tenant: str, request_id: str, spec: JobSpec, *args: Any, **kwargs: Any
        ) -> CreateOutcome:
            submitted_digests.append(args[1])  # (spec_bytes, digest)
            return await super().submit(tenant, request_id, spec, *args, **kwargs)

    manager = Used()
    servicer = _servicer(manager)
    spec = sampler_spec(ghz(2))

    def validate(request_id: str) -> None:
        request = job_service_pb2.SubmitJobRequest(
            request_id=request_id, spec=spec, validate_only=True
        )
        _submit(servicer, request)

    with pytest.raises(InvalidArgument) as refused:
        validate("used")
    assert refused.value.reason == "REQUEST_ID_REUSED" and manager.validated == []
    validate("fresh")
    assert len(manager.validated) == 1
    _submit(servicer, job_service_pb2.SubmitJobRequest(request_id="fresh", spec=spec))
    assert [r for r, _ in asked] == ["used", "fresh"]
    assert {d for _, d in asked} == set(submitted_digests) and submitted_digests[0]


def test_a_job_naming_a_session_is_admitted_through_the_session_not_the_manager() -> None:
    manager = _Manager()
    sessions = _Sessions(manager)
    servicer = _servicer(manager, sessions)
    spec = sampler_spec(ghz(2))
    spec.session = "sessions/s1"
    _submit(servicer, job_service_pb2.SubmitJobRequest(request_id="r1", spec=spec))
    assert [s.session for s in sessions.submitted] == ["s1"] and manager.submitted == []
    # And without a session, the manager (never the session core).
    _submit(servicer, job_service_pb2.SubmitJobRequest(request_id="r2", spec=sampler_spec(ghz(2))))
    assert len(manager.submitted) == 1 and len(sessions.submitted) == 1


def test_validate_only_creates_nothing_checks_the_session_and_answers_the_estimate() -> None:
    manager = _Manager()
    sessions = _Sessions(manager)
    servicer = _servicer(manager, sessions)
    spec = sampler_spec(ghz(2))
    spec.session = "sessions/s1"
    response = _submit(
        servicer, job_service_pb2.SubmitJobRequest(request_id="r1", spec=spec, validate_only=True)
    )
    assert manager.submitted == [] and sessions.submitted == []
    assert [s.session for s in sessions.checked] == ["s1"]
    assert len(manager.validated) == 1
    assert not response.created and not response.HasField("job")
    estimate = response.cost_estimate
    assert (estimate.shots, estimate.cost.amount, estimate.cost.unit) == (64, 1.5, "USD")
    assert estimate.per_second_excluded


@pytest.mark.parametrize(
    "state", [JobState.QUEUED, JobState.RUNNING, JobState.CANCELLED, JobState.FAILED]
)
def test_a_result_exists_only_for_a_succeeded_job(state: JobState) -> None:
    manager = _Manager(state, _result(10).SerializeToString())
    request = job_service_pb2.GetJobResultRequest(name="jobs/j1/result")
    with pytest.raises(FailedPrecondition) as refused:
        asyncio.run(_servicer(manager).GetJobResult(request, _Context()))
    assert refused.value.reason == "RESULT_NOT_READY"
    assert refused.value.metadata == {"job": "jobs/j1", "state": state.value}
    assert manager.asked_within == []


def test_get_job_result_names_the_result_and_leaves_room_for_its_framing() -> None:
    manager = _Manager(result=_result(10).SerializeToString())
    request = job_service_pb2.GetJobResultRequest(name="jobs/j1/result")
    sent = asyncio.run(_servicer(manager).GetJobResult(request, _Context()))
    response = sent.parse(job_service_pb2.GetJobResultResponse)
    assert response.result.name == "jobs/j1/result"
    assert response.result.pub_results[0].sampler.registers[0].samples == bytes(10)
    assert manager.asked_within == [MAX_RESPONSE - len("jobs/j1/result") - RESULT_FRAMING_BYTES]


def test_a_result_too_large_names_its_size_and_the_limit() -> None:
    data = _result(MAX_RESPONSE).SerializeToString()
    manager = _Manager(result=data)
    request = job_service_pb2.GetJobResultRequest(name="jobs/j1/result")
    with pytest.raises(FailedPrecondition) as refused:
        asyncio.run(_servicer(manager).GetJobResult(request, _Context()))
    assert refused.value.reason == "RESULT_TOO_LARGE"
    assert refused.value.metadata == {
        "job": "jobs/j1",
        "resultBytes": str(len(data)),
        "maxResponseBytes": str(MAX_RESPONSE),
    }


def test_watch_job_says_which_events_are_heartbeats() -> None:
    manager = _Manager(JobState.RUNNING)
    request = job_service_pb2.WatchJobRequest(name="jobs/j1")

    async def watch() -> list[job_service_pb2.WatchJobResponse]:
        servicer = _servicer(manager)
        return [r async for r in servicer.WatchJob(request, _Context())]

    events = asyncio.run(watch())
    assert [(e.job.name, e.heartbeat) for e in events] == [("jobs/j1", False), ("jobs/j1", True)]


def test_a_job_page_token_is_bound_to_its_filter() -> None:
    manager = _Manager()
    servicer = _servicer(manager)
    first = asyncio.run(
        servicer.ListJobs(
            job_service_pb2.ListJobsRequest(filter="state = SUCCEEDED"),
            _Context(),
        )
    )
    assert first.next_page_token
    # The same filter written differently is the same query; another filter is not.
    same = job_service_pb2.ListJobsRequest(
        filter="state=SUCCEEDED", page_token=first.next_page_token
    )
    asyncio.run(servicer.ListJobs(same, _Context()))
    assert manager.listed[-1] == JobCursor(T0, "j1")
    other = job_service_pb2.ListJobsRequest(
        filter="state = FAILED", page_token=first.next_page_token
    )
    with pytest.raises(InvalidArgument) as refused:
        asyncio.run(servicer.ListJobs(other, _Context()))
    assert refused.value.reason == "INVALID_PAGE_TOKEN"


def test_run_says_when_it_found_an_earlier_requests_job() -> None:
    manager = _Manager(JobState.FAILED)
    manager.created = False
    request = job_service_pb2.RunRequest(request_id="r1", spec=sampler_spec(ghz(2)))
    response = asyncio.run(_servicer(manager).Run(request, _Context()))
    assert response.job.name == "jobs/j1" and not response.created
    manager.created = True
    response = asyncio.run(_servicer(manager).Run(request, _Context()))
    assert response.created


# --- AdminService: API keys ------------------------------------------------------------------


OPS = Principal("ops", "apiKeys/ops", Role.ADMIN)
ACME_ADMIN = Principal("acme", "apiKeys/ta", Role.TENANT_ADMIN)


async def _as(caller: Principal, call: Awaitable[_T]) -> _T:
    token = current_principal.set(caller)
    try:
        return await call
    finally:
        current_principal.reset(token)


@pytest.fixture
async def admin(tmp_path: Path) -> AsyncIterator[AdminServicer]:
    store = SqliteStore(tmp_path / "q.db")
    await store.open()
    servicer = AdminServicer(store, clock=lambda: T0)
    for tid in ("acme", "globex"):
        create = admin_service_pb2.CreateTenantRequest(tenant_id=tid, tenant=admin_pb2.Tenant())
        await _as(OPS, servicer.CreateTenant(create, None))
    yield servicer
    await store.close()


async def _key(admin: AdminServicer, caller: Principal, tenant: str, role: int) -> str:
    request = admin_service_pb2.CreateApiKeyRequest(
        parent=f"tenants/{tenant}",
        api_key=admin_pb2.ApiKey(role=role),  # type: ignore[arg-type]
    )
    made = await _as(caller, admin.CreateApiKey(request, None))
    return made.api_key.name


@pytest.mark.anyio
async def test_only_admins_list_every_tenants_keys(admin: AdminServicer) -> None:
    await _key(admin, OPS, "globex", admin_pb2.ROLE_USER)
    every = admin_service_pb2.ListApiKeysRequest(parent="tenants/-")
    listed = await _as(OPS, admin.ListApiKeys(every, None))
    assert [k.name.split("/")[1] for k in listed.api_keys] == ["globex"]
    with pytest.raises(PermissionDenied) as denied:
        await _as(ACME_ADMIN, admin.ListApiKeys(every, None))
    assert denied.value.reason == "ADMIN_ROLE_REQUIRED"


@pytest.mark.anyio
async def test_another_tenants_key_named_under_ones_own_tenant_is_not_found(
    admin: AdminServicer,
) -> None:
    # The key's prefix is global: a tenant admin of acme naming globex's key under
    # tenants/acme must neither revoke it nor learn that it exists.
    theirs = await _key(admin, OPS, "globex", admin_pb2.ROLE_USER)
    prefix = theirs.rsplit("/", 1)[1]
    disguised = f"tenants/acme/apiKeys/{prefix}"
    with pytest.raises(NotFound) as caught:
        await _as(
            ACME_ADMIN,
            admin.RevokeApiKey(admin_service_pb2.RevokeApiKeyRequest(name=disguised), None),
        )
    assert caught.value.reason == "API_KEY_NOT_FOUND"
    assert caught.value.resource_info == ResourceInfo("qgateway.dev/ApiKey", disguised)
    stored = await admin._store.get_api_key(prefix)
    assert stored is not None and stored.revoked_at is None


@pytest.mark.anyio
async def test_a_tenant_admin_neither_creates_nor_revokes_admin_keys(admin: AdminServicer) -> None:
    with pytest.raises(PermissionDenied) as create:
        await _key(admin, ACME_ADMIN, "acme", admin_pb2.ROLE_ADMIN)
    assert create.value.reason == "ROLE_NOT_GRANTABLE"
    strong = await _key(admin, OPS, "acme", admin_pb2.ROLE_ADMIN)
    revoke = admin_service_pb2.RevokeApiKeyRequest(name=strong)
    with pytest.raises(PermissionDenied) as refused:
        await _as(ACME_ADMIN, admin.RevokeApiKey(revoke, None))
    assert refused.value.reason == "ROLE_NOT_GRANTABLE"
    stored = await admin._store.get_api_key(strong.rsplit("/", 1)[1])
    assert stored is not None and stored.revoked_at is None
    # Its own tenant's lesser keys it does revoke.
    weak = await _key(admin, ACME_ADMIN, "acme", admin_pb2.ROLE_TENANT_ADMIN)
    done = await _as(
        ACME_ADMIN,
        admin.RevokeApiKey(admin_service_pb2.RevokeApiKeyRequest(name=weak), None),
    )
    assert done.api_key.state == admin_pb2.API_KEY_STATE_REVOKED


# --- AdminService: tenants and audit records -------------------------------------------------


@pytest.mark.anyio
async def test_a_user_may_not_list_even_its_own_tenant(admin: AdminServicer) -> None:
    user = Principal("acme", "apiKeys/us", Role.USER)
    request = admin_service_pb2.ListTenantsRequest()
    with pytest.raises(PermissionDenied) as denied:
        await _as(user, admin.ListTenants(request, None))
    assert denied.value.reason == "TENANT_ADMIN_ROLE_REQUIRED"
    own = await _as(ACME_ADMIN, admin.ListTenants(request, None))
    assert [t.name for t in own.tenants] == ["tenants/acme"]


def _audit(tenant: str, n: int) -> AuditRecord:
    return AuditRecord(
        time=T0 + timedelta(seconds=n),
        end_time=T0 + timedelta(seconds=n, milliseconds=250),
        service="qgateway.v1.JobService",
        method="SubmitJob" if n % 2 else "GetJob",
        principal=f"apiKeys/{tenant[:2]}{n:04d}",
        tenant=tenant,
        key_prefix=f"{tenant[:2]}{n:04d}",
        peer="ipv4:127.0.0.1:5000",
        resource=f"jobs/{tenant}-{n}",
        backend="aer",
        circuit_digest="ab" * 32,
        shots=100 + n,
        code=3,
        reason="INVALID_SPEC",
        request_id=f"r{n}",
        trace_id="0af7651916cd43dd8448eb211c80319c",
        count=2,
    )


async def _audited(admin: AdminServicer) -> None:
    admin._store.enable_audit(bytes(range(32)))
    records = [_audit("globex" if n % 10 == 5 else "acme", n) for n in range(1, 121)]
    await admin._store.append_audit(records)


async def _records(
    caller: Principal, admin: AdminServicer, request: admin_service_pb2.ListAuditRecordsRequest
) -> admin_service_pb2.ListAuditRecordsResponse:
    return await _as(caller, admin.ListAuditRecords(request, None))


@pytest.mark.anyio
async def test_a_tenant_admin_reads_its_own_tenants_audit_records_only(
    admin: AdminServicer,
) -> None:
    await _audited(admin)
    everything = admin_service_pb2.ListAuditRecordsRequest(page_size=1000)
    own = await _records(ACME_ADMIN, admin, everything)
    assert {r.tenant for r in own.audit_records} == {"acme"}
    assert len(own.audit_records) == 108  # 120 records, 12 of them globex's
    every = await _records(OPS, admin, everything)
    assert {r.tenant for r in every.audit_records} == {"acme", "globex"}
    # Not even naming the other tenant in the filter shows its records.
    asked = admin_service_pb2.ListAuditRecordsRequest(filter='tenant = "globex"')
    assert list((await _records(ACME_ADMIN, admin, asked)).audit_records) == []
    user = Principal("acme", "apiKeys/us", Role.USER)
    with pytest.raises(PermissionDenied) as denied:
        await _records(user, admin, everything)
    assert denied.value.reason == "TENANT_ADMIN_ROLE_REQUIRED"


@pytest.mark.anyio
async def test_an_audit_record_is_answered_with_every_field(admin: AdminServicer) -> None:
    await _audited(admin)
    request = admin_service_pb2.ListAuditRecordsRequest(page_size=1)
    record = (await _records(OPS, admin, request)).audit_records[0]
    expected = _audit("acme", 1)
    assert (record.name, record.sequence) == ("auditRecords/1", 1)
    assert record.time.ToDatetime(tzinfo=UTC) == expected.time
    assert record.end_time.ToDatetime(tzinfo=UTC) == expected.end_time
    assert (record.principal, record.tenant, record.key_prefix, record.peer) == (
        expected.principal,
        "acme",
        expected.key_prefix,
        expected.peer,
    )
    assert (record.service, record.method, record.resource, record.backend) == (
        "qgateway.v1.JobService",
        "SubmitJob",
        "jobs/acme-1",
        "aer",
    )
    assert (record.circuit_digest, record.shots, record.code, record.reason) == (
        "ab" * 32,
        101,
        3,
        "INVALID_SPEC",
    )
    assert (record.request_id, record.trace_id, record.count) == (
        "r1",
        expected.trace_id,
        2,
    )
    stored = await admin._store.list_audit(after=0, limit=1)
    assert record.mac == stored.records[0].mac.hex() and len(record.mac) == 64


@pytest.mark.anyio
async def test_audit_pages_default_to_100_and_their_tokens_keep_scope_and_filter(
    admin: AdminServicer,
) -> None:
    await _audited(admin)
    first = await _records(OPS, admin, admin_service_pb2.ListAuditRecordsRequest())
    assert len(first.audit_records) == 100 and first.next_page_token
    rest = await _records(
        OPS, admin, admin_service_pb2.ListAuditRecordsRequest(page_token=first.next_page_token)
    )
    assert [r.sequence for r in rest.audit_records] == list(range(101, 121))
    own = await _records(ACME_ADMIN, admin, admin_service_pb2.ListAuditRecordsRequest(page_size=1))
    refused = [
        (OPS, admin_service_pb2.ListAuditRecordsRequest(page_token=own.next_page_token)),
        (
            OPS,
            admin_service_pb2.ListAuditRecordsRequest(
                filter='method = "GetJob"', page_token=first.next_page_token
            ),
        ),
    ]
    for caller, request in refused:
        with pytest.raises(InvalidArgument) as caught:
            await _records(caller, admin, request)
        assert caught.value.reason == "INVALID_PAGE_TOKEN"


# --- SessionService --------------------------------------------------------------------------


def _session(**changes: Any) -> Session:
    base = Session(
        id="s1",
        tenant="default",
        backend="aer",
        mode=SessionMode.BATCH,
        state=SessionState.ACTIVE,
        failure_policy=FailurePolicy.ABORT,
        max_ttl_s=60,
        idle_ttl_s=30,
        created_at=T0,
        provider_session_id="prov-123",
    )
    return replace(base, **changes)


class _SessionCore:
    """The SessionCore as SessionServicer sees it, recording what it is asked."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, ...]] = []
        self.filters: list[str] = []
        self.created = False

    async def create(self, tenant: str, request_id: str, new: Any) -> tuple[Session, bool]:
        self.calls.append(("create", tenant, request_id))
        return _session(), self.created

    async def get(self, tenant: str, session_id: str) -> Session:
        self.calls.append(("get", tenant, session_id))
        return _session()

    async def close_session(self, tenant: str, session_id: str) -> Session:
        self.calls.append(("close", tenant, session_id))
        return _session(state=SessionState.CLOSING)

    async def cancel_session(self, tenant: str, session_id: str) -> Session:
        self.calls.append(("cancel", tenant, session_id))
        return _session(state=SessionState.CLOSED)

    async def list(
        self, tenant: str, *, filter: JobFilter, after: JobCursor | None, limit: int
    ) -> SessionPage:
        self.calls.append(("list", tenant))
        self.filters.append(filter.canonical())
        return SessionPage([_session()], JobCursor(T0, "s1"))

    async def totals(self, sessions: Sequence[Session]) -> dict[str, Totals]:
        costs = (Cost(2.5, "USD"), Cost(1.0, "credits"))
        return {s.id: Totals(shots=4000, execution_seconds=1.5, costs=costs) for s in sessions}


def _session_servicer(core: _SessionCore) -> SessionServicer:
    return SessionServicer(
        core,  # type: ignore[arg-type]
        page_tokens=PageTokens(bytes(32)),
        max_response_bytes=MAX_RESPONSE,
    )


def test_a_session_is_answered_with_its_policy_provider_id_and_usage() -> None:
    core = _SessionCore()
    request = session_service_pb2.GetSessionRequest(name="sessions/s1")
    out = asyncio.run(_session_servicer(core).GetSession(request, None)).session
    assert out.failure_policy == session_pb2.SESSION_FAILURE_POLICY_ABORT
    assert out.mode == session_pb2.SESSION_MODE_BATCH
    assert out.provider_session_id == "prov-123"
    assert out.idle_ttl.ToNanoseconds() == 30 * 10**9
    assert out.usage.shots == 4000
    assert out.usage.execution_duration.ToNanoseconds() == 1_500_000_000
    assert [(c.amount, c.unit) for c in out.costs] == [(2.5, "USD"), (1.0, "credits")]


def test_close_and_cancel_reach_their_own_operations() -> None:
    core = _SessionCore()
    servicer = _session_servicer(core)
    closed = asyncio.run(
        servicer.CloseSession(session_service_pb2.CloseSessionRequest(name="sessions/s1"), None)
    )
    cancelled = asyncio.run(
        servicer.CancelSession(session_service_pb2.CancelSessionRequest(name="sessions/s2"), None)
    )
    assert core.calls == [("close", "default", "s1"), ("cancel", "default", "s2")]
    assert closed.session.state == session_pb2.SESSION_STATE_CLOSING
    assert cancelled.session.state == session_pb2.SESSION_STATE_CLOSED


def test_create_session_checks_its_request_and_says_whether_it_created() -> None:
    core = _SessionCore()
    servicer = _session_servicer(core)
    asked = session_pb2.Session(backend="backends/aer")
    for request, reason, field in (
        (session_service_pb2.CreateSessionRequest(request_id="r1"), "INVALID_SESSION", "session"),
        (
            session_service_pb2.CreateSessionRequest(request_id="r" * 129, session=asked),
            "INVALID_REQUEST_ID",
            "request_id",
        ),
        (
            session_service_pb2.CreateSessionRequest(
                session=session_pb2.Session(backend="backends/aer", failure_policy=9)  # type: ignore[arg-type]
            ),
            "INVALID_SESSION",
            "session.failure_policy",
        ),
    ):
        with pytest.raises(InvalidArgument) as refused:
            asyncio.run(servicer.CreateSession(request, None))
        assert (refused.value.reason, [v.field for v in refused.value.field_violations]) == (
            reason,
            [field],
        )
    assert core.calls == []
    request = session_service_pb2.CreateSessionRequest(request_id="r1", session=asked)
    found = asyncio.run(servicer.CreateSession(request, None))
    assert not found.created and found.session.name == "sessions/s1"
    core.created = True
    assert asyncio.run(servicer.CreateSession(request, None)).created
    assert core.calls == [("create", "default", "r1")] * 2


def test_a_session_page_token_is_bound_to_its_filter_and_tenant() -> None:
    core = _SessionCore()
    servicer = _session_servicer(core)

    def listing(token: str, text: str) -> session_service_pb2.ListSessionsResponse:
        request = session_service_pb2.ListSessionsRequest(filter=text, page_token=token)
        return asyncio.run(servicer.ListSessions(request, None))

    first = listing("", "state = ACTIVE")
    assert core.filters == ["state = ACTIVE"] and first.next_page_token
    listing(first.next_page_token, "state = SESSION_STATE_ACTIVE")  # the same query
    with pytest.raises(InvalidArgument) as other_filter:
        listing(first.next_page_token, "state = CLOSED")
    assert other_filter.value.reason == "INVALID_PAGE_TOKEN"
    token = current_principal.set(Principal("acme", "apiKeys/a", Role.USER))
    try:
        with pytest.raises(InvalidArgument) as other_tenant:
            listing(first.next_page_token, "state = ACTIVE")
    finally:
        current_principal.reset(token)
    assert other_tenant.value.reason == "INVALID_PAGE_TOKEN"


# --- The error boundary, decoding and reads -------------------------------------------------


class _Aborted(Exception):
    pass


class _CallContext:
    """A call's context as the boundary and the decode interceptor use it."""

    def __init__(self) -> None:
        self.aborted: tuple[Any, ...] = ()

    def peer(self) -> str:
        return "ipv4:10.0.0.7:4242"

    async def abort(self, *args: Any) -> None:
        self.aborted = args
        raise _Aborted


async def _messages(*items: Any) -> AsyncIterator[Any]:
    for item in items:
        yield item


def test_a_request_over_the_limit_names_both_sizes_and_is_told_with_the_peer() -> None:
    receive = boundary.size_checked(max_bytes=10)
    rejected = receive(b"x" * 11)
    assert isinstance(rejected, boundary._Rejected)
    assert rejected.error.reason == "REQUEST_TOO_LARGE"
    assert rejected.error.metadata == {"sizeBytes": "11", "limitBytes": "10"}
    told: list[tuple[str, str, str]] = []
    pending = boundary.PendingRequest(
        _messages(rejected),
        "/qgateway.v1.JobService/SubmitJob",
        _CallContext(),
        lambda method, peer, error: told.append((method, peer, error.reason)),
    )
    with pytest.raises(InvalidArgument):
        asyncio.run(pending.read())
    assert told == [
        ("/qgateway.v1.JobService/SubmitJob", "ipv4:10.0.0.7:4242", "REQUEST_TOO_LARGE")
    ]


def test_a_call_without_a_message_is_malformed_and_a_message_records_its_size() -> None:
    async def read(*items: Any) -> tuple[bytes, int]:
        pending = boundary.PendingRequest(_messages(*items), "/m", _CallContext(), None)
        data = await pending.read()
        return data, request_bytes()

    with pytest.raises(InvalidArgument) as refused:
        asyncio.run(read())
    assert refused.value.reason == "MALFORMED_REQUEST"
    received = boundary.size_checked(max_bytes=100)(b"abcdefg")
    assert asyncio.run(read(received)) == (b"abcdefg", 7)


@pytest.mark.parametrize("kind", ["unary", "stream"])
def test_an_unimplemented_rpc_is_unimplemented_and_an_abort_passes_through(kind: str) -> None:
    async def unary(request: Any, context: Any) -> Any:
        raise NotImplementedError

    async def stream(request: Any, context: Any) -> AsyncIterator[Any]:
        raise NotImplementedError
        yield

    async def call(handle: Any) -> None:
        context = _CallContext()
        try:
            if kind == "unary":
                await handle(_messages(), context)
            else:
                async for _ in handle(_messages(), context):
                    pass
        finally:
            calls.append(context.aborted)

    calls: list[tuple[Any, ...]] = []
    wrap = boundary._wrap_unary if kind == "unary" else boundary._wrap_stream
    method = "/qgateway.v1.JobService/Nope"
    with pytest.raises(_Aborted):
        asyncio.run(call(wrap(unary if kind == "unary" else stream, method)))  # type: ignore[arg-type]
    assert calls[-1] == (grpc.StatusCode.UNIMPLEMENTED, f"{method} is not implemented")

    # An abort (or a call's own RpcError) raised inside is the call's answer, not a bug.
    class _Gone(grpc.RpcError):  # type: ignore[misc]
        pass

    async def gone(request: Any, context: Any) -> Any:
        raise _Gone

    async def gone_stream(request: Any, context: Any) -> AsyncIterator[Any]:
        raise _Gone
        yield

    with pytest.raises(_Gone):
        asyncio.run(call(wrap(gone if kind == "unary" else gone_stream, method)))  # type: ignore[arg-type]
    assert len(calls[-1]) == 0


class _Details:
    def __init__(self, method: str) -> None:
        self.method = method


def test_only_the_gateways_own_methods_are_wrapped() -> None:
    def echo(request: Any, context: Any) -> Any:
        return request

    handler = grpc.unary_unary_rpc_method_handler(echo)

    async def wrapped(method: str) -> Any:
        async def continuation(details: Any) -> Any:
            return handler

        details = _Details(method)
        return await boundary.ErrorBoundaryInterceptor(100).intercept_service(continuation, details)

    assert asyncio.run(wrapped("/grpc.health.v1.Health/Check")) is handler
    ours = asyncio.run(wrapped("/qgateway.v1.JobService/GetJob"))
    assert ours is not handler and ours.stream_unary is not None
    assert not handlers.is_gateway_method(handler, "/grpc.health.v1.Health/Check")
    assert not handlers.is_gateway_method(None, "/qgateway.v1.JobService/GetJob")


class _Reads:
    """RequestReads as the decode interceptor uses it: answers at once, records the tenant."""

    def __init__(self, data: bytes, error: GatewayError | None = None) -> None:
        self.data = data
        self.error = error
        self.tenants: list[str] = []

    async def read(self, request: Any, tenant: str) -> bytes:
        self.tenants.append(tenant)
        if self.error is not None:
            raise self.error
        return self.data


def _decode(reads: _Reads, deserialize: Any) -> tuple[list[tuple[str, str, str]], Any]:
    told: list[tuple[str, str, str]] = []

    async def echo(request: Any, context: Any) -> Any:
        return request

    handler = grpc.unary_unary_rpc_method_handler(echo, request_deserializer=deserialize)

    async def run() -> Any:
        async def continuation(details: Any) -> Any:
            return handler

        details = _Details("/qgateway.v1.JobService/GetJob")
        interceptor = DecodeInterceptor(
            reads,  # type: ignore[arg-type]
            on_rejected=lambda method, peer, error: told.append((method, peer, error.reason)),
        )
        wrapped = await interceptor.intercept_service(continuation, details)
        assert wrapped.request_deserializer is None  # it takes the unread request
        token = current_principal.set(Principal("acme", "apiKeys/a", Role.USER))
        try:
            return await wrapped.unary_unary(object(), _CallContext())
        finally:
            current_principal.reset(token)

    try:
        return told, asyncio.run(run())
    except GatewayError as err:
        return told, err


@pytest.mark.parametrize(
    "failure", [ValueError("bad enum"), UnicodeDecodeError("utf-8", b"\xff", 0, 1, "bad")]
)
def test_every_failure_to_decode_is_malformed_and_told_with_the_peer(
    failure: Exception,
) -> None:
    def deserialize(data: bytes) -> Any:
        raise failure

    reads = _Reads(b"\x08\x01")
    told, answer = _decode(reads, deserialize)
    assert isinstance(answer, InvalidArgument) and answer.reason == "MALFORMED_REQUEST"
    assert told == [("/qgateway.v1.JobService/GetJob", "ipv4:10.0.0.7:4242", "MALFORMED_REQUEST")]
    assert reads.tenants == ["acme"]  # read under the caller's tenant's limits


def test_a_read_refused_for_its_slowness_is_told_to_the_audit_log() -> None:
    for error in (
        ResourceExhausted("TOO_MANY_SLOW_REQUESTS", "slow"),
        DeadlineExceeded("REQUEST_READ_TIMEOUT", "late"),
    ):
        told, answer = _decode(_Reads(b"", error), bytes)
        assert answer is error
        assert told == [("/qgateway.v1.JobService/GetJob", "ipv4:10.0.0.7:4242", error.reason)]
    told, answer = _decode(_Reads(b"ok"), bytes)
    assert (told, answer) == ([], b"ok")


# --- Health ----------------------------------------------------------------------------------


class _HealthContext:
    def __init__(self) -> None:
        self.seen: asyncio.Queue[int] = asyncio.Queue()
        self.aborted: tuple[Any, ...] = ()

    async def write(self, response: health_pb2.HealthCheckResponse) -> None:
        await self.seen.put(response.status)

    async def abort(self, *args: Any) -> None:
        self.aborted = args
        raise _Aborted


@pytest.mark.anyio
async def test_an_unknown_name_is_not_found_to_check_and_service_unknown_to_watch() -> None:
    health = HealthService()
    request = health_pb2.HealthCheckRequest(service="backends/nosuch")
    context = _HealthContext()
    with pytest.raises(_Aborted):
        await health.Check(request, context)
    assert context.aborted[0] is grpc.StatusCode.NOT_FOUND
    call = asyncio.ensure_future(health.Watch(request, context))
    try:
        unknown = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
        assert await asyncio.wait_for(context.seen.get(), 5) == unknown
        # The name appears later: the watcher is told.
        await health.set("backends/nosuch", health_pb2.HealthCheckResponse.SERVING)
        serving = health_pb2.HealthCheckResponse.SERVING
        assert await asyncio.wait_for(context.seen.get(), 5) == serving
    finally:
        call.cancel()
        await asyncio.gather(call, return_exceptions=True)
    assert not health._changed and not health._watchers


def test_a_session_filter_of_the_longest_length_is_read_and_a_state_is_a_name() -> None:
    longest = "state = ACTIVE" + " " * (MAX_FILTER_CHARS - len("state = ACTIVE"))
    assert parse_session_filter(longest).canonical() == "state = ACTIVE"
    with pytest.raises(InvalidArgument) as too_long:
        parse_session_filter(longest + " ")
    assert too_long.value.reason == "INVALID_FILTER"
    for quoted in ('state = "ACTIVE"', 'state != "SESSION_STATE_CLOSED"'):
        with pytest.raises(InvalidArgument) as refused:
            parse_session_filter(quoted)
        assert refused.value.reason == "INVALID_FILTER", quoted


def test_slow_read_limits_are_refused_unless_they_can_work() -> None:
    RequestReads(1, 2.0, slow_after_s=1.0)  # the least that works
    for limit, timeout, slow_after in ((0, 2.0, 1.0), (1, 1.0, 1.0), (1, 2.0, 0.0)):
        with pytest.raises(ValueError):
            RequestReads(limit, timeout, slow_after_s=slow_after)


class _Answered:
    def __init__(self, code: object) -> None:
        self._code = code

    def code(self) -> object:
        if isinstance(self._code, Exception):
            raise self._code
        return self._code


def test_a_calls_status_and_failure_are_read_as_the_boundary_answers_them() -> None:
    assert handlers.status_code(_Answered(grpc.StatusCode.NOT_FOUND)) == 5
    assert handlers.status_code(_Answered(8)) == 8
    for unreadable in (RuntimeError("no status"), None):
        assert handlers.status_code(_Answered(unreadable)) == 2
    refused = InvalidArgument("INVALID_SPEC", "bad")
    assert handlers.failed_call(refused, _Answered(None)) == (3, "INVALID_SPEC")
    aborted = grpc.aio.AbortError()
    assert handlers.failed_call(aborted, _Answered(grpc.StatusCode.ABORTED)) == (10, "")
    for gone in (asyncio.CancelledError(), GeneratorExit()):
        assert handlers.failed_call(gone, _Answered(None)) == (1, "")
    assert handlers.failed_call(KeyError("x"), _Answered(None)) == (13, "INTERNAL_ERROR")


def test_a_slow_read_that_ends_leaves_nothing_held_for_its_tenant() -> None:
    async def read_slowly() -> None:
        reads = RequestReads(1, 60.0, slow_after_s=0.001)

        class _Slow:
            async def read(self) -> bytes:
                while reads.slow_reads("acme") == 0:  # until the read has counted as slow
                    await asyncio.sleep(0)
                return b"late"

        assert await reads.read(_Slow(), "acme") == b"late"  # type: ignore[arg-type]
        # No entry is kept for a tenant with no slow read (tenants come and go).
        assert reads.slow_reads("acme") == 0 and reads._slow == {}

    asyncio.run(read_slowly())


# --- BackendService --------------------------------------------------------------------------


class _Adapter:
    """A backend adapter whose first target() fails (its SDK or provider unreachable)."""

    def __init__(self) -> None:
        self.calls = 0

    def target(self) -> BackendTarget:
        self.calls += 1
        if self.calls == 1:
            raise ConnectionError("provider unreachable")
        return BackendTarget(num_qubits=5, instructions=())


class _Runtime:
    def __init__(self) -> None:
        self.name = "ibm_fake"
        self.target_pending = False
        self.adapter = _Adapter()


def test_a_target_that_failed_is_computed_again_and_one_that_worked_is_kept() -> None:
    servicer = BackendServicer(None, page_tokens=PageTokens(bytes(32)))  # type: ignore[arg-type]
    runtime = _Runtime()

    async def targets() -> list[str]:
        with pytest.raises(ConnectionError):
            await servicer._target(runtime)  # type: ignore[arg-type]
        second = await servicer._target(runtime)  # type: ignore[arg-type]
        third = await servicer._target(runtime)  # type: ignore[arg-type]
        return [second.name, third.name]

    names = asyncio.run(targets())
    assert names == ["backends/ibm_fake/target"] * 2
    assert runtime.adapter.calls == 2  # the failure was not kept; the success was
