"""Taking over someone else's tenant through billing (issue 15, item 1), replayed end to end.

The attack: `POST /v1/checkout-sessions {"plan": "starter", "tenant_id": "<victim>"}` with no
credential, then the Stripe events of the attacker's own checkout (correctly signed: Stripe sends
them) rebind the victim's tenant to the attacker's customer, replace its credits and, on the
attacker's cancel, deprovision it. billing, sessions and the provisioner run as real processes on
real Postgres and RabbitMQ (each on its own RabbitMQ user, so the credential RPC runs under the
deployed permissions); Stripe's API is the stand-in, its webhooks are signed fakes.
"""
import json
import os
import secrets
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import asyncpg
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests import infra
from tests import stripe_fakes as fakes

SECRET = f"whsec_{secrets.token_urlsafe(24)}"
ADMIN_TOKEN = f"takeover-admin-{secrets.token_urlsafe(24)}"
ADMIN = {"authorization": f"Bearer {ADMIN_TOKEN}"}
NOW = datetime.now(timezone.utc).replace(microsecond=0)


def wait_for(check, *, timeout: float = 30, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.1)


@dataclass
class Platform:
    billing: str
    sessions: str
    stripe: fakes.StripeStandIn
    database_url: str
    http: httpx.Client
    logs: Path

    def deliver(self, *events: dict) -> None:
        for event in events:
            body = json.dumps(event).encode()
            r = self.http.post(f"{self.billing}/webhooks/stripe", content=body,
                               headers={"stripe-signature": fakes.sign(body, SECRET),
                                        "content-type": "application/json"})
            assert r.status_code == 200, r.text

    def settled(self, *events: dict) -> None:
        """Wait until billing has processed these stored events (none of them is pending)."""
        ids = {e["id"] for e in events}

        def done():
            r = self.http.get(f"{self.billing}/v1/admin/stripe-events", headers=ADMIN, params={"limit": 1000})
            assert r.status_code == 200, r.text
            return not ids & {e["id"] for e in r.json()["data"]}
        wait_for(done, what="stripe events processed")

    def checkout(self, body: dict | bytes, credential: str | None = None, *, client: str | None = None
                 ) -> httpx.Response:
        headers = {"authorization": f"Bearer {credential}"} if credential else {}
        if client:  # speak for another client address (uvicorn takes X-Forwarded-For from loopback)
            headers["x-forwarded-for"] = client
        if isinstance(body, bytes):
            headers["content-type"] = "application/json"
            return self.http.post(f"{self.billing}/v1/checkout-sessions", content=body, headers=headers)
        return self.http.post(f"{self.billing}/v1/checkout-sessions", json=body, headers=headers)

    def account(self, tenant_id) -> dict:
        r = self.http.get(f"{self.billing}/v1/admin/accounts/{tenant_id}", headers=ADMIN)
        assert r.status_code == 200, r.text
        return r.json()

    def ledger(self, tenant_id) -> list[dict]:
        r = self.http.get(f"{self.billing}/v1/admin/accounts/{tenant_id}/ledger", headers=ADMIN,
                          params={"limit": 500})
        return [(e["kind"], e["amount"]) for e in r.json()["data"]]

    def usage(self, key: str) -> dict:
        r = self.http.get(f"{self.sessions}/v1/usage", headers={"authorization": f"Bearer {key}"})
        assert r.status_code == 200, r.text
        return r.json()

    def refused(self, tenant_id=None) -> list[dict]:
        r = self.http.get(f"{self.billing}/v1/admin/stripe-events/refused", headers=ADMIN,
                          params={"tenant_id": str(tenant_id)} if tenant_id else {})
        assert r.status_code == 200, r.text
        return r.json()["data"]

    def refused_metric(self) -> dict[str, float]:
        text = self.http.get(f"{self.billing}/metrics").text
        return {s.labels["type"]: s.value for family in text_string_to_metric_families(text)
                for s in family.samples if s.name == "billing_stripe_events_refused_total"}

    async def announced(self, tenant_id) -> list[tuple[str, str]]:
        """What billing put in its outbox for this tenant (everything it will ever publish)."""
        conn = await asyncpg.connect(self.database_url)
        try:
            rows = await conn.fetch("SELECT routing_key, body FROM billing.outbox WHERE body->>'tenant_id' = $1"
                                    " ORDER BY created_at", str(tenant_id))
        finally:
            await conn.close()
        return [(r["routing_key"], json.loads(r["body"]).get("plan")) for r in rows]


