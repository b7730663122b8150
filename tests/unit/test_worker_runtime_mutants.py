"""The worker runtime's decisions that no other test pinned (found by a mutation review): how
a simulator worker reports each way a run ends, what a compile worker sets up and reports, how
the gateway reads a worker that died between calls, and how a worker is stopped. In process
with stand-ins where the protocol alone is exercised; a real process only for what needs one
(the fds of a worker, its parent's death)."""

from __future__ import annotations

import asyncio
import os
import resource
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from gateway.backends.base import ExecutionOutcome
from gateway.domain.circuits import CircuitLanguage, CircuitSource
from gateway.domain.errors import ExecutionError, FieldViolation, InvalidArgument
from gateway.domain.failures import FailureKind
from gateway.domain.jobs import JobResult
from gateway.runtime import reply_codec, worker
from gateway.runtime.worker import (
    CompileRole,
    SimulatorRole,
    WorkerCrashed,
    WorkerProcess,
    WorkerReplyRefused,
)
from tests.worker_output import WrittenWorker

SOURCE = CircuitSource(CircuitLanguage.QASM3, "OPENQASM 3.0; qubit q; h q;")
OUTCOME = ExecutionOutcome(JobResult(pubs=()), {"sdk": "1"})
ROOT = Path(__file__).resolve().parents[2]


