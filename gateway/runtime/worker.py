"""Worker processes: simulators and circuit compilers.

A worker is `python -m gateway.runtime.worker_main`, in one of two roles chosen by its first
message. A simulator worker builds one adapter and runs prepared payloads. A compile worker
builds the adapters of every backend and compiles client circuits one at a time under a
CPU-time limit (RLIMIT_CPU, set afresh for each circuit) and a memory limit (RLIMIT_DATA); the
gateway adds the wall-clock limit and kills the process when it passes. Requests arrive on
stdin as length-prefixed pickles; answers leave on stdout as length-prefixed `reply_codec` data,
never pickles: a compile worker runs hostile input, and code run in it must not reach the
gateway through what it answers. A crash or an out-of-memory
kill takes only the worker, and the worker asks the kernel to kill it when the gateway dies, so
a SIGKILLed gateway leaves no orphans.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import math
import os
import pickle
import resource
import signal
import struct
import sys
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, BinaryIO, NoReturn

from gateway import offload
from gateway.backends.base import AdapterContext, ExecutionOutcome, TargetUnavailable
from gateway.domain.circuits import CircuitSource
from gateway.domain.errors import ExecutionError, FieldViolation, InvalidArgument
from gateway.domain.failures import FailureKind
from gateway.domain.jobs import JobResult
from gateway.runtime import affinity, reply_codec
from gateway.telemetry import active as telemetry

log = logging.getLogger(__name__)

_HEADER = struct.Struct("!Q")
_REPLY_SLACK_BYTES = 64 << 20
_MAX_COMPILE_REPLY_BYTES = 256 << 20
_PR_SET_PDEATHSIG = 1
WORKER_CRASHED = "WORKER_CRASHED"


class WorkerCrashed(ExecutionError):
    """The worker process died (a crash, an OS kill, or a kill by the gateway)."""

    def __init__(self, message: str, metadata: Mapping[str, str] | None = None) -> None:
        super().__init__(WORKER_CRASHED, message, kind=FailureKind.BACKEND_FAULT, metadata=metadata)


class WorkerReplyRefused(WorkerCrashed):
    """The worker answered with something no worker sends (`reply_codec.RefusedReply`): code
    it should not run may have run in it, so it was killed."""


@dataclass(frozen=True)
class SimulatorRole:
    """Runs prepared payloads of one adapter."""

    adapter_name: str
    context: AdapterContext


@dataclass(frozen=True)
class CompileRole:
    """Compiles circuits for every backend: backend name -> (adapter name, context).

    `memory_bytes` is what one compile may allocate beyond the warm worker's own size.
    """

    backends: Mapping[str, tuple[str, AdapterContext]]
    memory_bytes: int | None


def _frame(obj: object) -> bytes:
    """A request (the gateway's, trusted by the worker): a pickle."""
    body = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    return _HEADER.pack(len(body)) + body


def _reply_frame(reply: tuple[Any, ...]) -> bytes:
    """A reply: data only (reply_codec)."""
    try:
        body = reply_codec.encode(reply)
    except MemoryError:
        body = reply_codec.encode(("memory",))
    except (TypeError, ValueError) as exc:  # a value no reply may hold: the adapter's bug
        log.error("a worker reply could not be encoded: %s", exc)
        fault = FailureKind.BACKEND_FAULT.value
        failed: tuple[Any, ...] = (
            "failed",
            "EXECUTION_FAILED",
            f"the worker's reply: {exc}"[:500],
            {},
            fault,
        )
        body = reply_codec.encode(failed)
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


def _limit_memory(limit: int | None) -> None:
    if limit:
        # RLIMIT_DATA, not RLIMIT_AS: Aer reserves address space it never touches and aborts
        # under an address-space limit. An allocation past this raises MemoryError instead.
        resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))


