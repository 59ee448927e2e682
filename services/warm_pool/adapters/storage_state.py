"""Capture and restore a BrowserContext's web state over CDP, the way Playwright's storageState does:
cookies through the Storage domain; each origin's localStorage and IndexedDB by visiting the origin
in a hidden page of the context whose every request is answered with an empty page (no request
leaves the browser, no script of the site runs there, service workers are bypassed), and running
our own script in it (storage_state_page.py; which IndexedDB values are carried is listed there).

State (JSON-serializable with json.dumps' default ensure_ascii: a JS string may hold a lone
surrogate, which is carried as it is and which UTF-8 cannot encode):
    {"cookies": [CDP Network.Cookie dicts, session cookies included],
     "origins": [{"origin": "https://x:port", "localStorage": [{"name", "value"}],
                  "indexedDB": [{"name", "version", "stores": [{"name", "keyPath", "autoIncrement",
                                 "indexes": [{"name", "keyPath", "unique", "multiEntry"}],
                                 "records": [{"key", "value"}]}]}]}],
     "errors": [{"origin", "error"}]}   # what capture could not carry; restore ignores it

Origins with nothing stored are left out. Everything read back from the browser is untrusted: sizes
are capped (per origin, in total, and per websocket message) and shapes validated; an origin that
fails (a hung page, a cap) is reported in "errors" and the others go on.
"""
import asyncio
import base64
import contextlib
import itertools
import json
import logging
import re
from collections.abc import Awaitable, Callable, Iterable
from urllib.parse import urlsplit

import websockets

from services.warm_pool.adapters.storage_state_page import CAPTURE, RESTORE
from shared.cdp import CdpError

log = logging.getLogger(__name__)

StorageState = dict
MiB = 1024 * 1024
DEFAULT_MAX_ORIGIN_BYTES = 8 * MiB
DEFAULT_MAX_TOTAL_BYTES = 32 * MiB  # parsed, the state takes ~3x this in Python objects at most
MAX_COOKIES = 10_000  # Chromium keeps ~3,300 at most
MAX_ORIGINS = 500
MAX_TRACKED_CONTEXTS = 256
IDB_BATCH = 500
EMPTY_PAGE = "PGh0bWw+PC9odG1sPg=="  # base64 "<html></html>"
COOKIE_FIELDS = {"name": str, "value": str, "domain": str, "path": str, "expires": (int, float), "httpOnly": bool,
                 "secure": bool, "session": bool, "sameSite": str, "priority": str, "sourceScheme": str,
                 "sourcePort": int, "partitionKey": dict}
LONE_SURROGATE = re.compile("[\ud800-\udfff]")  # what JSON text of JS strings may hold; UTF-8 cannot
HOST = re.compile(r"[a-z0-9_\-]+(\.[a-z0-9_\-]+)*\.?|\[[0-9a-f:.]+\]")


class InvalidState(ValueError):
    pass


class _TooLarge(Exception):
    pass


# ---- origins ---------------------------------------------------------------------------------

def origin_of(url: object) -> str | None:
    """The http(s) origin of a URL as the browser spells it (`new URL(url).origin`), else None."""
    if not isinstance(url, str) or len(url) > 8192:
        return None
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    host = parts.hostname
    if parts.scheme not in ("http", "https") or not host:
        return None
    host = f"[{host}]" if ":" in host else host
    if not HOST.fullmatch(host):
        return None
    default = {"http": 80, "https": 443}[parts.scheme]
    return f"{parts.scheme}://{host}" + (f":{port}" if port is not None and port != default else "")


def _as_origin(value: object) -> str:
    """`value` if it is an origin exactly (no path, query, credentials), else InvalidState."""
    origin = origin_of(value)
    if origin is None or value not in (origin, origin + "/"):
        raise InvalidState(f"not an http(s) origin: {str(value)[:100]!r}")
    return origin


# ---- a DevTools connection that also dispatches events ------------------------------------------

