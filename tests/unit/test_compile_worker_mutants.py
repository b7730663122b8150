"""Compile worker machinery: cases a hand mutation review found no test for.

Each test pins one behaviour the other compiler, fair-share and cache tests left open: a
mutant of the code (an off-by-one limit, a missing separator, a skipped eviction, a wrong
tenant) passed all of them. In process and deterministic: fake workers and pools gated by
events, no sleeps and no real processes."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from types import SimpleNamespace

import pytest
from qgateway.v1 import job_pb2

from gateway.api.spec_cache import SpecCache
from gateway.backends.base import CIRCUIT_FIELD, CircuitLimits
from gateway.backends.lru import LRU
from gateway.config import MIB, CompilerConfig
from gateway.domain.circuits import CircuitLanguage, CircuitSource
from gateway.domain.errors import (
    FieldViolation,
    Internal,
    InvalidArgument,
    QuotaViolation,
    ResourceExhausted,
)
from gateway.domain.jobs import JobSpec
from gateway.runtime.compiler import CompileLimits, Compiler, _Cache, relocated
from gateway.runtime.fair_share import FairShare
from gateway.runtime.pool import PoolLimits
from tests.compile_fakes import OneWorkerPool, TextKeyedAdapter

# ------------------------------------------------------------------------- fakes


@dataclass(frozen=True)
class _Compiled:
    """A compiled circuit: which text it came from, and its weight in the cache."""

    text: str
    nbytes: int = 100


class _Worker:
    """A compile worker that compiles whatever it is given, once its gate is open."""

    def __init__(self, nbytes: int = 100) -> None:
        self.nbytes = nbytes
        self.compiled: list[str] = []
        self.started = asyncio.Event()
        self.gate = asyncio.Event()
        self.gate.set()
        self.killed = False
        self.exit_signal = None

    async def compile(self, backend: str, source: CircuitSource, cpu_seconds: float) -> object:
        self.compiled.append(source.text)
        self.started.set()
        await self.gate.wait()
        return _Compiled(source.text, self.nbytes)

    def kill(self) -> None:
        self.killed = True


def _source(text: str) -> CircuitSource:
    return CircuitSource(CircuitLanguage.QASM3, text)


def _compiler(pool: OneWorkerPool, limits: CompileLimits | None = None) -> Compiler:
    return Compiler(pool, limits or CompileLimits())  # type: ignore[arg-type]


def _ask(compiler: Compiler, tenant: str, text: str) -> asyncio.Task[object]:
    return asyncio.ensure_future(
        compiler.compile(tenant, "aer", TextKeyedAdapter(), _source(text), "spec.pubs[0]")  # type: ignore[arg-type]
    )


@dataclass
class _Weighted:
    nbytes: int


# ------------------------------------------------------------------------- the compile cache


def test_refusals_weigh_a_fixed_amount_so_the_cache_holds_a_bounded_number() -> None:
    # Refusals carry no nbytes: were they weightless, a client sending endless distinct bad
    # circuits grew the cache without bound.
    cache = _Cache(max_bytes=8 * 4096)
    for i in range(20):  # a tenant each: only the cache's own bound applies
        cache.put(f"bad{i}", InvalidArgument("UNKNOWN_GATE", f"gate g{i}"), f"t{i}")
    assert len(cache) == 8
    assert [i for i in range(20) if cache.get(f"bad{i}") is not None] == list(range(12, 20))


def test_a_tenant_one_byte_past_half_the_cache_loses_its_oldest_entry() -> None:
    cache = _Cache(max_bytes=100_000)
    cache.put("a", _Weighted(25_000), "flooder")
    cache.put("b", _Weighted(25_000), "flooder")  # exactly half: both kept
    assert cache.get("a") is not None and cache.get("b") is not None
    cache.put("c", _Weighted(1), "flooder")  # 50,001 bytes: its least recent ("a") goes
    assert cache.get("a") is None
    assert cache.get("b") is not None and cache.get("c") is not None


def test_putting_a_key_again_replaces_it_without_counting_it_twice() -> None:
    cache = _Cache(max_bytes=100_000)
    for _ in range(3):
        cache.put("a", _Weighted(20_000), "t1")
    assert len(cache) == 1
    # 20,000 + 3 x 25,000 = 95,000 bytes: everything fits, nothing is evicted.
    for key in ("b", "c", "d"):
        cache.put(key, _Weighted(25_000), f"owner-{key}")
    assert all(cache.get(k) is not None for k in "abcd") and len(cache) == 4


def test_tenant_and_circuit_key_cannot_run_together_into_another_tenants_entry() -> None:
    # Tenant "ab" asking for "c" and tenant "a" asking for "bc" are different cache entries:
    # glued together without a separator they were one, and "a" got "ab"'s compiled circuit.
    worker = _Worker()
    compiler = _compiler(OneWorkerPool(worker))

    async def main() -> None:
        first = await _ask(compiler, "ab", "c")
        second = await _ask(compiler, "a", "bc")
        assert first == _Compiled("c") and second == _Compiled("bc")

    asyncio.run(main())
    assert worker.compiled == ["c", "bc"]


def test_a_flooding_tenant_cannot_push_another_tenants_compiled_circuit_out() -> None:
    # The compiler charges each cached outcome to the tenant that asked: charged to anyone
    # else, the per-tenant cap stopped protecting the victim's circuit.
    worker = _Worker(nbytes=10_000)
    compiler = _compiler(OneWorkerPool(worker), CompileLimits(cache_bytes=40_000))

    async def main() -> None:
        assert await _ask(compiler, "victim", "vqe") == _Compiled("vqe", 10_000)
        for i in range(6):
            await _ask(compiler, "flooder", f"flood{i}")
        assert await _ask(compiler, "victim", "vqe") == _Compiled("vqe", 10_000)

    asyncio.run(main())
    assert worker.compiled.count("vqe") == 1  # the second ask was a cache hit
    assert len(worker.compiled) == 7


def test_relocation_renames_only_the_circuit_field_and_its_subfields() -> None:
    refusal = InvalidArgument(
        "X",
        "y",
        field_violations=[
            FieldViolation(CIRCUIT_FIELD, "a"),
            FieldViolation(CIRCUIT_FIELD + ".line", "b"),
            FieldViolation(CIRCUIT_FIELD + "s_total", "c"),  # another field sharing a prefix
        ],
    )
    moved = relocated(refusal, "spec.pubs[1].sampler.circuit.qasm3")
    assert [v.field for v in moved.field_violations] == [
        "spec.pubs[1].sampler.circuit.qasm3",
        "spec.pubs[1].sampler.circuit.qasm3.line",
        CIRCUIT_FIELD + "s_total",
    ]


# ------------------------------------------------------------------------- in-flight compiles


def test_a_caller_arriving_as_a_dropped_compile_winds_down_gets_a_compile_of_its_own() -> None:
    # globex's compile waits for the one fair-share slot; its only caller goes. A caller of
    # globex asking for the same circuit in that same loop turn must neither join the compile
    # being cancelled (it would read CancelledError though nobody cancelled it) nor lose its own
    # compile from the in-flight table when the old one's end is processed (the next caller
    # would then start a second compile of the same circuit).
    worker = _Worker()
    worker.gate.clear()
    compiler = _compiler(OneWorkerPool(worker))
    place = ("globex", "other")

    async def main() -> None:
        running = _ask(compiler, "acme", "slow")  # holds the one slot
        await worker.started.wait()
        leaving = _ask(compiler, "globex", "other")
        while place not in compiler._inflight:
            await asyncio.sleep(0)
        dropped = compiler._inflight[place].task
        leaving.cancel()
        arriving = _ask(compiler, "globex", "other")  # its first step runs after leaving's
        await asyncio.gather(leaving, dropped, return_exceptions=True)
        assert dropped.cancelled()
        assert compiler._inflight[place].task is not dropped
        later = _ask(compiler, "globex", "other")
        worker.gate.set()
        results = await asyncio.gather(running, arriving, later, return_exceptions=True)
        assert list(results) == [_Compiled("slow"), _Compiled("other"), _Compiled("other")]

    asyncio.run(main())
    assert worker.compiled == ["slow", "other"]


class _StuckPool(OneWorkerPool):
    """A pool whose workers are all busy until the test lets acquire time out."""

    def __init__(self, worker: _Worker) -> None:
        super().__init__(worker)
        self.acquiring = asyncio.Event()
        self.time_out = asyncio.Event()

    async def acquire(self, timeout: float) -> _Worker:
        self.acquiring.set()
        await self.time_out.wait()
        raise TimeoutError


def test_an_abandoned_compile_that_fails_is_logged_not_lost(
    caplog: pytest.LogCaptureFixture,
) -> None:
    pool = _StuckPool(_Worker())
    compiler = _compiler(pool, CompileLimits(acquire_timeout_s=4.0))

    async def main() -> None:
        caller = _ask(compiler, "acme", "c")
        await pool.acquiring.wait()  # it has its fair-share slot: it goes on without callers
        task = compiler._inflight[("acme", "c")].task
        caller.cancel()
        await asyncio.gather(caller, return_exceptions=True)
        pool.time_out.set()
        done = await asyncio.gather(task, return_exceptions=True)
        assert isinstance(done[0], ResourceExhausted)

    with caplog.at_level(logging.ERROR, logger="gateway.runtime.compiler"):
        asyncio.run(main())
    failed = [r for r in caplog.records if r.getMessage() == "an abandoned compile failed"]
    assert len(failed) == 1 and failed[0].exc_info is not None
    assert isinstance(failed[0].exc_info[1], ResourceExhausted)


def test_compilers_busy_names_the_exhausted_quota() -> None:
    pool = _StuckPool(_Worker())
    pool.time_out.set()
    compiler = _compiler(pool, CompileLimits(acquire_timeout_s=0.5))

    async def main() -> None:
        with pytest.raises(ResourceExhausted) as busy:
            await _ask(compiler, "acme", "c")
        assert busy.value.reason == "COMPILERS_BUSY"
        assert busy.value.metadata == {"acquireTimeoutS": "0.5"}
        assert list(busy.value.quota_violations) == [QuotaViolation("compile workers", "all busy")]

    asyncio.run(main())


# ------------------------------------------------------------------------- fair share


def test_a_fair_share_of_no_slots_is_refused() -> None:
    with pytest.raises(ValueError):
        FairShare(0)
    assert FairShare(1).capacity == 1


@pytest.mark.anyio
async def test_tenants_that_go_idle_leave_no_fair_share_history() -> None:
    # Service history is kept only for tenants holding or waiting: otherwise every tenant ever
    # seen stayed in the table for good.
    fair = FairShare(2)
    a, b = fair.slot("a"), fair.slot("b")
    await a.__aenter__()
    await b.__aenter__()

    async def hold(tenant: str, gate: asyncio.Event) -> None:
        async with fair.slot(tenant):
            await gate.wait()

    b_gate, c_gate = asyncio.Event(), asyncio.Event()
    b_again = asyncio.create_task(hold("b", b_gate))
    for _ in range(3):
        await asyncio.sleep(0)
    c = asyncio.create_task(hold("c", c_gate))
    for _ in range(3):
        await asyncio.sleep(0)
    assert fair.waiting == 2
    # b frees its slot while still waiting for another: c (never served) gets it.
    await b.__aexit__(None, None, None)
    assert fair.held("c") == 1 and fair.held("b") == 0 and fair.waiting == 1
    b_again.cancel()  # b leaves the queue, holding nothing
    await asyncio.gather(b_again, return_exceptions=True)
    c_gate.set()
    await c
    await a.__aexit__(None, None, None)
    assert fair.waiting == 0
    assert not fair._served and not fair._waiting and not +fair._held


# ------------------------------------------------------------------------- spec cache


def _spec_cache(max_entries: int, max_spec_bytes: int) -> tuple[SpecCache, list[bytes]]:
    """A SpecCache whose digest records each call (the spec bytes stand for the spec)."""
    computed: list[bytes] = []

    def digest(msg: job_pb2.JobSpec) -> bytes:
        computed.append(msg.backend.encode())
        return b"d:" + msg.backend.encode()

    def decode(msg: job_pb2.JobSpec) -> JobSpec:
        raise AssertionError("not decoded here")

    return SpecCache(digest, decode, max_entries, max_spec_bytes), computed


def _digest(cache: SpecCache, key: str) -> bytes:
    return cache.digest(key.encode(), job_pb2.JobSpec(backend=key))


def test_the_spec_cache_keeps_the_recently_used_and_drops_the_oldest() -> None:
    cache, computed = _spec_cache(max_entries=2, max_spec_bytes=100)
    for key in ("s1", "s2", "s1", "s3"):  # s1 is used again, so s2 is the least recent
        assert _digest(cache, key) == b"d:" + key.encode()
    assert computed == [b"s1", b"s2", b"s3"]
    for key in ("s1", "s3"):
        _digest(cache, key)
    assert computed == [b"s1", b"s2", b"s3"]  # both hits
    _digest(cache, "s2")
    assert computed[-1] == b"s2"


def test_the_spec_cache_admits_new_specs_when_full() -> None:
    cache, computed = _spec_cache(max_entries=2, max_spec_bytes=100)
    for key in ("s1", "s2", "s3", "s3", "s2"):
        _digest(cache, key)
    assert computed == [b"s1", b"s2", b"s3"]


def test_a_spec_of_exactly_the_size_bound_is_kept() -> None:
    cache, computed = _spec_cache(max_entries=8, max_spec_bytes=4)
    for _ in range(2):
        _digest(cache, "abcd")
        _digest(cache, "abcde")
    assert computed == [b"abcd", b"abcde", b"abcde"]


# ------------------------------------------------------------------------- worker LRU


def test_the_worker_lru_keeps_capacity_entries_most_recent_first() -> None:
    lru: LRU[str, int] = LRU(2)
    lru.put("a", 1)
    lru.put("b", 2)
    assert lru.get("a") == 1  # now the most recent
    lru.put("c", 3)
    assert "b" not in lru and lru.get("b") is None
    assert lru.get("a") == 1 and lru.get("c") == 3 and len(lru) == 2
    lru.put("a", 10)  # put again: updated and most recent
    lru.put("d", 4)
    assert "c" not in lru and lru.get("a") == 10 and lru.get("d") == 4 and len(lru) == 2


# ------------------------------------------------------------------------- configuration


def test_compiler_config_reaches_the_compile_and_pool_limits() -> None:
    config = CompilerConfig(
        workers=3,
        cpu_time_s=2.0,
        timeout_s=5.0,
        memory_headroom_mb=100,
        cache_mb=7,
        acquire_timeout_s=9.0,
        max_creations_per_s=0.25,
    )
    assert config.limits() == CompileLimits(
        timeout_s=5.0,
        cpu_time_s=2.0,
        memory_bytes=100 * MIB,
        cache_bytes=7 * MIB,
        acquire_timeout_s=9.0,
    )
    pool = config.pool_limits()
    assert isinstance(pool, PoolLimits)
    assert (pool.min_instances, pool.max_instances) == (3, 3)
    assert pool.acquire_timeout_s == 9.0
    assert pool.max_creations_per_s == 0.25  # respawns are rate-limited, not unbounded


def test_compiler_defaults_keep_wall_time_above_cpu_time_and_respawns_slow() -> None:
    # Wall time is the backstop for a stalled compile: were it shorter than the CPU limit, a
    # slow circuit was killed as wall-time (never cached) before its CPU refusal (cached).
    # A worker start costs seconds of CPU: the default allows at most one a second.
    config = CompilerConfig()
    assert config.cpu_time_s < config.timeout_s
    assert 0 < config.max_creations_per_s <= 1.0


# ------------------------------------------------------------------------- keys and replacements


class _FingerprintAdapter:
    """An adapter whose circuit key is the text and its compile settings (as the real ones)."""

    context = SimpleNamespace(circuit_limits=CircuitLimits())
    compiled_type = object

    def __init__(self, fingerprint: str) -> None:
        self.fingerprint = fingerprint

    def circuit_key(self, source: CircuitSource) -> str:
        return f"{source.language.value}:{source.text}:{self.fingerprint}"


class _BackendWorker(_Worker):
    async def compile(self, backend: str, source: CircuitSource, cpu_seconds: float) -> object:
        self.compiled.append(f"{backend}/{source.text}")
        return _Compiled(f"{backend}/{source.text}")


def test_the_cache_is_looked_up_by_the_adapters_circuit_key() -> None:
    # The key covers what compiling depends on: the same text for another backend's settings
    # is another circuit, and the same text for the same settings is a hit.
    worker = _BackendWorker()
    compiler = _compiler(OneWorkerPool(worker))
    aer, ibm = _FingerprintAdapter("aer-settings"), _FingerprintAdapter("ibm-settings")

    async def main() -> None:
        for _ in range(2):
            assert await compiler.compile("acme", "aer", aer, _source("h"), "f") == _Compiled(  # type: ignore[arg-type]
                "aer/h"
            )
        assert await compiler.compile("acme", "ibm", ibm, _source("h"), "f") == _Compiled(  # type: ignore[arg-type]
            "ibm/h"
        )

    asyncio.run(main())
    assert worker.compiled == ["aer/h", "ibm/h"]


class _CrashingWorker(_Worker):
    async def compile(self, backend: str, source: CircuitSource, cpu_seconds: float) -> object:
        from gateway.runtime.worker import WorkerCrashed

        self.compiled.append(source.text)
        raise WorkerCrashed("the worker process died")


class _SlowReplacingPool(OneWorkerPool):
    def __init__(self, worker: _Worker) -> None:
        super().__init__(worker)
        self.replaced = asyncio.Event()

    async def maintain(self) -> None:
        await self.replaced.wait()


def test_finished_worker_replacements_are_not_kept() -> None:
    # Each killed worker starts a background replacement; once done it is forgotten, or every
    # crash a client causes stayed in memory for the gateway's lifetime.
    worker = _CrashingWorker()
    pool = _SlowReplacingPool(worker)
    compiler = _compiler(pool)

    async def main() -> None:
        for text in ("a", "b", "c"):
            with pytest.raises(Internal, match="unexpectedly"):
                await _ask(compiler, "acme", text)
        replacing = list(compiler._background)
        assert len(replacing) == 3
        pool.replaced.set()
        # Their done callbacks were added first: they have run when gather returns.
        await asyncio.gather(*replacing)
        assert not compiler._background

    asyncio.run(main())
    assert worker.compiled == ["a", "b", "c"]
