"""The CDP gateway: relays a client's websocket to its session's browser.

Every relay registers here; when a session ends (on this replica, or on another one, learnt
from `sessions.session_completed`), `end` closes each of its relays with a close code that
says why. Relay traffic marks the session active; `flush` writes that to the database about
once a second rather than per frame.
"""
import asyncio
import contextlib
import logging
import re
from uuid import UUID

import asyncpg
from fastapi import WebSocket
from starlette.websockets import WebSocketDisconnect

from services.sessions import domain, repository as repo
from services.sessions.adapters import cdp
from services.sessions.metrics import RELAYED_BYTES, RELAYED_FRAMES, RELAYS_OPEN

log = logging.getLogger(__name__)
# Label lookups once, not per frame: the relay is on the hot path of every CDP round trip.
_FRAMES_IN, _BYTES_IN = RELAYED_FRAMES.labels("to_browser"), RELAYED_BYTES.labels("to_browser")
_FRAMES_OUT, _BYTES_OUT = RELAYED_FRAMES.labels("to_client"), RELAYED_BYTES.labels("to_client")


class RedactTokens(logging.Filter):
    """Keeps CDP URL tokens out of the server's access and websocket logs."""
    PATTERN = re.compile(r"token=[^\s&\"']+")

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "token=" in message:
            record.msg, record.args = self.PATTERN.sub("token=[redacted]", message), None
        return True


class Relays:
    def __init__(self):
        self._ends: dict[UUID, set[asyncio.Future]] = {}
        self._active: set[UUID] = set()

    def add(self, session_id: UUID) -> asyncio.Future:
        future = asyncio.get_running_loop().create_future()
        self._ends.setdefault(session_id, set()).add(future)
        return future

    def remove(self, session_id: UUID, future: asyncio.Future) -> None:
        futures = self._ends.get(session_id, set())
        futures.discard(future)
        if not futures:
            self._ends.pop(session_id, None)

    def end(self, session_id: UUID, reason: str) -> None:
        for future in list(self._ends.get(session_id, ())):
            if not future.done():
                future.set_result(reason)

    def touch(self, session_id: UUID) -> None:
        self._active.add(session_id)

    async def flush(self, pool: asyncpg.Pool) -> None:
        if self._active:
            ids, self._active = list(self._active), set()
            async with pool.acquire() as conn:
                await repo.touch_sessions(conn, session_ids=ids)


async def serve(ws: WebSocket, *, session_id: UUID, token: str | None, pool: asyncpg.Pool,
                relays: Relays) -> None:
    async with pool.acquire() as conn:
        row = await repo.get_session(conn, session_id=session_id)
    if (row is None or not token or not domain.secret_matches(token, row["token_hash"])
            or row["status"] != "running"):
        await ws.close(code=1008)  # before accept: the handshake is refused with 403
        return
    try:
        upstream = await cdp.connect(row["browser_ws_url"])
    except Exception as exc:
        log.warning("browser unreachable", extra={"session_id": str(session_id), "error": repr(exc)[:200]})
        await ws.close(code=1011)
        return
    ended = relays.add(session_id)
    RELAYS_OPEN.inc()
    tasks, counted = [], None
    try:
        await ws.accept()
        tasks = [asyncio.create_task(_client_to_browser(ws, upstream, session_id, relays)),
                 asyncio.create_task(_browser_to_client(ws, upstream, session_id, relays))]
        # Counting the client in is a write; the relay does not wait for it. A session that ended
        # between the check above and the registration is closed as soon as the write says so.
        counted = asyncio.create_task(_count_in(pool, session_id, ended))
        done, _ = await asyncio.wait([*tasks, ended], return_when=asyncio.FIRST_COMPLETED)
        with contextlib.suppress(Exception):
            if ended in done:
                reason = ended.result()
                await ws.close(code=domain.close_code(reason), reason=f"session ended: {reason}")
            elif tasks[1] in done:
                await ws.close(code=1011, reason="browser connection closed")
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        RELAYS_OPEN.dec()
        relays.remove(session_id, ended)
        with contextlib.suppress(Exception):
            await upstream.close()
        if counted is not None and await asyncio.gather(counted, return_exceptions=True) == [True]:
            async with pool.acquire() as conn:
                await repo.client_disconnected(conn, session_id=session_id)


async def _count_in(pool: asyncpg.Pool, session_id: UUID, ended: asyncio.Future) -> bool:
    async with pool.acquire() as conn:
        if await repo.client_connected(conn, session_id=session_id):
            return True
        row = await repo.get_session(conn, session_id=session_id)
    if not ended.done():
        ended.set_result((row and row["end_reason"]) or "ended")
    return False


async def _client_to_browser(ws: WebSocket, upstream, session_id: UUID, relays: Relays) -> None:
    with contextlib.suppress(WebSocketDisconnect):
        while True:
            message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                return
            data = message.get("text") if message.get("text") is not None else message.get("bytes")
            if data is None:
                continue
            await upstream.send(data)
            _FRAMES_IN.inc()
            _BYTES_IN.inc(len(data))
            relays.touch(session_id)


async def _browser_to_client(ws: WebSocket, upstream, session_id: UUID, relays: Relays) -> None:
    with contextlib.suppress(Exception):
        async for data in upstream:
            if isinstance(data, str):
                await ws.send_text(data)
            else:
                await ws.send_bytes(data)
            _FRAMES_OUT.inc()
            _BYTES_OUT.inc(len(data))
            relays.touch(session_id)
