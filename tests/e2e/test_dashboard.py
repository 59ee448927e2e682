"""The customer dashboard in real headless Chromium against all four services (issue 9).

Screenshots of every page are written to test-artifacts/dashboard-*.png for a person to look at.
"""
import asyncio
import json
import os
import subprocess
import sys
import uuid
from datetime import datetime, timezone

import httpx
import pytest
from playwright.async_api import async_playwright, expect

from shared.settings import DEFAULT_PLANS_FILE
from tests.chromium import VIEWER_ARGS
from tests.e2e.platform import bearer, paying_tenant, running_platform
from tests.helpers import eventually, local_page_server

pytestmark = pytest.mark.e2e

SHOWN_PAGE = b"""<!doctype html><html><head><title>Checkout flow</title></head>
<body style="margin:0;min-height:100vh;font-family:sans-serif;background:linear-gradient(135deg,#3554d1,#e8590c);color:#fff">
<h1 style="font-size:64px;padding:40px">Checkout flow</h1><p style="font-size:28px;padding:0 40px">step 2 of 3</p>
</body></html>"""


# True once the thumbnail is the remote page (its coloured background), not a blank one.
SHOWS_THE_PAGE = """img => {
    if (!img.complete || img.naturalWidth < 100) return false;
    const canvas = document.createElement('canvas');
    canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
    const ctx = canvas.getContext('2d');
    ctx.drawImage(img, 0, 0);
    const [r, g, b] = ctx.getImageData(5, img.naturalHeight - 5, 1, 1).data;
    return !(r > 240 && g > 240 && b > 240);
}"""


@pytest.fixture(scope="module")
def platform(module_db, module_mq, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("dashboard")
    plans = json.loads(DEFAULT_PLANS_FILE.read_text())
    plans["professional"]["prewarm_browsers"] = 2  # two tenants on a 2-core box
    (workdir / "plans.json").write_text(json.dumps(plans))
    with running_platform(module_db, module_mq, workdir, PLANS_FILE=str(workdir / "plans.json")) as running:
        yield running


@pytest.fixture(scope="module")
async def tenants(platform):
    return await asyncio.gather(paying_tenant(platform), paying_tenant(platform))


@pytest.fixture
async def browser():
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path="/usr/bin/chromium", args=VIEWER_ARGS)
        yield browser
        await browser.close()


async def sign_in(browser, base: str, key: str):
    page = await browser.new_page(viewport={"width": 1280, "height": 860})
    requested = []
    page.on("request", lambda request: requested.append(request.url))
    await page.goto(f"{base}/dashboard/")
    await page.fill("#api-key", key)
    await page.click("button[type=submit]")
    await page.wait_for_url(f"{base}/dashboard/usage")
    return page, requested


async def create_session(base: str, key: str) -> dict:
    """A session that stays up while the test looks at it, connected or not."""
    async with httpx.AsyncClient(timeout=30) as http:
        r = await http.post(f"{base}/v1/sessions", json={"keep_alive": True, "idle_timeout_s": 600},
                            headers=bearer(key))
    assert r.status_code == 201, r.text
    return r.json()


