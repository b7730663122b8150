"""Tenants and the quota ledger of the SQLite store (migration 10): a mixin of SqliteStore, plus
the ledger steps create_job, finish_job and recover run inside their own transactions.

The ledger has one row per admitted job, keyed by job id: RESERVED when the job is created,
then SETTLED (it succeeded: what it used) or RELEASED (it failed or was cancelled: only what its
execution record says it used, usually nothing) in the transaction that makes the job final.
The state check makes each step happen once, and the row survives restarts with the job.
`quota_totals` holds running sums per tenant and period, so the admission check reads one row;
its cost sums are in one unit, `cost_unit` (migration 18; "" in a row written before: any unit).
A job priced in another unit (an administrator changed the tenant's cost quota's unit mid-period)
starts that unit's sums at zero, and the old unit's jobs settle without touching them: the
old unit's spending is not counted against the new unit's quota, nor reported as the new unit.
A job is charged to the period it was admitted in, also when it finishes in the next one.
"""

from __future__ import annotations

import sqlite3
from datetime import datetime
from typing import Final

from gateway.domain.audit import Effect
from gateway.domain.jobs import ExecutionInfo, JobState
from gateway.domain.quota import quota_exceeded, too_many_queued
from gateway.store.base import QuotaCharge, StoredTenant, TenantUsageRecord
from gateway.store.sqlite_audit import SqliteAudit, admin_changed
from gateway.store.sqlite_sessions import open_sessions
from gateway.store.sqlite_time import from_us, to_us

MIGRATION_SQL: Final = """
    -- Tenants created through AdminService (TOML-declared ones live in the configuration).
    CREATE TABLE tenants (
        id TEXT PRIMARY KEY,
        display_name TEXT NOT NULL DEFAULT '',
        -- gateway.security.tenant_policy's JSON form.
        policy TEXT NOT NULL,
        etag TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL
    ) WITHOUT ROWID;
    -- One row per admitted job: its reservation, then what it used.
    CREATE TABLE quota_ledger (
        job_id TEXT PRIMARY KEY,
        tenant TEXT NOT NULL,
        period_start INTEGER NOT NULL,
        period_end INTEGER NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('RESERVED', 'SETTLED', 'RELEASED')),
        shots_reserved INTEGER NOT NULL,
        cost_reserved REAL NOT NULL,
        cost_unit TEXT NOT NULL,
        shots_used INTEGER NOT NULL DEFAULT 0,
        cost_used REAL NOT NULL DEFAULT 0,
        settled_at INTEGER
    ) WITHOUT ROWID;
    -- Running sums of the ledger per tenant and period.
    CREATE TABLE quota_totals (
        tenant TEXT NOT NULL,
        period_start INTEGER NOT NULL,
        period_end INTEGER NOT NULL,
        shots_reserved INTEGER NOT NULL DEFAULT 0,
        shots_used INTEGER NOT NULL DEFAULT 0,
        cost_reserved REAL NOT NULL DEFAULT 0,
        cost_used REAL NOT NULL DEFAULT 0,
        PRIMARY KEY (tenant, period_start, period_end)
    ) WITHOUT ROWID;
    -- A tenant's QUEUED jobs, counted at admission under a max_queued_jobs policy.
    CREATE INDEX jobs_tenant_queued ON jobs (tenant) WHERE state = 'QUEUED';
"""

_COLUMNS: Final = "id, display_name, policy, etag, created_at, updated_at"
# Float sums of reserved cost go back to (almost) zero; below this they are zero.
_COST_EPSILON: Final = 1e-9


def _tenant(row: sqlite3.Row) -> StoredTenant:
    return StoredTenant(
        id=str(row["id"]),
        display_name=str(row["display_name"]),
        policy_json=str(row["policy"]),
        etag=str(row["etag"]),
        created_at=from_us(row["created_at"]),
        updated_at=from_us(row["updated_at"]),
    )


def _held(
    conn: sqlite3.Connection, tenant: str, start_us: int, end_us: int, unit: str
) -> tuple[int, float]:
    """Shots and cost in `unit` the tenant holds in the period (reserved + used); 0 before its
    first job."""
    row = conn.execute(
        "SELECT shots_reserved + shots_used, cost_reserved + cost_used, cost_unit"
        " FROM quota_totals WHERE tenant = ? AND period_start = ? AND period_end = ?",
        (tenant, start_us, end_us),
    ).fetchone()
    if row is None:
        return 0, 0.0
    return int(row[0]), float(row[1]) if row[2] in ("", unit) else 0.0


def _queued_jobs(conn: sqlite3.Connection, tenant: str) -> int:
    """The tenant's QUEUED jobs over all backends (index jobs_tenant_queued)."""
    sql = "SELECT count(*) FROM jobs WHERE tenant = ? AND state = 'QUEUED'"
    return int(conn.execute(sql, (tenant,)).fetchone()[0])


