"""What a context session may open a page at or send a page to (services/sessions/confine.py),
judged as Chromium reads the URL: a spelling Chromium would load as file: or chrome: is refused too."""
import json

import pytest

from services.sessions.confine import Confinement

REFUSED = ["file:///browser/downloads/", "FILE:///etc/passwd", " file:///x", "\tfile:///x", "fi\tle:///x",
           "f\nile:///x", "\x00file:///x", "chrome://inducebrowsercrashforrealz", "chrome://crash",
           "devtools://devtools/bundled/inspector.html", "view-source:file:///x", "about:crash",
           "about:inducebrowsercrashforrealz", "javascript:alert(1)", "filesystem:file:///x", "//host/x", "x"]
ALLOWED = ["", "about:blank", "ABOUT:BLANK", "about:blank#b", "https://example.com/", "http://127.0.0.1:3000/",
           "data:text/html,hi", "blob:https://example.com/1"]


def answer(confinement: Confinement, msg: dict) -> dict | None:
    out = confinement.from_client(json.dumps(msg))
    return json.loads(out.to_client[0]) if out.to_client else None


@pytest.mark.parametrize("url", REFUSED)
def test_a_page_is_never_opened_or_sent_to_a_local_or_debug_url(url):
    confinement = Confinement(context_id="C1", downloads_path="/browser/downloads/s1")
    confinement.sessions.add("P1")
    assert "error" in answer(confinement, {"id": 1, "method": "Target.createTarget", "params": {"url": url}})
    assert "error" in answer(confinement, {"id": 2, "method": "Page.navigate", "params": {"url": url},
                                           "sessionId": "P1"})


@pytest.mark.parametrize("url", ALLOWED)
def test_web_pages_and_blank_ones_open(url):
    confinement = Confinement(context_id="C1")
    confinement.sessions.add("P1")
    assert answer(confinement, {"id": 1, "method": "Target.createTarget", "params": {"url": url}}) is None
    assert answer(confinement, {"id": 2, "method": "Page.navigate", "params": {"url": url}, "sessionId": "P1"}) is None


@pytest.mark.parametrize(("files", "ok"), [(["/browser/downloads/s1/report.pdf"], True),
                                          (["/browser/downloads/s2/statement.txt"], False),
                                          (["/browser/downloads/s1/../s2/statement.txt"], False),
                                          (["/browser/downloads/s1"], False), (["/etc/passwd"], False),
                                          ("/browser/downloads/s1/x", False), ([], True)])
def test_only_the_sessions_own_downloads_can_be_given_to_a_page(files, ok):
    confinement = Confinement(context_id="C1", downloads_path="/browser/downloads/s1")
    confinement.sessions.add("P1")
    for method, params in (("DOM.setFileInputFiles", {"files": files, "nodeId": 1}),
                           ("Input.dispatchDragEvent", {"type": "drop", "x": 1, "y": 1, "data": {"items": [],
                                                                                              "files": files}})):
        refused = answer(confinement, {"id": 1, "method": method, "params": params, "sessionId": "P1"})
        assert (refused is None) == ok, (method, files, refused)
