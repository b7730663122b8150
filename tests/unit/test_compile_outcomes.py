"""How a compile worker's end maps to the caller's error, the cache and the worker's fate.

Each way a compile ends (wall-time kill, CPU-time kill, memory, a refusal, a crash nobody
explains, no free worker) decides three things: what the caller reads, whether the next caller
asking for the same circuit gets the cached outcome or a compile of its own, and whether the
worker is killed and replaced."""

from __future__ import annotations

import asyncio
import signal
from types import SimpleNamespace

import pytest

from gateway.backends.base import CircuitLimits
from gateway.domain.circuits import CircuitLanguage, CircuitSource
from gateway.domain.errors import Internal, InvalidArgument, ResourceExhausted
from gateway.runtime.compiler import CompileLimits, Compiler, _Cache
from gateway.runtime.worker import WorkerCrashed

SOURCE = CircuitSource(CircuitLanguage.QASM3, "OPENQASM 3.0; qubit q; h q;")


class _Worker:
    """A compile worker that ends each compile the way `outcome` says."""

    def __init__(self, outcome: str, exit_signal: int | None = None) -> None:
        self.outcome = outcome
        self.exit_signal = exit_signal
        self.compiles = 0
        self.cpu_seconds: list[float] = []
        self.killed = False

    async def compile(self, backend: str, source: CircuitSource, cpu_seconds: float) -> object:
        self.compiles += 1
        self.cpu_seconds.append(cpu_seconds)
        if self.outcome == "hang":  # only the gateway's wall-time limit ends it
            await asyncio.Event().wait()
        if self.outcome == "memory":
            raise MemoryError
        if self.outcome == "crash":
            raise WorkerCrashed("the worker process was killed by signal")
        if self.outcome == "invalid":
            raise InvalidArgument("UNKNOWN_GATE", "gate 'foo' is not defined")
        raise AssertionError(self.outcome)

    def kill(self) -> None:
        self.killed = True


class _Pool:
    def __init__(self, worker: _Worker | None) -> None:
        self.worker = worker
        self.released: list[bool] = []
        self.maintained = 0
        self.acquire_timeouts: list[float] = []
        self.limits = SimpleNamespace(max_instances=1)

    async def acquire(self, timeout: float) -> _Worker:
        self.acquire_timeouts.append(timeout)
        if self.worker is None:  # every worker busy for the whole timeout
            raise TimeoutError
        return self.worker

    async def release(self, worker: _Worker, *, broken: bool) -> None:
        self.released.append(broken)

    async def maintain(self) -> None:
        self.maintained += 1


class _Adapter:
    context = SimpleNamespace(circuit_limits=CircuitLimits())
    compiled_type = object

    def circuit_key(self, source: CircuitSource) -> str:
        return source.text


def _twice(pool: _Pool, limits: CompileLimits, error: type[Exception]) -> list[Exception]:
    """Asks for SOURCE twice, one after the other; each raises `error`. Background work (the
    replacement of a killed worker) has run before it returns."""
    compiler = Compiler(pool, limits)  # type: ignore[arg-type]
    raised: list[Exception] = []

    async def main() -> None:
        # A guard, not a synchronisation: a compile the wall-time limit fails to end hangs.
        async with asyncio.timeout(20):
            for _ in range(2):
                with pytest.raises(error) as failed:
                    await compiler.compile("acme", "aer", _Adapter(), SOURCE, "spec.pubs[0]")  # type: ignore[arg-type]
                raised.append(failed.value)
            await asyncio.gather(*compiler._background)

    asyncio.run(main())
    return raised


def test_a_compile_past_its_wall_time_is_killed_replaced_and_not_cached() -> None:
    # The wall-time limit is the gateway's own (a loaded machine may be what made it slow): the
    # worker is killed and replaced, and the circuit is tried again next time.
    worker = _Worker("hang")
    pool = _Pool(worker)
    limits = CompileLimits(timeout_s=0.05, cpu_time_s=600.0)
    for refused in _twice(pool, limits, InvalidArgument):
        assert isinstance(refused, InvalidArgument)
        assert refused.reason == "CIRCUIT_TOO_COMPLEX"
        assert refused.metadata == {"limit": "wall-time", "maximum": "0.05 s"}
        assert [v.field for v in refused.field_violations] == ["spec.pubs[0]"]
    assert worker.compiles == 2
    assert worker.killed and pool.released == [True, True] and pool.maintained == 2
    # The worker enforces the CPU-time limit; the wall-time limit is not passed for it.
    assert worker.cpu_seconds == [600.0, 600.0]