def reserve(
    conn: sqlite3.Connection, job_id: str, tenant: str, charge: QuotaCharge, now: datetime
) -> None:
    """Checks the tenant's queued-job limit and period quota, then reserves the job's charge.
    Runs in create_job's transaction, before the job is inserted; raising rolls it back.

    Raises:
        ResourceExhausted: TENANT_QUEUE_FULL, SHOT_QUOTA_EXCEEDED or COST_QUOTA_EXCEEDED.
    """
    if charge.max_queued_jobs is not None:
        queued = _queued_jobs(conn, tenant)
        if queued >= charge.max_queued_jobs:
            raise too_many_queued(tenant, queued, charge.max_queued_jobs)
    start_us, end_us = to_us(charge.period_start), to_us(charge.period_end)
    # Read only under a quota: without one the job is just counted.
    limited = charge.max_shots is not None or charge.max_cost is not None
    unit = charge.cost_unit
    held, held_cost = _held(conn, tenant, start_us, end_us, unit) if limited else (0, 0.0)
    max_shots, max_cost = charge.max_shots, charge.max_cost
    if max_shots is not None and charge.shots > 0 and held + charge.shots > max_shots:
        raise quota_exceeded(
            tenant,
            "shots",
            asked=charge.shots,
            held=held,
            limit=max_shots,
            unit="",
            period_end=charge.period_end,
            now=now,
        )
    # A priced job whose estimate is 0 (per-second prices) is refused once nothing is left.
    if (
        max_cost is not None
        and charge.priced
        and (
            held_cost + charge.cost > max_cost + _COST_EPSILON
            or held_cost >= max_cost - _COST_EPSILON
        )
    ):
        raise quota_exceeded(
            tenant,
            "cost",
            asked=charge.cost,
            held=held_cost,
            limit=max_cost,
            unit=charge.cost_unit,
            period_end=charge.period_end,
            now=now,
        )
    conn.execute(
        "INSERT INTO quota_ledger (job_id, tenant, period_start, period_end, state,"
        " shots_reserved, cost_reserved, cost_unit) VALUES (?, ?, ?, ?, 'RESERVED', ?, ?, ?)",
        (job_id, tenant, start_us, end_us, charge.shots, charge.cost, charge.cost_unit),
    )
    conn.execute(_RESERVE_TOTALS_SQL, (tenant, start_us, end_us, charge.shots, charge.cost, unit))


def settle(
    conn: sqlite3.Connection,
    job_id: str,
    state: JobState,
    execution: ExecutionInfo | None,
    at: datetime,
) -> None:
    """Ends the job's reservation as it entered final `state`, in the same transaction; a no-op
    for a job with no reservation or one already ended."""
    usage = None if execution is None else execution.usage
    cost = None if execution is None else execution.cost
    succeeded = state is JobState.SUCCEEDED
    # A job that succeeded with no shot count (re-attached after a restart, its prepared job
    # gone) used what it reserved; a failed or cancelled one, nothing. Cost counts only in
    # the unit it was reserved in.
    shots = usage.shots if usage is not None and usage.shots > 0 else None
    row = conn.execute(
        _SETTLE_SQL,
        (
            "SETTLED" if succeeded else "RELEASED",
            to_us(at),
            shots,
            shots,
            int(succeeded),
            None if cost is None else cost.unit,
            0.0 if cost is None else cost.amount,
            job_id,
        ),
    ).fetchone()
    if row is None:
        return
    # A job reserved in another unit than the totals' now settles its shots only.
    conn.execute(
        "UPDATE quota_totals SET shots_reserved = shots_reserved - ?, shots_used = shots_used + ?,"
        " cost_reserved = CASE WHEN cost_unit IN ('', ?)"
        "  THEN max(0.0, cost_reserved - ?) ELSE cost_reserved END,"
        " cost_used = CASE WHEN cost_unit IN ('', ?) THEN cost_used + ? ELSE cost_used END"
        " WHERE tenant = ? AND period_start = ? AND period_end = ?",
        (
            int(row["shots_reserved"]),
            int(row["shots_used"]),
            row["cost_unit"],
            float(row["cost_reserved"]),
            row["cost_unit"],
            float(row["cost_used"]),
            row["tenant"],
            row["period_start"],
            row["period_end"],
        ),
    )


# Adds a reservation to the period's totals. A cost in a unit other than the row's starts
# that unit's sums at zero; a job without a unit ("": no cost quota) adds none and leaves it.
_RESERVE_TOTALS_SQL: Final = (
    "INSERT INTO quota_totals (tenant, period_start, period_end, shots_reserved,"
    " cost_reserved, cost_unit) VALUES (?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (tenant, period_start, period_end) DO UPDATE SET"
    " shots_reserved = shots_reserved + excluded.shots_reserved,"
    " cost_reserved = CASE WHEN excluded.cost_unit IN ('', cost_unit)"
    "  THEN cost_reserved + excluded.cost_reserved ELSE excluded.cost_reserved END,"
    " cost_used = CASE WHEN excluded.cost_unit IN ('', cost_unit) THEN cost_used ELSE 0.0 END,"
    " cost_unit = CASE WHEN excluded.cost_unit = '' THEN cost_unit ELSE excluded.cost_unit END"
)

