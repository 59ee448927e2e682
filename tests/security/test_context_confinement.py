"""Two context sessions in one real Chromium, each behind the confining relay (issue 17).

Session A speaks raw CDP and tries every known hole on session B's ids (taken from B's own
connection); each attempt fails while B keeps working. Playwright through the relay sees the
session's context as its browser's only, default, context.
"""
import asyncio
import json
from pathlib import Path

from playwright.async_api import async_playwright

from tests.security.confinement import Cdp, Relay, page_and_cookie


async def test_a_session_cannot_see_or_touch_another_sessions_targets_contexts_or_cookies(browser, two_contexts):
    cdp, contexts = two_contexts
    async with Relay(browser.ws_url, contexts) as relay:
        a, b = await Cdp.connect(relay.url("a")), await Cdp.connect(relay.url("b"))
        b_target, b_session = await page_and_cookie(b)
        b_targets = {t["targetId"] for t in (await b.ok("Target.getTargets"))["targetInfos"]}
        assert b_target in b_targets

        # A's view of the browser holds only its own context's targets, and no context at all.
        a_targets = (await a.ok("Target.getTargets"))["targetInfos"]
        assert a_targets and all(t["browserContextId"] == contexts["a"] for t in a_targets)
        assert not b_targets & {t["targetId"] for t in a_targets}
        assert (await a.ok("Target.getBrowserContexts"))["browserContextIds"] == []
        # Every handle of B's is refused.
        for method, params in [("Target.getTargetInfo", {"targetId": b_target}),
                               ("Target.attachToTarget", {"targetId": b_target, "flatten": True}),
                               ("Target.activateTarget", {"targetId": b_target}),
                               ("Target.closeTarget", {"targetId": b_target}),
                               ("Target.disposeBrowserContext", {"browserContextId": contexts["b"]}),
                               ("Target.disposeBrowserContext", {"browserContextId": contexts["a"]}),
                               ("Target.createTarget", {"url": "about:blank", "browserContextId": contexts["b"]}),
                               ("Storage.getCookies", {"browserContextId": contexts["b"]}),
                               ("Storage.clearCookies", {"browserContextId": contexts["b"]}),
                               ("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": "/tmp",
                                                                "browserContextId": contexts["b"]}),
                               ("Browser.grantPermissions", {"permissions": ["geolocation"],
                                                             "browserContextId": contexts["b"]}),
                               ("Browser.resetPermissions", {"browserContextId": contexts["b"]}),
                               ("Browser.crash", {}), ("Browser.crashGpuProcess", {}),
                               ("Target.exposeDevToolsProtocol", {"targetId": b_target}),
                               ("Target.sendMessageToTarget", {"message": "{}", "sessionId": b_session}),
                               ("Tracing.start", {}), ("SystemInfo.getProcessInfo", {}),
                               ("Browser.getBrowserCommandLine", {})]:
            await a.refused(method, params)
        await a.refused("Runtime.evaluate", {"expression": "1"}, session=b_session)
        # Unscoped calls mean A's own context, never the browser's default one.
        assert (await a.ok("Storage.getCookies"))["cookies"] == []
        created = (await a.ok("Target.createTarget", {"url": "about:blank"}))["targetId"]
        everything = (await cdp.ok("Target.getTargets"))["targetInfos"]
        assert next(t for t in everything if t["targetId"] == created)["browserContextId"] == contexts["a"]
        # B is untouched: its page and its cookie.
        assert b_target in {t["targetId"] for t in everything}
        cookies = (await b.ok("Storage.getCookies"))["cookies"]
        assert [c["name"] for c in cookies] == ["b_secret"]
        assert (await b.ok("Runtime.evaluate", {"expression": "6*7"}, session=b_session))["result"]["value"] == 42
        await a.close()
        await b.close()


async def test_auto_attach_and_discovery_show_only_the_sessions_own_targets(browser, two_contexts):
    cdp, contexts = two_contexts
    async with Relay(browser.ws_url, contexts) as relay:
        a, b = await Cdp.connect(relay.url("a")), await Cdp.connect(relay.url("b"))
        await a.ok("Target.setDiscoverTargets", {"discover": True})
        await a.ok("Target.setAutoAttach", {"autoAttach": True, "waitForDebuggerOnStart": True, "flatten": True})
        await a.refused("Target.setAutoAttach", {"autoAttach": True, "waitForDebuggerOnStart": False,
                                                 "flatten": False})
        # B opens a page while A auto-attaches with waitForDebuggerOnStart: B's page must not
        # wait for A, and A must hear nothing of it.
        b_target = (await b.ok("Target.createTarget", {"url": "about:blank"}))["targetId"]
        b_session = (await b.ok("Target.attachToTarget", {"targetId": b_target, "flatten": True}))["sessionId"]
        await b.ok("Runtime.runIfWaitingForDebugger", session=b_session)
        assert (await b.ok("Runtime.evaluate", {"expression": "1+1"}, session=b_session))["result"]["value"] == 2
        a_target = (await a.ok("Target.createTarget", {"url": "about:blank"}))["targetId"]
        await asyncio.sleep(0)  # events already sent are in; the assertion below waits on A's own

        async def a_saw_its_own():
            while not any(e.get("method") == "Target.attachedToTarget"
                          and e["params"]["targetInfo"]["targetId"] == a_target for e in a.events):
                await asyncio.sleep(0.05)
        await asyncio.wait_for(a_saw_its_own(), 10)
        about = json.dumps(a.events)
        assert b_target not in about and b_session not in about and contexts["b"] not in about
        for event in a.events:
            info = event.get("params", {}).get("targetInfo")
            if info:
                assert info["browserContextId"] == contexts["a"], event
        await a.close()
        await b.close()


