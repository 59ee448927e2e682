"""asyncpg queries for profiles (migration 0006), mixed into `repository.Repository`."""
from datetime import datetime
from uuid import UUID

import asyncpg

_VISIBLE = "deleted_at IS NULL"


class ProfileQueries:
    conn: asyncpg.Connection

    async def insert_profile(self, *, profile_id: UUID, tenant_id: UUID, name: str | None) -> asyncpg.Record:
        return await self.conn.fetchrow(
            "INSERT INTO profiles (id, tenant_id, name) VALUES ($1, $2, $3) RETURNING *", profile_id, tenant_id, name)

    async def get_profile(self, *, tenant_id: UUID, profile_id: UUID) -> asyncpg.Record | None:
        return await self.conn.fetchrow(
            f"SELECT * FROM profiles WHERE id = $1 AND tenant_id = $2 AND {_VISIBLE}", profile_id, tenant_id)

    async def list_profiles(self, *, tenant_id: UUID, limit: int,
                            after: tuple[datetime, UUID] | None) -> list[asyncpg.Record]:
        return await self.conn.fetch(
            f"""
            SELECT * FROM profiles
             WHERE tenant_id = $1 AND {_VISIBLE}
               AND ($2::timestamptz IS NULL OR (created_at, id) < ($2, $3::uuid))
             ORDER BY created_at DESC, id DESC
             LIMIT $4
            """,
            tenant_id, after[0] if after else None, after[1] if after else None, limit)

    async def lock_profile_persist(self, *, tenant_id: UUID, profile_id: UUID, session_id: UUID) -> bool:
        """Take the persisting-use lock (atomically: one holder); a retry of the holder gets it again."""
        return await self.conn.fetchval(
            f"""
            UPDATE profiles SET persist_session_id = $3, persist_locked_at = clock_timestamp()
             WHERE id = $1 AND tenant_id = $2 AND {_VISIBLE}
               AND (persist_session_id IS NULL OR persist_session_id = $3)
            RETURNING true
            """,
            profile_id, tenant_id, session_id) or False

    async def insert_profile_use(self, *, session_id: UUID, profile_id: UUID, tenant_id: UUID, persist: bool,
                                 isolation: str, version: int | None) -> None:
        await self.conn.execute(
            """
            INSERT INTO profile_uses (session_id, profile_id, tenant_id, persist, isolation, version)
            VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (session_id) DO NOTHING
            """,
            session_id, profile_id, tenant_id, persist, isolation, version)

    async def claim_profile_save(self, *, session_id: UUID) -> asyncpg.Record | None:
        """The session's use, now 'saving' (a redelivered end retries a save cut short), with its
        profile's row; None if it has none or it is done."""
        return await self.conn.fetchrow(
            """
            WITH use AS (UPDATE profile_uses SET state = 'saving'
                          WHERE session_id = $1 AND state IN ('active', 'saving') RETURNING *)
            SELECT use.session_id, use.persist, use.isolation, use.version AS started_version,
                   p.id AS profile_id, p.tenant_id, p.origins, p.current_version, p.deleted_at
              FROM use JOIN profiles p ON p.id = use.profile_id
            """,
            session_id)

    async def finish_profile_use(self, *, session_id: UUID) -> None:
        """The use is over: its lock (if it held it) released."""
        await self.conn.execute("UPDATE profile_uses SET state = 'done' WHERE session_id = $1", session_id)
        await self.conn.execute(
            "UPDATE profiles SET persist_session_id = NULL, persist_locked_at = NULL WHERE persist_session_id = $1",
            session_id)

    async def drop_profile_use(self, *, session_id: UUID) -> None:
        """A lease that failed: no use, no lock."""
        await self.conn.execute("DELETE FROM profile_uses WHERE session_id = $1", session_id)
        await self.conn.execute(
            "UPDATE profiles SET persist_session_id = NULL, persist_locked_at = NULL WHERE persist_session_id = $1",
            session_id)

    async def profile_version(self, *, profile_id: UUID, version: int) -> asyncpg.Record | None:
        return await self.conn.fetchrow(
            "SELECT * FROM profile_versions WHERE profile_id = $1 AND version = $2", profile_id, version)

    async def reserve_profile_version(self, *, profile_id: UUID) -> int | None:
        """A version number no other save of this profile gets (None if the profile is gone)."""
        return await self.conn.fetchval(
            f"UPDATE profiles SET next_version = next_version + 1 WHERE id = $1 AND {_VISIBLE}"
            " RETURNING next_version - 1", profile_id)

    async def switch_profile_version(self, *, profile_id: UUID, version: int, blob_key: str, size_bytes: int,
                                     key_id: str, session_id: UUID, origins: list[str], has_directory: bool,
                                     keep: int) -> list[str] | None:
        """Record the written version and make it current; the blob keys of versions beyond the
        last `keep` and of saves cut short since the previous version (deleted from the store
        after the commit). None if the profile was deleted."""
        before = await self.conn.fetchrow(
            f"SELECT tenant_id, current_version FROM profiles WHERE id = $1 AND {_VISIBLE} FOR UPDATE", profile_id)
        if before is None:
            return None
        await self.conn.execute(
            """
            UPDATE profiles SET current_version = $2, size_bytes = $3, last_session_id = $4, origins = $5,
                                has_directory = $6, updated_at = clock_timestamp()
             WHERE id = $1
            """,
            profile_id, version, size_bytes, session_id, origins, has_directory)
        cut_short = [f"{before['tenant_id']}/{profile_id}/{v}" for v in range((before["current_version"] or 0) + 1, version)]
        await self.conn.execute(
            "INSERT INTO profile_versions (profile_id, version, blob_key, size_bytes, key_id) VALUES ($1, $2, $3, $4, $5)",
            profile_id, version, blob_key, size_bytes, key_id)
        rows = await self.conn.fetch(
            """
            DELETE FROM profile_versions
             WHERE profile_id = $1 AND version NOT IN (SELECT version FROM profile_versions WHERE profile_id = $1
                                                        ORDER BY version DESC LIMIT $2)
            RETURNING blob_key
            """,
            profile_id, keep)
        return [r["blob_key"] for r in rows] + cut_short

    async def touch_profile(self, *, profile_id: UUID, session_id: UUID) -> None:
        """A read-only use, or a persisting one that saved nothing: the last session still changes."""
        await self.conn.execute("UPDATE profiles SET last_session_id = $2 WHERE id = $1", profile_id, session_id)

    async def mark_profile_deleted(self, *, tenant_id: UUID, profile_id: UUID) -> str | None:
        """"deleted", "in_use" (a persisting session holds it), or None (no such profile of the tenant)."""
        return await self.conn.fetchval(
            f"""
            WITH target AS (SELECT id, persist_session_id FROM profiles
                             WHERE id = $1 AND tenant_id = $2 AND {_VISIBLE} FOR UPDATE),
                 gone AS (UPDATE profiles SET deleted_at = clock_timestamp()
                           WHERE id = (SELECT id FROM target WHERE persist_session_id IS NULL) RETURNING 1)
            SELECT CASE WHEN EXISTS (SELECT 1 FROM gone) THEN 'deleted'
                        WHEN EXISTS (SELECT 1 FROM target) THEN 'in_use' END
            """,
            profile_id, tenant_id)

    async def deleted_profiles(self, *, limit: int) -> list[UUID]:
        rows = await self.conn.fetch("SELECT id FROM profiles WHERE deleted_at IS NOT NULL ORDER BY deleted_at"
                                     " LIMIT $1", limit)
        return [r["id"] for r in rows]

    async def profile_blob_keys(self, *, profile_id: UUID) -> list[str]:
        """Every key a version of the profile was ever given (a save cut short left one unrecorded)."""
        row = await self.conn.fetchrow("SELECT tenant_id, next_version FROM profiles WHERE id = $1", profile_id)
        if row is None:
            return []
        return [f"{row['tenant_id']}/{profile_id}/{v}" for v in range(1, row["next_version"])]

    async def purge_profile(self, *, profile_id: UUID) -> None:
        """The rows of a deleted profile whose blobs are gone (versions cascade)."""
        await self.conn.execute("DELETE FROM profile_uses WHERE profile_id = $1 AND state = 'done'", profile_id)
        await self.conn.execute("DELETE FROM profiles WHERE id = $1 AND deleted_at IS NOT NULL", profile_id)

    async def set_tenant_canceled(self, *, tenant_id: UUID, canceled: bool) -> None:
        await self.conn.execute(
            "UPDATE tenants SET canceled_at = CASE WHEN $2 THEN coalesce(canceled_at, now()) END WHERE tenant_id = $1",
            tenant_id, canceled)

    async def expire_canceled_profiles(self, *, retention_s: float) -> int:
        """Profiles of tenants canceled longer ago than the retention: deleted (the sweep purges them)."""
        status = await self.conn.execute(
            f"""
            UPDATE profiles p SET deleted_at = clock_timestamp(), persist_session_id = NULL
              FROM tenants t
             WHERE t.tenant_id = p.tenant_id AND p.{_VISIBLE}
               AND t.canceled_at IS NOT NULL AND t.canceled_at <= now() - make_interval(secs => $1)
            """,
            retention_s)
        return int(status.split()[-1])

    async def stale_profile_uses(self, *, older_than_s: float) -> list[UUID]:
        """Active uses whose session has no live browser or context any more (a lease never
        confirmed, a browser gone without an end): their locks are released."""
        rows = await self.conn.fetch(
            """
            SELECT u.session_id FROM profile_uses u
             WHERE u.state = 'active' AND u.created_at <= now() - make_interval(secs => $1)
               AND NOT EXISTS (SELECT 1 FROM browsers b WHERE b.session_id = u.session_id
                                AND b.state IN ('launching', 'leased'))
               AND NOT EXISTS (SELECT 1 FROM contexts c WHERE c.session_id = u.session_id
                                AND c.state IN ('creating', 'active'))
            """,
            older_than_s)
        return [r["session_id"] for r in rows]
