"""asyncpg queries for the billing schema: `Repository(conn)`, one method per query, no side effects."""
from datetime import datetime
from decimal import Decimal
from uuid import UUID

import asyncpg

from services.billing.domain import Entry

class Repository:
    def __init__(self, conn: asyncpg.Connection):
        self.conn = conn

    # --- stripe events -----------------------------------------------------------------------

    async def store_event(self, *, event_id: str, type: str, payload: dict) -> bool:
        """True when stored now, False when this event id was already stored."""
        return await self.conn.fetchval(
            """INSERT INTO stripe_events (id, type, payload) VALUES ($1, $2, $3)
               ON CONFLICT (id) DO NOTHING RETURNING true""",
            event_id, type, payload,
        ) is not None

    async def claim_event(self, *, event_id: str) -> asyncpg.Record | None:
        return await self.conn.fetchrow(
            "SELECT * FROM stripe_events WHERE id = $1 AND processed_at IS NULL FOR UPDATE SKIP LOCKED", event_id)

    async def mark_processed(self, *, event_id: str, note: str | None = None) -> None:
        await self.conn.execute(
            "UPDATE stripe_events SET processed_at = clock_timestamp(), attempts = attempts + 1, last_error = $2"
            " WHERE id = $1", event_id, note)

    async def postpone_event(self, *, event_id: str, delay_s: float, error: str) -> None:
        await self.conn.execute(
            """UPDATE stripe_events
                  SET attempts = attempts + 1, last_error = $3,
                      next_attempt_at = clock_timestamp() + make_interval(secs => $2)
                WHERE id = $1""",
            event_id, delay_s, error[:500])

    async def due_events(self, *, limit: int = 50) -> list[str]:
        rows = await self.conn.fetch(
            """SELECT id FROM stripe_events
                WHERE processed_at IS NULL AND next_attempt_at <= clock_timestamp()
                ORDER BY received_at LIMIT $1""", limit)
        return [r["id"] for r in rows]

    async def count_pending_events(self) -> int:
        return await self.conn.fetchval("SELECT count(*) FROM stripe_events WHERE processed_at IS NULL")

    async def pending_events(self, *, limit: int) -> list[asyncpg.Record]:
        return await self.conn.fetch(
            """SELECT id, type, received_at, attempts, next_attempt_at, last_error FROM stripe_events
                WHERE processed_at IS NULL ORDER BY received_at LIMIT $1""", limit)

    async def wake_waiting_events(self) -> None:
        """A tenant became known: retry the events that were waiting for one, now."""
        # SKIP LOCKED: rows claimed by other workers are theirs (waiting on them could deadlock).
        await self.conn.execute(
            """UPDATE stripe_events SET next_attempt_at = clock_timestamp()
                WHERE id IN (SELECT id FROM stripe_events
                              WHERE processed_at IS NULL AND next_attempt_at > clock_timestamp()
                                FOR UPDATE SKIP LOCKED)""")

    async def record_refusal(self, *, event_id: str, type: str, tenant_id: UUID, account_customer: str,
                             event_customer: str | None, subscription_id: str | None, reason: str) -> None:
        await self.conn.execute(
            """INSERT INTO refused_events (event_id, type, tenant_id, account_customer, event_customer,
                                           subscription_id, reason)
               VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (event_id) DO NOTHING""",
            event_id, type, tenant_id, account_customer, event_customer, subscription_id, reason)

    async def refused_events(self, *, tenant_id: UUID | None, limit: int) -> list[asyncpg.Record]:
        return await self.conn.fetch(
            """SELECT * FROM refused_events WHERE ($1::uuid IS NULL OR tenant_id = $1)
                ORDER BY refused_at DESC, event_id LIMIT $2""", tenant_id, limit)

    async def supersede_subscription(self, *, tenant_id: UUID, subscription_id: str, by: str) -> None:
        await self.conn.execute(
            """INSERT INTO superseded_subscriptions (subscription_id, tenant_id, superseded_by) VALUES ($1, $2, $3)
               ON CONFLICT (subscription_id) DO NOTHING""", subscription_id, tenant_id, by)

    async def is_superseded(self, *, tenant_id: UUID, subscription_id: str | None) -> bool:
        return bool(subscription_id and await self.conn.fetchval(
            "SELECT 1 FROM superseded_subscriptions WHERE subscription_id = $1 AND tenant_id = $2",
            subscription_id, tenant_id))

    async def superseded_subscriptions(self, *, tenant_id: UUID) -> list[str]:
        rows = await self.conn.fetch("SELECT subscription_id FROM superseded_subscriptions WHERE tenant_id = $1"
                                " ORDER BY superseded_at", tenant_id)
        return [r["subscription_id"] for r in rows]

    # --- accounts and ledger ---------------------------------------------------------------------

    async def find_tenant(self, *, subscription: str | None, customer: str | None) -> UUID | None:
        if subscription:
            found = await self.conn.fetchval("SELECT tenant_id FROM accounts WHERE subscription_id = $1", subscription)
            if found:
                return found
        if customer:
            return await self.conn.fetchval(
                "SELECT tenant_id FROM accounts WHERE stripe_customer_id = $1 ORDER BY updated_at DESC LIMIT 1",
                customer)
        return None

    async def lock_account(self, *, tenant_id: UUID, plan: str) -> asyncpg.Record:
        """Open the account if new, then lock it: every balance change for a tenant is serialized."""
        await self.conn.execute(
            "INSERT INTO accounts (tenant_id, plan, status) VALUES ($1, $2, 'active') ON CONFLICT DO NOTHING",
            tenant_id, plan)
        return await self.conn.fetchrow("SELECT * FROM accounts WHERE tenant_id = $1 FOR UPDATE", tenant_id)

    async def lock_existing_account(self, *, tenant_id: UUID) -> asyncpg.Record | None:
        return await self.conn.fetchrow("SELECT * FROM accounts WHERE tenant_id = $1 FOR UPDATE", tenant_id)

    async def update_account(self, *, tenant_id: UUID, **fields) -> None:
        """Set the given columns (only names from this module's callers, never user input)."""
        sets = ", ".join(f"{name} = ${i}" for i, name in enumerate(fields, start=2))
        await self.conn.execute(f"UPDATE accounts SET {sets}, updated_at = now() WHERE tenant_id = $1",
                           tenant_id, *fields.values())

    async def append_entry(self, *, tenant_id: UUID, entry: Entry) -> bool:
        """Append one ledger entry and move the balance with it; False if (kind, reference) exists."""
        inserted = await self.conn.fetchval(
            """INSERT INTO ledger (tenant_id, kind, reference, amount, balance_after)
               VALUES ($1, $2, $3, $4, $5)
               ON CONFLICT (kind, reference) DO NOTHING RETURNING true""",
            tenant_id, entry.kind, entry.reference, entry.amount, entry.balance_after)
        if inserted:
            await self.conn.execute("UPDATE accounts SET balance = $2, updated_at = now() WHERE tenant_id = $1",
                               tenant_id, entry.balance_after)
        return bool(inserted)

    async def entry_exists(self, *, kind: str, reference: str) -> bool:
        return bool(await self.conn.fetchval("SELECT 1 FROM ledger WHERE kind = $1 AND reference = $2", kind, reference))

    async def get_account(self, *, tenant_id: UUID) -> asyncpg.Record | None:
        return await self.conn.fetchrow("SELECT * FROM accounts WHERE tenant_id = $1", tenant_id)

    async def ledger_page(self, *, tenant_id: UUID, limit: int, after_id: int | None) -> list[asyncpg.Record]:
        return await self.conn.fetch(
            """SELECT id, kind, reference, amount, balance_after, created_at FROM ledger
                WHERE tenant_id = $1 AND ($2::bigint IS NULL OR id > $2)
                ORDER BY id LIMIT $3""", tenant_id, after_id, limit)

    async def inconsistent_accounts(self) -> list[asyncpg.Record]:
        """Accounts whose balance is not the sum of their ledger (should always be empty)."""
        return await self.conn.fetch(
            """SELECT a.tenant_id, a.balance, coalesce(sum(l.amount), 0) AS ledger_sum
                 FROM accounts a LEFT JOIN ledger l ON l.tenant_id = a.tenant_id
                GROUP BY a.tenant_id, a.balance
               HAVING a.balance <> coalesce(sum(l.amount), 0)""")

    async def count_accounts(self) -> int:
        return await self.conn.fetchval("SELECT count(*) FROM accounts")

    # --- usage and meter reports -----------------------------------------------------------------

    async def record_usage(self, *, session_id: UUID, tenant_id: UUID, started_at: datetime, ended_at: datetime,
                           duration_ms: int, end_reason: str, cost: Decimal) -> bool:
        return await self.conn.fetchval(
            """INSERT INTO usage (session_id, tenant_id, started_at, ended_at, duration_ms, end_reason, cost)
               VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (session_id) DO NOTHING RETURNING true""",
            session_id, tenant_id, started_at, ended_at, duration_ms, end_reason, cost) is not None

    async def usage_for(self, *, tenant_id: UUID, since: datetime | None, until: datetime | None) -> list[asyncpg.Record]:
        return await self.conn.fetch(
            """SELECT session_id, started_at, ended_at, duration_ms, end_reason, cost FROM usage
                WHERE tenant_id = $1 AND ($2::timestamptz IS NULL OR ended_at >= $2)
                  AND ($3::timestamptz IS NULL OR ended_at < $3)
                ORDER BY ended_at""", tenant_id, since, until)

    async def enqueue_meter_report(self, *, session_id: UUID, tenant_id: UUID, value: int, occurred_at: datetime) -> None:
        await self.conn.execute(
            """INSERT INTO meter_reports (session_id, tenant_id, value, occurred_at) VALUES ($1, $2, $3, $4)
               ON CONFLICT (session_id) DO NOTHING""", session_id, tenant_id, value, occurred_at)

    async def claim_meter_reports(self, *, limit: int) -> list[asyncpg.Record]:
        return await self.conn.fetch(
            """SELECT m.*, a.stripe_customer_id FROM meter_reports m
                 LEFT JOIN accounts a ON a.tenant_id = m.tenant_id
                WHERE m.sent_at IS NULL AND m.next_attempt_at <= clock_timestamp()
                ORDER BY m.next_attempt_at LIMIT $1
                  FOR UPDATE OF m SKIP LOCKED""", limit)

    async def mark_meter_sent(self, *, session_id: UUID) -> None:
        await self.conn.execute("UPDATE meter_reports SET sent_at = clock_timestamp(), attempts = attempts + 1,"
                           " last_error = NULL WHERE session_id = $1", session_id)

    async def postpone_meter_report(self, *, session_id: UUID, delay_s: float, error: str) -> None:
        await self.conn.execute(
            """UPDATE meter_reports SET attempts = attempts + 1, last_error = $3,
                      next_attempt_at = clock_timestamp() + make_interval(secs => $2)
                WHERE session_id = $1""", session_id, delay_s, error[:500])

    async def count_pending_meter_reports(self) -> int:
        return await self.conn.fetchval("SELECT count(*) FROM meter_reports WHERE sent_at IS NULL")
