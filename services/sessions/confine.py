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
"""
import json
import re
from dataclasses import dataclass, field

INTERNAL_ID = 1_000_000_000  # ids of the relay's own commands; a client's must stay below
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
# What a page session may use of the Target domain (its own frames and workers).
PAGE_TARGET = {"Target.setAutoAttach", "Target.autoAttachRelated", "Target.detachFromTarget",
               "Target.getTargetInfo", "Target.attachToTarget"}
# Page-session domains the client may use freely; the rest of a page session's traffic is checked.
_SENSITIVE = re.compile(r'"(?:Target|Browser|Storage|SystemInfo|Tracing)\.|"browserContextId"|"targetId"'
                        r'|"Page\.setDownloadBehavior"')
_ID = re.compile(rb'^\{"id":(\d+)')
_SESSION_TAIL = re.compile(rb'"sessionId":"([0-9A-F]+)"\}$')


@dataclass
class Out:
    """What one message turns into: frames for the browser, frames for the client, and whether
    the session should end (the client asked `Browser.close`)."""
    to_browser: list = field(default_factory=list)
    to_client: list = field(default_factory=list)
    end_session: bool = False


class Confinement:
    def __init__(self, *, context_id: str, downloads_path: str | None = None):
        self.context_id = context_id
        self.downloads_path = downloads_path
        self.contexts = {context_id}  # the client's: its session's and those it created
        self.created: set[str] = set()
        self.targets: set[str] = set()
        self.sessions: set[str] = set()
        self.foreign: set[str] = set()  # sessions Chromium attached us to in other contexts
        self.downloads: set[str] = set()
        self._pending: dict[int, tuple] = {}  # client request id -> how to rewrite its answer
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
        if session is not None:
            if session not in self.sessions:
                return Out(to_client=[_error(msg_id, -32001, "Session with given id not found.", session)])
            raw = text if isinstance(text, str) else text.decode(errors="replace")
            # A JSON escape could spell a sensitive name the pattern does not see: parsed then.
            if "\\" not in raw and not _SENSITIVE.search(raw):
                return Out(to_browser=[text])
        return self._command(msg_id, method, msg.get("params") or {}, session, msg)

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

    # --- browser → client ------------------------------------------------------------------

    def from_browser(self, data: str | bytes) -> Out:
        raw = data.encode() if isinstance(data, str) else data
        reply = _ID.match(raw)
        if reply is not None:
            msg_id = int(reply.group(1))
            if msg_id >= INTERNAL_ID:
                return Out()  # the answer to one of our own commands
            if msg_id not in self._pending:
                return self._session_checked(raw, data)
            return Out(to_client=[self._answer(json.loads(raw), self._pending.pop(msg_id))])
        if raw.startswith(b'{"method":"Target.') or raw.startswith(b'{"method":"Browser.download'):
            return self._event(json.loads(raw))
        return self._session_checked(raw, data)

    def _session_checked(self, raw: bytes, data) -> Out:
        tail = _SESSION_TAIL.search(raw[-80:])
        if tail is not None and tail.group(1).decode() not in self.sessions:
            return Out()  # traffic of a session this client does not have
        return Out(to_client=[data])

    def _answer(self, msg: dict, how: tuple) -> str:
        result = msg.get("result")
        if result is not None:
            kind = how[0]
            if kind == "target":
                self.targets.add(result.get("targetId"))
            elif kind == "attach":
                self.sessions.add(result.get("sessionId"))
            elif kind == "context":
                self.contexts.add(result["browserContextId"])
                self.created.add(result["browserContextId"])
            elif kind == "disposed":
                self.contexts.discard(how[1])
                self.created.discard(how[1])
            elif kind == "targets":  # what it lists is its own: attachable (a reconnect finds its pages so)
                result["targetInfos"] = [t for t in result.get("targetInfos", []) if self._mine(t)]
                self.targets.update(t["targetId"] for t in result["targetInfos"])
        return json.dumps(msg)

    def _mine(self, info: dict) -> bool:
        return info.get("browserContextId") in self.contexts and info.get("type") != "browser"

    def _event(self, msg: dict) -> Out:
        method, params, parent = msg["method"], msg.get("params", {}), msg.get("sessionId")
        if parent is not None and parent not in self.sessions:
            return Out()
        if method == "Target.attachedToTarget":
            info, session = params["targetInfo"], params["sessionId"]
            if self._mine(info):
                self.targets.add(info["targetId"])
                self.sessions.add(session)
                return Out(to_client=[json.dumps(msg)])
            self.foreign.add(session)  # auto-attached to someone else's target: let it go
            out = Out()
            if params.get("waitingForDebugger"):
                out.to_browser.append(self._internal("Runtime.runIfWaitingForDebugger", {}, session))
            out.to_browser.append(self._internal("Target.detachFromTarget", {"sessionId": session}, parent))
            return out
        if method == "Target.detachedFromTarget":
            session = params.get("sessionId")
            self.foreign.discard(session)
            if session in self.sessions:
                self.sessions.discard(session)
                return Out(to_client=[json.dumps(msg)])
            return Out()
        if method in ("Target.targetCreated", "Target.targetInfoChanged"):
            if self._mine(params["targetInfo"]):
                self.targets.add(params["targetInfo"]["targetId"])
                return Out(to_client=[json.dumps(msg)])
            return Out()
        if method in ("Target.targetDestroyed", "Target.targetCrashed"):
            if params.get("targetId") in self.targets:
                if method == "Target.targetDestroyed":
                    self.targets.discard(params["targetId"])
                return Out(to_client=[json.dumps(msg)])
            return Out()
        if method == "Browser.downloadWillBegin":  # only downloads its own pages started
            if params.get("frameId") in self.targets:
                self.downloads.add(params.get("guid"))
                return Out(to_client=[json.dumps(msg)])
            return Out()
        if method == "Browser.downloadProgress":
            return Out(to_client=[json.dumps(msg)]) if params.get("guid") in self.downloads else Out()
        if method == "Target.receivedMessageFromTarget":
            return Out()  # only non-flattened sessions get these, and this client has none
        return Out(to_client=[json.dumps(msg)])

    def _internal(self, method: str, params: dict, session: str | None) -> str:
        self._next += 1
        msg = {"id": self._next, "method": method, "params": params}
        if session is not None:
            msg["sessionId"] = session
        return json.dumps(msg)

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
