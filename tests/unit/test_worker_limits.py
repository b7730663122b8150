"""A worker's limits as the gateway and the worker apply them: the reply size bound, the CPU-time
limit of each compile, and how a worker's end is read (the signal that decides whether a compile
was the circuit's fault)."""

from __future__ import annotations

import asyncio
import math
import os
import resource
import signal
import struct
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from gateway.backends.base import CircuitLimits, TargetUnavailable
from gateway.domain.circuits import CircuitLanguage, CircuitSource
from gateway.domain.errors import InvalidArgument
from gateway.runtime import worker
from gateway.runtime.worker import (
    CompileRole,
    SimulatorRole,
    WorkerCrashed,
    WorkerProcess,
    WorkerReplyRefused,
)
from tests.worker_output import WrittenWorker

SOURCE = CircuitSource(CircuitLanguage.QASM3, "OPENQASM 3.0; qubit q; h q;")


def _frame_of_body_size(size: int) -> bytes:
    """A well-formed ("ok", b"...") reply frame whose body is exactly `size` bytes."""
    empty = len(worker._reply_frame(("ok", b""))) - 8
    for padding in range(size - empty, max(size - empty - 8, -1), -1):
        frame = worker._reply_frame(("ok", b"x" * padding))
        if len(frame) - 8 == size:
            return frame
    raise AssertionError(size)


@pytest.mark.anyio
async def test_a_reply_of_exactly_the_bound_is_read() -> None:
    frame = _frame_of_body_size(100_000)
    process = WrittenWorker(frame)
    handle = WorkerProcess(process, 100_000)  # type: ignore[arg-type]
    reply = await handle._receive()
    assert reply[0] == "ok" and not process.killed and handle.alive


@pytest.mark.anyio
async def test_a_reply_one_byte_over_the_bound_is_refused_before_it_is_read() -> None:
    # The header alone: the gateway must not wait for (or buffer) the body.
    process = WrittenWorker(struct.pack("!Q", 100_001))
    handle = WorkerProcess(process, 100_000)  # type: ignore[arg-type]
    with pytest.raises(WorkerReplyRefused):
        await handle._receive()
    assert process.killed and not handle.alive


@pytest.mark.anyio
async def test_a_compile_workers_reply_is_bounded_at_256_mib() -> None:
    bound = worker._max_reply_bytes(CompileRole(backends={}, memory_bytes=None))
    assert bound == 256 << 20
    process = WrittenWorker(struct.pack("!Q", bound + 1))
    with pytest.raises(WorkerReplyRefused):
        await WorkerProcess(process, bound)._receive()  # type: ignore[arg-type]


def test_a_simulators_reply_bound_leaves_room_for_twice_its_largest_result() -> None:
    # A result's encoding may take twice its in-memory size; a result within the limit is never
    # refused as a hostile reply.
    context = SimpleNamespace(limits=SimpleNamespace(max_result_bytes=1 << 30))
    bound = worker._max_reply_bytes(SimulatorRole("aer", context))  # type: ignore[arg-type]
    assert bound >= 2 * (1 << 30)


class _Limits:
    """resource.setrlimit, recorded instead of applied (the test process keeps its limits)."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, tuple[int, int]]] = []

    def __call__(self, which: int, limits: tuple[int, int]) -> None:
        self.calls.append((which, limits))

    def cpu(self) -> list[int]:
        return [soft for which, (soft, _) in self.calls if which == resource.RLIMIT_CPU]


def test_the_cpu_limit_counts_from_the_cpu_time_the_worker_has_used(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A warm worker has used seconds of CPU time importing SDKs and compiling earlier circuits:
    # each compile gets `seconds` more, not `seconds` since the worker started.
    limits = _Limits()
    monkeypatch.setattr(worker.resource, "setrlimit", limits)
    monkeypatch.setattr(worker, "_cpu_seconds_used", lambda: 100.25)
    worker._limit_cpu(2.0)
    worker._limit_cpu(None)
    soft, lifted = limits.cpu()
    assert 100.25 + 2.0 <= soft <= math.ceil(100.25 + 2.0) + 1
    assert lifted == resource.RLIM_INFINITY


class _Adapter:
    context = SimpleNamespace(circuit_limits=CircuitLimits())
    compiled_type = object

    def __init__(self, context: object) -> None:
        pass

    def warm_up_compiler(self) -> None:
        pass

    def compile_circuit(self, source: CircuitSource) -> object:
        if "memory" in source.text:
            raise MemoryError
        if "unavailable" in source.text:
            raise TargetUnavailable("HTTP 503")
        if "invalid" in source.text:
            raise InvalidArgument("UNKNOWN_GATE", "no such gate")
        if "bug" in source.text:
            raise RuntimeError("boom")
        return ("compiled", source.text)


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("ok", "ok"),
        ("memory", "memory"),
        ("unavailable", "unavailable"),
        ("invalid", "invalid"),
        ("bug", "failed"),
    ],
)
def test_each_compile_runs_under_its_own_cpu_limit_lifted_after_it(
    monkeypatch: pytest.MonkeyPatch, text: str, kind: str
) -> None:
    # Lifted however the compile ends: a limit left behind counted the reply's encoding, and the
    # idle time after it, against the circuit.
    from gateway.backends import registry

    limits = _Limits()
    monkeypatch.setattr(worker.resource, "setrlimit", limits)
    monkeypatch.setattr(worker, "_cpu_seconds_used", lambda: 5.0)
    monkeypatch.setattr(registry, "load_adapter", lambda name: _Adapter)
    handle = worker._compiler(CompileRole(backends={"aer": ("fake", None)}, memory_bytes=None))  # type: ignore[dict-item]
    limits.calls.clear()
    reply: Any = handle(("compile", "aer", CircuitSource(CircuitLanguage.QASM3, text), 3.0))
    assert reply[0] == kind
    soft, lifted = limits.cpu()
    assert 5.0 + 3.0 <= soft <= math.ceil(5.0 + 3.0) + 1
    assert lifted == resource.RLIM_INFINITY


# Stands in for a compile worker: reads the gateway's request, then ends as argv[1] says.
_ENDS = """
import os, resource, signal, sys
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
sys.stdin.buffer.read(8)
how = sys.argv[1]
if how.startswith("signal:"):
    os.kill(os.getpid(), getattr(signal, how[len("signal:"):]))