# Ends a reservation and records what the job used, in one statement (see settle).
_SETTLE_SQL: Final = (
    "UPDATE quota_ledger SET state = ?, settled_at = ?,"
    " shots_used = CASE WHEN ? IS NOT NULL THEN ? WHEN ? THEN shots_reserved ELSE 0 END,"
    " cost_used = CASE WHEN cost_unit = ? THEN ? ELSE 0.0 END"
    " WHERE job_id = ? AND state = 'RESERVED'"
    " RETURNING tenant, period_start, period_end, shots_reserved, cost_reserved, shots_used,"
    " cost_used, cost_unit"
)


class SqliteTenants(SqliteAudit):
    """Tenant and usage methods of the Store protocol: writes on SqliteStore's writer thread,
    reads on its reader threads."""

    async def create_tenant(self, tenant: StoredTenant) -> bool:
        """Inserts a tenant; False (nothing changed) when the id exists."""

        def op(conn: sqlite3.Connection) -> bool:
            cursor = conn.execute(
                f"INSERT OR IGNORE INTO tenants ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",
                (
                    tenant.id,
                    tenant.display_name,
                    tenant.policy_json,
                    tenant.etag,
                    to_us(tenant.created_at),
                    to_us(tenant.updated_at),
                ),
            )
            return cursor.rowcount == 1

        # CreateTenant's audit record commits with the tenant (issue 11, audit).
        return await self._audited(Effect.ADMIN, op, admin_changed(f"tenants/{tenant.id}"))

    async def get_tenant(self, tenant_id: str) -> StoredTenant | None:
        def op(conn: sqlite3.Connection) -> StoredTenant | None:
            row = conn.execute(
                f"SELECT {_COLUMNS} FROM tenants WHERE id = ?", (tenant_id,)
            ).fetchone()
            return None if row is None else _tenant(row)

        return await self._call(op, readonly=True)

    async def list_tenants(
        self, *, after: str | None = None, limit: int = 50
    ) -> list[StoredTenant]:
        """Tenants by id, after `after`."""

        def op(conn: sqlite3.Connection) -> list[StoredTenant]:
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM tenants WHERE id > ? ORDER BY id LIMIT ?",
                (after or "", limit),
            ).fetchall()
            return [_tenant(r) for r in rows]

        return await self._call(op, readonly=True)

    async def update_tenant(self, tenant: StoredTenant, expected_etag: str) -> StoredTenant | None:
        """Compare and set on the etag: None when the stored one differs or the tenant is
        gone."""

        def op(conn: sqlite3.Connection) -> StoredTenant | None:
            row = conn.execute(
                "UPDATE tenants SET display_name = ?, policy = ?, etag = ?, updated_at = ?"
                f" WHERE id = ? AND etag = ? RETURNING {_COLUMNS}",
                (
                    tenant.display_name,
                    tenant.policy_json,
                    tenant.etag,
                    to_us(tenant.updated_at),
                    tenant.id,
                    expected_etag,
                ),
            ).fetchone()
            return None if row is None else _tenant(row)

        return await self._audited(Effect.ADMIN, op, admin_changed(f"tenants/{tenant.id}"))

    async def tenant_usage(
        self, tenant: str, period_start: datetime, period_end: datetime, cost_unit: str = ""
    ) -> TenantUsageRecord:
        def op(conn: sqlite3.Connection) -> TenantUsageRecord:
            row = conn.execute(
                "SELECT shots_reserved, shots_used, cost_reserved, cost_used, cost_unit"
                " FROM quota_totals"
                " WHERE tenant = ? AND period_start = ? AND period_end = ?",
                (tenant, to_us(period_start), to_us(period_end)),
            ).fetchone()
            queued = _queued_jobs(conn, tenant)
            sessions = open_sessions(conn, tenant)
            if row is None:
                return TenantUsageRecord(queued_jobs=int(queued), open_sessions=int(sessions))
            # Sums in another unit than asked for are none of it.
            in_unit = cost_unit == "" or row["cost_unit"] in ("", cost_unit)
            cost_reserved = float(row["cost_reserved"]) if in_unit else 0.0
            return TenantUsageRecord(
                shots_used=int(row["shots_used"]),
                shots_reserved=int(row["shots_reserved"]),
                cost_used=float(row["cost_used"]) if in_unit else 0.0,
                cost_reserved=cost_reserved if cost_reserved > _COST_EPSILON else 0.0,
                queued_jobs=int(queued),
                open_sessions=int(sessions),
            )

        return await self._call(op, readonly=True)
