"""Readiness: started, not draining, and the store able to write.

A gateway whose store cannot write (a full disk, an I/O error, a read-only remount, a lock held
past busy_timeout by another process) refuses every submission STORE_UNAVAILABLE: a mesh should
send its calls to another replica meanwhile. A failed write makes it not ready at once. It is
ready again once a probe write commits and no write has failed for `hold_s`: the mesh stops
sending calls to a replica that is not ready, so without the probe nothing would find out, and
without the hold a probe that fits where a job's write did not would flip it back and forth.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

from gateway.domain.errors import StoreUnavailable

log = logging.getLogger(__name__)

# How often a store that failed a write is tried again, and how long no write may fail before
# the gateway is ready again (a client is told to retry after this long: STORE_RETRY_S).
PROBE_INTERVAL_S = 1.0
HOLD_S = 5.0

# Called with whether the gateway is ready, each time that changes.
Publish = Callable[[bool], Awaitable[None]]


class WritableStore(Protocol):
    def on_write_unavailable(self, callback: Callable[[], None]) -> None: ...

    async def probe_write(self) -> None: ...


class Readiness:
    def __init__(
        self,
        store: WritableStore,
        publish: Publish,
        *,
        probe_interval_s: float = PROBE_INTERVAL_S,
        hold_s: float = HOLD_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._publish = publish
        self._probe_interval_s = probe_interval_s
        self._hold_s = hold_s
        self._clock = clock
        self._started = False
        self._draining = False
        self._write_failed_at: float | None = None
        self._write_failed = asyncio.Event()
        self._published: bool | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def ready(self) -> bool:
        return self._started and not self._draining and self._write_failed_at is None

    def watch_store(self) -> None:
        """Starts listening to the store's failed writes (on the running loop)."""
        self._store.on_write_unavailable(self._failed)
        self._task = asyncio.create_task(self._watch(), name="qgateway-readiness")

    async def check_store(self) -> None:
        """The start's probe, before `started`: a gateway (re)started on a full disk is not
        ready until it can write, though nothing asked it to yet."""
        try:
            await self._store.probe_write()
        except Exception as exc:
            if not isinstance(exc, StoreUnavailable):
                log.exception("the store's probe write failed")
            self._failed()

    async def started(self) -> None:
        """Ready from now on, while the store writes and until `draining`. Publishes before
        it yields: a stop asked before this call is never announced ready."""
        self._started = True
        await self._update()

    async def draining(self) -> None:
        self._draining = True
        await self._update()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def _failed(self) -> None:
        self._write_failed_at = self._clock()
        self._write_failed.set()

    async def _update(self) -> None:
        ready = self.ready
        if ready != self._published:
            self._published = ready
            await self._publish(ready)

    async def _watch(self) -> None:
        while True:
            await self._write_failed.wait()
            if self._started and not self._draining:
                log.error("a store write failed STORE_UNAVAILABLE: not ready until it writes")
            await self._update()
            await self._until_writable()
            self._write_failed.clear()
            self._write_failed_at = None
            if self._started and not self._draining:
                log.warning("the store writes again: ready")
            await self._update()

    async def _until_writable(self) -> None:
        logged = False
        while True:
            await asyncio.sleep(self._probe_interval_s)
            try:
                await self._store.probe_write()
            except StoreUnavailable:
                continue  # a write's failure is told through _failed too: the hold restarts
            except Exception:
                # Any other failure is one more reason it cannot write, never the end of the
                # watch (the gateway would stay not ready for good).
                if not logged:
                    log.exception("the store's probe write failed; probed again")
                    logged = True
                continue
            failed_at = self._write_failed_at
            if failed_at is None or self._clock() - failed_at >= self._hold_s:
                return