sys.exit(int(how[len("exit:"):]))
"""


async def _compile_in_process_that_ends(how: str) -> tuple[WorkerProcess, WorkerCrashed]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _ENDS,
        how,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    handle = WorkerProcess(process, 1 << 20)
    with pytest.raises(WorkerCrashed) as crashed:
        await handle.compile("aer", SOURCE, 1.0)
    assert not handle.alive
    return handle, crashed.value


@pytest.mark.anyio
@pytest.mark.parametrize("name", ["SIGXCPU", "SIGABRT", "SIGKILL"])
async def test_a_worker_killed_by_a_signal_is_read_as_that_signal(name: str) -> None:
    # The compiler decides by it whether the circuit was at fault (CPU time, memory) or not.
    handle, crashed = await _compile_in_process_that_ends(f"signal:{name}")
    assert handle.exit_signal == signal.Signals[name]
    assert crashed.metadata == {"signal": name}
    assert crashed.message == f"the worker process was killed by signal {name}"


@pytest.mark.anyio
@pytest.mark.parametrize("status", [0, 3])
async def test_a_worker_that_exits_mid_compile_is_read_as_its_exit_status(status: int) -> None:
    handle, crashed = await _compile_in_process_that_ends(f"exit:{status}")
    assert handle.exit_signal is None
    assert crashed.metadata == {"exitStatus": str(status)}
    assert crashed.message == f"the worker process exited with status {status}"


class _Sink:
    def write(self, data: bytes) -> None:
        pass

    async def drain(self) -> None:
        pass


class _Started(WrittenWorker):
    """A worker process as create_subprocess_exec gives it: it answers its role with `data`."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.stdin = _Sink()  # type: ignore[assignment]

    def kill(self) -> None:
        super().kill()
        self.returncode = -signal.SIGKILL  # type: ignore[assignment]

    async def wait(self) -> int:
        if self.returncode is None:
            self.returncode = 1  # type: ignore[assignment]
        return self.returncode  # type: ignore[return-value]


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("answer", "error"),
    [
        (b"", WorkerCrashed),  # it died while starting
        (worker._reply_frame(("ok", "not ready")), RuntimeError),
        (struct.pack("!Q", 1 << 40), WorkerReplyRefused),
    ],
)
async def test_a_worker_that_does_not_start_is_killed(
    monkeypatch: pytest.MonkeyPatch, answer: bytes, error: type[Exception]
) -> None:
    started: list[_Started] = []

    async def create(*args: object, **kwargs: object) -> _Started:
        started.append(_Started(answer))
        return started[0]

    monkeypatch.setattr(worker.asyncio, "create_subprocess_exec", create)
    with pytest.raises(error):
        await WorkerProcess.start(CompileRole(backends={}, memory_bytes=None))
    assert started[0].killed


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("reply", "error"),
    [
        (("memory",), MemoryError),
        (("unavailable", "HTTP 503"), TargetUnavailable),
        (("invalid", "UNKNOWN_GATE", "no such gate", {}, (("circuit", "here"),)), InvalidArgument),
        (("failed", "COMPILER_FAILED", "RuntimeError: boom", {}, "BACKEND_FAULT"), Exception),
    ],
)
async def test_each_compile_reply_is_raised_as_its_own_error(
    reply: tuple[object, ...], error: type[Exception]
) -> None:
    process = _Started(worker._reply_frame(reply))
    handle = WorkerProcess(process, 1 << 20)  # type: ignore[arg-type]
    with pytest.raises(error) as raised:
        await handle.compile("aer", SOURCE, 1.0)
    if isinstance(raised.value, InvalidArgument):
        assert raised.value.reason == "UNKNOWN_GATE"
        assert [(v.field, v.description) for v in raised.value.field_violations] == [
            ("circuit", "here")
        ]
    if reply[0] == "failed":
        assert type(raised.value).__name__ == "ExecutionError"
        assert raised.value.reason == "COMPILER_FAILED"  # type: ignore[attr-defined]
    assert not process.killed  # the worker answered: it is healthy