class _Limits:
    """resource.setrlimit, recorded instead of applied (the test process keeps its limits)."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, tuple[int, int]]] = []

    def __call__(self, which: int, limits: tuple[int, int]) -> None:
        self.calls.append((which, limits))

    def of(self, which: int) -> list[tuple[int, int]]:
        return [limits for kind, limits in self.calls if kind == which]


# ------------------------------------------------------------------ a simulator worker's replies


class _Raising:
    """A simulator adapter whose execute raises what the payload names, or answers OUTCOME."""

    def __init__(self, context: object) -> None:
        pass

    def warm_up(self) -> None:
        pass

    def execute(self, payload: object) -> ExecutionOutcome:
        if isinstance(payload, BaseException):
            raise payload
        assert payload == "inner", payload  # a FaultyPayload's inner payload, unwrapped
        return OUTCOME


def _simulator(monkeypatch: pytest.MonkeyPatch) -> Callable[[Any], tuple[Any, ...]]:
    from gateway.backends import registry

    monkeypatch.setattr(resource, "setrlimit", _Limits())
    monkeypatch.setattr(registry, "load_adapter", lambda name: _Raising)
    context = SimpleNamespace(worker_memory_bytes=None)
    return worker._simulator(SimulatorRole("fake", context))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("raised", "expected"),
    [
        # The SDK's or adapter's own failure keeps its reason, metadata and kind.
        (
            ExecutionError("X", "m", kind=FailureKind.TRANSIENT, metadata={"pubIndex": "1"}),
            ("failed", "X", "m", {"pubIndex": "1"}, "TRANSIENT"),
        ),
        # A job the backend refuses when it runs is the client's: retrying it elsewhere fails
        # the same, and the breaker must not count it against the backend.
        (
            InvalidArgument("BAD", "refused", metadata={"k": "v"}),
            ("failed", "BAD", "refused", {"k": "v"}, "CLIENT_ERROR"),
        ),
        (
            MemoryError(),
            ("failed", "OUT_OF_MEMORY", "the simulation ran out of memory", {}, "OUT_OF_MEMORY"),
        ),
        (
            RuntimeError("boom"),
            ("failed", "EXECUTION_FAILED", "RuntimeError: boom", {}, "SDK_ERROR"),
        ),
    ],
)
def test_a_simulator_worker_reports_each_failure_with_its_own_kind(
    monkeypatch: pytest.MonkeyPatch, raised: BaseException, expected: tuple[Any, ...]
) -> None:
    handle = _simulator(monkeypatch)
    assert handle(("run", raised)) == expected


def test_a_simulator_worker_runs_a_faulty_payloads_inner_payload(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from gateway.backends.fault import FaultyPayload, ProcessFaults

    handle = _simulator(monkeypatch)
    assert handle(("run", FaultyPayload("inner", 1, ProcessFaults()))) == ("ok", OUTCOME)


# ------------------------------------------------------------------- a compile worker's set-up


class _Compiling:
    def __init__(self, context: object) -> None:
        pass

    def warm_up_compiler(self) -> None:
        pass

    def compile_circuit(self, source: CircuitSource) -> object:
        if source.text == "interrupt":
            raise KeyboardInterrupt
        violation = FieldViolation("circuit", "line 1: no gate 'foo'")
        raise InvalidArgument("UNKNOWN_GATE", "no such gate", field_violations=[violation])


def _compiler(
    monkeypatch: pytest.MonkeyPatch, memory_bytes: int | None
) -> tuple[Callable[[Any], tuple[Any, ...]], _Limits]:
    from gateway.backends import registry

    limits = _Limits()
    monkeypatch.setattr(resource, "setrlimit", limits)
    monkeypatch.setattr(worker, "_data_bytes", lambda: 300_000_000)
    monkeypatch.setattr(registry, "load_adapter", lambda name: _Compiling)
    role = CompileRole(backends={"aer": ("fake", None)}, memory_bytes=memory_bytes)  # type: ignore[dict-item]
    return worker._compiler(role), limits


def test_a_compile_worker_dumps_no_core_and_limits_memory_beyond_its_warm_size(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Killed at its CPU limit once per hostile circuit: a core file each time would fill the
    # disk. The memory limit counts from what the warm worker already holds (300 MB here), or
    # a warm worker would be out of memory before its first compile.
    _, limits = _compiler(monkeypatch, memory_bytes=50_000_000)
    assert limits.of(resource.RLIMIT_CORE) == [(0, 0)]
    assert limits.of(resource.RLIMIT_DATA) == [(350_000_000, 350_000_000)]


def test_a_compile_refusal_keeps_its_field_violations(monkeypatch: pytest.MonkeyPatch) -> None:
    # The client reads where its circuit is wrong from them.
    handle, _ = _compiler(monkeypatch, memory_bytes=None)
    reply = handle(("compile", "aer", CircuitSource(CircuitLanguage.QASM3, "foo"), 1.0))
    assert reply == (
        "invalid",
        "UNKNOWN_GATE",
        "no such gate",
        {},
        (("circuit", "line 1: no gate 'foo'"),),
    )


def test_an_interrupt_ends_a_compile_worker_rather_than_failing_the_circuit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Ctrl-C (or a stop) reaching the worker ends it; it is not the circuit's COMPILER_FAILED.
    handle, limits = _compiler(monkeypatch, memory_bytes=None)
    limits.calls.clear()
    with pytest.raises(KeyboardInterrupt):
        handle(("compile", "aer", CircuitSource(CircuitLanguage.QASM3, "interrupt"), 1.0))
    assert limits.of(resource.RLIMIT_CPU)[-1][0] == resource.getrlimit(resource.RLIMIT_CPU)[1]


def test_a_negative_cpu_budget_does_not_set_a_limit_already_passed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A soft limit below the CPU time already used would SIGXCPU the warm worker at once.
    limits = _Limits()
    monkeypatch.setattr(resource, "setrlimit", limits)
    monkeypatch.setattr(worker, "_cpu_seconds_used", lambda: 10.5)
    worker._limit_cpu(-5.0)
    ((soft, _),) = limits.of(resource.RLIMIT_CPU)
    assert soft > 10.5


# -------------------------------------------------------------------- what a worker sends back


def test_a_reply_too_large_for_the_workers_memory_is_sent_as_memory(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    encode = reply_codec.encode

    def out_of_memory_once(reply: tuple[Any, ...]) -> bytes:
        if reply[0] == "ok":
            raise MemoryError
        return encode(reply)

    monkeypatch.setattr(reply_codec, "encode", out_of_memory_once)
    assert reply_codec.decode(worker._reply_frame(("ok", OUTCOME))[8:]) == ("memory",)


def test_an_unencodable_replys_failure_message_is_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The message reaches the job's error (tenants read it): an adapter's bug must not put an
    # unbounded repr there.
    encode = reply_codec.encode

    def refusing(reply: tuple[Any, ...]) -> bytes:
        if reply[0] == "ok":
            raise ValueError("x" * 10_000)
        return encode(reply)

    monkeypatch.setattr(reply_codec, "encode", refusing)
    reply = reply_codec.decode(worker._reply_frame(("ok", OUTCOME))[8:])
    assert reply[:2] == ("failed", "EXECUTION_FAILED") and len(reply[2]) == 500


# ------------------------------------------------------------------ the gateway's worker handle


class _Sink:
    def __init__(self, error: Exception | None = None) -> None:
        self.error = error
        self.closed = False

    def write(self, data: bytes) -> None:
        if self.error is not None:
            raise self.error

    async def drain(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True


class _Process(WrittenWorker):
    """A worker process stand-in with a stdin, whose wait() ends as `exits` says."""

    def __init__(self, data: bytes = b"", stdin: _Sink | None = None, exits: bool = True) -> None:
        super().__init__(data)
        self.stdin = stdin or _Sink()  # type: ignore[assignment]
        self.exits = exits

    def kill(self) -> None:
        super().kill()
        self.returncode = -signal.SIGKILL  # type: ignore[assignment]

    async def wait(self) -> int:
        if self.returncode is None:
            if not self.exits:  # as asyncio.wait_for's timeout ends a wait that goes on
                raise TimeoutError
            self.returncode = 0  # type: ignore[assignment]
        return self.returncode  # type: ignore[return-value]


@pytest.mark.anyio
async def test_a_worker_that_died_while_idle_is_not_alive() -> None:
    # Killed from outside between jobs (the OOM killer): the pool must not hand it out.
    process = _Process()
    handle = WorkerProcess(process, 1 << 20)  # type: ignore[arg-type]
    assert handle.alive
    process.returncode = -signal.SIGKILL  # type: ignore[assignment]
    assert not handle.alive


@pytest.mark.anyio
async def test_a_worker_whose_pipe_closed_is_not_alive() -> None:
    # The process may not be reaped yet (no returncode), but it can serve nobody.
    process = _Process(stdin=_Sink(BrokenPipeError()))
    handle = WorkerProcess(process, 1 << 20)  # type: ignore[arg-type]
    with pytest.raises(WorkerCrashed):
        await handle.execute("payload")
    assert process.returncode is None and not handle.alive


@pytest.mark.anyio
async def test_a_run_answered_with_an_outcome_holding_no_job_result_is_refused() -> None:
    # ExecutionOutcome is registered, so the codec builds one around whatever a worker sends.
    bogus = ExecutionOutcome("not a result", {})  # type: ignore[arg-type]
    process = _Process(worker._reply_frame(("ok", bogus)))
    handle = WorkerProcess(process, 1 << 20)  # type: ignore[arg-type]
    with pytest.raises(WorkerReplyRefused):
        await handle.execute("payload")
    assert process.killed


@pytest.mark.anyio
async def test_a_result_that_did_not_fit_in_the_worker_is_out_of_memory() -> None:
    # OUT_OF_MEMORY recycles the worker (its heap may be fragmented) and is not the backend's
    # fault for the breaker.
    process = _Process(worker._reply_frame(("memory",)))
    handle = WorkerProcess(process, 1 << 20)  # type: ignore[arg-type]
    with pytest.raises(ExecutionError) as raised:
        await handle.execute("payload")
    assert raised.value.reason == "OUT_OF_MEMORY"
    assert raised.value.kind is FailureKind.OUT_OF_MEMORY
    assert not process.killed


@pytest.mark.anyio
async def test_stop_closes_stdin_and_lets_the_worker_exit() -> None:
    process = _Process()
    await WorkerProcess(process, 1 << 20).stop()  # type: ignore[arg-type]
    assert process.stdin.closed and not process.killed and process.returncode == 0  # type: ignore[attr-defined]


@pytest.mark.anyio
async def test_stop_kills_a_worker_that_does_not_exit() -> None:
    process = _Process(exits=False)
    await WorkerProcess(process, 1 << 20).stop()  # type: ignore[arg-type]
    assert process.killed and process.returncode == -signal.SIGKILL


def test_an_exit_by_a_signal_python_does_not_name_is_read_by_its_number() -> None:
    assert worker._describe_exit(-200) == (
        "the worker process was killed by signal 200",
        {"signal": "200"},
    )


# ------------------------------------------------------------------------- real worker processes

# run_worker with a compile handler that writes to fd 1 as an SDK might (print, C code).
_NOISY = """
import os, sys
from gateway.runtime import worker

