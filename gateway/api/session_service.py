"""qgateway.v1.SessionService: translation between messages and the SessionCore
(gateway.jobs.sessions)."""

from __future__ import annotations

import struct
from datetime import UTC, datetime, timedelta

from google.protobuf import duration_pb2
from qgateway.v1 import session_pb2, session_service_pb2, session_service_pb2_grpc

from gateway.api import codec, paging
from gateway.api.context import Context
from gateway.api.session_filter import parse_session_filter
from gateway.domain.errors import FieldViolation, InvalidArgument
from gateway.domain.labels import validate_labels
from gateway.domain.pricing import Totals
from gateway.domain.sessions import FailurePolicy, Session, SessionMode, SessionState
from gateway.jobs.sessions import NewSession, SessionCore
from gateway.security.principals import tenant_of
from gateway.store.base import JobCursor

SERVICE_NAME = "qgateway.v1.SessionService"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_CREATED_US = struct.Struct(">q")

_MODES = {
    session_pb2.SESSION_MODE_UNSPECIFIED: SessionMode.DEDICATED,
    session_pb2.SESSION_MODE_DEDICATED: SessionMode.DEDICATED,
    session_pb2.SESSION_MODE_BATCH: SessionMode.BATCH,
}
_MODES_OUT = {
    SessionMode.DEDICATED: session_pb2.SESSION_MODE_DEDICATED,
    SessionMode.BATCH: session_pb2.SESSION_MODE_BATCH,
}
_POLICIES = {
    session_pb2.SESSION_FAILURE_POLICY_UNSPECIFIED: FailurePolicy.CONTINUE,
    session_pb2.SESSION_FAILURE_POLICY_CONTINUE: FailurePolicy.CONTINUE,
    session_pb2.SESSION_FAILURE_POLICY_ABORT: FailurePolicy.ABORT,
}
_POLICIES_OUT = {
    FailurePolicy.CONTINUE: session_pb2.SESSION_FAILURE_POLICY_CONTINUE,
    FailurePolicy.ABORT: session_pb2.SESSION_FAILURE_POLICY_ABORT,
}
_STATES_OUT = {
    SessionState.PENDING: session_pb2.SESSION_STATE_PENDING,
    SessionState.ACTIVE: session_pb2.SESSION_STATE_ACTIVE,
    SessionState.CLOSING: session_pb2.SESSION_STATE_CLOSING,
    SessionState.CLOSED: session_pb2.SESSION_STATE_CLOSED,
    SessionState.FAILED: session_pb2.SESSION_STATE_FAILED,
}


def _bad_session(field: str, problem: str) -> InvalidArgument:
    return InvalidArgument(
        "INVALID_SESSION",
        f"{field}: {problem}",
        metadata={"field": field},
        field_violations=[FieldViolation(field, problem)],
    )


def _duration(seconds: float) -> duration_pb2.Duration:
    out = duration_pb2.Duration()
    whole = int(seconds)
    out.seconds = whole
    out.nanos = round((seconds - whole) * 1e9)
    return out


def decode_new_session(msg: session_pb2.Session) -> NewSession:
    """CreateSessionRequest.session: backend, mode, TTLs, failure policy and labels."""
    if not msg.backend:
        raise _bad_session("session.backend", "required")
    backend = codec.backend_id(msg.backend, "session.backend")
    if msg.mode not in _MODES:
        raise _bad_session("session.mode", f"unknown mode {msg.mode}")
    if msg.failure_policy not in _POLICIES:
        raise _bad_session("session.failure_policy", f"unknown policy {msg.failure_policy}")
    return NewSession(
        backend=backend,
        mode=_MODES[msg.mode],
        failure_policy=_POLICIES[msg.failure_policy],
        max_ttl_s=(
            codec.positive_seconds(msg.max_ttl, "session.max_ttl", "INVALID_SESSION")
            if msg.HasField("max_ttl")
            else None
        ),
        idle_ttl_s=(
            codec.positive_seconds(msg.idle_ttl, "session.idle_ttl", "INVALID_SESSION")
            if msg.HasField("idle_ttl")
            else None
        ),
        labels=validate_labels(msg.labels, "session.labels"),
    )


