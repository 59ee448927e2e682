"""Dashboard sign-ins: operator links exchanged once for a sign-in, which is a credential the
server keeps (as its hash) and can end. Ports: the unit of work and the API-key lookups."""
from datetime import datetime, timezone
from uuid import UUID, uuid4

from services.sessions import domain as sessions_domain
from services.sessions.api_keys import ApiKeys, remember
from services.sessions.dashboard import domain
from services.sessions.domain import NotFound, Refused
from services.sessions.ports import UnitOfWork
from shared import http

# Ended and expired links and sign-ins are kept this long (for the operator), then forgotten.
KEEP_S = 7 * 24 * 3600


class DashboardAuth:
    """API keys, plus the dashboard sign-ins. A sign-in is looked up on every request (a read
    by its hash, no cache): ending it, or the tenant's cancellation, takes effect at once."""

    def __init__(self, api_keys: ApiKeys):
        self.api_keys, self.uow = api_keys, api_keys.uow
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
            async with self.uow.connect() as tx:
                row = await tx.dashboard.find_sign_in(token_hash=token_hash)
                if row is not None and _touch_due(row["last_used_at"]):
                    await tx.dashboard.touch_sign_in(sign_in_id=row["id"])
        if row is None:
            self._worked.pop(token_hash, None)
            http.auth_failed()
            raise Refused("unauthorized", "the dashboard sign-in has ended, sign in again")
        remember(self._worked, token_hash, None)
        return row

    async def revoke(self, key_id: UUID) -> None:
        await self.api_keys.revoke(key_id)


def _touch_due(last_used_at: datetime | None) -> bool:
    return last_used_at is None or (datetime.now(timezone.utc) - last_used_at).total_seconds() > domain.TOUCH_EVERY_S


async def mint_link(*, uow: UnitOfWork, tenant_id: UUID, public_url: str, ttl_s: int) -> dict:
    link = domain.new_link()
    async with uow.begin() as tx:
        if await tx.repo.get_tenant(tenant_id=tenant_id) is None:
            raise NotFound("tenant not known yet")
        await tx.dashboard.prune_sign_ins(keep_s=KEEP_S)
        expires_at = await tx.dashboard.insert_link(token_hash=sessions_domain.digest(link), tenant_id=tenant_id,
                                                    ttl_s=ttl_s)
    # In the fragment: browsers never send it to the server, so it stays out of access logs.
    return {"url": f"{public_url.rstrip('/')}/dashboard/#link={link}", "expires_at": expires_at.isoformat()}


async def exchange_link(*, uow: UnitOfWork, link: str) -> dict:
    """The link's one sign-in; a used, expired or unknown link (or a canceled tenant's) is a 401."""
    credential, sign_in_id = domain.new_sign_in(), uuid4()
    http.refuse_if_throttled()
    async with uow.begin() as tx:
        tenant_id = None
        if link.startswith(domain.LINK_PREFIX):
            tenant_id = await tx.dashboard.use_link(token_hash=sessions_domain.digest(link))
        if tenant_id is None:
            http.auth_failed()
            raise Refused("unauthorized", "this dashboard link is invalid, used or expired")
        expires_at = await tx.dashboard.insert_sign_in(sign_in_id=sign_in_id, tenant_id=tenant_id,
                                                       token_hash=sessions_domain.digest(credential),
                                                       ttl_s=domain.SESSION_TTL_S)
    return {"credential": credential, "expires_at": expires_at.isoformat()}


async def list_sign_ins(*, uow: UnitOfWork, tenant_id: UUID, credential: str | None = None) -> dict:
    current = sessions_domain.digest(credential) if credential else b""
    async with uow.connect() as tx:
        rows = await tx.dashboard.list_sign_ins(tenant_id=tenant_id)
    return {"data": [{"id": str(r["id"]), "created_at": r["created_at"].isoformat(),
                      "expires_at": r["expires_at"].isoformat(),
                      "last_used_at": r["last_used_at"].isoformat() if r["last_used_at"] else None,
                      "current": bytes(r["token_hash"]) == current} for r in rows]}


async def sign_out(*, uow: UnitOfWork, tenant_id: UUID, credential: str | None) -> None:
    """End the sign-in this request was made with (an API key is not one: 404)."""
    if not domain.is_sign_in(credential):
        raise NotFound("this credential is not a dashboard sign-in")
    async with uow.connect() as tx:
        await tx.dashboard.end_sign_in(tenant_id=tenant_id, reason="signed_out",
                                       token_hash=sessions_domain.digest(credential))


async def revoke_sign_in(*, uow: UnitOfWork, tenant_id: UUID, sign_in_id: UUID) -> None:
    async with uow.connect() as tx:
        if not await tx.dashboard.end_sign_in(tenant_id=tenant_id, reason="revoked", sign_in_id=sign_in_id):
            raise NotFound("sign-in not found")  # another tenant's looks missing too


async def end_all(*, uow: UnitOfWork, tenant_id: UUID, reason: str) -> int:
    """End every sign-in of a tenant and void its unused links (operator, or cancellation)."""
    async with uow.connect() as tx:
        return await tx.dashboard.end_tenant_sign_ins(tenant_id=tenant_id, reason=reason)


async def admin_list(*, uow: UnitOfWork, tenant_id: UUID) -> dict:
    async with uow.connect() as tx:
        if await tx.repo.get_tenant(tenant_id=tenant_id) is None:
            raise NotFound("tenant not known")
    return await list_sign_ins(uow=uow, tenant_id=tenant_id)