class _Cdp:
    """One browser-level DevTools websocket: commands matched to replies by id, events handed to
    handlers by (method, sessionId). Every command has a deadline; a closed connection fails every
    pending command. Messages over `max_message_bytes` close the connection (a cap on memory)."""

    def __init__(self, ws):
        self.ws = ws
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future] = {}
        self._handlers: dict[tuple[str, str | None], Callable[[dict], None]] = {}
        self._tasks: set[asyncio.Task] = set()
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def connect(cls, url: str, *, timeout_s: float, max_message_bytes: int) -> "_Cdp":
        async with asyncio.timeout(timeout_s):
            ws = await websockets.connect(url, max_size=max_message_bytes, open_timeout=None, ping_interval=None,
                                          close_timeout=1)
        return cls(ws)

    async def _read(self) -> None:
        try:
            async for raw in self.ws:
                msg = json.loads(raw)
                if "id" in msg:
                    future = self._pending.pop(msg["id"], None)
                    if future is not None and not future.done():
                        future.set_result(msg)
                    continue
                handler = self._handlers.get((msg.get("method"), msg.get("sessionId")))
                if handler is not None:
                    try:
                        handler(msg.get("params") or {})
                    except Exception:
                        log.exception("storage state: a CDP event handler failed")
        except (websockets.ConnectionClosed, ValueError) as exc:
            log.debug("storage state: DevTools connection ended: %s", exc)
        finally:
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(CdpError("DevTools connection closed"))
            self._pending.clear()

    async def call(self, method: str, params: dict | None = None, *, session_id: str | None = None,
                   timeout_s: float) -> dict:
        if self._reader.done():
            raise CdpError("DevTools connection closed")
        msg_id = next(self._ids)
        msg = {"id": msg_id, "method": method, "params": params or {}}
        if session_id:
            msg["sessionId"] = session_id
        future = self._pending[msg_id] = asyncio.get_running_loop().create_future()
        try:
            async with asyncio.timeout(timeout_s):
                await self.ws.send(json.dumps(msg))
                answer = await future
        finally:
            self._pending.pop(msg_id, None)
        if "error" in answer:
            raise CdpError(f"{method}: {answer['error'].get('message', 'CDP error')}")
        return answer.get("result") or {}

    def on(self, method: str, session_id: str | None, handler: Callable[[dict], None] | None) -> None:
        if handler is None:
            self._handlers.pop((method, session_id), None)
        else:
            self._handlers[(method, session_id)] = handler

    def spawn(self, coro: Awaitable) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.ws.close()
        self._reader.cancel()
        for task in [self._reader, *self._tasks]:
            task.cancel()
        await asyncio.gather(self._reader, *self._tasks, return_exceptions=True)


# ---- one hidden, intercepted page ------------------------------------------------------------

class _Page:
    """A hidden page target of the context; every request it makes is answered with an empty 200
    page by us, so visiting an origin runs none of its content and sends nothing anywhere."""

    def __init__(self, cdp: _Cdp, target_id: str, session_id: str, timeout_s: float):
        self.cdp, self.target_id, self.session_id, self.timeout_s = cdp, target_id, session_id, timeout_s
        self._loaded: set[str] = set()
        self._load = asyncio.Event()

    @classmethod
    async def open(cls, cdp: _Cdp, context_id: str | None, timeout_s: float) -> "_Page":
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
            await _close_target(cdp, target_id)
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
        await _close_target(self.cdp, self.target_id)


async def _close_target(cdp: _Cdp, target_id: str) -> None:
    with contextlib.suppress(Exception):
        await cdp.call("Target.closeTarget", {"targetId": target_id}, timeout_s=2)


async def _each_origin(cdp: _Cdp, context_id: str | None, work: list, visit, *, timeout_s: float,
                       concurrency: int, errors: list) -> None:
    """Run `visit(page, item)` for every (origin, item) of `work` on up to `concurrency` pages; a
    page is reused for the next origin unless its visit failed. Each visit has its own deadline."""
    queue = list(reversed(work))

    async def worker() -> None:
        page: _Page | None = None
        try:
            while queue:
                origin, item = queue.pop()
                try:
                    async with asyncio.timeout(timeout_s):
                        if page is None:
                            page = await _Page.open(cdp, context_id, timeout_s)
                        await page.goto(origin)
                        await visit(page, origin, item)
                except Exception as exc:
                    reason = "too large" if isinstance(exc, _TooLarge) else (
                        "timed out" if isinstance(exc, TimeoutError) else str(exc)[:300] or type(exc).__name__)
                    errors.append({"origin": origin, "error": reason})
                    if page is not None and not isinstance(exc, _TooLarge):
                        await page.close()
                        page = None
        finally:
            if page is not None:
                await page.close()

    await asyncio.gather(*(worker() for _ in range(max(1, min(concurrency, len(work))))))


def _utf8_size(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))  # JS strings may hold lone surrogates


def _message_cap(max_origin_bytes: int) -> int:
    # A captured origin (≤ max_origin_bytes characters) comes back as a string inside CDP's JSON,
    # where one character may take up to 6 bytes (\uXXXX); the cookies reply (~3,300 cookies of
    # ≤ 4 KiB) must fit too. What restore sends is not capped by this.
    return max(32 * MiB, 6 * max_origin_bytes + MiB)