async def test_customer_signs_in_watches_and_ends_a_session(platform, tenants, browser, artifacts_dir):
    base = platform.urls["sessions"]
    (_, key_a), _ = tenants

    # Sign-in page; a wrong key is refused and nothing is stored.
    page = await browser.new_page(viewport={"width": 1280, "height": 860})
    await page.goto(f"{base}/dashboard")
    await page.screenshot(path=artifacts_dir / "dashboard-signin.png")
    await page.fill("#api-key", "bf_live_wrong")
    await page.click("button[type=submit]")
    await expect(page.locator("#signin-error")).to_have_text("That API key was not accepted.")
    assert await page.evaluate("sessionStorage.length") == 0
    await page.close()

    page, requested = await sign_in(browser, base, key_a)
    await expect(page.locator("#u-plan")).to_have_text("Professional")
    await expect(page.locator("#u-remaining")).to_have_text("5,000")
    await expect(page.locator("#u-bill")).to_have_text("$0.00")
    await page.screenshot(path=artifacts_dir / "dashboard-usage-before.png")

    # A session created through the API appears on the open page, with a live picture of what it shows.
    await page.click("a[data-nav=sessions]")
    await expect(page.locator("#sessions-empty")).to_be_visible()
    with local_page_server(SHOWN_PAGE) as shown_url:
        session = await create_session(base, key_a)
        async with async_playwright() as pw:
            remote = await pw.chromium.connect_over_cdp(session["cdp_url"])
            context = remote.contexts[0] if remote.contexts else await remote.new_context()
            remote_page = context.pages[0] if context.pages else await context.new_page()
            await remote_page.goto(shown_url)
            await remote.close()

    row = page.locator(f"tr[data-session='{session['id']}']")
    await expect(row.locator(".badge")).to_have_text("Running")
    thumb = row.locator(f"img[data-thumb='{session['id']}']")
    await expect(thumb).to_be_visible(timeout=20_000)
    await eventually(lambda: thumb.evaluate(SHOWS_THE_PAGE), timeout=30, what="thumbnail of the shown page")
    await page.screenshot(path=artifacts_dir / "dashboard-sessions-running.png")
    first_picture = await thumb.get_attribute("src")

    async def refreshed():
        return await thumb.get_attribute("src") != first_picture

    await eventually(refreshed, timeout=20, what="thumbnail refreshed")

    # End it from the page: completed, with its cost and end reason.
    await row.locator("button[data-end]").click()
    await expect(row.locator(".badge")).to_have_text("Completed")
    await expect(row.locator(".cost")).to_have_text("$0.01")
    await expect(row.locator(".reason")).to_have_text("Client")
    async with httpx.AsyncClient() as http:
        ended = (await http.get(f"{base}/v1/sessions/{session['id']}", headers=bearer(key_a))).json()
    assert ended["status"] == "completed" and ended["end_reason"] == "client"
    await page.screenshot(path=artifacts_dir / "dashboard-sessions-ended.png")

    # The credits and the bill changed; the chart shows today's session.
    await page.click("a[data-nav=usage]")
    await expect(page.locator("#u-remaining")).to_have_text("4,999")
    await expect(page.locator("#u-credits")).to_have_text("1 used of 5,000 granted")
    await expect(page.locator("#u-bill")).to_have_text("$0.01")
    today = datetime.now(timezone.utc).date().isoformat()
    bars = page.locator("#chart rect.bar")
    assert float(await bars.last.get_attribute("height")) > 0
    assert f"{today}: 1 session," in await bars.last.locator("title").text_content()
    await page.screenshot(path=artifacts_dir / "dashboard-usage-after.png")

    # Quick start: the tenant's URL filled in, and the Python Playwright lines work as printed.
    await page.click("a[data-nav=quickstart]")
    snippet = await page.locator("#qs-playwright-py").inner_text()
    assert f'BASE_URL = "{base}"' in snippet
    assert base in await page.locator("#qs-curl").inner_text()
    assert "connectOverCDP(session.cdp_url)" in await page.locator("#qs-playwright-js").inner_text()
    assert "browserWSEndpoint: session.cdp_url" in await page.locator("#qs-puppeteer").inner_text()
    await expect(page.locator("#qs-key")).to_have_text(key_a[:12] + "…")
    await page.screenshot(path=artifacts_dir / "dashboard-quickstart.png", full_page=True)
    with local_page_server() as hello_url:
        script = snippet.replace("https://example.com", hello_url)
        ran = await asyncio.to_thread(subprocess.run, [sys.executable, "-c", script], capture_output=True,
                                      text=True, timeout=60, env={**os.environ, "BROWSERFLEET_API_KEY": key_a})
    assert ran.stdout.strip() == "Hello from browserfleet", ran.stderr

    # Filter and paginate: three sessions, two a page.
    running = await create_session(base, key_a)
    await page.goto(f"{base}/dashboard/sessions?page_size=2")
    rows = page.locator("#sessions-body tr")
    await expect(rows).to_have_count(2)
    await expect(rows.first).to_have_attribute("data-session", running["id"])
    await page.click("#next-page")
    await expect(rows).to_have_count(1)
    await expect(rows.first).to_have_attribute("data-session", session["id"])
    await expect(page.locator("#next-page")).to_be_disabled()
    await page.click("#prev-page")
    await expect(rows).to_have_count(2)
    await page.select_option("#status-filter", "running")
    await expect(rows).to_have_count(1)
    await expect(rows.first).to_have_attribute("data-session", running["id"])
    await page.select_option("#status-filter", "completed")
    await expect(rows).to_have_count(2)
    await expect(page.locator("#sessions-body .badge")).to_have_text(["Completed", "Completed"])

    # API keys: listed without secrets, a new one shown once, revoked with a confirming second click.
    await page.click("a[data-nav=keys]")
    key_rows = page.locator("#keys-body tr")
    await expect(key_rows).to_have_count(1)
    await expect(key_rows.first).to_contain_text("in use here")
    await page.click("#create-key")
    secret = page.locator("#new-key-secret")
    await expect(secret).to_contain_text("bf_live_")
    await expect(key_rows).to_have_count(2)
    new_key = await secret.text_content()
    assert new_key.startswith("bf_live_") and new_key != key_a
    await page.screenshot(path=artifacts_dir / "dashboard-keys-created.png")
    async with httpx.AsyncClient() as http:
        assert (await http.get(f"{base}/v1/usage", headers=bearer(new_key))).status_code == 200
        listed = (await http.get(f"{base}/v1/api-keys", headers=bearer(key_a))).json()["data"]
    assert new_key not in json.dumps(listed) and key_a not in json.dumps(listed)
    new_row = page.locator("#keys-body tr", has_text=new_key[:12])
    await new_row.locator("button[data-revoke]").click()
    await expect(new_row.locator("button[data-revoke]")).to_have_text("Confirm revoke")
    await new_row.locator("button[data-revoke]").click()
    await expect(new_row.locator(".badge")).to_have_text("Revoked")
    await page.reload()  # the secret is not shown again
    await expect(page.locator("#new-key")).to_be_hidden()
    await page.screenshot(path=artifacts_dir / "dashboard-keys.png")

    async def new_key_refused():
        async with httpx.AsyncClient() as http:
            return (await http.get(f"{base}/v1/usage", headers=bearer(new_key))).status_code == 401

    await eventually(new_key_refused, timeout=10, what="revoked key refused")
    async with httpx.AsyncClient() as http:
        await http.post(f"{base}/v1/sessions/{running['id']}/end", headers=bearer(key_a))

    # The key never went into a URL, and never into any service's log; nothing came from elsewhere (offline).
    assert not [url for url in requested if key_a in url]
    assert [url for url in requested if not url.startswith((base, "blob:", "data:"))] == []
    for log in platform.logs.iterdir():
        text = log.read_text(errors="replace")
        assert key_a not in text and new_key not in text, log.name


