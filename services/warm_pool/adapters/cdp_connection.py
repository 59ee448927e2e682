"""A browser-level DevTools connection that also dispatches events (shared.cdp's CdpCommands
only awaits replies): what storage_state and its OriginTracker talk to a browser through."""
import asyncio
import contextlib
import itertools
import json
import logging
from collections.abc import Awaitable, Callable

import websockets

from shared.cdp import CdpError

log = logging.getLogger(__name__)


class CdpConnection:
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
    async def connect(cls, url: str, *, timeout_s: float, max_message_bytes: int) -> "CdpConnection":
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
                        log.exception("a CDP event handler failed")
        except (websockets.ConnectionClosed, ValueError) as exc:
            log.debug("DevTools connection ended: %s", exc)
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
