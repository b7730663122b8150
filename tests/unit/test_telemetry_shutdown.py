"""The gateway's stop waits a bounded time for telemetry exports (gateway.telemetry.setup)."""

from __future__ import annotations

import logging
import threading

import pytest

from gateway.telemetry.setup import shut_down

pytestmark = pytest.mark.anyio


class Provider:
    """A provider whose shutdown blocks until released, as one exporting to a collector that
    never answers does (the SDK joins its worker thread for up to 30 s)."""

    def __init__(self, blocks: bool) -> None:
        self.release = threading.Event()
        self.blocks = blocks
        self.shut = threading.Event()

    def shutdown(self) -> None:
        if self.blocks:
            self.release.wait()
        self.shut.set()


async def test_a_provider_that_cannot_export_does_not_hold_the_stop(
    caplog: pytest.LogCaptureFixture,
) -> None:
    stuck, fine = Provider(blocks=True), Provider(blocks=False)
    try:
        await shut_down([stuck, fine], timeout=0.2)
        assert fine.shut.is_set()  # shut down beside the stuck one, not after it
        assert not stuck.shut.is_set()  # still exporting when the stop went on
        assert "dropped" in caplog.text
    finally:
        stuck.release.set()


async def test_providers_that_shut_down_in_time_log_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    providers = [Provider(blocks=False), Provider(blocks=False)]
    await shut_down(providers, timeout=30)
    assert all(p.shut.is_set() for p in providers) and not caplog.text
