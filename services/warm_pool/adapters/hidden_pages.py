"""Visiting origins in hidden pages of a context that load nothing: every request such a page
makes is answered with an empty page by us, so no request leaves the browser, no script of the
site runs there, and service workers are bypassed; storage_state runs its own script in them."""
import asyncio
import contextlib
from collections.abc import Awaitable

from services.warm_pool.adapters.cdp_connection import CdpConnection
from shared.cdp import CdpError

EMPTY_PAGE = "PGh0bWw+PC9odG1sPg=="  # base64 "<html></html>"


class OriginTooLarge(Exception):
    """An origin's storage is over the cap: reported as "too large", and its page is kept."""


class HiddenPage:
    """A hidden page target of the context; every request it makes is answered with an empty 200
    page by us, so visiting an origin runs none of its content and sends nothing anywhere."""

    def __init__(self, cdp: CdpConnection, target_id: str, session_id: str, timeout_s: float):
        self.cdp, self.target_id, self.session_id, self.timeout_s = cdp, target_id, session_id, timeout_s
        self._loaded: set[str] = set()
        self._load = asyncio.Event()

    @classmethod
    async def open(cls, cdp: CdpConnection, context_id: str | None, timeout_s: float) -> "HiddenPage":
        params = {"url": "about:blank", "hidden": True, "background": True}
        if context_id is not None:
            params["browserContextId"] = context_id
        target_id = (await cdp.call("Target.createTarget", params, timeout_s=timeout_s))["targetId"]
        try:
            session_id = (await cdp.call("Target.attachToTarget", {"targetId": target_id, "flatten": True},
                                         timeout_s=timeout_s))["sessionId"]
            page = cls(cdp, target_id, session_id, timeout_s)
            cdp.on("Fetch.requestPaused", session_id, page._fulfill)
            cdp.on("Page.lifecycleEvent", session_id, page._lifecycle)
            await asyncio.gather(
                page._call("Fetch.enable", {"patterns": [{"urlPattern": "*", "requestStage": "Request"}]}),
                page._call("Network.enable", {"maxTotalBufferSize": 0, "maxResourceBufferSize": 0}),
                page._call("Network.setBypassServiceWorker", {"bypass": True}),
                page._call("Page.enable"),
                page._call("Page.setLifecycleEventsEnabled", {"enabled": True}))
            return page
        except BaseException:
            await close_target(cdp, target_id)
            raise

    def _call(self, method: str, params: dict | None = None) -> Awaitable[dict]:
        return self.cdp.call(method, params, session_id=self.session_id, timeout_s=self.timeout_s)

    def _fulfill(self, params: dict) -> None:
        self.cdp.spawn(self._answer(params.get("requestId")))

    async def _answer(self, request_id) -> None:
        with contextlib.suppress(Exception):
            await self._call("Fetch.fulfillRequest", {
                "requestId": request_id, "responseCode": 200, "body": EMPTY_PAGE,
                "responseHeaders": [{"name": "Content-Type", "value": "text/html"},
                                    {"name": "Cache-Control", "value": "no-store"}]})

    def _lifecycle(self, params: dict) -> None:
        if params.get("name") == "load":
            self._loaded.add(params.get("loaderId"))
            self._load.set()

    async def goto(self, origin: str) -> None:
        self._loaded.clear()
        answer = await self._call("Page.navigate", {"url": origin + "/"})
        if answer.get("errorText"):
            raise CdpError(f"navigation failed: {answer['errorText']}")
        loader = answer.get("loaderId")
        async with asyncio.timeout(self.timeout_s):
            while loader not in self._loaded:
                self._load.clear()
                await self._load.wait()
        landed = await self.evaluate("location.origin")
        if landed != origin:
            raise CdpError(f"the page landed on {str(landed)[:100]!r}")

    async def evaluate(self, expression: str):
        answer = await self._call("Runtime.evaluate", {"expression": expression, "awaitPromise": True,
                                                        "returnByValue": True, "userGesture": False})
        if "exceptionDetails" in answer:
            details = answer["exceptionDetails"]
            text = (details.get("exception") or {}).get("description") or details.get("text") or "exception"
            raise CdpError(f"page script failed: {str(text)[:300]}")
        return (answer.get("result") or {}).get("value")

    async def close(self) -> None:
        self.cdp.on("Fetch.requestPaused", self.session_id, None)
        self.cdp.on("Page.lifecycleEvent", self.session_id, None)
        await close_target(self.cdp, self.target_id)


async def close_target(cdp: CdpConnection, target_id: str) -> None:
    with contextlib.suppress(Exception):
        await cdp.call("Target.closeTarget", {"targetId": target_id}, timeout_s=2)


async def visit_origins(cdp: CdpConnection, context_id: str | None, work: list, visit, *, timeout_s: float,
                        concurrency: int, errors: list) -> None:
    """Run `visit(page, item)` for every (origin, item) of `work` on up to `concurrency` pages; a
    page is reused for the next origin unless its visit failed. Each visit has its own deadline."""
    queue = list(reversed(work))

    async def worker() -> None:
        page: HiddenPage | None = None
        try:
            while queue:
                origin, item = queue.pop()
                try:
                    async with asyncio.timeout(timeout_s):
                        if page is None:
                            page = await HiddenPage.open(cdp, context_id, timeout_s)
                        await page.goto(origin)
                        await visit(page, origin, item)
                except Exception as exc:
                    reason = "too large" if isinstance(exc, OriginTooLarge) else (
                        "timed out" if isinstance(exc, TimeoutError) else str(exc)[:300] or type(exc).__name__)
                    errors.append({"origin": origin, "error": reason})
                    if page is not None and not isinstance(exc, OriginTooLarge):
                        await page.close()
                        page = None
        finally:
            if page is not None:
                await page.close()

    await asyncio.gather(*(worker() for _ in range(max(1, min(concurrency, len(work))))))