async def test_browser_close_ends_this_session_only(browser, two_contexts):
    cdp, contexts = two_contexts
    async with Relay(browser.ws_url, contexts) as relay:
        a, b = await Cdp.connect(relay.url("a")), await Cdp.connect(relay.url("b"))
        assert (await a.call("Browser.close")).get("result") == {}
        await asyncio.wait_for(a.reader, 10)  # the relay closed A's connection
        assert relay.ended == {"a"}
        assert "product" in await b.ok("Browser.getVersion")  # the browser goes on, and so does B
        assert (await cdp.ok("Browser.getVersion"))["product"]
        await b.close()


async def test_playwright_sees_the_session_context_as_its_default_and_only_context(browser, two_contexts):
    cdp, contexts = two_contexts
    def pages(infos):
        return sorted(t["targetId"] for t in infos if t["type"] == "page")
    before = (await cdp.ok("Target.getTargets"))["targetInfos"]
    async with Relay(browser.ws_url, contexts) as relay, async_playwright() as pw:
        a = await pw.chromium.connect_over_cdp(relay.url("a"))
        b = await pw.chromium.connect_over_cdp(relay.url("b"))
        assert len(a.contexts) == 1 and len(b.contexts) == 1
        page_a = await a.contexts[0].new_page()
        await a.contexts[0].add_cookies([{"name": "a_only", "value": "1", "url": "http://example.com/"}])
        assert [c["name"] for c in await a.contexts[0].cookies()] == ["a_only"]
        assert await b.contexts[0].cookies() == []
        assert await page_a.evaluate("1 + 2") == 3
        # The page opened in A's session context, not the browser's default one.
        infos = (await cdp.ok("Target.getTargets"))["targetInfos"]
        new_pages = set(pages(infos)) - set(pages(before))
        assert [t["browserContextId"] for t in infos if t["targetId"] in new_pages] == [contexts["a"]]
        # A context the client creates is its own, and goes with it.
        extra = await a.new_context()
        assert await (await extra.new_page()).evaluate("'x'") == "x"
        contexts_before = set((await cdp.ok("Target.getBrowserContexts"))["browserContextIds"])
        assert len(contexts_before) == 3
        await a.close()

        async def disposed():
            while len((await cdp.ok("Target.getBrowserContexts"))["browserContextIds"]) != 2:
                await asyncio.sleep(0.05)
        await asyncio.wait_for(disposed(), 10)
        assert set((await cdp.ok("Target.getBrowserContexts"))["browserContextIds"]) == set(contexts.values())
        assert await (await b.contexts[0].new_page()).evaluate("40 + 2") == 42
        await b.close()


JS = Path(__file__).resolve().parents[1] / "js"


