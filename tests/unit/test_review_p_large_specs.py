"""Hostile review of f7326d0: large specs derived LARGE_SPECS_AT_ONCE (1) at a time through a
FairShare keyed by tenant (JobServicer._derived)."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest
from qgateway.v1 import job_pb2

from gateway.api import job_service
from gateway.api.context import set_request_bytes
from gateway.api.job_service import JobServicer
from gateway.offload import INLINE_BYTES


def _servicer() -> JobServicer:
    none: Any = None
    return JobServicer(
        none, 4 << 20, page_tokens=none, sessions=none, stream_budget=none, stream_pace=none
    )


class _Derivations:
    """A _derive that blocks until released and records how many run at once."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.running = 0
        self.most = 0
        self.started: list[str] = []
        self.release = threading.Event()
        self.first_started = threading.Event()

    def __call__(self, spec: job_pb2.JobSpec, digest: bool, specs: Any) -> tuple[bytes, bytes, Any]:
        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)
            self.started.append(spec.labels["who"])
        self.first_started.set()
        try:
            self.release.wait(5)
        finally:
            with self.lock:
                self.running -= 1
        return b"", b"", None


async def _derived(servicer: JobServicer, tenant: str, who: str) -> None:
    set_request_bytes(INLINE_BYTES + 1)
    spec = job_pb2.JobSpec(backend="backends/aer", labels={"who": who})
    await servicer._derived(tenant, spec, digest=True)


def test_a_cancelled_callers_derivation_keeps_its_slot_until_its_thread_ends(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    derivations = _Derivations()
    monkeypatch.setattr(job_service, "_derive", derivations)
    servicer = _servicer()

    async def main() -> None:
        calls = []
        for i in range(4):
            derivations.first_started.clear()
            call = asyncio.ensure_future(_derived(servicer, "heavy", f"heavy-{i}"))
            await asyncio.to_thread(derivations.first_started.wait, 0.5)
            call.cancel()  # the client gives up (or its deadline expires)
            calls.append(call)
            await asyncio.sleep(0.01)
        try:
            assert derivations.most == 1, f"{derivations.most} derivations ran at once"
        finally:
            derivations.release.set()
            await asyncio.gather(*calls, return_exceptions=True)
            # the threads themselves
            deadline = time.monotonic() + 5
            while derivations.running and time.monotonic() < deadline:
                await asyncio.sleep(0.01)

    asyncio.run(main())
