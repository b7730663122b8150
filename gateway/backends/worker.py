"""Simulator worker processes.

A worker is `python -m gateway.backends.worker`: it builds one adapter and runs prepared payloads
sent over stdin, answering on stdout with length-prefixed pickles. A crash or an out-of-memory
kill takes only the worker (the job fails with WORKER_CRASHED), and the worker asks the kernel to
kill it when the gateway dies, so a SIGKILLed gateway leaves no orphans.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import pickle
import resource
import signal
import struct
import sys
import traceback
from typing import Any, BinaryIO

from gateway.backends.base import AdapterContext, ExecutionOutcome
from gateway.domain.errors import ExecutionError

_HEADER = struct.Struct("!Q")
_PR_SET_PDEATHSIG = 1
WORKER_CRASHED = "WORKER_CRASHED"


class WorkerCrashed(ExecutionError):
    def __init__(self, message: str) -> None:
        super().__init__(WORKER_CRASHED, message)


def _frame(obj: object) -> bytes:
    body = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    return _HEADER.pack(len(body)) + body


# ------------------------------------------------------------------- inside the worker


def _die_with_parent(parent: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


def _read(stream: BinaryIO) -> Any:
    header = stream.read(_HEADER.size)
    if len(header) < _HEADER.size:
        return None
    (size,) = _HEADER.unpack(header)
    return pickle.loads(stream.read(size))


def _run_worker() -> None:
    from gateway.backends.registry import load_adapter

    parent = int(sys.argv[1]) if len(sys.argv) > 1 else os.getppid()
    _die_with_parent(parent)
    # The protocol owns fd 1; anything an SDK prints goes to stderr instead.
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    stdin = sys.stdin.buffer
    init = _read(stdin)
    if init is None:
        return
    adapter_name, context = init
    if context.worker_memory_bytes:
        # RLIMIT_DATA, not RLIMIT_AS: Aer reserves address space it never touches and aborts
        # under an address-space limit. An allocation past this raises MemoryError instead.
        limit = context.worker_memory_bytes
        resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
    adapter = load_adapter(adapter_name)(context)
    adapter.warm_up()
    out.write(_frame(("ready", os.getpid())))
    out.flush()
    while (message := _read(stdin)) is not None:
        _, payload = message
        try:
            reply: tuple[Any, ...] = ("ok", adapter.execute(payload))
        except ExecutionError as exc:
            reply = ("failed", exc.reason, exc.message)
        except MemoryError:
            reply = ("failed", "RESOURCE_EXHAUSTED", "the simulation ran out of memory")
        except Exception as exc:
            traceback.print_exc()
            reply = ("failed", "EXECUTION_FAILED", f"{type(exc).__name__}: {exc}")
        out.write(_frame(reply))
        out.flush()


# ------------------------------------------------------------------- inside the gateway


class WorkerProcess:
    """The gateway's handle on one worker process. Not safe for concurrent use."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self._process = process
        self.pid = process.pid
        self._dead = False

    @classmethod
    async def start(cls, adapter_name: str, context: AdapterContext) -> WorkerProcess:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "gateway.backends.worker",
            str(os.getpid()),
            context.name,  # shows in `ps` which backend a worker serves
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        worker = cls(process)
        try:
            await worker._send(_frame((adapter_name, context)))
            reply = await worker._receive()
        except BaseException:
            worker.kill()  # interrupted mid-start: leave no half-started process behind
            raise
        if reply[0] != "ready":
            worker.kill()
            raise RuntimeError(f"worker did not start: {reply!r}")
        return worker

    @property
    def alive(self) -> bool:
        return not self._dead and self._process.returncode is None

    async def _send(self, data: bytes) -> None:
        stdin = self._process.stdin
        assert stdin is not None
        try:
            stdin.write(data)
            await stdin.drain()
        except (ConnectionError, RuntimeError) as exc:
            self._dead = True
            raise WorkerCrashed(f"worker {self.pid} is gone: {exc}") from None

    async def _receive(self) -> tuple[Any, ...]:
        stdout = self._process.stdout
        assert stdout is not None
        try:
            (size,) = _HEADER.unpack(await stdout.readexactly(_HEADER.size))
            body = await stdout.readexactly(size)
        except (asyncio.IncompleteReadError, ConnectionError):
            self._dead = True
            code = await self._process.wait()
            raise WorkerCrashed(_describe_exit(self.pid, code)) from None
        reply: tuple[Any, ...] = pickle.loads(body)
        return reply

    async def execute(self, payload: object) -> ExecutionOutcome:
        """Runs one payload; raises ExecutionError (WorkerCrashed if the process died)."""
        await self._send(_frame(("run", payload)))
        reply = await self._receive()
        if reply[0] == "ok":
            outcome: ExecutionOutcome = reply[1]
            return outcome
        raise ExecutionError(reply[1], reply[2])

    def kill(self) -> None:
        self._dead = True
        with contextlib.suppress(ProcessLookupError):
            self._process.kill()

    async def wait(self) -> int:
        return await self._process.wait()

    async def stop(self) -> None:
        """Asks the worker to exit (EOF on stdin) and waits; kills it if it does not."""
        if self._process.returncode is None and self._process.stdin is not None:
            self._process.stdin.close()
        try:
            await asyncio.wait_for(self._process.wait(), timeout=5)
        except TimeoutError:
            self.kill()
            await self._process.wait()


def _describe_exit(pid: int, code: int) -> str:
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"worker process {pid} was killed by {name}"
    return f"worker process {pid} exited with status {code}"


if __name__ == "__main__":
    _run_worker()
