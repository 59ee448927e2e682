"""Billing's webhook endpoint over real HTTP (ASGI) against real Postgres: signatures, dedupe,
every delivery order, one grant per period."""
import asyncio
import json
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest

from services.billing import handlers, http
from services.billing.adapters.credentials import CredentialsClient
from services.billing.adapters.stripe import StripeGateway
from services.billing.settings import BillingSettings
from services.billing.uow import PostgresUnitOfWork
from services.billing.workers import StripeEventWorker
from shared import db
from shared.plans import load_plans
from tests import stripe_fakes as fakes

SECRET = "whsec_test_billing"
ADMIN = {"Authorization": "Bearer admin-test"}
MIGRATIONS = Path(__file__).resolve().parents[2] / "services" / "billing" / "migrations"
P1 = datetime(2026, 1, 1, tzinfo=timezone.utc)
P2, P3 = P1 + timedelta(days=31), P1 + timedelta(days=59)


class Billing:
    def __init__(self, pool, settings):
        self.pool, self.settings = pool, settings
        # No sessions service answers on this vhost: a tenant's credential cannot be checked (503).
        self.credentials = CredentialsClient(settings.rabbitmq_url, timeout_s=2)
        self.plans = load_plans(Path(settings.plans_file))
        self.uow = PostgresUnitOfWork(pool)
        self.worker = StripeEventWorker(self.uow, plans=self.plans, interval=0.05, max_backoff=0.2)

    async def ready(self):
        return {"database": await db.check(self.pool)}

    def client(self, stripe_base: str | None = None) -> httpx.AsyncClient:
        app = http.create_app(settings=self.settings, uow=self.uow, plans=self.plans, worker=self.worker,
                              stripe_api=StripeGateway("sk_test_x", stripe_base), credentials=self.credentials,
                              ready=self.ready)
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://billing")

    async def settle(self):
        """Wait for background processing, then run the retry loop until nothing is due."""
        await self.worker.drain()
        for _ in range(50):
            if not await self.worker.run_once():
                return
            await self.worker.drain()

    async def pending(self) -> int:
        return await self.pool.fetchval("SELECT count(*) FROM stripe_events WHERE processed_at IS NULL")

    async def outbox(self, tenant_id, routing_key) -> list[dict]:
        rows = await self.pool.fetch("SELECT body FROM outbox WHERE routing_key = $1 AND body->>'tenant_id' = $2"
                                     " ORDER BY created_at", routing_key, str(tenant_id))
        return [r["body"] for r in rows]


@pytest.fixture(scope="module")
async def billing(database_url, rabbitmq_url):
    await db.migrate(database_url, schema="billing", migrations_dir=MIGRATIONS)
    pool = await db.create_pool(database_url, schema="billing")
    settings = BillingSettings(stripe_webhook_secret=SECRET, admin_token="admin-test", database_url=database_url,
                               rabbitmq_url=rabbitmq_url)
    billing = Billing(pool, settings)
    yield billing
    await billing.credentials.close()
    await pool.close()


@pytest.fixture
async def client(billing):
    async with billing.client() as c:
        yield c


async def post(client, event: dict | bytes, *, secret=SECRET, timestamp=None, headers=None):
    body = event if isinstance(event, bytes) else json.dumps(event).encode()
    hdrs = {"Stripe-Signature": fakes.sign(body, secret, timestamp), "Content-Type": "application/json"}
    hdrs.update(headers or {})
    return await client.post("/webhooks/stripe", content=body, headers={k: v for k, v in hdrs.items() if v is not None})


async def account(client, tenant_id):
    return (await client.get(f"/v1/admin/accounts/{tenant_id}", headers=ADMIN)).json()


async def ledger(client, tenant_id):
    return (await client.get(f"/v1/admin/accounts/{tenant_id}/ledger?limit=500", headers=ADMIN)).json()["data"]


def ids():
    return uuid.uuid4(), f"cus_{uuid.uuid4().hex[:10]}", f"sub_{uuid.uuid4().hex[:10]}"


