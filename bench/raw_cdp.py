"""A bare CDP client on one websocket, with no Playwright driver between the benchmark and the
platform, and the context burst driven with it (`bench.contexts`: "context_raw"), which tells the
driver's share of the burst's ready times and heartbeat apart from the platform's."""
import asyncio
import json
import time

import websockets

from bench.stats import Progress, summary


class RawCdp:
    def __init__(self, ws):
        self.ws, self.pending, self.next_id = ws, {}, 1
        self.reader = asyncio.create_task(self._read())

    @classmethod
    async def connect(cls, url: str) -> "RawCdp":
        return cls(await websockets.connect(url, max_size=None, open_timeout=120, ping_interval=None))

    async def call(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        call_id, self.next_id = self.next_id, self.next_id + 1
        future = asyncio.get_running_loop().create_future()
        self.pending[call_id] = future
        message = {"id": call_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        await self.ws.send(json.dumps(message))
        reply = await asyncio.wait_for(future, 120)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    async def _read(self) -> None:
        try:
            async for raw in self.ws:
                message = json.loads(raw)
                future = self.pending.pop(message.get("id"), None) if "id" in message else None
                if future is not None and not future.done():
                    future.set_result(message)
        except websockets.ConnectionClosed:
            pass
        for future in self.pending.values():
            if not future.done():
                future.set_exception(ConnectionError("connection closed"))

    async def close(self) -> None:
        await self.ws.close()
        await self.reader


async def open_page(cdp: RawCdp, page_url: str, title: str) -> str:
    """A page of the session's own context at `page_url`, loaded; its CDP session id."""
    target = (await cdp.call("Target.createTarget", {"url": page_url}))["targetId"]
    session = (await cdp.call("Target.attachToTarget", {"targetId": target, "flatten": True}))["sessionId"]
    check = {"expression": "document.readyState === 'complete' && document.title", "returnByValue": True}
    while (await cdp.call("Runtime.evaluate", check, session))["result"].get("value") != title:
        await asyncio.sleep(0.05)
    return session


async def burst(connect_url: str, page_url: str, count: int, hold_s: float, *, title: str = "bench") -> dict:
    """`count` sessions at once through /v1/connect, each opening and loading a page, then a
    `Runtime.evaluate` heartbeat every 2 s on each page for `hold_s`."""
    ready: list[float] = []
    beats: list[float] = []
    errors: list[str] = []
    go = asyncio.Event()
    progress = Progress(f"raw burst {count}", count)
    started = time.perf_counter()

    async def one() -> None:
        cdp = None
        try:
            cdp = await RawCdp.connect(connect_url)
            session = await open_page(cdp, page_url, title)
            ready.append(time.perf_counter() - started)
        except Exception as exc:  # counted and reported
            errors.append(f"{type(exc).__name__}: {str(exc)[:300]}")
            if cdp is not None:
                await cdp.close()
            return
        finally:
            progress.step()
        try:
            await go.wait()
            until = time.perf_counter() + hold_s
            while time.perf_counter() < until:
                t = time.perf_counter()
                await cdp.call("Runtime.evaluate", {"expression": "Date.now()"}, session)
                beats.append(time.perf_counter() - t)
                await asyncio.sleep(max(0.0, 2.0 - (time.perf_counter() - t)))
        except Exception as exc:
            errors.append(f"heartbeat {type(exc).__name__}")
        finally:
            await cdp.close()

    tasks = [asyncio.create_task(one()) for _ in range(count)]
    while len(ready) + len(errors) < count:
        await asyncio.sleep(0.1)
    live = len(ready)
    go.set()
    await asyncio.gather(*tasks)
    return {"sessions": count, "live": live, "errors": errors, "ready": summary(ready),
            "heartbeat": summary(beats), "hold_s": hold_s}