def _context_params(context_id: str | None) -> dict:
    return {} if context_id is None else {"browserContextId": context_id}


# ---- capture -----------------------------------------------------------------------------------

async def capture(cdp_ws_url: str, *, context_id: str | None, origins: Iterable[str], timeout_s: float = 10,
                  max_origin_bytes: int = DEFAULT_MAX_ORIGIN_BYTES, max_total_bytes: int = DEFAULT_MAX_TOTAL_BYTES,
                  concurrency: int = 4) -> StorageState:
    """The context's cookies and the storage of each of `origins` (at most MAX_ORIGINS).
    `timeout_s` bounds each origin's visit (and each browser-level call); `concurrency` pages visit
    at once. Raises CdpError/TimeoutError/OSError only if the browser cannot be reached or its cookies not
    read; an origin that fails is listed in "errors" and left out."""
    errors: list[dict] = []
    unique: dict[str, None] = {}  # in order, once each
    for value in origins:
        try:
            unique[_as_origin(value)] = None
        except InvalidState as exc:
            errors.append({"origin": str(value)[:100], "error": str(exc)})
    wanted = list(unique)
    for origin in wanted[MAX_ORIGINS:]:
        errors.append({"origin": origin, "error": f"over {MAX_ORIGINS} origins"})
    wanted = sorted(wanted[:MAX_ORIGINS])
    captured: dict[str, dict] = {}
    total = 0

    async def visit(page: _Page, origin: str, _item) -> None:
        nonlocal total
        text = await page.evaluate(f"({CAPTURE})({int(max_origin_bytes)}, {IDB_BATCH})")
        if not isinstance(text, str):
            raise CdpError("the page script returned no state")
        size = _utf8_size(text)
        if size > max_origin_bytes:
            raise _TooLarge()
        raw = json.loads(text)
        if not isinstance(raw, dict) or raw.get("tooLarge"):
            raise _TooLarge()
        if total + size > max_total_bytes:
            raise CdpError(f"the state passed {max_total_bytes} bytes in all")
        entry = _origin_entry({**raw, "origin": origin})
        skipped = raw.get("skipped")
        if isinstance(skipped, dict) and skipped:
            kinds = ", ".join(f"{n} {str(kind)[:40]}" for kind, n in list(skipped.items())[:10])
            errors.append({"origin": origin, "error": f"IndexedDB records not carried: {kinds}"})
        total += size
        if entry["localStorage"] or entry["indexedDB"]:
            captured[origin] = entry

    cdp = await _Cdp.connect(cdp_ws_url, timeout_s=timeout_s, max_message_bytes=_message_cap(max_origin_bytes))
    try:
        raw_cookies = (await cdp.call("Storage.getCookies", _context_params(context_id),
                                      timeout_s=timeout_s)).get("cookies")
        cookies = _cookies(raw_cookies, for_restore=False)
        await _each_origin(cdp, context_id, [(o, None) for o in wanted], visit, timeout_s=timeout_s,
                           concurrency=concurrency, errors=errors)
    finally:
        await cdp.close()
    if errors:
        log.warning("storage state: capture: %d problem(s): %s", len(errors),
                    "; ".join(f"{e['origin']}: {e['error']}" for e in errors[:5]))
    return {"cookies": cookies, "origins": [captured[o] for o in sorted(captured)], "errors": errors}


# ---- restore -----------------------------------------------------------------------------------

