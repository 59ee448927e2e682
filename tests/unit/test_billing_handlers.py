"""billing's handlers against fakes of their ports (tests/fakes/billing.py): renewals, out-of-order and
duplicate Stripe events, one grant per period, the tenant-binding refusals, session usage and its cost,
meter reports, checkout, and the admin API's money — with no database, broker or Stripe."""
import time
import uuid
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import httpx
import pytest

from services.billing import checkout, handlers, http, metering, views
from services.billing.domain import NotFound, Refused
from services.billing.repository import Repository
from services.billing.settings import BillingSettings
from services.billing.workers import StripeEventWorker
from shared.messages import PaymentVerified, SessionCompleted, SessionStarted, SubscriptionChanged
from shared.plans import Plan, load_plans
from shared.settings import DEFAULT_PLANS_FILE
from tests import stripe_fakes as stripe
from tests.fakes.billing import FakeRepository, FakeStripe, FakeUnitOfWork
from tests.fakes.uow import assert_same_methods

PLANS = load_plans(DEFAULT_PLANS_FILE)
P1 = datetime(2026, 1, 1, tzinfo=timezone.utc)
P2, P3 = P1 + timedelta(days=31), P1 + timedelta(days=59)


@pytest.fixture
def uow():
    return FakeUnitOfWork()


def ids():
    return uuid.uuid4(), f"cus_{uuid.uuid4().hex[:10]}", f"sub_{uuid.uuid4().hex[:10]}"


async def deliver(uow, *events, plans=PLANS) -> list:
    """Each event as the webhook stores it, then processed once (as the worker does at once)."""
    outcomes = []
    for event in events:
        if await handlers.store_stripe_event(event, uow=uow):
            outcomes.append(await handlers.process_stripe_event(event["id"], uow=uow, plans=plans, max_backoff=1))
    return outcomes


async def retry_due(uow, plans=PLANS) -> None:
    """The worker's retry loop, until nothing is due."""
    while due := await handlers.due_stripe_events(uow=uow):
        for event_id in due:
            await handlers.process_stripe_event(event_id, uow=uow, plans=plans, max_backoff=1)


async def paid_tenant(uow, plan="professional", start=P1, end=P2):
    tenant, cus, sub = ids()
    await deliver(uow, stripe.checkout_session_completed(tenant, plan, cus, sub),
                  stripe.invoice_paid(tenant, plan, cus, sub, start, end))
    return tenant, cus, sub


def kinds(uow, tenant) -> list[tuple[str, int]]:
    return [(e["kind"], e["amount"]) for e in uow.ledger if e["tenant_id"] == tenant]


def started(tenant, session_id=None, at=None) -> SessionStarted:
    return SessionStarted(session_id=session_id or uuid.uuid4(), tenant_id=tenant, browser_id=uuid.uuid4(),
                          warm=True, started_at=at or P1 + timedelta(days=1))


def completed(tenant, session_id, *, duration_ms: int, cost: Decimal, at=None) -> SessionCompleted:
    start = at or P1 + timedelta(days=1)
    return SessionCompleted(session_id=session_id, tenant_id=tenant, started_at=start,
                            ended_at=start + timedelta(milliseconds=duration_ms), duration_ms=duration_ms,
                            end_reason="client", cost=cost)


def test_the_fake_repository_has_the_real_ones_methods_and_parameters():
    assert_same_methods(Repository, FakeRepository)


# --- grants, renewals, order and duplicates ---------------------------------------------------

async def test_checkout_then_invoice_grants_the_period_and_announces_the_tenant_once(uow):
    tenant, cus, sub = await paid_tenant(uow)
    assert kinds(uow, tenant) == [("grant", 5000)]
    assert uow.accounts[tenant]["balance"] == 5000 and uow.accounts[tenant]["status"] == "active"
    [verified] = uow.published(PaymentVerified)
    assert (verified.tenant_id, verified.plan, verified.credits, verified.period_start) == \
        (tenant, "professional", 5000, P1)
    assert (verified.stripe_customer_id, verified.subscription_id) == (cus, sub)
    assert uow.published(SubscriptionChanged) == []


