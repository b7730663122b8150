"""Review of what a long-running gateway keeps per job, tenant, stream and connection: each
structure that grows with traffic must return to a bound once what it tracks is gone, however
many distinct keys a caller makes up. In-process, with fakes of the gateway's own ports."""

from __future__ import annotations

import asyncio
import gc
import weakref

import pytest

from gateway.backends.base import CIRCUIT_FIELD
from gateway.domain.circuits import CircuitLanguage, CircuitSource
from gateway.domain.errors import FieldViolation, InvalidArgument, ResourceExhausted
from gateway.runtime.compiler import CompileLimits, Compiler
from gateway.security.api_keys import LastUsedRecorder
from gateway.security.rate_limits import RateLimiter
from gateway.security.tenant_policy import RateLimit
from tests.compile_fakes import OneWorkerPool, TextKeyedAdapter


class _RefusingWorker:
    """A compile worker that refuses every circuit, raising as WorkerProcess.compile does (an
    InvalidArgument built from the worker's reply, in the gateway process)."""

    def __init__(self) -> None:
        self.compiles = 0
        self.exit_signal = None

    async def compile(self, backend: str, source: CircuitSource, cpu_seconds: float) -> object:
        self.compiles += 1
        raise InvalidArgument(
            "INVALID_QASM",
            "syntax error at the end",
            field_violations=[FieldViolation(CIRCUIT_FIELD, "syntax error")],
        )

    def kill(self) -> None:
        raise AssertionError("a worker that answered is kept")


def test_a_cached_refusal_does_not_keep_the_refused_circuit_alive() -> None:
    # The compile cache is bounded in bytes, and a refusal weighs 4 KiB in it (it has no
    # nbytes). But the refusal cached was the exception object as raised, its __traceback__
    # holding the frames of Compiler._compile and the worker's compile, and with them their
    # locals: the client's source (up to max_source_bytes, 1 MiB) and the reply. One tenant
    # sending distinct circuits that fail to parse at their last byte (cheap to compile) had
    # up to 32,768 of them kept (half of 256 MiB / 4 KiB): 32 GiB for a 128 MiB share.
    worker = _RefusingWorker()
    compiler = Compiler(OneWorkerPool(worker, broken_allowed=False), CompileLimits())  # type: ignore[arg-type]
    alive: list[weakref.ref[CircuitSource]] = []

    async def flood() -> None:
        for i in range(200):
            source = CircuitSource(CircuitLanguage.QASM3, "x" * 4096 + f"{i:016d}")
            alive.append(weakref.ref(source))
            with pytest.raises(InvalidArgument) as refused:
                await compiler.compile("mallory", "aer", TextKeyedAdapter(), source, "spec.pubs[0]")  # type: ignore[arg-type]
            assert refused.value.reason == "INVALID_QASM"
            del source, refused

    asyncio.run(flood())
    gc.collect()
    assert worker.compiles == 200  # each refusal cached, as the cache means to
    kept = sum(1 for ref in alive if ref() is not None)
    assert kept == 0, f"{kept} refused sources are kept alive by the compile cache"


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_rate_buckets_of_tenants_gone_idle_are_forgotten() -> None:
    # One bucket per (tenant, kind) was made at a tenant's first call and never dropped: every
    # tenant id a JWT ever named (the identity provider's to choose; any well-formed id is
    # accepted), and every tenant deleted since, kept two buckets for the life of the process.
    # A full bucket is what a new one would be, so forgetting idle tenants changes no answer
    # (StreamPace forgets its idle tenants the same way).
    clock = _Clock()
    limiter = RateLimiter(clock)
    rate = RateLimit(per_second=10.0, burst=20)
    for i in range(2000):
        limiter.check(f"t{i}", "request", rate)
        limiter.check(f"t{i}", "submit", rate)
        clock.now += 1.0  # each tenant's buckets are full again a second later
    tracked = len(limiter._buckets)
    assert tracked <= 1024 + 2, f"{tracked} buckets kept for 2000 tenants seen once"
    # Limits still hold for a tenant that is busy now.
    for _ in range(19):
        limiter.check("busy", "request", rate)
    with pytest.raises(ResourceExhausted, match="over its rate"):
        for _ in range(2):
            limiter.check("busy", "request", rate)


class _NoStore:
    async def touch_api_keys(self, used: object) -> None:
        pass


def test_last_use_notes_of_keys_no_longer_used_are_dropped() -> None:
    # A key's last note is kept only to skip noting it again within interval_s; after that it
    # decides nothing, yet it was kept for every key ever used (a revoked one included) for
    # the life of the process: a tenant admin churning keys (create, use, revoke; revoked keys
    # do not count against the 1000-key limit) grew it without bound.
    clock = _Clock()
    recorder = LastUsedRecorder(_NoStore(), interval_s=60.0, clock=clock)  # type: ignore[arg-type]

    async def churn() -> None:
        for i in range(2000):
            recorder.note(f"prefix{i:06d}")
            clock.now += 1.0
            if i % 60 == 59:
                await recorder.flush()  # the recorder's own timer, every interval_s
        clock.now += 61.0
        await recorder.flush()

    asyncio.run(churn())
    noted = len(recorder._noted)
    assert noted <= 60, f"{noted} notes kept for keys unused for over a minute"
