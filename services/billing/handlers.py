"""Stripe events and consumed messages, one function each, given the unit of work `uow`
(ports.UnitOfWork) and the plans. Checkout is in checkout.py, meter reports in metering.py, the
operator's views in views.py."""
import logging
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from uuid import UUID

from services.billing import domain, metrics
from services.billing.domain import (CheckoutCompleted, Entry, InvoiceFailed, InvoicePaid, Ignored, Ref,
                                     SubscriptionState)
from services.billing.ports import Tx, UnitOfWork
from shared import faults
from shared.messages import PaymentVerified, SessionCompleted, SessionStarted, SubscriptionChanged
from shared.plans import Plan

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Refusal:
    tenant_id: UUID
    account_customer: str
    event_customer: str | None
    subscription_id: str | None


@dataclass(frozen=True)
class Outcome:
    done: bool                 # False: keep the event and retry it later
    reason: str = ""
    tenant_linked: bool = False  # a tenant got its Stripe ids: waiting events may resolve now
    type: str = ""
    refused: Refusal | None = None  # done, with no effect: it would rebind the tenant


WAITING = Outcome(False, "tenant or plan not known yet")


@dataclass
class _Account:
    tenant_id: UUID
    row: dict  # the locked accounts row
    created: bool
    plan: Plan | None


async def _account_for(tx: Tx, ref: Ref, plans: dict[str, Plan], *, prefer_price: bool = False) -> _Account | None:
    """Resolve and lock the tenant's account; None while the event cannot be tied to one."""
    tenant_id = ref.tenant_id or await tx.repo.find_tenant(subscription=ref.subscription,
                                                             customer=ref.customer)
    if tenant_id is None:
        return None
    existing = await tx.repo.lock_existing_account(tenant_id=tenant_id)
    plan = domain.plan_for(ref, plans, fallback=existing["plan"] if existing else None, prefer_price=prefer_price)
    if existing is not None:
        return _Account(tenant_id, existing, False, plan)
    if plan is None:
        return None
    row = await tx.repo.lock_account(tenant_id=tenant_id, plan=plan.name)
    return _Account(tenant_id, row, True, plan)


async def _passed_over(tx, acct: _Account, ref: Ref) -> Outcome | None:
    """Refused (another customer), or for a subscription this tenant has since replaced: no effect."""
    if refused := _refused(acct, ref):
        return refused
    if await tx.repo.is_superseded(tenant_id=acct.tenant_id, subscription_id=ref.subscription):
        log.warning("stripe event for a superseded subscription ignored; cancel that subscription at Stripe",
                    extra={"tenant_id": str(acct.tenant_id), "subscription_id": ref.subscription})
        return Outcome(True, "a subscription this tenant has replaced")
    return None


async def _switch_subscription(tx, acct: _Account, ref: Ref) -> None:
    """A plan change paid by a new subscription (the same customer): the previous one is let go."""
    old = acct.row["subscription_id"]
    if old and ref.subscription and old != ref.subscription:
        await tx.repo.supersede_subscription(tenant_id=acct.tenant_id, subscription_id=old,
                                                by=ref.subscription)


def _refused(acct: _Account, ref: Ref) -> Outcome | None:
    have = acct.row["stripe_customer_id"]
    if not domain.binding_conflict(account_customer=have, event_customer=ref.customer):
        return None
    return Outcome(True, "refused: the tenant is bound to another Stripe customer",
                   refused=Refusal(acct.tenant_id, have, ref.customer, ref.subscription))


async def _append(tx: Tx, tenant_id: UUID, entry: Entry) -> bool:
    """One ledger entry (False if its (kind, reference) is there already), counted in the metrics."""
    added = await tx.repo.append_entry(tenant_id=tenant_id, entry=entry)
    if added:
        metrics.CREDITS.labels(entry.kind).inc(abs(entry.amount))
    return added


def _is_stale(row, created: datetime | None) -> bool:
    return created is not None and row["status_event_at"] is not None and created < row["status_event_at"]


async def _change(tx, acct: _Account, *, status: str, plan: Plan, created: datetime | None, **fields) -> None:
    """Set status/plan (and other columns); tell the other services when status or plan changed."""
    old = acct.row
    await tx.repo.update_account(tenant_id=acct.tenant_id, status=status, plan=plan.name,
                                    status_event_at=max(filter(None, [created, old["status_event_at"]]),
                                                        default=None), **fields)
    # Only a tenant already announced by a PaymentVerified is news to the other services.
    announced = not acct.created and old["period_start"] is not None
    if announced and (old["status"] != status or old["plan"] != plan.name):
        await tx.publish(SubscriptionChanged(tenant_id=acct.tenant_id, plan=plan.name, status=status,
                                                   limits=plan.limits))


