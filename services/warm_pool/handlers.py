"""One function per command or message, given its ports: the `pool` (ports.Pool: LocalPool or
ClusterPool) and the unit of work `uow` (ports.UnitOfWork).

The database is the coordinator: every browser is a row whose state moves
launching → idle → leased → retiring → dead (or launching → leased for on-demand launches);
a context host's launching → hosting → retiring → dead, its contexts rows of their own.
"""
import asyncio
import logging
from pathlib import Path

from services.warm_pool import handlers_profiles, metrics
from services.warm_pool.handlers_profiles import ProfileSessions
from services.warm_pool.ports import Pool, Row, UnitOfWork
from services.warm_pool.pools import context_reply, report_gone
from shared.messages import (LeaseReleased, LeaseReply, LeaseRequest, SessionCompleted, SessionStarted, SubscriptionChanged,
                             TenantProvisioned)
from shared.plans import plan_limits

log = logging.getLogger(__name__)
VIEW_RATE_WINDOW_S = 60


# --- lease RPC -------------------------------------------------------------------------------

async def lease(req: LeaseRequest, *, pool: Pool, uow: UnitOfWork,
                profiles: ProfileSessions | None = None) -> LeaseReply:
    if req.profile_id is not None:  # the profile's state into the browser (handlers_profiles)
        return await handlers_profiles.lease(req, pool=pool, uow=uow, profiles=profiles,
                                             plain=lambda r: _lease(r, pool=pool, uow=uow))
    return await _lease(req, pool=pool, uow=uow)


async def _lease(req: LeaseRequest, *, pool: Pool, uow: UnitOfWork) -> LeaseReply:
    if req.isolation == "context":
        return await lease_context(req, pool=pool, uow=uow)
    reply = await pool.take_idle(req)  # the common case, in one round trip
    if reply is not None:
        return reply
    async with uow.connect() as tx:
        tenant = await tx.repo.get_tenant(tenant_id=req.tenant_id)
        if tenant is None or tenant["status"] != "active":
            metrics.LEASES.labels("unknown_tenant").inc()
            return LeaseReply(ok=False, error="unknown_tenant")
        row = await tx.repo.leased_for_session(session_id=req.session_id)
    if row is not None:  # a retried request: the same answer, never a second browser
        if row["state"] == "leased":
            return await pool.with_downloads(req, LeaseReply(ok=True, browser_id=row["id"], cdp_ws_url=row["cdp_ws_url"],
                                                             warm=bool(row["warm"])))
        return LeaseReply(ok=False, error="error")
    return await pool.lease_new(req, tenant=tenant)


async def lease_context(req: LeaseRequest, *, pool: Pool, uow: UnitOfWork) -> LeaseReply:
    reply = await context_reply(uow, req.session_id)
    if reply is not None:  # a retried request: the same answer, never a second context
        return reply
    async with uow.connect() as tx:
        tenant = await tx.repo.get_tenant(tenant_id=req.tenant_id)
    if tenant is None or tenant["status"] != "active":
        metrics.CONTEXT_LEASES.labels("unknown_tenant").inc()
        return LeaseReply(ok=False, error="unknown_tenant")
    return await pool.lease_context(req, tenant=tenant)


# --- pool maintenance ------------------------------------------------------------------------

async def check_crashes(*, pool: Pool, uow: UnitOfWork) -> None:
    """Browsers whose process died unasked: dead; a leased one is reported; the pool refills."""
    for browser_id in await pool.crashed():
        await pool.destroy(browser_id)
        async with uow.begin() as tx:
            before = await tx.repo.mark_dead(browser_id=browser_id)
            if before is None or before["state"] == "retiring":
                continue
            metrics.CRASHES.labels(before["state"]).inc()
            reported = await report_gone(tx, browser_id, before)
            log.warning("browser died", extra={"browser_id": str(browser_id), "state": before["state"],
                                               "sessions": reported})
        pool.request_refill(before["tenant_id"])


async def reconcile(*, pool: Pool, uow: UnitOfWork, confirm_timeout_s: float) -> None:
    """One pass: reclaim unconfirmed leases, then the pool's own pass (retired browsers, sizes)."""
    async with uow.begin() as tx:
        await tx.repo.reclaim_unconfirmed(timeout_s=confirm_timeout_s)
        await tx.repo.reclaim_unconfirmed_contexts(timeout_s=confirm_timeout_s)  # disposed by pool.reconcile
    await pool.reconcile()
    async with uow.connect() as tx:
        counts = await tx.repo.own_counts(replica_id=pool.replica_id)
        contexts = await tx.repo.own_context_counts(replica_id=pool.replica_id)
    metrics.IDLE.set(counts.get("idle", 0))
    metrics.LEASED.set(counts.get("leased", 0))
    metrics.LAUNCHING.set(counts.get("launching", 0))
    metrics.CONTEXT_HOSTS.set(contexts["hosts"])
    metrics.ACTIVE_CONTEXTS.set(contexts["active"])


