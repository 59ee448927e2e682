"""Downloads against all four services (issue 18): real Chromium in the sandbox, Postgres, RabbitMQ.

A page of the test's page server downloads a file; once the session has ended it is listed and
fetched with the same bytes: in browser mode (a raw CDP client that sets nothing, one that points
downloads elsewhere, and Playwright), in context mode, and after the browser was killed (crash)."""
import asyncio
import itertools
import json
import os
import signal
from pathlib import Path

import httpx
import pytest
import websockets
from playwright.async_api import async_playwright

from tests.e2e.platform import running_platform
from tests.e2e.test_dashboard import bearer, paying_tenant
from tests.helpers import eventually, local_download, local_page_server

PAYLOAD = os.urandom(2 * 1024 * 1024 + 12345)  # more than two of the RPC's 1 MiB chunks


@pytest.fixture(scope="module")
def platform(module_db, module_mq, tmp_path_factory):
    with running_platform(module_db, module_mq, tmp_path_factory.mktemp("downloads")) as running:
        yield running


@pytest.fixture
async def api(platform):
    _, key = await paying_tenant(platform)
    async with httpx.AsyncClient(base_url=platform.urls["sessions"], headers=bearer(key), timeout=60) as http:
        yield http


class Cdp:
    """A raw CDP client over the session's relay."""

    def __init__(self, ws):
        self.ws, self.ids = ws, itertools.count(1)

    async def call(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        msg_id = next(self.ids)
        msg = {"id": msg_id, "method": method, "params": params or {}, **({"sessionId": session} if session else {})}
        await self.ws.send(json.dumps(msg))
        while True:
            answer = json.loads(await asyncio.wait_for(self.ws.recv(), 30))
            if answer.get("id") == msg_id:
                assert "result" in answer, (method, answer)
                return answer["result"]

    async def page(self) -> str:
        """A flattened session of a page (the session's first one, or a new one)."""
        pages = [t for t in (await self.call("Target.getTargets"))["targetInfos"] if t["type"] == "page"]
        target = pages[0]["targetId"] if pages else (await self.call("Target.createTarget", {"url": "about:blank"}))[
            "targetId"]
        return (await self.call("Target.attachToTarget", {"targetId": target, "flatten": True}))["sessionId"]


def browser_files(platform, session_id: str) -> list[Path]:
    """The session's finished downloads in its browser's tree (the test's view as root)."""
    found = []
    for d in Path(platform.profile_root).glob(f"*/home/downloads/{session_id}"):
        found += [p for p in d.iterdir() if not p.name.endswith(".crdownload")]
    return found


async def create(api, isolation: str = "browser") -> dict:
    r = await api.post("/v1/sessions", json={"isolation": isolation, "timeout_s": 300})
    assert r.status_code == 201, r.text
    return r.json()


async def end_and_list(api, session_id: str, count: int = 1) -> list[dict]:
    r = await api.post(f"/v1/sessions/{session_id}/end")
    assert r.status_code == 200, r.text

    async def listed():
        r = await api.get(f"/v1/sessions/{session_id}/downloads")
        assert r.status_code == 200, r.text
        return r.json()["data"] if len(r.json()["data"]) >= count else None
    return await eventually(listed, timeout=30, what="the downloads kept at the session's end")


async def fetch(api, session_id: str, name: str) -> httpx.Response:
    r = await api.get(f"/v1/sessions/{session_id}/downloads/{name}")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/octet-stream"
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["content-disposition"].startswith("attachment;")
    return r


async def download_over_cdp(platform, session: dict, url: str, *, point_elsewhere: bool = False) -> None:
    async with websockets.connect(session["cdp_url"], max_size=None) as ws:
        cdp = Cdp(ws)
        if point_elsewhere:  # the browser's own profile, /tmp: anywhere but the session's directory
            await cdp.call("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": "/browser/profile"})
        page = await cdp.page()
        await cdp.call("Page.navigate", {"url": url}, page)
        await eventually(lambda: browser_files(platform, session["id"]), timeout=30, what="the download")


@pytest.mark.parametrize("isolation", ["browser", "context"])
async def test_a_download_is_listed_and_fetched_after_the_session_ended(platform, api, isolation):
    session = await create(api, isolation)
    assert (await api.get(f"/v1/sessions/{session['id']}/downloads")).json() == {"data": []}
    with local_download(PAYLOAD, "report 2026.bin") as url:
        await download_over_cdp(platform, session, url)
    [item] = await end_and_list(api, session["id"])
    assert item["name"] == "report 2026.bin" and item["size_bytes"] == len(PAYLOAD) and item["created_at"]
    r = await fetch(api, session["id"], "report 2026.bin")
    assert r.content == PAYLOAD and r.headers["content-length"] == str(len(PAYLOAD))
    assert not browser_files(platform, session["id"])  # moved out of the browser's tree


