"""Dashboard sign-ins: operator links exchanged once for a sign-in, which is a credential the
server keeps (as its hash) and can end. Ports: the pool and the API-key lookups."""
from datetime import datetime, timezone
from uuid import UUID, uuid4

import asyncpg

from services.sessions import domain as sessions_domain, handlers as sessions_handlers, repository as repo
from services.sessions.dashboard import domain, repository as dash_repo
from shared import http
from shared.db import transaction
from shared.http import APIError

# Ended and expired links and sign-ins are kept this long (for the operator), then forgotten.
KEEP_S = 7 * 24 * 3600


class DashboardAuth:
    """API keys, plus the dashboard sign-ins. A sign-in is looked up on every request (a read
    by its hash, no cache): ending it, or the tenant's cancellation, takes effect at once."""

    def __init__(self, api_keys: sessions_handlers.ApiKeys):
        self.api_keys, self.pool = api_keys, api_keys.pool
        self._worked: dict[bytes, None] = {}  # sign-ins that worked here: looked up even when throttled

    async def tenant_for(self, credential: str | None) -> UUID:
        if domain.is_sign_in(credential):
            return (await self.sign_in(credential))["tenant_id"]
        return await self.api_keys.tenant_for(credential)

    async def sign_in(self, credential: str):
        token_hash, row = sessions_domain.digest(credential), None
        if token_hash not in self._worked:  # failed-auth limit, as for API keys (shared.http)
            http.refuse_if_throttled()
        if len(credential) <= domain.MAX_TOKEN_CHARS:
            async with self.pool.acquire() as conn:
                row = await dash_repo.find_sign_in(conn, token_hash=token_hash)
                if row is not None and _touch_due(row["last_used_at"]):
                    await dash_repo.touch_sign_in(conn, sign_in_id=row["id"])
        if row is None:
            self._worked.pop(token_hash, None)
            http.auth_failed()
            raise APIError(401, "unauthorized", "the dashboard sign-in has ended, sign in again")
        self._worked[token_hash] = None
        if len(self._worked) > sessions_handlers.ApiKeys.REMEMBERED:
            del self._worked[next(iter(self._worked))]
        return row

    async def revoke(self, key_id: UUID) -> None:
        await self.api_keys.revoke(key_id)


def _touch_due(last_used_at: datetime | None) -> bool:
    return last_used_at is None or (datetime.now(timezone.utc) - last_used_at).total_seconds() > domain.TOUCH_EVERY_S


async def mint_link(*, pool: asyncpg.Pool, tenant_id: UUID, public_url: str, ttl_s: int) -> dict:
    link = domain.new_link()
    async with transaction(pool) as conn:
        if await repo.get_tenant(conn, tenant_id=tenant_id) is None:
            raise APIError(404, "not_found", "tenant not known yet")
        await dash_repo.prune_sign_ins(conn, keep_s=KEEP_S)
        expires_at = await dash_repo.insert_link(conn, token_hash=sessions_domain.digest(link), tenant_id=tenant_id,
                                                 ttl_s=ttl_s)
    # In the fragment: browsers never send it to the server, so it stays out of access logs.
    return {"url": f"{public_url.rstrip('/')}/dashboard/#link={link}", "expires_at": expires_at.isoformat()}


async def exchange_link(*, pool: asyncpg.Pool, link: str) -> dict:
    """The link's one sign-in; a used, expired or unknown link (or a canceled tenant's) is a 401."""
    credential, sign_in_id = domain.new_sign_in(), uuid4()
    http.refuse_if_throttled()
    async with transaction(pool) as conn:
        tenant_id = None
        if link.startswith(domain.LINK_PREFIX):
            tenant_id = await dash_repo.use_link(conn, token_hash=sessions_domain.digest(link))
        if tenant_id is None:
            http.auth_failed()
            raise APIError(401, "unauthorized", "this dashboard link is invalid, used or expired")
        expires_at = await dash_repo.insert_sign_in(conn, sign_in_id=sign_in_id, tenant_id=tenant_id,
                                                    token_hash=sessions_domain.digest(credential),
                                                    ttl_s=domain.SESSION_TTL_S)
    return {"credential": credential, "expires_at": expires_at.isoformat()}


async def list_sign_ins(*, pool: asyncpg.Pool, tenant_id: UUID, credential: str | None = None) -> dict:
    current = sessions_domain.digest(credential) if credential else b""
    async with pool.acquire() as conn:
        rows = await dash_repo.list_sign_ins(conn, tenant_id=tenant_id)
    return {"data": [{"id": str(r["id"]), "created_at": r["created_at"].isoformat(),
                      "expires_at": r["expires_at"].isoformat(),
                      "last_used_at": r["last_used_at"].isoformat() if r["last_used_at"] else None,
                      "current": bytes(r["token_hash"]) == current} for r in rows]}


async def sign_out(*, pool: asyncpg.Pool, tenant_id: UUID, credential: str | None) -> None:
    """End the sign-in this request was made with (an API key is not one: 404)."""
    if not domain.is_sign_in(credential):
        raise APIError(404, "not_found", "this credential is not a dashboard sign-in")
    async with pool.acquire() as conn:
        await dash_repo.end_sign_in(conn, tenant_id=tenant_id, reason="signed_out",
                                    token_hash=sessions_domain.digest(credential))


async def revoke_sign_in(*, pool: asyncpg.Pool, tenant_id: UUID, sign_in_id: UUID) -> None:
    async with pool.acquire() as conn:
        if not await dash_repo.end_sign_in(conn, tenant_id=tenant_id, reason="revoked", sign_in_id=sign_in_id):
            raise APIError(404, "not_found", "sign-in not found")  # another tenant's looks missing too


async def end_all(*, pool: asyncpg.Pool, tenant_id: UUID, reason: str) -> int:
    """End every sign-in of a tenant and void its unused links (operator, or cancellation)."""
    async with pool.acquire() as conn:
        return await dash_repo.end_tenant_sign_ins(conn, tenant_id=tenant_id, reason=reason)


async def subscription_canceled(*, pool: asyncpg.Pool, tenant_id: UUID) -> None:
    """All of a canceled tenant's sign-ins end (its links too); not if it is active again by now
    (a late redelivery)."""
    async with transaction(pool) as conn:
        tenant = await repo.get_tenant(conn, tenant_id=tenant_id, for_update=True)
        if tenant is not None and tenant["status"] == "canceled":
            await dash_repo.end_tenant_sign_ins(conn, tenant_id=tenant_id, reason="canceled")


async def admin_list(*, pool: asyncpg.Pool, tenant_id: UUID) -> dict:
    async with pool.acquire() as conn:
        if await repo.get_tenant(conn, tenant_id=tenant_id) is None:
            raise APIError(404, "not_found", "tenant not known")
    return await list_sign_ins(pool=pool, tenant_id=tenant_id)