async def restore(cdp_ws_url: str, *, context_id: str | None, state: StorageState, timeout_s: float = 10,
                  max_origin_bytes: int = DEFAULT_MAX_ORIGIN_BYTES, concurrency: int = 4) -> list[dict]:
    """Put `state` into the context: its cookies, then each origin's localStorage and IndexedDB
    (a database of the same name is replaced). A malformed state raises InvalidState before
    anything is written. Returns what could not be restored ([{"origin", "error"}], empty when
    all was); an origin over `max_origin_bytes` is refused, the others go on."""
    if not isinstance(state, dict):
        raise InvalidState("a state is an object")
    cookies = _cookies(state.get("cookies", []), for_restore=True)
    entries = state.get("origins", [])
    if not isinstance(entries, list) or len(entries) > MAX_ORIGINS:
        raise InvalidState(f"origins: a list of at most {MAX_ORIGINS}")
    errors: list[dict] = []
    work: list[tuple[str, str]] = []
    for raw in entries:
        entry = _origin_entry(raw)
        # As JSON.stringify writes it (a lone surrogate escaped), so measured as capture measures it.
        text = LONE_SURROGATE.sub(lambda m: f"\\u{ord(m[0]):04x}", json.dumps(entry, ensure_ascii=False))
        if _utf8_size(text) > max_origin_bytes:
            errors.append({"origin": entry["origin"], "error": "too large"})
        elif entry["origin"] not in {o for o, _ in work}:
            work.append((entry["origin"], text))

    async def visit(page: _Page, origin: str, text: str) -> None:
        payload = base64.b64encode(text.encode()).decode()
        failed = await page.evaluate(f"({RESTORE})({payload!r})")
        problems = json.loads(failed) if isinstance(failed, str) else ["the page script returned nothing"]
        for problem in problems[:20] if isinstance(problems, list) else []:
            errors.append({"origin": origin, "error": str(problem)[:300]})

    cdp = await _Cdp.connect(cdp_ws_url, timeout_s=timeout_s, max_message_bytes=_message_cap(max_origin_bytes))
    try:
        if cookies:
            await _set_cookies(cdp, context_id, cookies, timeout_s, errors)
        await _each_origin(cdp, context_id, work, visit, timeout_s=timeout_s, concurrency=concurrency, errors=errors)
    finally:
        await cdp.close()
    if errors:
        log.warning("storage state: restore: %d problem(s): %s", len(errors),
                    "; ".join(f"{e['origin']}: {e['error']}" for e in errors[:5]))
    return errors


async def _set_cookies(cdp: _Cdp, context_id: str | None, cookies: list[dict], timeout_s: float,
                       errors: list) -> None:
    try:
        await cdp.call("Storage.setCookies", {"cookies": cookies, **_context_params(context_id)}, timeout_s=timeout_s)
        return
    except CdpError:
        pass  # one cookie the browser refuses fails the whole call: set them one by one
    for cookie in cookies:
        try:
            await cdp.call("Storage.setCookies", {"cookies": [cookie], **_context_params(context_id)},
                           timeout_s=timeout_s)
        except CdpError as exc:
            errors.append({"origin": f"cookie {cookie['name'][:50]!r} of {cookie['domain'][:100]}",
                           "error": str(exc)[:200]})


# ---- validation of untrusted state ---------------------------------------------------------------

def _cookies(raw: object, *, for_restore: bool) -> list[dict]:
    """Cookies as Network.Cookie dicts (capture) or Storage.setCookies CookieParams (restore):
    known fields of the right type only; session cookies keep no expiry."""
    if not isinstance(raw, list) or len(raw) > MAX_COOKIES:
        raise InvalidState(f"cookies: a list of at most {MAX_COOKIES}")
    out = []
    for cookie in raw:
        if not isinstance(cookie, dict) or not all(isinstance(cookie.get(k), str) for k in ("name", "value", "domain")):
            raise InvalidState("a cookie needs a name, value and domain")
        if cookie.get("partitionKeyOpaque"):
            continue  # cannot be set again
        kept = {k: v for k, v in cookie.items() if k in COOKIE_FIELDS and _typed(v, COOKIE_FIELDS[k])}
        if for_restore:
            if kept.pop("session", False) or kept.get("expires", -1) < 0:
                kept.pop("expires", None)
        out.append(kept)
    return out


def _typed(value: object, kind) -> bool:
    return isinstance(value, bool) if kind is bool else isinstance(value, kind) and not isinstance(value, bool)


def _json_list(value: object, what: str) -> list:
    if not isinstance(value, list):
        raise InvalidState(f"{what}: a list")
    return value


def _key_path(value: object, *, nullable: bool) -> object:
    if (value is None and nullable) or isinstance(value, str):
        return value
    if isinstance(value, list) and value and all(isinstance(p, str) for p in value):
        return value
    raise InvalidState("a keyPath is a string or a list of strings")


def _flag(value: object) -> bool:
    if not isinstance(value, bool):
        raise InvalidState("expected a boolean")
    return value


def _name(value: object) -> str:
    if not isinstance(value, str):
        raise InvalidState("a name is a string")
    return value


