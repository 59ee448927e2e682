import json
import re
import time
import uuid
from datetime import datetime, timezone
from decimal import Decimal

import pytest
import stripe
from pydantic import BaseModel

from services.billing import domain
from services.billing.domain import CheckoutCompleted, Ignored, InvoiceFailed, InvoicePaid, SubscriptionState
from shared import money
from shared.messages import SessionCompleted
from shared.plans import load_plans
from shared.settings import DEFAULT_PLANS_FILE
from tests import stripe_fakes as fakes

T = uuid.uuid4()
START, END = datetime(2026, 1, 1, tzinfo=timezone.utc), datetime(2026, 2, 1, tzinfo=timezone.utc)
PLANS = load_plans(DEFAULT_PLANS_FILE)


def test_current_shape_invoice_paid_is_tied_to_tenant_plan_and_line_period():
    parsed = domain.parse_event(fakes.invoice_paid(T, "professional", "cus_1", "sub_1", START, END))
    assert isinstance(parsed, InvoicePaid)
    assert parsed.ref == domain.Ref(T, "professional", "cus_1", "sub_1", "price_professional")
    assert (parsed.period_start, parsed.period_end) == (START, END)


def test_older_shape_invoice_uses_invoice_subscription_and_lines_period():
    parsed = domain.parse_event(fakes.old_shape_invoice_paid("cus_2", "sub_2", START, END))
    assert isinstance(parsed, InvoicePaid)
    assert parsed.ref.subscription == "sub_2" and parsed.ref.customer == "cus_2"
    assert parsed.ref.tenant_id is None and parsed.ref.plan is None
    assert (parsed.period_start, parsed.period_end) == (START, END)


def test_payment_succeeded_is_the_same_as_paid():
    parsed = domain.parse_event(fakes.invoice_paid(T, "enterprise", "c", "s", START, END,
                                                   event_type="invoice.payment_succeeded"))
    assert isinstance(parsed, InvoicePaid) and parsed.ref.plan == "enterprise"


def test_checkout_failed_invoice_and_subscription_events():
    assert domain.parse_event(fakes.checkout_session_completed(T, "professional", "c", "s")) == \
        CheckoutCompleted(domain.Ref(T, "professional", "c", "s"))
    assert isinstance(domain.parse_event(fakes.invoice_payment_failed(T, "professional", "c", "s", START, END)),
                      InvoiceFailed)
    deleted = domain.parse_event(fakes.subscription_deleted(T, "professional", "c", "s"))
    assert isinstance(deleted, SubscriptionState) and deleted.status == "canceled"
    updated = domain.parse_event(fakes.subscription_updated(T, "enterprise", "c", "s", status="past_due"))
    assert updated.status == "past_due" and updated.ref.plan == "enterprise"


def test_unknown_types_and_one_off_invoices_are_ignored():
    assert isinstance(domain.parse_event(fakes.event("customer.created", {"id": "cus_1"})), Ignored)
    one_off = fakes.event("invoice.paid", {"id": "in_1", "customer": "c", "lines": {"data": []}})
    assert isinstance(domain.parse_event(one_off), Ignored)


def test_event_without_object_is_malformed():
    with pytest.raises(domain.MalformedEvent):
        domain.parse_event({"id": "evt_1", "type": "invoice.paid", "data": {}})


def test_plan_from_metadata_then_price_then_fallback():
    assert domain.plan_for(domain.Ref(None, "enterprise", None, None), PLANS).name == "enterprise"
    assert domain.plan_for(domain.Ref(None, None, None, None, "price_professional"), PLANS).name == "professional"
    assert domain.plan_for(domain.Ref(None, None, None, None, "price_x"), PLANS, fallback="starter").name == "starter"
    assert domain.plan_for(domain.Ref(None, "nope", None, None), PLANS) is None


def test_first_grant_then_renewal_expires_the_remainder():
    first = domain.renewal_entries(balance=0, credits=5000, reference="sub:1")
    assert [(e.kind, e.amount, e.balance_after) for e in first] == [("grant", 5000, 5000)]
    renewal = domain.renewal_entries(balance=1234, credits=5000, reference="sub:2")
    assert [(e.kind, e.amount, e.balance_after) for e in renewal] == [("expire", -1234, 0), ("grant", 5000, 5000)]


def test_debits_sum_with_grants_to_the_balance():
    balance, amounts = 0, []
    for e in domain.renewal_entries(balance=balance, credits=10, reference="s:1"):
        balance, amounts = e.balance_after, amounts + [e.amount]
    for i in range(3):
        e = domain.debit_entry(balance=balance, reference=f"sess{i}")
        balance, amounts = e.balance_after, amounts + [e.amount]
    assert balance == 7 and domain.ledger_consistent(balance, amounts)
    assert not domain.ledger_consistent(balance + 1, amounts)


