"""The compiler's pure parts: refusals renamed to the PUB's field, the byte-bounded cache."""

from __future__ import annotations

import asyncio
import traceback
from dataclasses import dataclass
from types import SimpleNamespace

import pytest

from gateway.backends.base import CIRCUIT_FIELD, CircuitLimits, TargetUnavailable
from gateway.domain.circuits import (
    Bindings,
    CircuitLanguage,
    CircuitSource,
    SamplerPub,
    circuit_field,
)
from gateway.domain.errors import (
    ExecutionError,
    FieldViolation,
    Internal,
    InvalidArgument,
    Unavailable,
)
from gateway.runtime.compiler import CompileLimits, Compiler, _Cache, relocated
from gateway.runtime.worker import WorkerReplyRefused


def test_a_cached_refusal_names_the_field_of_the_pub_that_sent_it() -> None:
    refusal = InvalidArgument(
        "UNKNOWN_GATE",
        "gate 'foo' is not defined",
        metadata={"gate": "foo"},
        field_violations=[
            FieldViolation(CIRCUIT_FIELD, "no such gate"),
            FieldViolation(CIRCUIT_FIELD + ".line", "here"),
            FieldViolation("elsewhere", "kept"),
        ],
    )
    pub = SamplerPub(CircuitSource(CircuitLanguage.QASM2, "x"), Bindings())
    field = circuit_field(3, pub)
    assert field == "spec.pubs[3].sampler.circuit.qasm2"
    moved = relocated(refusal, field)
    assert [v.field for v in moved.field_violations] == [field, field + ".line", "elsewhere"]
    assert (moved.reason, moved.message, moved.metadata) == (
        refusal.reason,
        refusal.message,
        refusal.metadata,
    )
    # The cached original is untouched, ready for the next PUB that sends the same text.
    assert refusal.field_violations[0].field == CIRCUIT_FIELD


@dataclass
class _Weighted:
    nbytes: int


def test_the_cache_keeps_the_most_recent_within_its_bytes() -> None:
    cache = _Cache(max_bytes=100_000)
    # A tenant each, so that only the cache's own bound applies.
    cache.put("a", _Weighted(20_000), "t1")
    cache.put("b", _Weighted(20_000), "t2")
    cache.put("c", _Weighted(20_000), "t3")
    assert cache.get("a") is not None  # now the most recent
    cache.put("d", _Weighted(25_000), "t4")
    cache.put("e", _Weighted(25_000), "t5")  # 110,000 bytes: the least recent ("b") goes
    assert cache.get("b") is None
    assert all(cache.get(k) is not None for k in "acde")
    # Larger than a quarter of the cache: never cached, nothing evicted for it.
    cache.put("huge", _Weighted(30_000), "t6")
    assert cache.get("huge") is None and len(cache) == 4
    # Refusals (no nbytes) weigh a small fixed amount.
    cache.put("refused", InvalidArgument("X", "y"), "t7")
    assert isinstance(cache.get("refused"), InvalidArgument) and len(cache) == 5


def test_one_tenant_fills_at_most_half_the_cache() -> None:
    # One tenant compiling many distinct circuits flushed every other tenant's: their next
    # calls all compiled again.
    cache = _Cache(max_bytes=100_000)
    cache.put("vqe", _Weighted(20_000), "victim")
    for i in range(50):
        cache.put(f"flood{i}", _Weighted(10_000), "flooder")
    assert cache.get("vqe") is not None
    flooded = [i for i in range(50) if cache.get(f"flood{i}") is not None]
    assert flooded == list(range(45, 50))  # its 5 most recent: 50,000 bytes, half the cache
    # Its own oldest go first, even when the victim's entry is less recent.
    assert cache.get("flood45") is not None
    cache.put("flood50", _Weighted(10_000), "flooder")
    assert cache.get("vqe") is not None and cache.get("flood46") is None


class _Worker:
    """A compile worker whose adapter raises (an SDK bug, not a refusal)."""

    def __init__(self) -> None:
        self.compiles = 0
        self.killed = False
        self.exit_signal = None

    async def compile(self, backend: str, source: CircuitSource, cpu_seconds: float) -> object:
        self.compiles += 1
        raise ExecutionError("COMPILER_FAILED", "TranspilerError: boom")

    def kill(self) -> None:
        self.killed = True