async def checkout_completed(tx, ev: CheckoutCompleted, *, plans, created) -> Outcome:
    acct = await _account_for(tx, ev.ref, plans)
    if acct is None:
        return WAITING
    if passed := await _passed_over(tx, acct, ev.ref):
        return passed
    if acct.plan is None:
        return WAITING
    if acct.row["status"] == "canceled" and acct.row["subscription_id"] == ev.ref.subscription:
        return Outcome(True, "subscription already canceled")
    await _switch_subscription(tx, acct, ev.ref)
    await _change(tx, acct, status="active", plan=acct.plan, created=created,
                  stripe_customer_id=ev.ref.customer or acct.row["stripe_customer_id"],
                  subscription_id=ev.ref.subscription or acct.row["subscription_id"])
    return Outcome(True, tenant_linked=True)


async def invoice_paid(tx, ev: InvoicePaid, *, plans, created) -> Outcome:
    acct = await _account_for(tx, ev.ref, plans)
    if acct is None:
        return WAITING
    if passed := await _passed_over(tx, acct, ev.ref):
        return passed
    if acct.plan is None:
        return WAITING
    row = acct.row
    if row["subscription_id"] == ev.ref.subscription and row["status"] == "canceled":
        return Outcome(True, "subscription already canceled")
    if row["period_start"] is not None and ev.period_start < row["period_start"]:
        return Outcome(True, "an older period than the account's")
    await _switch_subscription(tx, acct, ev.ref)
    reference = domain.grant_reference(ev.ref.subscription, ev.period_start)
    ids = dict(stripe_customer_id=ev.ref.customer or row["stripe_customer_id"], subscription_id=ev.ref.subscription)
    if await tx.repo.entry_exists(kind="grant", reference=reference):
        await tx.repo.update_account(tenant_id=acct.tenant_id, **ids)
        return Outcome(True, "period already granted", tenant_linked=True)
    plan = acct.plan
    for entry in domain.renewal_entries(balance=row["balance"], credits=plan.credits, reference=reference):
        await _append(tx, acct.tenant_id, entry)
    status = acct.row["status"] if _is_stale(row, created) else "active"
    await _change(tx, acct, status=status, plan=plan, created=created, period_start=ev.period_start,
                  period_end=ev.period_end, **ids)
    await tx.publish(PaymentVerified(
        tenant_id=acct.tenant_id, stripe_customer_id=ids["stripe_customer_id"], subscription_id=ev.ref.subscription,
        plan=plan.name, period_start=ev.period_start, period_end=ev.period_end, credits=plan.credits,
        limits=plan.limits))
    return Outcome(True, tenant_linked=True)


async def invoice_failed(tx, ev: InvoiceFailed, *, plans, created) -> Outcome:
    return await _set_status(tx, ev.ref, "past_due", plans=plans, created=created)


async def subscription_state(tx, ev: SubscriptionState, *, plans, created) -> Outcome:
    return await _set_status(tx, ev.ref, ev.status, plans=plans, created=created)


async def _set_status(tx, ref: Ref, status: str | None, *, plans, created) -> Outcome:
    """status None: the event only links ids and plan (e.g. a subscription awaiting its first payment)."""
    acct = await _account_for(tx, ref, plans, prefer_price=True)
    if acct is None:
        return WAITING
    if passed := await _passed_over(tx, acct, ref):
        return passed
    if acct.plan is None:
        return WAITING
    row = acct.row
    if row["subscription_id"] not in (None, ref.subscription):
        return Outcome(True, "event for another subscription than the account's")
    if _is_stale(row, created) or (row["status"] == "canceled" and status != "canceled" and not acct.created):
        return Outcome(True, "older than the account's state")
    if status is None:  # an unpaid (incomplete) subscription: not active until its invoice is paid
        status = "past_due" if acct.created else row["status"]
    await _change(tx, acct, status=status, plan=acct.plan, created=created,
                  stripe_customer_id=ref.customer or row["stripe_customer_id"], subscription_id=ref.subscription)
    return Outcome(True, tenant_linked=True)


_HANDLERS = {CheckoutCompleted: checkout_completed, InvoicePaid: invoice_paid, InvoiceFailed: invoice_failed,
             SubscriptionState: subscription_state}


async def apply_stripe_event(tx, payload: dict, *, plans: dict[str, Plan]) -> Outcome:
    """Apply one stored Stripe event inside the caller's transaction."""
    event = domain.parse_event(payload)
    if isinstance(event, Ignored):
        return Outcome(True, f"ignored {event.type}")
    created = datetime.fromtimestamp(int(payload["created"]), timezone.utc) if payload.get("created") else None
    return await _HANDLERS[type(event)](tx, event, plans=plans, created=created)


