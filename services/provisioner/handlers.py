"""One function per message, plus the reconciler, given the unit of work `uow` (ports.UnitOfWork) and
the `backend` (ports.Backend) that applies or deletes a tenant's resources.

Every cluster change for a tenant happens under that tenant's lock (`uow.tenant_lock`), so handlers and
the reconciler (of any replica) never interleave on one tenant. A backend failure is recorded
(status `failed`, last_error, metric, log line) with the message's inbox row, so the message is
acked; the reconciler then retries the tenant until it converges.
"""
import logging
from datetime import datetime, timezone
from uuid import UUID

from services.provisioner.domain import Action, TenantSpec, namespace_for, reconcile_actions, spec_of
from services.provisioner.metrics import FAILURES, PROVISIONING_SECONDS, RECONCILE_ACTIONS, TENANTS
from services.provisioner.ports import Backend, ClusterBackend, Locked, Tx, UnitOfWork
from shared import faults
from shared.messages import PaymentVerified, SubscriptionChanged, TenantDeprovisioned, TenantProvisioned

log = logging.getLogger(__name__)
STATUSES = ("provisioning", "provisioned", "deprovisioning", "deprovisioned", "failed")


async def _seen(uow: UnitOfWork, message_id: UUID) -> bool:
    async with uow.connect() as tx:
        return await tx.seen(message_id)


async def _record_failure(locked: Locked, *, tenant_id: UUID, operation: str, exc: Exception,
                          message_id: UUID | None = None) -> None:
    error = f"{operation}: {exc}"[:1000]
    async with locked.begin() as tx:
        if message_id and not await tx.first_delivery(message_id):
            return
        await tx.repo.set_status(tenant_id=tenant_id, status="failed", error=error)
    FAILURES.labels(operation).inc()
    log.error("tenant %s failed", operation, extra={"tenant_id": str(tenant_id), "error": error})


async def _provisioned(tx: Tx, spec: TenantSpec) -> None:
    await tx.repo.set_status(tenant_id=spec.tenant_id, status="provisioned")
    await tx.publish(TenantProvisioned(tenant_id=spec.tenant_id, namespace=spec.namespace, plan=spec.plan,
                                       limits=spec.limits))


async def _deprovisioned(tx: Tx, tenant_id: UUID, namespace: str) -> None:
    await tx.repo.set_status(tenant_id=tenant_id, status="deprovisioned")
    await tx.publish(TenantDeprovisioned(tenant_id=tenant_id, namespace=namespace))


async def _just_record(locked: Locked, message_id: UUID) -> None:
    async with locked.begin() as tx:
        await tx.first_delivery(message_id)


async def _apply(locked: Locked, spec: TenantSpec, *, backend: Backend, message_id: UUID,
                 paid_at: datetime | None = None) -> None:
    """Record the wanted state, apply it, then mark provisioned and announce it (once per message)."""
    await locked.repo.upsert_tenant(spec=spec, status="provisioning")
    try:
        await backend.apply(spec)
    except Exception as exc:
        await _record_failure(locked, tenant_id=spec.tenant_id, operation="provision", exc=exc,
                              message_id=message_id)
        return
    faults.point("provisioner.after_apply")  # applied, not yet recorded nor acked
    async with locked.begin() as tx:
        provisioned = await tx.first_delivery(message_id)
        if provisioned:
            await _provisioned(tx, spec)
    if provisioned and paid_at is not None:
        PROVISIONING_SECONDS.observe(max((datetime.now(timezone.utc) - paid_at).total_seconds(), 0))


async def provision(event: PaymentVerified, *, uow: UnitOfWork, backend: Backend) -> None:
    if await _seen(uow, event.message_id):
        return
    spec = TenantSpec(event.tenant_id, namespace_for(event.tenant_id), event.plan, event.limits)
    async with uow.tenant_lock(spec.tenant_id) as locked:
        tenant = await locked.repo.get_tenant(tenant_id=spec.tenant_id)
        if tenant and tenant["canceled_at"] and event.occurred_at <= tenant["canceled_at"]:
            log.info("payment older than the cancel ignored", extra={"tenant_id": str(spec.tenant_id)})
            return await _just_record(locked, event.message_id)
        await _apply(locked, spec, backend=backend, message_id=event.message_id, paid_at=event.occurred_at)


