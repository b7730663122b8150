"""The wall clock as the job core reads it: never going back.

Jobs are ordered by their create time (a session's jobs run and are recovered in that order;
a store-backed queue claims oldest first), and a watcher tells a stale event from a newer one
by its update time. A wall clock stepped back (NTP, a VM resumed) made a later job sort before
earlier ones and a newer event look stale. Within this process a reading is now never before
the one before it: while the wall clock is behind, each reading is a microsecond (the store's
resolution) after the last, so jobs created meanwhile keep their order; across processes
sharing a store, their clocks' order is all there is.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

_TICK = timedelta(microseconds=1)


class SteadyClock:
    """`clock`, never going back across readings."""

    def __init__(self, clock: Callable[[], datetime]) -> None:
        self._clock = clock
        self._last: datetime | None = None

    def __call__(self) -> datetime:
        now = self._clock()
        if self._last is not None and now < self._last:
            now = self._last + _TICK
        self._last = now
        return now
