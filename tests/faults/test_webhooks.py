"""Scenario 5: Stripe webhooks duplicated, replayed, reordered and delivered concurrently; forged
and stale ones. Each period is granted once, the latest state wins, bad signatures store nothing."""
import asyncio
import time
from datetime import timedelta

import httpx
import pytest

from tests import stripe_fakes
from tests.faults.harness import Customer, Db, audit, no_leaks, signed
from tests.helpers import eventually

pytestmark = pytest.mark.faults


async def _grants(customer: Customer) -> list[int]:
    return [e["amount"] for e in await customer.ledger() if e["kind"] == "grant"]


async def _announced(customer: Customer) -> int:
    async with Db(customer.p.database_url) as db:
        return await db.count("SELECT count(*) FROM billing.outbox WHERE routing_key = 'billing.payment_verified'"
                              " AND body->>'tenant_id' = $1", customer.tenant_id)


async def test_duplicated_and_concurrent_webhooks(fault_platform, report):
    row = report("5. webhooks duplicated + concurrent",
                 "checkout ×3 and invoice.paid ×5 in a row; invoice.paid ×20 + invoice.payment_succeeded ×5 "
                 "(same period) + checkout ×5 all at once")
    platform = fault_platform()
    async with httpx.AsyncClient(timeout=30) as http:
        one, two = Customer(platform, http), Customer(platform, http)
        checkout, invoice = one.checkout(), one.invoice()
        for event in [checkout] * 3 + [invoice] * 5:
            assert (await one.webhook(event)).status_code == 200

        succeeded = stripe_fakes.invoice_paid(two.tenant_id, two.plan, two.customer, two.subscription,
                                              two.period_start, two.period_end, event_type="invoice.payment_succeeded")
        burst = [two.invoice()] * 20 + [succeeded] * 5 + [two.checkout()] * 5
        answers = await asyncio.gather(*(two.webhook(e) for e in burst))
        assert [a.status_code for a in answers] == [200] * len(burst)

        for customer in (one, two):
            await customer.ready()
            assert await _grants(customer) == [5000]
            assert await _announced(customer) == 1
            assert (await customer.account())["balance"] == 5000
        lost, doubled = await audit(platform)
    row.done("1 grant and 1 payment.verified per tenant; 5000 credits each", lost, doubled)


async def test_reordered_webhooks(fault_platform, report):
    row = report("5. webhooks reordered",
                 "invoice before checkout; next period's invoice before the old one's replay; "
                 "an older subscription.updated(active) after subscription.deleted")
    platform = fault_platform()
    async with httpx.AsyncClient(timeout=30) as http:
        customer = Customer(platform, http)
        assert (await customer.webhook(customer.invoice())).status_code == 200
        assert (await customer.webhook(customer.checkout())).status_code == 200
        await customer.ready()

        # Renewal: the next period arrives, then a late copy of the first period's invoice.
        start2, end2 = customer.period_end, customer.period_end + timedelta(days=30)
        assert (await customer.webhook(customer.invoice(start2, end2))).status_code == 200
        assert (await customer.webhook(customer.invoice())).status_code == 200
        await eventually(lambda: _account_period_is(customer, start2), timeout=30, what="renewed period")
        ledger = await customer.ledger()
        assert sorted(e["amount"] for e in ledger if e["kind"] == "grant") == [5000, 5000]
        assert (await customer.account())["balance"] == 5000  # the old remainder expired, not added

        session = (await customer.create()).json()
        assert session["status"] == "running"

        # Cancel; then a subscription.updated created before the cancel arrives late.
        now = int(time.time())
        deleted = stripe_fakes.subscription_deleted(customer.tenant_id, customer.plan, customer.customer,
                                                    customer.subscription, created=now)
        updated = stripe_fakes.subscription_updated(customer.tenant_id, customer.plan, customer.customer,
                                                    customer.subscription, created=now - 60)
        assert (await customer.webhook(deleted)).status_code == 200
        assert (await customer.webhook(updated)).status_code == 200
        await eventually(lambda: _status_is(customer, "canceled"), timeout=30, what="account canceled")
        # Billing knows first; sessions learns of the cancel from subscription_changed a moment later.
        async with Db(platform.database_url) as db:
            await eventually(lambda: _sessions_sees(db, customer.tenant_id, "canceled"), timeout=30,
                             what="sessions knows of the cancel")

        refused = await customer.create()
        assert refused.status_code == 403 and refused.json()["error"]["code"] == "subscription_inactive"
        await eventually(lambda: _session_ended(customer, session["id"], "canceled"), timeout=30,
                         what="running session ended by the cancel")
        await eventually(lambda: _billed(customer, session["id"]), timeout=30, what="canceled session billed")
        async with Db(platform.database_url) as db:
            await eventually(lambda: _no_browsers(db, customer.tenant_id), timeout=30, what="tenant's pool drained")
        assert (await customer.account())["status"] == "canceled"
        await no_leaks(platform)
        lost, doubled = await audit(platform)
    row.done("one grant per period, the newest period wins; canceled stays canceled, "
             "its session ended and billed, its browsers drained", lost, doubled)


