"""Against localstripe (a Stripe test server): a real customer and subscription paid with a
test card, then canceled; its own signed webhooks (older payload shapes) reach billing."""
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import pytest
import stripe

from tests import infra
from tests.helpers import wait_for
from tests.integration.billing_process import ADMIN, SECRET, billing_process


@pytest.fixture
def localstripe(artifacts_dir):
    port = infra.free_port()
    exe = Path(sys.executable).with_name("localstripe")
    log = open(artifacts_dir / "localstripe.log", "ab")
    proc = subprocess.Popen([str(exe), "--port", str(port), "--from-scratch"], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _answers(url), timeout=20, what="localstripe")
        yield url
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


def _answers(url) -> bool:
    try:
        return httpx.get(f"{url}/v1/customers", headers={"Authorization": "Bearer sk_test_x"}).status_code == 200
    except httpx.HTTPError:
        return False


def test_subscription_paid_by_card_then_canceled(fresh_db, fresh_mq, artifacts_dir, localstripe):
    svc = billing_process(fresh_db, fresh_mq, artifacts_dir, localstripe).start()
    try:
        svc.wait_ready()
        r = httpx.post(f"{localstripe}/_config/webhooks/billing",
                       data={"url": f"{svc.url}/webhooks/stripe", "secret": SECRET})
        assert r.status_code == 200
        api = stripe.StripeClient("sk_test_localstripe", base_addresses={"api": localstripe})
        product = api.v1.products.create({"name": "browserfleet professional"})
        api.v1.plans.create({"id": "price_professional", "product": product.id, "amount": 4900,
                             "currency": "usd", "interval": "month"})
        customer = api.v1.customers.create({"email": "buyer@example.com", "payment_method": "pm_card_visa",
                                            "invoice_settings": {"default_payment_method": "pm_card_visa"}})
        tenant = str(uuid.uuid4())
        sub = api.v1.subscriptions.create({"customer": customer.id, "items": [{"plan": "price_professional"}],
                                           "metadata": {"tenant_id": tenant, "plan": "professional"}})
        assert sub.status == "active"

        def account():
            r = httpx.get(f"{svc.url}/v1/admin/accounts/{tenant}", headers=ADMIN)
            return r.json() if r.status_code == 200 else None

        acct = wait_for(lambda: (a := account()) and a["balance"] == 5000 and a, timeout=30, what="credit grant")
        assert (acct["plan"], acct["status"]) == ("professional", "active")
        assert (acct["stripe_customer_id"], acct["subscription_id"]) == (customer.id, sub.id)

        api.v1.subscriptions.cancel(sub.id)
        wait_for(lambda: account()["status"] == "canceled", timeout=30, what="cancel")
        ledger = httpx.get(f"{svc.url}/v1/admin/accounts/{tenant}/ledger", headers=ADMIN).json()["data"]
        assert [(e["kind"], e["amount"]) for e in ledger] == [("grant", 5000)]
    finally:
        svc.stop()


def test_subscription_whose_first_payment_fails_grants_nothing(fresh_db, fresh_mq, artifacts_dir, localstripe):
    svc = billing_process(fresh_db, fresh_mq, artifacts_dir, localstripe).start()
    try:
        svc.wait_ready()
        httpx.post(f"{localstripe}/_config/webhooks/billing", data={"url": f"{svc.url}/webhooks/stripe", "secret": SECRET})
        api = stripe.StripeClient("sk_test_localstripe", base_addresses={"api": localstripe})
        product = api.v1.products.create({"name": "browserfleet professional"})
        api.v1.plans.create({"id": "price_professional", "product": product.id, "amount": 4900,
                             "currency": "usd", "interval": "month"})
        customer = api.v1.customers.create({"payment_method": "pm_card_chargeCustomerFail",
                                            "invoice_settings": {"default_payment_method": "pm_card_chargeCustomerFail"}})
        tenant = str(uuid.uuid4())
        sub = api.v1.subscriptions.create({"customer": customer.id, "items": [{"plan": "price_professional"}],
                                           "metadata": {"tenant_id": tenant, "plan": "professional"}})
        assert sub.status == "incomplete"

        def account():
            r = httpx.get(f"{svc.url}/v1/admin/accounts/{tenant}", headers=ADMIN)
            return r.json() if r.status_code == 200 else None

        acct = wait_for(lambda: (a := account()) and a["status"] == "past_due" and a, timeout=30, what="past_due")
        assert acct["balance"] == 0 and acct["subscription_id"] == sub.id
        assert httpx.get(f"{svc.url}/v1/admin/accounts/{tenant}/ledger", headers=ADMIN).json()["data"] == []
    finally:
        svc.stop()
