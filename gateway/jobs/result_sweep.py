"""Deleting expired results.

A result expires `result_retention_days` after its job ended (GetJobResult answers
RESULT_EXPIRED from then on, whether or not it is still on disk); results nobody asks for again
were kept for ever, so the database only grew. The sweep deletes them in batches of jobs walked
in expiry order from where the last batch stopped (a cursor kept in memory: one walk over the
already-swept jobs per process start), every RESULT_SWEEP_S, the store's one thread serving
other calls between batches.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime

from gateway.store.base import ExpiryCursor, Store

log = logging.getLogger(__name__)

RESULT_SWEEP_S = 600.0
SWEEP_BATCH = 1000


class ResultSweep:
    def __init__(self, store: Store, clock: Callable[[], datetime]) -> None:
        self._store = store
        self._clock = clock
        self._after: ExpiryCursor | None = None

    async def sweep(self) -> int:
        """Deletes every result expired by now; returns how many were deleted."""
        now = self._clock()
        total = 0
        while True:
            deleted, walked, last = await self._store.delete_expired_results(
                self._after, now, SWEEP_BATCH
            )
            total += deleted
            if last is not None:
                self._after = last
            if walked < SWEEP_BATCH:
                return total

    async def run(self) -> None:
        while True:
            await asyncio.sleep(RESULT_SWEEP_S)
            try:
                deleted = await self.sweep()
            except Exception:
                log.exception("deleting expired results failed; again in %gs", RESULT_SWEEP_S)
                continue
            if deleted:
                log.info("deleted %d expired results", deleted)
