"""Deleting what has outlived its retention: expired results, then ended jobs and sessions.

A result expires `result_retention_days` after its job ended (GetJobResult answers
RESULT_EXPIRED from then on, whether or not it is still on disk); a final job, its state
history and quota ledger row go `job_retention_days` after it ended, and an ended session once
it is that old and holds no job any more (GetJob, GetSession answer NOT_FOUND from then on).
Without the sweep the database only grew. FIRST_SWEEP_S after a start and then every
RETENTION_SWEEP_S the sweep deletes in batches, the store's writer thread serving other writes
between them: results walked in expiry order from where the last batch stopped (a cursor kept
in memory: one walk over the already-swept jobs per process start), jobs and sessions oldest
end first (deleted rows leave the index the next batch reads).

The sweep deletes up to the wall clock's reading unless that is past what can have elapsed
since the start (gateway.domain.deletion_clock): a clock stepped forward made it delete
every result and job for good.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from gateway.domain.deletion_clock import DeletionClock
from gateway.store.base import ExpiryCursor, Store

log = logging.getLogger(__name__)

RETENTION_SWEEP_S = 600.0
# The first sweep after a start: soon, so a gateway restarted more often than every
# RETENTION_SWEEP_S (rolling deploys, autoscaled replicas) still sweeps; not at once, so it
# stays out of the start's recovery and first jobs.
FIRST_SWEEP_S = 60.0
SWEEP_BATCH = 1000


@dataclass(frozen=True)
class Swept:
    results: int = 0
    jobs: int = 0
    sessions: int = 0


class RetentionSweep:
    def __init__(
        self,
        store: Store,
        clock: Callable[[], datetime],
        job_retention_s: float,
        *,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._job_retention = timedelta(seconds=job_retention_s)
        self._after: ExpiryCursor | None = None
        self._deletion_clock = DeletionClock(
            clock, monotonic, what="the retention sweep deletes", warn=log.warning
        )

    def now(self) -> datetime:
        """The instant the sweep deletes up to (gateway.domain.deletion_clock)."""
        return self._deletion_clock.bounded()

    async def sweep(self) -> Swept:
        """Deletes every result expired by now(), then every job and session past retention."""
        now = self.now()
        results = 0
        while True:
            deleted, walked, last = await self._store.delete_expired_results(
                self._after, now, SWEEP_BATCH
            )
            results += deleted
            if last is not None:
                self._after = last
            if walked < SWEEP_BATCH:
                break
        jobs = sessions = 0
        while True:
            deleted_jobs, deleted_sessions = await self._store.delete_ended_jobs(
                now - self._job_retention, SWEEP_BATCH
            )
            jobs += deleted_jobs
            sessions += deleted_sessions
            if deleted_jobs < SWEEP_BATCH and deleted_sessions < SWEEP_BATCH:
                return Swept(results, jobs, sessions)

    async def run(self, sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        await sleep(FIRST_SWEEP_S)
        while True:
            await self._sweep_and_tell()
            await sleep(RETENTION_SWEEP_S)

    async def _sweep_and_tell(self) -> None:
        try:
            swept = await self.sweep()
        except Exception:
            log.exception("the retention sweep failed; again in %gs", RETENTION_SWEEP_S)
            return
        if swept != Swept():
            log.info(
                "deleted %d expired results, %d jobs and %d sessions past retention",
                swept.results,
                swept.jobs,
                swept.sessions,
            )
