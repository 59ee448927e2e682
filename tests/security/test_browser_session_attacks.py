"""Red team on context sessions' browser-level CDP sessions (f5528f8) and what they share with
the connection: session A, confined to its own context of a browser it shares with session B,
tries to learn or touch anything of B's, or the browser itself.

Each test here is an attack that worked when it was written; all four are closed since 8e305dc:
- a command id used twice: the relay keys its rewrites by id alone, so the second answer passes
  unfiltered (B's pages, their URLs and contexts), from the connection or a browser session;
- a debug URL (`chrome://inducebrowsercrashforrealz`) as a new target's URL crashes the browser
  every session of it shares;
- a `file://` page lists and reads B's downloads directory, and `DOM.setFileInputFiles` hands
  A's page any file of B's (same browser, same filesystem);
- browser sessions cost the relay memory and Chromium nothing: one connection grows the gateway
  without bound.
"""
import asyncio
import json
import tracemalloc
import uuid
from pathlib import Path

from services.sessions.confine import Confinement
from tests.security.confinement import Cdp, Relay


LOADED_HTML = """new Promise(done => { const html = () => done(document.documentElement.outerHTML);
    document.readyState === 'complete' ? html() : addEventListener('load', html); })"""


async def _sent(cdp: Cdp, msg: dict) -> None:
    await cdp.ws.send(json.dumps(msg))


async def _answers(cdp: Cdp, msg_id: int, count: int) -> list[dict]:
    """The frames answering `msg_id`, once `count` have come (the Cdp reader keeps unclaimed ones)."""
    for _ in range(200):
        got = [e for e in cdp.events if e.get("id") == msg_id]
        if len(got) >= count:
            return got
        await asyncio.sleep(0.05)
    raise AssertionError(f"{count} answers to {msg_id} expected, got {got}")


async def test_a_command_id_used_twice_does_not_show_another_sessions_targets(browser, two_contexts):
    cdp, contexts = two_contexts
    async with Relay(browser.ws_url, contexts) as relay:
        a, b = await Cdp.connect(relay.url("a")), await Cdp.connect(relay.url("b"))
        b_target = (await b.ok("Target.createTarget", {"url": "about:blank#b-token-1234"}))["targetId"]
        alias = (await a.ok("Target.attachToBrowserTarget"))["sessionId"]
        # The first answer to 500 takes Target.getTargets' filter; the second, the list, passes as is.
        await _sent(a, {"id": 500, "method": "Browser.getVersion", "sessionId": alias})
        await _sent(a, {"id": 500, "method": "Target.getTargets"})
        # The same without a browser session: twice the id on the connection itself.
        await _sent(a, {"id": 600, "method": "Browser.getVersion"})
        await _sent(a, {"id": 600, "method": "Target.getTargets"})
        seen = json.dumps(await _answers(a, 500, 2) + await _answers(a, 600, 2))
        assert b_target not in seen and "b-token-1234" not in seen and contexts["b"] not in seen
        await a.close()
        await b.close()


async def test_a_debug_url_does_not_crash_the_browser_other_sessions_share(browser, two_contexts):
    cdp, contexts = two_contexts
    async with Relay(browser.ws_url, contexts) as relay:
        a, b = await Cdp.connect(relay.url("a")), await Cdp.connect(relay.url("b"))
        alias = (await a.ok("Target.attachToBrowserTarget"))["sessionId"]
        answer = asyncio.create_task(a.call("Target.createTarget", {"url": "chrome://inducebrowsercrashforrealz"},
                                            session=alias))
        exited = asyncio.create_task(browser.proc.wait())
        await asyncio.wait([answer, exited], return_when=asyncio.FIRST_COMPLETED)
        assert not exited.done(), f"the shared browser died (exit {browser.proc.returncode})"
        exited.cancel()
        assert (await b.ok("Browser.getVersion"))["product"]  # B goes on
        await a.close()
        await b.close()


async def test_a_file_url_does_not_read_another_sessions_downloads(browser, two_contexts):
    cdp, contexts = two_contexts
    name = f"b-statement-{uuid.uuid4().hex[:8]}.txt"
    b_file = Path("/tmp/dl-b") / name  # the harness's downloads directory of B's
    async with Relay(browser.ws_url, contexts) as relay:
        a, b = await Cdp.connect(relay.url("a")), await Cdp.connect(relay.url("b"))
        try:
            # B downloads a file, as its pages would.
            await b.ok("Browser.setDownloadBehavior", {"behavior": "allow"})
            page = (await b.ok("Target.createTarget", {"url": "about:blank"}))["targetId"]
            b_session = (await b.ok("Target.attachToTarget", {"targetId": page, "flatten": True}))["sessionId"]
            await b.ok("Runtime.evaluate", {"expression": f"""(() => {{ const a = document.createElement('a');
                a.href = 'data:text/plain,b-secret-balance'; a.download = '{name}'; a.click(); }})()"""},
                session=b_session)
            for _ in range(200):
                if b_file.exists() and b_file.read_text() == "b-secret-balance":
                    break
                await asyncio.sleep(0.05)
            assert b_file.read_text() == "b-secret-balance"
            # A opens it in a page of its own: as a new target's URL, and by navigating a page there.
            seen = []
            for url in (f"file://{b_file.parent}/", f"file://{b_file}"):
                for navigate in (False, True):
                    opened = await a.call("Target.createTarget", {"url": "about:blank" if navigate else url})
                    if "error" in opened:
                        continue
                    target = opened["result"]["targetId"]
                    session = (await a.ok("Target.attachToTarget", {"targetId": target, "flatten": True}))["sessionId"]
                    if navigate:
                        await a.call("Page.navigate", {"url": url}, session=session)
                    seen.append(json.dumps(await a.call("Runtime.evaluate", {"expression": LOADED_HTML,
                                                                             "awaitPromise": True}, session=session)))
            # And without a URL: the file given to a file input of A's page (DOM.setFileInputFiles).
            target = (await a.ok("Target.createTarget", {"url": "about:blank"}))["targetId"]
            session = (await a.ok("Target.attachToTarget", {"targetId": target, "flatten": True}))["sessionId"]
            await a.ok("Runtime.evaluate", {"expression": "document.body.innerHTML = '<input type=file id=f>'"},
                       session=session)
            root = (await a.ok("DOM.getDocument", {}, session=session))["root"]["nodeId"]
            node = (await a.ok("DOM.querySelector", {"nodeId": root, "selector": "#f"}, session=session))["nodeId"]
            if "result" in await a.call("DOM.setFileInputFiles", {"files": [str(b_file)], "nodeId": node},
                                        session=session):
                seen.append(json.dumps(await a.call("Runtime.evaluate", {
                    "expression": "document.getElementById('f').files[0].text()", "awaitPromise": True},
                    session=session)))
            assert not any(name in s or "b-secret-balance" in s for s in seen), "\n".join(seen)
        finally:
            b_file.unlink(missing_ok=True)
        await a.close()
        await b.close()


def test_browser_sessions_do_not_grow_the_relay_without_bound():
    """Each `Target.attachToBrowserTarget` is ~60 bytes from the client, nothing for Chromium,
    and an alias the relay keeps until detached: 100,000 of them must not hold the relay's memory."""
    confinement = Confinement(context_id="C0", downloads_path="/tmp/dl-c0")
    tracemalloc.start()
    try:
        for i in range(100_000):
            confinement.from_client(json.dumps({"id": i % 1000 + 1, "method": "Target.attachToBrowserTarget"}))
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert held < 1_000_000, f"{held / 1e6:.1f} MB held for one connection's browser sessions"

