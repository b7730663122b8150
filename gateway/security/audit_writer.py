"""Writes audit records off the request path: in batches, and failed authentications
aggregated per peer under a rate limit.

Reads and calls that changed nothing are buffered and committed one batch per flush (one
transaction, one fsync, for up to `max_batch` calls). Failed authentications are written at
most twice per peer and reason per window: the first at once, the rest as one record whose
`count` says how many, when the window ends; beyond `max_failure_peers` distinct peers in a
window every other failure is counted under peer "*". So anonymous traffic, however much,
adds a bounded number of records per window.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Protocol

from gateway.domain.audit import AuditRecord, ChainPoint
from gateway.security.peers import peer_network

log = logging.getLogger(__name__)

OVERFLOW_PEER = "*"
# The reason of the record that counts refusals past `max_failure_peers` in a window.
OVERFLOW_REASON = "AUDIT_OVERFLOW"
# The reason of the record that counts records dropped while the store could not write them
# (more than `max_held` waiting).
LOST_REASON = "AUDIT_RECORDS_LOST"
# A batch the store could not write is tried again after this, doubling to the maximum.
RETRY_S = 1.0
RETRY_MAX_S = 30.0


class AuditSink(Protocol):
    async def append_audit(self, records: Sequence[AuditRecord]) -> ChainPoint: ...


@dataclass
class _Failures:
    first: AuditRecord | None = None  # the first failure after the one written at once
    count: int = 0
    last: datetime | None = None


class AuditWriter:
    """Buffers records and hands them to the store in batches.

    Args:
        sink: Where batches go (the store's append_audit).
        flush_interval_s: Longest a buffered record waits.
        max_batch: A full buffer is flushed at once.
        failure_window_s: The aggregation window of failed authentications.
        max_failure_peers: Distinct (peer, reason) pairs tracked per window.
        clock: UTC now.
    """

    def __init__(
        self,
        sink: AuditSink,
        *,
        flush_interval_s: float = 1.0,
        max_batch: int = 256,
        failure_window_s: float = 60.0,
        max_failure_peers: int = 256,
        max_held: int = 100_000,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._sink = sink
        self._interval = flush_interval_s
        self._max_batch = max_batch
        self._window = failure_window_s
        self._max_peers = max_failure_peers
        self._clock = clock
        self._buffer: list[AuditRecord] = []
        self._timer: asyncio.TimerHandle | None = None
        self._window_timer: asyncio.TimerHandle | None = None
        self._failures: dict[tuple[str, str, str, str], _Failures] = {}
        self._inflight: set[asyncio.Future[ChainPoint]] = set()
        self._closed = False
        self._max_held = max_held
        self._lost = 0  # dropped past max_held while the store could not write
        self._retry_s = RETRY_S
        self._failing = False  # the last batch could not be written: the retry timer runs
        self.written = 0

    def add(self, record: AuditRecord) -> None:
        """Queues one record for the next batch (never blocks, never fails the call)."""
        if self._closed:
            log.warning("audit record after close dropped: %s %s", record.service, record.method)
            return
        self._buffer.append(record)
        if self._failing:  # held for the retry timer; the oldest go past max_held
            self._trim()
        else:
            self._schedule()

    def _schedule(self) -> None:
        """The buffer's next batch: now if it is full, else within the flush interval."""
        if len(self._buffer) >= self._max_batch:
            self._flush()
        elif self._buffer and self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._interval, self._flush)

    def _trim(self) -> None:
        excess = len(self._buffer) - self._max_held
        if excess > 0:
            del self._buffer[:excess]
            self._lost += excess

    def auth_failed(self, record: AuditRecord) -> None:
        """A call refused before authentication succeeded (bad credentials, an undecodable
        request) or before its servicer ran (its rate): the first per (peer network, reason,
        principal, tenant) in a window is written, later ones are counted into one record when the
        window ends."""
        # Per principal too: calls refused for their rate (authenticated, so the principal is
        # known) are aggregated the same way without merging two callers of one host. Per
        # network as the key-lookup budget counts (an IPv6 /64): one subscriber rotating
        # through its /64 filled the table, and everyone else's failures went unnamed into
        # the overflow record.
        # And per tenant: a JWT subject is one principal in every tenant its tokens name, and
        # one tenant's refusals were counted into a record of the other's (its admin saw them).
        key = (peer_network(record.peer), record.reason, record.principal, record.tenant)
        record = replace(record, peer=key[0])
        state = self._failures.get(key)
        if state is None and len(self._failures) >= self._max_peers:
            key = (OVERFLOW_PEER, "", "", "")
            # Calls of any caller, tenant, method and reason are counted here: the record names
            # none of them, rather than the first one's (which would credit every other
            # tenant's refusals to it, in its tenant admin's view).
            record = AuditRecord(
                time=record.time,
                end_time=record.end_time,
                service="",
                method="",
                peer=OVERFLOW_PEER,
                reason=OVERFLOW_REASON,
            )
            state = self._failures.get(key)
        if state is None:
            self._failures[key] = _Failures()
            self.add(record)
            if self._window_timer is None and not self._closed:
                loop = asyncio.get_running_loop()
                self._window_timer = loop.call_later(self._window, self._end_window)
            return
        if state.first is None:
            state.first = record
        state.count += 1
        state.last = record.end_time

    def _end_window(self) -> None:
        self._window_timer = None
        failures, self._failures = self._failures, {}
        for state in failures.values():
            if state.first is not None:
                self.add(
                    replace(
                        state.first, end_time=state.last or state.first.end_time, count=state.count
                    )
                )

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._buffer and not self._lost:
            return
        batch, self._buffer = self._buffer[: self._max_batch], self._buffer[self._max_batch :]
        lost = self._lost
        if lost:
            now = self._clock()
            batch.append(
                AuditRecord(time=now, end_time=now, service="", method="", peer=OVERFLOW_PEER,
                            reason=LOST_REASON, count=lost)
            )  # fmt: skip
            self._lost = 0
        task = asyncio.ensure_future(self._sink.append_audit(batch))
        self._inflight.add(task)
        task.add_done_callback(self._written(batch, lost))

    def _written(
        self, batch: list[AuditRecord], lost: int
    ) -> Callable[[asyncio.Future[ChainPoint]], None]:
        def done(task: asyncio.Future[ChainPoint]) -> None:
            self._inflight.discard(task)
            if task.cancelled():
                return
            error = task.exception()
            if error is None:
                self.written += len(batch)
                self._retry_s = RETRY_S
                self._failing = False
                # What was held while it failed (and the count of what was dropped).
                if self._lost:
                    self._flush()
                else:
                    self._schedule()
                return
            log.error(
                "audit: a batch of %d records could not be written (again in %gs): %r",
                len(batch),
                self._retry_s,
                error,
            )
            # Held, not dropped: a full or read-only disk still serves reads, and their
            # records were lost for good. Past max_held the oldest go, counted in a record.
            self._failing = True
            self._lost += lost
            self._buffer[:0] = batch[:-1] if lost else batch
            self._trim()
            if self._closed:
                return
            if self._timer is not None:
                self._timer.cancel()
            self._timer = asyncio.get_running_loop().call_later(self._retry_s, self._flush)
            self._retry_s = min(self._retry_s * 2, RETRY_MAX_S)

        return done

    async def flush(self) -> None:
        """Writes everything buffered, aggregated failures included; returns once committed."""
        if self._window_timer is not None:
            self._window_timer.cancel()
            self._window_timer = None
        self._end_window()
        self._flush()
        # A batch written flushes what was held behind it; one that failed leaves the rest to
        # its retry timer.
        while self._inflight:
            await asyncio.gather(*self._inflight, return_exceptions=True)
            if self._buffer and not self._failing and not self._inflight:
                self._flush()

    async def close(self) -> None:
        """Flushes, then refuses further records."""
        await self.flush()
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._buffer or self._lost:
            log.error(
                "audit: %d records could not be written before closing",
                len(self._buffer) + self._lost,
            )
