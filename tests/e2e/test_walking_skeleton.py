"""A paying customer drives a real browser through all four services (issue 2). How long the steps
take (payment to a provisioned tenant, a create, connect and drive) is `make bench`'s to measure."""
import json
import uuid
from datetime import datetime, timedelta, timezone

import httpx
import pytest
from playwright.async_api import async_playwright

from tests import stripe_fakes
from tests.e2e.platform import WEBHOOK_SECRET, running_platform
from tests.helpers import chromium_pids, eventually, local_page_server

pytestmark = pytest.mark.e2e


@pytest.fixture
def platform(fresh_db, fresh_mq, tmp_path):
    # A database and vhost of its own: other tests' tenants would otherwise get pools here too.
    with running_platform(fresh_db, fresh_mq, tmp_path) as running:
        yield running
    # Stopping the platform (SIGTERM, like Ctrl-C) leaves no browser and no profile directory.
    assert chromium_pids(str(running.profile_root)) == []
    assert list(running.profile_root.iterdir()) == []


def signed(event: dict, secret: str = WEBHOOK_SECRET) -> tuple[bytes, dict]:
    body = json.dumps(event).encode()
    return body, {"stripe-signature": stripe_fakes.sign(body, secret), "content-type": "application/json"}


def profile_dirs(platform) -> set[str]:
    return {p.name for p in platform.profile_root.iterdir()}


