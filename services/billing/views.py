"""The operator's views of billing (the admin API): accounts, ledgers, usage, Stripe events.
Unknown tenants raise domain.NotFound. Amounts of money are shared.money's Money."""
from datetime import datetime
from decimal import Decimal
from uuid import UUID

from services.billing.domain import NotFound
from services.billing.ports import UnitOfWork


def _iso(value):
    return value.isoformat() if value is not None else None


async def account(*, uow: UnitOfWork, tenant_id: UUID) -> dict:
    async with uow.connect() as tx:
        row = await tx.repo.get_account(tenant_id=tenant_id)
        if row is None:
            raise NotFound("unknown tenant")
        # Replaced by a plan change: they bill at Stripe until an operator cancels them there.
        superseded = await tx.repo.superseded_subscriptions(tenant_id=tenant_id)
    return {"tenant_id": str(row["tenant_id"]), "plan": row["plan"], "status": row["status"],
            "balance": row["balance"], "period_start": _iso(row["period_start"]),
            "period_end": _iso(row["period_end"]), "stripe_customer_id": row["stripe_customer_id"],
            "subscription_id": row["subscription_id"], "superseded_subscriptions": superseded}


async def ledger(*, uow: UnitOfWork, tenant_id: UUID, limit: int, cursor: int | None) -> dict:
    async with uow.connect() as tx:
        if await tx.repo.get_account(tenant_id=tenant_id) is None:
            raise NotFound("unknown tenant")
        rows = await tx.repo.ledger_page(tenant_id=tenant_id, limit=limit + 1, after_id=cursor)
    page = rows[:limit]
    return {"data": [{"id": r["id"], "kind": r["kind"], "reference": r["reference"], "amount": r["amount"],
                      "balance_after": r["balance_after"], "created_at": _iso(r["created_at"])} for r in page],
            "next_cursor": str(page[-1]["id"]) if len(rows) > limit else None}


async def usage(*, uow: UnitOfWork, tenant_id: UUID, since: datetime | None, until: datetime | None) -> dict:
    """Completed sessions and what they cost (Decimals: the route's model writes them as Money)."""
    async with uow.connect() as tx:
        if await tx.repo.get_account(tenant_id=tenant_id) is None:
            raise NotFound("unknown tenant")
        rows = await tx.repo.usage_for(tenant_id=tenant_id, since=since, until=until)
    return {"data": [{"session_id": r["session_id"], "started_at": r["started_at"], "ended_at": r["ended_at"],
                      "duration_ms": r["duration_ms"], "end_reason": r["end_reason"], "cost": r["cost"]}
                     for r in rows],
            "sessions": len(rows), "total_cost": sum((r["cost"] for r in rows), Decimal("0"))}


async def pending_stripe_events(*, uow: UnitOfWork, limit: int) -> dict:
    async with uow.connect() as tx:
        rows = await tx.repo.pending_events(limit=limit)
    return {"data": [{"id": r["id"], "type": r["type"], "received_at": _iso(r["received_at"]),
                      "attempts": r["attempts"], "next_attempt_at": _iso(r["next_attempt_at"]),
                      "last_error": r["last_error"]} for r in rows]}


async def refused_events(*, uow: UnitOfWork, tenant_id: UUID | None, limit: int) -> dict:
    async with uow.connect() as tx:
        rows = await tx.repo.refused_events(tenant_id=tenant_id, limit=limit)
    return {"data": [{"event_id": r["event_id"], "type": r["type"], "tenant_id": str(r["tenant_id"]),
                      "account_customer": r["account_customer"], "event_customer": r["event_customer"],
                      "subscription_id": r["subscription_id"], "reason": r["reason"],
                      "refused_at": r["refused_at"].isoformat()} for r in rows]}


async def check_ledger(*, uow: UnitOfWork) -> dict:
    async with uow.connect() as tx:
        bad = await tx.repo.inconsistent_accounts()
        total = await tx.repo.count_accounts()
    return {"accounts": total, "consistent": not bad,
            "mismatches": [{"tenant_id": str(r["tenant_id"]), "balance": r["balance"],
                            "ledger_sum": int(r["ledger_sum"])} for r in bad]}