class _Pool:
    def __init__(self, worker: _Worker) -> None:
        self.worker = worker
        self.released: list[bool] = []
        self.limits = SimpleNamespace(max_instances=1)

    async def acquire(self, timeout: float) -> _Worker:
        return self.worker

    async def release(self, worker: _Worker, *, broken: bool) -> None:
        self.released.append(broken)

    async def maintain(self) -> None:
        pass


class _Adapter:
    context = SimpleNamespace(circuit_limits=CircuitLimits())
    compiled_type = object

    def circuit_key(self, source: CircuitSource) -> str:
        return source.text


def test_a_compile_that_fails_inside_a_healthy_worker_keeps_it_and_is_cached() -> None:
    # The worker answered: killing it made every tenant wait for a replacement's start-up
    # (seconds of SDK imports), and an 80-byte request could do that again and again.
    worker = _Worker()
    pool = _Pool(worker)
    compiler = Compiler(pool, CompileLimits())  # type: ignore[arg-type]
    source = CircuitSource(CircuitLanguage.QASM3, "OPENQASM 3.0; qubit q; delay[10ns] q;")

    errors: list[Internal] = []

    async def repeatedly() -> None:
        for _ in range(5):
            with pytest.raises(Internal) as failed:
                await compiler.compile("acme", "aer", _Adapter(), source, "spec.pubs[0]")  # type: ignore[arg-type]
            assert failed.value.reason == "COMPILER_FAILED"
            errors.append(failed.value)

    asyncio.run(repeatedly())
    assert worker.compiles == 1 and not worker.killed and pool.released == [False]
    # Each caller gets an error of its own: the cached one raised again grew its traceback
    # by every caller's frames (their requests kept alive), without bound.
    assert len({id(e) for e in errors}) == len(errors)
    assert len(traceback.extract_tb(errors[-1].__traceback__)) == len(
        traceback.extract_tb(errors[1].__traceback__)
    )


class _UnreachableWorker(_Worker):
    """A compile worker whose backend's provider cannot describe the device now."""

    async def compile(self, backend: str, source: CircuitSource, cpu_seconds: float) -> object:
        self.compiles += 1
        raise TargetUnavailable("the device could not be described (HTTP 503)")


def _compile_twice(
    pool: _Pool, backend: str, text: str, error: type[Exception]
) -> list[pytest.ExceptionInfo[Exception]]:
    """Asks a compiler on `pool` for the same circuit twice; each call raises `error`."""
    compiler = Compiler(pool, CompileLimits())  # type: ignore[arg-type]
    source = CircuitSource(CircuitLanguage.QASM3, text)
    raised: list[pytest.ExceptionInfo[Exception]] = []

    async def twice() -> None:
        for _ in range(2):
            with pytest.raises(error) as failed:
                await compiler.compile("acme", backend, _Adapter(), source, "spec.pubs[0]")  # type: ignore[arg-type]
            raised.append(failed)

    asyncio.run(twice())
    return raised


def test_a_target_the_provider_cannot_give_is_unavailable_and_never_cached() -> None:
    # The provider's outage is not the circuit's fault: once it answers, the circuit compiles.
    worker = _UnreachableWorker()
    pool = _Pool(worker)
    for failed in _compile_twice(pool, "ibm", "OPENQASM 3.0; qubit q; h q;", Unavailable):
        assert failed.value.reason == "BACKEND_UNAVAILABLE"
        assert "HTTP 503" in failed.value.message and failed.value.retry_after
        assert failed.value.metadata == {"backend": "backends/ibm", "targetFetched": "false"}
    assert worker.compiles == 2 and not worker.killed and pool.released == [False, False]