def test_a_compile_that_runs_out_of_memory_is_cached_and_its_worker_recycled() -> None:
    worker = _Worker("memory")
    pool = _Pool(worker)
    for refused in _twice(pool, CompileLimits(memory_bytes=512 << 20), InvalidArgument):
        assert isinstance(refused, InvalidArgument)
        assert refused.reason == "CIRCUIT_TOO_COMPLEX"
        assert refused.metadata == {"limit": "memory", "maximum": "512 MiB"}
    assert worker.compiles == 1  # the circuit's own doing: the second caller is answered cached
    assert worker.killed and pool.released == [True] and pool.maintained == 1


def test_a_worker_ended_at_its_cpu_time_limit_is_the_circuits_fault_and_cached() -> None:
    worker = _Worker("crash", exit_signal=signal.SIGXCPU)
    pool = _Pool(worker)
    for refused in _twice(pool, CompileLimits(cpu_time_s=2.5), InvalidArgument):
        assert isinstance(refused, InvalidArgument)
        assert refused.reason == "CIRCUIT_TOO_COMPLEX"
        assert refused.metadata == {"limit": "CPU-time", "maximum": "2.5 s"}
    assert worker.compiles == 1 and worker.cpu_seconds == [2.5]
    assert worker.killed and pool.released == [True] and pool.maintained == 1


@pytest.mark.parametrize("signum", [signal.SIGABRT, signal.SIGBUS])
def test_a_worker_ended_at_its_memory_limit_is_the_circuits_fault_and_cached(signum: int) -> None:
    # An allocation failure in native code aborts (or faults on a mapping it could not back).
    worker = _Worker("crash", exit_signal=signum)
    pool = _Pool(worker)
    for refused in _twice(pool, CompileLimits(), InvalidArgument):
        assert isinstance(refused, InvalidArgument)
        assert refused.metadata == {"limit": "memory", "maximum": "1024 MiB"}
    assert worker.compiles == 1 and pool.released == [True] and pool.maintained == 1


@pytest.mark.parametrize("signum", [None, signal.SIGSEGV])
def test_a_crash_nobody_explains_is_internal_and_tried_again(signum: int | None) -> None:
    worker = _Worker("crash", exit_signal=signum)
    pool = _Pool(worker)
    for failed in _twice(pool, CompileLimits(), Internal):
        assert isinstance(failed, Internal) and failed.reason == "COMPILER_CRASHED"
    assert worker.compiles == 2
    assert pool.released == [True, True] and pool.maintained == 2


def test_a_refused_circuit_is_refused_again_from_the_cache_by_the_same_worker() -> None:
    worker = _Worker("invalid")
    pool = _Pool(worker)
    for refused in _twice(pool, CompileLimits(), InvalidArgument):
        assert isinstance(refused, InvalidArgument) and refused.reason == "UNKNOWN_GATE"
    assert worker.compiles == 1
    assert not worker.killed and pool.released == [False] and pool.maintained == 0


def test_no_free_compile_worker_is_resource_exhausted_after_the_acquire_timeout() -> None:
    pool = _Pool(None)
    limits = CompileLimits(timeout_s=30.0, acquire_timeout_s=7.0)
    for busy in _twice(pool, limits, ResourceExhausted):
        assert isinstance(busy, ResourceExhausted) and busy.reason == "COMPILERS_BUSY"
        assert busy.metadata == {"acquireTimeoutS": "7"} and busy.retry_after
    # Nothing was compiled, so nothing cached: each caller waits for a worker of its own.
    assert pool.acquire_timeouts == [7.0, 7.0]
    assert pool.released == [] and pool.maintained == 0


class _Weighted:
    def __init__(self, nbytes: int) -> None:
        self.nbytes = nbytes


def test_a_cache_filled_to_exactly_its_bytes_keeps_every_entry() -> None:
    cache = _Cache(max_bytes=100_000)
    for tenant in "abcd":  # a tenant each: only the cache's own bound applies
        cache.put(tenant, _Weighted(25_000), tenant)
    assert all(cache.get(k) is not None for k in "abcd") and len(cache) == 4
    cache.put("e", _Weighted(1), "e")  # one byte over: the least recent goes
    assert cache.get("a") is None and len(cache) == 4
