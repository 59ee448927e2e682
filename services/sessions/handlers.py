"""The messages sessions consumes, one function each, given the unit of work `uow`
(ports.UnitOfWork): the tenant projection (payments, provisioning, subscription changes), crashed
browsers, profile saves. HTTP commands live by concern: create.py, ending.py, api_keys.py, views.py."""
from pathlib import Path
from uuid import UUID

from services.sessions.ending import end_in_tx
from services.sessions.ports import Ended, UnitOfWork
from shared.messages import (BrowserCrashed, PaymentVerified, ProfileSaved, SubscriptionChanged,
                             TenantDeprovisioned, TenantProvisioned)
from shared.plans import plan_limits


async def payment_verified(event: PaymentVerified, *, uow: UnitOfWork) -> None:
    async with uow.begin() as tx:
        if not await tx.first_delivery(event.message_id):
            return
        await tx.repo.upsert_tenant(tenant_id=event.tenant_id, plan=event.plan,
                                    max_concurrent=event.limits.max_concurrent_sessions,
                                    max_session_seconds=event.limits.max_session_seconds)
        await tx.repo.open_period(tenant_id=event.tenant_id, period_start=event.period_start,
                                  period_end=event.period_end, credits=event.credits)


async def tenant_provisioned(event: TenantProvisioned, *, uow: UnitOfWork) -> None:
    async with uow.begin() as tx:
        if not await tx.first_delivery(event.message_id):
            return
        await tx.repo.upsert_tenant(tenant_id=event.tenant_id, plan=event.plan, provisioned=True,
                                    max_concurrent=event.limits.max_concurrent_sessions,
                                    max_session_seconds=event.limits.max_session_seconds)


async def tenant_deprovisioned(event: TenantDeprovisioned, *, uow: UnitOfWork) -> None:
    async with uow.begin() as tx:
        if await tx.first_delivery(event.message_id):
            await tx.repo.mark_deprovisioned(tenant_id=event.tenant_id)


async def subscription_changed(event: SubscriptionChanged, *, uow: UnitOfWork, plans_file: Path,
                               ended: Ended) -> None:
    done: list[UUID] = []
    async with uow.begin() as tx:
        if not await tx.first_delivery(event.message_id):
            return
        limits = event.limits or plan_limits(plans_file, event.plan)
        if limits is not None:
            await tx.repo.upsert_tenant(tenant_id=event.tenant_id, plan=event.plan,
                                        max_concurrent=limits.max_concurrent_sessions,
                                        max_session_seconds=limits.max_session_seconds)
        await tx.repo.set_tenant_status(tenant_id=event.tenant_id, status=event.status)
        if event.status == "canceled":
            for session_id in await tx.repo.running_ids(tenant_id=event.tenant_id):
                if await end_in_tx(tx, session_id=session_id, reason="canceled", plans_file=plans_file):
                    done.append(session_id)
            # A canceled tenant's dashboard sign-ins end with it.
            await tx.dashboard.end_tenant_sign_ins(tenant_id=event.tenant_id, reason="canceled")
    for session_id in done:
        ended(session_id, "canceled")


async def browser_crashed(event: BrowserCrashed, *, uow: UnitOfWork, plans_file: Path, ended: Ended) -> None:
    async with uow.begin() as tx:
        if not await tx.first_delivery(event.message_id):
            return
        # A shared browser (context mode) hosts several sessions: without a session_id, all of them end.
        session_ids = ([event.session_id] if event.session_id
                       else await tx.repo.sessions_for_browser(browser_id=event.browser_id))
        if event.session_id:  # a lease not recorded running yet (still starting, or leased ahead) never will be
            await tx.repo.record_crashed_lease(session_id=event.session_id, browser_id=event.browser_id)
        rows = [await end_in_tx(tx, session_id=s, reason="browser_crashed", plans_file=plans_file)
                for s in session_ids]
    for row in rows:
        if row is not None:
            ended(row["id"], "browser_crashed")


async def profile_saved(event: ProfileSaved, *, uow: UnitOfWork) -> None:
    async with uow.begin() as tx:
        if await tx.first_delivery(event.message_id):
            await tx.repo.set_profile_save(session_id=event.session_id, outcome=event.outcome,
                                           message=event.message)
