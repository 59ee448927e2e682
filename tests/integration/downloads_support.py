"""Downloads through the four services, as a client does them: a session made, a page's download
over a raw CDP connection, the session ended and its downloads listed and fetched."""
import asyncio
import itertools
import json
from pathlib import Path

import httpx
import websockets

from tests.helpers import eventually


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


def browser_files(four_services, session_id: str) -> list[Path]:
    """The session's finished downloads in its browser's tree (the test's view as root)."""
    found = []
    for d in Path(four_services.profile_root).glob(f"*/home/downloads/{session_id}"):
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


async def download_over_cdp(four_services, session: dict, url: str, *, point_elsewhere: bool = False) -> None:
    async with websockets.connect(session["cdp_url"], max_size=None) as ws:
        cdp = Cdp(ws)
        if point_elsewhere:  # the browser's own profile, /tmp: anywhere but the session's directory
            await cdp.call("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": "/browser/profile"})
        page = await cdp.page()
        await cdp.call("Page.navigate", {"url": url}, page)
        await eventually(lambda: browser_files(four_services, session["id"]), timeout=30, what="the download")
