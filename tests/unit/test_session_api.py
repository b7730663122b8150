"""SessionService's wire side in process: the ListSessions filter (the ListJobs language over a
session's fields) and its pages, CreateSession's fields as read and refused, and a session as
answered."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from google.protobuf import duration_pb2
from qgateway.v1 import session_pb2, session_service_pb2

from gateway.api.paging import PageTokens
from gateway.api.session_filter import parse_session_filter
from gateway.api.session_service import SessionServicer, decode_new_session, encode_session
from gateway.domain.errors import Code, GatewayError
from gateway.domain.job_filter import JobFilter
from gateway.domain.pricing import Totals
from gateway.domain.sessions import FailurePolicy, Session, SessionMode, SessionState
from gateway.store.base import JobCursor, SessionPage


def test_the_filter_reads_session_states_and_refuses_job_states_and_the_session_field() -> None:
    parsed = parse_session_filter(
        '(state = ACTIVE OR state = SESSION_STATE_CLOSING) AND backend = "backends/aer"'
    )
    assert parsed.canonical() == (
        'backend = "backends/aer" AND (state = ACTIVE OR state = CLOSING)'
    )
    assert parse_session_filter("state != CLOSED").canonical() == "state != CLOSED"
    for text in ("state = RUNNING", 'session = "sessions/a"', "state = JOB_STATE_QUEUED"):
        with pytest.raises(GatewayError) as refused:
            parse_session_filter(text)
        assert refused.value.reason == "INVALID_FILTER"


def _duration(seconds: float) -> duration_pb2.Duration:
    out = duration_pb2.Duration()
    out.FromNanoseconds(round(seconds * 1e9))
    return out


def test_create_reads_what_it_documents_and_refuses_bad_fields() -> None:
    msg = session_pb2.Session(
        backend="backends/aer",
        mode=session_pb2.SESSION_MODE_BATCH,
        failure_policy=session_pb2.SESSION_FAILURE_POLICY_ABORT,
        max_ttl=_duration(90.5),
        idle_ttl=_duration(2),
        labels={"team": "qml"},
    )
    new = decode_new_session(msg)
    assert (new.backend, new.mode, new.failure_policy) == (
        "aer",
        SessionMode.BATCH,
        FailurePolicy.ABORT,
    )
    assert (new.max_ttl_s, new.idle_ttl_s, dict(new.labels)) == (90.5, 2.0, {"team": "qml"})
    defaults = decode_new_session(session_pb2.Session(backend="backends/aer"))
    assert (defaults.mode, defaults.failure_policy) == (
        SessionMode.DEDICATED,
        FailurePolicy.CONTINUE,
    )
    assert defaults.max_ttl_s is None and defaults.idle_ttl_s is None
    # Output-only fields do not change what the request means.
    noisy = session_pb2.Session(backend="backends/aer", state=session_pb2.SESSION_STATE_CLOSED)
    assert decode_new_session(noisy) == defaults
    bad = [
        (session_pb2.Session(), "INVALID_SESSION"),
        (session_pb2.Session(backend="aer"), "INVALID_BACKEND_NAME"),
        (session_pb2.Session(backend="backends/aer", mode=7), "INVALID_SESSION"),  # type: ignore[arg-type]
        (session_pb2.Session(backend="backends/aer", idle_ttl=_duration(-1)), "INVALID_SESSION"),
        (session_pb2.Session(backend="backends/aer", max_ttl=_duration(0)), "INVALID_SESSION"),
    ]
    # Durations protobuf parses as sent, though no valid Duration is like them: nanos past a
    # second (read as 2 s before), or seconds and nanos of different signs.
    for field in ("max_ttl", "idle_ttl"):
        for seconds, nanos in ((0, 1_999_999_999), (2, -5), (-1, 5)):
            invalid = session_pb2.Session(backend="backends/aer")
            getattr(invalid, field).CopyFrom(duration_pb2.Duration(seconds=seconds, nanos=nanos))
            bad.append((invalid, "INVALID_SESSION"))
    for request, reason in bad:
        with pytest.raises(GatewayError) as refused:
            decode_new_session(request)
        assert refused.value.reason == reason, request
        assert refused.value.code is Code.INVALID_ARGUMENT


def test_a_session_as_answered() -> None:
    created = datetime(2026, 12, 2, 8, 0, tzinfo=UTC)
    session = Session(
        id="abc",
        tenant="alice",
        backend="aer",
        mode=SessionMode.DEDICATED,
        state=SessionState.CLOSING,
        failure_policy=FailurePolicy.CONTINUE,
        max_ttl_s=3600.25,
        idle_ttl_s=60,
        created_at=created,
        labels={"k": "v"},
    )
    out = encode_session(session)
    assert (out.name, out.tenant, out.backend) == ("sessions/abc", "alice", "backends/aer")
    assert out.state == session_pb2.SESSION_STATE_CLOSING and not out.accepting_jobs
    assert out.mode == session_pb2.SESSION_MODE_DEDICATED
    assert out.max_ttl.ToNanoseconds() == 3_600_250_000_000
    assert out.create_time.ToDatetime(tzinfo=UTC) == created
    assert not out.HasField("end_time") and dict(out.labels) == {"k": "v"}
    ended_at = created + timedelta(minutes=5)
    ended = encode_session(replace(session, state=SessionState.CLOSED, ended_at=ended_at))
    assert ended.end_time.ToDatetime(tzinfo=UTC) == ended_at


class _Listed:
    """The SessionCore's list and totals over fixed sessions, newest first."""

    def __init__(self, sessions: Sequence[Session]) -> None:
        self.sessions = sorted(sessions, key=lambda s: (s.created_at, s.id), reverse=True)

    async def list(
        self, tenant: str, *, filter: JobFilter, after: JobCursor | None, limit: int
    ) -> SessionPage:
        rest = [
            s
            for s in self.sessions
            if after is None or (s.created_at, s.id) < (after.created_at, after.id)
        ]
        page = rest[:limit]
        more = len(rest) > limit
        return SessionPage(page, JobCursor(page[-1].created_at, page[-1].id) if more else None)

    async def totals(self, sessions: Sequence[Session]) -> dict[str, Totals]:
        return {s.id: Totals() for s in sessions}


