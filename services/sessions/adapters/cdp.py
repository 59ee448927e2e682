"""Talking CDP to a browser: connect for relaying, and take a screenshot of its first page."""
import base64

import websockets

from shared.cdp import CdpCommands


def connect(ws_url: str):
    return websockets.connect(ws_url, max_size=None, compression=None, ping_interval=None,
                              open_timeout=10, close_timeout=2)


class NoPage(Exception):
    pass


async def screenshot(ws_url: str) -> bytes:
    """PNG of the browser's first page target, via a flat-session attach on the browser endpoint."""
    async with connect(ws_url) as ws:
        call = CdpCommands(ws).call
        targets = (await call("Target.getTargets"))["targetInfos"]
        pages = [t for t in targets if t.get("type") == "page"]
        if not pages:
            raise NoPage()
        attached = await call("Target.attachToTarget", {"targetId": pages[0]["targetId"], "flatten": True})
        shot = await call("Page.captureScreenshot", {"format": "png"}, attached["sessionId"])
        await call("Target.detachFromTarget", {"sessionId": attached["sessionId"]})
        return base64.b64decode(shot["data"])
