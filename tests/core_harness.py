"""The job core in process: a real SQLite store, real queues, a scripted runner whose jobs end
when the test says so, and a hand-moved wall clock. No worker process, no gRPC."""

from __future__ import annotations

import asyncio
import math
import pickle
import sqlite3
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from gateway.backends.base import (
    AdapterContext,
    BackendAdapter,
    CircuitLimits,
    ExecutionOutcome,
    PreparedJob,
)
from gateway.backends.runner import ExecutionModel, RunHandle, Runner
from gateway.domain.backends import BackendInfo, BackendKind, BackendLimits, Primitive
from gateway.domain.circuits import Bindings, CircuitLanguage, CircuitSource, SamplerPub
from gateway.domain.errors import ExecutionError
from gateway.domain.failures import FailureKind
from gateway.domain.jobs import Job, JobOptions, JobResult, JobSpec
from gateway.domain.targets import BackendTarget
from gateway.jobs.backend import BackendRuntime, BackendSettings
from gateway.jobs.claim_queue import ClaimQueue
from gateway.jobs.hooks import Hooks, LifecycleHook, Transition
from gateway.jobs.manager import JobManager
from gateway.jobs.memory_queue import MemoryQueue
from gateway.jobs.queue_port import JobQueue
from gateway.runtime.breaker import BreakerPolicy, CircuitBreaker
from gateway.security.policies import PolicyBook
from gateway.store.sqlite import SqliteStore

QueueKind = Literal["memory", "store"]
T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


class Clock:
    """A wall clock the test moves by hand: time passes when it moves (advance, or `now` set),
    unless it is stepped (step: the wall clock jumps, no time passes)."""

    def __init__(self, now: datetime = T0) -> None:
        self.now = now
        self._start = now
        self._stepped = timedelta(0)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)

    def step(self, by: timedelta) -> None:
        self.now += by
        self._stepped += by

    def monotonic(self) -> float:
        """Seconds that have passed (time.monotonic's part)."""
        return (self.now - self._start - self._stepped).total_seconds()


class EchoAdapter(BackendAdapter):
    """A compiler that accepts any circuit and prepares its text as the payload."""

    def info(self) -> BackendInfo:
        return BackendInfo(
            name=self.context.name,
            provider="test",
            kind=BackendKind.SIMULATOR,
            num_qubits=5,
            basis_gates=("x",),
            primitives=frozenset({Primitive.SAMPLER}),
            features=frozenset(),
            limits=self.context.limits,
        )

    def target(self) -> BackendTarget:
        raise NotImplementedError

    def compile_circuit(self, source: CircuitSource) -> object:
        return source.text

    def prepare(self, spec: JobSpec, seed: int, circuits: Sequence[object]) -> PreparedJob:
        # A circuit whose text says "while" stands for one with a while loop; one that says
        # "no-measure" for one that writes no bit, which counts no shots (Braket runs no task
        # for it): only compiling tells.
        loops = any("while" in str(c) for c in circuits)
        shots = sum(
            (pub.shots or 0) * math.prod(pub.bindings.shape)
            for pub, circuit in zip(spec.pubs, circuits, strict=True)
            if isinstance(pub, SamplerPub) and "no-measure" not in str(circuit)
        )
        return PreparedJob(
            payload=tuple(circuits),
            memory_bytes=0,
            layouts=(),
            has_while_loop=loops,
            shots=shots,
        )

    def prepare_is_cheap(self, spec: JobSpec) -> bool:
        return True

    def execute(self, payload: object) -> ExecutionOutcome:
        raise NotImplementedError


class DirectCompiler:
    async def compile(
        self, tenant: str, backend: str, adapter: BackendAdapter, source: CircuitSource, field: str
    ) -> object:
        return adapter.compile_circuit(source)


class PickleFormat:
    def decode_spec(self, data: bytes) -> JobSpec:
        spec: JobSpec = pickle.loads(data)
        return spec

    def encode_result(self, result: JobResult) -> bytes:
        return pickle.dumps(result)


class ScriptedHandle(RunHandle):
    def __init__(self, job_id: str, remote_id: str | None) -> None:
        super().__init__(job_id, remote_id)
        self.done: asyncio.Future[ExecutionOutcome] = asyncio.get_running_loop().create_future()