async def test_another_tenants_data_never_appears(platform, tenants, browser, artifacts_dir):
    base = platform.urls["sessions"]
    (_, key_a), (_, key_b) = tenants
    theirs = await create_session(base, key_a)
    async with httpx.AsyncClient() as http:
        their_keys = (await http.get(f"{base}/v1/api-keys", headers=bearer(key_a))).json()["data"]

    page, _ = await sign_in(browser, base, key_b)
    await expect(page.locator("#u-remaining")).to_have_text("5,000")
    await page.goto(f"{base}/dashboard/sessions?session={theirs['id']}")
    await expect(page.locator("#refreshed")).to_contain_text("updated")
    await expect(page.locator("#sessions-empty")).to_be_visible()
    await expect(page.locator("#sessions-body tr")).to_have_count(0)
    await page.screenshot(path=artifacts_dir / "dashboard-sessions-other-tenant.png")

    # Whatever URL the page's own credential is sent to, tenant A's things are not found.
    statuses = await page.evaluate(
        """async ([id, keyId]) => {
            const auth = {Authorization: 'Bearer ' + sessionStorage.getItem('browserfleet.credential')};
            const call = async (method, path) => (await fetch(path, {method, headers: auth})).status;
            return [await call('GET', `/v1/sessions/${id}`), await call('GET', `/v1/sessions/${id}/screenshot`),
                    await call('POST', `/v1/sessions/${id}/end`), await call('DELETE', `/v1/api-keys/${keyId}`)];
        }""", [theirs["id"], their_keys[0]["id"]])
    assert statuses == [404, 404, 404, 404]
    await page.click("a[data-nav=keys]")
    await expect(page.locator("#keys-body tr")).to_have_count(1)
    for key in their_keys:
        await expect(page.locator("#keys-body")).not_to_contain_text(key["prefix"])
    async with httpx.AsyncClient() as http:
        anonymous = await http.get(f"{base}/v1/api-keys")
        assert anonymous.status_code == 401 and anonymous.json()["error"]["code"] == "unauthorized"
        still = (await http.get(f"{base}/v1/sessions/{theirs['id']}", headers=bearer(key_a))).json()
        assert still["status"] == "running"
        await http.post(f"{base}/v1/sessions/{theirs['id']}/end", headers=bearer(key_a))


