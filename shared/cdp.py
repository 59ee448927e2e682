"""Commands over one Chrome DevTools Protocol websocket: send, await the matching reply, skip events."""
import asyncio
import itertools
import json


class CdpError(RuntimeError):
    pass


class CdpCommands:
    """Every call has a deadline (TimeoutError past it): a browser that stops answering, or
    keeps sending events but never the reply, cannot hold its caller forever."""

    def __init__(self, ws, *, timeout_s: float = 30):
        self.ws, self.timeout_s = ws, timeout_s
        self._ids = itertools.count(1)

    async def call(self, method: str, params: dict | None = None, session_id: str | None = None) -> dict:
        msg_id = next(self._ids)
        msg = {"id": msg_id, "method": method, "params": params or {}}
        if session_id:
            msg["sessionId"] = session_id
        async with asyncio.timeout(self.timeout_s):
            await self.ws.send(json.dumps(msg))
            while True:
                answer = json.loads(await self.ws.recv())
                if answer.get("id") == msg_id:
                    if "error" in answer:
                        raise CdpError(answer["error"].get("message", "CDP error"))
                    return answer.get("result", {})