async def test_a_client_pointing_downloads_elsewhere_still_downloads_into_the_session(platform, api):
    session = await create(api)
    with local_download(b"elsewhere", "elsewhere.txt") as url:
        await download_over_cdp(platform, session, url, point_elsewhere=True)
    [item] = await end_and_list(api, session["id"])
    assert (await fetch(api, session["id"], item["name"])).content == b"elsewhere"


async def test_playwright_downloads_land_in_the_session(platform, api):
    """Playwright's connect_over_cdp sets its own downloadPath (allowAndName, a directory on the
    client's machine); the relay keeps it the session's, and the file keeps the page's name."""
    session = await create(api)
    with local_download(PAYLOAD, "playwright.bin") as url, \
            local_page_server(f'<a id="get" href="{url}">get</a>'.encode()) as page_url:
        async with async_playwright() as pw:
            browser = await pw.chromium.connect_over_cdp(session["cdp_url"])
            context = browser.contexts[0]
            page = context.pages[0] if context.pages else await context.new_page()
            await page.goto(page_url)
            async with page.expect_download() as info:
                await page.click("#get")
            download = await info.value
            assert download.suggested_filename == "playwright.bin"
            await eventually(lambda: browser_files(platform, session["id"]), timeout=30, what="the download")
            await browser.close()
    [item] = await end_and_list(api, session["id"])
    assert item["name"] == "playwright.bin"
    assert (await fetch(api, session["id"], "playwright.bin")).content == PAYLOAD


async def test_a_crashed_browsers_downloads_are_kept(platform, api):
    session = await create(api)
    with local_download(b"before the crash", "crash.txt") as url:
        await download_over_cdp(platform, session, url)
    [home] = [p.parents[2] for p in browser_files(platform, session["id"])]
    uid = home.stat().st_uid  # the browser's own user (its sandbox slot's): kill -9 all it runs
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.stat(f"/proc/{pid}").st_uid == uid:
                os.kill(int(pid), signal.SIGKILL)
        except OSError:
            continue

    async def crashed():
        s = (await api.get(f"/v1/sessions/{session['id']}")).json()
        return s if s["status"] == "completed" else None
    done = await eventually(crashed, timeout=30, what="the crash noticed")
    assert done["end_reason"] == "browser_crashed"

    async def listed():
        return (await api.get(f"/v1/sessions/{session['id']}/downloads")).json()["data"]
    [item] = await eventually(listed, timeout=30, what="the crashed browser's downloads kept")
    assert (await fetch(api, session["id"], item["name"])).content == b"before the crash"


async def test_the_dashboard_lists_and_fetches_a_sessions_downloads(platform, api, tmp_path):
    from tests.e2e.test_dashboard import CHROMIUM_ARGS
    session = await create(api)
    with local_download(b"from the dashboard", "dash.txt") as url:
        await download_over_cdp(platform, session, url)
    await end_and_list(api, session["id"])
    base = platform.urls["sessions"]
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page(accept_downloads=True)
            await page.goto(f"{base}/dashboard/")
            await page.fill("#api-key", api.headers["authorization"].removeprefix("Bearer "))
            await page.click("button[type=submit]")
            await page.wait_for_url(f"{base}/dashboard/usage")
            await page.goto(f"{base}/dashboard/sessions")
            await page.click(f'[data-downloads="{session["id"]}"]')
            link = page.locator(f'[data-downloads-for="{session["id"]}"] [data-download="dash.txt"]')
            await link.wait_for()
            async with page.expect_download() as info:
                await link.click()
            download = await info.value
            assert download.suggested_filename == "dash.txt"
            await download.save_as(tmp_path / "saved")
            assert (tmp_path / "saved").read_bytes() == b"from the dashboard"
        finally:
            await browser.close()


async def test_the_sdk_lists_and_gets_downloads(platform, api):
    import sys
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "clients" / "python" / "src"))
    from browserfleet import AsyncBrowserfleet, NotFoundError

    session = await create(api)
    with local_download(PAYLOAD, "sdk file.bin") as url:
        await download_over_cdp(platform, session, url)
    await end_and_list(api, session["id"])
    bf = AsyncBrowserfleet(api_key=api.headers["authorization"].removeprefix("Bearer "),
                           base_url=platform.urls["sessions"], max_retries=0)
    try:
        [item] = await bf.sessions.downloads.list(session["id"])
        assert item.name == "sdk file.bin" and item.size_bytes == len(PAYLOAD)
        assert await bf.sessions.downloads.get(session["id"], item.name) == PAYLOAD
        with pytest.raises(NotFoundError):
            await bf.sessions.downloads.get(session["id"], "other.bin")
    finally:
        await bf.close()
