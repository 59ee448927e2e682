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
from tests.helpers import eventually, local_download
from tests.security.confinement import Cdp, Relay

PAYLOAD = b"downloaded bytes \x00\x01\x02" * 100


def _files(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir()) if path.is_dir() else []


async def _page_session(cdp: Cdp, url: str = "about:blank") -> str:
    targets = (await cdp.ok("Target.getTargets"))["targetInfos"]
    page = next(t for t in targets if t["type"] == "page")
    return (await cdp.ok("Target.attachToTarget", {"targetId": page["targetId"], "flatten": True}))["sessionId"]


async def test_a_context_session_cannot_send_its_downloads_into_another_sessions_directory(browser, two_contexts):
    """Page.setDownloadBehavior on a page session (and an escaped method name, which a text
    match would miss) named B's directory; the file lands in A's own."""
    _, contexts = two_contexts
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
            await eventually(lambda: any(m.get("id") == 900 for m in a.events), what="the escaped command answered")
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
    # Inside a non-flattened session's message too.
    inner = json.dumps({"id": 1, "method": "Page.setDownloadBehavior", "params": {"behavior": "allow",
                                                                                "downloadPath": "/elsewhere"}})
    wrapped = json.loads(downloads_guard.guard(json.dumps({"id": 9, "method": "Target.sendMessageToTarget", "params": {
        "sessionId": "S", "message": inner}}), own)[0])
    assert json.loads(wrapped["params"]["message"])["params"]["downloadPath"] == own
    # Everything else passes as it came, unparsed.
    plain = '{"id":8,"method":"Runtime.evaluate","params":{"expression":"1+1"}}'
    assert downloads_guard.guard(plain, own) == (plain, None)


# --- against the four services -------------------------------------------------------------

import asyncpg  # noqa: E402
import httpx  # noqa: E402

from tests.e2e.platform import bearer, paying_tenant, running_platform  # noqa: E402
from tests.integration.downloads_support import browser_files, create, download_over_cdp, end_and_list  # noqa: E402


@pytest.fixture(scope="module")
def four_services(module_db, module_mq, tmp_path_factory):
    with running_platform(module_db, module_mq, tmp_path_factory.mktemp("downloads-attacks"),
                          DOWNLOADS_MAX_MIB="1") as running:
        yield running


async def raw_get(base: str, target: str, authorization: str) -> tuple[int, bytes]:
    """GET with the request target sent exactly as given (an HTTP client would resolve `..`)."""
    host, port = base.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(f"GET {target} HTTP/1.1\r\nHost: {host}\r\nAuthorization: {authorization}\r\n"
                 "Connection: close\r\n\r\n".encode())
    await writer.drain()
    response = await reader.read()
    writer.close()
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def store_files(four_services) -> list[Path]:
    return [p for p in (four_services.logs / "downloads").rglob("*") if p.is_file()]


async def test_another_tenants_downloads_and_traversing_names_are_404(four_services, api):
    session = await create(api)
    with local_download(b"mine", "mine.txt") as url:
        await download_over_cdp(four_services, session, url)
    [item] = await end_and_list(api, session["id"])
    _, other_key = await paying_tenant(four_services)
    async with httpx.AsyncClient(base_url=four_services.urls["sessions"], headers=bearer(other_key),
                                 timeout=30) as other:
        for path in (f"/v1/sessions/{session['id']}/downloads", f"/v1/sessions/{session['id']}/downloads/mine.txt"):
            r = await other.get(path)
            assert r.status_code == 404 and r.json()["error"]["code"] == "not_found", (path, r.text)
            assert b"mine" not in r.content or path.endswith("downloads")
    sid = session["id"]
    for name in ("..", "%2E%2E", "..%2Fmine.txt", "x%2F..%2Fmine.txt", "%2Fetc%2Fpasswd", "mine.txt%00",
                 "mine.txt%00.png", "..%5Cmine.txt", "MINE.TXT", "mine.txt%20", ".%2Fmine.txt", "%0Amine.txt",
                 "..%2F..%2F..%2F..%2Fetc%2Fpasswd"):
        status, body = await raw_get(four_services.urls["sessions"], f"/v1/sessions/{sid}/downloads/{name}",
                                     api.headers["authorization"])
        assert status == 404, (name, status, body)
        assert json.loads(body)["error"]["code"] == "not_found", (name, body)
    r = await api.get(f"/v1/sessions/{sid}/downloads/mine.txt")
    assert r.status_code == 200 and r.content == b"mine"


