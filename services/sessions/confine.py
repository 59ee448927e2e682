"""Confines a context session's CDP client to its own BrowserContext of a shared browser.

The client holds a browser-level CDP connection, so the relay speaks CDP for it: deny by default.
What the client sends is parsed (small commands); of what the browser sends, only replies the
relay must rewrite, `Target.*` events and page-session traffic are looked at, the rest passes.

- The session's context is the client's default context: methods that name no
  `browserContextId` get the session's; contexts the client creates are its own too.
- Targets, attached sessions and contexts are the client's only if they belong to one of its
  contexts; anything else is invisible (filtered from replies and events) and untouchable.
- Browser-level auto-attach is per connection: targets of other sessions that Chromium attaches
  this connection to are resumed and detached by the relay, never shown to the client.
- `Browser.close` ends this session, never the browser.
- A browser-level session (`Target.attachToBrowserTarget`: Playwright's CDP sessions) is the
  relay's own, never Chromium's: what arrives on it is judged as on the connection itself, and
  answered on it.
"""
import json
import posixpath
import re
import secrets

from services.sessions.confine_browser import INTERNAL_ID, ROOT_IDS, FromBrowser, Out, on_session

NOT_ALLOWED = -32601  # "method not found", what Chromium answers for an unknown method
INVALID = -32602

# Browser-level methods scoped by a browserContextId (absent: the session's own context).
CONTEXT_SCOPED = {"Browser.setDownloadBehavior", "Browser.grantPermissions", "Browser.resetPermissions",
                  "Browser.setPermission", "Browser.cancelDownload", "Target.createTarget",
                  "Storage.getCookies", "Storage.setCookies", "Storage.clearCookies"}
# Browser-level methods naming a target that must be the client's.
TARGET_SCOPED = {"Target.attachToTarget", "Target.activateTarget", "Target.closeTarget",
                 "Target.getTargetInfo", "Target.autoAttachRelated", "Browser.getWindowForTarget"}
PASS = {"Browser.getVersion", "Schema.getDomains", "Target.setDiscoverTargets"}
# Not on a browser-level session: they would change the connection's own auto-attach and discovery.
NOT_ON_BROWSER_SESSION = {"Target.setAutoAttach", "Target.setDiscoverTargets"}
MAX_BROWSER_SESSIONS = 16  # per connection: each costs the relay memory and Chromium nothing
# Page-session methods that reach beyond the page: browser-wide memory state, or any file by URL.
NOT_ON_PAGES = {"Network.loadNetworkResource", "Memory.setPressureNotificationsSuppressed",
                "Memory.simulatePressureNotification", "Memory.getBrowserSamplingProfile",
                "Memory.getAllTimeSamplingProfile"}
# Page-session methods naming files on the browser's host: only the session's own downloads.
FILE_METHODS = {"DOM.setFileInputFiles", "Page.handleFileChooser", "Input.dispatchDragEvent"}
# What a page may be opened at or sent to: never file:, chrome:, devtools: (another session's files,
# the browser's debug URLs). about: only as about:blank.
SAFE_SCHEMES = {"http", "https", "data", "blob"}
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):")
_ABOUT_BLANK = re.compile(r"about:blank(?:[?#].*)?", re.I | re.S)
# What a page session may use of the Target domain (its own frames and workers).
PAGE_TARGET = {"Target.setAutoAttach", "Target.autoAttachRelated", "Target.detachFromTarget",
               "Target.getTargetInfo", "Target.attachToTarget"}
# Page-session domains the client may use freely; the rest of a page session's traffic is checked.
_SENSITIVE = re.compile(r'"(?:Target|Browser|Storage|SystemInfo|Tracing|Memory)\.|"browserContextId"|"targetId"'
                        r'|"(?:Page\.setDownloadBehavior|Page\.navigate|Page\.handleFileChooser|DOM\.setFileInputFiles'
                        r'|Input\.dispatchDragEvent|Network\.loadNetworkResource|Fetch\.continueRequest)"')