async def test_a_renewal_expires_the_remainder_then_grants_and_each_period_is_granted_once(uow):
    tenant, cus, sub = await paid_tenant(uow)
    await handlers.session_started(started(tenant), uow=uow)
    renewal = stripe.invoice_paid(tenant, "professional", cus, sub, P2, P3)
    again = stripe.invoice_paid(tenant, "professional", cus, sub, P2, P3)  # another event, same period
    await deliver(uow, renewal, renewal, again,
                  stripe.invoice_paid(tenant, "professional", cus, sub, P2, P3, event_type="invoice.payment_succeeded"))
    assert kinds(uow, tenant) == [("grant", 5000), ("debit", -1), ("expire", -4999), ("grant", 5000)]
    assert uow.accounts[tenant]["period_start"] == P2 and uow.accounts[tenant]["balance"] == 5000
    assert [v.period_start for v in uow.published(PaymentVerified)] == [P1, P2]
    assert (await views.check_ledger(uow=uow))["consistent"]


async def test_an_older_periods_invoice_arriving_after_the_renewal_changes_nothing(uow):
    tenant, cus, sub = await paid_tenant(uow, start=P2, end=P3)
    [outcome] = await deliver(uow, stripe.invoice_paid(tenant, "professional", cus, sub, P1, P2))
    assert outcome.done and outcome.reason == "an older period than the account's"
    assert kinds(uow, tenant) == [("grant", 5000)] and uow.accounts[tenant]["period_start"] == P2


async def test_the_invoice_before_the_checkout_grants_once_and_a_stored_event_is_stored_once(uow):
    tenant, cus, sub = ids()
    invoice = stripe.invoice_paid(tenant, "professional", cus, sub, P1, P2)
    assert await handlers.store_stripe_event(invoice, uow=uow)
    assert not await handlers.store_stripe_event(invoice, uow=uow)  # Stripe's redelivery
    await handlers.process_stripe_event(invoice["id"], uow=uow, plans=PLANS, max_backoff=1)
    assert await handlers.process_stripe_event(invoice["id"], uow=uow, plans=PLANS, max_backoff=1) is None
    await deliver(uow, stripe.checkout_session_completed(tenant, "professional", cus, sub))
    assert kinds(uow, tenant) == [("grant", 5000)] and len(uow.published(PaymentVerified)) == 1


async def test_an_event_for_an_unknown_tenant_waits_and_is_applied_once_the_tenant_is_linked(uow):
    tenant, cus, sub = ids()
    # No metadata: only the subscription ties this invoice to a tenant, and nobody has it yet.
    orphan = stripe.old_shape_invoice_paid(cus, sub, P1, P2)
    [waiting] = await deliver(uow, orphan)
    assert not waiting.done and uow.stripe_events[orphan["id"]]["processed_at"] is None
    assert await handlers.due_stripe_events(uow=uow) == []  # backed off
    [linked] = await deliver(uow, stripe.checkout_session_completed(tenant, "professional", cus, sub))
    assert linked.tenant_linked
    await retry_due(uow)  # woken: due at once
    assert uow.stripe_events[orphan["id"]]["processed_at"] is not None
    assert kinds(uow, tenant) == [("grant", 5000)]


async def test_a_stale_subscription_update_delivered_late_does_not_undo_a_newer_one(uow):
    tenant, cus, sub = await paid_tenant(uow)
    t0 = int(time.time()) + 100  # after the checkout's and invoice's own `created`
    newer = stripe.subscription_updated(tenant, "professional", cus, sub, status="past_due", created=t0 + 10)
    older = stripe.subscription_updated(tenant, "professional", cus, sub, status="active", created=t0)
    await deliver(uow, newer, older)
    assert uow.accounts[tenant]["status"] == "past_due"
    assert [(c.status, c.plan) for c in uow.published(SubscriptionChanged)] == [("past_due", "professional")]


async def test_a_cancel_is_final_for_its_subscription(uow):
    tenant, cus, sub = await paid_tenant(uow)
    await deliver(uow, stripe.subscription_deleted(tenant, "professional", cus, sub),
                  stripe.subscription_updated(tenant, "professional", cus, sub, status="active"))
    assert uow.accounts[tenant]["status"] == "canceled"
    assert [c.status for c in uow.published(SubscriptionChanged)] == ["canceled"]