async def prune(*, uow: UnitOfWork, retention_s: float) -> int:
    """Delete the rows of browsers dead for longer than the retention (any replica's)."""
    async with uow.begin() as tx:
        pruned = await tx.repo.prune_dead(older_than_s=retention_s)
    metrics.PRUNED.inc(pruned)
    return pruned


async def start_up(*, pool: Pool) -> None:
    await pool.start_up()


async def shut_down(*, pool: Pool) -> None:
    await pool.shut_down()


async def pool_view(*, uow: UnitOfWork) -> list[Row]:
    """Per tenant: plan, status and browser counts (the admin API's view)."""
    async with uow.connect() as tx:
        return await tx.repo.tenant_pools(rate_window_s=VIEW_RATE_WINDOW_S)


# --- messages --------------------------------------------------------------------------------

async def tenant_provisioned(event: TenantProvisioned, *, pool: Pool, uow: UnitOfWork) -> None:
    async with uow.begin() as tx:
        if not await tx.first_delivery(event.message_id):
            return
        await tx.repo.upsert_tenant(tenant_id=event.tenant_id, plan=event.plan,
                                    prewarm=event.limits.prewarm_browsers,
                                    max_concurrent=event.limits.max_concurrent_sessions, status="active",
                                    namespace=event.namespace)
    pool.request_refill(event.tenant_id)


async def session_started(event: SessionStarted, *, uow: UnitOfWork) -> None:
    async with uow.begin() as tx:
        if await tx.first_delivery(event.message_id):
            await tx.repo.confirm(browser_id=event.browser_id, session_id=event.session_id)
            await tx.repo.confirm_context(session_id=event.session_id)


async def session_completed(event: SessionCompleted, *, pool: Pool, uow: UnitOfWork,
                            profiles: ProfileSessions | None = None) -> None:
    # A persisting session's state is saved while its context or browser is still there.
    await handlers_profiles.session_ended(event, pool=pool, uow=uow, profiles=profiles)
    async with uow.begin() as tx:
        if not await tx.first_delivery(event.message_id):
            return
        # A context session: its context goes, its host (event.browser_id) stays. retire_session
        # leaves context hosts alone too, so a context that ended already changes nothing.
        context = await tx.repo.context_ending(session_id=event.session_id)
        rows = [] if context else await tx.repo.retire_session(session_id=event.session_id,
                                                               browser_id=event.browser_id)
    if context is not None:
        if pool.may_destroy(context):  # else its host's replica disposes it at its next reconcile
            await pool.end_context(event.session_id)
        return
    # The retired browsers this replica may kill (the others' owners do it), then refill.
    await asyncio.gather(*(pool.kill(r["id"]) for r in rows if pool.may_destroy(r)))
    for tenant_id in {r["tenant_id"] for r in rows}:
        pool.request_refill(tenant_id)


async def lease_released(event: LeaseReleased, *, pool: Pool, uow: UnitOfWork) -> None:
    """A context sessions leased ahead and never used (services/sessions/reservations.py)."""
    async with uow.begin() as tx:
        if not await tx.first_delivery(event.message_id):
            return
        context = await tx.repo.context_ending(session_id=event.session_id, unconfirmed_of=event.tenant_id)
    if context is not None and pool.may_destroy(context):
        await pool.end_context(event.session_id)


async def subscription_changed(event: SubscriptionChanged, *, pool: Pool, uow: UnitOfWork, plans_file: Path) -> None:
    rows = []
    async with uow.begin() as tx:
        if not await tx.first_delivery(event.message_id):
            return
        await tx.repo.lock_tenant(tenant_id=event.tenant_id)  # no refill slips past a drain
        tenant = await tx.repo.get_tenant(tenant_id=event.tenant_id)
        if tenant is None:
            return
        await tx.repo.set_tenant_canceled(tenant_id=event.tenant_id, canceled=event.status == "canceled")
        if event.status == "canceled":
            await tx.repo.set_tenant_status(tenant_id=event.tenant_id, status="draining")
            rows = await tx.repo.retire_tenant(tenant_id=event.tenant_id, with_leased=pool.retires_leased_on_cancel)
        else:
            limits = event.limits or plan_limits(plans_file, event.plan)
            await tx.repo.upsert_tenant(
                tenant_id=event.tenant_id, plan=event.plan,
                prewarm=limits.prewarm_browsers if limits else tenant["prewarm"],
                max_concurrent=limits.max_concurrent_sessions if limits else tenant["max_concurrent"],
                status="active")
    await asyncio.gather(*(pool.kill(r["id"]) for r in rows if pool.may_destroy(r)))
    if event.status != "canceled":
        pool.request_refill(event.tenant_id)
