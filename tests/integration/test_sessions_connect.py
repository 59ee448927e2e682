"""/v1/connect (the one-line connect) and context sessions through the confining relay (issue 17).

The sessions service runs as a process; warm_pool's lease RPC is the stand-in of
tests/integration/sessions_support.py, which for a context lease creates the BrowserContext itself in one shared
Chromium and answers its id, as warm_pool does."""
import asyncio
import json
import signal
from urllib.parse import quote
from uuid import UUID

import httpx
import pytest
import websockets
from playwright.async_api import async_playwright

from shared.messages import BrowserCrashed, utcnow
from tests.integration.sessions_support import ADMIN, publish, start_sessions

PAGE = "data:text/html,<title>hello connect</title><h1 id=h>browserfleet</h1>"


def connect_url(platform, key: str | None = None, **options) -> str:
    params = {**({"api_key": key} if key else {}), **options}
    query = "&".join(f"{k}={quote(str(v))}" for k, v in params.items())
    return platform.url.replace("http://", "ws://") + "/v1/connect" + (f"?{query}" if query else "")


def key_of(auth: dict) -> str:
    return auth["Authorization"].removeprefix("Bearer ")


async def sessions_of(platform, auth, **params) -> list[dict]:
    r = await platform.http.get("/v1/sessions", params=params, headers=auth)
    assert r.status_code == 200, r.text
    return r.json()["data"]


async def credits_used(platform, auth) -> int:
    return (await platform.http.get("/v1/usage", headers=auth)).json()["credits_used"]


async def completed(platform, auth, session_id: str) -> dict:
    async def check():
        s = (await platform.http.get(f"/v1/sessions/{session_id}", headers=auth)).json()
        return s if s["status"] == "completed" else None
    return await platform.wait_for(check)


async def refusal(url: str, headers: dict | None = None):
    with pytest.raises(websockets.InvalidStatus) as refused:
        async with websockets.connect(url, additional_headers=headers or {}):
            pass
    response = refused.value.response
    return response.status_code, json.loads(response.body), response.headers


async def test_connect_creates_a_session_relays_to_it_and_closing_ends_it(platform):
    _, auth = await platform.tenant()
    async with async_playwright() as pw:
        browser = await pw.chromium.connect_over_cdp(connect_url(platform, key_of(auth), timeout_s=120))
        [session] = await sessions_of(platform, auth)
        assert session["status"] == "running" and session["isolation"] == "browser"
        assert session["timeout_s"] == 120 and session["keep_alive"] is False
        assert await credits_used(platform, auth) == 1
        assert platform.lease.requests[-1].isolation == "browser"
        context = browser.contexts[0]
        page = context.pages[0] if context.pages else await context.new_page()
        await page.goto(PAGE)
        assert await page.title() == "hello connect"
        await browser.close()
    done = await completed(platform, auth, session["id"])
    assert done["end_reason"] == "client" and done["cost"] is not None
    assert await credits_used(platform, auth) == 1


async def test_connect_takes_the_key_as_a_bearer_header_and_honours_an_idempotency_key(platform):
    _, auth = await platform.tenant()
    url = connect_url(platform, isolation="browser")
    headers = {**auth, "Idempotency-Key": "connect-once"}
    async with websockets.connect(url, additional_headers=headers, max_size=None) as ws:
        await ws.send('{"id": 1, "method": "Browser.getVersion"}')
        assert "Chrome" in await asyncio.wait_for(ws.recv(), 10)
        [session] = await sessions_of(platform, auth)
    done = await completed(platform, auth, session["id"])
    assert done["end_reason"] == "client"
    # The same key names the same (ended) session: no second debit, and no relay to it.
    status, body, _ = await refusal(url, headers)
    assert status == 409 and body["error"]["code"] == "session_ended"
    assert await credits_used(platform, auth) == 1 and len(await sessions_of(platform, auth)) == 1


async def test_each_refused_connect_answers_the_creates_status_and_json_error(platform):
    status, body, _ = await refusal(connect_url(platform, "bf_live_not-a-key"))
    assert (status, body["error"]["code"]) == (401, "unauthorized")
    status, body, _ = await refusal(connect_url(platform))
    assert (status, body["error"]["code"]) == (401, "unauthorized")

    _, auth = await platform.tenant(max_concurrent=1)
    key = key_of(auth)
    for options in ({"isolation": "tab"}, {"timeout_s": "soon"}, {"keep_alive": "true"}, {"profile": "p1"}):
        status, body, _ = await refusal(connect_url(platform, key, **options))
        assert (status, body["error"]["code"]) == (422, "invalid_request"), options
    assert await sessions_of(platform, auth) == []

    running = (await platform.http.post("/v1/sessions", json={}, headers=auth)).json()
    status, body, headers = await refusal(connect_url(platform, key))
    assert (status, body["error"]["code"]) == (429, "concurrency_limit") and int(headers["Retry-After"]) > 0
    await platform.http.post(f"/v1/sessions/{running['id']}/end", headers=auth)

    platform.lease.mode = "no_capacity"
    try:
        status, body, _ = await refusal(connect_url(platform, key))
    finally:
        platform.lease.mode = "chromium"
    assert (status, body["error"]["code"]) == (503, "no_capacity")
    assert await credits_used(platform, auth) == 1  # the failed create was refunded

    tenant_id, auth = await platform.tenant(credits=1)
    first = (await platform.http.post("/v1/sessions", json={}, headers=auth)).json()
    await platform.http.post(f"/v1/sessions/{first['id']}/end", headers=auth)
    status, body, _ = await refusal(connect_url(platform, key_of(auth)))
    assert (status, body["error"]["code"]) == (402, "insufficient_credits")

    await platform.change_subscription(tenant_id, "canceled")

    async def canceled():
        r = await platform.http.get(f"/v1/admin/tenants/{tenant_id}", headers=ADMIN)
        return r.json()["status"] == "canceled"
    await platform.wait_for(canceled)
    status, body, _ = await refusal(connect_url(platform, key_of(auth)))
    assert (status, body["error"]["code"]) == (403, "subscription_inactive")


