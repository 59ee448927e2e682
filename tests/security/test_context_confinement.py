"""Two context sessions in one real Chromium, each behind the confining relay (issue 17).

Session A speaks raw CDP and tries every known hole on session B's ids (taken from B's own
connection); each attempt fails while B keeps working. Playwright through the relay sees the
session's context as its browser's only, default, context.
"""
import asyncio
import contextlib
import itertools
import json
from pathlib import Path

import pytest
import websockets
from playwright.async_api import async_playwright

from services.sessions import confine
from tests.integration.test_sessions_support import Chromium


class Cdp:
    """A raw CDP client: commands by id, events kept."""

    def __init__(self, ws):
        self.ws, self.ids, self.waiting, self.events = ws, itertools.count(1), {}, []
        self.reader = asyncio.create_task(self._read())

    @classmethod
    async def connect(cls, url: str) -> "Cdp":
        return cls(await websockets.connect(url, max_size=None))

    async def _read(self):
        with contextlib.suppress(websockets.ConnectionClosed):
            async for raw in self.ws:
                msg = json.loads(raw)
                if "id" in msg and msg["id"] in self.waiting:
                    self.waiting.pop(msg["id"]).set_result(msg)
                else:
                    self.events.append(msg)

    async def call(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        msg_id = next(self.ids)
        future = asyncio.get_running_loop().create_future()
        self.waiting[msg_id] = future
        msg = {"id": msg_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        await self.ws.send(json.dumps(msg))
        return await asyncio.wait_for(future, 15)

    async def ok(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        answer = await self.call(method, params, session)
        assert "result" in answer, (method, answer)
        return answer["result"]

    async def refused(self, method: str, params: dict | None = None, session: str | None = None) -> str:
        answer = await self.call(method, params, session)
        assert "error" in answer, (method, params, answer)
        return answer["error"]["message"]

    async def close(self):
        await self.ws.close()
        self.reader.cancel()


class Relay:
    """The confining relay on loopback, one context session per path (/a, /b)."""

    def __init__(self, browser_url: str, contexts: dict[str, str]):
        self.browser_url, self.contexts, self.ended = browser_url, contexts, set()

    async def __aenter__(self):
        self.server = await websockets.serve(self._serve, "127.0.0.1", 0, max_size=None)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc):
        self.server.close()
        await self.server.wait_closed()

    def url(self, name: str) -> str:
        return f"ws://127.0.0.1:{self.port}/{name}"

    async def _serve(self, client):
        name = client.request.path.strip("/")
        confinement = confine.Confinement(context_id=self.contexts[name], downloads_path=f"/tmp/dl-{name}")
        async with websockets.connect(self.browser_url, max_size=None) as upstream:
            tasks = [asyncio.create_task(confine.client_to_browser(client, client.send, upstream, confinement)),
                     asyncio.create_task(confine.browser_to_client(upstream, client.send, confinement))]
            done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in pending:
                task.cancel()
            if any(t.result() == "browser_close" for t in done if not t.cancelled() and not t.exception()):
                self.ended.add(name)
            for frame in confinement.closing():
                await upstream.send(frame)
        await client.close()


@pytest.fixture
async def browser():
    chromium = await Chromium.launch()
    yield chromium
    await chromium.kill()


@pytest.fixture
async def platform(browser):
    """warm_pool's own connection: two sessions' contexts, each with a first page."""
    cdp = await Cdp.connect(browser.ws_url)
    contexts = {}
    for name in ("a", "b"):
        contexts[name] = (await cdp.ok("Target.createBrowserContext"))["browserContextId"]
        await cdp.ok("Target.createTarget", {"url": "about:blank", "browserContextId": contexts[name]})
    yield cdp, contexts
    await cdp.close()


async def test_a_session_cannot_see_or_touch_another_sessions_targets_contexts_or_cookies(browser, platform):
    cdp, contexts = platform
    async with Relay(browser.ws_url, contexts) as relay:
        a, b = await Cdp.connect(relay.url("a")), await Cdp.connect(relay.url("b"))
        # B, as any client would: a page of its own, attached, and a cookie.
        b_target = (await b.ok("Target.createTarget", {"url": "about:blank"}))["targetId"]
        b_session = (await b.ok("Target.attachToTarget", {"targetId": b_target, "flatten": True}))["sessionId"]
        await b.ok("Storage.setCookies", {"cookies": [{"name": "b_secret", "value": "1", "domain": "example.com",
                                                       "path": "/"}]})
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
                               ("Target.attachToBrowserTarget", {}),
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


async def test_auto_attach_and_discovery_show_only_the_sessions_own_targets(browser, platform):
    cdp, contexts = platform
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


async def test_browser_close_ends_this_session_only(browser, platform):
    cdp, contexts = platform
    async with Relay(browser.ws_url, contexts) as relay:
        a, b = await Cdp.connect(relay.url("a")), await Cdp.connect(relay.url("b"))
        assert (await a.call("Browser.close")).get("result") == {}
        await asyncio.wait_for(a.reader, 10)  # the relay closed A's connection
        assert relay.ended == {"a"}
        assert "product" in await b.ok("Browser.getVersion")  # the browser goes on, and so does B
        assert (await cdp.ok("Browser.getVersion"))["product"]
        await b.close()


async def test_playwright_sees_the_session_context_as_its_default_and_only_context(browser, platform):
    cdp, contexts = platform
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


async def test_puppeteer_sees_the_session_context_as_its_default_context(browser, platform):
    cdp, contexts = platform
    async with Relay(browser.ws_url, contexts) as relay:
        a = await puppeteer(relay.url("a"), "a_cookie")
        b = await puppeteer(relay.url("b"), "b_cookie")
    # One context (the default, which is the session's), its own first page only, its own cookies.
    assert a == {"contexts": 1, "pagesBefore": 1, "pagesAfter": 2, "sum": 42, "cookies": ["a_cookie"], "targets": 2}
    assert b["cookies"] == ["b_cookie"] and b["pagesBefore"] == 1 and b["contexts"] == 1


async def test_a_page_listed_by_get_targets_can_be_attached_and_other_sessions_still_not(browser, platform):
    """A client that connects again (keep-alive) or speaks raw CDP finds the session's existing
    pages with Target.getTargets and attaches to them; another session's pages stay refused."""
    cdp, contexts = platform
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