@dataclass
class Tenant:
    id: str
    customer: str
    subscription: str
    key: str


@pytest.fixture(scope="module")
def platform(module_db, module_mq, tmp_path_factory):
    logs = tmp_path_factory.mktemp("takeover")
    with fakes.StripeStandIn() as stripe, httpx.Client(timeout=30) as client:
        common = {"DATABASE_URL": module_db, "RABBITMQ_URL": module_mq, "STRIPE_WEBHOOK_SECRET": SECRET,
                  "ADMIN_TOKEN": ADMIN_TOKEN, "STRIPE_API_BASE": stripe.url, "STRIPE_METER_ENABLED": "false",
                  "WEBHOOK_RETRY_INTERVAL_S": "0.2", "LOG_FORMAT": "text"}
        own = infra.service_broker_urls(module_mq)  # each service its own RabbitMQ user, as deployed
        procs = [infra.ServiceProcess(name, {**common, "RABBITMQ_URL": own[name], "HTTP_PORT": str(infra.free_port())},
                                      logs)
                 for name in ("billing", "sessions", "provisioner")]
        try:
            for proc in procs:
                proc.start()
            for proc in procs:
                proc.wait_ready()
            yield Platform(procs[0].url, procs[1].url, stripe, module_db, client, logs)
        finally:
            for proc in procs:
                proc.stop()


def paid_tenant(platform: Platform, plan: str = "professional") -> Tenant:
    """A tenant that paid through its own checkout, is provisioned and holds an API key."""
    tenant = str(uuid.uuid4())
    customer, subscription = f"cus_{uuid.uuid4().hex[:14]}", f"sub_{uuid.uuid4().hex[:14]}"
    platform.deliver(fakes.checkout_session_completed(tenant, plan, customer, subscription),
                     fakes.invoice_paid(tenant, plan, customer, subscription, NOW, NOW + timedelta(days=30)))

    def provisioned():
        r = platform.http.get(f"{platform.sessions}/v1/admin/tenants/{tenant}", headers=ADMIN)
        return r.status_code == 200 and r.json()["provisioned"] and r.json()["credits_remaining"] == 5000
    wait_for(provisioned, what="tenant provisioned with its credits")
    key = platform.http.post(f"{platform.sessions}/v1/admin/tenants/{tenant}/api-keys", headers=ADMIN).json()
    return Tenant(tenant, customer, subscription, key["api_key"])


def sign_in(platform: Platform, tenant_id: str) -> str:
    link = platform.http.post(f"{platform.sessions}/v1/admin/tenants/{tenant_id}/dashboard-links", headers=ADMIN)
    token = link.json()["url"].split("#link=")[1]
    r = platform.http.post(f"{platform.sessions}/v1/dashboard/sign-ins", json={"link": token})
    assert r.status_code == 200, r.text
    return r.json()["credential"]


@pytest.fixture(scope="module")
def victim(platform) -> Tenant:
    return paid_tenant(platform)


@pytest.fixture(scope="module")
def attacker(platform) -> Tenant:
    return paid_tenant(platform)


def assert_error(r: httpx.Response, status: int, code: str) -> None:
    assert r.status_code == status, r.text
    assert set(r.json()) == {"error"} and set(r.json()["error"]) == {"code", "message"}
    assert r.json()["error"]["code"] == code


def test_checkout_for_someone_elses_tenant_is_refused(platform, victim, attacker):
    made = len(platform.stripe.checkout_sessions)
    assert_error(platform.checkout({"plan": "starter", "tenant_id": victim.id}), 401, "unauthorized")
    assert_error(platform.checkout({"plan": "starter", "tenant_id": victim.id}, "bf_not-a-key"), 401, "unauthorized")
    assert_error(platform.checkout({"plan": "starter", "tenant_id": victim.id}, "bfd_forged.sign-in"),
                 401, "unauthorized")
    assert_error(platform.checkout({"plan": "starter", "tenant_id": victim.id}, attacker.key), 403, "forbidden")
    assert_error(platform.checkout({"plan": "starter", "tenant_id": victim.id}, sign_in(platform, attacker.id)),
                 403, "forbidden")
    assert len(platform.stripe.checkout_sessions) == made  # Stripe never heard of any of them

    # Without credentials a checkout always starts a tenant of its own.
    r = platform.checkout({"plan": "starter"})
    assert r.status_code == 200, r.text
    assert r.json()["tenant_id"] not in (victim.id, attacker.id)
    [session] = platform.stripe.checkout_sessions[made:]
    assert session["client_reference_id"] == r.json()["tenant_id"] and "customer" not in session