async def test_a_failing_apply_leaves_no_partial_effect_and_is_retried(uow, monkeypatch):
    tenant, cus, sub = ids()
    real = FakeRepository.append_entry

    async def broken(self, **kw):
        await real(self, **kw)
        raise ConnectionError("lost the database mid-way")
    monkeypatch.setattr(FakeRepository, "append_entry", broken)
    [outcome] = await deliver(uow, stripe.invoice_paid(tenant, "professional", cus, sub, P1, P2))
    assert not outcome.done and outcome.reason.startswith("error")
    assert uow.ledger == [] and uow.outbox == []  # the savepoint undid the account, entry and event
    monkeypatch.setattr(FakeRepository, "append_entry", real)
    uow.advance(60)
    await retry_due(uow)
    assert kinds(uow, tenant) == [("grant", 5000)]


async def test_a_malformed_event_is_set_aside_with_its_reason(uow):
    event = stripe.event("invoice.paid", "not an object")
    [outcome] = await deliver(uow, event)
    assert outcome.done and uow.stripe_events[event["id"]]["last_error"].startswith("malformed")


# --- the tenant binding ---------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["invoice", "checkout", "subscription", "cancel"])
async def test_an_event_tying_a_bound_tenant_to_another_customer_is_refused_and_recorded(uow, kind):
    tenant, cus, sub = await paid_tenant(uow)
    other, other_sub = f"cus_{uuid.uuid4().hex[:10]}", f"sub_{uuid.uuid4().hex[:10]}"
    event = {"invoice": stripe.invoice_paid(tenant, "enterprise", other, other_sub, P2, P3),
             "checkout": stripe.checkout_session_completed(tenant, "enterprise", other, other_sub),
             "subscription": stripe.subscription_updated(tenant, "enterprise", other, other_sub),
             "cancel": stripe.subscription_deleted(tenant, "professional", other, sub)}[kind]
    before = (dict(uow.accounts[tenant]), list(uow.ledger), list(uow.outbox))
    [outcome] = await deliver(uow, event)
    assert outcome.done and outcome.refused and outcome.refused.event_customer == other
    assert (uow.accounts[tenant], uow.ledger, uow.outbox) == before  # nothing changed
    [refused] = (await views.refused_events(uow=uow, tenant_id=tenant, limit=10))["data"]
    assert (refused["event_id"], refused["account_customer"], refused["event_customer"]) == (event["id"], cus, other)
    assert uow.stripe_events[event["id"]]["processed_at"] is not None  # done: never retried


async def test_the_tenants_own_customer_may_change_its_plan_with_a_new_subscription(uow):
    tenant, cus, sub = await paid_tenant(uow)
    new_sub = f"sub_{uuid.uuid4().hex[:10]}"
    await deliver(uow, stripe.checkout_session_completed(tenant, "enterprise", cus, new_sub),
                  stripe.invoice_paid(tenant, "enterprise", cus, new_sub, P1 + timedelta(days=3), P2))
    assert (uow.accounts[tenant]["plan"], uow.accounts[tenant]["subscription_id"]) == ("enterprise", new_sub)
    assert (await views.account(uow=uow, tenant_id=tenant))["superseded_subscriptions"] == [sub]
    # The replaced subscription's renewal is no longer this tenant's business.
    [outcome] = await deliver(uow, stripe.invoice_paid(tenant, "professional", cus, sub, P2, P3))
    assert outcome.reason == "a subscription this tenant has replaced" and uow.refused == {}


# --- sessions: debits, usage and its cost ---------------------------------------------------

async def test_a_session_is_debited_once_whatever_the_redeliveries(uow):
    tenant, _, _ = await paid_tenant(uow)
    msg = started(tenant)
    for event in (msg, msg, started(tenant, msg.session_id)):
        await handlers.session_started(event, uow=uow)
    assert kinds(uow, tenant) == [("grant", 5000), ("debit", -1)] and uow.accounts[tenant]["balance"] == 4999


async def test_a_session_of_a_tenant_without_an_account_is_retried_and_leaves_no_trace(uow):
    msg = started(uuid.uuid4())
    with pytest.raises(LookupError):
        await handlers.session_started(msg, uow=uow)
    assert msg.message_id not in uow.inbox  # rolled back: the redelivery is handled afresh


async def test_a_session_started_before_a_renewal_but_delivered_after_it_spares_the_new_period(uow):
    tenant, cus, sub = await paid_tenant(uow)
    await deliver(uow, stripe.invoice_paid(tenant, "professional", cus, sub, P2, P3))
    await handlers.session_started(started(tenant, at=P2 - timedelta(hours=1)), uow=uow)
    assert uow.accounts[tenant]["balance"] == 5000
    assert kinds(uow, tenant)[-2:] == [("debit", -1), ("adjustment", 1)]


