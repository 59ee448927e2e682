"""asyncpg queries for the warm_pool schema: `Repository(conn)`, one method per query."""
from uuid import UUID

import asyncpg

from services.warm_pool.repository_profiles import ProfileQueries


class Repository(ProfileQueries):
    def __init__(self, conn: asyncpg.Connection):
        self.conn = conn


    async def upsert_tenant(self, *, tenant_id: UUID, plan: str, prewarm: int,
                            max_concurrent: int, status: str, namespace: str | None = None) -> None:
        await self.conn.execute(
            """
            INSERT INTO tenants (tenant_id, plan, prewarm, max_concurrent, status, namespace)
            VALUES ($1, $2, $3, $4, $5, $6)
            ON CONFLICT (tenant_id) DO UPDATE
               SET plan = EXCLUDED.plan, prewarm = EXCLUDED.prewarm,
                   max_concurrent = EXCLUDED.max_concurrent, status = EXCLUDED.status,
                   namespace = coalesce(EXCLUDED.namespace, tenants.namespace), updated_at = now()
            """,
            tenant_id, plan, prewarm, max_concurrent, status, namespace,
        )


    async def get_tenant(self, *, tenant_id: UUID) -> asyncpg.Record | None:
        return await self.conn.fetchrow("SELECT * FROM tenants WHERE tenant_id = $1", tenant_id)


    async def set_tenant_status(self, *, tenant_id: UUID, status: str) -> None:
        await self.conn.execute("UPDATE tenants SET status = $2, updated_at = now() WHERE tenant_id = $1",
                           tenant_id, status)


    async def lock_tenant(self, *, tenant_id: UUID) -> None:
        """Serialises pool-size decisions for one tenant across replicas (until the transaction ends)."""
        await self.conn.execute("SELECT pg_advisory_xact_lock(hashtext('warm_pool.tenant.' || $1::uuid::text))", tenant_id)


    async def lease_idle(self, *, tenant_id: UUID, session_id: UUID) -> asyncpg.Record | None:
        """Take the oldest idle browser of the tenant; concurrent callers never get the same one."""
        return await self.conn.fetchrow(
            """
            UPDATE browsers SET state = 'leased', session_id = $2, warm = true, leased_at = clock_timestamp()
             WHERE id = (SELECT id FROM browsers
                          WHERE state = 'idle' AND tenant_id = $1
                          ORDER BY created_at
                          LIMIT 1 FOR UPDATE SKIP LOCKED)
            RETURNING *
            """,
            tenant_id, session_id,
        )


    async def leased_for_session(self, *, session_id: UUID) -> asyncpg.Record | None:
        return await self.conn.fetchrow("SELECT * FROM browsers WHERE session_id = $1", session_id)


    async def count_live(self, *, replica_id: str) -> int:
        return await self.conn.fetchval("SELECT count(*) FROM browsers WHERE replica_id = $1 AND state <> 'dead'",
                                   replica_id)


    async def insert_browser(self, *, browser_id: UUID, tenant_id: UUID, replica_id: str,
                             owner_pid: int, host: str, session_id: UUID | None = None, warm: bool = False,
                             mode: str = "browser") -> None:
        await self.conn.execute(
            """
            INSERT INTO browsers (id, tenant_id, replica_id, owner_pid, host, state, session_id, warm, mode)
            VALUES ($1, $2, $3, $4, $5, 'launching', $6, CASE WHEN $6::uuid IS NULL THEN NULL ELSE $7::boolean END,
                    $8)
            """,
            browser_id, tenant_id, replica_id, owner_pid, host, session_id, warm, mode,
        )


    async def mark_ready(self, *, browser_id: UUID, state: str, pid: int | None, port: int,
                         profile_dir: str | None, cdp_ws_url: str, pod: str | None = None) -> asyncpg.Record | None:
        """launching → idle (refill) or leased (on demand); None if it was retired meanwhile."""
        return await self.conn.fetchrow(
            """
            UPDATE browsers
               SET state = $2, pid = $3, port = $4, profile_dir = $5, cdp_ws_url = $6, pod = $7,
                   ready_at = clock_timestamp(), leased_at = CASE WHEN $2 = 'leased' THEN clock_timestamp() END
             WHERE id = $1 AND state = 'launching'
            RETURNING *
            """,
            browser_id, state, pid, port, profile_dir, cdp_ws_url, pod,
        )

    async def confirm(self, *, browser_id: UUID, session_id: UUID) -> bool:
        row = await self.conn.fetchval(
            "UPDATE browsers SET confirmed_at = clock_timestamp()"
            " WHERE id = $1 AND session_id = $2 AND state = 'leased' RETURNING 1",
            browser_id, session_id,
        )
        return row is not None


    async def retire_session(self, *, session_id: UUID,
                             browser_id: UUID | None) -> list[asyncpg.Record]:
        return await self.conn.fetch(
            """
            UPDATE browsers SET state = 'retiring'
             WHERE (session_id = $1 OR id = $2) AND state IN ('launching', 'idle', 'leased') AND mode = 'browser'
            RETURNING id, tenant_id, replica_id
            """,
            session_id, browser_id,
        )


    async def retire_tenant(self, *, tenant_id: UUID,
                            with_leased: bool = False) -> list[asyncpg.Record]:
        """Drain: every browser of the tenant not serving a session (or every one, `with_leased`);
        a context host serving contexts goes when its last one ends."""
        return await self.conn.fetch(
            "UPDATE browsers SET state = 'retiring'"
            " WHERE tenant_id = $1 AND (state IN ('launching', 'idle') OR (state = 'hosting' AND active_contexts = 0)"
            " OR ($2 AND state = 'leased'))"
            " RETURNING id, tenant_id, replica_id",
            tenant_id, with_leased,
        )


    async def retire_idle(self, *, tenant_id: UUID, replica_id: str, count: int) -> list[UUID]:
        rows = await self.conn.fetch(
            """
            UPDATE browsers SET state = 'retiring'
             WHERE id IN (SELECT id FROM browsers
                           WHERE tenant_id = $1 AND replica_id = $2 AND state = 'idle'
                           ORDER BY created_at DESC
                           LIMIT $3 FOR UPDATE SKIP LOCKED)
            RETURNING id
            """,
            tenant_id, replica_id, count,
        )
        return [r["id"] for r in rows]


    async def evict_one_idle(self, *, replica_id: str, for_tenant: UUID) -> UUID | None:
        """Make room at the host cap: retire the oldest idle browser of another tenant on this replica."""
        return await self.conn.fetchval(
            """
            UPDATE browsers SET state = 'retiring'
             WHERE id = (SELECT id FROM browsers WHERE replica_id = $1 AND state = 'idle' AND tenant_id <> $2
                          ORDER BY created_at LIMIT 1 FOR UPDATE SKIP LOCKED)
            RETURNING id
            """,
            replica_id, for_tenant,
        )


    async def reclaim_unconfirmed(self, *, timeout_s: float) -> list[asyncpg.Record]:
        return await self.conn.fetch(
            """
            UPDATE browsers SET state = 'retiring'
             WHERE state = 'leased' AND confirmed_at IS NULL
               AND leased_at < clock_timestamp() - make_interval(secs => $1)
            RETURNING id, tenant_id, replica_id
            """,
            timeout_s,
        )


    async def own_in_state(self, *, replica_id: str, state: str, older_than_s: float = 0) -> list[UUID]:
        """This replica's browsers in `state`, created at least `older_than_s` ago."""
        rows = await self.conn.fetch(
            "SELECT id FROM browsers WHERE replica_id = $1 AND state = $2"
            " AND created_at <= clock_timestamp() - make_interval(secs => $3)",
            replica_id, state, older_than_s)
        return [r["id"] for r in rows]

    async def in_state(self, *, state: str, older_than_s: float = 0) -> list[UUID]:
        """Every replica's browsers in `state` (a cluster's, which any replica may destroy)."""
        rows = await self.conn.fetch(
            "SELECT id FROM browsers WHERE state = $1 AND created_at <= clock_timestamp() - make_interval(secs => $2)",
            state, older_than_s)
        return [r["id"] for r in rows]

    async def live_on_replica(self, *, replica_id: str) -> list[UUID]:
        rows = await self.conn.fetch("SELECT id FROM browsers WHERE replica_id = $1 AND state <> 'dead'", replica_id)
        return [r["id"] for r in rows]

    async def ids_in_states(self, *, states: list[str]) -> set[UUID]:
        rows = await self.conn.fetch("SELECT id FROM browsers WHERE state = ANY($1::text[])", states)
        return {r["id"] for r in rows}


    async def mark_dead(self, *, browser_id: UUID) -> asyncpg.Record | None:
        """→ dead; returns the row as it was before (None if it was dead already)."""
        return await self.conn.fetchrow(
            """
            UPDATE browsers b SET state = 'dead', ended_at = clock_timestamp()
              FROM (SELECT id, state, tenant_id, session_id FROM browsers WHERE id = $1 FOR UPDATE) old
             WHERE b.id = old.id AND old.state <> 'dead'
            RETURNING old.state, old.tenant_id, old.session_id
            """,
            browser_id,
        )


    async def stale_on_host(self, *, host: str, replica_id: str) -> list[asyncpg.Record]:
        return await self.conn.fetch(
            "SELECT id, tenant_id, session_id, state, owner_pid, pid, profile_dir FROM browsers"
            " WHERE host = $1 AND replica_id <> $2 AND state <> 'dead'",
            host, replica_id,
        )


    async def tenant_pools(self, *, rate_window_s: float,
                           tenant_id: UUID | None = None) -> list[asyncpg.Record]:
        """Per tenant: plan limits, browser counts by state, and leases in the recent window."""
        return await self.conn.fetch(
            """
            SELECT t.tenant_id, t.plan, t.prewarm, t.max_concurrent, t.status,
                   count(*) FILTER (WHERE b.state = 'idle')      AS idle,
                   count(*) FILTER (WHERE b.state = 'launching' AND b.session_id IS NULL AND b.mode = 'browser')
                       AS launching,
                   count(*) FILTER (WHERE b.state = 'leased')    AS leased,
                   count(*) FILTER (WHERE b.state = 'hosting')   AS context_hosts,
                   coalesce(sum(b.active_contexts) FILTER (WHERE b.state = 'hosting'), 0) AS active_contexts,
                   count(*) FILTER (WHERE b.leased_at > clock_timestamp() - make_interval(secs => $1)) AS recent_leases
              FROM tenants t
              LEFT JOIN browsers b ON b.tenant_id = t.tenant_id
                   AND (b.state <> 'dead' OR b.leased_at > clock_timestamp() - make_interval(secs => $1))
             WHERE $2::uuid IS NULL OR t.tenant_id = $2
             GROUP BY t.tenant_id
             ORDER BY t.tenant_id
            """,
            rate_window_s, tenant_id,
        )


    async def own_counts(self, *, replica_id: str) -> dict[str, int]:
        rows = await self.conn.fetch("SELECT state, count(*) AS n FROM browsers WHERE replica_id = $1 AND state <> 'dead'"
                                " GROUP BY state", replica_id)
        return {r["state"]: r["n"] for r in rows}


    async def prune_dead(self, *, older_than_s: float) -> int:
        """Delete the rows of browsers dead for longer than `older_than_s`; how many went."""
        status = await self.conn.execute(
            "DELETE FROM browsers WHERE state = 'dead' AND ended_at < clock_timestamp() - make_interval(secs => $1)",
            older_than_s)
        return int(status.split()[-1])


    # --- context hosts and their contexts -------------------------------------------------------

    async def claim_context(self, *, tenant_id: UUID, replica_id: str, session_id: UUID, per_browser: int,
                            recycle_after: int, max_age_s: float, warm: bool) -> asyncpg.Record | None:
        """A slot in one of the tenant's open hosts on this replica (the fullest with room), and the
        session's context row, in one statement: concurrent claims wait on the host's row and see
        its new count, so a host is never overfilled. UniqueViolation if the session has one."""
        return await self.conn.fetchrow(
            """
            WITH host AS (
                UPDATE browsers SET active_contexts = active_contexts + 1, contexts_served = contexts_served + 1
                 WHERE id = (SELECT id FROM browsers
                              WHERE tenant_id = $1 AND replica_id = $2 AND state = 'hosting' AND NOT recycle
                                AND active_contexts < $4 AND contexts_served < $5
                                AND ready_at > clock_timestamp() - make_interval(secs => $6)
                              ORDER BY active_contexts DESC, ready_at
                              LIMIT 1 FOR UPDATE)
                RETURNING *
            ), ctx AS (
                INSERT INTO contexts (session_id, browser_id, tenant_id, state, warm)
                SELECT $3, id, tenant_id, 'creating', $7 FROM host
            )
            SELECT * FROM host
            """,
            tenant_id, replica_id, session_id, per_browser, recycle_after, max_age_s, warm,
        )


    async def context_for_session(self, *, session_id: UUID) -> asyncpg.Record | None:
        return await self.conn.fetchrow(
            "SELECT c.*, b.cdp_ws_url, b.replica_id FROM contexts c JOIN browsers b ON b.id = c.browser_id"
            " WHERE c.session_id = $1", session_id)


    async def context_opened(self, *, session_id: UUID, context_id: str, downloads_path: str) -> bool:
        """creating → active; False if it ended meanwhile (its session, or its host)."""
        return await self.conn.fetchval(
            "UPDATE contexts SET state = 'active', context_id = $2, downloads_path = $3"
            " WHERE session_id = $1 AND state = 'creating' RETURNING true",
            session_id, context_id, downloads_path) is not None


    async def confirm_context(self, *, session_id: UUID) -> None:
        await self.conn.execute("UPDATE contexts SET confirmed_at = clock_timestamp()"
                                " WHERE session_id = $1 AND state = 'active'", session_id)


    async def context_ending(self, *, session_id: UUID, unconfirmed_of: UUID | None = None) -> asyncpg.Record | None:
        """Its session ended: → ending, for its host's replica to dispose. None if it was no
        context session or has ended already. With `unconfirmed_of` (a tenant), only a context of
        that tenant's that no session has confirmed (a released reservation)."""
        return await self.conn.fetchrow(
            """
            UPDATE contexts c SET state = 'ending' FROM browsers b
             WHERE c.session_id = $1 AND c.state IN ('creating', 'active') AND b.id = c.browser_id
               AND ($2::uuid IS NULL OR (c.tenant_id = $2 AND c.confirmed_at IS NULL))
            RETURNING c.session_id, c.browser_id, c.tenant_id, b.replica_id
            """,
            session_id, unconfirmed_of)


    async def context_ended(self, *, session_id: UUID, failed: bool = False) -> UUID | None:
        """→ ended (or failed, which also stops its host taking more), its host's slot freed once;
        the host's id, None if it had ended already."""
        return await self.conn.fetchval(
            """
            WITH c AS (
                UPDATE contexts SET state = CASE WHEN $2 THEN 'failed' ELSE 'ended' END, ended_at = clock_timestamp()
                 WHERE session_id = $1 AND state IN ('creating', 'active', 'ending')
                RETURNING browser_id
            )
            UPDATE browsers b SET active_contexts = b.active_contexts - 1, recycle = b.recycle OR $2
              FROM c WHERE b.id = c.browser_id
            RETURNING b.id
            """,
            session_id, failed)


    async def crash_contexts(self, *, browser_id: UUID) -> list[UUID]:
        """The host died: its live contexts → crashed; the sessions that were running in it."""
        rows = await self.conn.fetch(
            """
            WITH old AS (SELECT session_id, state FROM contexts
                          WHERE browser_id = $1 AND state IN ('creating', 'active', 'ending') FOR UPDATE)
            UPDATE contexts c SET state = 'crashed', ended_at = clock_timestamp() FROM old
             WHERE c.session_id = old.session_id
            RETURNING old.session_id, old.state
            """,
            browser_id)
        return [r["session_id"] for r in rows if r["state"] == "active"]


    async def reclaim_unconfirmed_contexts(self, *, timeout_s: float) -> list[UUID]:
        rows = await self.conn.fetch(
            "UPDATE contexts SET state = 'ending' WHERE state = 'active' AND confirmed_at IS NULL"
            " AND created_at < clock_timestamp() - make_interval(secs => $1) RETURNING session_id",
            timeout_s)
        return [r["session_id"] for r in rows]


    async def own_ending_contexts(self, *, replica_id: str) -> list[UUID]:
        rows = await self.conn.fetch(
            "SELECT c.session_id FROM contexts c JOIN browsers b ON b.id = c.browser_id"
            " WHERE c.state = 'ending' AND b.replica_id = $1", replica_id)
        return [r["session_id"] for r in rows]


    async def flag_recycle(self, *, browser_id: UUID) -> None:
        await self.conn.execute("UPDATE browsers SET recycle = true WHERE id = $1", browser_id)


    async def retire_done_hosts(self, *, replica_id: str, recycle_after: int, max_age_s: float,
                                browser_id: UUID | None = None) -> list[UUID]:
        """Empty hosts of this replica (or just `browser_id`) due for recycling: flagged, served
        enough, old enough, or of a tenant no longer active. A host serving a context never is."""
        rows = await self.conn.fetch(
            """
            UPDATE browsers b SET state = 'retiring' FROM tenants t
             WHERE b.replica_id = $1 AND ($4::uuid IS NULL OR b.id = $4) AND b.state = 'hosting'
               AND b.active_contexts = 0 AND t.tenant_id = b.tenant_id
               AND (b.recycle OR b.contexts_served >= $2 OR t.status <> 'active'
                    OR b.ready_at <= clock_timestamp() - make_interval(secs => $3))
            RETURNING b.id
            """,
            replica_id, recycle_after, max_age_s, browser_id)
        return [r["id"] for r in rows]


    async def retire_empty_hosts(self, *, tenant_id: UUID, replica_id: str, count: int) -> list[UUID]:
        """Shrink: up to `count` of the tenant's empty hosts on this replica, the most used first."""
        rows = await self.conn.fetch(
            """
            UPDATE browsers SET state = 'retiring'
             WHERE id IN (SELECT id FROM browsers
                           WHERE tenant_id = $1 AND replica_id = $2 AND state = 'hosting' AND active_contexts = 0
                           ORDER BY contexts_served DESC
                           LIMIT $3 FOR UPDATE SKIP LOCKED)
               AND active_contexts = 0
            RETURNING id
            """,
            tenant_id, replica_id, count)
        return [r["id"] for r in rows]


    async def context_pools(self, *, replica_id: str, rate_window_s: float, warm_window_s: float,
                            recycle_after: int, max_age_s: float,
                            tenant_id: UUID | None = None) -> list[asyncpg.Record]:
        """Per tenant: its context hosts on this replica (launching; open: taking new contexts,
        how many of them empty, the contexts they hold) and its context leases lately."""
        return await self.conn.fetch(
            """
            SELECT t.tenant_id, t.status, t.prewarm, t.max_concurrent,
                   count(b.id) FILTER (WHERE b.state = 'launching') AS launching,
                   count(b.id) FILTER (WHERE b.open) AS open_hosts,
                   count(b.id) FILTER (WHERE b.open AND b.active_contexts = 0) AS empty_hosts,
                   coalesce(sum(b.active_contexts) FILTER (WHERE b.open), 0) AS open_active,
                   (SELECT count(*) FROM contexts c WHERE c.tenant_id = t.tenant_id
                       AND c.created_at > clock_timestamp() - make_interval(secs => $2)) AS recent_contexts,
                   EXISTS (SELECT 1 FROM contexts c WHERE c.tenant_id = t.tenant_id
                       AND c.created_at > clock_timestamp() - make_interval(secs => $3)) AS uses_contexts
              FROM tenants t
              LEFT JOIN LATERAL (
                   SELECT id, state, active_contexts,
                          (state = 'hosting' AND NOT recycle AND contexts_served < $4
                           AND ready_at > clock_timestamp() - make_interval(secs => $5)) AS open
                     FROM browsers
                    WHERE tenant_id = t.tenant_id AND replica_id = $1 AND mode = 'context'
                      AND state IN ('launching', 'hosting')) b ON true
             WHERE $6::uuid IS NULL OR t.tenant_id = $6
             GROUP BY t.tenant_id
             ORDER BY t.tenant_id
            """,
            replica_id, rate_window_s, warm_window_s, recycle_after, max_age_s, tenant_id)


    async def own_context_counts(self, *, replica_id: str) -> asyncpg.Record:
        return await self.conn.fetchrow(
            "SELECT count(*) AS hosts, coalesce(sum(active_contexts), 0) AS active FROM browsers"
            " WHERE replica_id = $1 AND state = 'hosting'", replica_id)
