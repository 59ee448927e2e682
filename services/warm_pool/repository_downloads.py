"""asyncpg queries for kept downloads (migration 0007): `DownloadsRepository(conn)`."""
from datetime import datetime
from uuid import UUID

import asyncpg


class DownloadsRepository:
    def __init__(self, conn: asyncpg.Connection):
        self.conn = conn

    async def lock_session(self, *, session_id: UUID) -> None:
        """One collection of a session's files at a time (until the transaction ends)."""
        await self.conn.execute("SELECT pg_advisory_xact_lock(hashtext('warm_pool.downloads.' || $1::uuid::text))",
                                session_id)

    async def sessions_of_browser(self, *, browser_id: UUID) -> list[asyncpg.Record]:
        """(tenant_id, session_id) of every session the browser served: a browser's own session,
        or a context host's context sessions."""
        return await self.conn.fetch(
            "SELECT tenant_id, session_id FROM browsers WHERE id = $1 AND session_id IS NOT NULL"
            " UNION SELECT tenant_id, session_id FROM contexts WHERE browser_id = $1", browser_id)

    async def kept_of_session(self, *, session_id: UUID) -> list[asyncpg.Record]:
        """Every file recorded for the session (kept or not), so a later collection stays unique and capped."""
        return await self.conn.fetch("SELECT name, size_bytes, dropped FROM downloads WHERE session_id = $1",
                                     session_id)

    async def record(self, *, tenant_id: UUID, session_id: UUID, name: str, size_bytes: int,
                     dropped: str | None, retention_s: float) -> None:
        await self.conn.execute(
            "INSERT INTO downloads (tenant_id, session_id, name, size_bytes, dropped, expires_at)"
            " VALUES ($1, $2, $3, $4, $5, clock_timestamp() + make_interval(secs => $6))",
            tenant_id, session_id, name, size_bytes, dropped, retention_s)

    async def list_kept(self, *, tenant_id: UUID, session_id: UUID) -> list[asyncpg.Record]:
        return await self.conn.fetch(
            "SELECT name, size_bytes, created_at FROM downloads WHERE tenant_id = $1 AND session_id = $2"
            " AND dropped IS NULL AND expires_at > clock_timestamp() ORDER BY created_at, name",
            tenant_id, session_id)

    async def get_kept(self, *, tenant_id: UUID, session_id: UUID, name: str) -> asyncpg.Record | None:
        return await self.conn.fetchrow(
            "SELECT name, size_bytes, created_at FROM downloads WHERE tenant_id = $1 AND session_id = $2"
            " AND name = $3 AND dropped IS NULL AND expires_at > clock_timestamp()",
            tenant_id, session_id, name)

    async def delete_expired(self, *, limit: int = 1000) -> list[asyncpg.Record]:
        """Rows past their expiry, deleted; what they were (the caller removes their files)."""
        return await self.conn.fetch(
            """
            DELETE FROM downloads WHERE ctid IN (SELECT ctid FROM downloads WHERE expires_at <= clock_timestamp()
                                                   LIMIT $1)
            RETURNING tenant_id, session_id, name, size_bytes, dropped
            """, limit)

    async def sessions_with_rows(self, *, session_ids: list[UUID]) -> set[UUID]:
        rows = await self.conn.fetch("SELECT DISTINCT session_id FROM downloads WHERE session_id = ANY($1::uuid[])",
                                     session_ids)
        return {r["session_id"] for r in rows}

    async def session_tenant(self, *, session_id: UUID) -> UUID | None:
        return await self.conn.fetchval("SELECT tenant_id FROM downloads WHERE session_id = $1 LIMIT 1", session_id)
