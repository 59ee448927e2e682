"""Read-only queries the dashboard adds to the sessions schema (writes reuse sessions.repository)."""
from datetime import datetime
from decimal import Decimal
from uuid import UUID

import asyncpg


async def list_api_keys(conn: asyncpg.Connection, *, tenant_id: UUID):
    return await conn.fetch(
        """
        SELECT id, prefix, key_hash, created_at, last_used_at, revoked_at
          FROM api_keys
         WHERE tenant_id = $1
         ORDER BY revoked_at IS NOT NULL, created_at DESC
        """,
        tenant_id,
    )


async def api_key_tenant(conn: asyncpg.Connection, *, key_id: UUID) -> UUID | None:
    return await conn.fetchval("SELECT tenant_id FROM api_keys WHERE id = $1", key_id)


async def sessions_per_day(conn: asyncpg.Connection, *, tenant_id: UUID, since: datetime):
    """Sessions started per UTC day and their duration so far (running ones up to now)."""
    return await conn.fetch(
        """
        SELECT (started_at AT TIME ZONE 'UTC')::date AS day,
               count(*) AS sessions,
               sum(coalesce(duration_ms,
                            (extract(epoch FROM now() - started_at) * 1000)::bigint)) AS duration_ms
          FROM sessions
         WHERE tenant_id = $1 AND started_at >= $2 AND status IN ('running', 'completed')
         GROUP BY day
         ORDER BY day
        """,
        tenant_id, since,
    )


async def period_cost(conn: asyncpg.Connection, *, tenant_id: UUID, period_start: datetime) -> Decimal:
    """What the completed sessions of this period cost (NUMERIC, summed in SQL)."""
    return await conn.fetchval(
        """
        SELECT coalesce(sum(cost), 0)
          FROM sessions
         WHERE tenant_id = $1 AND period_start = $2 AND status = 'completed'
        """,
        tenant_id, period_start,
    )