async def test_the_api_key_is_never_logged(platform):
    _, auth = await platform.tenant()
    key = key_of(auth)
    async with websockets.connect(connect_url(platform, key)) as ws:
        await ws.send('{"id": 1, "method": "Browser.getVersion"}')
        await asyncio.wait_for(ws.recv(), 10)
    # Spelled as the query parser still reads it, refused, and a wrong key that looks real.
    base = platform.url.replace("http://", "ws://") + "/v1/connect"
    for url in (f"{base}?api%5Fkey={key}&isolation=tab", f"{base}?isolation=browser&api_key={key}x"):
        await refusal(url)
    await platform.wait_for(lambda: _logged(platform, "/v1/connect?api%5Fkey=[redacted]"))
    log = platform.services[0].log_path.read_text()
    assert "/v1/connect?api_key=[redacted]" in log  # the handshakes are logged, without the key
    assert key not in log and key[8:] not in log


async def _logged(platform, text: str) -> bool:
    return text in platform.services[0].log_path.read_text()


async def test_failed_connect_authentications_count_in_the_per_address_limit(sessions_infra, platform, artifacts_dir):
    db_url, mq_url = sessions_infra
    _, auth = await platform.tenant()
    service = start_sessions(db_url, mq_url, artifacts_dir, name="sessions-connect-limit", auth_failures_max=3)
    try:
        url = service.url.replace("http://", "ws://") + "/v1/connect?api_key="
        for guess in range(3):
            status, _, _ = await refusal(f"{url}bf_live_guess{guess}")
            assert status == 401
        status, body, headers = await refusal(f"{url}bf_live_guess9")
        assert (status, body["error"]["code"]) == (429, "rate_limited") and int(headers["Retry-After"]) > 0
        # The same address, over HTTP: throttled too (one limit per address).
        async with httpx.AsyncClient(base_url=service.url) as http:
            r = await http.get("/v1/usage", headers={"Authorization": "Bearer bf_live_guess10"})
        assert r.status_code == 429
    finally:
        service.stop(signal.SIGTERM)


# --- context sessions ------------------------------------------------------------------------


async def _context_session(platform, auth, **body) -> dict:
    r = await platform.http.post("/v1/sessions", json={"isolation": "context", **body}, headers=auth)
    assert r.status_code == 201, r.text
    return r.json()


async def test_a_context_session_is_confined_to_its_context_and_browser_close_ends_it_only(platform):
    _, auth = await platform.tenant()
    a = await _context_session(platform, auth)
    b = await _context_session(platform, auth)
    assert a["isolation"] == b["isolation"] == "context"
    assert [r.isolation for r in platform.lease.requests[-2:]] == ["context", "context"]
    assert {s["isolation"] for s in await sessions_of(platform, auth)} == {"context"}
    shared, cdp = await platform.lease.context_browser()
    async with async_playwright() as pw:
        browser_a = await pw.chromium.connect_over_cdp(a["cdp_url"])
        browser_b = await pw.chromium.connect_over_cdp(b["cdp_url"])
        assert len(browser_a.contexts) == 1 and len(browser_b.contexts) == 1
        assert len(browser_a.contexts[0].pages) == 1  # warm_pool's first page, and nothing of B's
        page = await browser_a.contexts[0].new_page()
        await page.goto(PAGE)
        assert await page.title() == "hello connect"
        target = next(t for t in (await cdp.call("Target.getTargets"))["targetInfos"] if t["url"] == PAGE)
        assert target["browserContextId"] == platform.lease.contexts[UUID(a["id"])]
        await browser_a.contexts[0].add_cookies([{"name": "a_only", "value": "1", "url": "http://example.com/"}])
        assert await browser_b.contexts[0].cookies() == []

        # Browser.close from A (raw CDP on A's URL) ends A, and neither B nor the browser.
        async with websockets.connect(a["cdp_url"], max_size=None) as raw:
            await raw.send('{"id": 1, "method": "Browser.close"}')
            assert json.loads(await asyncio.wait_for(raw.recv(), 10)) == {"id": 1, "result": {}}
            with pytest.raises(websockets.ConnectionClosed):
                while True:
                    await asyncio.wait_for(raw.recv(), 10)
        assert raw.close_code == 4001
        done = await completed(platform, auth, a["id"])
        assert done["end_reason"] == "client"
        assert (await platform.http.get(f"/v1/sessions/{b['id']}", headers=auth)).json()["status"] == "running"
        page_b = await browser_b.contexts[0].new_page()
        assert await page_b.evaluate("6 * 7") == 42
        assert (await cdp.call("Browser.getVersion"))["product"]
        assert shared.proc.returncode is None
        await browser_b.close()
        await browser_a.close()
    await platform.http.post(f"/v1/sessions/{b['id']}/end", headers=auth)


