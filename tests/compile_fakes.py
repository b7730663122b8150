"""Fakes of what the Compiler (gateway.runtime.compiler) is given, for in-process tests of its
cache and scheduling: a pool of one compile worker and an adapter keyed by the source text."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from gateway.backends.base import CircuitLimits
from gateway.domain.circuits import CircuitSource

__all__ = ["OneWorkerPool", "TextKeyedAdapter"]


class OneWorkerPool:
    """A compile pool of one worker, always free; `broken_allowed`: whether the test expects
    the Compiler to give it back broken (a killed worker)."""

    def __init__(self, worker: Any, *, broken_allowed: bool = True) -> None:
        self.worker = worker
        self.broken_allowed = broken_allowed
        self.limits = SimpleNamespace(max_instances=1)

    async def acquire(self, timeout: float) -> Any:
        return self.worker

    async def release(self, worker: Any, *, broken: bool) -> None:
        assert self.broken_allowed or not broken, "a worker that answered is kept"

    async def maintain(self) -> None:
        pass


class TextKeyedAdapter:
    """An adapter whose circuit key is the source text itself (distinct sources, distinct
    compiles)."""

    context = SimpleNamespace(circuit_limits=CircuitLimits())
    compiled_type = object

    def circuit_key(self, source: CircuitSource) -> str:
        return source.text
