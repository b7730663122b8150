"""Sessions in the Python client: the `Session` record and the session calls that `Client` and
`AsyncClient` inherit (create_session, get_session, list_sessions, close_session,
cancel_session).

A session's jobs run one at a time, in the order they were submitted, on the session's backend;
submit a job into one by setting JobSpec.session to the session's name.
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast

from qgateway._calls import channel_stub, deadline, timestamp
from qgateway.results import Cost
from qgateway.v1 import session_pb2, session_service_pb2, session_service_pb2_grpc

_SessionStub: Any = session_service_pb2_grpc.SessionServiceStub
_PREFIX = "sessions/"


class SessionState(enum.Enum):
    UNSPECIFIED = "UNSPECIFIED"
    PENDING = "PENDING"
    ACTIVE = "ACTIVE"
    CLOSING = "CLOSING"
    CLOSED = "CLOSED"
    FAILED = "FAILED"

    @property
    def is_final(self) -> bool:
        return self in (SessionState.CLOSED, SessionState.FAILED)

    @classmethod
    def from_proto(cls, value: int) -> SessionState:
        try:
            return cls(session_pb2.SessionState.Name(value).removeprefix("SESSION_STATE_"))
        except ValueError:
            return cls.UNSPECIFIED


@dataclass(frozen=True)
class Session:
    """A session as the gateway reports it.

    Attributes:
        name: "sessions/{id}".
        backend: "backends/{name}" its jobs run on.
        mode: "DEDICATED" or "BATCH".
        state: Its lifecycle state.
        failure_policy: "CONTINUE" or "ABORT".
        max_ttl: Seconds it may live from its first job.
        idle_ttl: Seconds it may wait for a next job.
        accepting_jobs: Whether a job may still be submitted into it.
        shots: Shots its finished jobs ran so far.
        costs: What its finished jobs cost so far, one total per unit.
    """

    name: str
    tenant: str
    backend: str
    mode: str
    state: SessionState
    failure_policy: str
    max_ttl: float
    idle_ttl: float
    accepting_jobs: bool
    create_time: datetime | None
    end_time: datetime | None
    provider_session_id: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    shots: int = 0
    costs: tuple[Cost, ...] = ()

    @classmethod
    def from_proto(cls, msg: session_pb2.Session) -> Session:
        return cls(
            name=msg.name,
            tenant=msg.tenant,
            backend=msg.backend,
            mode=session_pb2.SessionMode.Name(msg.mode).removeprefix("SESSION_MODE_"),
            state=SessionState.from_proto(msg.state),
            failure_policy=session_pb2.SessionFailurePolicy.Name(msg.failure_policy).removeprefix(
                "SESSION_FAILURE_POLICY_"
            ),
            max_ttl=msg.max_ttl.ToNanoseconds() / 1e9,
            idle_ttl=msg.idle_ttl.ToNanoseconds() / 1e9,
            accepting_jobs=msg.accepting_jobs,
            create_time=timestamp(msg.create_time, msg.HasField("create_time")),
            end_time=timestamp(msg.end_time, msg.HasField("end_time")),
            provider_session_id=msg.provider_session_id,
            labels=dict(msg.labels),
            shots=msg.usage.shots,
            costs=tuple(Cost.from_proto(c) for c in msg.costs),
        )


def session_name(name: str) -> str:
    """'abc' or 'sessions/abc' -> 'sessions/abc'."""
    return name if name.startswith(_PREFIX) else _PREFIX + name


def _backend(name: str) -> str:
    return name if name.startswith("backends/") else "backends/" + name


def create_request(
    backend: str,
    mode: str,
    max_ttl: float | None,
    idle_ttl: float | None,
    failure_policy: str,
    labels: Mapping[str, str] | None,
    request_id: str | None,
) -> session_service_pb2.CreateSessionRequest:
    session = session_pb2.Session(
        backend=_backend(backend),
        mode=cast(Any, session_pb2.SessionMode.Value("SESSION_MODE_" + mode.upper())),
        failure_policy=cast(
            Any,
            session_pb2.SessionFailurePolicy.Value(
                "SESSION_FAILURE_POLICY_" + failure_policy.upper()
            ),
        ),
    )
    if max_ttl is not None:
        session.max_ttl.FromNanoseconds(round(max_ttl * 1e9))
    if idle_ttl is not None:
        session.idle_ttl.FromNanoseconds(round(idle_ttl * 1e9))
    if labels:
        session.labels.update(labels)
    return session_service_pb2.CreateSessionRequest(
        request_id=request_id or str(uuid.uuid4()), session=session
    )


class SessionCalls:
    """The session calls of `Client` (mixed in; uses its `_unary` and `channel`)."""

    _unary: Any
    channel: Any

    @property
    def _sessions(self) -> Any:
        return channel_stub(self, "_sessions_stub", _SessionStub)

    def create_session(
        self,
        backend: str,
        *,
        mode: str = "DEDICATED",
        max_ttl: float | None = None,
        idle_ttl: float | None = None,
        failure_policy: str = "CONTINUE",
        labels: Mapping[str, str] | None = None,
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> Session:
        """Creates a session on `backend` (retried safely: one request_id for every attempt).

        Args:
            mode: "DEDICATED" (pins a worker of the backend while it has work) or "BATCH".
            max_ttl: Seconds it may live from its first job; None: the gateway's maximum.
            idle_ttl: Seconds it may wait for a next job; None: the gateway's default.
            failure_policy: "CONTINUE", or "ABORT" (a failed job ends the session and cancels
                its other jobs).
        """
        request = create_request(
            backend, mode, max_ttl, idle_ttl, failure_policy, labels, request_id
        )
        response: session_service_pb2.CreateSessionResponse = self._unary(
            self._sessions.CreateSession,
            request,
            deadline=deadline(timeout),
            retry=True,
            request_id=request.request_id,
        )
        return Session.from_proto(response.session)

    def get_session(self, name: str, *, timeout: float | None = None) -> Session:
        response: session_service_pb2.GetSessionResponse = self._unary(
            self._sessions.GetSession,
            session_service_pb2.GetSessionRequest(name=session_name(name)),
            deadline=deadline(timeout),
            retry=True,
        )
        return Session.from_proto(response.session)

    def close_session(self, name: str, *, timeout: float | None = None) -> Session:
        """Stops the session accepting jobs; the ones it holds still run (CLOSING, then
        CLOSED)."""
        response: session_service_pb2.CloseSessionResponse = self._unary(
            self._sessions.CloseSession,
            session_service_pb2.CloseSessionRequest(name=session_name(name)),
            deadline=deadline(timeout),
            retry=True,
        )
        return Session.from_proto(response.session)

    def cancel_session(self, name: str, *, timeout: float | None = None) -> Session:
        """Ends the session now and cancels its queued and running jobs."""
        response: session_service_pb2.CancelSessionResponse = self._unary(
            self._sessions.CancelSession,
            session_service_pb2.CancelSessionRequest(name=session_name(name)),
            deadline=deadline(timeout),
            retry=True,
        )
        return Session.from_proto(response.session)

    def list_sessions(
        self, *, filter: str = "", page_size: int = 0, timeout: float | None = None
    ) -> Iterator[Session]:
        """The tenant's sessions, newest first, following page tokens lazily.

        Args:
            filter: An AIP-160 filter over state, backend, labels and create_time.
        """
        request = session_service_pb2.ListSessionsRequest(page_size=page_size, filter=filter)
        while True:
            response: session_service_pb2.ListSessionsResponse = self._unary(
                self._sessions.ListSessions, request, deadline=deadline(timeout), retry=True
            )
            for session in response.sessions:
                yield Session.from_proto(session)
            if not response.next_page_token:
                return
            request.page_token = response.next_page_token


class AsyncSessionCalls:
    """The session calls of `AsyncClient`, as coroutines and an async iterator."""

    _unary: Any
    channel: Any

    @property
    def _sessions(self) -> Any:
        return channel_stub(self, "_sessions_stub", _SessionStub)

    async def create_session(
        self,
        backend: str,
        *,
        mode: str = "DEDICATED",
        max_ttl: float | None = None,
        idle_ttl: float | None = None,
        failure_policy: str = "CONTINUE",
        labels: Mapping[str, str] | None = None,
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> Session:
        """Creates a session; see `Client.create_session`."""
        request = create_request(
            backend, mode, max_ttl, idle_ttl, failure_policy, labels, request_id
        )
        response: session_service_pb2.CreateSessionResponse = await self._unary(
            self._sessions.CreateSession,
            request,
            deadline=deadline(timeout),
            retry=True,
            request_id=request.request_id,
        )
        return Session.from_proto(response.session)

    async def get_session(self, name: str, *, timeout: float | None = None) -> Session:
        response: session_service_pb2.GetSessionResponse = await self._unary(
            self._sessions.GetSession,
            session_service_pb2.GetSessionRequest(name=session_name(name)),
            deadline=deadline(timeout),
            retry=True,
        )
        return Session.from_proto(response.session)

    async def close_session(self, name: str, *, timeout: float | None = None) -> Session:
        response: session_service_pb2.CloseSessionResponse = await self._unary(
            self._sessions.CloseSession,
            session_service_pb2.CloseSessionRequest(name=session_name(name)),
            deadline=deadline(timeout),
            retry=True,
        )
        return Session.from_proto(response.session)

    async def cancel_session(self, name: str, *, timeout: float | None = None) -> Session:
        response: session_service_pb2.CancelSessionResponse = await self._unary(
            self._sessions.CancelSession,
            session_service_pb2.CancelSessionRequest(name=session_name(name)),
            deadline=deadline(timeout),
            retry=True,
        )
        return Session.from_proto(response.session)

    async def list_sessions(
        self, *, filter: str = "", page_size: int = 0, timeout: float | None = None
    ) -> AsyncIterator[Session]:
        request = session_service_pb2.ListSessionsRequest(page_size=page_size, filter=filter)
        while True:
            response: session_service_pb2.ListSessionsResponse = await self._unary(
                self._sessions.ListSessions, request, deadline=deadline(timeout), retry=True
            )
            for session in response.sessions:
                yield Session.from_proto(session)
            if not response.next_page_token:
                return
            request.page_token = response.next_page_token
