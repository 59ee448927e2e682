"""What the dashboard's API routes do. Ports: the pool, the API-key lookups and the signing key."""
import time
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from uuid import UUID

import asyncpg

from services.sessions import domain as sessions_domain, handlers as sessions_handlers, repository as repo
from services.sessions.dashboard import domain, repository as dash_repo
from shared.http import APIError

MIN_CHART_DAYS, MAX_CHART_DAYS = 14, 62


class DashboardAuth:
    """API keys, plus the signed sign-ins that operator-minted dashboard links are exchanged for."""

    def __init__(self, api_keys: sessions_handlers.ApiKeys, key: bytes):
        self.api_keys, self.key = api_keys, key

    async def tenant_for(self, credential: str | None) -> UUID:
        if credential and credential.startswith(domain.PREFIX):
            tenant_id = domain.verify(credential, key=self.key, purpose="session", now=time.time())
            if tenant_id is None:
                raise APIError(401, "unauthorized", "the dashboard sign-in has expired, sign in again")
            return tenant_id
        return await self.api_keys.tenant_for(credential)

    async def revoke(self, key_id: UUID) -> None:
        await self.api_keys.revoke(key_id)


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


async def mint_link(*, pool: asyncpg.Pool, key: bytes, tenant_id: UUID, public_url: str, ttl_s: int) -> dict:
    async with pool.acquire() as conn:
        if await repo.get_tenant(conn, tenant_id=tenant_id) is None:
            raise APIError(404, "not_found", "tenant not known yet")
    expires_at = int(time.time()) + ttl_s
    token = domain.sign(key=key, tenant_id=tenant_id, purpose="link", expires_at=expires_at)
    # In the fragment: browsers never send it to the server, so it stays out of access logs.
    return {"url": f"{public_url.rstrip('/')}/dashboard/#link={token}",
            "expires_at": datetime.fromtimestamp(expires_at, timezone.utc).isoformat()}


def exchange_link(*, key: bytes, link: str) -> dict:
    now = time.time()
    tenant_id = domain.verify(link, key=key, purpose="link", now=now)
    if tenant_id is None:
        raise APIError(401, "unauthorized", "this dashboard link is invalid or has expired")
    expires_at = int(now) + domain.SESSION_TTL_S
    return {"credential": domain.sign(key=key, tenant_id=tenant_id, purpose="session", expires_at=expires_at),
            "expires_at": datetime.fromtimestamp(expires_at, timezone.utc).isoformat()}