def noisy(role):
    def handle(message):
        print("an SDK's progress line", flush=True)
        os.write(1, b"and some from native code\\n")
        return ("ok", message[2].text)
    return handle

worker._compiler = noisy
worker.run_worker()
"""


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


@pytest.mark.anyio
async def test_what_a_worker_prints_does_not_reach_the_protocol() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _NOISY,
        str(os.getpid()),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        env=_env(),
    )
    handle = WorkerProcess(process, 1 << 20)
    try:
        await handle._send(worker._frame(CompileRole(backends={}, memory_bytes=None)))
        assert (await handle._receive())[0] == "ready"
        assert await handle.compile("aer", SOURCE, 5.0) == SOURCE.text
        assert await handle.compile("aer", SOURCE, 5.0) == SOURCE.text  # still in step
        # Traced work carries the worker's own start and end (the gateway's span is made of
        # them): real times, in order.
        started, ended, inner = await handle._traced_exchange(("compile", "aer", SOURCE, 5.0))
        assert inner == ("ok", SOURCE.text) and 0 < started <= ended
    finally:
        await handle.stop()
    assert process.returncode == 0  # EOF on stdin ended it


def test_a_worker_whose_parent_died_before_it_asked_to_die_with_it_exits() -> None:
    # The parent it was started for is gone (it has been re-parented): nobody would ever
    # stop it, so it ends at once.
    script = textwrap.dedent(
        """
        from gateway.runtime.worker import _die_with_parent
        _die_with_parent(1 << 22)  # beyond any pid_max: not this process's parent
        print("still running")
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, env=_env()
    )
    assert (out.returncode, out.stdout) == (1, "")


