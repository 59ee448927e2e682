"""A raw CDP client, and the confining relay of services/sessions/confine.py served on loopback
for two context sessions of one real Chromium (the fixtures are in tests/security/conftest.py)."""
import asyncio
import contextlib
import itertools
import json

import websockets

from services.sessions import confine


class Cdp:
    """A raw CDP client: commands by id, events kept."""

    def __init__(self, ws):
        self.ws, self.ids, self.waiting, self.events = ws, itertools.count(1), {}, []
        self.reader = asyncio.create_task(self._read())

    @classmethod
    async def connect(cls, url: str) -> "Cdp":
        return cls(await websockets.connect(url, max_size=None))

    async def _read(self):
        with contextlib.suppress(websockets.ConnectionClosed):
            async for raw in self.ws:
                msg = json.loads(raw)
                if "id" in msg and msg["id"] in self.waiting:
                    self.waiting.pop(msg["id"]).set_result(msg)
                else:
                    self.events.append(msg)

    async def call(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        msg_id = next(self.ids)
        future = asyncio.get_running_loop().create_future()
        self.waiting[msg_id] = future
        msg = {"id": msg_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        await self.ws.send(json.dumps(msg))
        return await asyncio.wait_for(future, 15)

    async def ok(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        answer = await self.call(method, params, session)
        assert "result" in answer, (method, answer)
        return answer["result"]

    async def refused(self, method: str, params: dict | None = None, session: str | None = None) -> str:
        answer = await self.call(method, params, session)
        assert "error" in answer, (method, params, answer)
        return answer["error"]["message"]

    async def close(self):
        await self.ws.close()
        self.reader.cancel()


async def page_and_cookie(cdp: Cdp) -> tuple[str, str]:
    """What session B has, as any client would make it: a page of its own, attached (target id,
    session id), and a cookie `b_secret`."""
    target = (await cdp.ok("Target.createTarget", {"url": "about:blank"}))["targetId"]
    session = (await cdp.ok("Target.attachToTarget", {"targetId": target, "flatten": True}))["sessionId"]
    await cdp.ok("Storage.setCookies", {"cookies": [{"name": "b_secret", "value": "1", "domain": "example.com",
                                                     "path": "/"}]})
    return target, session


class Relay:
    """The confining relay on loopback, one context session per path (/a, /b)."""

    def __init__(self, browser_url: str, contexts: dict[str, str]):
        self.browser_url, self.contexts, self.ended = browser_url, contexts, set()

    async def __aenter__(self):
        self.server = await websockets.serve(self._serve, "127.0.0.1", 0, max_size=None)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc):
        self.server.close()
        await self.server.wait_closed()

    def url(self, name: str) -> str:
        return f"ws://127.0.0.1:{self.port}/{name}"

    async def _serve(self, client):
        name = client.request.path.strip("/")
        confinement = confine.Confinement(context_id=self.contexts[name], downloads_path=f"/tmp/dl-{name}")
        async with websockets.connect(self.browser_url, max_size=None) as upstream:
            tasks = [asyncio.create_task(confine.client_to_browser(client, client.send, upstream, confinement)),
                     asyncio.create_task(confine.browser_to_client(upstream, client.send, confinement))]
            done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in pending:
                task.cancel()
            if any(t.result() == "browser_close" for t in done if not t.cancelled() and not t.exception()):
                self.ended.add(name)
            for frame in confinement.closing():
                await upstream.send(frame)
        await client.close()