class _GatedWorker(_Worker):
    """A compile worker that answers when the test opens its gate."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.started = asyncio.Event()

    async def compile(self, backend: str, source: CircuitSource, cpu_seconds: float) -> object:
        self.compiles += 1
        self.started.set()
        await self.gate.wait()
        return _Weighted(100)


SLOW = CircuitSource(CircuitLanguage.QASM3, "OPENQASM 3.0; qubit q; h q;")


def _compile(compiler: Compiler, tenant: str) -> asyncio.Task[object]:
    return asyncio.ensure_future(
        compiler.compile(tenant, "aer", _Adapter(), SLOW, "spec.pubs[0]")  # type: ignore[arg-type]
    )


def test_callers_of_a_circuit_being_compiled_share_that_compile() -> None:
    worker = _GatedWorker()
    pool = _Pool(worker)
    compiler = Compiler(pool, CompileLimits())  # type: ignore[arg-type]

    async def main() -> None:
        first, second = _compile(compiler, "acme"), _compile(compiler, "acme")
        await worker.started.wait()
        # The caller that started it goes away (its deadline): the other still waits for it.
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        third = _compile(compiler, "acme")
        worker.gate.set()
        assert await second == await third == _Weighted(100)
        assert await _compile(compiler, "acme") == _Weighted(100)  # cached

    asyncio.run(main())
    assert worker.compiles == 1 and not worker.killed and pool.released == [False]


def test_another_tenants_circuit_is_compiled_again_not_answered_from_the_cache() -> None:
    # A shared cache answered a hit in microseconds and a miss in milliseconds: any tenant
    # could tell whether another had sent a given circuit, by timing one request.
    worker = _GatedWorker()
    worker.gate.set()
    compiler = Compiler(_Pool(worker), CompileLimits())  # type: ignore[arg-type]

    async def main() -> None:
        assert await _compile(compiler, "acme") == _Weighted(100)
        assert await _compile(compiler, "acme") == _Weighted(100)  # acme's own: cached
        assert worker.compiles == 1
        assert await _compile(compiler, "globex") == _Weighted(100)
        assert worker.compiles == 2

    asyncio.run(main())


def test_a_compile_whose_callers_all_go_runs_to_its_end_and_is_cached() -> None:
    # Killing its worker cost every tenant a replacement's start-up (seconds of SDK imports)
    # for each short-deadline request: a cancelled request must cost what a waited one does.
    worker = _GatedWorker()
    pool = _Pool(worker)
    compiler = Compiler(pool, CompileLimits())  # type: ignore[arg-type]

    async def main() -> None:
        callers = [_compile(compiler, "acme"), _compile(compiler, "acme")]
        await worker.started.wait()
        for caller in callers:
            caller.cancel()
        await asyncio.gather(*callers, return_exceptions=True)
        assert not worker.killed
        joined = _compile(compiler, "acme")  # joins the compile still running
        worker.gate.set()
        assert await joined == _Weighted(100)
        assert await _compile(compiler, "acme") == _Weighted(100)  # cached

    asyncio.run(main())
    assert worker.compiles == 1 and not worker.killed and pool.released == [False]


def test_an_abandoned_compile_lands_in_the_cache_with_nobody_waiting() -> None:
    worker = _GatedWorker()
    compiler = Compiler(_Pool(worker), CompileLimits())  # type: ignore[arg-type]

    async def main() -> None:
        caller = _compile(compiler, "acme")
        await worker.started.wait()
        caller.cancel()
        await asyncio.gather(caller, return_exceptions=True)
        worker.gate.set()
        while compiler._inflight:  # the compile ends a few loop turns later
            await asyncio.sleep(0)
        assert await _compile(compiler, "acme") == _Weighted(100)

    asyncio.run(main())
    assert worker.compiles == 1 and not worker.killed


OTHER = CircuitSource(CircuitLanguage.QASM3, "OPENQASM 3.0; qubit q; x q;")


def test_a_compile_still_waiting_for_its_fair_share_is_dropped_when_its_callers_go() -> None:
    worker = _GatedWorker()
    pool = _Pool(worker)  # one worker: one fair-share slot
    compiler = Compiler(pool, CompileLimits())  # type: ignore[arg-type]

    async def main() -> None:
        first = _compile(compiler, "acme")
        await worker.started.wait()
        waiting = asyncio.ensure_future(
            compiler.compile("globex", "aer", _Adapter(), OTHER, "spec.pubs[0]")  # type: ignore[arg-type]
        )
        while ("globex", OTHER.text) not in compiler._inflight:
            await asyncio.sleep(0)
        waiting.cancel()
        await asyncio.gather(waiting, return_exceptions=True)
        assert ("globex", OTHER.text) not in compiler._inflight
        worker.gate.set()
        assert await first == _Weighted(100)

    asyncio.run(main())
    assert worker.compiles == 1 and pool.released == [False]


def test_a_worker_killed_from_outside_is_not_cached_as_the_circuits_fault() -> None:
    import signal

    from gateway.runtime.worker import WorkerCrashed

    class _Killed(_Worker):
        async def compile(self, backend: str, source: CircuitSource, cpu_seconds: float) -> object:
            self.compiles += 1
            self.exit_signal = signal.SIGKILL if self.compiles == 1 else signal.SIGABRT  # type: ignore[assignment]
            raise WorkerCrashed("gone")

    worker = _Killed()
    compiler = Compiler(_Pool(worker), CompileLimits())  # type: ignore[arg-type]

    async def three() -> None:
        for _ in range(3):
            with pytest.raises(InvalidArgument) as refused:
                await compiler.compile("acme", "aer", _Adapter(), SLOW, "spec.pubs[0]")  # type: ignore[arg-type]
            assert refused.value.reason == "CIRCUIT_TOO_COMPLEX"

    asyncio.run(three())
    # The host's SIGKILL (OOM killer, operator) is tried again; an abort under the worker's own
    # memory limit is the circuit's, and cached.
    assert worker.compiles == 2


class _CountingPool(_Pool):
    def __init__(self, worker: _Worker) -> None:
        super().__init__(worker)
        self.maintained = 0

    async def maintain(self) -> None:
        self.maintained += 1


def test_closing_stops_a_compile_nobody_waits_for() -> None:
    worker = _GatedWorker()
    pool = _CountingPool(worker)
    compiler = Compiler(pool, CompileLimits())  # type: ignore[arg-type]

    async def main() -> None:
        caller = _compile(compiler, "acme")
        await worker.started.wait()
        caller.cancel()
        await asyncio.gather(caller, return_exceptions=True)
        await compiler.close()
        assert not compiler._inflight

    asyncio.run(main())
    assert worker.killed and pool.released == [True]
    assert pool.maintained == 0  # its killed worker is not replaced while closing


COMMON = CircuitSource(CircuitLanguage.QASM3, "OPENQASM 3.0; qubit q; z q;")


class _RecordingWorker(_GatedWorker):
    def __init__(self) -> None:
        super().__init__()
        self.order: list[str] = []

    async def compile(self, backend: str, source: CircuitSource, cpu_seconds: float) -> object:
        self.order.append(source.text)
        return await super().compile(backend, source, cpu_seconds)


def test_a_circuit_two_tenants_ask_for_is_compiled_in_each_ones_turn() -> None:
    # Each tenant's compile waits for its own fair-share slot: a second tenant asking for a
    # circuit the first has in its backlog gets the next free slot, not the first's turn.
    worker = _RecordingWorker()
    compiler = Compiler(_Pool(worker), CompileLimits())  # type: ignore[arg-type]

    def ask(tenant: str, source: CircuitSource) -> asyncio.Task[object]:
        return asyncio.ensure_future(
            compiler.compile(tenant, "aer", _Adapter(), source, "spec.pubs[0]")  # type: ignore[arg-type]
        )

    async def main() -> None:
        running = ask("acme", SLOW)  # holds the one slot
        await worker.started.wait()
        backlog = [ask("acme", OTHER), ask("acme", COMMON)]
        while len(compiler._inflight) < 3:
            await asyncio.sleep(0)
        globex = ask("globex", COMMON)
        for _ in range(20):  # globex's own compile, waiting for its own slot
            await asyncio.sleep(0)
        assert len(compiler._inflight) == 4
        worker.gate.set()
        assert await asyncio.gather(running, globex, *backlog) == [_Weighted(100)] * 4

    asyncio.run(main())
    # globex's compile got the next slot (it held none and was served least recently).
    assert worker.order == [SLOW.text, COMMON.text, OTHER.text, COMMON.text]


class _CompromisedWorker(_Worker):
    """A compile worker whose reply was refused (not data a worker sends)."""

    async def compile(self, backend: str, source: CircuitSource, cpu_seconds: float) -> object:
        self.compiles += 1
        raise WorkerReplyRefused(
            "the worker sent a reply the gateway refused", {"reply": "refused"}
        )


def test_a_circuit_whose_compile_sent_a_refused_reply_is_refused_again_from_the_cache() -> None:
    # Code may have run in the worker: it is killed and replaced, and the same circuit does not
    # get another worker to try again.
    worker = _CompromisedWorker()
    pool = _Pool(worker)
    for failed in _compile_twice(pool, "aer", "OPENQASM 3.0; qubit q;", Internal):
        assert failed.value.reason == "COMPILER_CRASHED"
    assert worker.compiles == 1 and worker.killed and pool.released == [True]
