"""Re-read of session 34's change (1d47627..bd8f14c): two defects found, fixed here.

1. StreamJobResult refused a damaged stored result DATA_LOSS only for the damage its split and
   size checks see; a stored result holding another number of PUBs than its job streamed (a
   PUB too many: sent as if it were the job's), or, resumed at a PUB the job has and the
   stored result lacks, answered INVALID_ARGUMENT INVALID_RESUME_POSITION: a client error for
   damage the client did not cause. GetJobResult and Run refuse it (named_result). Fixed.
2. A stored estimator PUB holding fewer (or more) values or standard errors than its shape's
   bindings streamed as it was, ending OK (none of the stream's size checks covered an
   estimator): the Python client's reassembly refused it as a malformed stream (ValueError),
   other clients as they may, and the operator never heard. Fixed: DATA_LOSS, as for a
   sampler PUB (standard errors left out for every entry stay allowed, as the client reads).

Guards it added for what it checked and found sound are with the tests of what they guard:
the MAC of a record the store ends (test_session34_hot_path) and a quick step making no
renewing task (test_session34_claim_kept).
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import pytest
from qgateway.v1 import job_pb2, job_service_pb2

from gateway.api import preserialized
from gateway.domain.errors import DataLoss, InvalidArgument
from tests.unit.test_run_result_read import Context, Manager, _servicer


def _stream(stored: bytes, num_pubs: int, start_pub: int = 0) -> list[Any]:
    request = job_service_pb2.StreamJobResultRequest(
        name="jobs/j1/result", start_pub_index=start_pub
    )
    manager = Manager(stored)
    manager.job = dataclasses.replace(manager.job, num_pubs=num_pubs)
    servicer = _servicer(manager)

    async def read() -> list[Any]:
        return [r async for r in servicer.StreamJobResult(request, Context())]  # type: ignore[arg-type]

    return asyncio.run(read())


def _sampler_pubs(pubs: int) -> bytes:
    result = job_pb2.JobResult()
    for _ in range(pubs):
        sampler = result.pub_results.add().sampler
        sampler.shots = 1
        sampler.registers.add(name="c", num_bits=8).samples = b"\x01"
    return result.SerializeToString(deterministic=True)


# --- 1. a stored result of another number of PUBs than its job -------------------------------


def test_a_sound_result_of_the_job_s_pubs_streams() -> None:
    responses = _stream(_sampler_pubs(2), num_pubs=2, start_pub=1)
    assert [r.pub_index for r in responses[:-1]] == [1, 1]
    assert responses[-1].HasField("digest")


@pytest.mark.parametrize(
    ("stored_pubs", "start_pub"),
    [(2, 0), (1, 0), (1, 1)],
    ids=["a-pub-too-many", "a-pub-too-few", "a-pub-too-few-resumed-past-it"],
)
def test_a_stored_result_of_another_number_of_pubs_is_data_loss(
    stored_pubs: int, start_pub: int
) -> None:
    stored = _sampler_pubs(stored_pubs)
    job_pubs = 3 - stored_pubs  # 1 for 2 stored, 2 for 1 stored
    # What GetJobResult and Run answer for the same bytes (DATA_LOSS, STORE_CORRUPT).
    with pytest.raises(ValueError, match="PUB results"):
        preserialized.named_result(stored, "jobs/j1/result", job_pubs)
    try:
        _stream(stored, num_pubs=job_pubs, start_pub=start_pub)
    except InvalidArgument as refused:  # before the fix, resumed past the stored PUBs
        pytest.fail(f"damage answered as the client's error: {refused.reason}")
    except DataLoss as refused:
        assert refused.reason == "STORE_CORRUPT"
        assert refused.metadata["job"] == "jobs/j1"
        assert "PUB results" in refused.message
    else:  # before the fix, streamed as the job's result
        pytest.fail("a result of another number of PUBs was streamed")


# --- 2. an estimator PUB's values are not checked against its shape ---------------------------


def _estimator(values: int, errors: int) -> bytes:
    result = job_pb2.JobResult()
    estimator = result.pub_results.add().estimator
    estimator.shape.extend([2])
    estimator.expectation_values.extend([0.5] * values)
    estimator.standard_errors.extend([0.1] * errors)
    return result.SerializeToString(deterministic=True)


@pytest.mark.parametrize("errors", [2, 0], ids=["with-errors", "errors-left-out"])
def test_a_sound_estimator_pub_streams(errors: int) -> None:
    responses = _stream(_estimator(2, errors), num_pubs=1)
    assert list(responses[1].values.expectation_values) == [0.5, 0.5]
    assert list(responses[1].values.standard_errors) == [0.1] * errors
    assert responses[-1].HasField("digest")


@pytest.mark.parametrize(("values", "errors"), [(1, 1), (3, 3), (2, 1), (2, 3), (1, 0)])
def test_an_estimator_pub_of_the_wrong_size_is_data_loss(values: int, errors: int) -> None:
    with pytest.raises(DataLoss) as refused:
        _stream(_estimator(values, errors), num_pubs=1)
    assert refused.value.reason == "STORE_CORRUPT"
    assert "bindings" in refused.value.message
