"""The running audit log: its key, batch writer, exported head and retention sweep.

The head (newest sequence and MAC) is written to its file and logged every interval and at
shutdown, so that deleting the newest records from the database shows in `qgateway audit
verify`. Retention deletes records older than the configured period (the store keeps the chain
verifiable through its anchor).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol

from gateway.domain.audit import AuditRecord, ChainPoint
from gateway.domain.deletion_clock import DeletionClock
from gateway.domain.errors import StoreUnavailable
from gateway.security import audit_files
from gateway.security.audit_writer import AuditWriter

log = logging.getLogger("gateway.audit")

RETENTION_SWEEP_S = 3600.0
# Records deleted per store transaction: each batch is a short write (~3 ms) that other
# writes queue behind, not one long one.
EXPIRE_BATCH = 1000


class AuditStore(Protocol):
    def enable_audit(self, key: bytes) -> None: ...

    async def append_audit(self, records: Sequence[AuditRecord]) -> ChainPoint: ...

    async def audit_head(self) -> ChainPoint: ...

    async def audit_key_wrote_chain(self) -> bool: ...

    async def audit_holds(self, point: ChainPoint) -> bool: ...

    def audit_committed(self) -> ChainPoint | None: ...

    async def expire_audit(self, before: datetime, limit: int) -> int: ...


class AuditKeyMismatch(RuntimeError):
    """The audit key file did not write the database's records (lost, replaced, or another
    data directory's): records chained on with it could never be verified."""