def test_a_session_page_is_cut_to_the_response_limit_and_goes_on_after_the_last_sent() -> None:
    # 1000 sessions with 64 maximal labels each (all within the documented limits) made a
    # response larger than gRPC's send limit: the caller got a bare RESOURCE_EXHAUSTED.
    start = datetime(2026, 12, 1, tzinfo=UTC)
    labels = {f"k{i:02d}" + "x" * 60: "v" * 63 for i in range(64)}  # ~8.5 KB a session
    sessions = [
        Session(
            id=f"s{n:02d}",
            tenant="default",
            backend="aer",
            mode=SessionMode.BATCH,
            state=SessionState.CLOSED,
            failure_policy=FailurePolicy.CONTINUE,
            max_ttl_s=60,
            idle_ttl_s=60,
            created_at=start - timedelta(seconds=n),
            labels=labels,
        )
        for n in range(10)
    ]
    max_response = 40_000
    servicer = SessionServicer(
        _Listed(sessions),  # type: ignore[arg-type]
        page_tokens=PageTokens(bytes(32)),
        max_response_bytes=max_response,
    )
    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        request = session_service_pb2.ListSessionsRequest(page_size=1000, page_token=token)
        response = asyncio.run(servicer.ListSessions(request, None))  # type: ignore[arg-type]
        assert response.ByteSize() <= max_response
        seen.extend(s.name for s in response.sessions)
        pages += 1
        token = response.next_page_token
        if not token:
            break
    assert seen == [f"sessions/s{n:02d}" for n in range(10)]  # each once, newest first
    assert pages > 1