async def test_checkout_then_invoice_opens_account_grants_and_announces(billing, client):
    tenant, cus, sub = ids()
    r = await post(client, fakes.checkout_session_completed(tenant, "professional", cus, sub))
    assert r.status_code == 200 and r.json() == {"received": True}
    assert (await post(client, fakes.invoice_paid(tenant, "professional", cus, sub, P1, P2))).status_code == 200
    await billing.settle()
    acct = await account(client, tenant)
    assert acct == {"tenant_id": str(tenant), "plan": "professional", "status": "active", "balance": 5000,
                    "period_start": P1.isoformat(), "period_end": P2.isoformat(), "stripe_customer_id": cus,
                    "subscription_id": sub, "superseded_subscriptions": []}
    [entry] = await ledger(client, tenant)
    assert (entry["kind"], entry["amount"], entry["balance_after"]) == ("grant", 5000, 5000)
    [verified] = await billing.outbox(tenant, "billing.payment_verified")
    assert verified["credits"] == 5000 and verified["plan"] == "professional"
    assert verified["limits"] == {"max_concurrent_sessions": 50, "max_session_seconds": 3600, "prewarm_browsers": 5}
    assert verified["subscription_id"] == sub and verified["stripe_customer_id"] == cus


async def test_invoice_before_checkout_and_both_invoice_types_grant_once(billing, client):
    tenant, cus, sub = ids()
    for e in (fakes.invoice_paid(tenant, "professional", cus, sub, P1, P2, event_type="invoice.payment_succeeded"),
              fakes.invoice_paid(tenant, "professional", cus, sub, P1, P2),
              fakes.checkout_session_completed(tenant, "professional", cus, sub)):
        assert (await post(client, e)).status_code == 200
    await billing.settle()
    assert [e["kind"] for e in await ledger(client, tenant)] == ["grant"]
    assert (await account(client, tenant))["balance"] == 5000
    assert len(await billing.outbox(tenant, "billing.payment_verified")) == 1
    assert await billing.outbox(tenant, "billing.subscription_changed") == []


async def test_same_event_twenty_times_at_once_is_stored_and_applied_once(billing, client):
    tenant, cus, sub = ids()
    event = fakes.invoice_paid(tenant, "professional", cus, sub, P1, P2)
    answers = await asyncio.gather(*(post(client, event) for _ in range(20)))
    assert [r.status_code for r in answers] == [200] * 20
    await billing.settle()
    assert await billing.pool.fetchval("SELECT count(*) FROM stripe_events WHERE id = $1", event["id"]) == 1
    assert [e["kind"] for e in await ledger(client, tenant)] == ["grant"]
    assert len(await billing.outbox(tenant, "billing.payment_verified")) == 1


async def test_twenty_different_deliveries_of_one_period_at_once_grant_once(billing, client):
    tenant, cus, sub = ids()
    events = [fakes.invoice_paid(tenant, "professional", cus, sub, P1, P2,
                                 event_type="invoice.paid" if i % 2 else "invoice.payment_succeeded")
              for i in range(20)]
    answers = await asyncio.gather(*(post(client, e) for e in events))
    assert {r.status_code for r in answers} == {200}
    await billing.settle()
    assert [e["kind"] for e in await ledger(client, tenant)] == ["grant"]
    assert (await account(client, tenant))["balance"] == 5000
    assert len(await billing.outbox(tenant, "billing.payment_verified")) == 1


async def test_renewal_expires_remainder_grants_new_period_and_late_old_invoice_changes_nothing(billing, client):
    tenant, cus, sub = ids()
    await post(client, fakes.invoice_paid(tenant, "professional", cus, sub, P1, P2))
    await billing.settle()
    for i in range(3):
        await handlers.session_started(_started(tenant), uow=billing.uow)
    await post(client, fakes.invoice_paid(tenant, "professional", cus, sub, P2, P3))
    await billing.settle()
    await post(client, fakes.invoice_paid(tenant, "professional", cus, sub, P1, P2, event_type="invoice.payment_succeeded"))
    await billing.settle()
    entries = [(e["kind"], e["amount"], e["balance_after"]) for e in await ledger(client, tenant)]
    assert entries == [("grant", 5000, 5000), ("debit", -1, 4999), ("debit", -1, 4998), ("debit", -1, 4997),
                       ("expire", -4997, 0), ("grant", 5000, 5000)]
    acct = await account(client, tenant)
    assert acct["period_start"] == P2.isoformat() and acct["balance"] == 5000
    periods = [v["period_start"] for v in await billing.outbox(tenant, "billing.payment_verified")]
    assert periods == [P1.isoformat().replace("+00:00", "Z"), P2.isoformat().replace("+00:00", "Z")]