@dataclass
class ScriptedRunner(Runner):
    """Jobs run until `succeed`/`fail` is called for them; REMOTE ones survive a "restart"
    (a new runner built with the same `remote` dict)."""

    slots: int = 1
    model: ExecutionModel = ExecutionModel.LOCAL
    # The "provider": remote id -> job id, kept across gateway restarts by the test.
    remote: dict[str, str] = field(default_factory=dict)
    submitted: list[str] = field(default_factory=list)
    reattached: list[str] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)
    handles: dict[str, ScriptedHandle] = field(default_factory=dict)
    started: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def capacity(self) -> int:
        return self.slots

    async def submit(self, prepared: PreparedJob, job: Job) -> RunHandle:
        self.submitted.append(job.id)
        remote_id = None
        if self.model is ExecutionModel.REMOTE:
            remote_id = f"r-{job.id}"
            self.remote[remote_id] = job.id
        handle = ScriptedHandle(job.id, remote_id)
        self.handles[job.id] = handle
        self.started.set()
        return handle

    async def wait(self, handle: RunHandle) -> ExecutionOutcome:
        assert isinstance(handle, ScriptedHandle)
        return await asyncio.shield(handle.done)

    async def cancel(self, handle: RunHandle) -> None:
        assert isinstance(handle, ScriptedHandle)
        self.cancelled.append(handle.job_id)
        if not handle.done.done():
            handle.done.set_exception(
                ExecutionError("CANCELLED", "cancelled", kind=FailureKind.CANCELLED)
            )

    async def reattach(self, job: Job, remote_id: str | None) -> RunHandle | None:
        if self.model is ExecutionModel.LOCAL:
            return None
        found = remote_id if remote_id in self.remote else None
        if found is None:
            found = next((r for r, j in self.remote.items() if j == job.id), None)
        if found is None:
            return None
        self.reattached.append(job.id)
        handle = ScriptedHandle(job.id, found)
        self.handles[job.id] = handle
        self.started.set()
        return handle

    async def probe(self, prepared: PreparedJob, timeout: float) -> None:
        return None

    def succeed(self, job_id: str) -> None:
        self.handles[job_id].done.set_result(ExecutionOutcome(JobResult(pubs=()), {}))

    def fail(self, job_id: str, kind: FailureKind, reason: str = "EXECUTION_FAILED") -> None:
        self.handles[job_id].done.set_exception(ExecutionError(reason, "scripted", kind=kind))


class ThrottledOnce(ScriptedRunner):
    """A provider that throttles the first create (HTTP 429, nothing made), then takes it."""

    def __init__(self) -> None:
        super().__init__(slots=1, model=ExecutionModel.REMOTE)
        self.throttled = 0

    async def submit(self, prepared: PreparedJob, job: Job) -> RunHandle:
        if not self.throttled:
            self.throttled += 1
            raise ExecutionError("PROVIDER_ERROR", "429", kind=FailureKind.THROTTLED)
        return await super().submit(prepared, job)


class Recorder:
    """A lifecycle hook that keeps every transition."""

    def __init__(self) -> None:
        self.transitions: list[Transition] = []

    def on_transition(self, transition: Transition) -> None:
        self.transitions.append(transition)

    def states(self, job_id: str) -> list[str]:
        return [t.job.state.value for t in self.transitions if t.job.id == job_id]


def context(name: str, max_queued_jobs: int = 100) -> AdapterContext:
    return AdapterContext(
        name=name,
        limits=BackendLimits(
            max_shots=1000,
            memory_budget_bytes=1 << 30,
            max_queued_jobs=max_queued_jobs,
            max_result_bytes=1 << 20,
        ),
        default_shots=10,
        circuit_limits=CircuitLimits(),
    )


def spec(backend: str, text: str = "x", **options: Any) -> JobSpec:
    source = CircuitSource(CircuitLanguage.QASM3, text)
    return JobSpec(
        backend=backend,
        pubs=(SamplerPub(source, Bindings(), shots=10),),
        options=JobOptions(**options),
    )