def test_signed_events_tying_a_tenant_to_another_customer_change_nothing(platform, victim, attacker):
    before_account, before_usage = platform.account(victim.id), platform.usage(victim.key)
    before_metric = platform.refused_metric()
    # The attacker's own checkout (its own customer and subscription) carrying the victim's tenant id.
    cus, sub = attacker.customer, f"sub_{uuid.uuid4().hex[:14]}"
    start, end = NOW + timedelta(days=1), NOW + timedelta(days=31)
    t = int(time.time())
    events = [fakes.subscription_created(victim.id, "starter", cus, sub, created=t),
              fakes.checkout_session_completed(victim.id, "starter", cus, sub, created=t + 1),
              fakes.invoice_paid(victim.id, "starter", cus, sub, start, end, created=t + 1),
              fakes.subscription_updated(victim.id, "starter", cus, sub, status="active", created=t + 1),
              fakes.subscription_deleted(victim.id, "starter", cus, sub, created=t + 2)]
    platform.deliver(*events)
    platform.settled(*events)

    assert platform.account(victim.id) == before_account
    assert platform.ledger(victim.id) == [("grant", 5000)]
    assert platform.usage(victim.key) == before_usage
    assert before_usage["plan"] == "professional" and before_usage["credits_remaining"] == 5000
    r = platform.http.get(f"{platform.sessions}/v1/admin/tenants/{victim.id}", headers=ADMIN).json()
    assert (r["provisioned"], r["status"], r["plan"]) == (True, "active", "professional")

    # Recorded for the operator: the admin view, the metric, the CLI.
    refused = platform.refused(victim.id)
    assert {e["event_id"] for e in refused} == {e["id"] for e in events}
    for entry in refused:
        assert (entry["tenant_id"], entry["account_customer"], entry["event_customer"]) == \
            (victim.id, victim.customer, cus)
        assert entry["reason"] and entry["refused_at"]
    assert {e["event_id"] for e in platform.refused()} >= {e["id"] for e in events}
    after_metric = platform.refused_metric()
    assert sum(after_metric.values()) - sum(before_metric.values()) == len(events)
    assert after_metric["checkout.session.completed"] - before_metric.get("checkout.session.completed", 0) == 1
    assert_error(platform.http.get(f"{platform.billing}/v1/admin/stripe-events/refused"), 401, "unauthorized")
    cli = subprocess.run([sys.executable, "-m", "shared.cli", "billing", "refused-events", "--tenant", victim.id],
                         capture_output=True, text=True, timeout=60, cwd=infra.ROOT,
                         env={**os.environ, "BILLING_URL": platform.billing, "ADMIN_TOKEN": ADMIN_TOKEN})
    assert cli.returncode == 0, cli.stderr
    for event in events:
        assert event["id"] in cli.stdout
    assert cus in cli.stdout and victim.customer in cli.stdout


async def test_nothing_was_announced_for_the_refused_events(platform, victim):
    # Everything billing will ever publish goes through its outbox: only the victim's own payment.
    assert await platform.announced(victim.id) == [("billing.payment_verified", "professional")]


def test_the_tenants_own_credential_or_the_admin_token_starts_a_plan_change(platform, victim):
    for credential in (victim.key, sign_in(platform, victim.id), ADMIN_TOKEN):
        made = len(platform.stripe.checkout_sessions)
        r = platform.checkout({"plan": "enterprise", "tenant_id": victim.id}, credential)
        assert r.status_code == 200, r.text
        assert r.json()["tenant_id"] == victim.id
        [session] = platform.stripe.checkout_sessions[made:]
        # The tenant's own Stripe customer pays, so the change arrives as that customer's events.
        assert (session["client_reference_id"], session["customer"]) == (victim.id, victim.customer)
        assert session["subscription_data[metadata][tenant_id]"] == victim.id
        assert session["line_items[0][price]"] == "price_enterprise"
    # A tenant's credential with no tenant_id is a checkout for that tenant.
    r = platform.checkout({"plan": "enterprise"}, victim.key)
    assert r.status_code == 200 and r.json()["tenant_id"] == victim.id


