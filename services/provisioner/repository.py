"""asyncpg queries for the provisioner schema: `Repository(conn)`, one method per query, no side effects."""
from datetime import datetime
from uuid import UUID

import asyncpg

from services.provisioner.domain import TenantSpec


class Repository:
    def __init__(self, conn: asyncpg.Connection):
        self.conn = conn

    async def upsert_tenant(self, *, spec: TenantSpec, status: str) -> None:
        await self.conn.execute(
            """
            INSERT INTO tenants (tenant_id, namespace, plan, limits, status, desired)
            VALUES ($1, $2, $3, $4, $5, 'present')
            ON CONFLICT (tenant_id) DO UPDATE
               SET plan = EXCLUDED.plan, limits = EXCLUDED.limits, status = EXCLUDED.status,
                   desired = 'present', last_error = NULL, attempts = 0, updated_at = now()
            """,
            spec.tenant_id, spec.namespace, spec.plan, spec.limits.model_dump(), status,
        )

    async def set_status(self, *, tenant_id: UUID, status: str, error: str | None = None) -> None:
        await self.conn.execute(
            """
            UPDATE tenants
               SET status = $2, last_error = $3, updated_at = now(),
                   attempts = CASE WHEN $2 = 'failed' THEN attempts + 1 ELSE 0 END
             WHERE tenant_id = $1
            """,
            tenant_id, status, error,
        )

    async def mark_absent(self, *, tenant_id: UUID, canceled_at: datetime) -> None:
        await self.conn.execute(
            """
            UPDATE tenants
               SET desired = 'absent', status = 'deprovisioning', canceled_at = $2, updated_at = now()
             WHERE tenant_id = $1
            """,
            tenant_id, canceled_at,
        )

    async def get_tenant(self, *, tenant_id: UUID) -> asyncpg.Record | None:
        return await self.conn.fetchrow("SELECT * FROM tenants WHERE tenant_id = $1", tenant_id)

    async def list_tenants(self) -> list[asyncpg.Record]:
        return await self.conn.fetch(
            """
            SELECT *, extract(epoch FROM now() - updated_at) AS idle_seconds
              FROM tenants
             ORDER BY tenant_id
            """
        )

    async def count_by_status(self) -> dict[str, int]:
        rows = await self.conn.fetch("SELECT status, count(*) AS n FROM tenants GROUP BY status")
        return {r["status"]: r["n"] for r in rows}

    async def lock_tenant(self, *, tenant_id: UUID, wait: bool = True) -> bool:
        """Session-level advisory lock so a handler and the reconciler (of any replica) never act on one
        tenant at the same time. Released by `unlock_tenant` or when the connection closes."""
        if wait:
            await self.conn.execute("SELECT pg_advisory_lock(hashtextextended($1::uuid::text, 7))", tenant_id)
            return True
        return await self.conn.fetchval("SELECT pg_try_advisory_lock(hashtextextended($1::uuid::text, 7))", tenant_id)

    async def unlock_tenant(self, *, tenant_id: UUID) -> None:
        await self.conn.execute("SELECT pg_advisory_unlock(hashtextextended($1::uuid::text, 7))", tenant_id)

    async def seen(self, *, message_id: UUID, consumer: str) -> bool:
        """Was this message handled already (its inbox row), without recording it."""
        return bool(await self.conn.fetchval("SELECT 1 FROM inbox WHERE message_id = $1 AND consumer = $2",
                                             message_id, consumer))