async def test_usage_is_recorded_once_with_a_meter_report(uow):
    tenant, _, _ = await paid_tenant(uow)
    session = uuid.uuid4()
    event = completed(tenant, session, duration_ms=7 * 60_000 - 1, cost=Decimal("0.014"))
    assert await handlers.session_completed(event, uow=uow)
    assert not await handlers.session_completed(event, uow=uow)
    assert not await handlers.session_completed(completed(tenant, session, duration_ms=1, cost=Decimal("9")), uow=uow)
    assert uow.usage[session]["cost"] == Decimal("0.014000")
    assert [(m["session_id"], m["value"]) for m in uow.meter_reports.values()] == [(session, 7)]


async def test_the_cost_is_the_one_sessions_computed_under_the_plan_the_session_ran_under(uow):
    """Bug: billing recomputed the cost with the account's current plan. A plan change mid-session
    must not change what the session cost: sessions' figure (its plan at the start) is the truth."""
    plans = {"cheap": Plan(name="cheap", credits=100, max_concurrent_sessions=1, max_session_seconds=3600,
                           prewarm_browsers=0, session_price=Decimal("0.01"), minute_price=Decimal("0.002"),
                           included_minutes=5, stripe_price_id="price_cheap"),
             "dear": Plan(name="dear", credits=1000, max_concurrent_sessions=5, max_session_seconds=3600,
                          prewarm_browsers=0, session_price=Decimal("0.50"), minute_price=Decimal("0.10"),
                          included_minutes=0, stripe_price_id="price_dear")}
    tenant, cus, sub = ids()
    await deliver(uow, stripe.checkout_session_completed(tenant, "cheap", cus, sub),
                  stripe.invoice_paid(tenant, "cheap", cus, sub, P1, P2), plans=plans)
    session_start = P1 + timedelta(days=2)
    session = started(tenant, at=session_start)
    await handlers.session_started(session, uow=uow)
    # Mid-session, the tenant moves to the dearer plan (its own customer, a new subscription).
    new_sub = f"sub_{uuid.uuid4().hex[:10]}"
    await deliver(uow, stripe.checkout_session_completed(tenant, "dear", cus, new_sub),
                  stripe.invoice_paid(tenant, "dear", cus, new_sub, session_start + timedelta(minutes=3), P2),
                  plans=plans)
    assert uow.accounts[tenant]["plan"] == "dear"
    duration_ms = 10 * 60_000
    ran_under = plans["cheap"].session_cost(duration_ms)  # as sessions computes it: 0.010000 + 5 × 0.002
    assert ran_under == Decimal("0.020000") != plans["dear"].session_cost(duration_ms)
    await handlers.session_completed(completed(tenant, session.session_id, duration_ms=duration_ms,
                                               cost=ran_under, at=session_start), uow=uow)
    [row] = (await views.usage(uow=uow, tenant_id=tenant, since=None, until=None))["data"]
    assert row["cost"] == Decimal("0.020000")


# --- meter reports --------------------------------------------------------------------------

async def test_meter_reports_wait_for_a_customer_and_out_a_stripe_outage_then_are_sent_once(uow):
    api = FakeStripe()
    tenant, cus, _ = await paid_tenant(uow)
    session = uuid.uuid4()
    await handlers.session_completed(completed(tenant, session, duration_ms=61_000, cost=Decimal("0.01")), uow=uow)
    api.down = True
    send = dict(uow=uow, api=api, event_name="browser_session_minutes", max_backoff=5)
    assert await metering.send_meter_reports(**send) == 0
    assert uow.meter_reports[session]["last_error"] and await metering.send_meter_reports(**send) == 0  # backed off
    api.down = False
    uow.advance(10)
    assert await metering.send_meter_reports(**send) == 1
    assert api.meter_events == {str(session): {"event_name": "browser_session_minutes", "customer": cus, "value": 2}}
    uow.advance(10)
    assert await metering.send_meter_reports(**send) == 0


# --- checkout ---------------------------------------------------------------------------------

