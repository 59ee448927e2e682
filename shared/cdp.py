"""Commands over one Chrome DevTools Protocol websocket: send, await the matching reply, skip events."""
import itertools
import json


class CdpError(RuntimeError):
    pass


class CdpCommands:
    def __init__(self, ws):
        self.ws = ws
        self._ids = itertools.count(1)

    async def call(self, method: str, params: dict | None = None, session_id: str | None = None) -> dict:
        msg_id = next(self._ids)
        msg = {"id": msg_id, "method": method, "params": params or {}}
        if session_id:
            msg["sessionId"] = session_id
        await self.ws.send(json.dumps(msg))
        while True:
            answer = json.loads(await self.ws.recv())
            if answer.get("id") == msg_id:
                if "error" in answer:
                    raise CdpError(answer["error"].get("message", "CDP error"))
                return answer.get("result", {})
