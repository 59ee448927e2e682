"""`connect_over_cdp("ws://…/v1/connect?api_key=…")` against all four services (issue 17):
the one line creates a session from the real warm_pool (debited, listed), drives it, and
closing it ends it; a refused handshake is the create's HTTP answer; the key is in no log."""
import json

import httpx
import pytest
import websockets
from playwright.async_api import async_playwright

from tests.e2e.platform import bearer, paying_tenant, running_platform, scrape, value
from tests.helpers import eventually

pytestmark = pytest.mark.e2e
PAGE = "data:text/html,<title>one line</title><p id=p>connected</p>"


@pytest.fixture(scope="module")
def platform(module_db, module_mq, tmp_path_factory):
    with running_platform(module_db, module_mq, tmp_path_factory.mktemp("connect")) as running:
        yield running


async def test_one_line_connect_creates_debits_and_closing_ends_the_session(platform):
    _, key = await paying_tenant(platform)
    base = platform.urls["sessions"]
    ws_base = base.replace("http://", "ws://")
    async with httpx.AsyncClient(base_url=base, headers=bearer(key), timeout=30) as http:
        async with async_playwright() as pw:
            browser = await pw.chromium.connect_over_cdp(f"{ws_base}/v1/connect?api_key={key}&timeout_s=120")
            [session] = (await http.get("/v1/sessions")).json()["data"]
            assert session["status"] == "running" and session["isolation"] == "browser"
            assert (await http.get("/v1/usage")).json()["credits_used"] == 1
            context = browser.contexts[0]
            page = context.pages[0] if context.pages else await context.new_page()
            await page.goto(PAGE)
            assert await page.text_content("#p") == "connected"
            await browser.close()

        async def ended():
            s = (await http.get(f"/v1/sessions/{session['id']}")).json()
            return s if s["status"] == "completed" else None
        done = await eventually(ended, timeout=30, what="the session ended by closing the socket")
        assert done["end_reason"] == "client"
        assert (await http.get("/v1/usage")).json()["credits_used"] == 1

    for url, status, code in ((f"{ws_base}/v1/connect?api_key={key}x", 401, "unauthorized"),
                              (f"{ws_base}/v1/connect?api_key={key}&isolation=tab", 422, "invalid_request")):
        with pytest.raises(websockets.InvalidStatus) as refused:
            async with websockets.connect(url):
                pass
        assert refused.value.response.status_code == status
        assert json.loads(refused.value.response.body)["error"]["code"] == code

    for log in platform.logs.glob("*.log"):
        assert key not in log.read_text(errors="replace"), log.name
    assert "api_key=[redacted]" in (platform.logs / "sessions.log").read_text()


async def test_one_line_connect_in_context_mode_from_the_real_warm_pool(platform):
    _, key = await paying_tenant(platform)
    base = platform.urls["sessions"]
    async with httpx.AsyncClient(base_url=base, headers=bearer(key), timeout=30) as http:
        async with async_playwright() as pw:
            url = f"{base.replace('http://', 'ws://')}/v1/connect?api_key={key}&isolation=context"
            first = await pw.chromium.connect_over_cdp(url)
            second = await pw.chromium.connect_over_cdp(url)
            sessions = (await http.get("/v1/sessions")).json()["data"]
            assert [s["isolation"] for s in sessions] == ["context", "context"]
            assert len(first.contexts) == 1 and len(second.contexts) == 1
            page = await first.contexts[0].new_page()
            await page.goto(PAGE)
            assert await page.text_content("#p") == "connected"
            await first.contexts[0].add_cookies([{"name": "first", "value": "1", "url": "http://example.com/"}])
            assert await second.contexts[0].cookies() == []
            assert len(second.contexts[0].pages) <= 1  # its own first page at most, none of the first's
            await first.close()
            assert await (await second.contexts[0].new_page()).evaluate("6 * 7") == 42
            await second.close()

        async def ended():
            rows = (await http.get("/v1/sessions")).json()["data"]
            return rows if all(s["status"] == "completed" for s in rows) else None
        rows = await eventually(ended, timeout=30, what="both sessions ended by closing their sockets")
        assert {s["end_reason"] for s in rows} == {"client"}
        assert (await http.get("/v1/usage")).json()["credits_used"] == 2


async def test_a_tenants_next_context_session_starts_on_a_context_reserved_for_it(platform):
    """The first context session leaves one context leased ahead (CONTEXT_RESERVE=1); the next
    create takes it (with no lease round trip: tests/unit/test_sessions_reservations.py), and it is
    as fresh and as confined as any; the
    reservation is the tenant's alone, and one left unused is given back to warm_pool."""
    (_, key), (_, other_key) = await paying_tenant(platform), await paying_tenant(platform)
    sessions = platform.urls["sessions"]

    def reservations(event: str) -> float:
        return value(scrape(httpx, sessions), "sessions_context_reservations_total", event=event)

    async with httpx.AsyncClient(base_url=sessions, headers=bearer(key), timeout=30) as http:
        async with async_playwright() as pw:
            leased = reservations("leased")
            first = (await http.post("/v1/sessions", json={"isolation": "context"})).json()
            await eventually(lambda: reservations("leased") > leased, timeout=30, what="a context reserved")
            browser = await pw.chromium.connect_over_cdp(first["cdp_url"])
            await browser.contexts[0].add_cookies([{"name": "first", "value": "1", "url": "http://example.com/"}])

            taken = reservations("taken")
            second = (await http.post("/v1/sessions", json={"isolation": "context"})).json()
            assert second["status"] == "running" and reservations("taken") == taken + 1
            reused = await pw.chromium.connect_over_cdp(second["cdp_url"])
            assert len(reused.contexts) == 1 and await reused.contexts[0].cookies() == []
            page = reused.contexts[0].pages[0] if reused.contexts[0].pages else await reused.contexts[0].new_page()
            await page.goto(PAGE)
            assert await page.text_content("#p") == "connected"
            assert (await http.get("/v1/usage")).json()["credits_used"] == 2

            taken = reservations("taken")
            async with httpx.AsyncClient(base_url=sessions, headers=bearer(other_key), timeout=30) as other:
                assert (await other.post("/v1/sessions", json={"isolation": "context"})).status_code == 201
            assert reservations("taken") == taken  # another tenant's create never takes this one's

            released = reservations("released")
            await eventually(lambda: reservations("released") >= released + 2, timeout=30,
                             what="the unused reservations released after their deadline")
            await browser.close()
            await reused.close()