class Confinement(FromBrowser):
    def __init__(self, *, context_id: str, downloads_path: str | None = None):
        self.context_id = context_id
        self.downloads_path = downloads_path
        self.contexts = {context_id}  # the client's: its session's and those it created
        self.created: set[str] = set()
        self.targets: set[str] = set()
        self.sessions: set[str] = set()
        self.foreign: set[str] = set()  # sessions Chromium attached us to in other contexts
        self.downloads: set[str] = set()
        self.browser_sessions: set[str] = set()  # the client's browser-level sessions (the relay's)
        # The connection's own commands go to the browser renumbered, so each answer is matched to
        # exactly its command whatever ids the client reuses: upstream id -> (client id, the
        # browser-level session it came on, how to rewrite the answer).
        self._root: dict[int, tuple[int, str | None, tuple | None]] = {}
        self._pending: dict[tuple[str, int], tuple] = {}  # (page session, id) -> how to rewrite its answer
        self._attaching: dict[str, str] = {}  # target id -> the browser-level session attaching to it
        self._attached_on: dict[str, str] = {}  # page session -> the browser-level session that made it
        self._alias: str | None = None  # the browser-level session of the command being judged
        self._next_root = ROOT_IDS
        self._next = INTERNAL_ID

    # --- client → browser ------------------------------------------------------------------

    def from_client(self, text: str | bytes) -> Out:
        try:
            msg = json.loads(text)
            msg_id, method = msg["id"], msg["method"]
            if not isinstance(msg_id, int) or not isinstance(method, str):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            return Out(to_client=[_error(None, INVALID, "not a CDP command")])
        session = msg.get("sessionId")
        if session is not None and not isinstance(session, str):
            return Out(to_client=[_error(msg_id, INVALID, "sessionId must be a string")])
        if msg_id >= INTERNAL_ID or msg_id < 0:
            return Out(to_client=[_error(msg_id, INVALID, f"command ids must be below {INTERNAL_ID}", session)])
        if session in self.browser_sessions:
            return self._on_browser_session(msg_id, method, msg, session)
        if session is not None:
            if session not in self.sessions:
                return Out(to_client=[_error(msg_id, -32001, "Session with given id not found.", session)])
            raw = text if isinstance(text, str) else text.decode(errors="replace")
            # A JSON escape could spell a sensitive name the pattern does not see: parsed then.
            if "\\" not in raw and not _SENSITIVE.search(raw):
                return Out(to_browser=[text])
        return self._command(msg_id, method, msg.get("params") or {}, session, msg)

    def _on_browser_session(self, msg_id: int, method: str, msg: dict, alias: str) -> Out:
        if method in NOT_ON_BROWSER_SESSION:
            return Out(to_client=[_error(msg_id, NOT_ALLOWED, f"{method} is not available on a browser session", alias)])
        root = {k: v for k, v in msg.items() if k != "sessionId"}
        self._alias = alias
        try:
            out = self._command(msg_id, method, root.get("params") or {}, None, root)
        finally:
            self._alias = None
        out.to_client = [on_session(frame, alias) for frame in out.to_client]
        if out.to_browser and method == "Target.attachToTarget":
            self._attaching[root["params"]["targetId"]] = alias
        return out

    def _command(self, msg_id: int, method: str, params: dict, session, msg: dict) -> Out:
        refuse = lambda why: Out(to_client=[_error(msg_id, NOT_ALLOWED, why, session)])  # noqa: E731
        if not isinstance(params, dict):
            return Out(to_client=[_error(msg_id, INVALID, "params must be an object", session)])
        context = params.get("browserContextId")
        if context is not None and context not in self.contexts:
            return refuse("that browser context is not this session's")
        target = params.get("targetId")
        if target is not None and target not in self.targets:
            return refuse("that target is not this session's")
        if session is not None:  # a page session of the client's: its own domains, and scoped calls
            domain = method.split(".")[0]
            if method in ("Page.setDownloadBehavior", "Browser.setDownloadBehavior"):  # still its own directory
                downloads = self._downloads(params)
                if downloads is None:
                    return refuse("downloads are not available to this session")
                if method.startswith("Browser."):
                    downloads["browserContextId"] = context or self.context_id
                return self._forward(msg_id, msg, downloads)
            if method in CONTEXT_SCOPED:
                if method == "Target.createTarget" and not _safe_url(params.get("url", "")):
                    return refuse(UNSAFE_URL)
                return self._forward(msg_id, msg, {**params, "browserContextId": context or self.context_id})
            if domain in ("Browser", "SystemInfo", "Tracing") or (domain == "Target" and method not in PAGE_TARGET):
                return refuse(f"{method} is not available to a context session")
            if method in NOT_ON_PAGES:
                return refuse(f"{method} is not available to a context session")
            if (method == "Page.navigate" or (method == "Fetch.continueRequest" and "url" in params)) \
                    and not _safe_url(params.get("url")):
                return refuse(UNSAFE_URL)
            if method in FILE_METHODS and not self._own_files(method, params):
                return refuse("only files in this session's own downloads directory can be given to a page")
            if method == "Target.detachFromTarget" and params.get("sessionId") not in self.sessions:
                return refuse("that session is not this session's")
            if method == "Target.attachToTarget" and not params.get("flatten"):
                return refuse("only flattened sessions (flatten: true) are available")
            return self._forward(msg_id, msg, params, "attach" if method == "Target.attachToTarget" else None)

        if method == "Browser.close":
            return Out(to_client=[json.dumps({"id": msg_id, "result": {}})], end_session=True)
        if method == "Target.attachToBrowserTarget":
            if len(self.browser_sessions) >= MAX_BROWSER_SESSIONS:
                return refuse(f"at most {MAX_BROWSER_SESSIONS} browser sessions per connection: detach one first")
            alias = secrets.token_hex(16).upper()
            self.browser_sessions.add(alias)
            return Out(to_client=[json.dumps({"id": msg_id, "result": {"sessionId": alias}})])
        if method == "Target.getBrowserContexts":  # the session's context is the default one: not listed
            return Out(to_client=[json.dumps({"id": msg_id, "result": {"browserContextIds": sorted(self.created)}})])
        if method in PASS:
            return self._forward(msg_id, msg, params)
        if method in CONTEXT_SCOPED:
            if method == "Target.createTarget" and not _safe_url(params.get("url", "")):
                return refuse(UNSAFE_URL)
            params = {**params, "browserContextId": context or self.context_id}
            if method == "Browser.setDownloadBehavior":
                params = self._downloads(params)  # its own directory, whatever it asked
                if params is None:
                    return refuse("downloads are not available to this session")
            return self._forward(msg_id, msg, params, "target" if method == "Target.createTarget" else None)
        if method in TARGET_SCOPED:
            if target is None and method != "Target.getTargetInfo":
                return refuse(f"{method} needs a targetId of this session's")
            if method == "Target.attachToTarget":
                if not params.get("flatten"):
                    return refuse("only flattened sessions (flatten: true) are available")
                return self._forward(msg_id, msg, params, "attach")
            return self._forward(msg_id, msg, params)
        if method == "Target.setAutoAttach":
            if params.get("autoAttach") and not params.get("flatten"):
                return refuse("only flattened auto-attach (flatten: true) is available")
            return self._forward(msg_id, msg, params)
        if method == "Target.getTargets":
            return self._forward(msg_id, msg, params, "targets")
        if method == "Target.createBrowserContext":
            return self._forward(msg_id, msg, params, "context")
        if method == "Target.disposeBrowserContext":
            if context not in self.created:
                return refuse("only contexts this session created can be disposed")
            return self._forward(msg_id, msg, params, ("disposed", context))
        if method == "Target.detachFromTarget":
            if params.get("sessionId") in self.browser_sessions:
                self.browser_sessions.discard(params["sessionId"])
                return Out(to_client=[json.dumps({"id": msg_id, "result": {}}), json.dumps(
                    {"method": "Target.detachedFromTarget", "params": {"sessionId": params["sessionId"]}})])
            if params.get("sessionId") not in self.sessions:
                return refuse("that session is not this session's")
            return self._forward(msg_id, msg, params)
        return refuse(f"{method} is not available to a context session")

    def _downloads(self, params: dict) -> dict | None:
        """Download settings kept in the session's own directory: `deny` stays, anything else
        (`allow`, `allowAndName`, `default`) is `allow` there, so files keep the pages' names."""
        params = {k: v for k, v in params.items() if k != "downloadPath"}
        if params.get("behavior") == "deny":
            return params
        if self.downloads_path is None:
            return None
        return {**params, "behavior": "allow", "downloadPath": self.downloads_path}

    def _own_files(self, method: str, params: dict) -> bool:
        files = ((params.get("data") or {}) if method == "Input.dispatchDragEvent" else params).get("files")
        if not files:
            return True
        if not isinstance(files, list) or self.downloads_path is None:
            return False
        own = self.downloads_path.rstrip("/") + "/"
        return all(isinstance(f, str) and posixpath.normpath(f).startswith(own) and "\x00" not in f for f in files)

    def _forward(self, msg_id: int, msg: dict, params: dict, rewrite=None) -> Out:
        how = rewrite if rewrite is None or isinstance(rewrite, tuple) else (rewrite,)
        session = msg.get("sessionId")
        if params is not msg.get("params"):
            msg = {**msg, "params": params}
        if session is None:
            self._next_root += 1
            self._root[self._next_root] = (msg_id, self._alias, how)
            msg = {**msg, "id": self._next_root}
        elif how is not None:
            if (session, msg_id) in self._pending:
                return Out(to_client=[_error(msg_id, INVALID, "a command with this id is in flight", session)])
            self._pending[(session, msg_id)] = how
        return Out(to_browser=[json.dumps(msg)])

    def closing(self) -> list[str]:
        """Commands for the browser when the client goes: its own contexts are disposed."""
        return [self._internal("Target.disposeBrowserContext", {"browserContextId": c}, None)
                for c in sorted(self.created)]


