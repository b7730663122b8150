"""Re-read of session 33's change: two defects found, fixed here.

gateway.api.request_pieces walks a large map entry (a Struct's, in provider options) itself and
passes only its values' payloads on to protobuf, and it did not parse it as protobuf does: the
entry's key field and any other field of the entry were read by Python's walk (10-byte varints)
and never seen by upb, so a key or a length longer than 5 bytes there, which protobuf's parse
refuses, was accepted; and an entry holding a field other than its key and value, which
protobuf keeps out of the map (as an unknown field of the Struct), was put in the map.
"""

from __future__ import annotations

import tracemalloc

import pytest
from google.protobuf.message import DecodeError
from qgateway.v1 import job_pb2, job_service_pb2

from gateway.api.request_pieces import PIECE_BYTES, parse
from gateway.api.result_views import split_result
from gateway.api.wire_format import length_delimited as ld
from tests.unit.test_request_pieces_review import _overlong

Request = job_service_pb2.SubmitJobRequest

# A Value of a string longer than a piece: the map entry holding it is walked, not merged whole.
_LONG_STRING = ld(3, b"x" * (PIECE_BYTES + 1))  # Value.string_value


def _provider_option(entry: bytes) -> bytes:
    """A SubmitJobRequest whose spec.options.provider_options.fields holds `entry`."""
    return ld(2, ld(3, ld(8, ld(1, entry))))


@pytest.mark.parametrize(
    "entry",
    [
        # The key field's key, then its length, six bytes long.
        _overlong(1 << 3 | 2, 6) + b"\x01k" + ld(2, _LONG_STRING),
        ld(1, b"k")[:1] + _overlong(1, 6) + b"k" + ld(2, _LONG_STRING),
        # Another field of the entry with a six-byte key.
        _overlong(5 << 3, 6) + b"\x01" + ld(1, b"k") + ld(2, _LONG_STRING),
    ],
)
def test_a_large_map_entrys_overlong_key_or_length_is_refused_as_protobuf_refuses_it(
    entry: bytes,
) -> None:
    data = _provider_option(entry)
    with pytest.raises(DecodeError):
        Request.FromString(data)
    with pytest.raises(ValueError):
        parse(Request, data)


@pytest.mark.parametrize(
    "other",
    [
        b"\x28\x01",  # an unknown field number
        b"\x08\x01",  # the key's number, as a varint
        b"\x10\x01",  # the value's number, as a varint
    ],
)
def test_a_large_map_entry_holding_another_field_is_never_put_in_the_map(other: bytes) -> None:
    data = _provider_option(ld(1, b"k") + other + ld(2, _LONG_STRING))
    # protobuf keeps such an entry out of the map (an unknown field of the Struct, parsed whole
    # first); decoded in pieces, it is refused instead of being parsed whole.
    assert "k" not in Request.FromString(data).spec.options.provider_options
    with pytest.raises(ValueError):
        parse(Request, data)


def test_a_large_map_entrys_keys_and_lengths_of_five_bytes_agree() -> None:
    value = _LONG_STRING
    entry = (
        _overlong(1 << 3 | 2, 5)
        + _overlong(1, 5)
        + b"k"
        + _overlong(2 << 3 | 2, 5)
        + _overlong(len(value), 5)
        + value
    )
    data = _provider_option(entry)
    parsed = parse(Request, data)
    assert parsed == Request.FromString(data)
    assert parsed.spec.options.provider_options["k"] == "x" * (PIECE_BYTES + 1)


# --- StreamJobResult held a memoryview per binding -------------------------------------------
#
# gateway.api.result_views kept each binding's stored Counts as a memoryview of the stored
# result (~190 bytes each), so a stream of a result of 100,000 small Counts (0.8 MB stored, all
# its budget charged) held 19 MB: the stream budget charges the stored size only. Now each
# binding's Counts is two offsets, its view made when the stream reaches it.


def test_a_split_result_holds_about_its_stored_size() -> None:
    result = job_pb2.JobResult()
    sampler = result.pub_results.add().sampler
    sampler.shots = 1
    sampler.shape.append(100_000)
    register = sampler.registers.add(name="c", num_bits=2)
    for _ in range(100_000):
        register.counts.add(outcomes=b"\x01", counts=[1])
    data = result.SerializeToString(deterministic=True)
    tracemalloc.start()
    try:
        stored = split_result(data)
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert held < 2 * len(data)
    tables = stored.counts[0][0]
    assert len(tables) == 100_000
    assert bytes(tables[99_999]) == register.counts[99_999].SerializeToString()
    assert tables[0].obj is data  # a view of the stored bytes, not a copy
    with pytest.raises(IndexError):
        tables[100_000]
