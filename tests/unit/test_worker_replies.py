"""Worker replies are unpickled on the event loop only when small: a large result (an array per
binding and register) took ~1 s to unpickle, every other call waiting meanwhile."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from gateway.runtime import worker
from gateway.runtime.worker import INLINE_UNPICKLE_BYTES, WorkerProcess

SEEN: list[int] = []


class Where:
    """Records the thread that unpickles it."""

    def __getstate__(self) -> dict[str, Any]:
        return {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        SEEN.append(threading.get_ident())


class _Process:
    """What WorkerProcess reads a reply from: its stdout, already written."""

    def __init__(self, data: bytes) -> None:
        self.pid = 4242
        self.returncode = None
        self.stdin = None
        self.stdout = asyncio.StreamReader()
        self.stdout.feed_data(data)
        self.stdout.feed_eof()


async def _received(padding: int) -> tuple[Any, ...]:
    process = WorkerProcess(_Process(worker._frame(("ok", Where(), b"x" * padding))))  # type: ignore[arg-type]
    return await process._receive()


@pytest.mark.anyio
@pytest.mark.parametrize(("padding", "on_loop"), [(100, True), (INLINE_UNPICKLE_BYTES, False)])
async def test_large_replies_are_unpickled_off_the_event_loop(padding: int, on_loop: bool) -> None:
    SEEN.clear()
    reply = await _received(padding)
    assert reply[0] == "ok" and len(reply[2]) == padding
    assert len(SEEN) == 1
    assert (SEEN[0] == threading.get_ident()) is on_loop
