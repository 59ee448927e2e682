"""Profiles against all four services (issue 18): real Chromium in the sandbox, Postgres, RabbitMQ.

In both isolation modes: a persisting session sets a cookie (and a session cookie), local storage
and an IndexedDB record on a test page; the next session with the profile sees all three; a
session without it sees none. A second persisting use is refused (409) while read-only ones run
beside it; the save's outcome shows on the session; deletion and pagination."""
import asyncio
import uuid

import httpx
import pytest
from playwright.async_api import async_playwright, expect

from tests.chromium import VIEWER_ARGS
from tests.e2e.platform import bearer, paying_tenant
from tests.helpers import STATE_PAGE, eventually, local_page_server


@pytest.fixture(scope="module")
def page_url():
    with local_page_server(STATE_PAGE) as url:
        yield url


async def create_session(api, **body) -> dict:
    r = await api.post("/v1/sessions", json=body)
    assert r.status_code == 201, r.text
    return r.json()


async def on_page(session: dict, page_url: str, script: str, *args):
    """Connect over the session's CDP URL, open the test page in its (default) context, run `script`."""
    async with async_playwright() as pw:  # leaving it drops the connection (no Browser.close)
        browser = await pw.chromium.connect_over_cdp(session["cdp_url"])
        page = await browser.contexts[0].new_page()
        await page.goto(page_url)
        result = await page.evaluate(script, *args)
        await page.close()
        return result


async def end_and_settle(api, session_id: str) -> dict:
    """End the session; once it says what became of its profile's save, that answer."""
    r = await api.post(f"/v1/sessions/{session_id}/end")
    assert r.status_code == 200, r.text

    async def settled():
        s = (await api.get(f"/v1/sessions/{session_id}")).json()
        return s if s["profile"] is None or s["profile"]["save"] != "pending" else None
    return await eventually(settled, timeout=60, what="the profile's save settled")


@pytest.mark.parametrize("isolation", ["browser", "context"])
async def test_a_persisting_session_saves_cookies_local_storage_and_indexeddb_for_the_next(api, page_url,
                                                                                            isolation):
    marker = f"m{uuid.uuid4().hex[:12]}"
    created = await api.post("/v1/profiles", json={"name": f"shop-{isolation}"})
    assert created.status_code == 201, created.text
    profile = created.json()
    assert profile["name"] == f"shop-{isolation}" and profile["size_bytes"] == 0
    assert profile["last_session_id"] is None

    first = await create_session(api, isolation=isolation, profile={"id": profile["id"], "persist": True})
    assert first["profile"] == {"id": profile["id"], "persist": True, "save": "pending", "message": None}
    # Only one persisting session at a time; read-only uses run beside it.
    refused = await api.post("/v1/sessions", json={"isolation": isolation,
                                                   "profile": {"id": profile["id"], "persist": True}})
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "profile_in_use"
    reader = await create_session(api, isolation=isolation, profile={"id": profile["id"]})
    assert reader["profile"]["persist"] is False and reader["profile"]["save"] == "not_saved"
    # A profile in use (persisting) is not deleted under it.
    busy = await api.delete(f"/v1/profiles/{profile['id']}")
    assert busy.status_code == 409 and busy.json()["error"]["code"] == "profile_in_use"

    assert await on_page(first, page_url, "v => window.putState(v)", marker) is True
    ended = await end_and_settle(api, first["id"])
    assert ended["profile"]["save"] == "saved", ended["profile"]
    await end_and_settle(api, reader["id"])
    saved = (await api.get(f"/v1/profiles/{profile['id']}")).json()
    assert saved["size_bytes"] > 0 and saved["last_session_id"] in (first["id"], reader["id"])

    second = await create_session(api, isolation=isolation, profile={"id": profile["id"]})
    if isolation == "browser":  # launched on the profile's directory: no warm browser has it
        assert second["warm"] is False
    state = await on_page(second, page_url, "() => window.readState()")
    assert f"kept={marker}" in state["cookie"] and f"sess={marker}" in state["cookie"], state
    assert state["local"] == marker and state["idb"] == marker, state
    assert (await end_and_settle(api, second["id"]))["profile"]["save"] == "not_saved"

    without = await create_session(api, isolation=isolation)
    assert without["profile"] is None
    state = await on_page(without, page_url, "() => window.readState()")
    assert state == {"cookie": "", "local": None, "idb": None}
    await api.post(f"/v1/sessions/{without['id']}/end")

    # The next persisting use is free again, and another save makes another version.
    again = await create_session(api, isolation=isolation, profile={"id": profile["id"], "persist": True})
    assert (await end_and_settle(api, again["id"]))["profile"]["save"] == "saved"

    assert (await api.delete(f"/v1/profiles/{profile['id']}")).status_code == 204
    gone = await api.get(f"/v1/profiles/{profile['id']}")
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "not_found"
    refused = await api.post("/v1/sessions", json={"isolation": isolation, "profile": {"id": profile["id"]}})
    assert refused.status_code == 404 and refused.json()["error"]["code"] == "not_found"
    assert (await api.delete(f"/v1/profiles/{profile['id']}")).status_code == 404


