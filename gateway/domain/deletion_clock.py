"""The instant a sweep may delete up to, however far the wall clock has been stepped ahead.

Retention sweeps delete irrevocably on the wall clock's word. A forward step of the clock (a
bad NTP source, a VM resumed with a wrong RTC) made the next sweep delete every result, job
and audit record "past retention" by that clock, for good. So a sweep does not go past the
clock at start plus CATCH_UP times the time elapsed since (the monotonic clock, which steps do
not move), plus STEP_TOLERANCE: while a step lasts the sweep lags it, and deletes nothing that
would not be due anyway once the clock is corrected. A clock that was already wrong at start
is trusted; one that lags after a suspend (the monotonic clock stops meanwhile) is caught up
at CATCH_UP times real time, as is a step that is never corrected.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Final

# How far a sweep's instant may run ahead of the clock at start plus the time elapsed since.
STEP_TOLERANCE: Final = timedelta(minutes=1)
# How much faster than real time that bound advances: a clock that was behind catches up.
CATCH_UP: Final = 2.0


class DeletionClock:
    """`now()`: the wall clock's reading, bounded by what can have elapsed since creation.

    Args:
        what: What the bound holds back, for the warning ("sessions end by TTL").
        warn: Where `bounded()` says so (a logger's warning).
    """

    def __init__(
        self,
        clock: Callable[[], datetime],
        monotonic: Callable[[], float],
        *,
        what: str = "deletions go",
        warn: Callable[[str], object] | None = None,
    ) -> None:
        self._clock = clock
        self._monotonic = monotonic
        self._what = what
        self._warn = warn
        self._start = (clock(), monotonic())

    def now(self) -> tuple[datetime, timedelta]:
        """The instant to delete up to, and how far the wall clock reads past it (zero when
        it is trusted as it is)."""
        wall = self._clock()
        start_wall, start_mono = self._start
        elapsed = max(0.0, self._monotonic() - start_mono)
        bound = start_wall + timedelta(seconds=CATCH_UP * elapsed) + STEP_TOLERANCE
        if wall <= bound:
            return wall, timedelta(0)
        return bound, wall - bound

    def bounded(self) -> datetime:
        """now()'s instant, with a warning when the wall clock reads past it."""
        now, ahead = self.now()
        if ahead and self._warn is not None:
            self._warn(
                f"the wall clock reads {ahead} ahead of what can have elapsed since the gateway "
                f"started (a clock stepped forward?); {self._what} only up to {now.isoformat()}"
            )
        return now
