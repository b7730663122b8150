"""Guards of the hot path's trims.

A worker's reply is refused if it holds a msgpack timestamp (extension -1, which msgpack
decodes itself, never asking the ext hook) in any of its encodings, at any level; the decoder
skips the walk that finds one only when the reply's bytes cannot hold one
(reply_codec._TIMESTAMP_HEADER). The audit chain's MACs stay those earlier gateways wrote."""

from __future__ import annotations

import struct
from datetime import UTC, datetime, timedelta

import msgpack  # type: ignore[import-untyped, unused-ignore]
import pytest

from gateway.domain import audit
from gateway.runtime import reply_codec

_EIGHT = struct.pack(">Q", 5)
# Every header msgpack can read a timestamp from: fixext 4 and 8, ext 8/16/32.
TIMESTAMPS = {
    "fixext4": b"\xd6\xff\x00\x00\x00\x05",
    "fixext8": b"\xd7\xff" + _EIGHT,
    "ext8-12": b"\xc7\x0c\xff" + bytes(11) + b"\x05",
    "ext8-8": b"\xc7\x08\xff" + _EIGHT,
    "ext16-8": b"\xc8\x00\x08\xff" + _EIGHT,
    "ext32-8": b"\xc9\x00\x00\x00\x08\xff" + _EIGHT,
    "ext32-4": b"\xc9\x00\x00\x00\x04\xff\x00\x00\x00\x05",
}


def _placed(timestamp: bytes) -> dict[str, bytes]:
    frozenset_of_it = msgpack.packb(msgpack.ExtType(3, b"\x91" + timestamp))
    return {
        "top": b"\x92\xa2ok" + timestamp,  # ("ok", ts)
        "map": b"\x92\xa2ok\x81\xa1k" + timestamp,  # ("ok", {"k": ts})
        "nested": b"\x92\xa2ok" + frozenset_of_it,  # ("ok", frozenset({ts}))
    }


@pytest.mark.parametrize("form", sorted(TIMESTAMPS))
@pytest.mark.parametrize("where", ["top", "map", "nested"])
def test_a_timestamp_is_refused_in_every_encoding_and_place(form: str, where: str) -> None:
    timestamp = TIMESTAMPS[form]
    assert isinstance(msgpack.unpackb(timestamp, timestamp=0), msgpack.Timestamp)
    with pytest.raises(reply_codec.RefusedReply, match="timestamp"):
        reply_codec.decode(_placed(timestamp)[where])


def test_the_header_bytes_inside_a_value_are_no_refusal() -> None:
    # The pattern by chance in a value's bytes: the reply is walked, and nothing is refused.
    data = bytes.fromhex("d6ff00000005") + b"\xc9\x00\x00\x00\x04\xff"
    reply = reply_codec.decode(msgpack.packb(["ok", data], use_bin_type=True))
    assert reply == ("ok", data)


def test_a_reply_that_cannot_hold_a_timestamp_is_not_walked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    walked: list[object] = []
    monkeypatch.setattr(reply_codec, "_refuse_timestamps", walked.append)
    plain = reply_codec.encode(("ok", {"a": (1, 2.5, "x")}, frozenset({3})))
    assert reply_codec.decode(plain) == ("ok", {"a": (1, 2.5, "x")}, frozenset({3}))
    assert walked == []
    reply_codec.decode(msgpack.packb(["ok", b"\xd7\xff"], use_bin_type=True))
    assert walked  # a possible header: every level is walked


# --- the audit chain's MACs are those every earlier gateway wrote ------------------------------
#
# audit.chain computes a record's MAC without copying it first (one copy per record, not two):
# the MACs must stay byte-identical, or `qgateway audit verify` fails every record an earlier
# version wrote. These were computed by the chain as it was before the change.


_AT = datetime(2026, 12, 7, 1, 2, 3, 456789, tzinfo=UTC)
_KEY = bytes(range(32))
_PREVIOUS = audit.ChainPoint(41, bytes([7]) * audit.MAC_BYTES)
_RECORD = audit.AuditRecord(
    time=_AT,
    end_time=_AT + timedelta(milliseconds=5),
    service="qgateway.v1.JobService",
    method="Run",
    principal="apiKeys/abc",
    tenant="acme",
    key_prefix="abc",
    peer="ipv4:127.0.0.1:1",
    resource="jobs/x",
    backend="aer",
    circuit_digest="ab" * 32,
    shots=1024,
    code=0,
    request_id="r-1",
    count=1,
    sequence=99,  # ignored: chained after the previous point
    mac=b"junk",  # ignored
)


def test_the_chain_s_macs_are_unchanged() -> None:
    sealed = audit.chain(_KEY, _PREVIOUS, [_RECORD, _RECORD])
    assert [(s.sequence, s.mac.hex()) for s in sealed] == [
        (42, "3b425b2fb15b035278cf8b309a43ca8b6b9540b5126047d0491c29dce9e254a1"),
        (43, "db4d727f3e9835237b1c8b8c1708f26089905d9ba93c2bf70eb8ea98de75895e"),
    ]
    assert all(s.end_time == _RECORD.end_time for s in sealed)


def test_the_chain_s_mac_of_a_record_the_store_ends_is_the_old_chain_s() -> None:
    # chain(end_time=...), as the store calls it: the old chain's MAC of
    # replace(record, end_time=ended) (computed at 1d47627), and the one verify recomputes.
    ended = _AT + timedelta(seconds=1)
    (closed,) = audit.chain(_KEY, _PREVIOUS, [_RECORD], end_time=ended)
    assert (closed.sequence, closed.end_time) == (42, ended)
    assert closed.mac.hex() == "dd67185b9acbc2fe0fdb4d3b5a47a2697260152ea62123299d861d109dec9a90"
    assert closed.mac == audit.record_mac(_KEY, _PREVIOUS.mac, closed)


# --- the second round: the same bytes, cheaper ------------------------------------------------


@pytest.mark.parametrize(
    "nanos", [0, 1, 999_999_999, 1_000_000_000, 1_500_000_001, -1, -999_999_999, -1_500_000_001]
)
def test_a_duration_is_set_as_protobuf_sets_it(nanos: int) -> None:
    from google.protobuf import duration_pb2

    from gateway.api.codec import _set_duration

    ours, theirs = duration_pb2.Duration(), duration_pb2.Duration()
    _set_duration(ours, nanos)
    theirs.FromNanoseconds(nanos)
    assert (ours.seconds, ours.nanos) == (theirs.seconds, theirs.nanos)


def test_a_stored_history_reads_as_before_and_refuses_what_it_refused() -> None:
    from gateway.domain.jobs import JobState
    from gateway.store.sqlite import _history_from_json

    history = _history_from_json('[["QUEUED",1],["RUNNING",2],["SUCCEEDED",3]]')
    assert [t.state for t in history] == [JobState.QUEUED, JobState.RUNNING, JobState.SUCCEEDED]
    with pytest.raises(ValueError, match="is not a valid JobState"):
        _history_from_json('[["LOST",1]]')