def _origin_entry(raw: object) -> dict:
    """One origin's storage, shapes checked and unknown fields dropped (InvalidState otherwise)."""
    if not isinstance(raw, dict):
        raise InvalidState("an origin entry is an object")
    local = []
    for item in _json_list(raw.get("localStorage", []), "localStorage"):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str) or not isinstance(item.get("value"), str):
            raise InvalidState("a localStorage item is {name, value} strings")
        local.append({"name": item["name"], "value": item["value"]})
    databases = []
    for db in _json_list(raw.get("indexedDB", []), "indexedDB"):
        if not isinstance(db, dict):
            raise InvalidState("a database is an object")
        version = db.get("version")
        if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version < 2 ** 53:
            raise InvalidState("a database version is a positive integer")
        stores = []
        for store in _json_list(db.get("stores", []), "stores"):
            if not isinstance(store, dict):
                raise InvalidState("a store is an object")
            indexes = [{"name": _name(ix.get("name")), "keyPath": _key_path(ix.get("keyPath"), nullable=False),
                        "unique": _flag(ix.get("unique")), "multiEntry": _flag(ix.get("multiEntry"))}
                       for ix in _json_list(store.get("indexes", []), "indexes") if isinstance(ix, dict)]
            records = []
            for record in _json_list(store.get("records", []), "records"):
                if not isinstance(record, dict) or "value" not in record:
                    raise InvalidState("a record is {key, value}")
                records.append({"key": record.get("key"), "value": record["value"]})
            stores.append({"name": _name(store.get("name")), "keyPath": _key_path(store.get("keyPath"), nullable=True),
                           "autoIncrement": _flag(store.get("autoIncrement")), "indexes": indexes,
                           "records": records})
        databases.append({"name": _name(db.get("name")), "version": version, "stores": stores})
    return {"origin": _as_origin(raw.get("origin")), "localStorage": local, "indexedDB": databases}


# ---- which origins a context's pages have shown ----------------------------------------------------

class OriginTracker:
    """One per browser: its own browser-level DevTools connection, told of every target
    (Target.setDiscoverTargets); remembers the http(s) origins each context's page targets have
    shown, so a capture knows where to look. Origins a page only framed (third-party iframes,
    whose storage is partitioned anyway) are not tracked. Bounded: at most `max_origins` per
    context and `max_contexts` contexts besides the default one (a tenant with the whole CDP of
    its browser may make contexts without end; the ones past the cap are not tracked)."""

    def __init__(self, *, max_origins: int = MAX_ORIGINS, max_contexts: int = MAX_TRACKED_CONTEXTS,
                 timeout_s: float = 10):
        self.max_origins, self.max_contexts, self.timeout_s = max_origins, max_contexts, timeout_s
        self._cdp: _Cdp | None = None
        self._default: str | None = None
        self._seen: dict[str, set[str]] = {}
        self._warned_contexts, self._warned_origins = False, set()  # each cap logged once

    async def start(self, cdp_ws_url: str) -> None:
        self._cdp = await _Cdp.connect(cdp_ws_url, timeout_s=self.timeout_s, max_message_bytes=4 * MiB)
        try:
            contexts = await self._cdp.call("Target.getBrowserContexts", timeout_s=self.timeout_s)
            self._default = contexts.get("defaultBrowserContextId")
            for event in ("Target.targetCreated", "Target.targetInfoChanged"):
                self._cdp.on(event, None, self._target)
            await self._cdp.call("Target.setDiscoverTargets", {"discover": True}, timeout_s=self.timeout_s)
        except BaseException:
            await self.close()
            raise

    def _target(self, params: dict) -> None:
        info = params.get("targetInfo")
        if not isinstance(info, dict) or info.get("type") != "page":
            return
        context, origin = info.get("browserContextId"), origin_of(info.get("url"))
        if not isinstance(context, str) or origin is None:
            return
        seen = self._seen.get(context)
        if seen is None:
            if context != self._default and len(self._seen.keys() - {self._default}) >= self.max_contexts:
                if not self._warned_contexts:  # once: a tenant's navigations must not flood the log
                    self._warned_contexts = True
                    log.warning("storage state: over %d contexts tracked; the rest are not", self.max_contexts)
                return
            seen = self._seen[context] = set()
        if origin not in seen:
            if len(seen) >= self.max_origins:
                if context not in self._warned_origins:
                    self._warned_origins.add(context)
                    log.warning("storage state: context %s showed over %d origins; the rest are not tracked",
                                context[:40], self.max_origins)
                return
            seen.add(origin)

    def _key(self, context_id: str | None) -> str | None:
        return self._default if context_id is None else context_id

    def origins(self, context_id: str | None) -> set[str]:
        return set(self._seen.get(self._key(context_id), ()))

    def forget(self, context_id: str | None) -> None:
        self._seen.pop(self._key(context_id), None)
        self._warned_origins.discard(self._key(context_id))

    async def close(self) -> None:
        cdp, self._cdp = self._cdp, None
        if cdp is not None:
            await cdp.close()
