"""One function per command or message, given its ports (a pool or connection, the plans)."""
import hmac
import logging
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from uuid import UUID, uuid4

import asyncpg
import stripe

from services.billing import domain, repository
from services.billing.adapters.credentials import Credentials, CredentialsUnavailable
from services.billing.adapters.stripe import StripeAPI
from services.billing.domain import (CheckoutCompleted, InvoiceFailed, InvoicePaid, Ignored, Ref,
                                     SubscriptionState)
from shared import faults, http
from shared import outbox
from shared.db import transaction
from shared.http import APIError
from shared.inbox import first_delivery
from shared.messages import PaymentVerified, SessionCompleted, SessionStarted, SubscriptionChanged
from shared.plans import Plan

log = logging.getLogger(__name__)
CONSUMER = "billing"


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
    row: asyncpg.Record
    created: bool
    plan: Plan | None


async def _account_for(conn, ref: Ref, plans: dict[str, Plan], *, prefer_price: bool = False) -> _Account | None:
    """Resolve and lock the tenant's account; None while the event cannot be tied to one."""
    tenant_id = ref.tenant_id or await repository.find_tenant(conn, subscription=ref.subscription,
                                                             customer=ref.customer)
    if tenant_id is None:
        return None
    existing = await repository.lock_existing_account(conn, tenant_id=tenant_id)
    plan = domain.plan_for(ref, plans, fallback=existing["plan"] if existing else None, prefer_price=prefer_price)
    if existing is not None:
        return _Account(tenant_id, existing, False, plan)
    if plan is None:
        return None
    row = await repository.lock_account(conn, tenant_id=tenant_id, plan=plan.name)
    return _Account(tenant_id, row, True, plan)


async def _passed_over(conn, acct: _Account, ref: Ref) -> Outcome | None:
    """Refused (another customer), or for a subscription this tenant has since replaced: no effect."""
    if refused := _refused(acct, ref):
        return refused
    if await repository.is_superseded(conn, tenant_id=acct.tenant_id, subscription_id=ref.subscription):
        log.warning("stripe event for a superseded subscription ignored; cancel that subscription at Stripe",
                    extra={"tenant_id": str(acct.tenant_id), "subscription_id": ref.subscription})
        return Outcome(True, "a subscription this tenant has replaced")
    return None


async def _switch_subscription(conn, acct: _Account, ref: Ref) -> None:
    """A plan change paid by a new subscription (the same customer): the previous one is let go."""
    old = acct.row["subscription_id"]
    if old and ref.subscription and old != ref.subscription:
        await repository.supersede_subscription(conn, tenant_id=acct.tenant_id, subscription_id=old,
                                                by=ref.subscription)


def _refused(acct: _Account, ref: Ref) -> Outcome | None:
    have = acct.row["stripe_customer_id"]
    if not domain.binding_conflict(account_customer=have, event_customer=ref.customer):
        return None
    return Outcome(True, "refused: the tenant is bound to another Stripe customer",
                   refused=Refusal(acct.tenant_id, have, ref.customer, ref.subscription))


def _is_stale(row: asyncpg.Record, created: datetime | None) -> bool:
    return created is not None and row["status_event_at"] is not None and created < row["status_event_at"]


async def _change(conn, acct: _Account, *, status: str, plan: Plan, created: datetime | None, **fields) -> None:
    """Set status/plan (and other columns); tell the other services when status or plan changed."""
    old = acct.row
    await repository.update_account(conn, tenant_id=acct.tenant_id, status=status, plan=plan.name,
                                    status_event_at=max(filter(None, [created, old["status_event_at"]]),
                                                        default=None), **fields)
    # Only a tenant already announced by a PaymentVerified is news to the other services.
    announced = not acct.created and old["period_start"] is not None
    if announced and (old["status"] != status or old["plan"] != plan.name):
        await outbox.add(conn, SubscriptionChanged(tenant_id=acct.tenant_id, plan=plan.name, status=status,
                                                   limits=plan.limits))


