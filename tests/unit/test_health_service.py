"""grpc.health.v1 in process (gateway.api.health_service): a watcher that never reads holds
up no one."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from grpc_health.v1 import health_pb2

from gateway.api.health_service import HealthService

pytestmark = pytest.mark.anyio

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
READINESS = "qgateway.v1.JobService"


class Watcher:
    """A Watch call's context: `stuck` never finishes a write (a peer whose HTTP/2 window is
    0); otherwise each status written is queued for the test."""

    def __init__(self, stuck: bool = False) -> None:
        self.stuck = stuck
        self.writing = asyncio.Event()
        self.seen: asyncio.Queue[Any] = asyncio.Queue()

    async def write(self, response: health_pb2.HealthCheckResponse) -> None:
        self.writing.set()
        if self.stuck:
            await asyncio.Event().wait()
        await self.seen.put(response.status)


async def test_a_watcher_that_never_reads_blocks_neither_set_nor_other_watchers() -> None:
    # grpc_health's servicer wrote while holding the service's lock: a stuck watcher made the
    # next set() of that name wait for ever, and the gateway's stop (readiness NOT_SERVING
    # first) hung until SIGKILL.
    health = HealthService()
    await health.set(READINESS, SERVING)
    request = health_pb2.HealthCheckRequest(service=READINESS)
    stuck, fine = Watcher(stuck=True), Watcher()
    calls = [asyncio.ensure_future(health.Watch(request, w)) for w in (stuck, fine)]
    try:
        await stuck.writing.wait()
        assert await fine.seen.get() == SERVING
        await asyncio.wait_for(health.set(READINESS, NOT_SERVING), 5)
        assert await asyncio.wait_for(fine.seen.get(), 5) == NOT_SERVING
        check = await health.Check(request, None)  # type: ignore[arg-type]
        assert check.status == NOT_SERVING
    finally:
        for call in calls:
            call.cancel()
        await asyncio.gather(*calls, return_exceptions=True)
    # Watchers gone, nothing is kept for the name.
    assert not health._changed and not health._watchers


async def test_a_change_during_a_write_is_sent_after_it() -> None:
    health = HealthService()
    release = asyncio.Event()
    seen: list[int] = []

    class Slow:
        async def write(self, response: health_pb2.HealthCheckResponse) -> None:
            seen.append(response.status)
            if len(seen) == 1:
                await release.wait()

    request = health_pb2.HealthCheckRequest(service="")
    call = asyncio.ensure_future(health.Watch(request, Slow()))
    try:
        while not seen:
            await asyncio.sleep(0)
        await health.set("", NOT_SERVING)  # while the first write waits
        release.set()
        while len(seen) < 2:
            await asyncio.sleep(0)
        assert seen == [SERVING, NOT_SERVING]
    finally:
        call.cancel()
        await asyncio.gather(call, return_exceptions=True)