class AuditLog:
    """Args:
    store: Where records go; `enable_audit` is called with the key here.
    key_path: The key file (created at first start).
    head_path: Where the head is exported.
    head_interval_s, retention_s: As configured.
    writer_options: AuditWriter keyword arguments.
    """

    def __init__(
        self,
        store: AuditStore,
        key_path: Path,
        head_path: Path,
        *,
        head_interval_s: float,
        retention_s: float,
        flush_interval_s: float,
        failure_window_s: float,
        max_failure_peers: int,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._head_path = head_path
        self._head_interval = head_interval_s
        self._retention = timedelta(seconds=retention_s)
        # The sweep deletes up to the clock's reading, never past what can have elapsed since
        # the start, however far the wall clock steps ahead.
        self._deletion_clock = DeletionClock(
            clock, monotonic, what="audit records are deleted by retention", warn=log.warning
        )
        # Read (or made) before the first call, so every record can be chained.
        self._key_path = key_path
        self._key_made = not key_path.exists()
        self._key = audit_files.load_or_create_key(key_path)
        store.enable_audit(self._key)
        self.writer = AuditWriter(
            store,
            flush_interval_s=flush_interval_s,
            failure_window_s=failure_window_s,
            max_failure_peers=max_failure_peers,
            clock=clock,
        )
        self._exported: ChainPoint | None = None
        # False while the head file is an unsealed one (from an earlier version).
        self._sealed = True
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Sweeps expired records and exports the head; then both recur in the background.

        Raises:
            AuditKeyMismatch: The key file is not the one that wrote the database's records.
        """
        if not await self._store.audit_key_wrote_chain():
            if self._key_made:
                # Not left behind: the next start should say the key is missing, not wrong.
                self._key_path.unlink(missing_ok=True)
                problem = "is missing"
            else:
                problem = (
                    "did not write the newest audit records in the database (or they were "
                    "edited there: `qgateway audit verify` tells)"
                )
            raise AuditKeyMismatch(
                f"audit: the key {self._key_path} {problem}; restore the key file that wrote "
                "them (no other key verifies them), or start with [audit] enabled = false"
            )
        try:
            # The head exported before this start: the database must still reach it.
            self._exported = await asyncio.to_thread(
                audit_files.read_head, self._head_path, self._key
            )
        except audit_files.UnsealedHead as exc:
            # Checked like a sealed one (a database that no longer reaches it keeps the file
            # as evidence), then sealed. Taking it hides nothing that removing the file would
            # not: a start then writes a new head too.
            self._exported = exc.head
            self._sealed = False
            log.warning(
                "audit: %s; it is checked against the database like a sealed one, and sealed"
                " if the database still holds it",
                exc,
            )
        except ValueError as exc:
            # Kept beside, not overwritten: it is evidence, and an operator must see it.
            kept = self._head_path.with_name(f"{self._head_path.name}.unreadable")
            await asyncio.to_thread(self._head_path.replace, kept)
            log.critical(
                "audit: the head file %s is unreadable (%s); kept as %s, and a new head is"
                " written from the database: records deleted before this start cannot be found",
                self._head_path,
                exc,
                kept,
            )
        else:
            if self._exported is None and (await self._store.audit_head()).sequence > 0:
                # Records and no head: the documented reset after restoring a database on
                # purpose, or someone removed the evidence. Either way, said loudly.
                log.critical(
                    "audit: no head file %s although the database holds records; a new head is"
                    " written from the database: records deleted before this start cannot be"
                    " found (expected only after restoring a database on purpose)",
                    self._head_path,
                )
        try:
            await self._sweep()
            await self.export_head()
        except (OSError, StoreUnavailable) as exc:
            # A full or read-only disk: the gateway starts all the same (reads answer, writes
            # are STORE_UNAVAILABLE) rather than exit and restart for as long as it lasts; the
            # head is exported at the next attempt, the old head file still anchors the chain.
            log.error(
                "audit: head export or retention sweep failed at start (%s); retried every %gs",
                exc,
                self._head_interval,
            )
        self._task = asyncio.create_task(self._maintain(), name="qgateway-audit")

    async def _maintain(self) -> None:
        last_sweep = time.monotonic()
        while True:
            await asyncio.sleep(self._head_interval)
            try:
                if time.monotonic() - last_sweep >= RETENTION_SWEEP_S:
                    last_sweep = time.monotonic()
                    await self._sweep()
                await self.export_head()
            except Exception:
                log.exception("audit: head export or retention sweep failed")

    async def _sweep(self) -> None:
        now = self._deletion_clock.bounded()
        before = now - self._retention
        expired = 0
        while True:
            batch = await self._store.expire_audit(before, EXPIRE_BATCH)
            expired += batch
            if batch < EXPIRE_BATCH:
                break
        if expired:
            log.info("audit: %d records past retention deleted", expired)

    async def export_head(self) -> ChainPoint:
        """Writes the chain head to its file and the log (when it moved), unless the database
        no longer reaches the head exported before: then the old head file is kept, as the
        evidence `qgateway audit verify` needs, and the deletion is logged."""
        committed = self._store.audit_committed()
        exported = self._exported
        if (
            committed is not None
            and (exported is None or committed.sequence > exported.sequence)
            and not await self._store.audit_holds(committed)
        ):
            # Records this gateway wrote since the last export are gone, and new ones may
            # already chain on from what was left: exporting the database's head now would
            # hide the deletion. The head file keeps the point that was deleted, so
            # `qgateway audit verify` fails on it.
            log.critical(
                "audit: records this gateway committed were deleted (sequence=%d mac=%s is no "
                "longer in the database); %s keeps that head (run `qgateway audit verify`)",
                committed.sequence,
                committed.mac.hex(),
                self._head_path,
            )
            await asyncio.to_thread(audit_files.write_head, self._head_path, committed, self._key)
            self._exported = committed
            self._sealed = True
            return committed
        head = await self._store.audit_head()
        if head == exported and self._sealed:
            return head
        if exported is not None and not await self._store.audit_holds(exported):
            log.critical(
                "audit: the database no longer holds the exported head (sequence=%d mac=%s): "
                "records were deleted or rewritten; %s is kept as it is (run `qgateway audit "
                "verify`; after restoring a database on purpose, move the head file away)",
                exported.sequence,
                exported.mac.hex(),
                self._head_path,
            )
            return head
        await asyncio.to_thread(audit_files.write_head, self._head_path, head, self._key)
        self._exported = head
        self._sealed = True
        log.info("audit head sequence=%d mac=%s", head.sequence, head.mac.hex())
        return head

    async def close(self) -> None:
        """After the last call: writes what is buffered and exports the final head."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.writer.close()
        try:
            await self.export_head()
        except (OSError, StoreUnavailable) as exc:
            # The drain ends cleanly all the same; the head file keeps the last export.
            log.error("audit: the final head could not be exported (%s)", exc)
