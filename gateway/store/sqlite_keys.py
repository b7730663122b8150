"""The API-keys repository of the SQLite store (migrations 9 and 13): a mixin of SqliteStore.

Only a key's hash is stored. Authentication reads a key by its prefix (the primary key) and
caches what it read (gateway.security.api_keys), so the store sees one read per key and cache
period, not one per RPC; last-used times arrive in batches (`touch_api_keys`).

Revoked keys are never deleted: listing a tenant's active keys walks an index of its unrevoked
keys only, and a tenant holds at most `max_unrevoked` of those (counted on that index), so a
page costs a reader thread a bounded scan however many keys the tenant ever revoked.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from datetime import datetime
from typing import Final

from gateway.domain.api_keys import ApiKeyPage, ApiKeyRecord, too_many_keys
from gateway.domain.audit import Effect
from gateway.store.sqlite_audit import SqliteAudit, api_key_changed
from gateway.store.sqlite_time import opt_from_us, opt_us, to_us

_COLUMNS: Final = (
    "prefix, tenant, sha256, display_name, role, created_at, expires_at, revoked_at, last_used_at"
)

# Migration 13. expires_at in the index: an expired key is skipped without reading its row.
UNREVOKED_INDEX_SQL: Final = """
    CREATE INDEX api_keys_unrevoked ON api_keys (tenant, prefix, expires_at)
        WHERE revoked_at IS NULL;
"""


def _row(row: sqlite3.Row) -> ApiKeyRecord:
    created = opt_from_us(row["created_at"])
    assert created is not None
    return ApiKeyRecord(
        prefix=str(row["prefix"]),
        tenant=str(row["tenant"]),
        sha256=str(row["sha256"]),
        display_name=str(row["display_name"]),
        role=str(row["role"]),
        created_at=created,
        expires_at=opt_from_us(row["expires_at"]),
        revoked_at=opt_from_us(row["revoked_at"]),
        last_used_at=opt_from_us(row["last_used_at"]),
    )


def _select(conn: sqlite3.Connection, prefix: str) -> ApiKeyRecord | None:
    row = conn.execute(f"SELECT {_COLUMNS} FROM api_keys WHERE prefix = ?", (prefix,)).fetchone()
    return None if row is None else _row(row)


def list_sql(
    tenant: str | None,
    *,
    active_at: datetime | None,
    after: tuple[str, str] | None,
    limit: int,
) -> tuple[str, list[object]]:
    """list_api_keys' query: one row more than `limit`, to tell whether a page follows."""
    where: list[str] = []
    params: list[object] = []
    # Active keys only: the unrevoked keys' index, whatever the planner would guess, so the
    # keys a tenant revoked are never walked (it has no statistics to prefer it with).
    source = "api_keys"
    if active_at is not None:
        source += " INDEXED BY api_keys_unrevoked"
        where.append("revoked_at IS NULL AND (expires_at IS NULL OR expires_at > ?)")
        params.append(to_us(active_at))
    if tenant is not None:
        where.append("tenant = ?")
        params.append(tenant)
    if after is not None:
        # Index ranges from the cursor: spelled `tenant > ? OR (tenant = ? AND prefix > ?)` it
        # was checked row by row, each page walking the keys from the first (quadratic over
        # all pages).
        if tenant is not None and after[0] == tenant:
            where.append("prefix > ?")
            params.append(after[1])
        else:
            where.append("(tenant, prefix) > (?, ?)")
            params.extend(after)
    sql = f"SELECT {_COLUMNS} FROM {source}"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY tenant, prefix LIMIT ?"
    params.append(limit + 1)
    return sql, params


class SqliteApiKeys(SqliteAudit):
    """API-key methods of the Store protocol: writes on SqliteStore's writer thread, reads on
    its reader threads."""

    async def create_api_key(
        self, key: ApiKeyRecord, *, max_unrevoked: int | None = None
    ) -> ApiKeyRecord:
        """Inserts a key (its prefix is random: a collision is an IntegrityError). Counting
        the tenant's unrevoked keys and inserting is one transaction.

        Raises:
            ResourceExhausted: API_KEY_LIMIT_REACHED, when the tenant already has
                `max_unrevoked` keys that are not revoked (expired ones included).
        """

        def op(conn: sqlite3.Connection) -> ApiKeyRecord:
            if max_unrevoked is not None:
                held = conn.execute(
                    "SELECT count(*) FROM api_keys INDEXED BY api_keys_unrevoked"
                    " WHERE tenant = ? AND revoked_at IS NULL",
                    (key.tenant,),
                ).fetchone()[0]
                if held >= max_unrevoked:
                    raise too_many_keys(key.tenant, max_unrevoked)
            conn.execute(
                f"INSERT INTO api_keys ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    key.prefix,
                    key.tenant,
                    key.sha256,
                    key.display_name,
                    key.role,
                    to_us(key.created_at),
                    opt_us(key.expires_at),
                    opt_us(key.revoked_at),
                    opt_us(key.last_used_at),
                ),
            )
            created = _select(conn, key.prefix)
            assert created is not None
            return created

        # CreateApiKey's audit record commits with the key (issue 11, audit).
        return await self._audited(Effect.ADMIN, op, api_key_changed)

    async def get_api_key(self, prefix: str) -> ApiKeyRecord | None:
        """The key with this prefix, whatever its state."""
        return await self._call(lambda conn: _select(conn, prefix), readonly=True)

    async def list_api_keys(
        self,
        tenant: str | None,
        *,
        active_at: datetime | None = None,
        after: tuple[str, str] | None = None,
        limit: int = 50,
    ) -> ApiKeyPage:
        """Keys by name (tenant, then prefix), after cursor `after`.

        Args:
            tenant: Only this tenant's keys; None: every tenant's.
            active_at: Only keys neither revoked nor expired at this time; None: all.
        """
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        sql, params = list_sql(tenant, active_at=active_at, after=after, limit=limit)

        def op(conn: sqlite3.Connection) -> ApiKeyPage:
            rows = conn.execute(sql, params).fetchall()
            keys = [_row(r) for r in rows[:limit]]
            more = len(rows) > limit
            return ApiKeyPage(keys, (keys[-1].tenant, keys[-1].prefix) if more else None)

        return await self._call(op, readonly=True)

    async def revoke_api_key(self, prefix: str, at: datetime) -> ApiKeyRecord | None:
        """Marks the key revoked at `at` (an already revoked key keeps its first time);
        None when there is no such key."""

        def op(conn: sqlite3.Connection) -> ApiKeyRecord | None:
            conn.execute(
                "UPDATE api_keys SET revoked_at = ? WHERE prefix = ? AND revoked_at IS NULL",
                (to_us(at), prefix),
            )
            return _select(conn, prefix)

        return await self._audited(Effect.ADMIN, op, api_key_changed)

    async def touch_api_keys(self, used: Mapping[str, datetime]) -> None:
        """Records last-used times, many keys in one transaction; a time never moves back."""
        if not used:
            return
        rows = [(to_us(at), prefix, to_us(at)) for prefix, at in used.items()]

        def op(conn: sqlite3.Connection) -> None:
            conn.executemany(
                "UPDATE api_keys SET last_used_at = ?"
                " WHERE prefix = ? AND (last_used_at IS NULL OR last_used_at < ?)",
                rows,
            )

        await self._call(op)
