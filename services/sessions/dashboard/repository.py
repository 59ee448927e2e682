"""Queries the dashboard adds to the sessions schema: its reads, and the sign-in tables it owns
(API keys are written through sessions.repository)."""
from datetime import datetime
from decimal import Decimal
from uuid import UUID

import asyncpg


class DashboardRepository:
    """SQL of the dashboard's tables (sign-ins, links) and its reads of sessions and API keys."""

    def __init__(self, conn: asyncpg.Connection):
        self.conn = conn

    async def list_api_keys(self, *, tenant_id: UUID):
        return await self.conn.fetch(
            """
            SELECT id, prefix, key_hash, created_at, last_used_at, revoked_at
              FROM api_keys
             WHERE tenant_id = $1
             ORDER BY revoked_at IS NOT NULL, created_at DESC
            """,
            tenant_id,
        )

    async def api_key_tenant(self, *, key_id: UUID) -> UUID | None:
        return await self.conn.fetchval("SELECT tenant_id FROM api_keys WHERE id = $1", key_id)

    async def sessions_per_day(self, *, tenant_id: UUID, since: datetime):
        """Sessions started per UTC day and their duration so far (running ones up to now)."""
        return await self.conn.fetch(
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

    async def period_cost(self, *, tenant_id: UUID, period_start: datetime) -> Decimal:
        """What the completed sessions of this period cost (NUMERIC, summed in SQL)."""
        return await self.conn.fetchval(
            """
            SELECT coalesce(sum(cost), 0)
              FROM sessions
             WHERE tenant_id = $1 AND period_start = $2 AND status = 'completed'
            """,
            tenant_id, period_start,
        )

    # --- sign-in links and sign-ins (secrets as their hashes only) ------------------------------
    async def insert_link(self, *, token_hash: bytes, tenant_id: UUID, ttl_s: int):
        return await self.conn.fetchval(
            "INSERT INTO dashboard_links (token_hash, tenant_id, expires_at)"
            " VALUES ($1, $2, now() + make_interval(secs => $3)) RETURNING expires_at",
            token_hash, tenant_id, ttl_s)

    async def use_link(self, *, token_hash: bytes) -> UUID | None:
        """Mark a live link used and return its tenant; None if unknown, used, expired, or the
        tenant's subscription is canceled. Concurrent uses: the row lock lets one win."""
        return await self.conn.fetchval(
            """
            UPDATE dashboard_links l SET used_at = now()
              FROM tenants t
             WHERE l.token_hash = $1 AND l.used_at IS NULL AND l.expires_at > now()
               AND t.tenant_id = l.tenant_id AND t.status <> 'canceled'
            RETURNING l.tenant_id
            """,
            token_hash)

    async def insert_sign_in(self, *, sign_in_id: UUID, tenant_id: UUID, token_hash: bytes,
                             ttl_s: int):
        return await self.conn.fetchval(
            "INSERT INTO dashboard_sign_ins (id, tenant_id, token_hash, expires_at)"
            " VALUES ($1, $2, $3, now() + make_interval(secs => $4)) RETURNING expires_at",
            sign_in_id, tenant_id, token_hash, ttl_s)

    async def find_sign_in(self, *, token_hash: bytes):
        """The live sign-in with this hash (not ended, not expired, its tenant not canceled). A read."""
        return await self.conn.fetchrow(
            """
            SELECT s.id, s.tenant_id, s.last_used_at
              FROM dashboard_sign_ins s JOIN tenants t ON t.tenant_id = s.tenant_id
             WHERE s.token_hash = $1 AND s.ended_at IS NULL AND s.expires_at > now() AND t.status <> 'canceled'
            """,
            token_hash)

    async def touch_sign_in(self, *, sign_in_id: UUID) -> None:
        await self.conn.execute("UPDATE dashboard_sign_ins SET last_used_at = now() WHERE id = $1", sign_in_id)

    async def list_sign_ins(self, *, tenant_id: UUID):
        return await self.conn.fetch(
            """
            SELECT id, token_hash, created_at, expires_at, last_used_at FROM dashboard_sign_ins
             WHERE tenant_id = $1 AND ended_at IS NULL AND expires_at > now()
             ORDER BY created_at DESC
            """,
            tenant_id)

    async def end_sign_in(self, *, tenant_id: UUID, reason: str, sign_in_id: UUID | None = None,
                          token_hash: bytes | None = None) -> bool:
        """End one live sign-in of this tenant, chosen by id or by hash; False if there is none."""
        return bool(await self.conn.fetchval(
            """
            UPDATE dashboard_sign_ins SET ended_at = now(), end_reason = $2
             WHERE tenant_id = $1 AND ended_at IS NULL AND (id = $3 OR token_hash = $4)
            RETURNING 1
            """,
            tenant_id, reason, sign_in_id, token_hash))

    async def end_tenant_sign_ins(self, *, tenant_id: UUID, reason: str) -> int:
        """End all of a tenant's live sign-ins and drop its unused links; how many sign-ins ended."""
        await self.conn.execute("DELETE FROM dashboard_links WHERE tenant_id = $1 AND used_at IS NULL", tenant_id)
        ended = await self.conn.fetch(
            "UPDATE dashboard_sign_ins SET ended_at = now(), end_reason = $2"
            " WHERE tenant_id = $1 AND ended_at IS NULL RETURNING 1", tenant_id, reason)
        return len(ended)

    async def prune_sign_ins(self, *, keep_s: int) -> None:
        """Forget links and sign-ins that expired or ended more than `keep_s` ago."""
        await self.conn.execute("DELETE FROM dashboard_links WHERE expires_at < now() - make_interval(secs => $1)", keep_s)
        await self.conn.execute("DELETE FROM dashboard_sign_ins"
                           " WHERE least(ended_at, expires_at) < now() - make_interval(secs => $1)", keep_s)
