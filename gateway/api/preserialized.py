"""Responses sent from bytes the gateway already holds instead of messages built for them.

A result is stored as its serialised JobResult. Answered as a message, it was parsed (C code
holding the GIL: ~10 ms for 2 MB of counts) for gRPC to serialise it again, about as long: one
tenant fetching a 2.2 MB result 44 times a second took another tenant's GetJob from 2.2 to
40 ms and its Run from 5.8 to 124 ms. A message's wire form is its fields' concatenated, so a
response holding a stored result is the rest of the response's bytes followed by the result's
field, written here; the error boundary's serializer sends such bytes as they are.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from google.protobuf.message import Message
from qgateway.v1 import job_pb2

from gateway.api.wire_format import encode_varint

M = TypeVar("M", bound=Message)

_LEN = 2
_RESULT_NAME = job_pb2.JobResult.DESCRIPTOR.fields_by_name["name"].number


@dataclass(frozen=True)
class Preserialized:
    """A response message's wire bytes."""

    data: bytes

    def parse(self, cls: type[M]) -> M:
        """The message (for callers in process; gRPC sends `data`)."""
        return cls.FromString(self.data)


def serializer(serialize: Callable[[Any], bytes]) -> Callable[[Any], bytes]:
    """`serialize`, but a Preserialized response is sent as its bytes."""

    def send(response: Any) -> bytes:
        return response.data if isinstance(response, Preserialized) else serialize(response)

    return send


def message_field(number: int, data: bytes) -> bytes:
    """Field `number` holding a message whose wire bytes are `data`."""
    return encode_varint(number << 3 | _LEN) + encode_varint(len(data)) + data


def named_result(stored: bytes, name: str) -> bytes:
    """A stored JobResult's bytes with its resource name set (stored results have none)."""
    return stored + message_field(_RESULT_NAME, name.encode())