async def subscription_changed(event: SubscriptionChanged, *, uow: UnitOfWork, backend: Backend) -> None:
    if await _seen(uow, event.message_id):
        return
    async with uow.tenant_lock(event.tenant_id) as locked:
        tenant = await locked.repo.get_tenant(tenant_id=event.tenant_id)
        if tenant is None or tenant["desired"] == "absent":
            return await _just_record(locked, event.message_id)  # nothing paid yet / already canceled
        if event.status == "canceled":
            return await _cancel(locked, tenant, backend=backend, event=event)
        plan_changed = event.limits is not None and (event.plan != tenant["plan"] or
                                                     event.limits.model_dump() != tenant["limits"])
        if not plan_changed:
            return await _just_record(locked, event.message_id)
        spec = TenantSpec(event.tenant_id, tenant["namespace"], event.plan, event.limits)
        await _apply(locked, spec, backend=backend, message_id=event.message_id)


async def _cancel(locked: Locked, tenant, *, backend: Backend, event: SubscriptionChanged) -> None:
    await locked.repo.mark_absent(tenant_id=tenant["tenant_id"], canceled_at=event.occurred_at)
    try:
        await backend.delete(tenant["namespace"])
    except Exception as exc:
        await _record_failure(locked, tenant_id=tenant["tenant_id"], operation="deprovision", exc=exc,
                              message_id=event.message_id)
        return
    async with locked.begin() as tx:
        if await tx.first_delivery(event.message_id):
            await _deprovisioned(tx, tenant["tenant_id"], tenant["namespace"])


async def reconcile(*, uow: UnitOfWork, backend: ClusterBackend, stale_seconds: float) -> list[Action]:
    """Compare the tenants table with what the cluster holds (by label) and converge.

    The cluster is listed before the table is read: a namespace seen in the cluster belongs to a
    row committed before its apply started, so a tenant being created is never taken for an orphan."""
    cluster = await backend.inventory()
    async with uow.connect() as tx:
        rows = await tx.repo.list_tenants()
    actions = reconcile_actions(rows, cluster, backend.expected, stale_seconds=stale_seconds)
    done = []
    for action in actions:
        async with uow.tenant_lock(action.tenant_id, wait=False) as locked:
            if locked and await _reconcile_one(locked, backend, action):
                done.append(action)
                RECONCILE_ACTIONS.labels(action.kind).inc()
    async with uow.connect() as tx:
        counts = await tx.repo.count_by_status()
    for status in STATUSES:
        TENANTS.labels(status).set(counts.get(status, 0))
    return done


async def _reconcile_one(locked: Locked, backend: Backend, action: Action) -> bool:
    row = await locked.repo.get_tenant(tenant_id=action.tenant_id)  # re-read under the lock
    wanted = row is not None and row["desired"] == "present"
    if action.kind == "delete" and not wanted:
        log.info("reconciler deleting orphaned namespace", extra={"namespace": action.namespace,
                                                                  "tenant_id": str(action.tenant_id)})
        try:
            await backend.delete(action.namespace)
        except Exception as exc:
            if row is not None:
                await _record_failure(locked, tenant_id=action.tenant_id, operation="deprovision", exc=exc)
            else:
                FAILURES.labels("orphan_delete").inc()
                log.error("orphan delete failed", extra={"namespace": action.namespace, "error": str(exc)[:500]})
            return False
        if row is not None and row["status"] != "deprovisioned":
            async with locked.begin() as tx:
                await _deprovisioned(tx, action.tenant_id, row["namespace"])
        return True
    if action.kind == "apply" and wanted:
        spec = spec_of(row)
        log.info("reconciler applying tenant", extra={"tenant_id": str(spec.tenant_id), "status": row["status"]})
        try:
            await backend.apply(spec)
        except Exception as exc:
            await _record_failure(locked, tenant_id=spec.tenant_id, operation="provision", exc=exc)
            return False
        if row["status"] != "provisioned":
            async with locked.begin() as tx:
                await _provisioned(tx, spec)
        return True
    if action.kind == "finish_deprovision" and not wanted and row["status"] != "deprovisioned":
        async with locked.begin() as tx:
            await _deprovisioned(tx, action.tenant_id, row["namespace"])
        return True
    return False
