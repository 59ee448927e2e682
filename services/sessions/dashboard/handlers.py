"""What the dashboard's API routes do (sign-ins: sign_ins.py). Ports: the unit of work and the API-key lookups."""
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from uuid import UUID

from services.sessions import domain as sessions_domain
from services.sessions.dashboard import domain
from services.sessions.dashboard.sign_ins import DashboardAuth
from services.sessions.ports import UnitOfWork

MIN_CHART_DAYS, MAX_CHART_DAYS = 14, 62


async def usage_daily(*, uow: UnitOfWork, tenant_id: UUID) -> dict:
    today = datetime.now(timezone.utc).date()
    async with uow.connect() as tx:
        allowance = await tx.repo.current_allowance(tenant_id=tenant_id)
        # At least the last two weeks, so a new period still shows a readable chart.
        first = today - timedelta(days=MIN_CHART_DAYS - 1)
        if allowance:
            first = min(first, allowance["period_start"].astimezone(timezone.utc).date())
        first = max(first, today - timedelta(days=MAX_CHART_DAYS - 1))
        since = datetime(first.year, first.month, first.day, tzinfo=timezone.utc)
        rows = await tx.dashboard.sessions_per_day(tenant_id=tenant_id, since=since)
        cost = (await tx.dashboard.period_cost(tenant_id=tenant_id, period_start=allowance["period_start"])
                if allowance else Decimal(0))
    return {"period_start": allowance["period_start"].isoformat() if allowance else None,
            "period_end": allowance["period_end"].isoformat() if allowance else None,
            "bill_estimate": sessions_domain.money(cost),
            "days": domain.daily_series([dict(r) for r in rows], first=first, last=today)}


async def list_api_keys(*, uow: UnitOfWork, tenant_id: UUID, credential: str | None) -> dict:
    current = sessions_domain.digest(credential) if credential else b""
    async with uow.connect() as tx:
        rows = await tx.dashboard.list_api_keys(tenant_id=tenant_id)
    return {"data": [{"id": str(r["id"]), "prefix": r["prefix"], "created_at": r["created_at"].isoformat(),
                      "last_used_at": r["last_used_at"].isoformat() if r["last_used_at"] else None,
                      "revoked_at": r["revoked_at"].isoformat() if r["revoked_at"] else None,
                      "current": bytes(r["key_hash"]) == current} for r in rows]}


async def revoke_api_key(*, uow: UnitOfWork, auth: DashboardAuth, tenant_id: UUID, key_id: UUID) -> None:
    async with uow.connect() as tx:
        owner = await tx.dashboard.api_key_tenant(key_id=key_id)
    if owner != tenant_id:  # another tenant's key looks exactly like a missing one
        raise sessions_domain.NotFound("API key not found")
    await auth.revoke(key_id)