# ----------------------------------------------------------------- the runner's use of workers


class _Worker:
    """A simulator worker stand-in: execute waits for `answer`, then returns it or raises it."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.alive = True
        self.answer: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        self.running = asyncio.Event()

    async def execute(self, payload: object) -> ExecutionOutcome:
        self.running.set()
        answer = await self.answer
        if isinstance(answer, BaseException):
            raise answer
        assert isinstance(answer, ExecutionOutcome)
        return answer

    def kill(self) -> None:
        self.alive = False
        if not self.answer.done():
            self.answer.set_result(WorkerCrashed("killed", {"signal": "SIGKILL"}))


class _Pool:
    """Hands out new stand-in workers (or raises `failure`); records each release."""

    def __init__(self, failure: Exception | None = None) -> None:
        self.failure = failure
        self.handed: list[_Worker] = []
        self.released: list[tuple[int, bool]] = []
        self.limits = SimpleNamespace(max_instances=2)
        # Set: a release waits for it (a pool busy replacing a worker, say).
        self.gate: asyncio.Event | None = None
        self.releasing = asyncio.Event()

    async def acquire(self, timeout: float | None = None) -> _Worker:
        if self.failure is not None:
            raise self.failure
        self.handed.append(_Worker(len(self.handed) + 1))
        return self.handed[-1]

    async def release(self, worker: _Worker, *, broken: bool = False) -> None:
        self.releasing.set()
        if self.gate is not None:
            await self.gate.wait()
        self.released.append((worker.pid, broken))

    async def close(self) -> None:
        pass


def _runner(pool: _Pool) -> Any:
    from gateway.runtime.simulator_runner import WorkerPoolRunner

    return WorkerPoolRunner(pool)  # type: ignore[arg-type]


def _a_job(session: str = "") -> Any:
    from datetime import UTC, datetime

    from gateway.domain.jobs import Job, JobState

    return Job(
        id="j1",
        tenant="t",
        request_id="",
        backend="sim",
        state=JobState.QUEUED,
        created_at=datetime(2026, 12, 5, tzinfo=UTC),
        num_pubs=1,
        seed=1,
        session=session,
    )


def _prepared() -> Any:
    from gateway.backends.base import PreparedJob

    return PreparedJob(payload="p", memory_bytes=0, layouts=())


@pytest.mark.anyio
async def test_a_worker_that_could_not_be_started_fails_the_job_as_a_backend_fault() -> None:
    # The pool's own error (a worker that did not start) is no ExecutionError: the job core
    # would take it for a bug in the gateway.
    runner = _runner(_Pool(RuntimeError("worker did not start: ('ok',)")))
    with pytest.raises(ExecutionError) as raised:
        await runner.submit(_prepared(), _a_job())
    assert raised.value.reason == "WORKER_CRASHED"
    assert raised.value.kind is FailureKind.BACKEND_FAULT


@pytest.mark.anyio
async def test_a_worker_that_died_right_after_answering_is_replaced() -> None:
    pool = _Pool()
    runner = _runner(pool)
    handle = await runner.submit(_prepared(), _a_job())
    worker_ = pool.handed[0]
    await worker_.running.wait()
    worker_.alive = False  # it answered, then died (the OOM killer, say)
    worker_.answer.set_result(OUTCOME)
    assert await runner.wait(handle) is OUTCOME
    assert pool.released == [(1, True)]


@pytest.mark.anyio
async def test_an_execution_cancelled_mid_protocol_kills_its_worker() -> None:
    # A request sent and its answer unread: the pipe is out of step, no job can use it.
    pool = _Pool()
    runner = _runner(pool)
    handle = await runner.submit(_prepared(), _a_job())
    await pool.handed[0].running.wait()
    handle.execution.cancel()
    with pytest.raises(asyncio.CancelledError):
        await handle.execution
    assert not pool.handed[0].alive and pool.released == [(1, True)]


@pytest.mark.anyio
async def test_a_waiter_cancelled_after_its_job_ended_does_not_kill_the_worker() -> None:
    # Once execution ended the worker is on its way back to the pool, healthy: killing it
    # for a waiter that left then would hand the next job a dead worker.
    pool = _Pool()
    pool.gate = asyncio.Event()
    runner = _runner(pool)
    handle = await runner.submit(_prepared(), _a_job())
    waiting = asyncio.ensure_future(runner.wait(handle))
    await pool.handed[0].running.wait()
    pool.handed[0].answer.set_result(OUTCOME)
    await pool.releasing.wait()  # execution ended; its worker is being given back
    assert handle.ended and not waiting.done()
    waiting.cancel()
    await asyncio.sleep(0)
    pool.gate.set()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert pool.handed[0].alive and pool.released == [(1, False)]


@pytest.mark.anyio
async def test_a_failure_the_worker_answered_before_a_cancel_is_kept() -> None:
    # Only the kill the cancel made reads as CANCELLED; an answer that was already on its way
    # is the job's own (here the SDK's error, which the breaker weighs by the probe).
    pool = _Pool()
    runner = _runner(pool)
    handle = await runner.submit(_prepared(), _a_job())
    await pool.handed[0].running.wait()
    pool.handed[0].answer.set_result(ExecutionError("X", "m", kind=FailureKind.SDK_ERROR))
    await runner.cancel(handle)  # before the execution read the answer
    with pytest.raises(ExecutionError) as raised:
        await runner.wait(handle)
    assert raised.value.kind is FailureKind.SDK_ERROR and raised.value.reason == "X"


@pytest.mark.anyio
async def test_a_probe_the_backend_refused_keeps_its_worker() -> None:
    # The SDK raised while the worker stayed up: nothing to replace.
    pool = _Pool()
    runner = _runner(pool)
    probing = asyncio.ensure_future(runner.probe(_prepared(), timeout=60))
    while not pool.handed:
        await asyncio.sleep(0)
    pool.handed[0].answer.set_result(ExecutionError("X", "m", kind=FailureKind.SDK_ERROR))
    with pytest.raises(ExecutionError):
        await probing
    assert pool.released == [(1, False)]


@pytest.mark.anyio
async def test_a_probe_whose_worker_died_after_answering_replaces_it() -> None:
    pool = _Pool()
    runner = _runner(pool)
    probing = asyncio.ensure_future(runner.probe(_prepared(), timeout=60))
    while not pool.handed:
        await asyncio.sleep(0)
    pool.handed[0].alive = False  # it answers, then is gone
    pool.handed[0].answer.set_result(OUTCOME)
    await probing
    assert pool.released == [(1, True)]


@pytest.mark.anyio
async def test_a_probe_past_its_time_kills_its_worker_before_giving_it_back() -> None:
    # A stuck worker is stopped at once, not asked to exit (a stuck worker reads no EOF).
    pool = _Pool()
    runner = _runner(pool)
    with pytest.raises(TimeoutError):
        await runner.probe(_prepared(), timeout=0.01)  # the stand-in never answers
    assert not pool.handed[0].alive and pool.released == [(1, True)]


@pytest.mark.anyio
async def test_a_cancelled_probe_kills_its_worker() -> None:
    pool = _Pool()
    runner = _runner(pool)
    probing = asyncio.ensure_future(runner.probe(_prepared(), timeout=60))
    while not pool.handed:
        await asyncio.sleep(0)
    await pool.handed[0].running.wait()
    probing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await probing
    assert not pool.handed[0].alive and pool.released == [(1, True)]


@pytest.mark.anyio
async def test_two_jobs_of_a_pinned_session_at_once_leave_no_worker_out_of_the_pool() -> None:
    # The session keeps one worker; the other job's worker goes back, not lost.
    pool = _Pool()
    runner = _runner(pool)
    runner.pin_session("s")
    first = await runner.submit(_prepared(), _a_job("s"))
    second = await runner.submit(_prepared(), _a_job("s"))
    for worker_ in pool.handed:
        worker_.answer.set_result(OUTCOME)
    await runner.wait(first)
    await runner.wait(second)
    assert runner.pinned_worker("s") is pool.handed[0]
    assert pool.released == [(2, False)]
    runner.unpin_session("s")
    await runner.close()
    assert sorted(pool.released) == [(1, False), (2, False)]


@pytest.mark.anyio
async def test_an_unpinned_sessions_worker_that_died_goes_back_broken() -> None:
    pool = _Pool()
    runner = _runner(pool)
    runner.pin_session("s")
    handle = await runner.submit(_prepared(), _a_job("s"))
    pool.handed[0].answer.set_result(OUTCOME)
    await runner.wait(handle)
    pool.handed[0].alive = False  # died while kept for the session
    runner.unpin_session("s")
    await runner.close()
    assert pool.released == [(1, True)]


# ------------------------------------------------------- work carried on after its caller left


@pytest.mark.anyio
async def test_work_that_ended_is_no_longer_carried() -> None:
    # Otherwise every write ever made stays referenced: a leak for the gateway's lifetime.
    from gateway.runtime import shielded

    async def write() -> int:
        return 7

    assert await shielded.to_the_end(write()) == 7
    assert not shielded._carried_on
    await shielded.carried_on(0)  # nothing to wait for: returns


@pytest.mark.anyio
async def test_a_stop_waits_for_carried_work_until_it_ends() -> None:
    # Within its timeout, the stop waits for the write itself, not for a loop turn or two:
    # the store closes after it.
    from gateway.runtime import shielded

    go = asyncio.Event()

    async def write() -> None:
        await go.wait()

    caller = asyncio.ensure_future(shielded.to_the_end(write()))
    await asyncio.sleep(0)
    caller.cancel()
    await asyncio.gather(caller, return_exceptions=True)
    stopping = asyncio.ensure_future(shielded.carried_on(60.0))
    for _ in range(20):  # many loop turns: a zero timeout would have ended the wait by now
        await asyncio.sleep(0)
    assert not stopping.done()
    go.set()
    await stopping
    assert not shielded._carried_on


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("failure", "logged"),
    [
        (RuntimeError("a bug"), [("ERROR", "work carried on after its caller left failed")]),
        (
            "store",
            [("WARNING", "a write for a caller that left was not stored: disk full")],
        ),
        # A refusal (a cancel of a job that had finished) is nobody's concern.
        (InvalidArgument("ALREADY_DONE", "finished"), []),
    ],
)
async def test_the_failure_of_work_whose_caller_left_is_said_once(
    caplog: pytest.LogCaptureFixture, failure: object, logged: list[tuple[str, str]]
) -> None:
    from gateway.domain.errors import StoreUnavailable
    from gateway.runtime import shielded

    go = asyncio.Event()
    error = StoreUnavailable("STORE_UNAVAILABLE", "disk full") if failure == "store" else failure
    assert isinstance(error, Exception)

    async def write() -> None:
        await go.wait()
        raise error

    caller = asyncio.ensure_future(shielded.to_the_end(write()))
    await asyncio.sleep(0)
    caller.cancel()
    await asyncio.gather(caller, return_exceptions=True)
    caplog.clear()
    go.set()
    await shielded.carried_on(5.0)
    await asyncio.sleep(0)  # the done callbacks have run
    said = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == shielded.__name__]
    assert said == logged


@pytest.mark.anyio
@pytest.mark.parametrize("ends", ["value", "error", "cancelled"])
async def test_work_whose_caller_left_is_used_only_when_it_succeeded(
    caplog: pytest.LogCaptureFixture, ends: str
) -> None:
    # A failure is said once (a cancellation is nobody's concern), never raised in a callback.
    from gateway.runtime import shielded

    go = asyncio.Event()

    async def work() -> int:
        await go.wait()
        if ends == "error":
            raise ExecutionError("X", "m")
        return 5

    task = asyncio.ensure_future(work())
    used: list[int] = []
    shielded.when_caller_left(task, used.append)
    await asyncio.sleep(0)
    if ends == "cancelled":
        task.cancel()
    go.set()
    await asyncio.gather(task, return_exceptions=True)
    await asyncio.sleep(0)  # the done callback has run
    assert used == ([5] if ends == "value" else [])
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert errors == (["work carried on after its caller left failed"] if ends == "error" else [])


# ------------------------------------------------------------------------ blocking provider calls


@pytest.mark.anyio
async def test_a_call_whose_caller_left_before_its_thread_started_never_runs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The thread picks the call up only after the caller gave up: its slot is free again and
    # the call must not run (nobody waits for it, and it would hold the slot once more).
    import anyio

    from gateway.runtime import blocking

    queued: list[Callable[[], object]] = []

    async def left_while_queued(call: Callable[[], object], **kwargs: object) -> object:
        queued.append(call)
        raise asyncio.CancelledError  # the caller is cancelled before a thread takes the call

    monkeypatch.setattr(anyio.to_thread, "run_sync", left_while_queued)
    limiter = anyio.CapacityLimiter(1)
    ran: list[int] = []
    with pytest.raises(asyncio.CancelledError):
        await blocking.run_blocking(lambda: ran.append(1), limiter)
    assert limiter.borrowed_tokens == 0
    with pytest.raises(asyncio.CancelledError):
        queued[0]()  # the thread, late
    assert ran == [] and limiter.borrowed_tokens == 0


@pytest.mark.anyio
async def test_close_gives_back_the_workers_kept_for_sessions() -> None:
    # The pool closes the workers it holds: one kept out of it would outlive the gateway's stop.
    pool = _Pool()
    runner = _runner(pool)
    runner.pin_session("s")
    handle = await runner.submit(_prepared(), _a_job("s"))
    pool.handed[0].answer.set_result(OUTCOME)
    await runner.wait(handle)
    assert pool.released == []
    await runner.close()
    assert pool.released == [(1, False)] and runner.pinned_worker("s") is None


@pytest.mark.anyio
async def test_a_worker_killed_on_the_way_fails_the_job_with_its_own_signal() -> None:
    # The pool's ExecutionError (the worker it handed out had died) is the job's failure as
    # it is: its metadata says which signal ended the worker.
    runner = _runner(_Pool(WorkerCrashed("killed by signal SIGKILL", {"signal": "SIGKILL"})))
    with pytest.raises(WorkerCrashed) as raised:
        await runner.submit(_prepared(), _a_job())
    assert raised.value.metadata == {"signal": "SIGKILL"}


@pytest.mark.anyio
async def test_a_session_unpinned_keeps_no_worker_for_its_later_jobs() -> None:
    # A job of the session still running (or arriving) after the unpin must not take a worker
    # out of the pool for good: nothing would unpin it again.
    pool = _Pool()
    runner = _runner(pool)
    runner.pin_session("s")
    runner.unpin_session("s")
    handle = await runner.submit(_prepared(), _a_job("s"))
    pool.handed[0].answer.set_result(OUTCOME)
    await runner.wait(handle)
    assert runner.pinned_worker("s") is None and pool.released == [(1, False)]


# ----------------------------------------------------------------------------- traced worker calls


class _Tracing:
    """The process's tracing, as WorkerProcess._call sees it: sampled or not."""

    def __init__(self, sampled: bool) -> None:
        self.is_sampled = sampled
        self.spans: list[str] = []

    def sampled(self) -> bool:
        return self.is_sampled

    async def worker_call(
        self, name: str, pid: int, exchange: Any, message: tuple[Any, ...]
    ) -> tuple[Any, ...]:
        self.spans.append(name)
        _, _, reply = await exchange(message)
        return tuple(reply)