async def checkout_completed(conn, ev: CheckoutCompleted, *, plans, created) -> Outcome:
    acct = await _account_for(conn, ev.ref, plans)
    if acct is None:
        return WAITING
    if passed := await _passed_over(conn, acct, ev.ref):
        return passed
    if acct.plan is None:
        return WAITING
    if acct.row["status"] == "canceled" and acct.row["subscription_id"] == ev.ref.subscription:
        return Outcome(True, "subscription already canceled")
    await _switch_subscription(conn, acct, ev.ref)
    await _change(conn, acct, status="active", plan=acct.plan, created=created,
                  stripe_customer_id=ev.ref.customer or acct.row["stripe_customer_id"],
                  subscription_id=ev.ref.subscription or acct.row["subscription_id"])
    return Outcome(True, tenant_linked=True)


async def invoice_paid(conn, ev: InvoicePaid, *, plans, created) -> Outcome:
    acct = await _account_for(conn, ev.ref, plans)
    if acct is None:
        return WAITING
    if passed := await _passed_over(conn, acct, ev.ref):
        return passed
    if acct.plan is None:
        return WAITING
    row = acct.row
    if row["subscription_id"] == ev.ref.subscription and row["status"] == "canceled":
        return Outcome(True, "subscription already canceled")
    if row["period_start"] is not None and ev.period_start < row["period_start"]:
        return Outcome(True, "an older period than the account's")
    await _switch_subscription(conn, acct, ev.ref)
    reference = domain.grant_reference(ev.ref.subscription, ev.period_start)
    ids = dict(stripe_customer_id=ev.ref.customer or row["stripe_customer_id"], subscription_id=ev.ref.subscription)
    if await repository.entry_exists(conn, kind="grant", reference=reference):
        await repository.update_account(conn, tenant_id=acct.tenant_id, **ids)
        return Outcome(True, "period already granted", tenant_linked=True)
    plan = acct.plan
    for entry in domain.renewal_entries(balance=row["balance"], credits=plan.credits, reference=reference):
        await repository.append_entry(conn, tenant_id=acct.tenant_id, entry=entry)
    status = acct.row["status"] if _is_stale(row, created) else "active"
    await _change(conn, acct, status=status, plan=plan, created=created, period_start=ev.period_start,
                  period_end=ev.period_end, **ids)
    await outbox.add(conn, PaymentVerified(
        tenant_id=acct.tenant_id, stripe_customer_id=ids["stripe_customer_id"], subscription_id=ev.ref.subscription,
        plan=plan.name, period_start=ev.period_start, period_end=ev.period_end, credits=plan.credits,
        limits=plan.limits))
    return Outcome(True, tenant_linked=True)


async def invoice_failed(conn, ev: InvoiceFailed, *, plans, created) -> Outcome:
    return await _set_status(conn, ev.ref, "past_due", plans=plans, created=created)


async def subscription_state(conn, ev: SubscriptionState, *, plans, created) -> Outcome:
    return await _set_status(conn, ev.ref, ev.status, plans=plans, created=created)


async def _set_status(conn, ref: Ref, status: str | None, *, plans, created) -> Outcome:
    """status None: the event only links ids and plan (e.g. a subscription awaiting its first payment)."""
    acct = await _account_for(conn, ref, plans, prefer_price=True)
    if acct is None:
        return WAITING
    if passed := await _passed_over(conn, acct, ref):
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
    await _change(conn, acct, status=status, plan=acct.plan, created=created,
                  stripe_customer_id=ref.customer or row["stripe_customer_id"], subscription_id=ref.subscription)
    return Outcome(True, tenant_linked=True)


_HANDLERS = {CheckoutCompleted: checkout_completed, InvoicePaid: invoice_paid, InvoiceFailed: invoice_failed,
             SubscriptionState: subscription_state}