def _data_bytes() -> int:
    """The process's data size as RLIMIT_DATA counts it (VmData: private writable mappings,
    most of them reserved by the SDKs' native libraries and never touched)."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmData:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmData in /proc/self/status")


def _simulator(role: SimulatorRole) -> Callable[[Any], tuple[Any, ...]]:
    from gateway.backends.fault import FaultyPayload, run_with_faults
    from gateway.backends.registry import load_adapter

    _limit_memory(role.context.worker_memory_bytes)
    adapter = load_adapter(role.adapter_name)(role.context)
    adapter.warm_up()

    def handle(message: Any) -> tuple[Any, ...]:
        # A failure travels as ("failed", reason, message, metadata, FailureKind value).
        _, payload = message
        try:
            if isinstance(payload, FaultyPayload):
                return ("ok", run_with_faults(payload, adapter.execute))
            return ("ok", adapter.execute(payload))
        except ExecutionError as exc:
            return ("failed", exc.reason, exc.message, exc.metadata, exc.kind.value)
        except InvalidArgument as exc:
            # The client's job, refused only when it ran: retrying elsewhere fails the same.
            client_error = FailureKind.CLIENT_ERROR.value
            return ("failed", exc.reason, exc.message, exc.metadata, client_error)
        except MemoryError:
            oom = FailureKind.OUT_OF_MEMORY.value
            return ("failed", "OUT_OF_MEMORY", "the simulation ran out of memory", {}, oom)
        except Exception as exc:
            traceback.print_exc()
            fault = FailureKind.SDK_ERROR.value
            return ("failed", "EXECUTION_FAILED", f"{type(exc).__name__}: {exc}", {}, fault)

    return handle


def _cpu_seconds_used() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _limit_cpu(seconds: float | None) -> None:
    """Lets the process use `seconds` more CPU time; past that the kernel sends SIGXCPU, whose
    default action ends the process (whatever it is doing, even inside native code). None
    lifts the limit to the hard one, which the host may have set (`ulimit -t`, systemd's
    LimitCPU): a soft limit above it is refused, and every compile then ended its worker."""
    _, hard = resource.getrlimit(resource.RLIMIT_CPU)
    if seconds is None:
        soft = hard
    else:
        soft = math.ceil(_cpu_seconds_used() + max(seconds, 0.0)) + 1
        if hard != resource.RLIM_INFINITY:
            soft = min(soft, hard)
    resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))


def _compiler(role: CompileRole) -> Callable[[Any], tuple[Any, ...]]:
    from gateway.backends.registry import load_adapter

    # A process killed at its CPU limit must not leave a core file per hostile request.
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    adapters = {
        name: load_adapter(adapter_name)(context)
        for name, (adapter_name, context) in role.backends.items()
    }
    for adapter in adapters.values():
        adapter.warm_up_compiler()
    # What a compile may use beyond the warm worker's own size.
    if role.memory_bytes:
        _limit_memory(_data_bytes() + role.memory_bytes)

    def handle(message: Any) -> tuple[Any, ...]:
        _, backend, source, cpu_seconds = message
        _limit_cpu(cpu_seconds)
        try:
            return ("ok", adapters[backend].compile_circuit(source))
        except InvalidArgument as exc:
            violations = tuple((v.field, v.description) for v in exc.field_violations)
            return ("invalid", exc.reason, exc.message, exc.metadata, violations)
        except TargetUnavailable as exc:
            return ("unavailable", str(exc))
        except MemoryError:
            return ("memory",)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # also a Rust panic in the SDK (a BaseException)
            traceback.print_exc()
            bug = FailureKind.BACKEND_FAULT.value
            return ("failed", "COMPILER_FAILED", f"{type(exc).__name__}: {exc}", {}, bug)
        finally:
            _limit_cpu(None)

    return handle


def run_worker() -> None:
    """The worker's loop (gateway.runtime.worker_main starts it): argv[1] is the gateway's pid."""
    parent = int(sys.argv[1]) if len(sys.argv) > 1 else os.getppid()
    _die_with_parent(parent)
    # The protocol owns fd 1; anything an SDK prints goes to stderr instead.
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    stdin = sys.stdin.buffer
    role = _read(stdin)
    if role is None:
        return
    handle = _simulator(role) if isinstance(role, SimulatorRole) else _compiler(role)
    out.write(_reply_frame(("ready", os.getpid())))
    out.flush()
    while (message := _read(stdin)) is not None:
        if message[0] == "traced":
            # Traced work: the reply carries its start and end time for the gateway's span
            # (gateway.telemetry.tracing; workers export nothing themselves).
            started = time.time_ns()
            inner = handle(message[1])
            reply: tuple[Any, ...] = ("traced", started, time.time_ns(), inner)
        else:
            reply = handle(message)
        out.write(_reply_frame(reply))
        out.flush()


# ------------------------------------------------------------------- inside the gateway


class WorkerProcess:
    """The gateway's handle on one worker process. Not safe for concurrent use."""

    def __init__(self, process: asyncio.subprocess.Process, max_reply_bytes: int) -> None:
        self._process = process
        self.pid = process.pid
        self._dead = False
        # Past it a reply is refused before it is read: a worker taken over by hostile input
        # could otherwise stream the gateway out of memory.
        self.max_reply_bytes = max_reply_bytes

    @classmethod
    async def start(cls, role: SimulatorRole | CompileRole) -> WorkerProcess:
        # The label shows in `ps` what the worker is for.
        label = role.context.name if isinstance(role, SimulatorRole) else "compile"
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "gateway.runtime.worker_main",
            str(os.getpid()),
            *affinity.worker_args(),
            label,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        worker = cls(process, _max_reply_bytes(role))
        try:
            await worker._send(_frame(role))
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
            log.warning("worker process %d is gone: %s", self.pid, exc)
            raise WorkerCrashed("the worker process is gone (its pipe closed)") from None

    async def _receive(self) -> tuple[Any, ...]:
        stdout = self._process.stdout
        assert stdout is not None
        try:
            (size,) = _HEADER.unpack(await stdout.readexactly(_HEADER.size))
            if size > self.max_reply_bytes:
                self._refuse(f"a reply of {size} bytes, over {self.max_reply_bytes}")
            body = await stdout.readexactly(size)
        except (asyncio.IncompleteReadError, ConnectionError):
            self._dead = True
            code = await self._process.wait()
            message, metadata = _describe_exit(code)
            # The pid is for operators; a job's error (which tenants read) says only how it ended.
            log.warning("worker process %d: %s", self.pid, message)
            raise WorkerCrashed(message, metadata) from None
        try:
            # A result of 100,000 bindings x registers took ~1 s to read: off the event loop.
            reply = await offload.by_size(size, reply_codec.decode, body)
        except reply_codec.RefusedReply as exc:
            self._refuse(str(exc))
        return reply

    def refuse(self, why: str) -> NoReturn:
        """Kills the worker for a reply no worker sends; raises WorkerReplyRefused."""
        self._refuse(why)

    def _refuse(self, why: str) -> NoReturn:
        self.kill()
        log.error("worker process %d sent a reply that was refused, killed: %s", self.pid, why)
        raise WorkerReplyRefused(
            "the worker sent a reply the gateway refused", {"reply": "refused"}
        )

    async def _call(self, message: tuple[Any, ...], span: str) -> tuple[Any, ...]:
        """Sends one request and returns the reply. With tracing on, the worker times the work
        and the gateway records it as a span under the current one."""
        tracing = telemetry.tracing
        if tracing is None or not tracing.sampled():
            await self._send(_frame(message))
            return await self._receive()
        return await tracing.worker_call(span, self.pid, self._traced_exchange, message)

    async def _traced_exchange(self, message: tuple[Any, ...]) -> tuple[int, int, tuple[Any, ...]]:
        await self._send(_frame(("traced", message)))
        reply = await self._receive()
        if reply[0] != "traced":  # ("memory",): the worker could not send its timing
            return 0, 0, reply
        _, started, ended, inner = reply
        return started, ended, inner

    async def execute(self, payload: object) -> ExecutionOutcome:
        """Runs one payload; raises ExecutionError (WorkerCrashed if the process died)."""
        reply = await self._call(("run", payload), "qgateway.worker.execute")
        if reply[0] == "ok":
            outcome = reply[1]
            if type(outcome) is not ExecutionOutcome or type(outcome.result) is not JobResult:
                self._refuse(f"an answer to a run holding {type(outcome).__name__}")
            return outcome
        if reply[0] == "memory":  # the result itself did not fit in the worker's memory
            raise ExecutionError(
                "OUT_OF_MEMORY",
                "the result ran out of the worker's memory",
                kind=FailureKind.OUT_OF_MEMORY,
            )
        raise _failure(reply)

    async def compile(self, backend: str, source: CircuitSource, cpu_seconds: float) -> object:
        """Compiles one circuit in a compile worker.

        Raises:
            InvalidArgument: the circuit is refused (field violations name CIRCUIT_FIELD).
            TargetUnavailable: the backend's target could not be fetched from its provider.
            MemoryError: compiling ran out of the worker's memory (recycle the worker).
            WorkerCrashed: the process died, e.g. at its CPU-time limit.
            WorkerReplyRefused: it answered what no worker sends (it was killed).
            ExecutionError: an unexpected error in the SDK or the adapter (a bug).
        """
        reply = await self._call(("compile", backend, source, cpu_seconds), "qgateway.compile")
        # Every shape checked: a worker that runs code it should not may answer anything the
        # codec can build, and a wrong one escaped as a bare ValueError (nothing cached, the
        # next such circuit costing another worker).
        kind = reply[0] if reply else None
        if kind == "ok" and len(reply) == 2:
            return reply[1]  # its type is the adapter's to know (Compiler checks it)
        if kind == "invalid" and _is_refusal(reply):
            _, reason, message, metadata, violations = reply
            raise InvalidArgument(
                reason,
                message,
                metadata=metadata,
                field_violations=[FieldViolation(f, d) for f, d in violations],
            )
        if kind == "memory" and len(reply) == 1:
            raise MemoryError
        if kind == "unavailable" and len(reply) == 2 and isinstance(reply[1], str):
            raise TargetUnavailable(reply[1])
        if kind == "failed" and _is_failure(reply):
            raise _failure(reply)
        self._refuse(f"a compile answer of no known shape ({str(kind)[:40]!r})")

    @property
    def exit_signal(self) -> int | None:
        """The signal that ended the process, if one did."""
        code = self._process.returncode
        return -code if code is not None and code < 0 else None

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


