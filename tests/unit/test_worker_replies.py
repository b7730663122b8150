"""Worker replies are decoded, and results encoded, on the event loop only when small: a large
result (an array per binding and register) took ~1 s to unpickle, every other call waiting. A
reply no worker sends is refused, and its worker killed."""

from __future__ import annotations

import asyncio
import os
import pickle
import signal
import struct
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gateway.domain.bitarray import Counts
from gateway.domain.jobs import JobResult, RegisterResult, SamplerResult
from gateway.jobs.runner_step import _encodes_inline
from gateway.offload import INLINE_BYTES
from gateway.runtime import reply_codec, worker
from gateway.runtime.worker import WorkerCrashed, WorkerProcess, WorkerReplyRefused
from tests.worker_output import WrittenWorker


async def _received(padding: int, monkeypatch: pytest.MonkeyPatch, seen: list[int]) -> Any:
    decode = reply_codec.decode

    def recording(body: bytes) -> tuple[Any, ...]:
        seen.append(threading.get_ident())
        return decode(body)

    monkeypatch.setattr(reply_codec, "decode", recording)
    process = WorkerProcess(WrittenWorker(worker._reply_frame(("ok", b"x" * padding))), 1 << 20)  # type: ignore[arg-type]
    return await process._receive()


@pytest.mark.anyio
@pytest.mark.parametrize(("padding", "on_loop"), [(100, True), (INLINE_BYTES, False)])
async def test_large_replies_are_decoded_off_the_event_loop(
    padding: int, on_loop: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[int] = []
    reply = await _received(padding, monkeypatch, seen)
    assert reply[0] == "ok" and len(reply[1]) == padding
    assert len(seen) == 1
    assert (seen[0] == threading.get_ident()) is on_loop


class _Evil:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, ("true",))


@pytest.mark.anyio
@pytest.mark.parametrize(
    "body",
    [
        pickle.dumps(("ok", _Evil())),  # what code run in a compile worker could send
        b"not a pickle",
        pickle.dumps(["ok"]),  # every reply is a tagged tuple
    ],
)
async def test_a_reply_no_worker_sends_is_refused_and_the_worker_killed(body: bytes) -> None:
    process = WrittenWorker(struct.pack("!Q", len(body)) + body)
    handle = WorkerProcess(process, 1 << 20)  # type: ignore[arg-type]
    with pytest.raises(WorkerReplyRefused) as refused:
        await handle._receive()
    # A worker crash to every caller (the job fails BACKEND_FAULT; a compile is not retried).
    assert isinstance(refused.value, WorkerCrashed)
    assert refused.value.metadata == {"reply": "refused"}
    assert process.killed and not handle.alive


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


@pytest.mark.anyio
async def test_a_reply_larger_than_any_worker_sends_is_refused_before_it_is_read() -> None:
    # A worker taken over by hostile input could stream the gateway out of memory.
    process = WrittenWorker(struct.pack("!Q", 1 << 40))
    handle = WorkerProcess(process, 1 << 20)  # type: ignore[arg-type]
    with pytest.raises(WorkerReplyRefused):
        await handle._receive()
    assert process.killed and not handle.alive


@pytest.mark.anyio
async def test_an_answer_to_a_run_that_holds_no_outcome_is_refused() -> None:
    class _Sink:
        def write(self, data: bytes) -> None:
            pass

        async def drain(self) -> None:
            pass

    process = WrittenWorker(worker._reply_frame(("ok", ("not", "an outcome"))))
    process.stdin = _Sink()  # type: ignore[assignment]
    handle = WorkerProcess(process, 1 << 20)  # type: ignore[arg-type]
    with pytest.raises(WorkerReplyRefused):
        await handle.execute("payload")
    assert process.killed


_COMPROMISED = """
import os, pickle, struct, sys
class Evil:
    def __reduce__(self):
        return (os.system, ("touch " + sys.argv[1],))
sys.stdin.buffer.read(8)  # the gateway's request header: answer it with what code run here sends
body = pickle.dumps(("ok", Evil()))
sys.stdout.buffer.write(struct.pack("!Q", len(body)) + body)
sys.stdout.buffer.flush()
sys.stdin.buffer.read()
"""


def test_code_run_in_a_worker_process_does_not_run_in_the_gateway(tmp_path: Path) -> None:
    # A real process on the real pipe, standing in for a worker a parser bug took over.
    marker = tmp_path / "ran-in-the-gateway"

    async def run() -> None:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            _COMPROMISED,
            str(marker),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        handle = WorkerProcess(process, 1 << 20)
        with pytest.raises(WorkerReplyRefused):
            await handle.execute("payload")
        assert await asyncio.wait_for(handle.wait(), timeout=30) == -signal.SIGKILL

    asyncio.run(run())
    assert not marker.exists()


@pytest.mark.parametrize("value", [object(), 1 << 70, np.array([object()])])
def test_a_reply_the_worker_cannot_encode_is_sent_as_its_failure(value: object) -> None:
    # An adapter's bug (a value no reply may hold): the job fails, the worker goes on.
    reply = reply_codec.decode(worker._reply_frame(("ok", value))[8:])
    assert reply[:2] == ("failed", "EXECUTION_FAILED")
    assert reply[4] == "BACKEND_FAULT"
