"""Review of what tenants share in one gateway process, read as a hostile tenant against its
neighbours: the compile cache, the spec cache, the queues and the worker pools. In-process, with
fakes of the gateway's own ports; each finding was a strict xfail until fixed."""

from __future__ import annotations

import asyncio
import sys

from gateway.backends.base import CIRCUIT_FIELD
from gateway.domain.circuits import CircuitLanguage, CircuitSource
from gateway.domain.errors import FieldViolation, InvalidArgument
from gateway.runtime.compiler import CompileLimits, Compiler
from tests.compile_fakes import OneWorkerPool, TextKeyedAdapter

# What the Qiskit front end answers for a QASM 2 or 3 call of an undefined gate: the client's
# gate name three times over, unclipped (message, ErrorInfo metadata, the field violation).
# Measured on the real Aer adapter: a 200,000-character name gave a 600,091-character
# refusal; max_source_bytes (1 MiB) allows a ~1 MiB name, so ~3 MiB per refusal.
_NAME_CHARS = 256 << 10


class _UnknownGateWorker:
    """A compile worker refusing each circuit as the front end refuses an unknown gate."""

    def __init__(self) -> None:
        self.compiles = 0
        self.exit_signal = None

    async def compile(self, backend: str, source: CircuitSource, cpu_seconds: float) -> object:
        self.compiles += 1
        name = source.text  # the whole source is the gate's name (a distinct one per call)
        message = f"line 4, column 0: gate {name!r} is not defined"
        raise InvalidArgument(
            "UNKNOWN_GATE",
            message,
            metadata={"gate": name},
            field_violations=[FieldViolation(CIRCUIT_FIELD, message)],
        )

    def kill(self) -> None:
        raise AssertionError("a worker that answered is kept")


def _held_bytes(refusal: InvalidArgument) -> int:
    """The client-chosen text a refusal keeps alive (str sizes, as the interpreter holds them)."""
    strings = [refusal.message, *refusal.metadata.keys(), *refusal.metadata.values()]
    strings += [s for v in refusal.field_violations for s in (v.field, v.description)]
    return sum(sys.getsizeof(s) for s in strings)


def test_cached_refusals_stay_within_the_compile_cache_bytes() -> None:
    # The compile cache is bounded in bytes (compiler.cache_mb, 256 MiB; one tenant at most
    # half), but a refusal is weighed a fixed 4 KiB whatever it holds. An unknown gate's refusal
    # echoes the client's gate name three times, unclipped: one tenant sending distinct
    # one-line circuits calling a ~1 MiB made-up gate (each refused in milliseconds, cached as
    # a property of the circuit) had 32,768 of them kept, ~3 MiB each: ~96 GiB for what the
    # cache counts as 128 MiB, and the gateway process, every tenant's, dies of it. (A strict
    # xfail until refusals were weighed by their text: compiler._weight.)
    cache_bytes = 4 << 20
    worker = _UnknownGateWorker()
    pool = OneWorkerPool(worker, broken_allowed=False)
    compiler = Compiler(pool, CompileLimits(cache_bytes=cache_bytes))  # type: ignore[arg-type]
    kept: list[InvalidArgument] = []

    async def flood() -> None:
        for i in range(24):
            source = CircuitSource(CircuitLanguage.QASM2, f"{i:016d}" + "g" * _NAME_CHARS)
            try:
                await compiler.compile("mallory", "aer", TextKeyedAdapter(), source, "spec.pubs[0]")  # type: ignore[arg-type]
            except InvalidArgument as refused:
                assert refused.reason == "UNKNOWN_GATE"
            else:
                raise AssertionError("the unknown gate was accepted")

    asyncio.run(flood())
    assert worker.compiles == 24
    for value, _, _ in compiler._cache._items.values():
        assert isinstance(value, InvalidArgument)
        kept.append(value)
    held = sum(_held_bytes(refusal) for refusal in kept)
    assert held <= cache_bytes, (
        f"{len(kept)} cached refusals hold {held >> 20} MiB of client text in a "
        f"{cache_bytes >> 20} MiB cache"
    )
