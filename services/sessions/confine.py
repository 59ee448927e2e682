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
import re
import secrets

from services.sessions.confine_browser import INTERNAL_ID, FromBrowser, Out, on_session

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
# What a page session may use of the Target domain (its own frames and workers).
PAGE_TARGET = {"Target.setAutoAttach", "Target.autoAttachRelated", "Target.detachFromTarget",
               "Target.getTargetInfo", "Target.attachToTarget"}
# Page-session domains the client may use freely; the rest of a page session's traffic is checked.
_SENSITIVE = re.compile(r'"(?:Target|Browser|Storage|SystemInfo|Tracing)\.|"browserContextId"|"targetId"'
                        r'|"Page\.setDownloadBehavior"')


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
        self._pending: dict[int, tuple] = {}  # client request id -> how to rewrite its answer
        self._answer_on: dict[int, str] = {}  # client request id -> the browser-level session it came on
        self._attaching: dict[str, str] = {}  # target id -> the browser-level session attaching to it
        self._attached_on: dict[str, str] = {}  # page session -> the browser-level session that made it
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
        out = self._command(msg_id, method, root.get("params") or {}, None, root)
        out.to_client = [on_session(frame, alias) for frame in out.to_client]
        if out.to_browser:
            self._answer_on[msg_id] = alias
            if method == "Target.attachToTarget":
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
                return self._forward(msg_id, msg, {**params, "browserContextId": context or self.context_id})
            if domain in ("Browser", "SystemInfo", "Tracing") or (domain == "Target" and method not in PAGE_TARGET):
                return refuse(f"{method} is not available to a context session")
            if method == "Target.detachFromTarget" and params.get("sessionId") not in self.sessions:
                return refuse("that session is not this session's")
            return self._forward(msg_id, msg, params, "attach" if method == "Target.attachToTarget" else None)

        if method == "Browser.close":
            return Out(to_client=[json.dumps({"id": msg_id, "result": {}})], end_session=True)
        if method == "Target.attachToBrowserTarget":
            alias = secrets.token_hex(16).upper()
            self.browser_sessions.add(alias)
            return Out(to_client=[json.dumps({"id": msg_id, "result": {"sessionId": alias}})])
        if method == "Target.getBrowserContexts":  # the session's context is the default one: not listed
            return Out(to_client=[json.dumps({"id": msg_id, "result": {"browserContextIds": sorted(self.created)}})])
        if method in PASS:
            return self._forward(msg_id, msg, params)
        if method in CONTEXT_SCOPED:
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

    def _forward(self, msg_id: int, msg: dict, params: dict, rewrite=None) -> Out:
        if rewrite is not None:
            self._pending[msg_id] = rewrite if isinstance(rewrite, tuple) else (rewrite,)
        if params is not msg.get("params"):
            msg = {**msg, "params": params}
        return Out(to_browser=[json.dumps(msg)])

    def closing(self) -> list[str]:
        """Commands for the browser when the client goes: its own contexts are disposed."""
        return [self._internal("Target.disposeBrowserContext", {"browserContextId": c}, None)
                for c in sorted(self.created)]


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
