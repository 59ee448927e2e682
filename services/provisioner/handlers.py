"""One function per message. `backend` applies or deletes a tenant's resources."""
from typing import Protocol

import asyncpg

from services.provisioner import repository
from services.provisioner.domain import TenantSpec, namespace_for
from shared import outbox
from shared.db import transaction
from shared.inbox import first_delivery
from shared.messages import PaymentVerified, SubscriptionChanged, TenantDeprovisioned, TenantProvisioned

CONSUMER = "provisioner"


class Backend(Protocol):
    async def apply(self, spec: TenantSpec) -> None: ...
    async def delete(self, namespace: str) -> None: ...


async def _seen(pool: asyncpg.Pool, message_id) -> bool:
    async with pool.acquire() as conn:
        return bool(await conn.fetchval("SELECT 1 FROM inbox WHERE message_id = $1 AND consumer = $2",
                                        message_id, CONSUMER))


async def provision(event: PaymentVerified, *, pool: asyncpg.Pool, backend: Backend) -> None:
    if await _seen(pool, event.message_id):
        return
    spec = TenantSpec(event.tenant_id, namespace_for(event.tenant_id), event.plan, event.limits)
    async with transaction(pool) as conn:
        await repository.upsert_tenant(conn, spec=spec, status="provisioning")
    await backend.apply(spec)
    async with transaction(pool) as conn:
        if not await first_delivery(conn, message_id=event.message_id, consumer=CONSUMER):
            return
        await repository.set_status(conn, tenant_id=spec.tenant_id, status="provisioned")
        await outbox.add(conn, TenantProvisioned(tenant_id=spec.tenant_id, namespace=spec.namespace,
                                                 plan=spec.plan, limits=spec.limits))


async def subscription_changed(event: SubscriptionChanged, *, pool: asyncpg.Pool, backend: Backend) -> None:
    if event.status != "canceled" or await _seen(pool, event.message_id):
        async with transaction(pool) as conn:
            await first_delivery(conn, message_id=event.message_id, consumer=CONSUMER)
        return
    async with pool.acquire() as conn:
        tenant = await repository.get_tenant(conn, tenant_id=event.tenant_id)
    if tenant is None:
        async with transaction(pool) as conn:
            await first_delivery(conn, message_id=event.message_id, consumer=CONSUMER)
        return
    async with transaction(pool) as conn:
        await repository.set_status(conn, tenant_id=event.tenant_id, status="deprovisioning")
    await backend.delete(tenant["namespace"])
    async with transaction(pool) as conn:
        if not await first_delivery(conn, message_id=event.message_id, consumer=CONSUMER):
            return
        await repository.set_status(conn, tenant_id=event.tenant_id, status="deprovisioned")
        await outbox.add(conn, TenantDeprovisioned(tenant_id=event.tenant_id, namespace=tenant["namespace"]))
