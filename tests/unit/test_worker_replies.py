"""Worker replies are unpickled, and results encoded, on the event loop only when small: a large
result (an array per binding and register) took ~1 s to unpickle, every other call waiting."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import numpy as np
import pytest

from gateway.domain.bitarray import Counts
from gateway.domain.jobs import JobResult, RegisterResult, SamplerResult
from gateway.jobs.runner_step import _encodes_inline
from gateway.offload import INLINE_BYTES
from gateway.runtime import worker
from gateway.runtime.worker import WorkerProcess

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
@pytest.mark.parametrize(("padding", "on_loop"), [(100, True), (INLINE_BYTES, False)])
async def test_large_replies_are_unpickled_off_the_event_loop(padding: int, on_loop: bool) -> None:
    SEEN.clear()
    reply = await _received(padding)
    assert reply[0] == "ok" and len(reply[2]) == padding
    assert len(SEEN) == 1
    assert (SEEN[0] == threading.get_ident()) is on_loop


def _sampler(counts_entries: int, bindings: int, sample_bytes: int = 0) -> JobResult:
    counts = tuple(
        Counts.from_dict({format(i, "016b"): 1 for i in range(counts_entries)}, 16)
        for _ in range(bindings)
    )
    samples = np.zeros(sample_bytes, dtype=np.uint8) if sample_bytes else None
    register = RegisterResult("c", 16, samples, counts)
    return JobResult((SamplerResult((bindings,), 1, (register,)),))


@pytest.mark.parametrize(
    ("result", "inline"),
    [
        (_sampler(4, 1), True),
        # ~16 bytes per count entry: 64 KiB is 4096 entries, however they are spread.
        (_sampler(1, INLINE_BYTES // 16), True),
        (_sampler(1, INLINE_BYTES // 16 + 1), False),
        (_sampler(64, 1000), False),
        (_sampler(0, 0, sample_bytes=INLINE_BYTES + 1), False),
        (_sampler(0, 0, sample_bytes=INLINE_BYTES), True),
    ],
)
def test_results_are_encoded_on_the_loop_only_when_small(result: JobResult, inline: bool) -> None:
    assert _encodes_inline(result) is inline
