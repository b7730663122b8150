"""Compiling client circuits in killable worker processes, cached by content digest.

The gateway's serving process never parses client text: each distinct circuit is compiled by a
compile worker under a CPU-time limit (enforced by the kernel in the worker), a wall-clock limit
(the worker is killed when it passes) and a memory limit. A compile that has its fair-share
slot runs to its end even when every caller waiting for it has gone, and its outcome is cached
when it is the circuit's: killing the worker cost every tenant a replacement's start-up
(seconds of SDK imports) for one cancelled request.
Workers are shared fairly across tenants, and a killed worker is replaced in the background at
the pool's creation rate. Outcomes are cached per tenant by the adapter's circuit key, refusals
and failures inside a worker that answered included, so a repeated circuit (the VQE loop) or a
repeated hostile request costs a hash and a lookup; callers asking for a circuit that is being
compiled for their tenant wait for that one compile.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from gateway import offload
from gateway.backends.base import CIRCUIT_FIELD, BackendAdapter, TargetUnavailable
from gateway.domain.circuits import CircuitSource
from gateway.domain.errors import (
    ExecutionError,
    FieldViolation,
    GatewayError,
    Internal,
    InvalidArgument,
    QuotaViolation,
    ResourceExhausted,
    Unavailable,
)
from gateway.runtime.fair_share import FairShare
from gateway.runtime.pool import Pool
from gateway.runtime.worker import WorkerCrashed, WorkerProcess, WorkerReplyRefused

log = logging.getLogger(__name__)

# A compiled circuit's cache weight when it does not say (most say: their QPY's size).
_DEFAULT_WEIGHT = 4096
# The worker died this way: it ran out of CPU time, or of memory (an allocation failure in
# native code aborts; the kernel's OOM killer sends SIGKILL).
_CPU_SIGNALS = frozenset({signal.SIGXCPU})
_MEMORY_SIGNALS = frozenset({signal.SIGABRT, signal.SIGKILL, signal.SIGBUS})
# Sent by the host (its OOM killer, an operator), not by a limit of the worker's own: the
# circuit may not be what caused it, so the refusal is not cached.
_OUTSIDE_SIGNALS = frozenset({signal.SIGKILL})


@dataclass(frozen=True)
class CompileLimits:
    timeout_s: float = 30.0
    cpu_time_s: float = 10.0
    memory_bytes: int = 1 << 30
    cache_bytes: int = 256 << 20
    # How long a compile waits for a free worker before RESOURCE_EXHAUSTED.
    acquire_timeout_s: float = 30.0


class _Cache:
    """A byte-bounded LRU of compile outcomes: a compiled circuit or the refusal.

    Each entry counts against the tenant whose compile put it there, and no tenant's entries
    may fill more than `max_bytes // 2`: past that its own least recent go first. Without it
    one tenant compiling thousands of distinct circuits (within its fair share of workers)
    flushed every other tenant's circuits, and each of their next calls compiled again."""

    def __init__(self, max_bytes: int) -> None:
        self._max = max_bytes
        self._tenant_max = max_bytes // 2
        self._size = 0
        self._items: OrderedDict[str, tuple[object, int, str]] = OrderedDict()
        self._by_tenant: dict[str, int] = {}

    def get(self, key: str) -> object | None:
        item = self._items.get(key)
        if item is None:
            return None
        self._items.move_to_end(key)
        return item[0]

    def put(self, key: str, value: object, tenant: str) -> None:
        weight = _weight(value)
        if weight > self._max // 4:
            return
        self._drop(key)
        self._items[key] = (value, weight, tenant)
        self._size += weight
        self._by_tenant[tenant] = self._by_tenant.get(tenant, 0) + weight
        if self._by_tenant[tenant] > self._tenant_max:
            # The tenant's own least recent entries, oldest first (never the one just put).
            own = [k for k, item in self._items.items() if item[2] == tenant and k != key]
            for old in own:
                if self._by_tenant[tenant] <= self._tenant_max:
                    break
                self._drop(old)
        while self._size > self._max:
            self._drop(next(iter(self._items)))

    def _drop(self, key: str) -> None:
        item = self._items.pop(key, None)
        if item is None:
            return
        _, weight, tenant = item
        self._size -= weight
        left = self._by_tenant[tenant] - weight
        if left:
            self._by_tenant[tenant] = left
        else:
            del self._by_tenant[tenant]

    def __len__(self) -> int:
        return len(self._items)


def _weight(value: object) -> int:
    """A cache entry's weight: a compiled circuit's own figure, a refusal's text.

    A refusal may echo what the client named (an unknown gate's name is in its message, its
    metadata and its field violation, unclipped): weighed a fixed 4 KiB, one tenant's share of
    refusals naming ~1 MiB gates held ~96 GiB."""
    if isinstance(value, GatewayError):
        strings = [value.message, *value.metadata.keys(), *value.metadata.values()]
        strings += [s for v in value.field_violations for s in (v.field, v.description)]
        return max(_DEFAULT_WEIGHT, sum(map(sys.getsizeof, strings)))
    return int(getattr(value, "nbytes", _DEFAULT_WEIGHT))