async def test_payment_failed_cancel_and_plan_change_are_announced(billing, client):
    tenant, cus, sub = ids()
    await post(client, fakes.checkout_session_completed(tenant, "professional", cus, sub))
    await post(client, fakes.invoice_paid(tenant, "professional", cus, sub, P1, P2))
    await billing.settle()
    now = int(time.time())
    await post(client, fakes.subscription_updated(tenant, "enterprise", cus, sub, created=now))
    await billing.settle()
    assert (await account(client, tenant))["plan"] == "enterprise"
    await post(client, fakes.invoice_payment_failed(tenant, "enterprise", cus, sub, P2, P3, created=now + 1))
    await billing.settle()
    assert (await account(client, tenant))["status"] == "past_due"
    await post(client, fakes.subscription_deleted(tenant, "enterprise", cus, sub, created=now + 2))
    # A late, older update must not bring the canceled subscription back.
    await post(client, fakes.subscription_updated(tenant, "enterprise", cus, sub, created=now + 1))
    await billing.settle()
    assert (await account(client, tenant))["status"] == "canceled"
    changes = [(c["plan"], c["status"], c["limits"]["max_concurrent_sessions"])
               for c in await billing.outbox(tenant, "billing.subscription_changed")]
    assert changes == [("enterprise", "active", 500), ("enterprise", "past_due", 500),
                       ("enterprise", "canceled", 500)]


async def test_event_for_unknown_tenant_waits_then_resolves(billing, client):
    tenant, cus, sub = ids()
    old = fakes.old_shape_invoice_paid(cus, sub, P1, P2)  # no metadata: cannot be tied to a tenant yet
    assert (await post(client, old)).status_code == 200
    await billing.settle()
    row = await billing.pool.fetchrow("SELECT processed_at, attempts FROM stripe_events WHERE id = $1", old["id"])
    assert row["processed_at"] is None and row["attempts"] >= 1
    assert (await client.get(f"/v1/admin/accounts/{tenant}", headers=ADMIN)).status_code == 404
    waiting = (await client.get("/v1/admin/stripe-events", headers=ADMIN)).json()["data"]
    assert old["id"] in {e["id"] for e in waiting}
    await post(client, fakes.checkout_session_completed(tenant, "professional", cus, sub))
    await billing.settle()
    assert await billing.pool.fetchval("SELECT processed_at FROM stripe_events WHERE id = $1", old["id"])
    assert [e["kind"] for e in await ledger(client, tenant)] == ["grant"]
    assert (await account(client, tenant))["balance"] == 5000


async def test_unknown_event_type_is_stored_and_ignored(billing, client):
    event = fakes.event("customer.created", {"id": "cus_x", "object": "customer"})
    assert (await post(client, event)).status_code == 200
    await billing.settle()
    assert await billing.pool.fetchval("SELECT processed_at IS NOT NULL FROM stripe_events WHERE id = $1", event["id"])


@pytest.mark.parametrize("case", ["forged", "stale", "missing", "malformed", "not_event", "oversized"])
async def test_bad_deliveries_are_400_and_nothing_is_stored(billing, client, case):
    tenant, cus, sub = ids()
    event = fakes.invoice_paid(tenant, "professional", cus, sub, P1, P2)
    before = await billing.pool.fetchval("SELECT count(*) FROM stripe_events")
    if case == "forged":
        r = await post(client, event, secret="whsec_wrong")
    elif case == "stale":
        r = await post(client, event, timestamp=int(time.time()) - 301)
    elif case == "missing":
        r = await post(client, event, headers={"Stripe-Signature": None})
    elif case == "malformed":
        r = await post(client, b'{"id": "evt_1", "type": ')
    elif case == "not_event":
        r = await post(client, b'["evt_1"]')
    else:
        event["data"]["object"]["padding"] = "x" * (1024 * 1024)
        r = await post(client, event)
    assert r.status_code == (413 if case == "oversized" else 400)  # over the cap: 413, like any body
    assert set(r.json()["error"]) == {"code", "message"}
    assert await billing.pool.fetchval("SELECT count(*) FROM stripe_events") == before


