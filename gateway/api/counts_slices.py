"""A stored Counts message cut into Counts messages of consecutive entries, on its wire bytes.

StreamJobResult sends a binding's counts in slices of up to 3 MiB (~500,000 entries of a
24-bit register). Copied through Python, a slice turned every count into a Python int and back
(`Counts(counts=stored.counts[a:b])`, then a copy into the response): ~55 ms of the event loop
for such a slice, its serialisation included, while no other tenant's call progressed. Here the
counts stay packed varints: the slice's bytes are cut out of the stored message's (a view of
the stored result, gateway.api.result_views) and sent as they are, inside the response's few
other fields (gateway.api.preserialized).
"""

from __future__ import annotations

import numpy as np
from qgateway.v1 import job_pb2

from gateway.api.wire_format import LEN, fields, length_delimited

_OUTCOMES = job_pb2.Counts.DESCRIPTOR.fields_by_name["outcomes"].number
_COUNTS = job_pb2.Counts.DESCRIPTOR.fields_by_name["counts"].number


class CountsSlices:
    """Slices of one stored Counts message (its wire bytes) whose outcomes are rows of `row`
    bytes.

    A field a newer gateway may have added is skipped: a slice holds the two fields this one
    knows, as when it copied them.

    Raises:
        ValueError: The message's counts are not packed varints (protobuf writes a proto3
            repeated scalar packed), its outcomes are not one row per count, or it is not
            valid protobuf.
    """

    def __init__(self, wire: memoryview, row: int) -> None:
        outcomes = packed = memoryview(b"")
        for number, wire_type, start, end in fields(wire):  # type: ignore[arg-type]
            if wire_type != LEN:
                continue
            if number == _OUTCOMES:
                outcomes = wire[start:end]
            elif number == _COUNTS:
                packed = wire[start:end]
        self._outcomes = outcomes
        self._packed = packed
        self._row = row
        # Where each count's varint ends: at its one byte below 0x80.
        self._ends = np.flatnonzero(np.frombuffer(packed, dtype=np.uint8) < 0x80)
        self.entries = len(self._ends)
        if packed and packed[-1] >= 0x80:
            raise ValueError("a stored Counts message's counts are not packed varints")
        if len(outcomes) != self.entries * row:
            raise ValueError("a stored Counts message's outcomes are not one row per count")

    def wire(self, first: int, stop: int) -> bytes:
        """The wire bytes of a Counts message of entries [first, stop) (clipped to the end)."""
        stop = min(stop, self.entries)
        start_byte = 0 if first == 0 else int(self._ends[first - 1]) + 1
        stop_byte = int(self._ends[stop - 1]) + 1
        outcomes = self._outcomes[first * self._row : stop * self._row]
        packed = self._packed[start_byte:stop_byte]
        return length_delimited(_OUTCOMES, bytes(outcomes)) + length_delimited(
            _COUNTS, bytes(packed)
        )