@pytest.mark.anyio
@pytest.mark.parametrize("sampled", [True, False])
async def test_only_work_in_a_sampled_trace_is_traced(
    monkeypatch: pytest.MonkeyPatch, sampled: bool
) -> None:
    # A traced request costs the worker its timing and the gateway a span: not for work
    # outside a sampled trace, and always for work inside one.
    from gateway.telemetry import active

    tracing = _Tracing(sampled)
    monkeypatch.setattr(active, "tracing", tracing)
    reply = ("traced", 1, 2, ("ok", OUTCOME)) if sampled else ("ok", OUTCOME)
    handle = WorkerProcess(_Process(worker._reply_frame(reply)), 1 << 20)  # type: ignore[arg-type]
    assert (await handle.execute("payload")).sdk_versions == {"sdk": "1"}
    assert tracing.spans == (["qgateway.worker.execute"] if sampled else [])


@pytest.mark.anyio
async def test_a_traced_reply_gives_the_workers_start_then_its_end() -> None:
    reply = ("traced", 10, 20, ("ok", "x"))
    handle = WorkerProcess(_Process(worker._reply_frame(reply)), 1 << 20)  # type: ignore[arg-type]
    assert await handle._traced_exchange(("compile", "aer", SOURCE, 1.0)) == (10, 20, ("ok", "x"))


