"""Responses sent from bytes the gateway already holds instead of messages built for them.

A result is stored as its serialised JobResult. Answered as a message, it was parsed (C code
holding the GIL: ~10 ms for 2 MB of counts) for gRPC to serialise it again, about as long: one
tenant fetching a 2.2 MB result 44 times a second took another tenant's GetJob from 2.2 to
40 ms and its Run from 5.8 to 124 ms. A message's wire form is its fields' concatenated, so a
response holding a stored result is the rest of the response's bytes followed by the result's
field, written here; the error boundary's serializer sends such bytes as they are. Stored
results are written by the gateway, canonically; their framing is checked here (a result cut
short is DATA_LOSS), their content is not parsed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from google.protobuf.message import Message
from qgateway.v1 import job_pb2

from gateway.api.wire_format import LEN, fields, length_delimited

M = TypeVar("M", bound=Message)

_RESULT_NAME = job_pb2.JobResult.DESCRIPTOR.fields_by_name["name"].number
_PUB_RESULTS = job_pb2.JobResult.DESCRIPTOR.fields_by_name["pub_results"].number


@dataclass(frozen=True)
class Preserialized:
    """A response message's wire bytes."""

    data: bytes

    def parse(self, cls: type[M]) -> M:
        """The message (for callers in process; gRPC sends `data`)."""
        return cls.FromString(self.data)


def serializer(serialize: Callable[[Any], bytes] | None) -> Callable[[Any], bytes]:
    """`serialize`, but a Preserialized response is sent as its bytes (None, a handler's
    serializer for responses that are bytes already: sent as they are)."""

    def send(response: Any) -> bytes:
        if isinstance(response, Preserialized):
            return response.data
        return response if serialize is None else serialize(response)

    return send


def named_result(stored: bytes, name: str, pubs: int) -> bytes:
    """A stored JobResult's bytes, of a job of `pubs` PUBs, with its resource name set (stored
    results have none).

    The name goes first: after the stored bytes, a result cut short inside its last field
    would take the name's bytes into that field and parse as another, valid-looking result.
    The stored fields' framing is walked (one step per PUB, never into them), so a result
    cut short or grown (a zero-filled tail reads as field 0, which protobuf refuses), or
    holding another number of PUBs, is refused here, not answered.

    Raises:
        ValueError: The stored bytes' fields do not end where the bytes do, a field number
            is outside protobuf's range, or the result holds another number of PUBs.
    """
    found = sum(number == _PUB_RESULTS and kind == LEN for number, kind, _, _ in fields(stored))
    if found != pubs:
        raise ValueError(f"it holds {found} PUB results for the job's {pubs} PUBs")
    return length_delimited(_RESULT_NAME, name.encode()) + stored
