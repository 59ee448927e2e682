"""The sessions schema's SQL: tenants and allowances, API keys, sessions, idempotency keys, the
operator's views. Nothing else in the service writes SQL (the dashboard's own tables: dashboard/repository.py)."""
from datetime import datetime
from uuid import UUID

import asyncpg

from services.sessions.domain import Cursor

_TENANT_OVERVIEW = """
    SELECT t.tenant_id, t.plan, t.status, t.provisioned, t.max_concurrent_sessions, t.max_session_seconds,
           a.period_start, a.period_end,
           coalesce(a.credits_granted, 0) AS credits_granted, coalesce(a.credits_used, 0) AS credits_used,
           (SELECT count(*) FROM sessions s
             WHERE s.tenant_id = t.tenant_id AND s.status IN ('starting', 'running')) AS sessions_running,
           (SELECT count(*) FROM api_keys k
             WHERE k.tenant_id = t.tenant_id AND k.revoked_at IS NULL) AS api_keys
      FROM tenants t
      LEFT JOIN allowances a ON a.tenant_id = t.tenant_id AND a.period_start = t.current_period_start
"""


class Repository:
    """SQL of the sessions schema, on one connection (the unit of work's); keyword-only methods."""

    def __init__(self, conn: asyncpg.Connection):
        self.conn = conn

    # --- tenants and allowances -------------------------------------------------------------
    async def upsert_tenant(self, *, tenant_id: UUID, plan: str, max_concurrent: int,
                            max_session_seconds: int, provisioned: bool = False) -> None:
        await self.conn.execute(
            """
            INSERT INTO tenants (tenant_id, plan, provisioned, max_concurrent_sessions, max_session_seconds)
            VALUES ($1, $2, $3, $4, $5)
            ON CONFLICT (tenant_id) DO UPDATE
               SET plan = EXCLUDED.plan,
                   provisioned = tenants.provisioned OR EXCLUDED.provisioned,
                   max_concurrent_sessions = EXCLUDED.max_concurrent_sessions,
                   max_session_seconds = EXCLUDED.max_session_seconds,
                   updated_at = now()
            """,
            tenant_id, plan, provisioned, max_concurrent, max_session_seconds,
        )

    async def open_period(self, *, tenant_id: UUID, period_start: datetime,
                          period_end: datetime, credits: int) -> None:
        """Grant a period's credits; a redelivered grant keeps the period's usage."""
        await self.conn.execute(
            """
            INSERT INTO allowances (tenant_id, period_start, period_end, credits_granted)
            VALUES ($1, $2, $3, $4)
            ON CONFLICT (tenant_id, period_start) DO UPDATE
               SET period_end = EXCLUDED.period_end, credits_granted = EXCLUDED.credits_granted
            """,
            tenant_id, period_start, period_end, credits,
        )
        # Only the newest period is current; a late grant for an older period does not reactivate.
        await self.conn.execute(
            """
            UPDATE tenants
               SET current_period_start = $2, status = 'active', updated_at = now()
             WHERE tenant_id = $1 AND (current_period_start IS NULL OR current_period_start < $2)
            """,
            tenant_id, period_start,
        )

    async def mark_deprovisioned(self, *, tenant_id: UUID) -> None:
        """Only while canceled: a tenant that subscribed again since is being provisioned anew."""
        await self.conn.execute("UPDATE tenants SET provisioned = false, updated_at = now()"
                           " WHERE tenant_id = $1 AND status = 'canceled'", tenant_id)

    async def set_tenant_status(self, *, tenant_id: UUID, status: str) -> None:
        await self.conn.execute("UPDATE tenants SET status = $2, updated_at = now() WHERE tenant_id = $1",
                           tenant_id, status)

    async def get_tenant(self, *, tenant_id: UUID, for_update: bool = False):
        lock = " FOR UPDATE" if for_update else ""
        return await self.conn.fetchrow(f"SELECT * FROM tenants WHERE tenant_id = $1{lock}", tenant_id)

    async def count_live_sessions(self, *, tenant_id: UUID) -> int:
        return await self.conn.fetchval(
            "SELECT count(*) FROM sessions WHERE tenant_id = $1 AND status IN ('starting', 'running')",
            tenant_id)

    async def debit_credit(self, *, tenant_id: UUID, period_start: datetime) -> int | None:
        """Take one credit, never below zero; the remaining credits, or None when there are none."""
        return await self.conn.fetchval(
            """
            UPDATE allowances SET credits_used = credits_used + 1
             WHERE tenant_id = $1 AND period_start = $2 AND credits_used < credits_granted
            RETURNING credits_granted - credits_used
            """,
            tenant_id, period_start,
        )

    async def refund_credit(self, *, tenant_id: UUID, period_start: datetime) -> None:
        await self.conn.execute(
            """
            UPDATE allowances SET credits_used = credits_used - 1
             WHERE tenant_id = $1 AND period_start = $2 AND credits_used > 0
            """,
            tenant_id, period_start,
        )

    async def current_allowance(self, *, tenant_id: UUID):
        return await self.conn.fetchrow(
            """
            SELECT a.* FROM allowances a JOIN tenants t
              ON t.tenant_id = a.tenant_id AND t.current_period_start = a.period_start
             WHERE a.tenant_id = $1
            """,
            tenant_id,
        )

    # --- api keys -----------------------------------------------------------------------------
    async def insert_api_key(self, *, key_id: UUID, tenant_id: UUID, key_hash: bytes,
                             prefix: str) -> None:
        await self.conn.execute("INSERT INTO api_keys (id, tenant_id, key_hash, prefix) VALUES ($1, $2, $3, $4)",
                           key_id, tenant_id, key_hash, prefix)

    async def count_live_api_keys(self, *, tenant_id: UUID) -> int:
        return await self.conn.fetchval("SELECT count(*) FROM api_keys WHERE tenant_id = $1 AND revoked_at IS NULL",
                                   tenant_id)

    async def revoke_api_key(self, *, key_id: UUID) -> bytes | None:
        return await self.conn.fetchval(
            "UPDATE api_keys SET revoked_at = coalesce(revoked_at, now()) WHERE id = $1 RETURNING key_hash", key_id)

    async def find_api_key(self, *, key_hash: bytes):
        """The live key with this hash; None if unknown or revoked. A read: a wrong key writes nothing."""
        return await self.conn.fetchrow(
            "SELECT id, tenant_id, last_used_at FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL", key_hash)

    async def touch_api_key(self, *, key_id: UUID) -> None:
        await self.conn.execute("UPDATE api_keys SET last_used_at = now() WHERE id = $1", key_id)

    # --- sessions -----------------------------------------------------------------------------
    async def insert_session(self, *, session_id: UUID, tenant_id: UUID, browser: str,
                             plan: str, timeout_s: int, idle_timeout_s: int, keep_alive: bool,
                             token_hash: bytes, period_start: datetime, remaining_credits: int,
                             isolation: str = "browser", profile_id: UUID | None = None,
                             profile_persist: bool | None = None) -> None:
        await self.conn.execute(
            """
            INSERT INTO sessions (id, tenant_id, status, browser, plan, timeout_s, idle_timeout_s, keep_alive,
                                  token_hash, period_start, remaining_credits, isolation, profile_id, profile_persist,
                                  profile_save)
            VALUES ($1, $2, 'starting', $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13,
                    CASE WHEN $12::uuid IS NULL THEN NULL WHEN $13 THEN 'pending' ELSE 'not_saved' END)
            """,
            session_id, tenant_id, browser, plan, timeout_s, idle_timeout_s, keep_alive, token_hash,
            period_start, remaining_credits, isolation, profile_id, profile_persist,
        )

    async def set_profile_save(self, *, session_id: UUID, outcome: str, message: str | None) -> None:
        """What warm_pool said of a persisting session's save (once; a redelivery changes nothing)."""
        await self.conn.execute(
            """
            UPDATE sessions SET profile_save = $2, profile_save_message = $3
             WHERE id = $1 AND profile_persist AND profile_save = 'pending'
            """,
            session_id, outcome, message)

    async def mark_running(self, *, session_id: UUID, browser_id: UUID, browser_ws_url: str,
                           warm: bool, context_id: str | None = None, downloads_path: str | None = None):
        return await self.conn.fetchrow(
            """
            UPDATE sessions
               SET status = 'running', browser_id = $2, browser_ws_url = $3, warm = $4,
                   context_id = $5, downloads_path = $6,
                   started_at = now(), last_activity_at = now(),
                   expires_at = now() + make_interval(secs => timeout_s)
             WHERE id = $1 AND status = 'starting'
               AND NOT EXISTS (SELECT 1 FROM crashed_leases WHERE session_id = $1)
            RETURNING *
            """,
            session_id, browser_id, browser_ws_url, warm, context_id, downloads_path,
        )

    async def mark_failed(self, *, session_id: UUID, failure: str):
        return await self.conn.fetchrow(
            """
            UPDATE sessions SET status = 'failed', failure = $2, ended_at = now()
             WHERE id = $1 AND status = 'starting'
            RETURNING *
            """,
            session_id, failure,
        )

    async def get_session(self, *, session_id: UUID, tenant_id: UUID | None = None,
                          for_update: bool = False):
        lock = " FOR UPDATE" if for_update else ""
        if tenant_id is None:
            return await self.conn.fetchrow(f"SELECT * FROM sessions WHERE id = $1{lock}", session_id)
        return await self.conn.fetchrow(f"SELECT * FROM sessions WHERE id = $1 AND tenant_id = $2{lock}",
                                   session_id, tenant_id)

    async def complete_session(self, *, session_id: UUID, ended_at: datetime,
                               duration_ms: int, cost, end_reason: str):
        return await self.conn.fetchrow(
            """
            UPDATE sessions
               SET status = 'completed', ended_at = $2, duration_ms = $3, cost = $4, end_reason = $5
             WHERE id = $1 AND status = 'running'
            RETURNING *
            """,
            session_id, ended_at, duration_ms, cost, end_reason,
        )

    async def list_sessions(self, *, tenant_id: UUID, status: str | None, limit: int,
                            after: Cursor | None):
        return await self.conn.fetch(
            """
            SELECT * FROM sessions
             WHERE tenant_id = $1
               AND ($2::text IS NULL OR status = $2)
               AND ($3::timestamptz IS NULL OR (created_at, id) < ($3, $4::uuid))
             ORDER BY created_at DESC, id DESC
             LIMIT $5
            """,
            tenant_id, status, after.created_at if after else None, after.id if after else None, limit,
        )

    async def running_ids(self, *, tenant_id: UUID) -> list[UUID]:
        rows = await self.conn.fetch("SELECT id FROM sessions WHERE tenant_id = $1 AND status = 'running'", tenant_id)
        return [r["id"] for r in rows]

    async def sessions_for_browser(self, *, browser_id: UUID) -> list[UUID]:
        """The running sessions a browser hosts (one in browser mode, its contexts' in context mode)."""
        rows = await self.conn.fetch("SELECT id FROM sessions WHERE browser_id = $1 AND status = 'running'", browser_id)
        return [r["id"] for r in rows]

    async def touch_sessions(self, *, session_ids: list[UUID]) -> None:
        await self.conn.execute("UPDATE sessions SET last_activity_at = now() WHERE id = ANY($1::uuid[])"
                           " AND status = 'running'", session_ids)

    async def client_connected(self, *, session_id: UUID, max_relays: int) -> str:
        """Count a relay in: "ok"; "full" when `max_relays` are open already (on any replica: the
        count is this row's, and a concurrent update re-checks it under the row lock); "ended"."""
        return await self.conn.fetchval(
            """
            WITH target AS (SELECT status FROM sessions WHERE id = $1),
                 counted AS (UPDATE sessions
                                SET connections = connections + 1, disconnected_at = NULL, last_activity_at = now()
                              WHERE id = $1 AND status = 'running' AND connections < $2
                             RETURNING 1)
            SELECT CASE WHEN EXISTS (SELECT 1 FROM counted) THEN 'ok'
                        WHEN (SELECT status FROM target) = 'running' THEN 'full'
                        ELSE 'ended' END
            """,
            session_id, max_relays)

    async def client_disconnected(self, *, session_id: UUID) -> None:
        await self.conn.execute(
            """
            UPDATE sessions
               SET connections = greatest(connections - 1, 0),
                   disconnected_at = CASE WHEN connections <= 1 THEN now() ELSE disconnected_at END
             WHERE id = $1
            """,
            session_id,
        )

    async def next_due(self, *, disconnect_grace_s: float, stuck_after_s: float):
        """One session the reaper must end or fail now, locked, with why; replicas skip each other's."""
        return await self.conn.fetchrow(
            """
            SELECT id, CASE
                     WHEN status = 'starting' THEN 'stuck'
                     WHEN expires_at <= now() THEN 'timeout'
                     WHEN last_activity_at <= now() - make_interval(secs => idle_timeout_s) THEN 'idle'
                     ELSE 'disconnected' END AS why
              FROM sessions
             WHERE (status = 'starting' AND created_at <= now() - make_interval(secs => $2))
                OR (status = 'running' AND (
                        expires_at <= now()
                     OR last_activity_at <= now() - make_interval(secs => idle_timeout_s)
                     OR (NOT keep_alive AND connections = 0
                         AND disconnected_at <= now() - make_interval(secs => $1))))
             LIMIT 1
               FOR UPDATE SKIP LOCKED
            """,
            disconnect_grace_s, stuck_after_s,
        )

    # --- idempotency --------------------------------------------------------------------------
    async def claim_idempotency_key(self, *, tenant_id: UUID, key_hash: bytes,
                                    request_hash: bytes, session_id: UUID, token_masked: bytes,
                                    ttl_s: int) -> bool:
        """True if this request now owns the key (new, or the old one expired)."""
        return bool(await self.conn.fetchval(
            """
            INSERT INTO idempotency_keys (tenant_id, key_hash, request_hash, session_id, token_masked)
            VALUES ($1, $2, $3, $4, $5)
            ON CONFLICT (tenant_id, key_hash) DO UPDATE
               SET request_hash = EXCLUDED.request_hash, session_id = EXCLUDED.session_id,
                   token_masked = EXCLUDED.token_masked, created_at = now()
             WHERE idempotency_keys.created_at <= now() - make_interval(secs => $6)
            RETURNING 1
            """,
            tenant_id, key_hash, request_hash, session_id, token_masked, ttl_s,
        ))

    async def get_idempotency_key(self, *, tenant_id: UUID, key_hash: bytes):
        return await self.conn.fetchrow("SELECT * FROM idempotency_keys WHERE tenant_id = $1 AND key_hash = $2",
                                   tenant_id, key_hash)

    async def delete_expired_idempotency_keys(self, *, ttl_s: int) -> None:
        await self.conn.execute("DELETE FROM idempotency_keys WHERE created_at <= now() - make_interval(secs => $1)",
                           ttl_s)

    async def record_crashed_lease(self, *, session_id: UUID, browser_id: UUID) -> None:
        await self.conn.execute("INSERT INTO crashed_leases (session_id, browser_id) VALUES ($1, $2)"
                                " ON CONFLICT DO NOTHING", session_id, browser_id)

    async def delete_old_crashed_leases(self, *, older_than_s: int) -> None:
        await self.conn.execute("DELETE FROM crashed_leases WHERE crashed_at <= now() - make_interval(secs => $1)",
                                older_than_s)

    async def release_idempotency_key(self, *, session_id: UUID) -> None:
        """A create that failed keeps no result: a retry with the same key tries again."""
        await self.conn.execute("DELETE FROM idempotency_keys WHERE session_id = $1", session_id)

    # --- operator views -----------------------------------------------------------------------
    async def list_tenants(self, *, limit: int):
        return await self.conn.fetch(_TENANT_OVERVIEW + " ORDER BY t.updated_at DESC, t.tenant_id LIMIT $1", limit)

    async def tenant_overview(self, *, tenant_id: UUID):
        return await self.conn.fetchrow(_TENANT_OVERVIEW + " WHERE t.tenant_id = $1", tenant_id)

    async def list_all_sessions(self, *, tenant_id: UUID | None, status: str | None, limit: int):
        return await self.conn.fetch(
            """
            SELECT * FROM sessions
             WHERE ($1::uuid IS NULL OR tenant_id = $1)
               AND ($2::text IS NULL OR status = $2)
             ORDER BY created_at DESC, id DESC
             LIMIT $3
            """,
            tenant_id, status, limit,
        )

    async def count_running(self) -> int:
        return await self.conn.fetchval("SELECT count(*) FROM sessions WHERE status = 'running'")