async def test_a_keep_alive_context_session_reconnects_to_its_pages(platform):
    _, auth = await platform.tenant()
    session = await _context_session(platform, auth, keep_alive=True)
    async with async_playwright() as pw:
        browser = await pw.chromium.connect_over_cdp(session["cdp_url"])
        page = await browser.contexts[0].new_page()
        await page.goto(PAGE)
        await browser.close()  # disconnects; the session stays
        assert (await platform.http.get(f"/v1/sessions/{session['id']}", headers=auth)).json()["status"] == "running"
        again = await pw.chromium.connect_over_cdp(session["cdp_url"])
        assert len(again.contexts) == 1
        titles = [await p.title() for p in again.contexts[0].pages]
        assert "hello connect" in titles
        await again.close()
    # A context the client creates goes with its relay; the session's own stays.
    _, cdp = await platform.lease.context_browser()
    async with websockets.connect(session["cdp_url"], max_size=None) as raw:
        await raw.send('{"id": 1, "method": "Target.createBrowserContext"}')
        created = json.loads(await asyncio.wait_for(raw.recv(), 10))["result"]["browserContextId"]
        assert created in (await cdp.call("Target.getBrowserContexts"))["browserContextIds"]

    async def disposed():
        return created not in (await cdp.call("Target.getBrowserContexts"))["browserContextIds"]
    await platform.wait_for(disposed)
    assert platform.lease.contexts[UUID(session["id"])] in (await cdp.call("Target.getBrowserContexts"))[
        "browserContextIds"]
    await platform.http.post(f"/v1/sessions/{session['id']}/end", headers=auth)


async def test_connect_in_context_mode(platform):
    _, auth = await platform.tenant()
    async with async_playwright() as pw:
        browser = await pw.chromium.connect_over_cdp(connect_url(platform, key_of(auth), isolation="context"))
        [session] = await sessions_of(platform, auth)
        assert session["isolation"] == "context" and platform.lease.requests[-1].isolation == "context"
        assert len(browser.contexts) == 1
        page = await browser.contexts[0].new_page()
        await page.goto(PAGE)
        assert await page.text_content("#h") == "browserfleet"
        await browser.close()
    done = await completed(platform, auth, session["id"])
    assert done["end_reason"] == "client" and await credits_used(platform, auth) == 1


async def test_a_context_lease_without_a_context_is_refused_and_refunded(platform):
    _, auth = await platform.tenant()
    platform.lease.mode = "no_context"  # a warm_pool that knows no context leases: no context_id
    try:
        r = await platform.http.post("/v1/sessions", json={"isolation": "context"}, headers=auth)
    finally:
        platform.lease.mode = "chromium"
    assert r.status_code == 503 and r.json()["error"]["code"] == "no_capacity"
    assert await credits_used(platform, auth) == 0
    r = await platform.http.post("/v1/sessions", json={"isolation": "tab"}, headers=auth)
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_request"


async def test_a_screenshot_of_a_context_session_shows_its_own_pages_only(platform):
    _, auth = await platform.tenant()
    other = await _context_session(platform, auth)  # with its first page
    platform.lease.first_page = False
    try:
        empty = await _context_session(platform, auth)
    finally:
        platform.lease.first_page = True
    r = await platform.http.get(f"/v1/sessions/{empty['id']}/screenshot", headers=auth)
    assert r.status_code == 409 and r.json()["error"]["code"] == "no_page"
    assert (await platform.http.get(f"/v1/sessions/{other['id']}/screenshot", headers=auth)).status_code == 200
    for s in (other, empty):
        await platform.http.post(f"/v1/sessions/{s['id']}/end", headers=auth)


async def test_a_crash_of_a_shared_browser_ends_every_session_it_hosted(platform):
    tenant_id, auth = await platform.tenant()
    sessions = [await _context_session(platform, auth) for _ in range(3)]
    shared, _ = await platform.lease.context_browser()
    await publish(platform.mq_url, BrowserCrashed(browser_id=shared.id, tenant_id=tenant_id, detected_at=utcnow()))
    for s in sessions:
        assert (await completed(platform, auth, s["id"]))["end_reason"] == "browser_crashed"