def _cache_key(place: tuple[str, str]) -> str:
    tenant, circuit_key = place
    return f"{tenant}\0{circuit_key}"


def relocated(error: InvalidArgument, field: str) -> InvalidArgument:
    """The same refusal, its CIRCUIT_FIELD violations renamed to `field` (the PUB's circuit)."""

    def rename(name: str) -> str:
        if name == CIRCUIT_FIELD or name.startswith(CIRCUIT_FIELD + "."):
            return field + name[len(CIRCUIT_FIELD) :]
        return name

    return InvalidArgument(
        error.reason,
        error.message,
        metadata=error.metadata,
        field_violations=[
            FieldViolation(rename(v.field), v.description) for v in error.field_violations
        ],
    )


def _too_complex(what: str, limit: str) -> InvalidArgument:
    message = f"compiling the circuit exceeded the {what} limit of {limit}"
    return InvalidArgument(
        "CIRCUIT_TOO_COMPLEX",
        message,
        metadata={"limit": what.replace(" ", "_"), "maximum": limit},
        field_violations=[FieldViolation(CIRCUIT_FIELD, message)],
    )


@dataclass(eq=False)
class _Flight:
    """A compile in progress, how many callers wait for it, and whether it has its fair-share
    slot (from then on it goes on without callers)."""

    waiters: int = 0
    compiling: bool = False
    task: asyncio.Future[object] = field(init=False)