async def test_admin_views_need_the_token_and_know_tenants(client):
    tenant = uuid.uuid4()
    assert (await client.get(f"/v1/admin/accounts/{tenant}")).status_code == 401
    assert (await client.get(f"/v1/admin/accounts/{tenant}", headers={"Authorization": "Bearer no"})).status_code == 401
    for path in ("", "/ledger", "/usage"):
        r = await client.get(f"/v1/admin/accounts/{tenant}{path}", headers=ADMIN)
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


async def test_ledger_pages_and_the_ledger_check(billing, client):
    tenant, cus, sub = ids()
    await post(client, fakes.invoice_paid(tenant, "professional", cus, sub, P1, P2))
    await billing.settle()
    for _ in range(4):
        await handlers.session_started(_started(tenant), uow=billing.uow)
    seen, cursor = [], None
    while True:
        r = (await client.get(f"/v1/admin/accounts/{tenant}/ledger", headers=ADMIN,
                              params={"limit": 2, **({"cursor": cursor} if cursor else {})})).json()
        seen += [e["balance_after"] for e in r["data"]]
        cursor = r["next_cursor"]
        if cursor is None:
            break
    assert seen == [5000, 4999, 4998, 4997, 4996]
    check = (await client.get("/v1/admin/ledger-check", headers=ADMIN)).json()
    assert check["consistent"] is True and check["mismatches"] == [] and check["accounts"] >= 1


def _started(tenant):
    from shared.messages import SessionStarted
    return SessionStarted(session_id=uuid.uuid4(), tenant_id=tenant, browser_id=uuid.uuid4(), warm=True,
                          started_at=datetime.now(timezone.utc))


@pytest.fixture
def stripe_stand_in():
    with fakes.StripeStandIn() as s:
        yield s


async def test_checkout_session_is_created_at_stripe_with_tenant_and_plan(billing, stripe_stand_in):
    async with billing.client(stripe_stand_in.url) as c:
        r = await c.post("/v1/checkout-sessions", json={"plan": "professional", "email": "a@example.com"})
        assert r.status_code == 200, r.text
        tenant_id = r.json()["tenant_id"]
        uuid.UUID(tenant_id)
        [made] = stripe_stand_in.checkout_sessions
        assert r.json()["url"].endswith(made["id"])
        assert made["mode"] == "subscription" and made["line_items[0][price]"] == "price_professional"
        assert made["client_reference_id"] == tenant_id and made["customer_email"] == "a@example.com"
        assert (made["subscription_data[metadata][tenant_id]"], made["subscription_data[metadata][plan]"]) == \
            (tenant_id, "professional")

        given = str(uuid.uuid4())
        r = await c.post("/v1/checkout-sessions", json={"plan": "enterprise", "tenant_id": given}, headers=ADMIN)
        assert r.json()["tenant_id"] == given == stripe_stand_in.checkout_sessions[-1]["client_reference_id"]

        r = await c.post("/v1/checkout-sessions", json={"plan": "platinum"})
        assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_request"
        assert (await c.post("/v1/checkout-sessions", json={})).status_code == 422
        assert len(stripe_stand_in.checkout_sessions) == 2

        stripe_stand_in.down = True
        r = await c.post("/v1/checkout-sessions", json={"plan": "professional"})
        assert r.status_code == 503 and r.json()["error"]["code"] == "unavailable"