def test_grant_reference_is_subscription_and_period_start():
    assert domain.grant_reference("sub_1", START) == f"sub_1:{int(START.timestamp())}"


def test_session_cost_uses_plan_pricing_in_decimal():
    plan = PLANS["professional"]
    assert plan.session_cost(60_000) == Decimal("0.010000")
    assert plan.session_cost(6 * 60_000 + 1) == Decimal("0.014000")
    assert domain.meter_minutes(0) == 1 and domain.meter_minutes(60_001) == 2


def test_backoff_grows_and_is_capped():
    assert domain.backoff_seconds(0, cap=300) < domain.backoff_seconds(3, cap=300) <= 300
    assert domain.backoff_seconds(50, cap=300) == 300


def test_fake_signature_is_accepted_by_the_stripe_sdk():
    body = json.dumps(fakes.invoice_paid(T, "professional", "c", "s", START, END)).encode()
    stripe.WebhookSignature.verify_header(body.decode(), fakes.sign(body, "whsec_x"), "whsec_x", tolerance=300)
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.WebhookSignature.verify_header(body.decode(), fakes.sign(body, "whsec_y"), "whsec_x", tolerance=300)
    with pytest.raises(stripe.SignatureVerificationError):
        stale = fakes.sign(body, "whsec_x", timestamp=int(time.time()) - 301)
        stripe.WebhookSignature.verify_header(body.decode(), stale, "whsec_x", tolerance=300)


def test_incomplete_or_unknown_subscription_status_is_no_status_change():
    assert domain.parse_event(fakes.subscription_updated(T, "professional", "c", "s", status="incomplete")).status is None
    assert domain.parse_event(fakes.subscription_updated(T, "professional", "c", "s", status="weird")).status is None
    assert domain.parse_event(fakes.subscription_updated(T, "professional", "c", "s", status="unpaid")).status == "past_due"


def test_subscription_price_wins_over_stale_metadata_after_a_plan_change():
    ref = domain.Ref(None, "professional", None, None, "price_enterprise")
    assert domain.plan_for(ref, PLANS).name == "professional"
    assert domain.plan_for(ref, PLANS, prefer_price=True).name == "enterprise"
    unknown_price = domain.Ref(None, "professional", None, None, "price_gone")
    assert domain.plan_for(unknown_price, PLANS, prefer_price=True).name == "professional"


def test_a_session_from_an_already_renewed_period_does_not_touch_the_new_balance():
    entries = domain.session_debit_entries(balance=5000, session_id="s1", started_at=START, period_start=END)
    assert [(e.kind, e.reference, e.amount, e.balance_after) for e in entries] == [
        ("debit", "s1", -1, 4999), ("adjustment", "late-debit:s1", 1, 5000)]
    [debit] = domain.session_debit_entries(balance=5000, session_id="s2", started_at=END, period_start=END)
    assert (debit.kind, debit.balance_after) == ("debit", 4999)


def test_money_is_written_with_exactly_six_decimals_everywhere():
    """One money format (shared/money.py) for HTTP JSON and messages: no "0.01" beside "0.010000"."""
    assert [money.to_str(Decimal(v)) for v in ("0.01", "0.014000", "12", "0", "1.5", "0.0021074", "-3")] == \
        ["0.010000", "0.014000", "12.000000", "0.000000", "1.500000", "0.002107", "-3.000000"]
    assert all(re.fullmatch(money.PATTERN, money.to_str(Decimal(v))) for v in ("0", "12.5", "-0.000001"))

    class Priced(BaseModel):
        amount: money.Money
    wire = Priced(amount=Decimal("0.01")).model_dump_json()
    assert wire == '{"amount":"0.010000"}' and Priced.model_validate_json(wire).amount == Decimal("0.01")
    assert Priced(amount="0.014").model_dump()["amount"] == Decimal("0.014")  # a Decimal in Python
    assert Priced.model_json_schema()["properties"]["amount"]["type"] == "string"
    with pytest.raises(ValueError):
        Priced(amount="NaN")


def test_a_session_completed_message_carries_its_cost_as_money():
    event = SessionCompleted(session_id=uuid.uuid4(), tenant_id=uuid.uuid4(), started_at=START, ended_at=END,
                             duration_ms=1, end_reason="client", cost=Decimal("0.01"))
    assert json.loads(event.model_dump_json())["cost"] == "0.010000"
    assert SessionCompleted.model_validate_json(event.model_dump_json()).cost == Decimal("0.01")


def test_sessions_and_billing_write_a_cost_alike():
    from services.sessions import domain as sessions_domain
    assert sessions_domain.money(Decimal("0.014")) == money.to_str(Decimal("0.014")) == "0.014000"
