"""Talking CDP to a browser: connect for relaying, and take a screenshot of its first page."""
import asyncio
import base64

import websockets

from shared.cdp import CdpCommands


def connect(ws_url: str, *, max_size: int):
    """`max_size` is checked against each frame header (fragments of one message add up), so an
    oversized message fails the connection with 1009 before any of it is buffered."""
    return websockets.connect(ws_url, max_size=max_size, compression=None, ping_interval=None,
                              open_timeout=10, close_timeout=2)


class NoPage(Exception):
    pass


async def screenshot(ws_url: str, *, timeout_s: float, max_size: int, context_id: str | None = None) -> bytes:
    """PNG of the browser's first page target (of BrowserContext `context_id` only, if given: a
    shared browser holds other sessions' pages), via a flat-session attach on the browser
    endpoint. The whole exchange, connecting included, has `timeout_s` (TimeoutError past it)."""
    async with asyncio.timeout(timeout_s), connect(ws_url, max_size=max_size) as ws:
        call = CdpCommands(ws, timeout_s=timeout_s).call
        targets = (await call("Target.getTargets"))["targetInfos"]
        pages = [t for t in targets if t.get("type") == "page"
                 and (context_id is None or t.get("browserContextId") == context_id)]
        if not pages:
            raise NoPage()
        attached = await call("Target.attachToTarget", {"targetId": pages[0]["targetId"], "flatten": True})
        shot = await call("Page.captureScreenshot", {"format": "png"}, attached["sessionId"])
        await call("Target.detachFromTarget", {"sessionId": attached["sessionId"]})
        return base64.b64decode(shot["data"])
