"""Pure rules: what a Stripe event means for an account, and the ledger arithmetic. No I/O."""
import math
from dataclasses import dataclass
from datetime import datetime, timezone
from uuid import UUID

from shared.plans import Plan

STATUS_FROM_STRIPE = {
    "active": "active", "trialing": "active",
    "past_due": "past_due", "unpaid": "past_due", "paused": "past_due",
    "incomplete": None,  # created by Checkout, awaiting its first payment: not a status change
    "canceled": "canceled", "incomplete_expired": "canceled",
}


@dataclass(frozen=True)
class Ref:
    """What ties an event to a tenant: any of these may be missing."""
    tenant_id: UUID | None
    plan: str | None
    customer: str | None
    subscription: str | None
    price_id: str | None = None


@dataclass(frozen=True)
class CheckoutCompleted:
    ref: Ref


@dataclass(frozen=True)
class InvoicePaid:
    ref: Ref
    period_start: datetime
    period_end: datetime


@dataclass(frozen=True)
class InvoiceFailed:
    ref: Ref


@dataclass(frozen=True)
class SubscriptionState:
    ref: Ref
    status: str | None  # active | past_due | canceled; None: no change
    period_start: datetime | None = None
    period_end: datetime | None = None


@dataclass(frozen=True)
class Ignored:
    type: str


BillingEvent = CheckoutCompleted | InvoicePaid | InvoiceFailed | SubscriptionState | Ignored


class MalformedEvent(ValueError):
    pass


class NotFound(Exception):
    """What was asked for does not exist (an unknown tenant's account)."""


class Refused(Exception):
    """The request is not done, for a reason the caller is told: `code` as in the error shape
    (unauthorized, forbidden, invalid_request, unavailable), `retry_after` seconds when worth retrying."""

    def __init__(self, code: str, message: str, retry_after: int | None = None):
        super().__init__(message)
        self.code, self.message, self.retry_after = code, message, retry_after


def _id(value) -> str | None:
    """Stripe sends either an id string or an expanded object."""
    if isinstance(value, dict):
        return value.get("id")
    return value or None


def _uuid(value) -> UUID | None:
    try:
        return UUID(str(value)) if value else None
    except ValueError:
        return None


def _ts(value) -> datetime | None:
    return datetime.fromtimestamp(int(value), tz=timezone.utc) if value is not None else None


def _line_price(line: dict) -> str | None:
    details = ((line.get("pricing") or {}).get("price_details") or {})
    return _id(details.get("price")) or _id(line.get("price")) or _id(line.get("plan"))


def _invoice_ref(inv: dict) -> Ref:
    details = ((inv.get("parent") or {}).get("subscription_details") or {})
    old_details = inv.get("subscription_details") or {}
    lines = ((inv.get("lines") or {}).get("data") or [])
    line_meta = (lines[0].get("metadata") or {}) if lines else {}
    meta = details.get("metadata") or old_details.get("metadata") or line_meta or inv.get("metadata") or {}
    return Ref(
        tenant_id=_uuid(meta.get("tenant_id")),
        plan=meta.get("plan"),
        customer=_id(inv.get("customer")),
        subscription=_id(details.get("subscription")) or _id(inv.get("subscription")),
        price_id=_line_price(lines[0]) if lines else None,
    )


def _invoice_period(inv: dict) -> tuple[datetime, datetime]:
    # The invoice's own period_start/end describe the *previous* period for subscription
    # invoices; the line items carry the period being paid for.
    lines = ((inv.get("lines") or {}).get("data") or [])
    for line in lines:
        period = line.get("period") or {}
        if period.get("start") is not None and period.get("end") is not None:
            return _ts(period["start"]), _ts(period["end"])
    if inv.get("period_start") is not None and inv.get("period_end") is not None:
        return _ts(inv["period_start"]), _ts(inv["period_end"])
    raise MalformedEvent("invoice without a period")


def _subscription_state(sub: dict, *, deleted: bool) -> SubscriptionState:
    meta = sub.get("metadata") or {}
    items = ((sub.get("items") or {}).get("data") or [])
    first = items[0] if items else {}
    start = sub.get("current_period_start", first.get("current_period_start"))
    end = sub.get("current_period_end", first.get("current_period_end"))
    status = "canceled" if deleted else STATUS_FROM_STRIPE.get(sub.get("status") or "active")
    return SubscriptionState(
        ref=Ref(tenant_id=_uuid(meta.get("tenant_id")), plan=meta.get("plan"), customer=_id(sub.get("customer")),
                subscription=sub.get("id"), price_id=_line_price(first) if first else None),
        status=status, period_start=_ts(start), period_end=_ts(end),
    )