class Compiler:
    """Compiles circuits on a pool of compile workers, fairly across tenants."""

    def __init__(self, pool: Pool[WorkerProcess], limits: CompileLimits) -> None:
        self._pool = pool
        self.limits = limits
        self._fair = FairShare(pool.limits.max_instances)
        self._cache = _Cache(limits.cache_bytes)
        # Compiles in progress, by the tenant that asked and the circuit.
        self._inflight: dict[tuple[str, str], _Flight] = {}
        self._background: set[asyncio.Task[None]] = set()
        self._closing = False

    @property
    def pool(self) -> Pool[WorkerProcess]:
        return self._pool

    async def compile(
        self,
        tenant: str,
        backend: str,
        adapter: BackendAdapter,
        source: CircuitSource,
        field: str,
    ) -> object:
        """The compiled circuit for `backend`.

        Raises:
            InvalidArgument: the circuit is refused; violations name `field`.
            ResourceExhausted: no compile worker became free in time (nothing was accepted).
            Unavailable: the backend's target could not be fetched from its provider.
            Internal: the compile worker failed in a way no input should cause.
        """
        # Before its digest and a worker: a source past the limit is refused by its length
        # (the worker refused it too, after a 16 MiB request's digest on the event loop and
        # its trip through a pipe and a fair-share slot).
        size = len(source.payload)
        limit = adapter.context.circuit_limits.max_source_bytes
        if size > limit:
            raise InvalidArgument(
                "CIRCUIT_TOO_LARGE",
                f"circuit source is {size} bytes; the limit is {limit}",
                metadata={"sourceBytes": str(size), "maxSourceBytes": str(limit)},
                field_violations=[
                    FieldViolation(field, f"circuit source is {size} bytes; the limit is {limit}")
                ],
            )
        # Per tenant: a hit answers in microseconds and a compile takes milliseconds, so a
        # shared cache told any tenant whether another had sent a given circuit.
        place = (tenant, await offload.by_size(size, adapter.circuit_key, source))
        outcome = self._cache.get(_cache_key(place))
        if outcome is None:
            outcome = await self._shared(place, backend, source, adapter.compiled_type)
        if isinstance(outcome, InvalidArgument):
            raise relocated(outcome, field)
        if isinstance(outcome, Internal | Unavailable):
            # A new error each time: raising the cached one again grew its traceback by every
            # caller's frames (their requests kept alive with it), without bound.
            raise type(outcome)(
                outcome.reason,
                outcome.message,
                metadata=outcome.metadata,
                retry_after=outcome.retry_after,
            )
        return outcome

    async def _shared(
        self, place: tuple[str, str], backend: str, source: CircuitSource, compiled: type
    ) -> object:
        """One compile per tenant and circuit key at a time: a caller asking for a circuit
        that is being compiled waits for that compile. When every caller has gone, a compile
        still waiting for its tenant's fair-share slot is dropped; one that has its slot runs to
        its end within its limits (and is cached as any compile is), so a cancelled request
        costs what a waited one does. Killing it made each short-deadline request for a slow
        circuit cost a worker replacement (seconds of SDK imports, for every tenant)."""
        flight = self._inflight.get(place)
        if flight is None:
            flight = _Flight()
            flight.task = asyncio.ensure_future(
                self._compile_once(place, backend, source, compiled, flight)
            )
            self._inflight[place] = flight
            flight.task.add_done_callback(lambda _: self._land(place, flight))
        flight.waiters += 1
        try:
            return await asyncio.shield(flight.task)
        finally:
            flight.waiters -= 1
            if flight.waiters == 0 and not flight.task.done() and not flight.compiling:
                # Forgotten at once: a caller arriving while it winds down starts afresh
                # instead of joining a compile that is being cancelled.
                self._land(place, flight)
                flight.task.cancel()

    def _land(self, place: tuple[str, str], flight: _Flight) -> None:
        if self._inflight.get(place) is flight:
            del self._inflight[place]
        # Nobody awaits an abandoned compile: its failure is logged here, not lost.
        task = flight.task
        if task.done() and not task.cancelled() and flight.waiters == 0 and task.exception():
            log.error("an abandoned compile failed", exc_info=task.exception())

    async def _compile_once(
        self,
        place: tuple[str, str],
        backend: str,
        source: CircuitSource,
        compiled: type,
        flight: _Flight,
    ) -> object:
        tenant, _ = place
        async with self._fair.slot(tenant):
            # From here it goes on without callers: slots are as many as workers, and dropping
            # it while the pool starts a worker for it threw that start-up away.
            flight.compiling = True
            outcome, lasting = await self._compile(backend, source, compiled)
            if lasting:
                self._cache.put(_cache_key(place), outcome, tenant)
            return outcome

    async def _compile(
        self, backend: str, source: CircuitSource, compiled: type = object
    ) -> tuple[object, bool]:
        """The outcome, and whether it is a property of the circuit (worth caching). A wall-time
        kill is not: a loaded machine may be what made the compile slow."""
        limits = self.limits
        try:
            worker = await self._pool.acquire(timeout=limits.acquire_timeout_s)
        except TimeoutError:
            raise ResourceExhausted(
                "COMPILERS_BUSY",
                f"no compile worker became free within {limits.acquire_timeout_s:g} s; nothing "
                "was accepted, retry later",
                metadata={"acquireTimeoutS": f"{limits.acquire_timeout_s:g}"},
                quota_violations=[QuotaViolation("compile workers", "all busy")],
                retry_after=1.0,
            ) from None
        broken = True
        try:
            async with asyncio.timeout(limits.timeout_s):
                value = await worker.compile(backend, source, limits.cpu_time_s)
            if not isinstance(value, compiled):
                # What no worker of this adapter answers: code it should not run may have.
                worker.refuse(f"a compile answer holding {type(value).__name__}")
            broken = False
            return value, True
        except InvalidArgument as refusal:
            broken = False
            # Cached without its traceback: its frames' locals (the client's source, up to
            # max_source_bytes, and the worker's reply) stayed alive with each cached refusal,
            # which the cache weighs at 4 KiB.
            return refusal.with_traceback(None), True
        except TargetUnavailable as exc:
            # Not the circuit's doing, and over once the provider answers: never cached.
            broken = False
            unavailable = Unavailable(
                "BACKEND_UNAVAILABLE",
                str(exc),
                metadata={"backend": f"backends/{backend}", "targetFetched": "false"},
                retry_after=1.0,
            )
            return unavailable, False
        except TimeoutError:
            return _too_complex("wall-time", f"{limits.timeout_s:g} s"), False
        except MemoryError:
            return _too_complex("memory", f"{limits.memory_bytes >> 20} MiB"), True
        except WorkerReplyRefused:
            # The circuit's doing as far as anyone can tell (code may have run in the worker):
            # cached, so repeating it does not cost another worker.
            log.error("compile worker killed for its reply, compiling for %s", backend)
            return Internal("COMPILER_CRASHED", "the compile worker failed unexpectedly"), True
        except WorkerCrashed as crash:
            signum = worker.exit_signal
            if signum in _CPU_SIGNALS:
                return _too_complex("CPU-time", f"{limits.cpu_time_s:g} s"), True
            if signum in _MEMORY_SIGNALS:
                too_complex = _too_complex("memory", f"{limits.memory_bytes >> 20} MiB")
                return too_complex, signum not in _OUTSIDE_SIGNALS
            log.error("compile worker died: %s", crash.message)
            return Internal("COMPILER_CRASHED", "the compile worker failed unexpectedly"), False
        except ExecutionError as failure:
            # The worker answered (it is healthy); the same circuit fails the same way, so the
            # outcome is cached: a repeated request must not cost a compile, let alone a
            # worker (killing it cost every tenant a replacement's start-up).
            broken = False
            log.error("compile failed: %s", failure.message)
            return Internal("COMPILER_FAILED", "compiling failed inside the gateway"), True
        finally:
            # Also on cancellation (the gateway closing).
            if broken:
                worker.kill()
            await self._pool.release(worker, broken=broken)
            if broken:
                self._replace_in_background()

    def _replace_in_background(self) -> None:
        if self._closing:  # a worker killed by close() is not replaced
            return
        task = asyncio.ensure_future(self._pool.maintain())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def close(self) -> None:
        # Compiles nobody waits for any more are stopped too (their workers killed).
        self._closing = True
        tasks: list[asyncio.Future[Any]] = [*self._background]
        tasks += (flight.task for flight in self._inflight.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