async def test_replayed_forged_and_stale_webhooks(fault_platform, report):
    row = report("5. webhooks replayed, forged, stale",
                 "the same signed request replayed; wrong secret; body tampered after signing; "
                 "no signature; signed 10 min ago")
    platform = fault_platform()
    async with httpx.AsyncClient(timeout=30) as http:
        customer = Customer(platform, http)
        url = f"{platform.urls['billing']}/webhooks/stripe"

        async def refused(body: bytes, headers: dict) -> None:
            r = await http.post(url, content=body, headers=headers)
            assert r.status_code == 400, r.text
            assert r.json()["error"]["code"] == "invalid_signature"

        invoice = customer.invoice()
        await refused(*signed(invoice, secret="whsec_forged"))
        body, headers = signed(invoice)
        await refused(body.replace(b'"professional"', b'"enterprise"'), headers)
        await refused(body, {"content-type": "application/json"})
        await refused(*signed(invoice, timestamp=int(time.time()) - 600))
        async with Db(platform.database_url) as db:
            assert await db.count("SELECT count(*) FROM billing.stripe_events") == 0
            assert await db.count("SELECT count(*) FROM billing.accounts") == 0

        await customer.webhook(customer.checkout())
        for _ in range(3):  # the captured request, replayed as is (within the signature tolerance)
            assert (await http.post(url, content=body, headers=headers)).status_code == 200
        await customer.ready()
        assert await _grants(customer) == [5000] and await _announced(customer) == 1
        assert (await customer.account())["plan"] == "professional"
        lost, doubled = await audit(platform)
    row.done("bad and stale signatures → 400, nothing stored; replays deduped: 1 grant", lost, doubled)


async def _account_period_is(customer: Customer, start) -> bool:
    account = await customer.account()
    return account["period_start"] is not None and account["period_start"].startswith(start.isoformat()[:19])


async def _sessions_sees(db: Db, tenant_id: str, status: str) -> bool:
    return await db.count("SELECT count(*) FROM sessions.tenants WHERE tenant_id = $1::text::uuid AND status = $2",
                          tenant_id, status) == 1


async def _status_is(customer: Customer, status: str) -> bool:
    return (await customer.account())["status"] == status


async def _session_ended(customer: Customer, session_id: str, reason: str) -> bool:
    r = await customer.http.get(f"{customer.p.urls['sessions']}/v1/sessions/{session_id}", headers=customer.auth)
    return r.json().get("status") == "completed" and r.json().get("end_reason") == reason


async def _billed(customer: Customer, session_id: str) -> bool:
    return session_id in await customer.billed_sessions()


async def _no_browsers(db: Db, tenant_id: str) -> bool:
    return await db.count("SELECT count(*) FROM warm_pool.browsers WHERE tenant_id = $1::text::uuid"
                          " AND state <> 'dead'", tenant_id) == 0