async def test_late_older_payment_failure_does_not_undo_a_later_payment(billing, client):
    tenant, cus, sub = ids()
    now = int(time.time())
    await post(client, fakes.invoice_paid(tenant, "professional", cus, sub, P1, P2, created=now - 100))
    await post(client, fakes.subscription_updated(tenant, "professional", cus, sub, status="incomplete",
                                                  created=now - 200))
    await billing.settle()
    await post(client, fakes.invoice_paid(tenant, "professional", cus, sub, P2, P3, created=now))
    await billing.settle()
    await post(client, fakes.invoice_payment_failed(tenant, "professional", cus, sub, P2, P3, created=now - 10))
    await billing.settle()
    acct = await account(client, tenant)
    assert (acct["status"], acct["balance"], acct["period_start"]) == ("active", 5000, P2.isoformat())
    assert await billing.outbox(tenant, "billing.subscription_changed") == []


async def test_signed_but_unusable_event_is_kept_with_its_reason_and_not_retried(billing, client):
    event = fakes.event("invoice.paid", {"id": "in_x", "customer": "c", "subscription": "sub_x", "lines": {"data": []}})
    assert (await post(client, event)).status_code == 200
    await billing.settle()
    row = await billing.pool.fetchrow("SELECT processed_at, last_error FROM stripe_events WHERE id = $1", event["id"])
    assert row["processed_at"] is not None and row["last_error"].startswith("malformed")


async def test_real_checkout_order_grants_once_and_announces_only_the_payment(billing, client):
    """Stripe's order for a Checkout subscription: created (incomplete), invoice.paid,
    checkout.session.completed, updated (active); delivered here in reverse too."""
    for order in (1, -1):
        tenant, cus, sub = ids()
        now = int(time.time())
        events = [fakes.subscription_created(tenant, "professional", cus, sub, created=now),
                  fakes.invoice_paid(tenant, "professional", cus, sub, P1, P2, created=now + 1),
                  fakes.checkout_session_completed(tenant, "professional", cus, sub, created=now + 1),
                  fakes.subscription_updated(tenant, "professional", cus, sub, status="active", created=now + 1)]
        for event in events[::order]:
            await post(client, event)
            await billing.settle()
        acct = await account(client, tenant)
        assert (acct["status"], acct["balance"]) == ("active", 5000)
        assert len(await billing.outbox(tenant, "billing.payment_verified")) == 1
        assert await billing.outbox(tenant, "billing.subscription_changed") == []


def _refusal_events(tenant, plan, cus, sub):
    now = int(time.time())
    return {
        "checkout": fakes.checkout_session_completed(tenant, plan, cus, sub, created=now),
        "invoice_paid": fakes.invoice_paid(tenant, plan, cus, sub, P2, P3, created=now),
        "old_shape_invoice": fakes.old_shape_invoice_paid(cus, sub, P2, P3, tenant_id=tenant, plan=plan, created=now),
        "payment_failed": fakes.invoice_payment_failed(tenant, plan, cus, sub, P2, P3, created=now),
        "updated": fakes.subscription_updated(tenant, plan, cus, sub, created=now),
        "deleted": fakes.subscription_deleted(tenant, plan, cus, sub, created=now),
    }


@pytest.mark.parametrize("kind", ["checkout", "invoice_paid", "old_shape_invoice", "payment_failed", "updated",
                                  "deleted", "no_customer"])
async def test_event_tying_a_bound_tenant_to_another_customer_is_refused_and_kept(billing, client, kind):
    tenant, cus, sub = ids()
    await post(client, fakes.checkout_session_completed(tenant, "professional", cus, sub))
    await post(client, fakes.invoice_paid(tenant, "professional", cus, sub, P1, P2))
    await billing.settle()
    before, entries = await account(client, tenant), await ledger(client, tenant)
    other = None if kind == "no_customer" else f"cus_{uuid.uuid4().hex[:10]}"
    event = _refusal_events(tenant, "starter", other, f"sub_{uuid.uuid4().hex[:10]}")[
        "invoice_paid" if kind == "no_customer" else kind]
    assert (await post(client, event)).status_code == 200
    await billing.settle()
    assert await account(client, tenant) == before and await ledger(client, tenant) == entries
    assert len(await billing.outbox(tenant, "billing.payment_verified")) == 1
    assert await billing.outbox(tenant, "billing.subscription_changed") == []
    row = await billing.pool.fetchrow("SELECT processed_at, last_error FROM stripe_events WHERE id = $1", event["id"])
    assert row["processed_at"] is not None and row["last_error"].startswith("refused")
    [refused] = (await client.get("/v1/admin/stripe-events/refused", headers=ADMIN,
                                  params={"tenant_id": str(tenant)})).json()["data"]
    assert (refused["event_id"], refused["type"], refused["account_customer"], refused["event_customer"]) == \
        (event["id"], event["type"], cus, other)


