"""What the browser sends a confined client (confine.py): answers rewritten where the client's
command asked for it, `Target.*` and download events shown only for the client's own targets,
page-session traffic only for its own sessions; everything else passes untouched."""
import json
import re
from dataclasses import dataclass, field

INTERNAL_ID = 1_000_000_000  # ids of the relay's own commands; a client's must stay below
ROOT_IDS = 500_000_000  # the connection's commands, renumbered, from here up (below INTERNAL_ID)
_ID = re.compile(rb'^\{"id":(\d+)')
SESSION_TAIL = re.compile(rb'"sessionId":"([0-9A-F]+)"\}$')


@dataclass
class Out:
    """What one message turns into: frames for the browser, frames for the client, and whether
    the session should end (the client asked `Browser.close`)."""
    to_browser: list = field(default_factory=list)
    to_client: list = field(default_factory=list)
    end_session: bool = False


class FromBrowser:
    """Confinement's browser → client half; the state is Confinement's."""
    contexts: set[str]
    created: set[str]
    targets: set[str]
    sessions: set[str]
    foreign: set[str]
    downloads: set[str]
    _root: dict[int, tuple]
    _pending: dict[tuple[str, int], tuple]
    _attaching: dict[str, str]
    _attached_on: dict[str, str]
    _next: int

    def from_browser(self, data: str | bytes) -> Out:
        raw = data.encode() if isinstance(data, str) else data
        reply = _ID.match(raw)
        if reply is not None:
            msg_id = int(reply.group(1))
            if msg_id >= INTERNAL_ID:
                return Out()  # the answer to one of our own commands
            tail = SESSION_TAIL.search(raw[-80:])
            if tail is None:
                return self._root_answer(msg_id, raw, data, reply.end())
            session = tail.group(1).decode()
            if session not in self.sessions:
                return Out()  # traffic of a session this client does not have
            how = self._pending.pop((session, msg_id), None)
            return Out(to_client=[self._answer(json.loads(raw), how) if how else data])
        if raw.startswith(b'{"method":"Target.') or raw.startswith(b'{"method":"Browser.download'):
            return self._event(json.loads(raw))
        return self._session_checked(raw, data)

    def _root_answer(self, upstream: int, raw: bytes, data, id_end: int) -> Out:
        """The answer to one of the connection's commands, under the client's id again."""
        entry = self._root.pop(upstream, None)
        if entry is None:
            return Out()  # no command of this client's
        msg_id, alias, how = entry
        if how is None and alias is None:  # as it came, but for the id
            head = f'{{"id":{msg_id}'
            return Out(to_client=[head + data[id_end:] if isinstance(data, str) else head.encode() + raw[id_end:]])
        msg = {**json.loads(raw), "id": msg_id}
        frame = self._answer(msg, how) if how else json.dumps(msg)
        return Out(to_client=[on_session(frame, alias) if alias else frame])

    def _session_checked(self, raw: bytes, data) -> Out:
        tail = SESSION_TAIL.search(raw[-80:])
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
                if parent is None and (alias := self._attaching.pop(info["targetId"], None)):
                    self._attached_on[session] = msg["sessionId"] = alias  # it asked: told on its session
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
                if parent is None and (alias := self._attached_on.pop(session, None)):
                    msg["sessionId"] = alias
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


def on_session(frame: str, session: str) -> str:
    """An answer or event of the connection's, as on one of its browser-level sessions."""
    return json.dumps({**json.loads(frame), "sessionId": session})