def test_a_tiny_result_limit_still_leaves_room_for_the_replys_own_fields() -> None:
    # A result within max_result_bytes is never refused as hostile, however small the limit:
    # the outcome around it (SDK versions, flags) needs room of its own.
    context = SimpleNamespace(limits=SimpleNamespace(max_result_bytes=16))
    bound = worker._max_reply_bytes(SimulatorRole("aer", context))  # type: ignore[arg-type]
    outcome = ExecutionOutcome(JobResult(pubs=()), {"qiskit-aer": "0.17.2", "qiskit": "2.1.0"})
    assert len(worker._reply_frame(("traced", 1, 2, ("ok", outcome)))) - 8 <= bound


# ------------------------------------------------------------------------------ the reply codec


def _scalar(dtype: str, raw: bytes) -> bytes:
    import msgpack  # type: ignore[import-untyped, unused-ignore]

    ext = msgpack.ExtType(6, msgpack.packb([dtype, raw], use_bin_type=True))
    packed: bytes = msgpack.packb(("ok", ext), use_bin_type=True)
    return packed


@pytest.mark.parametrize(("dtype", "raw"), [("<f4", b"\x00" * 4), ("<M8[s]", b"\x00" * 8)])
def test_a_scalar_of_a_dtype_no_worker_sends_is_refused(dtype: str, raw: bytes) -> None:
    # As for arrays: only the numeric dtypes a result holds (a datetime or a float32 in a
    # result field would fail later in the gateway, as INTERNAL).
    with pytest.raises(reply_codec.RefusedReply, match="scalar"):
        reply_codec.decode(_scalar(dtype, raw))