async def test_paying_customer_drives_a_real_browser(platform):
    tenant_id = str(uuid.uuid4())
    customer, subscription = f"cus_{uuid.uuid4().hex[:14]}", f"sub_{uuid.uuid4().hex[:14]}"
    period_start = datetime.now(timezone.utc).replace(microsecond=0)
    period_end = period_start + timedelta(days=30)
    sessions_url, billing_url = platform.urls["sessions"], platform.urls["billing"]

    async with httpx.AsyncClient(timeout=30) as http:
        # Bad input first: a forged signature is refused and stores nothing.
        body, headers = signed(stripe_fakes.checkout_session_completed(tenant_id, "professional", customer, subscription),
                               secret="whsec_forged")
        forged = await http.post(f"{billing_url}/webhooks/stripe", content=body, headers=headers)
        assert forged.status_code == 400
        assert forged.json()["error"]["code"]

        # 1. Payment: checkout completed + invoice paid (current API shape), signed for real.
        checkout = stripe_fakes.checkout_session_completed(tenant_id, "professional", customer, subscription)
        invoice = stripe_fakes.invoice_paid(tenant_id, "professional", customer, subscription,
                                            int(period_start.timestamp()), int(period_end.timestamp()))
        for event in (checkout, invoice, invoice):  # the invoice twice: deduped
            body, headers = signed(event)
            response = await http.post(f"{billing_url}/webhooks/stripe", content=body, headers=headers)
            assert response.status_code == 200, response.text

        # 2–3. The tenant is provisioned, sessions knows its allowance, warm_pool pre-warms 5 browsers.
        async def usage_ready():
            r = await http.post(f"{sessions_url}/v1/admin/tenants/{tenant_id}/api-keys", headers=platform.admin)
            return r if r.status_code == 201 else None

        key_response = await eventually(usage_ready, timeout=30, what="tenant known to sessions")
        api_key = key_response.json()["api_key"]
        auth = {"authorization": f"Bearer {api_key}"}

        async def allowance():
            r = await http.get(f"{sessions_url}/v1/usage", headers=auth)
            body = r.json()
            return body if r.status_code == 200 and body["credits_remaining"] == 5000 else None

        usage = await eventually(allowance, timeout=30, what="allowance of 5000 credits")
        assert usage["plan"] == "professional" and usage["status"] == "active"
        async def pool_idle():
            r = await http.get(f"{platform.urls['warm_pool']}/v1/pool", headers=platform.admin)
            mine = [t for t in r.json()["tenants"] if t["tenant_id"] == tenant_id]
            return mine and mine[0]["idle"] == 5 and mine[0]["launching"] == 0

        await eventually(pool_idle, timeout=60, what="5 pre-warmed browsers idle")
        # Exactly the pool: any browser launched beyond it is retired and its directory removed.
        await eventually(lambda: len(profile_dirs(platform)) == 5, timeout=30, what="only the pool's directories")
        await eventually(lambda: len(chromium_pids(str(platform.profile_root))) >= 5, what="chromium running")
        warm_dirs = profile_dirs(platform)

        # Bad input: an unknown API key is refused; a malformed body gets the JSON error shape.
        unknown = await http.post(f"{sessions_url}/v1/sessions", json={}, headers={"authorization": "Bearer nope"})
        assert unknown.status_code == 401 and unknown.json()["error"]["code"] == "unauthorized"
        malformed = await http.post(f"{sessions_url}/v1/sessions", content=b"{not json", headers=auth)
        assert malformed.status_code == 422 and malformed.json()["error"]["code"] == "invalid_request"
        wrong_type = await http.post(f"{sessions_url}/v1/sessions", json={"timeout_s": "soon"}, headers=auth)
        assert wrong_type.status_code == 422 and wrong_type.json()["error"]["code"] == "invalid_request"

        # 5. Create a session: a warm browser, a CDP URL on the sessions service's relay.
        created = await http.post(f"{sessions_url}/v1/sessions", json={"timeout_s": 120}, headers=auth)
        assert created.status_code == 201, created.text
        session = created.json()
        assert session["status"] == "running" and session["warm"] is True
        assert session["remaining_credits"] == 4999
        cdp_url = session["cdp_url"]
        assert cdp_url.startswith(sessions_url.replace("http://", "ws://") + f"/v1/sessions/{session['id']}/cdp")

        with local_page_server() as page_url:
            async with async_playwright() as pw:
                browser = await pw.chromium.connect_over_cdp(cdp_url)
                context = browser.contexts[0] if browser.contexts else await browser.new_context()
                page = await context.new_page()
                await page.goto(page_url)
                title = await page.title()
                await browser.close()
        assert title == "Hello from browserfleet"

        # 6. End it: completed with duration and cost; billing records usage; the browser is destroyed.
        ended = await http.post(f"{sessions_url}/v1/sessions/{session['id']}/end", headers=auth)
        assert ended.status_code == 200, ended.text
        done = ended.json()
        assert done["status"] == "completed" and done["duration_ms"] > 0 and done["cost"] == "0.010000"
        again = await http.post(f"{sessions_url}/v1/sessions/{session['id']}/end", headers=auth)
        assert again.json() == done

        async def usage_recorded():
            r = await http.get(f"{billing_url}/v1/admin/accounts/{tenant_id}/usage", headers=platform.admin)
            return r.json() if r.status_code == 200 and r.json()["data"] else None

        billed = await eventually(usage_recorded, timeout=20, what="billing usage")
        assert [u["session_id"] for u in billed["data"]] == [session["id"]]
        assert billed["data"][0]["cost"] == "0.010000"

        # The leased browser (one of the warm ones) is killed and its profile removed; the pool refills.
        await eventually(lambda: len(warm_dirs - profile_dirs(platform)) == 1 and len(profile_dirs(platform)) == 5,
                         timeout=30, what="leased browser destroyed and pool refilled")

        # 7. Credits: the sessions service and billing's ledger agree.
        final = (await http.get(f"{sessions_url}/v1/usage", headers=auth)).json()
        assert final["credits_remaining"] == 4999 and final["credits_used"] == 1
        ledger = (await http.get(f"{billing_url}/v1/admin/accounts/{tenant_id}/ledger",
                                 headers=platform.admin)).json()["data"]
        kinds = sorted((entry["kind"], entry["amount"]) for entry in ledger)
        assert kinds == [("debit", -1), ("grant", 5000)]
        account = (await http.get(f"{billing_url}/v1/admin/accounts/{tenant_id}", headers=platform.admin)).json()
        assert account["balance"] == 4999 and account["plan"] == "professional"