UNSAFE_URL = "only http, https, data, blob and about:blank pages are available to a context session"


def _safe_url(url) -> bool:
    """Judged as Chromium reads a URL: tabs and newlines dropped, C0 controls and spaces trimmed."""
    if not isinstance(url, str):
        return False
    clean = re.sub(r"[\t\n\r]", "", url).strip("".join(map(chr, range(0x21))))
    if not clean:
        return True
    scheme = _SCHEME.match(clean)
    if scheme is None:
        return False
    if scheme.group(1).lower() == "about":
        return _ABOUT_BLANK.fullmatch(clean) is not None
    return scheme.group(1).lower() in SAFE_SCHEMES


def _error(msg_id, code: int, message: str, session: str | None = None) -> str:
    msg = {"id": msg_id, "error": {"code": code, "message": message}}
    if session is not None:
        msg["sessionId"] = session
    return json.dumps(msg)


async def client_to_browser(messages, send_client, upstream, confinement: Confinement) -> str:
    """Carries a client's commands through the confinement; returns why it stopped."""
    async for data in messages:
        out = confinement.from_client(data)
        for frame in out.to_client:
            await send_client(frame)
        for frame in out.to_browser:
            await upstream.send(frame)
        if out.end_session:
            return "browser_close"
    return "client_closed"


async def browser_to_client(upstream, send_client, confinement: Confinement) -> str:
    async for data in upstream:
        out = confinement.from_browser(data)
        for frame in out.to_browser:
            await upstream.send(frame)
        for frame in out.to_client:
            await send_client(frame)
    return "browser_closed"
