"""SessionService's wire side in process: the ListSessions filter (the ListJobs language over a
session's fields), CreateSession's fields as read and refused, and a session as answered."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from google.protobuf import duration_pb2
from qgateway.v1 import session_pb2

from gateway.api.session_filter import parse_session_filter
from gateway.api.session_service import _request_digest, decode_new_session, encode_session
from gateway.domain.errors import GatewayError
from gateway.domain.sessions import FailurePolicy, Session, SessionMode, SessionState


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
    assert _request_digest(noisy) == _request_digest(session_pb2.Session(backend="backends/aer"))
    assert _request_digest(msg) != _request_digest(noisy)
    bad = [
        (session_pb2.Session(), "INVALID_SESSION"),
        (session_pb2.Session(backend="aer"), "INVALID_BACKEND_NAME"),
        (session_pb2.Session(backend="backends/aer", mode=7), "INVALID_SESSION"),  # type: ignore[arg-type]
        (session_pb2.Session(backend="backends/aer", idle_ttl=_duration(-1)), "INVALID_SESSION"),
        (session_pb2.Session(backend="backends/aer", max_ttl=_duration(0)), "INVALID_SESSION"),
    ]
    for request, reason in bad:
        with pytest.raises(GatewayError) as refused:
            decode_new_session(request)
        assert refused.value.reason == reason, request


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
