"""The CDP gateway: Playwright through the relay, screenshots, and how relays end."""
import asyncio
from uuid import UUID

import pytest
import websockets
from playwright.async_api import async_playwright

from shared.messages import BrowserCrashed, utcnow
from tests.integration.sessions_support import publish

PAGE = "data:text/html,<title>hello relay</title><h1 id=h>browserfleet</h1>"


async def _session(platform, auth, **body) -> dict:
    r = await platform.http.post("/v1/sessions", json=body, headers=auth)
    assert r.status_code == 201, r.text
    return r.json()


async def _status(platform, auth, session_id) -> dict:
    return (await platform.http.get(f"/v1/sessions/{session_id}", headers=auth)).json()


async def test_playwright_drives_a_page_through_the_relay_and_screenshot(platform):
    _, auth = await platform.tenant()
    session = await _session(platform, auth, keep_alive=True)
    async with async_playwright() as pw:
        browser = await pw.chromium.connect_over_cdp(session["cdp_url"])
        context = browser.contexts[0] if browser.contexts else await browser.new_context()
        page = context.pages[0] if context.pages else await context.new_page()
        await page.goto(PAGE)
        assert await page.title() == "hello relay"
        assert await page.text_content("#h") == "browserfleet"

        shot = await platform.http.get(f"/v1/sessions/{session['id']}/screenshot", headers=auth)
        assert shot.status_code == 200 and shot.headers["content-type"] == "image/png"
        assert shot.content.startswith(b"\x89PNG\r\n\x1a\n") and len(shot.content) > 1000

        closed = asyncio.Event()
        browser.on("disconnected", lambda *_: closed.set())
        ended = await platform.http.post(f"/v1/sessions/{session['id']}/end", headers=auth)
        assert ended.json()["end_reason"] == "client"
        await asyncio.wait_for(closed.wait(), 10)
    assert (await _status(platform, auth, session["id"]))["status"] == "completed"


async def test_relay_closes_with_a_code_naming_the_end_reason(platform):
    _, auth = await platform.tenant()
    session = await _session(platform, auth)
    async with websockets.connect(session["cdp_url"], max_size=None) as ws:
        await ws.send('{"id": 1, "method": "Browser.getVersion"}')
        assert "Chrome" in (await asyncio.wait_for(ws.recv(), 10))
        await platform.http.post(f"/v1/sessions/{session['id']}/end", headers=auth)
        with pytest.raises(websockets.ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 10)
    assert ws.close_code == 4001 and "client" in ws.close_reason


async def test_bad_token_or_other_tenant_token_is_refused(platform):
    _, auth_a = await platform.tenant()
    _, auth_b = await platform.tenant()
    a = await _session(platform, auth_a)
    b = await _session(platform, auth_b)
    wrong = a["cdp_url"].split("?token=")[0] + "?token=" + b["cdp_url"].split("?token=")[1]
    for url in (wrong, a["cdp_url"].split("?")[0], a["cdp_url"] + "x"):
        with pytest.raises(websockets.InvalidStatus):
            async with websockets.connect(url):
                pass
    for s, auth in ((a, auth_a), (b, auth_b)):
        await platform.http.post(f"/v1/sessions/{s['id']}/end", headers=auth)
    with pytest.raises(websockets.InvalidStatus):  # an ended session does not reconnect
        async with websockets.connect(a["cdp_url"]):
            pass


async def test_disconnect_ends_the_session_after_the_grace_period(platform):
    _, auth = await platform.tenant()
    session = await _session(platform, auth)
    async with websockets.connect(session["cdp_url"]) as ws:
        await ws.send('{"id": 1, "method": "Browser.getVersion"}')
        await ws.recv()

    async def disconnected():
        s = await _status(platform, auth, session["id"])
        return s["status"] == "completed" and s["end_reason"] == "disconnected"
    await platform.wait_for(disconnected)


async def test_keep_alive_session_survives_disconnect_and_reconnects(platform):
    _, auth = await platform.tenant()
    session = await _session(platform, auth, keep_alive=True)
    control = await _session(platform, auth)  # not kept alive: its end shows the grace has run out
    async with async_playwright() as pw:
        first = await pw.chromium.connect_over_cdp(session["cdp_url"])
        page = first.contexts[0].pages[0] if first.contexts and first.contexts[0].pages else \
            await (await first.new_context()).new_page()
        await page.goto(PAGE)
        await first.close()
        async with websockets.connect(control["cdp_url"]) as ws:  # disconnected after the kept-alive one
            await ws.send('{"id": 1, "method": "Browser.getVersion"}')
            await ws.recv()

        async def control_ended():
            s = await _status(platform, auth, control["id"])
            return s["status"] == "completed" and s["end_reason"] == "disconnected"
        await platform.wait_for(control_ended)
        assert (await _status(platform, auth, session["id"]))["status"] == "running"

        second = await pw.chromium.connect_over_cdp(session["cdp_url"])
        titles = [await p.title() for c in second.contexts for p in c.pages]
        assert "hello relay" in titles
        await second.close()
    await platform.http.post(f"/v1/sessions/{session['id']}/end", headers=auth)


async def test_max_duration_and_idle_timeout_are_enforced(platform):
    platform.lease.mode = "fake"
    try:
        _, auth = await platform.tenant(max_session_seconds=1)  # the plan's limit beats the request's
        short = await _session(platform, auth, timeout_s=60, keep_alive=True)
        _, idle_auth = await platform.tenant()
        idle = await _session(platform, idle_auth, idle_timeout_s=1, keep_alive=True)
    finally:
        platform.lease.mode = "chromium"

    async def ended(auth, session_id, reason):
        s = await _status(platform, auth, session_id)
        return s["status"] == "completed" and s["end_reason"] == reason
    await platform.wait_for(lambda: ended(auth, short["id"], "timeout"))
    await platform.wait_for(lambda: ended(idle_auth, idle["id"], "idle"))


async def test_browser_crash_ends_the_session_and_its_relay(platform):
    tenant_id, auth = await platform.tenant()
    session = await _session(platform, auth)
    browser = platform.lease.browsers[UUID(session["id"])]
    async with websockets.connect(session["cdp_url"]) as ws:
        await ws.send('{"id": 1, "method": "Browser.getVersion"}')
        await asyncio.wait_for(ws.recv(), 10)
        await publish(platform.mq_url, BrowserCrashed(browser_id=browser.id, tenant_id=tenant_id,
                                                      session_id=session["id"], detected_at=utcnow()))
        with pytest.raises(websockets.ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 15)
    assert ws.close_code == 4005 and "browser_crashed" in ws.close_reason
    s = await _status(platform, auth, session["id"])
    assert s["status"] == "completed" and s["end_reason"] == "browser_crashed"
