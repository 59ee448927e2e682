"""Reads: a tenant's sessions and usage, the operator's tenants and sessions, a session's browser."""
from uuid import UUID

from services.sessions import domain
from services.sessions.ports import UnitOfWork


async def get_session(*, uow: UnitOfWork, tenant_id: UUID, session_id: UUID) -> dict:
    async with uow.connect() as tx:
        row = await tx.repo.get_session(session_id=session_id, tenant_id=tenant_id)
    if row is None:
        raise domain.NotFound("session not found")
    return domain.session_view(row)


async def list_sessions(*, uow: UnitOfWork, tenant_id: UUID, status: str | None, limit: int,
                        cursor: str | None) -> dict:
    try:
        after = domain.Cursor.decode(cursor) if cursor else None
    except ValueError:
        raise domain.Refused("invalid_request", "invalid cursor") from None
    async with uow.connect() as tx:
        rows = await tx.repo.list_sessions(tenant_id=tenant_id, status=status, limit=limit + 1, after=after)
    page = rows[:limit]
    next_cursor = domain.Cursor(page[-1]["created_at"], page[-1]["id"]).encode() if len(rows) > limit else None
    return {"data": [domain.session_view(r) for r in page], "next_cursor": next_cursor}


async def usage(*, uow: UnitOfWork, tenant_id: UUID) -> dict:
    async with uow.connect() as tx:
        tenant = await tx.repo.get_tenant(tenant_id=tenant_id)
        allowance = await tx.repo.current_allowance(tenant_id=tenant_id)
        running = await tx.repo.count_live_sessions(tenant_id=tenant_id)
    granted = allowance["credits_granted"] if allowance else 0
    used = allowance["credits_used"] if allowance else 0
    return {"plan": tenant["plan"], "status": tenant["status"],
            "period_start": allowance["period_start"].isoformat() if allowance else None,
            "period_end": allowance["period_end"].isoformat() if allowance else None,
            "credits_granted": granted, "credits_used": used, "credits_remaining": max(granted - used, 0),
            "sessions_running": running}


async def browser_url(*, uow: UnitOfWork, tenant_id: UUID, session_id: UUID) -> tuple[str, str | None]:
    """The session's browser endpoint, and its BrowserContext in there (context sessions)."""
    async with uow.connect() as tx:
        row = await tx.repo.get_session(session_id=session_id, tenant_id=tenant_id)
    if row is None:
        raise domain.NotFound("session not found")
    if row["status"] != "running":
        raise domain.Refused("conflict", "the session is not running")
    return row["browser_ws_url"], row["context_id"]


async def admin_list_tenants(*, uow: UnitOfWork, limit: int) -> dict:
    async with uow.connect() as tx:
        rows = await tx.repo.list_tenants(limit=limit)
    return {"data": [_tenant_view(r) for r in rows]}


async def admin_tenant(*, uow: UnitOfWork, tenant_id: UUID) -> dict:
    async with uow.connect() as tx:
        row = await tx.repo.tenant_overview(tenant_id=tenant_id)
    if row is None:
        raise domain.NotFound("tenant not known")
    return _tenant_view(row)


async def admin_list_sessions(*, uow: UnitOfWork, tenant_id: UUID | None, status: str | None, limit: int) -> dict:
    async with uow.connect() as tx:
        rows = await tx.repo.list_all_sessions(tenant_id=tenant_id, status=status, limit=limit)
    return {"data": [{**domain.session_view(r), "tenant_id": str(r["tenant_id"])} for r in rows]}


def _tenant_view(row) -> dict:
    return {"tenant_id": str(row["tenant_id"]), "plan": row["plan"], "status": row["status"],
            "provisioned": row["provisioned"], "max_concurrent_sessions": row["max_concurrent_sessions"],
            "max_session_seconds": row["max_session_seconds"],
            "period_start": row["period_start"].isoformat() if row["period_start"] else None,
            "period_end": row["period_end"].isoformat() if row["period_end"] else None,
            "credits_granted": row["credits_granted"], "credits_used": row["credits_used"],
            "credits_remaining": max(row["credits_granted"] - row["credits_used"], 0),
            "sessions_running": row["sessions_running"], "api_keys": row["api_keys"]}