async def test_a_profile_saved_by_a_context_session_starts_a_browser_session(api, page_url):
    """State only (no directory): a warm browser, the state restored into its default context."""
    marker = f"x{uuid.uuid4().hex[:12]}"
    profile = (await api.post("/v1/profiles", json={})).json()
    assert profile["name"] is None
    writer = await create_session(api, isolation="context", profile={"id": profile["id"], "persist": True})
    await on_page(writer, page_url, "v => window.putState(v)", marker)
    assert (await end_and_settle(api, writer["id"]))["profile"]["save"] == "saved"
    reader = await create_session(api, isolation="browser", profile={"id": profile["id"]})
    state = await on_page(reader, page_url, "() => window.readState()")
    assert f"kept={marker}" in state["cookie"] and state["local"] == marker and state["idb"] == marker, state
    await api.post(f"/v1/sessions/{reader['id']}/end")


async def test_a_profile_saved_by_a_browser_session_starts_a_context_session(api, page_url):
    """A browser-mode version holds the captured storage state beside the directory: a context takes it."""
    marker = f"y{uuid.uuid4().hex[:12]}"
    profile = (await api.post("/v1/profiles", json={})).json()
    writer = await create_session(api, isolation="browser", profile={"id": profile["id"], "persist": True})
    await on_page(writer, page_url, "v => window.putState(v)", marker)
    assert (await end_and_settle(api, writer["id"]))["profile"]["save"] == "saved"
    reader = await create_session(api, isolation="context", profile={"id": profile["id"]})
    state = await on_page(reader, page_url, "() => window.readState()")
    assert f"kept={marker}" in state["cookie"] and state["local"] == marker and state["idb"] == marker, state
    await api.post(f"/v1/sessions/{reader['id']}/end")