async def test_operator_link_signs_a_customer_in(platform, tenants, browser, artifacts_dir):
    base = platform.urls["sessions"]
    (tenant_a, _), _ = tenants
    async with httpx.AsyncClient() as http:
        unknown = await http.post(f"{base}/v1/admin/tenants/{uuid.uuid4()}/dashboard-links", headers=platform.admin)
        assert unknown.status_code == 404
        no_admin = await http.post(f"{base}/v1/admin/tenants/{tenant_a}/dashboard-links")
        assert no_admin.status_code == 401
        minted = await http.post(f"{base}/v1/admin/tenants/{tenant_a}/dashboard-links", headers=platform.admin)
    assert minted.status_code == 201, minted.text
    url = minted.json()["url"]
    assert url.startswith(f"{base}/dashboard/#link=")
    async with httpx.AsyncClient() as http:  # the link itself is no credential, only its exchange is
        assert (await http.get(f"{base}/v1/usage", headers=bearer(url.split("#link=")[1]))).status_code == 401

    page = await browser.new_page(viewport={"width": 1280, "height": 860})
    await page.goto(url)
    await page.wait_for_url(f"{base}/dashboard/usage")
    await expect(page.locator("#u-plan")).to_have_text("Professional")
    assert "link=" not in page.url
    await page.click("a[data-nav=quickstart]")
    await expect(page.locator("#qs-key")).to_have_text("<your API key>")
    await page.click("a[data-nav=keys]")
    await expect(page.locator("#keys-body tr").first).to_be_visible()
    await expect(page.locator("#sign-ins-body tr")).to_have_count(1)
    await expect(page.locator("#sign-ins-body")).to_contain_text("this tab")
    await page.screenshot(path=artifacts_dir / "dashboard-keys-via-link.png")

    # Signing out ends the sign-in on the server, not only in the tab; the used link stays used.
    signed_in = bearer(await page.evaluate("sessionStorage.getItem('browserfleet.credential')"))
    await page.click("#sign-out")
    await page.wait_for_url(f"{base}/dashboard/")
    assert await page.evaluate("sessionStorage.length") == 0
    async with httpx.AsyncClient() as http:
        assert (await http.get(f"{base}/v1/usage", headers=signed_in)).status_code == 401
    await page.goto(url)
    await expect(page.locator("#signin-error")).to_contain_text("invalid, used or has expired")

    # A tampered link signs no one in.
    await page.goto(f"{base}/dashboard/")
    await page.goto(url[:-3] + ("AAA" if not url.endswith("AAA") else "BBB"))
    await expect(page.locator("#signin-error")).to_contain_text("invalid, used or has expired")
    await page.screenshot(path=artifacts_dir / "dashboard-signin-bad-link.png")


async def test_a_link_asks_before_replacing_a_signed_in_tab(platform, tenants, browser):
    base = platform.urls["sessions"]
    (_, key_a), (tenant_b, _) = tenants

    async def link() -> str:
        async with httpx.AsyncClient() as http:
            r = await http.post(f"{base}/v1/admin/tenants/{tenant_b}/dashboard-links", headers=platform.admin)
        return r.json()["url"]

    page, _ = await sign_in(browser, base, key_a)
    asked = []

    async def decline(dialog):
        asked.append(dialog.message)
        await dialog.dismiss()
    page.once("dialog", decline)
    declined = await link()
    await page.goto(declined)
    await page.wait_for_url(f"{base}/dashboard/usage")
    assert asked and "replacing the current one" in asked[0]
    assert await page.evaluate("sessionStorage.getItem('browserfleet.credential')") == key_a
    async with httpx.AsyncClient() as http:  # declined, the link was not used
        r = await http.post(f"{base}/v1/dashboard/sign-ins", json={"link": declined.split("#link=")[1]})
        assert r.status_code == 200

    async def accept(dialog):
        asked.append(dialog.message)
        await dialog.accept()
    page.once("dialog", accept)
    await page.goto(await link())
    await page.wait_for_url(f"{base}/dashboard/usage")
    assert len(asked) == 2
    assert await page.evaluate("sessionStorage.getItem('browserfleet.credential.kind')") == "link"
    await expect(page.locator("#u-remaining")).to_have_text("5,000")
