"""What the dashboard's API routes do (sign-ins: sign_ins.py). Ports: the pool and the API-key lookups."""
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from uuid import UUID

import asyncpg

from services.sessions import domain as sessions_domain, repository as repo
from services.sessions.dashboard import domain, repository as dash_repo
from services.sessions.dashboard.sign_ins import DashboardAuth
from shared.http import APIError

MIN_CHART_DAYS, MAX_CHART_DAYS = 14, 62


async def usage_daily(*, pool: asyncpg.Pool, tenant_id: UUID) -> dict:
    today = datetime.now(timezone.utc).date()
    async with pool.acquire() as conn:
        allowance = await repo.current_allowance(conn, tenant_id=tenant_id)
        # At least the last two weeks, so a new period still shows a readable chart.
        first = today - timedelta(days=MIN_CHART_DAYS - 1)
        if allowance:
            first = min(first, allowance["period_start"].astimezone(timezone.utc).date())
        first = max(first, today - timedelta(days=MAX_CHART_DAYS - 1))
        since = datetime(first.year, first.month, first.day, tzinfo=timezone.utc)
        rows = await dash_repo.sessions_per_day(conn, tenant_id=tenant_id, since=since)
        cost = (await dash_repo.period_cost(conn, tenant_id=tenant_id, period_start=allowance["period_start"])
                if allowance else Decimal(0))
    return {"period_start": allowance["period_start"].isoformat() if allowance else None,
            "period_end": allowance["period_end"].isoformat() if allowance else None,
            "bill_estimate": sessions_domain.money(cost),
            "days": domain.daily_series([dict(r) for r in rows], first=first, last=today)}


async def list_api_keys(*, pool: asyncpg.Pool, tenant_id: UUID, credential: str | None) -> dict:
    current = sessions_domain.digest(credential) if credential else b""
    async with pool.acquire() as conn:
        rows = await dash_repo.list_api_keys(conn, tenant_id=tenant_id)
    return {"data": [{"id": str(r["id"]), "prefix": r["prefix"], "created_at": r["created_at"].isoformat(),
                      "last_used_at": r["last_used_at"].isoformat() if r["last_used_at"] else None,
                      "revoked_at": r["revoked_at"].isoformat() if r["revoked_at"] else None,
                      "current": bytes(r["key_hash"]) == current} for r in rows]}


async def revoke_api_key(*, pool: asyncpg.Pool, auth: DashboardAuth, tenant_id: UUID, key_id: UUID) -> None:
    async with pool.acquire() as conn:
        owner = await dash_repo.api_key_tenant(conn, key_id=key_id)
    if owner != tenant_id:  # another tenant's key looks exactly like a missing one
        raise APIError(404, "not_found", "API key not found")
    await auth.revoke(key_id)