def encode_session(session: Session, totals: Totals | None = None) -> session_pb2.Session:
    out = session_pb2.Session(
        name=codec.SESSION_PREFIX + session.id,
        tenant=session.tenant,
        backend=codec.BACKEND_PREFIX + session.backend,
        mode=_MODES_OUT[session.mode],
        state=_STATES_OUT[session.state],
        accepting_jobs=session.state.accepts_jobs,
        failure_policy=_POLICIES_OUT[session.failure_policy],
        provider_session_id=session.provider_session_id,
    )
    out.max_ttl.CopyFrom(_duration(session.max_ttl_s))
    out.idle_ttl.CopyFrom(_duration(session.idle_ttl_s))
    out.create_time.FromDatetime(session.created_at)
    if session.ended_at is not None:
        out.end_time.FromDatetime(session.ended_at)
    out.labels.update(session.labels)
    if totals is not None:
        out.usage.shots = totals.shots
        out.usage.execution_duration.FromNanoseconds(int(totals.execution_seconds * 1e9))
        for cost in totals.costs:
            out.costs.add(amount=cost.amount, unit=cost.unit)
    return out


def _after(session: Session) -> JobCursor:
    return JobCursor(session.created_at, session.id)


def _cursor(cursor: JobCursor) -> bytes:
    created_us = (cursor.created_at - _EPOCH) // timedelta(microseconds=1)
    return _CREATED_US.pack(created_us) + cursor.id.encode()


def _cursor_from(data: bytes) -> JobCursor:
    if len(data) <= _CREATED_US.size:
        raise paging.invalid_page_token()
    (created_us,) = _CREATED_US.unpack_from(data)
    try:
        return JobCursor(_EPOCH + timedelta(microseconds=created_us), data[8:].decode())
    except (OverflowError, UnicodeDecodeError):
        raise paging.invalid_page_token() from None


class SessionServicer(session_service_pb2_grpc.SessionServiceServicer):
    def __init__(
        self, sessions: SessionCore, *, page_tokens: paging.PageTokens, max_response_bytes: int
    ) -> None:
        self._sessions = sessions
        self._page_tokens = page_tokens
        self._max_response = max_response_bytes

    async def _encode(self, session: Session) -> session_pb2.Session:
        totals = await self._sessions.totals([session])
        return encode_session(session, totals[session.id])

    async def CreateSession(
        self, request: session_service_pb2.CreateSessionRequest, context: Context
    ) -> session_service_pb2.CreateSessionResponse:
        from gateway.api.job_service import _request_id

        request_id = _request_id(request.request_id)
        if not request.HasField("session"):
            raise _bad_session("session", "required")
        new = decode_new_session(request.session)
        session, created = await self._sessions.create(tenant_of(context), request_id, new)
        return session_service_pb2.CreateSessionResponse(
            session=await self._encode(session), created=created
        )

    async def GetSession(
        self, request: session_service_pb2.GetSessionRequest, context: Context
    ) -> session_service_pb2.GetSessionResponse:
        session = await self._sessions.get(tenant_of(context), codec.session_id(request.name))
        return session_service_pb2.GetSessionResponse(session=await self._encode(session))

    async def CloseSession(
        self, request: session_service_pb2.CloseSessionRequest, context: Context
    ) -> session_service_pb2.CloseSessionResponse:
        session = await self._sessions.close_session(
            tenant_of(context), codec.session_id(request.name)
        )
        return session_service_pb2.CloseSessionResponse(session=await self._encode(session))

    async def CancelSession(
        self, request: session_service_pb2.CancelSessionRequest, context: Context
    ) -> session_service_pb2.CancelSessionResponse:
        session = await self._sessions.cancel_session(
            tenant_of(context), codec.session_id(request.name)
        )
        return session_service_pb2.CancelSessionResponse(session=await self._encode(session))

    async def ListSessions(
        self, request: session_service_pb2.ListSessionsRequest, context: Context
    ) -> session_service_pb2.ListSessionsResponse:
        limit = paging.page_size(request.page_size)
        tenant = tenant_of(context)
        session_filter = parse_session_filter(request.filter)
        where = {"kind": "sessions", "tenant": tenant, "query": session_filter.canonical()}
        sealed = self._page_tokens.open(request.page_token, **where)
        after = None if sealed is None else _cursor_from(sealed)
        page = await self._sessions.list(tenant, filter=session_filter, after=after, limit=limit)
        # One store read for the whole page's totals, not one per session.
        totals = await self._sessions.totals(page.sessions)
        sessions, next_cursor = paging.within_response(
            page.sessions,
            page.next_cursor,
            self._max_response,
            lambda s: encode_session(s, totals[s.id]),
            _after,
        )
        return session_service_pb2.ListSessionsResponse(
            sessions=sessions,
            next_page_token=(
                self._page_tokens.seal(_cursor(next_cursor), **where)
                if next_cursor is not None
                else ""
            ),
        )
