"""Capture and restore a BrowserContext's web state over CDP, the way Playwright's storageState does:
cookies through the Storage domain; each origin's localStorage and IndexedDB by visiting the origin
in a hidden page of the context whose every request is answered with an empty page (hidden_pages.py:
no request leaves the browser, no script of the site runs there, service workers are bypassed), and
running our own script in it (storage_state_page.py; which IndexedDB values are carried is listed there).

State (JSON-serializable with json.dumps' default ensure_ascii: a JS string may hold a lone
surrogate, which is carried as it is and which UTF-8 cannot encode):
    {"cookies": [CDP Network.Cookie dicts, session cookies included],
     "origins": [{"origin": "https://x:port", "localStorage": [{"name", "value"}],
                  "indexedDB": [{"name", "version", "stores": [{"name", "keyPath", "autoIncrement",
                                 "indexes": [{"name", "keyPath", "unique", "multiEntry"}],
                                 "records": [{"key", "value"}]}]}]}],
     "errors": [{"origin", "error"}]}   # what capture could not carry; restore ignores it

Origins with nothing stored are left out. Everything read back from the browser is untrusted: sizes
are capped (per origin, in total, and per websocket message) and shapes validated
(storage_state_validation.py); an origin that fails (a hung page, a cap) is reported in "errors"
and the others go on.
"""
import base64
import json
import logging
import re
from collections.abc import Iterable

from services.warm_pool.adapters.cdp_connection import CdpConnection
from services.warm_pool.adapters.hidden_pages import HiddenPage, OriginTooLarge, visit_origins
from services.warm_pool.adapters.storage_state_page import CAPTURE, RESTORE
from services.warm_pool.adapters.storage_state_validation import (MAX_ORIGINS, InvalidState, as_origin, origin_of,
                                                                  valid_cookies, valid_origin_entry)
from shared.cdp import CdpError

log = logging.getLogger(__name__)

StorageState = dict
MiB = 1024 * 1024
DEFAULT_MAX_ORIGIN_BYTES = 8 * MiB
DEFAULT_MAX_TOTAL_BYTES = 32 * MiB  # parsed, the state takes ~3x this in Python objects at most
MAX_TRACKED_CONTEXTS = 256
IDB_BATCH = 500
LONE_SURROGATE = re.compile("[\ud800-\udfff]")  # what JSON text of JS strings may hold; UTF-8 cannot


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
            unique[as_origin(value)] = None
        except InvalidState as exc:
            errors.append({"origin": str(value)[:100], "error": str(exc)})
    wanted = list(unique)
    for origin in wanted[MAX_ORIGINS:]:
        errors.append({"origin": origin, "error": f"over {MAX_ORIGINS} origins"})
    wanted = sorted(wanted[:MAX_ORIGINS])
    captured: dict[str, dict] = {}
    total = 0

    async def visit(page: HiddenPage, origin: str, _item) -> None:
        nonlocal total
        text = await page.evaluate(f"({CAPTURE})({int(max_origin_bytes)}, {IDB_BATCH})")
        if not isinstance(text, str):
            raise CdpError("the page script returned no state")
        size = _utf8_size(text)
        if size > max_origin_bytes:
            raise OriginTooLarge()
        raw = json.loads(text)
        if not isinstance(raw, dict) or raw.get("tooLarge"):
            raise OriginTooLarge()
        if total + size > max_total_bytes:
            raise CdpError(f"the state passed {max_total_bytes} bytes in all")
        entry = valid_origin_entry({**raw, "origin": origin})
        skipped = raw.get("skipped")
        if isinstance(skipped, dict) and skipped:
            kinds = ", ".join(f"{n} {str(kind)[:40]}" for kind, n in list(skipped.items())[:10])
            errors.append({"origin": origin, "error": f"IndexedDB records not carried: {kinds}"})
        total += size
        if entry["localStorage"] or entry["indexedDB"]:
            captured[origin] = entry

    cdp = await CdpConnection.connect(cdp_ws_url, timeout_s=timeout_s, max_message_bytes=_message_cap(max_origin_bytes))
    try:
        raw_cookies = (await cdp.call("Storage.getCookies", _context_params(context_id),
                                      timeout_s=timeout_s)).get("cookies")
        cookies = valid_cookies(raw_cookies, for_restore=False)
        await visit_origins(cdp, context_id, [(o, None) for o in wanted], visit, timeout_s=timeout_s,
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
    cookies = valid_cookies(state.get("cookies", []), for_restore=True)
    entries = state.get("origins", [])
    if not isinstance(entries, list) or len(entries) > MAX_ORIGINS:
        raise InvalidState(f"origins: a list of at most {MAX_ORIGINS}")
    errors: list[dict] = []
    work: list[tuple[str, str]] = []
    for raw in entries:
        entry = valid_origin_entry(raw)
        # As JSON.stringify writes it (a lone surrogate escaped), so measured as capture measures it.
        text = LONE_SURROGATE.sub(lambda m: f"\\u{ord(m[0]):04x}", json.dumps(entry, ensure_ascii=False))
        if _utf8_size(text) > max_origin_bytes:
            errors.append({"origin": entry["origin"], "error": "too large"})
        elif entry["origin"] not in {o for o, _ in work}:
            work.append((entry["origin"], text))

    async def visit(page: HiddenPage, origin: str, text: str) -> None:
        payload = base64.b64encode(text.encode()).decode()
        failed = await page.evaluate(f"({RESTORE})({payload!r})")
        problems = json.loads(failed) if isinstance(failed, str) else ["the page script returned nothing"]
        for problem in problems[:20] if isinstance(problems, list) else []:
            errors.append({"origin": origin, "error": str(problem)[:300]})

    cdp = await CdpConnection.connect(cdp_ws_url, timeout_s=timeout_s, max_message_bytes=_message_cap(max_origin_bytes))
    try:
        if cookies:
            await _set_cookies(cdp, context_id, cookies, timeout_s, errors)
        await visit_origins(cdp, context_id, work, visit, timeout_s=timeout_s, concurrency=concurrency, errors=errors)
    finally:
        await cdp.close()
    if errors:
        log.warning("storage state: restore: %d problem(s): %s", len(errors),
                    "; ".join(f"{e['origin']}: {e['error']}" for e in errors[:5]))
    return errors


async def _set_cookies(cdp: CdpConnection, context_id: str | None, cookies: list[dict], timeout_s: float,
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
        self._cdp: CdpConnection | None = None
        self._default: str | None = None
        self._seen: dict[str, set[str]] = {}
        self._warned_contexts, self._warned_origins = False, set()  # each cap logged once

    async def start(self, cdp_ws_url: str) -> None:
        self._cdp = await CdpConnection.connect(cdp_ws_url, timeout_s=self.timeout_s, max_message_bytes=4 * MiB)
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
