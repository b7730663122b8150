"""Counts slices cut on the wire bytes are the slices Python would make of the message."""

from __future__ import annotations

import numpy as np
import pytest
from qgateway.v1 import job_pb2

from gateway.api.counts_slices import CountsSlices


def _counts(entries: int, row: int, seed: int) -> job_pb2.Counts:
    rng = np.random.default_rng(seed)
    # Counts of every varint length, from one byte to nine (int64's largest positive).
    sizes = rng.integers(0, 63, entries)
    values = [int(rng.integers(1, 1 << int(s), endpoint=True)) for s in sizes]
    return job_pb2.Counts(outcomes=rng.bytes(entries * row), counts=values)


@pytest.mark.parametrize("row", [1, 3, 8])
@pytest.mark.parametrize("per", [1, 2, 7, 64, 999, 1000, 5000])
def test_each_slice_is_the_messages_entries_from_its_offset(row: int, per: int) -> None:
    stored = _counts(1000, row, seed=row * per)
    slices = CountsSlices(memoryview(stored.SerializeToString()), row)
    assert slices.entries == 1000
    for first in range(0, 1000, per):
        cut = job_pb2.Counts.FromString(slices.wire(first, first + per))
        assert list(cut.counts) == list(stored.counts[first : first + per])
        assert cut.outcomes == stored.outcomes[first * row : (first + per) * row]


def test_a_slice_past_the_end_stops_at_the_last_entry() -> None:
    stored = job_pb2.Counts(outcomes=b"\x00\x01\x02", counts=[5, 1 << 40, 7])
    cut = job_pb2.Counts.FromString(
        CountsSlices(memoryview(stored.SerializeToString()), 1).wire(2, 10)
    )
    assert (cut.outcomes, list(cut.counts)) == (b"\x02", [7])


def test_counts_without_entries_have_no_slices() -> None:
    assert CountsSlices(memoryview(b""), 3).entries == 0


@pytest.mark.parametrize(
    "stored",
    [
        job_pb2.Counts(outcomes=b"\x00\x01", counts=[1, 2, 3]),  # fewer rows than counts
        job_pb2.Counts(outcomes=b"\x00\x01\x02\x03", counts=[1, 2, 3]),  # more
    ],
)
def test_outcomes_that_are_not_one_row_per_count_are_refused(stored: job_pb2.Counts) -> None:
    with pytest.raises(ValueError, match="one row per count"):
        CountsSlices(memoryview(stored.SerializeToString()), 1)


def test_counts_whose_last_varint_is_cut_are_refused() -> None:
    assert job_pb2.Counts(outcomes=b"\x00", counts=[300]).SerializeToString() == (
        b"\x0a\x01\x00\x12\x02\xac\x02"
    )
    with pytest.raises(ValueError, match="packed varints"):
        CountsSlices(memoryview(b"\x0a\x01\x00\x12\x01\xac"), 1)  # 300 without its last byte
