"""One function per message, plus the reconciler. `backend` applies or deletes a tenant's resources.

Every cluster change for a tenant happens under that tenant's advisory lock, so handlers and the
reconciler (of any replica) never interleave on one tenant. The lock's connection also carries
that operation's transactions: one pooled connection per operation, so concurrent messages
queue for the pool instead of deadlocking on it. A backend failure is recorded
(status `failed`, last_error, metric, log line) with the message's inbox row, so the message is
acked; the reconciler then retries the tenant until it converges.
"""
import logging
from contextlib import asynccontextmanager
from datetime import datetime, timezone
from typing import Protocol
from uuid import UUID

import asyncpg

from services.provisioner import repository
from services.provisioner.domain import Action, TenantSpec, namespace_for, reconcile_actions, spec_of
from services.provisioner.metrics import FAILURES, PROVISIONING_SECONDS, RECONCILE_ACTIONS, TENANTS
from shared import faults
from shared import outbox
from shared.inbox import first_delivery
from shared.messages import PaymentVerified, SubscriptionChanged, TenantDeprovisioned, TenantProvisioned

CONSUMER = "provisioner"
log = logging.getLogger(__name__)


class Backend(Protocol):
    async def apply(self, spec: TenantSpec) -> None: ...
    async def delete(self, namespace: str) -> None: ...


async def _seen(pool: asyncpg.Pool, message_id) -> bool:
    async with pool.acquire() as conn:
        return bool(await conn.fetchval("SELECT 1 FROM inbox WHERE message_id = $1 AND consumer = $2",
                                        message_id, CONSUMER))


@asynccontextmanager
async def tenant_lock(pool: asyncpg.Pool, tenant_id: UUID, *, wait: bool = True):
    """Yields the locked connection, or None when `wait` is False and another holder has it."""
    async with pool.acquire() as conn:
        got = await repository.lock_tenant(conn, tenant_id=tenant_id, wait=wait)
        try:
            yield conn if got else None
        finally:
            if got:
                await repository.unlock_tenant(conn, tenant_id=tenant_id)


async def _record_failure(conn, *, tenant_id: UUID, operation: str, exc: Exception, message_id=None) -> None:
    error = f"{operation}: {exc}"[:1000]
    async with conn.transaction():
        if message_id and not await first_delivery(conn, message_id=message_id, consumer=CONSUMER):
            return
        await repository.set_status(conn, tenant_id=tenant_id, status="failed", error=error)
    FAILURES.labels(operation).inc()
    log.error("tenant %s failed", operation, extra={"tenant_id": str(tenant_id), "error": error})


async def _provisioned(conn, spec: TenantSpec) -> None:
    await repository.set_status(conn, tenant_id=spec.tenant_id, status="provisioned")
    await outbox.add(conn, TenantProvisioned(tenant_id=spec.tenant_id, namespace=spec.namespace,
                                             plan=spec.plan, limits=spec.limits))


async def _deprovisioned(conn, tenant_id: UUID, namespace: str) -> None:
    await repository.set_status(conn, tenant_id=tenant_id, status="deprovisioned")
    await outbox.add(conn, TenantDeprovisioned(tenant_id=tenant_id, namespace=namespace))


async def _apply(conn, spec: TenantSpec, *, backend: Backend, message_id, paid_at=None) -> None:
    """Record the wanted state, apply it, then mark provisioned and announce it (once per message)."""
    await repository.upsert_tenant(conn, spec=spec, status="provisioning")
    try:
        await backend.apply(spec)
    except Exception as exc:
        await _record_failure(conn, tenant_id=spec.tenant_id, operation="provision", exc=exc, message_id=message_id)
        return
    faults.point("provisioner.after_apply")  # applied, not yet recorded nor acked
    async with conn.transaction():
        provisioned = await first_delivery(conn, message_id=message_id, consumer=CONSUMER)
        if provisioned:
            await _provisioned(conn, spec)
    if provisioned and paid_at is not None:
        PROVISIONING_SECONDS.observe(max((datetime.now(timezone.utc) - paid_at).total_seconds(), 0))


async def provision(event: PaymentVerified, *, pool: asyncpg.Pool, backend: Backend) -> None:
    if await _seen(pool, event.message_id):
        return
    spec = TenantSpec(event.tenant_id, namespace_for(event.tenant_id), event.plan, event.limits)
    async with tenant_lock(pool, spec.tenant_id) as conn:
        tenant = await repository.get_tenant(conn, tenant_id=spec.tenant_id)
        if tenant and tenant["canceled_at"] and event.occurred_at <= tenant["canceled_at"]:
            log.info("payment older than the cancel ignored", extra={"tenant_id": str(spec.tenant_id)})
            return await _just_record(conn, event.message_id)
        await _apply(conn, spec, backend=backend, message_id=event.message_id, paid_at=event.occurred_at)