def _max_reply_bytes(role: SimulatorRole | CompileRole) -> int:
    """A simulator's largest result, twice over for the encoding; a compile's circuit (its
    QPY, a few tens of bytes per operation) within a fixed bound."""
    if isinstance(role, SimulatorRole):
        return 2 * role.context.limits.max_result_bytes + _REPLY_SLACK_BYTES
    return _MAX_COMPILE_REPLY_BYTES


def _is_refusal(reply: tuple[Any, ...]) -> bool:
    """("invalid", reason, message, metadata, violations), each of its type."""
    if not _is_error_reply(reply):
        return False
    metadata, violations = reply[3], reply[4]
    return (
        all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items())
        and isinstance(violations, list | tuple)
        and all(
            isinstance(v, list | tuple) and len(v) == 2 and all(isinstance(x, str) for x in v)
            for v in violations
        )
    )


def _is_failure(reply: tuple[Any, ...]) -> bool:
    """("failed", reason, message, metadata, kind), kind one of FailureKind's."""
    return _is_error_reply(reply) and reply[4] in _FAILURE_KINDS


def _is_error_reply(reply: tuple[Any, ...]) -> bool:
    """(kind, reason, message, metadata, detail): a refusal's or a failure's frame."""
    return (
        len(reply) == 5
        and isinstance(reply[1], str)
        and isinstance(reply[2], str)
        and isinstance(reply[3], dict)
    )


_FAILURE_KINDS = frozenset(kind.value for kind in FailureKind)


def _failure(reply: tuple[Any, ...]) -> ExecutionError:
    """The ExecutionError of a worker's ("failed", reason, message, metadata, kind) reply."""
    _, reason, message, metadata, kind = reply
    return ExecutionError(reason, message, kind=FailureKind(kind), metadata=metadata)


def _describe_exit(code: int) -> tuple[str, dict[str, str]]:
    """The message and ErrorInfo metadata of a worker's exit status."""
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = str(-code)
        return f"the worker process was killed by signal {name}", {"signal": name}
    return f"the worker process exited with status {code}", {"exitStatus": str(code)}