@pytest.mark.anyio
async def test_a_traced_call_whose_reply_could_not_be_encoded_gets_the_failure() -> None:
    # The worker could not encode its traced reply (an adapter's bug): it sent its failure
    # alone, without the timing.
    unencodable = worker._reply_frame(("traced", 1, 2, ("ok", object())))
    process = _Started(unencodable)
    handle = WorkerProcess(process, 1 << 20)  # type: ignore[arg-type]
    started, ended, reply = await handle._traced_exchange(("compile", "aer", SOURCE, 1.0))
    assert (started, ended) == (0, 0)
    assert reply[:2] == ("failed", "EXECUTION_FAILED") and not process.killed


# A gateway that is SIGKILLed leaves no worker behind. Run in a helper that adopts orphans
# (PR_SET_CHILD_SUBREAPER), so it can wait for the worker once the worker's parent is gone; if
# the worker outlives its gateway, the helper ends it with SIGTERM after 15 s (no orphan left).
_ORPHAN = """
import ctypes, os, signal, subprocess, sys
ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
gateway = subprocess.Popen([sys.executable, "-c", GATEWAY], stdout=subprocess.PIPE, text=True)
pid = int(gateway.stdout.readline())
os.kill(gateway.pid, signal.SIGKILL)
gateway.wait()
signal.signal(signal.SIGALRM, lambda *_: os.kill(pid, signal.SIGTERM))
signal.alarm(15)
_, status = os.waitpid(pid, 0)  # the worker, adopted
print(os.WTERMSIG(status) if os.WIFSIGNALED(status) else -1)
"""
_GATEWAY = """
import signal, subprocess, sys
worker = subprocess.Popen([sys.executable, "-c", WORKER], stdout=subprocess.PIPE, text=True)
assert worker.stdout.readline() == "ready\\n"
print(worker.pid, flush=True)
signal.pause()
"""
_WORKER = """
import os, signal
from gateway.runtime.worker import _die_with_parent
_die_with_parent(os.getppid())
print("ready", flush=True)
signal.pause()
"""


def test_a_worker_dies_with_its_gateway() -> None:
    gateway = f"WORKER = {_WORKER!r}\n{_GATEWAY}"
    script = f"GATEWAY = {gateway!r}\n{_ORPHAN}"
    out = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        check=True,
        timeout=25,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )
    assert int(out.stdout) == signal.SIGKILL


class _KernelCpuLimits:
    """RLIMIT_CPU as the kernel keeps it, with a hard limit set by the host (`ulimit -t`,
    systemd's LimitCPU=): an unprivileged process may not set its soft limit above it."""

    def __init__(self, hard: int) -> None:
        self.soft, self.hard = hard, hard

    def getrlimit(self, which: int) -> tuple[int, int]:
        return (self.soft, self.hard) if which == resource.RLIMIT_CPU else (-1, -1)

    def setrlimit(self, which: int, limits: tuple[int, int]) -> None:
        if which != resource.RLIMIT_CPU:
            return
        soft, hard = limits
        if hard != self.hard or soft == resource.RLIM_INFINITY or soft > hard:
            raise ValueError("current limit exceeds maximum limit")
        self.soft = soft


def test_a_host_hard_cpu_limit_does_not_crash_every_compile(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from gateway.backends import registry

    kernel = _KernelCpuLimits(hard=3600)
    monkeypatch.setattr(worker.resource, "setrlimit", kernel.setrlimit)
    monkeypatch.setattr(worker.resource, "getrlimit", kernel.getrlimit)
    monkeypatch.setattr(worker, "_cpu_seconds_used", lambda: 5.0)
    monkeypatch.setattr(registry, "load_adapter", lambda name: _Adapter)
    handle = worker._compiler(CompileRole(backends={"aer": ("fake", None)}, memory_bytes=None))  # type: ignore[dict-item]
    # Lifting the limit after a compile set it above the hard one: ValueError, outside
    # handle's try, ended the worker after every compile (INTERNAL COMPILER_CRASHED).
    reply: Any = handle(("compile", "aer", SOURCE, 3.0))
    assert reply[0] == "ok"
    assert kernel.soft == kernel.hard
    # A worker near the host's limit gets what is left of it.
    monkeypatch.setattr(worker, "_cpu_seconds_used", lambda: 3599.5)
    worker._limit_cpu(30.0)
    assert kernel.soft == kernel.hard
