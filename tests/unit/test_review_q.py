"""Hostile review of 0f48fdd: named_result's framing walk, FairShare per_tenant, and
JobServicer._derived holding its slot past a cancelled caller."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import replace
from typing import Any

import anyio
import pytest
from google.protobuf.message import DecodeError
from qgateway.v1 import job_pb2, job_service_pb2

from gateway.api import job_service
from gateway.api.context import set_request_bytes
from gateway.domain.errors import DataLoss
from gateway.offload import INLINE_BYTES
from gateway.runtime import shielded
from tests.unit.test_run_result_read import Context, Manager, _result, _servicer


def _get_result(manager: Manager) -> object:
    servicer = _servicer(manager)
    request = job_service_pb2.GetJobResultRequest(name="jobs/j1/result")
    return asyncio.run(servicer.GetJobResult(request, Context()))  # type: ignore[arg-type]


@pytest.mark.parametrize("tail", [b"\x00\x00", b"\x00" * 16])
def test_a_stored_result_grown_by_zero_bytes_is_refused_not_answered(tail: bytes) -> None:
    stored = _result(100).SerializeToString(deterministic=True) + tail
    with pytest.raises(DecodeError):  # what every client does with the answer
        job_pb2.JobResult.FromString(stored)
    with pytest.raises(DataLoss) as refused:
        _get_result(Manager(stored))
    assert refused.value.reason == "STORE_CORRUPT"


def test_a_stored_result_cut_at_a_pub_boundary_is_refused_not_answered() -> None:
    whole = job_pb2.JobResult()
    for _ in range(2):
        whole.pub_results.add().sampler.registers.add(name="c", num_bits=8).samples = bytes(50)
    stored = whole.SerializeToString(deterministic=True)
    one_pub = job_pb2.JobResult(pub_results=whole.pub_results[:1])
    cut = stored[: len(one_pub.SerializeToString(deterministic=True))]
    manager = Manager(cut)
    manager.job = replace(manager.job, num_pubs=2)
    with pytest.raises(DataLoss):
        _get_result(manager)


def _servicer_with(derive: Any) -> job_service.JobServicer:  # derive: for the reader
    none: Any = None
    return job_service.JobServicer(
        none, 4 << 20, page_tokens=none, sessions=none, stream_budget=none, stream_pace=none
    )


def test_a_cancelled_derivation_under_an_anyio_scope_waits_without_spinning(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def slow(spec: job_pb2.JobSpec, digest: bool, specs: Any) -> tuple[bytes, bytes, Any]:
        time.sleep(0.3)
        return b"", b"", None

    monkeypatch.setattr(job_service, "_derive", slow)
    servicer = _servicer_with(slow)
    wakes = 0
    wait = asyncio.wait

    async def counting(*args: Any, **kwargs: Any) -> Any:
        nonlocal wakes
        wakes += 1
        return await wait(*args, **kwargs)

    monkeypatch.setattr(asyncio, "wait", counting)

    async def main() -> None:
        set_request_bytes(INLINE_BYTES + 1)
        with anyio.move_on_after(0.02):
            await servicer._derived("t", job_pb2.JobSpec(), digest=True)

    asyncio.run(main())
    assert wakes < 50, f"{wakes} wake-ups waiting for one thread"


def test_a_cancelled_callers_failed_derivation_is_logged(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(spec: job_pb2.JobSpec, digest: bool, specs: Any) -> tuple[bytes, bytes, Any]:
        time.sleep(0.1)
        raise RuntimeError("derivation bug")

    monkeypatch.setattr(job_service, "_derive", broken)
    servicer = _servicer_with(broken)

    async def main() -> None:
        set_request_bytes(INLINE_BYTES + 1)
        call = asyncio.ensure_future(servicer._derived("t", job_pb2.JobSpec(), digest=True))
        await asyncio.sleep(0.02)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        # Its derivation runs on (the slot held) until its thread ends.
        await asyncio.wait(set(shielded._left_behind), timeout=10)

    with caplog.at_level(logging.DEBUG):
        asyncio.run(main())
    assert any("derivation bug" in r.getMessage() or r.exc_info for r in caplog.records)
