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

The sweep deletes irrevocably on the wall clock's word, so it does not take a reading far
ahead of what has passed since the process started: it deletes up to the earlier of the clock
and the clock at start plus CATCH_UP times the time elapsed since (the monotonic clock), plus
CLOCK_STEP_TOLERANCE. A forward step of the clock (a bad NTP source, a VM resumed with a wrong
RTC) used to make the next sweep delete every result and job; now, while the step lasts, the
sweep lags it (and says so), and deletes nothing that would not have been due anyway once the
clock is corrected. A clock that was already wrong at start is trusted; one that lags after a
suspend (the monotonic clock stops meanwhile) is caught up at CATCH_UP times real time.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from gateway.store.base import ExpiryCursor, Store

log = logging.getLogger(__name__)

RETENTION_SWEEP_S = 600.0
# The first sweep after a start: soon, so a gateway restarted more often than every
# RETENTION_SWEEP_S (rolling deploys, autoscaled replicas) still sweeps; not at once, so it
# stays out of the start's recovery and first jobs.
FIRST_SWEEP_S = 60.0
SWEEP_BATCH = 1000
# How far the sweep's "now" may run ahead of the clock at start plus the time elapsed since.
CLOCK_STEP_TOLERANCE = timedelta(hours=1)
# How much faster than real time that bound advances: a clock that was behind catches up.
CATCH_UP = 2.0


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
        self._clock = clock
        self._monotonic = monotonic
        self._job_retention = timedelta(seconds=job_retention_s)
        self._after: ExpiryCursor | None = None
        self._start = (clock(), monotonic())

    def now(self) -> datetime:
        """The instant the sweep deletes up to: the clock's, unless it is past what can have
        elapsed since the start (module docstring)."""
        wall = self._clock()
        start_wall, start_mono = self._start
        elapsed = max(0.0, self._monotonic() - start_mono)
        bound = start_wall + timedelta(seconds=CATCH_UP * elapsed) + CLOCK_STEP_TOLERANCE
        if wall <= bound:
            return wall
        log.warning(
            "the wall clock reads %s, %s past what can have elapsed since the gateway started "
            "(a clock stepped forward?); the retention sweep deletes only up to %s",
            wall.isoformat(),
            wall - bound,
            bound.isoformat(),
        )
        return bound

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