async def _just_record(conn, message_id) -> None:
    await first_delivery(conn, message_id=message_id, consumer=CONSUMER)


async def subscription_changed(event: SubscriptionChanged, *, pool: asyncpg.Pool, backend: Backend) -> None:
    if await _seen(pool, event.message_id):
        return
    async with tenant_lock(pool, event.tenant_id) as conn:
        tenant = await repository.get_tenant(conn, tenant_id=event.tenant_id)
        if tenant is None or tenant["desired"] == "absent":
            return await _just_record(conn, event.message_id)  # nothing paid yet / already canceled
        if event.status == "canceled":
            return await _cancel(conn, tenant, backend=backend, event=event)
        plan_changed = event.limits is not None and (event.plan != tenant["plan"] or
                                                     event.limits.model_dump() != tenant["limits"])
        if not plan_changed:
            return await _just_record(conn, event.message_id)
        spec = TenantSpec(event.tenant_id, tenant["namespace"], event.plan, event.limits)
        await _apply(conn, spec, backend=backend, message_id=event.message_id)


async def _cancel(conn, tenant, *, backend: Backend, event: SubscriptionChanged) -> None:
    message_id = event.message_id
    await repository.mark_absent(conn, tenant_id=tenant["tenant_id"], canceled_at=event.occurred_at)
    try:
        await backend.delete(tenant["namespace"])
    except Exception as exc:
        await _record_failure(conn, tenant_id=tenant["tenant_id"], operation="deprovision", exc=exc,
                              message_id=message_id)
        return
    async with conn.transaction():
        if await first_delivery(conn, message_id=message_id, consumer=CONSUMER):
            await _deprovisioned(conn, tenant["tenant_id"], tenant["namespace"])


async def reconcile(*, pool: asyncpg.Pool, backend, stale_seconds: float) -> list[Action]:
    """Compare the tenants table with what the cluster holds (by label) and converge.

    The cluster is listed before the table is read: a namespace seen in the cluster belongs to a
    row committed before its apply started, so a tenant being created is never taken for an orphan."""
    cluster = await backend.inventory()
    async with pool.acquire() as conn:
        rows = await repository.list_tenants(conn)
    actions = reconcile_actions(rows, cluster, backend.expected, stale_seconds=stale_seconds)
    done = []
    for action in actions:
        async with tenant_lock(pool, action.tenant_id, wait=False) as conn:
            if conn and await _reconcile_one(conn, backend, action):
                done.append(action)
                RECONCILE_ACTIONS.labels(action.kind).inc()
    async with pool.acquire() as conn:
        counts = await repository.count_by_status(conn)
    for status in ("provisioning", "provisioned", "deprovisioning", "deprovisioned", "failed"):
        TENANTS.labels(status).set(counts.get(status, 0))
    return done


async def _reconcile_one(conn, backend, action: Action) -> bool:
    row = await repository.get_tenant(conn, tenant_id=action.tenant_id)  # re-read under the lock
    wanted = row is not None and row["desired"] == "present"
    if action.kind == "delete" and not wanted:
        log.info("reconciler deleting orphaned namespace", extra={"namespace": action.namespace,
                                                                  "tenant_id": str(action.tenant_id)})
        try:
            await backend.delete(action.namespace)
        except Exception as exc:
            if row is not None:
                await _record_failure(conn, tenant_id=action.tenant_id, operation="deprovision", exc=exc)
            else:
                FAILURES.labels("orphan_delete").inc()
                log.error("orphan delete failed", extra={"namespace": action.namespace, "error": str(exc)[:500]})
            return False
        if row is not None and row["status"] != "deprovisioned":
            async with conn.transaction():
                await _deprovisioned(conn, action.tenant_id, row["namespace"])
        return True
    if action.kind == "apply" and wanted:
        spec = spec_of(row)
        log.info("reconciler applying tenant", extra={"tenant_id": str(spec.tenant_id), "status": row["status"]})
        try:
            await backend.apply(spec)
        except Exception as exc:
            await _record_failure(conn, tenant_id=spec.tenant_id, operation="provision", exc=exc)
            return False
        if row["status"] != "provisioned":
            async with conn.transaction():
                await _provisioned(conn, spec)
        return True
    if action.kind == "finish_deprovision" and not wanted and row["status"] != "deprovisioned":
        async with conn.transaction():
            await _deprovisioned(conn, action.tenant_id, row["namespace"])
        return True
    return False
