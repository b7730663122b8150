"""A damaged stored result answers its stream DATA_LOSS (STORE_CORRUPT), as GetJobResult and
Run answer it, not INTERNAL: the gateway never writes such a result, so only the database can
have been changed under it, and the caller (and the operator) must be told which."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from qgateway.v1 import job_pb2, job_service_pb2

from gateway.domain.errors import DataLoss
from tests.unit.test_run_result_read import Context, Manager, _servicer


def _stream(stored: bytes) -> list[Any]:
    request = job_service_pb2.StreamJobResultRequest(name="jobs/j1/result")
    servicer = _servicer(Manager(stored))

    async def read() -> list[Any]:
        return [r async for r in servicer.StreamJobResult(request, Context())]  # type: ignore[arg-type]

    return asyncio.run(read())


def _sampler_result(samples: bytes, counts: int, shape: tuple[int, ...] = (2,)) -> bytes:
    result = job_pb2.JobResult()
    sampler = result.pub_results.add().sampler
    sampler.shots = 4
    sampler.shape.extend(shape)
    register = sampler.registers.add(name="c", num_bits=8)
    register.samples = samples
    for _ in range(counts):
        register.counts.add(outcomes=b"\x01", counts=[4])
    return result.SerializeToString(deterministic=True)


def test_a_sound_result_streams() -> None:
    responses = _stream(_sampler_result(bytes(8), counts=2))
    assert responses[-1].HasField("digest")


@pytest.mark.parametrize(
    "stored",
    [
        # Samples of 7 bytes for 2 bindings x 4 shots x 1 byte.
        _sampler_result(bytes(7), counts=0),
        # 3 counts tables for 2 bindings.
        _sampler_result(b"", counts=3),
        # Samples after the register's counts: no canonical serialisation writes that.
        b"\x0a\x0c\x0a\x0a\x1a\x08\x22\x00\x1a\x04abcd",
        # A field longer than its message.
        b"\x0a\x05ab",
    ],
    ids=["samples-size", "counts-length", "out-of-order", "truncated"],
)
def test_a_damaged_stored_result_is_answered_data_loss(stored: bytes) -> None:
    with pytest.raises(DataLoss) as refused:
        _stream(stored)
    assert refused.value.reason == "STORE_CORRUPT"
    assert refused.value.metadata["job"] == "jobs/j1"


@pytest.mark.timeout(10)
def test_a_pub_of_a_huge_shape_and_no_data_streams_at_once() -> None:
    # A damaged shape (10**12 bindings) over registers holding neither samples nor counts:
    # the stream walked every binding, inline on the event loop (the stored bytes are few).
    result = job_pb2.JobResult()
    sampler = result.pub_results.add().sampler
    sampler.shots = 4
    sampler.shape.extend([10**6, 10**6])
    sampler.registers.add(name="c", num_bits=8)
    responses = _stream(result.SerializeToString(deterministic=True))
    assert responses[0].HasField("header") and responses[-1].HasField("digest")
    assert len(responses) == 2
