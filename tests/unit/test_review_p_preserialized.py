"""Hostile review of f9e0e7e: GetJobResult and Run answer a stored result's bytes unparsed
(gateway.api.preserialized)."""

from __future__ import annotations

import asyncio

import pytest
from google.protobuf.message import DecodeError
from qgateway.v1 import job_pb2, job_service_pb2

from gateway.domain.errors import DataLoss
from tests.rpc import ghz, sampler_spec
from tests.unit.test_run_result_read import Context, Manager, _result, _servicer


def _truncated(cut: int) -> bytes:
    stored = _result(100).SerializeToString(deterministic=True)
    bad = stored[:-cut]
    with pytest.raises(DecodeError):  # the old servicer's parse refused it (INTERNAL)
        job_pb2.JobResult.FromString(bad)
    return bad


def _run(stored: bytes) -> object:
    servicer = _servicer(Manager(stored))
    request = job_service_pb2.RunRequest(request_id="r1", spec=sampler_spec(ghz(2)))
    return asyncio.run(servicer.Run(request, Context()))  # type: ignore[arg-type]


@pytest.mark.parametrize("cut", [1, 11])
def test_a_truncated_stored_result_is_refused_at_the_gateway_not_answered(cut: int) -> None:
    # Sent unparsed after its stored bytes, the name field was swallowed into the truncated
    # field: the client parsed another result (no name, the name's bytes in the samples) as
    # a success. Before the bytes were sent unparsed, the gateway's parse refused it.
    with pytest.raises(DataLoss) as refused:
        _run(_truncated(cut))
    assert refused.value.reason == "STORE_CORRUPT"
    servicer = _servicer(Manager(_truncated(cut)))
    request = job_service_pb2.GetJobResultRequest(name="jobs/j1/result")
    with pytest.raises(DataLoss):
        asyncio.run(servicer.GetJobResult(request, Context()))  # type: ignore[arg-type]