async def test_the_same_customer_on_a_new_subscription_changes_plan_and_the_old_one_is_let_go(billing, client):
    tenant, cus, sub = ids()
    await post(client, fakes.checkout_session_completed(tenant, "professional", cus, sub))
    await post(client, fakes.invoice_paid(tenant, "professional", cus, sub, P1, P2))
    await billing.settle()
    new_sub, now = f"sub_{uuid.uuid4().hex[:10]}", int(time.time())
    for event in (fakes.checkout_session_completed(tenant, "enterprise", cus, new_sub, created=now),
                  fakes.invoice_paid(tenant, "enterprise", cus, new_sub, P2, P3, created=now)):
        await post(client, event)
    await billing.settle()
    # The previous subscription renewing or ending later is not the tenant's any more.
    await post(client, fakes.invoice_paid(tenant, "professional", cus, sub, P3, P3 + timedelta(days=31),
                                          created=now + 1))
    await post(client, fakes.subscription_deleted(tenant, "professional", cus, sub, created=now + 2))
    await billing.settle()
    acct = await account(client, tenant)
    assert (acct["plan"], acct["status"], acct["balance"], acct["subscription_id"]) == \
        ("enterprise", "active", 50000, new_sub)
    assert acct["superseded_subscriptions"] == [sub]  # still billing at Stripe: for the operator to cancel
    assert [(c["plan"], c["status"]) for c in await billing.outbox(tenant, "billing.subscription_changed")] == \
        [("enterprise", "active")]
    verified = await billing.outbox(tenant, "billing.payment_verified")
    assert [v["plan"] for v in verified] == ["professional", "enterprise"]
    assert (await client.get("/v1/admin/stripe-events/refused", headers=ADMIN,
                             params={"tenant_id": str(tenant)})).json()["data"] == []


async def test_a_plan_change_is_paid_by_the_tenants_own_customer(billing, stripe_stand_in):
    tenant, cus, sub = ids()
    async with billing.client(stripe_stand_in.url) as c:
        await post(c, fakes.checkout_session_completed(tenant, "professional", cus, sub))
        await billing.settle()
        r = await c.post("/v1/checkout-sessions", json={"plan": "enterprise", "tenant_id": str(tenant),
                                                        "email": "a@example.com"}, headers=ADMIN)
        assert r.status_code == 200, r.text
        [made] = stripe_stand_in.checkout_sessions
        assert (made["client_reference_id"], made["customer"]) == (str(tenant), cus)
        assert "customer_email" not in made  # Stripe takes a customer or an email, not both


async def test_checkout_credentials_are_checked_before_anything_else(billing, stripe_stand_in):
    tenant = str(uuid.uuid4())
    async with billing.client(stripe_stand_in.url) as c:
        r = await c.post("/v1/checkout-sessions", json={"plan": "professional", "tenant_id": tenant})
        assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
        r = await c.post("/v1/checkout-sessions", json={"plan": "platinum", "tenant_id": tenant})
        assert r.status_code == 401  # an unknown plan tells an outsider nothing either
        r = await c.post("/v1/checkout-sessions", json={"plan": "professional"},
                         headers={"Authorization": "Bearer bf_" + "x" * 2000})
        assert r.status_code == 401  # too long to be a credential: not even asked
        # No sessions service answers on this vhost: the credential cannot be checked, nothing is made.
        r = await c.post("/v1/checkout-sessions", json={"plan": "professional", "tenant_id": tenant},
                         headers={"Authorization": "Bearer bf_live_some-key"})
        assert r.status_code == 503 and r.json()["error"]["code"] == "unavailable"
    assert stripe_stand_in.checkout_sessions == []
