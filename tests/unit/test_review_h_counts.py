"""Hostile review H: counts slices cut on wire bytes (gateway.api.counts_slices)."""

from __future__ import annotations

from qgateway.v1 import job_pb2

from gateway.api.counts_slices import CountsSlices
from gateway.api.wire_format import encode_varint


def test_a_stored_counts_with_a_field_added_later_still_slices() -> None:
    known = job_pb2.Counts(outcomes=b"\x00\x01\x02", counts=[5, 1 << 40, 7])
    # e.g. a later `int32 num_bits = 3;` in Counts, as a newer gateway stores it.
    stored = job_pb2.Counts.FromString(
        known.SerializeToString() + encode_varint(3 << 3 | 0) + encode_varint(24)
    )
    assert list(stored.counts) == [5, 1 << 40, 7]  # protobuf itself reads it
    slices = CountsSlices(memoryview(stored.SerializeToString()), 1)
    cut = job_pb2.Counts.FromString(slices.wire(1, 3))
    assert (cut.outcomes, list(cut.counts)) == (b"\x01\x02", [1 << 40, 7])