async def puppeteer(url: str, cookie: str) -> dict:
    proc = await asyncio.create_subprocess_exec("node", str(JS / "puppeteer_probe.mjs"), url, cookie,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()[-2000:]
    return json.loads(out)


async def test_puppeteer_sees_the_session_context_as_its_default_context(browser, two_contexts):
    cdp, contexts = two_contexts
    async with Relay(browser.ws_url, contexts) as relay:
        a = await puppeteer(relay.url("a"), "a_cookie")
        b = await puppeteer(relay.url("b"), "b_cookie")
    # One context (the default, which is the session's), its own first page only, its own cookies.
    assert a == {"contexts": 1, "pagesBefore": 1, "pagesAfter": 2, "sum": 42, "cookies": ["a_cookie"], "targets": 2}
    assert b["cookies"] == ["b_cookie"] and b["pagesBefore"] == 1 and b["contexts"] == 1


async def test_a_page_listed_by_get_targets_can_be_attached_and_other_sessions_still_not(browser, two_contexts):
    """A client that connects again (keep-alive) or speaks raw CDP finds the session's existing
    pages with Target.getTargets and attaches to them; another session's pages stay refused."""
    cdp, contexts = two_contexts
    async with Relay(browser.ws_url, contexts) as relay:
        b = await Cdp.connect(relay.url("b"))
        b_pages = [t["targetId"] for t in (await b.ok("Target.getTargets"))["targetInfos"] if t["type"] == "page"]
        a = await Cdp.connect(relay.url("a"))
        pages = [t for t in (await a.ok("Target.getTargets"))["targetInfos"] if t["type"] == "page"]
        assert len(pages) == 1 and pages[0]["browserContextId"] == contexts["a"]  # warm_pool's first page
        attached = await a.ok("Target.attachToTarget", {"targetId": pages[0]["targetId"], "flatten": True})
        session = attached["sessionId"]
        assert (await a.ok("Runtime.evaluate", {"expression": "20 + 22"}, session=session))["result"]["value"] == 42
        assert (await a.ok("Target.getTargetInfo", {"targetId": pages[0]["targetId"]}))["targetInfo"]["attached"]
        for target in b_pages:
            await a.refused("Target.attachToTarget", {"targetId": target, "flatten": True})
        await a.close()
        await b.close()


async def test_a_browser_level_cdp_session_is_confined_like_the_connection_itself(browser, two_contexts):
    """`Target.attachToBrowserTarget` (Playwright's `new_cdp_session`, `new_browser_cdp_session`)
    gives a session on which everything is judged as on the connection itself: B's ids are still
    refused, unscoped calls still mean A's context, and only A's pages can be attached from it."""
    cdp, contexts = two_contexts
    async with Relay(browser.ws_url, contexts) as relay:
        a, b = await Cdp.connect(relay.url("a")), await Cdp.connect(relay.url("b"))
        b_target, b_session = await page_and_cookie(b)
        alias = (await a.ok("Target.attachToBrowserTarget"))["sessionId"]
        a_targets = (await a.ok("Target.getTargets", session=alias))["targetInfos"]
        assert a_targets and all(t["browserContextId"] == contexts["a"] for t in a_targets)
        for method, params in [("Target.attachToTarget", {"targetId": b_target, "flatten": True}),
                               ("Target.getTargetInfo", {"targetId": b_target}),
                               ("Target.closeTarget", {"targetId": b_target}),
                               ("Storage.getCookies", {"browserContextId": contexts["b"]}),
                               ("Target.disposeBrowserContext", {"browserContextId": contexts["b"]}),
                               ("Target.setAutoAttach", {"autoAttach": True, "waitForDebuggerOnStart": False,
                                                         "flatten": True}),
                               ("Target.setDiscoverTargets", {"discover": True}),
                               ("Target.exposeDevToolsProtocol", {"targetId": b_target}),
                               ("Browser.crash", {}), ("Tracing.start", {}), ("SystemInfo.getProcessInfo", {})]:
            await a.refused(method, params, session=alias)
        await a.refused("Runtime.evaluate", {"expression": "1"}, session=b_session)
        forged = (await a.call("Browser.getVersion", session="0" * 32))["error"]["message"]
        assert "not found" in forged
        assert (await a.ok("Storage.getCookies", session=alias))["cookies"] == []  # A's context, not B's
        created = (await a.ok("Target.createTarget", {"url": "about:blank"}, session=alias))["targetId"]
        everything = (await cdp.ok("Target.getTargets"))["targetInfos"]
        assert next(t for t in everything if t["targetId"] == created)["browserContextId"] == contexts["a"]
        # A's own page, attached from the browser session: its events arrive on that session.
        page = (await a.ok("Target.attachToTarget", {"targetId": created, "flatten": True}, session=alias))["sessionId"]
        assert (await a.ok("Runtime.evaluate", {"expression": "6*7"}, session=page))["result"]["value"] == 42
        attached = [e for e in a.events if e.get("method") == "Target.attachedToTarget"
                    and e["params"]["sessionId"] == page]
        assert [e.get("sessionId") for e in attached] == [alias]
        await a.ok("Target.detachFromTarget", {"sessionId": page}, session=alias)
        await a.refused("Runtime.evaluate", {"expression": "1"}, session=page)
        await a.ok("Target.detachFromTarget", {"sessionId": alias})
        assert "error" in await a.call("Browser.getVersion", session=alias)
        # B is untouched.
        assert [c["name"] for c in (await b.ok("Storage.getCookies"))["cookies"]] == ["b_secret"]
        assert (await b.ok("Runtime.evaluate", {"expression": "40+2"}, session=b_session))["result"]["value"] == 42
        await a.close()
        await b.close()


async def test_playwright_cdp_sessions_work_in_a_context_session(browser, two_contexts):
    cdp, contexts = two_contexts
    async with Relay(browser.ws_url, contexts) as relay, async_playwright() as pw:
        a = await pw.chromium.connect_over_cdp(relay.url("a"))
        page = await a.contexts[0].new_page()
        session = await a.contexts[0].new_cdp_session(page)
        answer = await session.send("Runtime.evaluate", {"expression": "6*7", "returnByValue": True})
        assert answer["result"]["value"] == 42
        await session.detach()
        browser_session = await a.new_browser_cdp_session()
        infos = (await browser_session.send("Target.getTargets"))["targetInfos"]
        assert infos and all(t["browserContextId"] == contexts["a"] for t in infos)
        assert await page.evaluate("1 + 1") == 2  # Playwright's own connection goes on
        await a.close()
