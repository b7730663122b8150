"""Responses holding a stored result are its bytes with a few fields around them, which parse
to the message the servicer used to build by parsing the result."""

from __future__ import annotations

from qgateway.v1 import job_pb2, job_service_pb2

from gateway.api import preserialized
from gateway.api.preserialized import Preserialized
from gateway.api.wire_format import length_delimited
from tests.unit.test_result_stream import big_result


def _field_number(cls: type, name: str) -> int:
    number: int = cls.DESCRIPTOR.fields_by_name[name].number  # type: ignore[attr-defined]
    return number


def test_a_named_stored_result_is_the_result_with_its_name() -> None:
    result = big_result()
    stored = result.SerializeToString(deterministic=True)
    named = job_pb2.JobResult.FromString(preserialized.named_result(stored, "jobs/j-1/result", 3))
    expected = job_pb2.JobResult()
    expected.CopyFrom(result)
    expected.name = "jobs/j-1/result"
    assert named == expected


def test_responses_around_a_stored_result_parse_as_built_ones() -> None:
    result = big_result()
    stored = preserialized.named_result(
        result.SerializeToString(deterministic=True), "jobs/j/result", 3
    )
    field = _field_number(job_service_pb2.RunResponse, "result")
    rest = job_service_pb2.RunResponse(job=job_pb2.Job(name="jobs/j"), created=True)
    sent = Preserialized(rest.SerializeToString() + length_delimited(field, stored))
    built = job_service_pb2.RunResponse()
    built.CopyFrom(rest)
    built.result.MergeFromString(stored)
    assert sent.parse(job_service_pb2.RunResponse) == built


def test_the_serializer_sends_preserialized_bytes_and_serialises_messages() -> None:
    send = preserialized.serializer(job_service_pb2.GetJobResultResponse.SerializeToString)
    assert send(Preserialized(b"\x0a\x00")) == b"\x0a\x00"
    message = job_service_pb2.GetJobResultResponse(result=job_pb2.JobResult(name="jobs/j/result"))
    assert send(message) == message.SerializeToString()