@dataclass
class Core:
    manager: JobManager
    store: SqliteStore
    clock: Clock
    runners: Mapping[str, ScriptedRunner]
    recorder: Recorder
    backends: Mapping[str, BackendRuntime]

    async def submit(self, tenant: str, job_spec: JobSpec, request_id: str = "") -> Job:
        # Jobs are ordered by create time; a frozen clock would leave only their random ids.
        self.clock.advance(0.001)
        outcome = await self.manager.submit(
            tenant, request_id, job_spec, pickle.dumps(job_spec), request_id.encode() or b"d"
        )
        return outcome.job

    async def settle(self) -> None:
        """Lets every ready task run until nothing is left to do (bounded)."""
        for _ in range(50):
            await asyncio.sleep(0)

    async def until(self, tenant: str, job_id: str, state: str, timeout: float = 5.0) -> Job:
        """The job once it is in `state` (followed through WatchJob's own event stream)."""
        async with asyncio.timeout(timeout):
            async for event in self.manager.watch(tenant, job_id, heartbeat_s=timeout):
                if event.job.state.value == state:
                    return event.job
        raise AssertionError(f"job {job_id} ended before reaching {state}")

    async def heard(self, job_id: str, state: str, timeout: float = 5.0) -> None:
        """Waits (bounded) until this core's lifecycle hooks have heard the job reach `state`.
        `until` may return before they have: WatchJob's first event is read from the store on
        a reader thread, which can see a commit before the writer thread's answer reaches the
        loop, and only that answer publishes the change (to hooks, then to watchers)."""
        async with asyncio.timeout(timeout):
            while state not in self.recorder.states(job_id):
                await asyncio.sleep(0.001)


def make_queue(
    kind: QueueKind,
    store: SqliteStore,
    name: str,
    owner: str,
    clock: Clock,
    queue_s: float,
    lease_s: float = 30.0,
) -> JobQueue:
    if kind == "store":
        return ClaimQueue(store, name, owner, queue_s, lease_s, clock)
    return MemoryQueue(name, queue_s, lease_s, clock)


async def build_core(
    store: SqliteStore,
    kind: QueueKind,
    runners: Mapping[str, ScriptedRunner],
    *,
    clock: Clock | None = None,
    owner: str = "holder-1",
    breaker: BreakerPolicy | None = None,
    max_queue_time_s: float = 3600.0,
    max_run_time_s: float = 3600.0,
    max_loop_run_time_s: float = 60.0,
    max_queued_jobs: int = 100,
    lease_s: float = 30.0,
    schedule: bool = True,
    policies: PolicyBook | None = None,
    hooks: Sequence[LifecycleHook] = (),
) -> Core:
    clock = clock or Clock()
    backends = {
        name: BackendRuntime(
            name=name,
            adapter=(adapter := EchoAdapter(context(name, max_queued_jobs))),
            info=adapter.info(),
            runner=runner,
            breaker=CircuitBreaker(breaker or BreakerPolicy(), clock=lambda: clock.now.timestamp()),
            settings=BackendSettings(
                max_run_time_s=max_run_time_s,
                max_loop_run_time_s=max_loop_run_time_s,
                max_queue_time_s=max_queue_time_s,
                health_interval_s=60,
                probe_timeout_s=5,
                lease_s=lease_s,
                remote_retry_s=0.01,
            ),
            queue=make_queue(kind, store, name, owner, clock, max_queue_time_s, lease_s),
        )
        for name, runner in runners.items()
    }
    recorder = Recorder()
    manager = JobManager(
        store,
        backends,
        DirectCompiler(),
        PickleFormat(),
        prepare_threads=1,
        recover_at_start=kind == "memory",
        # `hooks` after the recorder: they hear recovery at start too.
        hooks=Hooks([recorder, *hooks]),
        clock=clock,
        monotonic=clock.monotonic,
        policies=policies,
    )
    await manager.start(schedule=schedule)
    return Core(manager, store, clock, runners, recorder, backends)


class FailFirst:
    """An async store method whose first `left` calls raise a store error (SQLite busy), the
    rest running the real one: a transient write failure, injected."""

    def __init__(self, real: Callable[..., Awaitable[Any]], left: int) -> None:
        self.real = real
        self.left = left

    async def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.left:
            self.left -= 1
            raise sqlite3.OperationalError("database is locked")
        return await self.real(*args, **kwargs)


class HeldCall:
    """Wraps a store (or runner) method: `entered` is set once a call is inside it, which then
    holds until `go` is set (a slow commit: a busy writer, an fsync); `done` once the wrapped
    call has returned."""

    def __init__(self, real: Callable[..., Awaitable[Any]]) -> None:
        self.real = real
        self.entered = asyncio.Event()
        self.go = asyncio.Event()
        self.done = asyncio.Event()

    async def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.entered.set()
        await self.go.wait()
        try:
            return await self.real(*args, **kwargs)
        finally:
            self.done.set()


async def caller_leaves_inside(call: Awaitable[Any], held: HeldCall) -> None:
    """Starts `call` and cancels it (a client's deadline, a reset connection) once it is inside
    the held method, then lets that method go on."""
    task = asyncio.ensure_future(call)
    await held.entered.wait()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    held.go.set()
