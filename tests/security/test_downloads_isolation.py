"""Downloads (issue 18): a session's files are its tenant's only, and nothing outside a session's own
downloads directory is ever kept or served.

Relay-level attacks run against one real Chromium behind the relays' own code (as
test_context_confinement does); platform-level ones against the four services as processes.
"""
import asyncio
import json
import os
import uuid
from pathlib import Path

import pytest

from services.sessions import downloads_guard
from tests.helpers import eventually, local_download, local_page_server
from tests.security.test_context_confinement import Cdp, Relay, browser, platform  # noqa: F401 (fixtures)

PAYLOAD = b"downloaded bytes \x00\x01\x02" * 100


def _files(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir()) if path.is_dir() else []


async def _page_session(cdp: Cdp, url: str = "about:blank") -> str:
    targets = (await cdp.ok("Target.getTargets"))["targetInfos"]
    page = next(t for t in targets if t["type"] == "page")
    return (await cdp.ok("Target.attachToTarget", {"targetId": page["targetId"], "flatten": True}))["sessionId"]


async def test_a_context_session_cannot_send_its_downloads_into_another_sessions_directory(browser, platform):
    """Page.setDownloadBehavior on a page session (and an escaped method name, which a text
    match would miss) named B's directory; the file lands in A's own."""
    _, contexts = platform
    for name in ("a", "b"):
        Path(f"/tmp/dl-{name}").mkdir(exist_ok=True)
        for f in Path(f"/tmp/dl-{name}").iterdir():
            f.unlink()
    async with Relay(browser.ws_url, contexts) as relay:
        a = await Cdp.connect(relay.url("a"))
        try:
            session = await _page_session(a)
            await a.ok("Page.enable", {}, session)
            await a.ok("Page.setDownloadBehavior", {"behavior": "allow", "downloadPath": "/tmp/dl-b"}, session)
            with local_download(PAYLOAD, "one.bin") as url:
                await a.ok("Page.navigate", {"url": url}, session)
                await eventually(lambda: _files(Path("/tmp/dl-a")) or _files(Path("/tmp/dl-b")), what="a download")
            # The same, its method spelled with a JSON escape.
            escaped = json.dumps({"id": 900, "method": "Page.setDownloadBehavio\\u0072",
                                  "params": {"behavior": "allow", "downloadPath": "/tmp/dl-b"},
                                  "sessionId": session}).replace("\\\\u0072", "\\u0072")
            await a.ws.send(escaped)
            await asyncio.sleep(0.3)
            with local_download(PAYLOAD, "two.bin") as url:
                await a.ok("Page.navigate", {"url": url}, session)
                await eventually(lambda: len(_files(Path("/tmp/dl-a")) + _files(Path("/tmp/dl-b"))) == 2,
                                 what="the second download")
        finally:
            await a.close()
    assert _files(Path("/tmp/dl-b")) == []
    assert _files(Path("/tmp/dl-a")) == ["one.bin", "two.bin"]


def test_the_browser_relay_keeps_download_settings_in_the_sessions_directory():
    own = "/browser/downloads/s1"
    for frame in (
        {"id": 1, "method": "Browser.setDownloadBehavior", "params": {"behavior": "allow", "downloadPath": "/etc"}},
        {"id": 2, "method": "Browser.setDownloadBehavior", "params": {"behavior": "allowAndName",
                                                                     "downloadPath": "/tmp/x", "eventsEnabled": True}},
        {"id": 3, "method": "Browser.setDownloadBehavior", "params": {"behavior": "default"}},
        {"id": 4, "method": "Page.setDownloadBehavior", "params": {"behavior": "allow", "downloadPath": "/b"},
         "sessionId": "S"},
    ):
        out, refusal = downloads_guard.guard(json.dumps(frame), own)
        sent = json.loads(out)
        assert refusal is None and sent["params"]["downloadPath"] == own and sent["params"]["behavior"] == "allow"
        assert sent["id"] == frame["id"] and sent.get("sessionId") == frame.get("sessionId")
    assert json.loads(downloads_guard.guard(json.dumps({"id": 2, "method": "Browser.setDownloadBehavior", "params": {
        "behavior": "allowAndName", "eventsEnabled": True}}), own)[0])["params"]["eventsEnabled"] is True
    deny = json.loads(downloads_guard.guard(json.dumps({"id": 5, "method": "Browser.setDownloadBehavior",
                                                        "params": {"behavior": "deny", "downloadPath": "/x"}}), own)[0])
    assert deny["params"] == {"behavior": "deny"}
    # Escapes are decoded as the browser would; a key given twice is refused, not guessed at.
    escaped = '{"id":6,"method":"Browser.setDownloadBehavio\\u0072","params":{"behavior":"allow","downloadPath":"/e"}}'
    assert json.loads(downloads_guard.guard(escaped, own)[0])["params"]["downloadPath"] == own
    twice = '{"id":7,"method":"Runtime.evaluate","method":"Browser.setDownloadBehavior","params":{}}'
    assert downloads_guard.guard(twice, own)[0] is None and "twice" in downloads_guard.guard(twice, own)[1]
    # Everything else passes as it came, unparsed.
    plain = '{"id":8,"method":"Runtime.evaluate","params":{"expression":"1+1"}}'
    assert downloads_guard.guard(plain, own) == (plain, None)
