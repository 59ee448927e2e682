from uuid import UUID

import asyncpg

from services.provisioner.domain import TenantSpec


async def upsert_tenant(conn: asyncpg.Connection, *, spec: TenantSpec, status: str) -> None:
    await conn.execute(
        """
        INSERT INTO tenants (tenant_id, namespace, plan, limits, status)
        VALUES ($1, $2, $3, $4, $5)
        ON CONFLICT (tenant_id) DO UPDATE
           SET plan = EXCLUDED.plan, limits = EXCLUDED.limits, status = EXCLUDED.status,
               last_error = NULL, updated_at = now()
        """,
        spec.tenant_id, spec.namespace, spec.plan, spec.limits.model_dump(), status,
    )


async def set_status(conn: asyncpg.Connection, *, tenant_id: UUID, status: str, error: str | None = None) -> None:
    await conn.execute(
        "UPDATE tenants SET status = $2, last_error = $3, updated_at = now() WHERE tenant_id = $1",
        tenant_id, status, error,
    )


async def get_tenant(conn: asyncpg.Connection, *, tenant_id: UUID) -> asyncpg.Record | None:
    return await conn.fetchrow("SELECT * FROM tenants WHERE tenant_id = $1", tenant_id)
