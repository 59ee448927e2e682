"""Downloads against all four services (issue 18): real Chromium in the sandbox, Postgres, RabbitMQ.

A page of the test's page server downloads a file; once the session has ended it is listed and
fetched with the same bytes: in browser mode (a raw CDP client that sets nothing, one that points
downloads elsewhere, and Playwright), in context mode, and after the browser was killed (crash)."""
import os
import signal
from pathlib import Path

import pytest
from playwright.async_api import async_playwright

from tests.chromium import VIEWER_ARGS
from tests.helpers import eventually, local_download, local_page_server
from tests.integration.downloads_support import browser_files, create, download_over_cdp, end_and_list, fetch

PAYLOAD = os.urandom(2 * 1024 * 1024 + 12345)  # more than two of the RPC's 1 MiB chunks


@pytest.mark.parametrize("isolation", ["browser", "context"])
async def test_a_download_is_listed_and_fetched_after_the_session_ended(four_services, api, isolation):
    session = await create(api, isolation)
    assert (await api.get(f"/v1/sessions/{session['id']}/downloads")).json() == {"data": []}
    with local_download(PAYLOAD, "report 2026.bin") as url:
        await download_over_cdp(four_services, session, url)
    [item] = await end_and_list(api, session["id"])
    assert item["name"] == "report 2026.bin" and item["size_bytes"] == len(PAYLOAD) and item["created_at"]
    r = await fetch(api, session["id"], "report 2026.bin")
    assert r.content == PAYLOAD and r.headers["content-length"] == str(len(PAYLOAD))
    assert not browser_files(four_services, session["id"])  # moved out of the browser's tree


async def test_a_client_pointing_downloads_elsewhere_still_downloads_into_the_session(four_services, api):
    session = await create(api)
    with local_download(b"elsewhere", "elsewhere.txt") as url:
        await download_over_cdp(four_services, session, url, point_elsewhere=True)
    [item] = await end_and_list(api, session["id"])
    assert (await fetch(api, session["id"], item["name"])).content == b"elsewhere"


async def test_playwright_downloads_land_in_the_session(four_services, api):
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
            await eventually(lambda: browser_files(four_services, session["id"]), timeout=30, what="the download")
            await browser.close()
    [item] = await end_and_list(api, session["id"])
    assert item["name"] == "playwright.bin"
    assert (await fetch(api, session["id"], "playwright.bin")).content == PAYLOAD


async def test_a_crashed_browsers_downloads_are_kept(four_services, api):
    session = await create(api)
    with local_download(b"before the crash", "crash.txt") as url:
        await download_over_cdp(four_services, session, url)
    [home] = [p.parents[2] for p in browser_files(four_services, session["id"])]
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


async def test_the_dashboard_lists_and_fetches_a_sessions_downloads(four_services, api, tmp_path):
    session = await create(api)
    with local_download(b"from the dashboard", "dash.txt") as url:
        await download_over_cdp(four_services, session, url)
    await end_and_list(api, session["id"])
    base = four_services.urls["sessions"]
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path="/usr/bin/chromium", args=VIEWER_ARGS)
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


async def test_the_sdk_lists_and_gets_downloads(four_services, api):
    import sys
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "clients" / "python" / "src"))
    from browserfleet import AsyncBrowserfleet, NotFoundError

    session = await create(api)
    with local_download(PAYLOAD, "sdk file.bin") as url:
        await download_over_cdp(four_services, session, url)
    await end_and_list(api, session["id"])
    bf = AsyncBrowserfleet(api_key=api.headers["authorization"].removeprefix("Bearer "),
                           base_url=four_services.urls["sessions"], max_retries=0)
    try:
        [item] = await bf.sessions.downloads.list(session["id"])
        assert item.name == "sdk file.bin" and item.size_bytes == len(PAYLOAD)
        assert await bf.sessions.downloads.get(session["id"], item.name) == PAYLOAD
        with pytest.raises(NotFoundError):
            await bf.sessions.downloads.get(session["id"], "other.bin")
    finally:
        await bf.close()