def test_a_worker_does_not_send_a_numpy_scalar_the_gateway_would_refuse() -> None:
    # Caught on the worker's side as the adapter's bug (the job fails, the worker stays up),
    # not sent and refused by the gateway (which kills the worker).
    import numpy as np

    with pytest.raises(TypeError):
        reply_codec.encode(("ok", np.float32(0.5)))


def test_a_reply_with_a_map_keyed_by_other_than_strings_is_refused() -> None:
    import msgpack  # type: ignore[import-untyped, unused-ignore]

    with pytest.raises(reply_codec.RefusedReply):
        reply_codec.decode(msgpack.packb(("ok", {1: "v"}), use_bin_type=True))


def test_sets_and_read_only_mappings_travel_as_frozensets_and_dicts() -> None:
    # An adapter's metadata may be a MappingProxyType, its features a set.
    from types import MappingProxyType

    reply = reply_codec.decode(reply_codec.encode(("ok", {1, 2}, MappingProxyType({"k": "v"}))))
    assert reply == ("ok", frozenset({1, 2}), {"k": "v"})


def test_an_unregistered_class_named_like_a_registered_one_is_not_sent() -> None:
    # Its fields would be read back into the registered class, whatever they mean.
    import dataclasses

    @dataclasses.dataclass
    class JobResult:
        pubs: tuple[object, ...]

    JobResult.__module__, JobResult.__qualname__ = "gateway.domain.jobs", "JobResult"
    with pytest.raises(TypeError, match="not registered"):
        reply_codec.encode(("ok", JobResult(pubs=())))