def parse_event(event: dict) -> BillingEvent:
    """Both the current API shape and the older one that test servers still emit."""
    etype = event.get("type") or ""
    obj = ((event.get("data") or {}).get("object"))
    if not isinstance(obj, dict):
        raise MalformedEvent("event without data.object")
    if etype == "checkout.session.completed":
        meta = obj.get("metadata") or {}
        return CheckoutCompleted(Ref(
            tenant_id=_uuid(obj.get("client_reference_id")) or _uuid(meta.get("tenant_id")),
            plan=meta.get("plan"), customer=_id(obj.get("customer")), subscription=_id(obj.get("subscription"))))
    if etype in ("invoice.paid", "invoice.payment_succeeded"):
        ref = _invoice_ref(obj)
        if ref.subscription is None:
            return Ignored(etype)  # a one-off invoice: nothing to grant
        start, end = _invoice_period(obj)
        return InvoicePaid(ref, start, end)
    if etype == "invoice.payment_failed":
        ref = _invoice_ref(obj)
        return InvoiceFailed(ref) if ref.subscription else Ignored(etype)
    if etype in ("customer.subscription.created", "customer.subscription.updated"):
        return _subscription_state(obj, deleted=False)
    if etype == "customer.subscription.deleted":
        return _subscription_state(obj, deleted=True)
    return Ignored(etype)


def plan_for(ref: Ref, plans: dict[str, Plan], *, fallback: str | None = None,
             prefer_price: bool = False) -> Plan | None:
    """Metadata first, then the configured price → plan map, then what the account had.

    prefer_price: a subscription's price is the truth after a plan change (its metadata may
    still name the plan it was created with)."""
    by_price = next((p for p in plans.values() if ref.price_id and p.stripe_price_id == ref.price_id), None)
    if prefer_price and by_price:
        return by_price
    if ref.plan in plans:
        return plans[ref.plan]
    return by_price or (plans.get(fallback) if fallback else None)


def binding_conflict(*, account_customer: str | None, event_customer: str | None) -> bool:
    """The event would tie a tenant to another Stripe customer than the one it already has.

    Metadata names the tenant, and whoever pays at Stripe chooses it: only the customer that
    first paid for a tenant may change its plan, credits or state afterwards. (Stripe always
    names the customer on these events; one that does not cannot prove it is the tenant's.)"""
    return bool(account_customer) and event_customer != account_customer


def grant_reference(subscription_id: str, period_start: datetime) -> str:
    return f"{subscription_id}:{int(period_start.timestamp())}"


@dataclass(frozen=True)
class Entry:
    kind: str
    reference: str
    amount: int
    balance_after: int


def renewal_entries(*, balance: int, credits: int, reference: str) -> list[Entry]:
    """A new period: the old remainder expires, then the period's credits are granted."""
    entries = []
    if balance > 0:
        entries.append(Entry("expire", reference, -balance, 0))
        balance = 0
    entries.append(Entry("grant", reference, credits, balance + credits))
    return entries


def debit_entry(*, balance: int, reference: str, amount: int = 1) -> Entry:
    return Entry("debit", reference, -amount, balance - amount)


def session_debit_entries(*, balance: int, session_id: str, started_at: datetime,
                          period_start: datetime | None) -> list[Entry]:
    """One credit per session. A session that started in a period already renewed here was paid
    from that period's credits, which have expired since: the debit is recorded and offset by an
    adjustment, so the new period's balance is untouched (as the sessions service counts it)."""
    debit = debit_entry(balance=balance, reference=session_id)
    if period_start is None or started_at >= period_start:
        return [debit]
    return [debit, Entry("adjustment", f"late-debit:{session_id}", 1, balance)]


def meter_minutes(duration_ms: int) -> int:
    return max(1, math.ceil(max(duration_ms, 0) / 60_000))


def backoff_seconds(attempts: int, *, cap: float) -> float:
    return min(cap, 0.5 * 2 ** min(attempts, 20))


def ledger_consistent(balance: int, amounts: list[int]) -> bool:
    return sum(amounts) == balance
