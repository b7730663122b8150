"""Sessions: jobs that run together on one backend, one at a time, in submission order.

The state machine and the TTL decisions live here, free of gRPC, the store and the clock (every
decision takes `now`):

    PENDING --first job--> ACTIVE --CloseSession--> CLOSING --drained--> CLOSED
       |                     |                          |
       +---------------------+--- CloseSession with no work: CLOSED
       +---------------------+--- max TTL (from the first job) or idle TTL passed: CLOSED
       +---------------------+--- CancelSession: CLOSED (its jobs are cancelled)
                             +--- a job FAILED under the ABORT policy: FAILED

CLOSED and FAILED are final. Only PENDING and ACTIVE sessions accept jobs; a job sent to any
other is refused with reason SESSION_CLOSED.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from gateway.domain.errors import (
    SESSION_RESOURCE,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    QuotaViolation,
    ResourceExhausted,
    ResourceInfo,
)


class SessionMode(enum.Enum):
    """DEDICATED pins one worker of the backend while the session has work; BATCH groups jobs
    without pinning."""

    DEDICATED = "DEDICATED"
    BATCH = "BATCH"


class SessionState(enum.Enum):
    PENDING = "PENDING"
    ACTIVE = "ACTIVE"
    CLOSING = "CLOSING"
    CLOSED = "CLOSED"
    FAILED = "FAILED"

    @property
    def is_final(self) -> bool:
        return self in (SessionState.CLOSED, SessionState.FAILED)

    @property
    def accepts_jobs(self) -> bool:
        return self in (SessionState.PENDING, SessionState.ACTIVE)


class FailurePolicy(enum.Enum):
    CONTINUE = "CONTINUE"
    ABORT = "ABORT"


class EndReason(enum.Enum):
    """Why a session ended (kept with it; the API shows the state)."""

    CLOSED = "CLOSED"  # CloseSession, and drained
    CANCELLED = "CANCELLED"  # CancelSession
    MAX_TTL = "MAX_TTL"
    IDLE_TTL = "IDLE_TTL"
    JOB_FAILED = "JOB_FAILED"  # ABORT policy


@dataclass(frozen=True)
class Session:
    """A session's record.

    Attributes:
        max_ttl_s: Longest life from the first job (resolved: the server's
            session_max_ttl_s when the request left it unset).
        idle_ttl_s: Longest wait for a next job while the session has no work (resolved: the
            server's session_idle_ttl_s when unset).
        first_job_at: When its first job was accepted (the max TTL counts from here).
        last_activity_at: When it last had work: a job accepted or a job ended (the idle TTL
            counts from here while it has none).
    """

    id: str
    tenant: str
    backend: str
    mode: SessionMode
    state: SessionState
    failure_policy: FailurePolicy
    max_ttl_s: float
    idle_ttl_s: float
    created_at: datetime
    request_id: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    first_job_at: datetime | None = None
    last_activity_at: datetime | None = None
    ended_at: datetime | None = None
    end_reason: EndReason | None = None
    provider_session_id: str = ""

    @property
    def name(self) -> str:
        return f"sessions/{self.id}"


def request_digest(session: Session) -> bytes:
    """What a retried CreateSession must repeat, as it was resolved: backend, mode, failure
    policy, TTLs and labels. Resolved, so that a retry spelling out a default (DEDICATED,
    CONTINUE, the configured TTL) is the request that left it unset."""
    canonical = [
        session.backend,
        session.mode.value,
        session.failure_policy.value,
        # Whole nanoseconds, as a Duration carries them: no float formatting in the digest.
        round(session.max_ttl_s * 1e9),
        round(session.idle_ttl_s * 1e9),
        sorted(session.labels.items()),
    ]
    return hashlib.sha256(json.dumps(canonical, separators=(",", ":")).encode()).digest()


# ---------------------------------------------------------------------------- decisions


def deadline(session: Session, *, has_work: bool) -> tuple[datetime, EndReason] | None:
    """When the session ends by itself, and why, unless something happens first; None for an
    ended session. The idle TTL runs only while the session has no work (nothing queued or
    running); the max TTL runs from the first job, work or not."""
    if session.state.is_final:
        return None
    candidates: list[tuple[datetime, EndReason]] = []
    if session.first_job_at is not None:
        candidates.append(
            (session.first_job_at + timedelta(seconds=session.max_ttl_s), EndReason.MAX_TTL)
        )
    if not has_work:
        idle_from = session.last_activity_at or session.created_at
        candidates.append((idle_from + timedelta(seconds=session.idle_ttl_s), EndReason.IDLE_TTL))
    return min(candidates, key=lambda c: c[0], default=None)


def expire(session: Session, now: datetime, *, has_work: bool) -> Session | None:
    """The session CLOSED by a TTL that has passed at `now`; None when none has."""
    due = deadline(session, has_work=has_work)
    if due is None or now < due[0]:
        return None
    return end(session, SessionState.CLOSED, due[1], now)


def end(session: Session, state: SessionState, reason: EndReason, now: datetime) -> Session:
    """The session ended (CLOSED or FAILED) at `now`."""
    assert state.is_final
    return dataclasses.replace(session, state=state, end_reason=reason, ended_at=now)


def job_accepted(session: Session, now: datetime) -> Session:
    """A job was created in the session: PENDING becomes ACTIVE; the max TTL starts with the
    first job. Admitted while the session accepted jobs, it may be recorded after a
    CloseSession (CLOSING stays CLOSING); an ended session is returned as it is."""
    if session.state.is_final:
        return session
    return dataclasses.replace(
        session,
        state=(SessionState.ACTIVE if session.state is SessionState.PENDING else session.state),
        first_job_at=session.first_job_at or now,
        last_activity_at=now,
    )


def job_ended(session: Session, job_failed: bool, now: datetime, *, has_work: bool) -> Session:
    """One of its jobs reached a final state; `has_work`: others are still queued or running.
    Under ABORT a failed job fails the session (the caller cancels the rest); a CLOSING
    session with nothing left is CLOSED."""
    if session.state.is_final:
        return session
    if job_failed and session.failure_policy is FailurePolicy.ABORT:
        return end(session, SessionState.FAILED, EndReason.JOB_FAILED, now)
    touched = dataclasses.replace(session, last_activity_at=now)
    if session.state is SessionState.CLOSING and not has_work:
        return end(touched, SessionState.CLOSED, EndReason.CLOSED, now)
    return touched


def close(session: Session, now: datetime, *, has_work: bool) -> Session:
    """CloseSession: accepts no more jobs; CLOSING while it still has work, else CLOSED. An
    ended or closing session is returned as it is."""
    if not session.state.accepts_jobs:
        return session
    if has_work:
        return dataclasses.replace(session, state=SessionState.CLOSING)
    return end(session, SessionState.CLOSED, EndReason.CLOSED, now)


def cancel(session: Session, now: datetime) -> Session:
    """CancelSession: ends it now (the caller cancels its jobs). An ended one stays as it is."""
    if session.state.is_final:
        return session
    return end(session, SessionState.CLOSED, EndReason.CANCELLED, now)


# ---------------------------------------------------------------------------- errors


def session_not_found(session_id: str) -> NotFound:
    name = f"sessions/{session_id}"
    return NotFound(
        "SESSION_NOT_FOUND",
        f"session {name} not found",
        metadata={"session": name},
        resource_info=ResourceInfo(SESSION_RESOURCE, name, "no such session for this caller"),
    )


def request_id_reused(request_id: str, session_id: str) -> InvalidArgument:
    """The error for a request_id that names a session made by a different request."""
    name = f"sessions/{session_id}"
    return InvalidArgument(
        "REQUEST_ID_REUSED",
        f"request_id {request_id!r} was already used for session {name} with a different request",
        metadata={"session": name, "requestId": request_id},
        field_violations=[
            FieldViolation("request_id", "already used for another request; use a new request_id")
        ],
    )


def session_closed(session: Session) -> FailedPrecondition:
    """A job sent to a session that no longer accepts jobs."""
    return FailedPrecondition(
        "SESSION_CLOSED",
        f"session {session.name} is {session.state.value} and accepts no more jobs; create a "
        "new session",
        metadata={"session": session.name, "state": session.state.value},
        resource_info=ResourceInfo(
            SESSION_RESOURCE, session.name, f"{session.state.value}: accepts no jobs"
        ),
    )


def session_backend_mismatch(session: Session, backend: str) -> FailedPrecondition:
    return FailedPrecondition(
        "SESSION_BACKEND_MISMATCH",
        f"session {session.name} runs on backends/{session.backend}, not backends/{backend}",
        metadata={"session": session.name, "backend": f"backends/{backend}"},
        resource_info=ResourceInfo(
            SESSION_RESOURCE, session.name, f"runs on backends/{session.backend}"
        ),
    )


def too_many_sessions(tenant: str, limit: int) -> ResourceExhausted:
    return ResourceExhausted(
        "SESSION_LIMIT_REACHED",
        f"tenant {tenant} already has {limit} open sessions, its limit; close one first",
        metadata={"limit": str(limit)},
        quota_violations=[QuotaViolation(f"tenants/{tenant}", f"at most {limit} open sessions")],
    )