def test_only_dataclasses_and_enums_may_be_registered() -> None:
    # Another class would be built from a reply's fields through whatever its __init__ does.
    class Plain:
        pass

    with pytest.raises(TypeError):
        reply_codec.register(Plain)
    assert f"{Plain.__module__}:{Plain.__qualname__}" not in reply_codec._TYPES


def test_counts_of_a_negative_width_are_refused() -> None:
    # The counts reader itself takes -8 bits (and one outcome of zero bytes) as given.
    import msgpack  # type: ignore[import-untyped, unused-ignore]
    import numpy as np

    one = np.array([1], dtype=np.int64).tobytes()
    counts = msgpack.ExtType(5, msgpack.packb([-8, b"\x00", one], use_bin_type=True))
    with pytest.raises(reply_codec.RefusedReply, match="bits"):
        reply_codec.decode(msgpack.packb(("ok", counts), use_bin_type=True))


def test_an_array_in_fortran_order_reads_back_with_its_values_in_place() -> None:
    # A transposed result is laid out column-first in memory; its bytes must be sent row-first
    # (the order the gateway reads them in), or the values come back transposed.
    import numpy as np

    array = np.asfortranarray(np.arange(6, dtype=np.int64).reshape(2, 3))
    read = reply_codec.decode(reply_codec.encode(("ok", array)))[1]
    assert read.tolist() == [[0, 1, 2], [3, 4, 5]]


def test_a_msgpack_timestamp_is_refused_like_any_type_no_worker_sends() -> None:
    # fixext 4, type -1: a timestamp of 0 s, which msgpack decodes itself (not ext_hook). No
    # worker encodes one (encode never emits it).
    with pytest.raises(reply_codec.RefusedReply, match="timestamp"):
        reply_codec.decode(b"\x92\xa2ok\xd6\xff\x00\x00\x00\x00")
    # Inside a map, and inside an extension's own payload (a frozenset of one timestamp).
    with pytest.raises(reply_codec.RefusedReply, match="timestamp"):
        reply_codec.decode(b"\x92\xa2ok\x81\xa1t\xd6\xff\x00\x00\x00\x00")
    inner = b"\x91\xd6\xff\x00\x00\x00\x00"
    with pytest.raises(reply_codec.RefusedReply, match="timestamp"):
        reply_codec.decode(b"\x92\xa2ok\xc7" + bytes([len(inner), 3]) + inner)