async def test_profiles_are_listed_newest_first_page_by_page(api):
    ids = [(await api.post("/v1/profiles", json={"name": f"p{i}"})).json()["id"] for i in range(5)]
    seen, cursor = [], None
    while True:
        r = await api.get("/v1/profiles", params={"limit": 2, **({"cursor": cursor} if cursor else {})})
        assert r.status_code == 200, r.text
        page = r.json()
        assert len(page["data"]) <= 2
        seen += [p["id"] for p in page["data"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen[:5] == ids[::-1]
    bad = await api.get("/v1/profiles", params={"cursor": "not-a-cursor"})
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid_request"
    for body in ({"name": ""}, {"name": "x" * 201}, {"colour": "red"}):
        r = await api.post("/v1/profiles", json=body)
        assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_request", body
    r = await api.post("/v1/sessions", json={"profile": {"id": "nope"}})
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_request"
    for i in ids:
        assert (await api.delete(f"/v1/profiles/{i}")).status_code == 204


async def test_the_dashboard_lists_pages_and_deletes_a_tenants_profiles(four_services, api, artifacts_dir):
    hostile = "<img src=x onerror=alert(1)>"  # a name is tenant input: it must show as text
    odd = (await api.post("/v1/profiles", json={"name": hostile})).json()
    busy = (await api.post("/v1/profiles", json={"name": "checkout login"})).json()
    _, other_key = await paying_tenant(four_services)
    async with httpx.AsyncClient(base_url=four_services.urls["sessions"], headers=bearer(other_key), timeout=60) as other:
        theirs = (await other.post("/v1/profiles", json={"name": "another tenant's profile"})).json()
    session = await create_session(api, isolation="context", profile={"id": busy["id"], "persist": True})
    base = four_services.urls["sessions"]
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path="/usr/bin/chromium", args=VIEWER_ARGS)
        try:
            page = await browser.new_page(viewport={"width": 1280, "height": 860})
            dialogs = []
            page.on("dialog", lambda d: (dialogs.append(d.message), asyncio.ensure_future(d.dismiss())))
            await page.goto(f"{base}/dashboard/")
            await page.fill("#api-key", api.headers["authorization"].removeprefix("Bearer "))
            await page.click("button[type=submit]")
            await page.wait_for_url(f"{base}/dashboard/usage")
            await page.click("a[data-nav=profiles]")
            rows = page.locator("#profiles-body tr")
            await expect(rows).to_have_count(2)
            await expect(rows.nth(0)).to_have_attribute("data-profile", busy["id"])  # newest first
            await expect(page.locator(f'[data-profile="{odd["id"]}"] td.name')).to_have_text(hostile)
            await expect(page.locator(f'[data-profile="{odd["id"]}"] td.size')).to_have_text("0 B")
            await expect(page.locator(f'[data-profile="{odd["id"]}"] td.used')).to_have_text("never")
            assert await page.locator("#profiles-table img").count() == 0
            assert await page.locator(f'[data-profile="{theirs["id"]}"]').count() == 0
            assert "another tenant" not in await page.locator("main").inner_text()

            # One a page: the pager walks to the older one and back.
            await page.goto(f"{base}/dashboard/profiles?page_size=1")
            await expect(page.locator(f'#profiles-body [data-profile="{busy["id"]}"]')).to_be_visible()
            await expect(page.locator("#profiles-prev")).to_be_disabled()
            await page.click("#profiles-next")
            await expect(page.locator(f'#profiles-body [data-profile="{odd["id"]}"]')).to_be_visible()
            await expect(page.locator("#profiles-next")).to_be_disabled()
            await page.click("#profiles-prev")
            await expect(page.locator(f'#profiles-body [data-profile="{busy["id"]}"]')).to_be_visible()

            # Deleting asks first; a profile a persisting session holds is refused with a message.
            await page.goto(f"{base}/dashboard/profiles")
            delete = page.locator(f'[data-delete="{busy["id"]}"]')
            await delete.click()
            await expect(delete).to_have_text("Confirm delete")
            await delete.click()
            await expect(page.locator("#flash")).to_contain_text("in use by a running session")
            await expect(page.locator("#flash")).to_contain_text("end that session")
            await expect(delete).to_have_text("Delete")
            assert (await api.get(f"/v1/profiles/{busy['id']}")).status_code == 200
            await page.screenshot(path=str(artifacts_dir / "dashboard-profiles.png"), full_page=True)

            await end_and_settle(api, session["id"])
            await page.goto(f"{base}/dashboard/profiles")
            await expect(page.locator(f'[data-profile="{busy["id"]}"] td.used')).to_contain_text(
                "session " + session["id"][:8])
            delete = page.locator(f'[data-delete="{busy["id"]}"]')
            await delete.click()
            await delete.click()
            await expect(page.locator(f'[data-profile="{busy["id"]}"]')).to_have_count(0)
            await expect(rows).to_have_count(1)
            assert (await api.get(f"/v1/profiles/{busy['id']}")).status_code == 404
            await page.click(f'[data-delete="{odd["id"]}"]')
            await page.click(f'[data-delete="{odd["id"]}"]')
            await expect(page.locator("#profiles-empty")).to_be_visible()
            await expect(rows).to_have_count(0)
            assert dialogs == []  # nothing the names carried ran
        finally:
            await browser.close()
    async with httpx.AsyncClient(base_url=four_services.urls["sessions"], headers=bearer(other_key), timeout=60) as other:
        assert (await other.get(f"/v1/profiles/{theirs['id']}")).status_code == 200