async def test_links_planted_in_the_browsers_tree_are_not_followed(four_services, api, tmp_path):
    """The browser's uid owns its downloads tree and may replace anything in it. A collector that
    copied by path (copytree, open()) would copy the host files the links point at; here a file
    link, a hard link and a linked session directory all point at a file of the host's."""
    secret = tmp_path / "host-secret.txt"
    secret.write_text("HOST-SECRET-CONTENT")
    linked, moved = await create(api), await create(api)
    for session in (linked, moved):
        with local_download(b"real file", "real.txt") as url:
            await download_over_cdp(four_services, session, url)
    # Session 1: links beside its real file (what the browser's uid can do in its own tree).
    [real] = browser_files(four_services, linked["id"])
    uid = real.stat().st_uid
    os.symlink(secret, real.parent / "symlink.txt")
    os.lchown(real.parent / "symlink.txt", uid, uid)
    # Session 2: its whole directory replaced by a link to a host directory.
    [other] = browser_files(four_services, moved["id"])
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "loot.txt").write_text("HOST-SECRET-CONTENT")
    other.unlink()
    other.parent.rmdir()
    os.symlink(outside, other.parent)
    os.lchown(other.parent, uid, uid)

    kept = await end_and_list(api, linked["id"])
    assert [i["name"] for i in kept] == ["real.txt"]
    r = await api.post(f"/v1/sessions/{moved['id']}/end")
    assert r.status_code == 200 and r.json()["status"] == "completed"
    browser_dir = other.parent.parents[2]
    await eventually(lambda: not browser_dir.exists(), timeout=30, what="its browser removed (collection ran first)")
    assert (await api.get(f"/v1/sessions/{moved['id']}/downloads")).json() == {"data": []}
    for stored in store_files(four_services):
        assert b"HOST-SECRET-CONTENT" not in stored.read_bytes(), stored
    assert secret.read_text() == "HOST-SECRET-CONTENT" and (outside / "loot.txt").exists()


async def test_a_file_over_the_cap_is_dropped_and_recorded_and_the_session_ends(four_services, api, module_db):
    session = await create(api)
    with local_download(os.urandom(1536 * 1024), "big.bin") as big, local_download(b"small", "small.txt") as small:
        await download_over_cdp(four_services, session, big)
        await download_over_cdp(four_services, session, small)
        await eventually(lambda: len(browser_files(four_services, session["id"])) == 2, what="both downloads")
    kept = await end_and_list(api, session["id"])
    assert [i["name"] for i in kept] == ["small.txt"]
    assert (await api.get(f"/v1/sessions/{session['id']}")).json()["status"] == "completed"
    r = await api.get(f"/v1/sessions/{session['id']}/downloads/big.bin")
    assert r.status_code == 404
    conn = await asyncpg.connect(module_db)
    try:
        rows = await conn.fetch("SELECT name, size_bytes, dropped FROM warm_pool.downloads WHERE session_id = $1"
                                " ORDER BY name", uuid.UUID(session["id"]))
    finally:
        await conn.close()
    assert [(r["name"], r["size_bytes"], r["dropped"]) for r in rows] == [
        ("big.bin", 1536 * 1024, "over_cap"), ("small.txt", 5, None)]


async def test_a_browser_session_cannot_point_downloads_outside_its_directory(four_services, api):
    """Browser mode: the client's own Browser.setDownloadBehavior, aimed at the browser's
    profile, still lands in the session's directory (and is kept); nothing lands elsewhere."""
    session = await create(api)
    with local_download(b"aimed elsewhere", "aimed.txt") as url:
        await download_over_cdp(four_services, session, url, point_elsewhere=True)
    [home] = {p.parents[2] for p in browser_files(four_services, session["id"])}
    assert not list((home / "profile").glob("aimed*"))
    [item] = await end_and_list(api, session["id"])
    assert item["name"] == "aimed.txt"