async def apply_stripe_event(conn, payload: dict, *, plans: dict[str, Plan]) -> Outcome:
    """Apply one stored Stripe event inside the caller's transaction."""
    event = domain.parse_event(payload)
    if isinstance(event, Ignored):
        return Outcome(True, f"ignored {event.type}")
    created = datetime.fromtimestamp(int(payload["created"]), timezone.utc) if payload.get("created") else None
    return await _HANDLERS[type(event)](conn, event, plans=plans, created=created)


async def process_stripe_event(pool: asyncpg.Pool, event_id: str, *, plans: dict[str, Plan],
                               max_backoff: float) -> Outcome | None:
    """Claim a stored, unprocessed event and apply it; on failure or waiting, schedule a retry.

    None when another worker holds it or it is already processed."""
    async with transaction(pool) as conn:
        row = await repository.claim_event(conn, event_id=event_id)
        if row is None:
            return None
        try:
            async with conn.transaction():  # a savepoint: a failed apply leaves no partial effects
                outcome = await apply_stripe_event(conn, row["payload"], plans=plans)
        except domain.MalformedEvent as exc:  # retrying cannot help: keep it, with the reason
            log.warning("malformed stripe event set aside", extra={"event_id": event_id, "error": str(exc)})
            outcome = Outcome(True, f"malformed: {exc}")
        except Exception as exc:
            log.exception("stripe event processing failed", extra={"event_id": event_id, "type": row["type"]})
            outcome = Outcome(False, f"error: {exc!r}")
        if outcome.refused:
            r = outcome.refused
            await repository.record_refusal(conn, event_id=event_id, type=row["type"], tenant_id=r.tenant_id,
                                            account_customer=r.account_customer, event_customer=r.event_customer,
                                            subscription_id=r.subscription_id, reason=outcome.reason)
            log.warning("stripe event refused: it would tie a tenant to another Stripe customer",
                        extra={"event_id": event_id, "type": row["type"], "tenant_id": str(r.tenant_id)})
        if outcome.done:
            noted = outcome.refused or outcome.reason.startswith("malformed")
            await repository.mark_processed(conn, event_id=event_id, note=outcome.reason if noted else None)
        else:
            await repository.postpone_event(conn, event_id=event_id, error=outcome.reason,
                                            delay_s=domain.backoff_seconds(row["attempts"], cap=max_backoff))
        if outcome.tenant_linked:
            await repository.wake_waiting_events(conn)
    faults.point(f"billing.after_commit:{row['type']}")  # committed, not yet published
    return replace(outcome, type=row["type"])


async def store_stripe_event(pool: asyncpg.Pool, *, payload: dict) -> bool:
    async with pool.acquire() as conn:
        return await repository.store_event(conn, event_id=payload["id"], type=payload["type"], payload=payload)


# --- checkout ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Caller:
    """Who asks for a checkout: nobody known, the operator, or a tenant (by its own credential)."""
    admin: bool = False
    tenant_id: UUID | None = None


async def checkout_caller(*, credential: str | None, admin_token: str, credentials: Credentials) -> Caller:
    """Checked before the request body is read: a bad credential is a 401 whatever the body."""
    if credential is None:
        return Caller()
    if admin_token and hmac.compare_digest(credential.encode(), admin_token.encode()):
        return Caller(admin=True)
    http.refuse_if_throttled()  # sessions' failed-auth limit, applied here too: no guessing through billing
    try:
        owner = await credentials.tenant_for(credential) if len(credential) <= 1024 else None
    except CredentialsUnavailable:
        raise APIError(503, "unavailable", "the credential cannot be checked right now; try again") from None
    if owner is None:
        http.auth_failed()
        raise APIError(401, "unauthorized", "invalid API key or dashboard sign-in")
    return Caller(tenant_id=owner)


def checkout_tenant(caller: Caller, *, requested: UUID | None) -> UUID:
    """Whose checkout this is. Without a credential: always a new tenant. An existing tenant's
    (a plan change): its own API key or dashboard sign-in, or the admin token."""
    if caller.admin:
        return requested or uuid4()
    if caller.tenant_id is None:
        if requested is not None:
            raise APIError(401, "unauthorized", "a checkout for an existing tenant needs that tenant's "
                                                "API key or dashboard sign-in")
        return uuid4()
    if requested is not None and requested != caller.tenant_id:
        raise APIError(403, "forbidden", "this credential belongs to another tenant")
    return caller.tenant_id