class Credentials:
    def __init__(self, known: dict[str, uuid.UUID]):
        self.known = known

    async def tenant_for(self, credential):
        return self.known.get(credential)


async def test_checkout_refusals_are_domain_errors():
    mine, theirs = uuid.uuid4(), uuid.uuid4()
    creds = Credentials({"bf_live_mine": mine})
    caller = await checkout.checkout_caller(credential="bf_live_mine", admin_token="adm", credentials=creds)
    assert checkout.checkout_tenant(caller, requested=mine) == mine
    with pytest.raises(Refused) as forbidden:
        checkout.checkout_tenant(caller, requested=theirs)
    assert forbidden.value.code == "forbidden"
    with pytest.raises(Refused) as anonymous:
        checkout.checkout_tenant(checkout.Caller(), requested=theirs)
    assert anonymous.value.code == "unauthorized"
    with pytest.raises(Refused) as wrong:
        await checkout.checkout_caller(credential="bf_live_guess", admin_token="adm", credentials=creds)
    assert wrong.value.code == "unauthorized"
    admin = await checkout.checkout_caller(credential="adm", admin_token="adm", credentials=creds)
    assert checkout.checkout_tenant(admin, requested=theirs) == theirs


async def test_a_plan_change_is_paid_by_the_tenants_own_customer_and_unknown_plans_are_refused(uow):
    api = FakeStripe()
    tenant, cus, _ = await paid_tenant(uow)
    start = dict(uow=uow, stripe_api=api, plans=PLANS, tenant_id=tenant, email="a@example.com",
                 success_url="s", cancel_url="c")
    out = await checkout.start_checkout(plan_name="enterprise", **start)
    assert out["tenant_id"] == str(tenant) and api.checkouts[-1]["customer"] == cus
    with pytest.raises(Refused) as unknown:
        await checkout.start_checkout(plan_name="platinum", **start)
    assert unknown.value.code == "invalid_request"
    api.down = True
    with pytest.raises(Refused) as down:
        await checkout.start_checkout(plan_name="enterprise", **start)
    assert down.value.code == "unavailable"


async def test_views_of_an_unknown_tenant_raise_not_found(uow):
    for view in (views.account(uow=uow, tenant_id=uuid.uuid4()),
                 views.ledger(uow=uow, tenant_id=uuid.uuid4(), limit=5, cursor=None),
                 views.usage(uow=uow, tenant_id=uuid.uuid4(), since=None, until=None)):
        with pytest.raises(NotFound):
            await view


# --- the admin API over HTTP (the fake unit of work behind the real app) ------------------------

@pytest.fixture
async def client(uow):
    settings = BillingSettings(_env_file=None, admin_token="adm")

    async def ready():
        return {}
    app = http.create_app(settings=settings, uow=uow, plans=PLANS, stripe_api=FakeStripe(),
                          worker=StripeEventWorker(uow, plans=PLANS, interval=1, max_backoff=1),
                          credentials=Credentials({}), ready=ready)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://billing",
                                 headers={"Authorization": "Bearer adm"}) as c:
        yield c


async def test_usage_money_is_a_decimal_string_with_six_decimals(uow, client):
    tenant, _, _ = await paid_tenant(uow)
    for cost in ("0.01", "0.014", "12"):
        await handlers.session_completed(completed(tenant, uuid.uuid4(), duration_ms=1000, cost=Decimal(cost)),
                                         uow=uow)
    usage = (await client.get(f"/v1/admin/accounts/{tenant}/usage")).json()
    assert [row["cost"] for row in usage["data"]] == ["0.010000", "0.014000", "12.000000"]
    assert usage["total_cost"] == "12.024000" and usage["sessions"] == 3


async def test_domain_errors_become_the_json_error_shape(client):
    r = await client.get(f"/v1/admin/accounts/{uuid.uuid4()}")
    assert (r.status_code, r.json()) == (404, {"error": {"code": "not_found", "message": "unknown tenant"}})
    r = await client.post("/v1/checkout-sessions", json={"plan": "platinum"})
    assert (r.status_code, r.json()["error"]["code"]) == (422, "invalid_request")
    r = await client.post("/v1/checkout-sessions", json={"plan": "starter", "tenant_id": str(uuid.uuid4())},
                          headers={"Authorization": "Bearer bf_live_guess"})
    assert (r.status_code, r.json()["error"]["code"]) == (401, "unauthorized")