async def process_stripe_event(event_id: str, *, uow: UnitOfWork, plans: dict[str, Plan],
                               max_backoff: float) -> Outcome | None:
    """Claim a stored, unprocessed event and apply it; on failure or waiting, schedule a retry.

    None when another worker holds it or it is already processed."""
    async with uow.begin() as tx:
        row = await tx.repo.claim_event(event_id=event_id)
        if row is None:
            return None
        try:
            async with tx.savepoint():  # a failed apply leaves no partial effects
                outcome = await apply_stripe_event(tx, row["payload"], plans=plans)
        except domain.MalformedEvent as exc:  # retrying cannot help: keep it, with the reason
            log.warning("malformed stripe event set aside", extra={"event_id": event_id, "error": str(exc)})
            outcome = Outcome(True, f"malformed: {exc}")
        except Exception as exc:
            log.exception("stripe event processing failed", extra={"event_id": event_id, "type": row["type"]})
            outcome = Outcome(False, f"error: {exc!r}")
        if outcome.refused:
            r = outcome.refused
            await tx.repo.record_refusal(event_id=event_id, type=row["type"], tenant_id=r.tenant_id,
                                         account_customer=r.account_customer, event_customer=r.event_customer,
                                         subscription_id=r.subscription_id, reason=outcome.reason)
            log.warning("stripe event refused: it would tie a tenant to another Stripe customer",
                        extra={"event_id": event_id, "type": row["type"], "tenant_id": str(r.tenant_id)})
        if outcome.done:
            noted = outcome.refused or outcome.reason.startswith("malformed")
            await tx.repo.mark_processed(event_id=event_id, note=outcome.reason if noted else None)
        else:
            await tx.repo.postpone_event(event_id=event_id, error=outcome.reason,
                                         delay_s=domain.backoff_seconds(row["attempts"], cap=max_backoff))
        if outcome.tenant_linked:
            await tx.repo.wake_waiting_events()
    faults.point(f"billing.after_commit:{row['type']}")  # committed, not yet published
    metrics.EVENTS_APPLIED.labels(row["type"], "done" if outcome.done else "postponed").inc()
    if outcome.refused:
        metrics.EVENTS_REFUSED.labels(row["type"]).inc()
    return replace(outcome, type=row["type"])


async def store_stripe_event(payload: dict, *, uow: UnitOfWork) -> bool:
    """Keep a verified webhook's event (once per event id); True when it is new."""
    async with uow.connect() as tx:
        stored = await tx.repo.store_event(event_id=payload["id"], type=payload["type"], payload=payload)
    metrics.WEBHOOKS.labels(payload["type"], "stored" if stored else "duplicate").inc()
    return stored


async def due_stripe_events(*, uow: UnitOfWork) -> list[str]:
    """The stored events whose (re)try is due, oldest first."""
    async with uow.connect() as tx:
        ids = await tx.repo.due_events()
        metrics.EVENTS_PENDING.set(await tx.repo.count_pending_events())
    return ids


# --- consumed messages -----------------------------------------------------------------------

async def session_started(event: SessionStarted, *, uow: UnitOfWork) -> None:
    async with uow.begin() as tx:
        if not await tx.first_delivery(event.message_id):
            return
        account = await tx.repo.lock_existing_account(tenant_id=event.tenant_id)
        if account is None:
            raise LookupError(f"no billing account for tenant {event.tenant_id}")  # retried, then DLQ
        entries = domain.session_debit_entries(balance=account["balance"], session_id=str(event.session_id),
                                               started_at=event.started_at, period_start=account["period_start"])
        for entry in entries:
            if not await _append(tx, event.tenant_id, entry):
                return  # this session was already debited


async def session_completed(event: SessionCompleted, *, uow: UnitOfWork, meter: bool = True) -> bool:
    """Record the session's usage at the cost sessions computed under the plan it ran under (the one
    source of truth: the account's plan may have changed since it started). True when recorded now."""
    async with uow.begin() as tx:
        if not await tx.first_delivery(event.message_id):
            return False
        recorded = await tx.repo.record_usage(
            session_id=event.session_id, tenant_id=event.tenant_id, started_at=event.started_at,
            ended_at=event.ended_at, duration_ms=event.duration_ms, end_reason=event.end_reason, cost=event.cost)
        if recorded and meter:
            await tx.repo.enqueue_meter_report(session_id=event.session_id, tenant_id=event.tenant_id,
                                               value=domain.meter_minutes(event.duration_ms),
                                               occurred_at=event.ended_at)
    return recorded