async def start_checkout(*, pool: asyncpg.Pool, stripe_api: StripeAPI, plan: Plan, tenant_id: UUID,
                         email: str | None, success_url: str, cancel_url: str) -> dict:
    async with pool.acquire() as conn:
        account = await repository.get_account(conn, tenant_id=tenant_id)
    # A plan change is paid by the tenant's own Stripe customer: its events then pass the binding check.
    customer = account["stripe_customer_id"] if account else None
    try:
        url = await stripe_api.create_checkout_session(
            price_id=plan.stripe_price_id, tenant_id=str(tenant_id), plan=plan.name, email=email,
            customer=customer, success_url=success_url, cancel_url=cancel_url)
    except stripe.StripeError as exc:
        raise APIError(503, "unavailable", f"Stripe: {exc.user_message or type(exc).__name__}")
    return {"url": url, "tenant_id": str(tenant_id)}


async def refused_events(pool: asyncpg.Pool, *, tenant_id: UUID | None, limit: int) -> dict:
    async with pool.acquire() as conn:
        rows = await repository.refused_events(conn, tenant_id=tenant_id, limit=limit)
    return {"data": [{"event_id": r["event_id"], "type": r["type"], "tenant_id": str(r["tenant_id"]),
                      "account_customer": r["account_customer"], "event_customer": r["event_customer"],
                      "subscription_id": r["subscription_id"], "reason": r["reason"],
                      "refused_at": r["refused_at"].isoformat()} for r in rows]}


# --- consumed messages -----------------------------------------------------------------------

async def session_started(event: SessionStarted, *, pool: asyncpg.Pool) -> None:
    async with transaction(pool) as conn:
        if not await first_delivery(conn, message_id=event.message_id, consumer=CONSUMER):
            return
        account = await repository.lock_existing_account(conn, tenant_id=event.tenant_id)
        if account is None:
            raise LookupError(f"no billing account for tenant {event.tenant_id}")  # retried, then DLQ
        entries = domain.session_debit_entries(balance=account["balance"], session_id=str(event.session_id),
                                               started_at=event.started_at, period_start=account["period_start"])
        for entry in entries:
            if not await repository.append_entry(conn, tenant_id=event.tenant_id, entry=entry):
                return  # this session was already debited


async def session_completed(event: SessionCompleted, *, pool: asyncpg.Pool, plans: dict[str, Plan],
                            meter: bool = True) -> None:
    async with transaction(pool) as conn:
        if not await first_delivery(conn, message_id=event.message_id, consumer=CONSUMER):
            return
        account = await repository.get_account(conn, tenant_id=event.tenant_id)
        plan = plans.get(account["plan"]) if account else None
        cost = plan.session_cost(event.duration_ms) if plan else event.cost
        recorded = await repository.record_usage(
            conn, session_id=event.session_id, tenant_id=event.tenant_id, started_at=event.started_at,
            ended_at=event.ended_at, duration_ms=event.duration_ms, end_reason=event.end_reason, cost=cost)
        if recorded and meter:
            await repository.enqueue_meter_report(conn, session_id=event.session_id, tenant_id=event.tenant_id,
                                                  value=domain.meter_minutes(event.duration_ms),
                                                  occurred_at=event.ended_at)


async def check_ledger(pool: asyncpg.Pool) -> dict:
    async with pool.acquire() as conn:
        bad = await repository.inconsistent_accounts(conn)
        total = await repository.count_accounts(conn)
    return {"accounts": total, "consistent": not bad,
            "mismatches": [{"tenant_id": str(r["tenant_id"]), "balance": r["balance"],
                            "ledger_sum": int(r["ledger_sum"])} for r in bad]}