def test_the_same_customer_upgrading_its_plan_still_works(platform):
    tenant = paid_tenant(platform)
    r = platform.checkout({"plan": "enterprise", "tenant_id": tenant.id}, tenant.key)
    assert r.status_code == 200, r.text
    # Stripe's events for that checkout: the tenant's own customer, a new subscription.
    sub, t = f"sub_{uuid.uuid4().hex[:14]}", int(time.time())
    start, end = NOW + timedelta(days=1), NOW + timedelta(days=31)
    events = [fakes.subscription_created(tenant.id, "enterprise", tenant.customer, sub, created=t),
              fakes.invoice_paid(tenant.id, "enterprise", tenant.customer, sub, start, end, created=t + 1),
              fakes.checkout_session_completed(tenant.id, "enterprise", tenant.customer, sub, created=t + 1),
              fakes.subscription_updated(tenant.id, "enterprise", tenant.customer, sub, status="active",
                                         created=t + 1)]
    platform.deliver(*events)
    platform.settled(*events)
    account = platform.account(tenant.id)
    assert (account["plan"], account["status"], account["balance"]) == ("enterprise", "active", 50000)
    assert (account["stripe_customer_id"], account["subscription_id"]) == (tenant.customer, sub)
    assert account["superseded_subscriptions"] == [tenant.subscription]  # the operator cancels it at Stripe
    wait_for(lambda: platform.usage(tenant.key)["credits_remaining"] == 50000, what="sessions hears of the upgrade")
    assert platform.usage(tenant.key)["plan"] == "enterprise"
    assert platform.refused(tenant.id) == []


def test_a_revoked_key_or_an_expired_sign_in_starts_nothing(platform, victim):
    created = platform.http.post(f"{platform.sessions}/v1/admin/tenants/{victim.id}/api-keys", headers=ADMIN).json()
    assert platform.checkout({"plan": "enterprise", "tenant_id": victim.id}, created["api_key"]).status_code == 200
    assert platform.http.delete(f"{platform.sessions}/v1/admin/api-keys/{created['id']}",
                                headers=ADMIN).status_code == 204
    made = len(platform.stripe.checkout_sessions)
    assert_error(platform.checkout({"plan": "enterprise", "tenant_id": victim.id}, created["api_key"]),
                 401, "unauthorized")
    # A link is no sign-in: only its exchange is.
    link = platform.http.post(f"{platform.sessions}/v1/admin/tenants/{victim.id}/dashboard-links", headers=ADMIN)
    assert_error(platform.checkout({"plan": "enterprise", "tenant_id": victim.id},
                                   link.json()["url"].split("#link=")[1]), 401, "unauthorized")
    assert len(platform.stripe.checkout_sessions) == made


def test_no_credential_that_crossed_to_sessions_is_logged(platform, victim, attacker):
    credential = sign_in(platform, victim.id)
    assert platform.checkout({"plan": "enterprise"}, credential).status_code == 200
    assert platform.checkout({"plan": "enterprise", "tenant_id": victim.id}, credential[:-2]).status_code == 401
    for name in ("billing", "sessions"):
        text = (platform.logs / f"{name}.log").read_text()
        assert text.strip()
        for secret in (victim.key, attacker.key, credential, credential[:-2], ADMIN_TOKEN):
            assert secret not in text, f"a credential is in {name}.log"


def test_a_bad_credential_is_refused_before_the_body_is_read(platform):
    assert_error(platform.checkout(b'{"plan": ', "bf_not-a-key", client="192.0.2.10"), 401, "unauthorized")
    assert_error(platform.checkout(b'{"plan": '), 422, "invalid_request")  # anonymous: the body decides


def test_guessing_credentials_through_billing_is_throttled(platform, victim):
    guesser, limit = "198.51.100.23", 20  # AUTH_FAILURES_MAX's default
    for _ in range(limit):
        assert_error(platform.checkout({"plan": "starter", "tenant_id": victim.id}, f"bf_{uuid.uuid4().hex}",
                                       client=guesser), 401, "unauthorized")
    r = platform.checkout({"plan": "starter", "tenant_id": victim.id}, f"bf_{uuid.uuid4().hex}", client=guesser)
    assert_error(r, 429, "rate_limited")
    assert int(r.headers["retry-after"]) > 0
    # billing cannot tell a good tenant credential from a guess without asking: refused from there too;
    # the operator's token, checked for free, still goes through, and other addresses are not affected.
    assert_error(platform.checkout({"plan": "enterprise"}, victim.key, client=guesser), 429, "rate_limited")
    assert platform.checkout({"plan": "enterprise", "tenant_id": victim.id}, ADMIN_TOKEN,
                             client=guesser).status_code == 200
    assert platform.checkout({"plan": "enterprise"}, victim.key, client="198.51.100.24").status_code == 200
