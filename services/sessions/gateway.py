"""The CDP gateway: relays a client's websocket to its session's browser.

Every relay registers in `relays.Relays`; when a session ends (on this replica, or on another
one, learnt from `sessions.session_completed`), each of its relays closes with a close code that
says why. Relay traffic marks the session active.

Limits: a session has at most `max_relays` relays at once (counted in its row, so across
replicas; the next handshake gets 429), and a message over `max_message_bytes` either way
closes its relay with 1009, decided from the frame header by the websockets library on both
sides (uvicorn's `ws_max_size` for clients, `max_size` towards the browser): nothing of it is
buffered. The session itself goes on.

Context sessions (isolation "context") relay through `confine.Confinement`: the client sees
only its own BrowserContext of a shared browser; `Browser.close` ends its session, and when
the relay closes, the contexts the client created are disposed. Browser sessions keep the
plain byte relay, except that a client's download settings are kept pointed at the session's
own directory (`downloads_guard`, client → browser frames only).
"""
import asyncio
import contextlib
import logging
from uuid import UUID

from fastapi import WebSocket
from starlette.websockets import WebSocketDisconnect
from uvicorn.protocols.utils import ClientDisconnected
from websockets.exceptions import ConnectionClosed, ConnectionClosedError

from services.sessions import confine, domain, downloads_guard
from services.sessions.adapters import cdp
from services.sessions.metrics import RELAYED_BYTES, RELAYED_FRAMES, RELAYS_OPEN
from services.sessions.ports import EndSession, UnitOfWork
from services.sessions.relays import Limits, Relays
from shared.http import error_response

log = logging.getLogger(__name__)
# Label lookups once, not per frame: the relay is on the hot path of every CDP round trip.
_FRAMES_IN, _BYTES_IN = RELAYED_FRAMES.labels("to_browser"), RELAYED_BYTES.labels("to_browser")
_FRAMES_OUT, _BYTES_OUT = RELAYED_FRAMES.labels("to_client"), RELAYED_BYTES.labels("to_client")
TOO_BIG, BROWSER_CLOSE = "too_big", "browser_close"


async def serve(ws: WebSocket, *, session_id: UUID, token: str | None, uow: UnitOfWork,
                relays: Relays, limits: Limits, end_session: EndSession) -> None:
    async with uow.connect() as tx:
        row = await tx.repo.get_session(session_id=session_id)
    if (row is None or not token or not domain.secret_matches(token, row["token_hash"])
            or row["status"] != "running"):
        await ws.close(code=1008)  # before accept: the handshake is refused with 403
        return
    await _registered(ws, row, uow=uow, relays=relays, limits=limits, end_session=end_session)


async def serve_created(ws: WebSocket, *, session_id: UUID, uow: UnitOfWork, relays: Relays, limits: Limits,
                        end_session: EndSession) -> None:
    """The relay of a session /v1/connect has just created (or replayed, by its Idempotency-Key)."""
    async with uow.connect() as tx:
        row = await tx.repo.get_session(session_id=session_id)
    if row is None or row["status"] != "running":
        await ws.send_denial_response(error_response(409, "session_ended", "the session of this "
                                                     "Idempotency-Key is not running any more"))
        return
    await _registered(ws, row, uow=uow, relays=relays, limits=limits, end_session=end_session)


async def _registered(ws: WebSocket, row, *, uow: UnitOfWork, relays: Relays, limits: Limits,
                      end_session: EndSession) -> None:
    ended = relays.add(row["id"])  # before counting in: an end from now on is heard
    try:
        await _relay(ws, row, uow=uow, relays=relays, limits=limits, ended=ended, end_session=end_session)
    finally:
        relays.remove(row["id"], ended)


async def _relay(ws: WebSocket, row, *, uow: UnitOfWork, relays: Relays, limits: Limits,
                 ended: asyncio.Future, end_session: EndSession) -> None:
    session_id = row["id"]
    confinement = None
    if row["isolation"] == "context":
        if not row["context_id"]:  # never unconfined (create refuses such a lease already)
            await ws.close(code=1011)
            return
        confinement = confine.Confinement(context_id=row["context_id"], downloads_path=row["downloads_path"])
    # Counting in is a write (it enforces the relay cap across replicas), connecting is a round
    # trip to the browser: side by side, the handshake waits for the slower one only.
    counted, upstream = await asyncio.gather(
        _count_in(uow, session_id, limits.max_relays),
        cdp.connect(row["browser_ws_url"], max_size=limits.max_message_bytes), return_exceptions=True)
    tasks = []
    try:
        if counted == "full":
            await ws.send_denial_response(error_response(
                429, "too_many_relays", f"at most {limits.max_relays} CDP connections to one session at once",
                headers={"Retry-After": "5"}))
            return
        if counted != "ok":  # it ended meanwhile (or the count failed: the handshake is refused)
            if isinstance(counted, BaseException):
                log.warning("relay not counted in", extra={"session_id": str(session_id), "error": repr(counted)[:200]})
            await ws.close(code=1008)
            return
        if isinstance(upstream, BaseException):
            log.warning("browser unreachable", extra={"session_id": str(session_id), "error": repr(upstream)[:200]})
            await ws.close(code=1011)
            return
        RELAYS_OPEN.inc()
        try:
            await ws.accept()
            if confinement is None:  # a browser of its own: only its download settings are checked
                tasks = [asyncio.create_task(_client_to_browser(ws, upstream, session_id, relays, limits,
                                                                row["downloads_path"])),
                         asyncio.create_task(_browser_to_client(ws, upstream, session_id, relays))]
            else:
                tasks = [asyncio.create_task(_confined_client_to_browser(ws, upstream, session_id, relays, limits,
                                                                         confinement)),
                         asyncio.create_task(_confined_browser_to_client(ws, upstream, session_id, relays,
                                                                         confinement))]
            done, _ = await asyncio.wait([*tasks, ended], return_when=asyncio.FIRST_COMPLETED)
            browser_close = tasks[0] in done and tasks[0].result() == BROWSER_CLOSE
            if browser_close:  # a context client's Browser.close ends its session, not the browser
                await _end_own(end_session, session_id)
            with contextlib.suppress(Exception):
                if browser_close:
                    await ws.close(code=domain.close_code("client"), reason="session ended: client")
                elif ended in done:
                    reason = ended.result()
                    await ws.close(code=domain.close_code(reason), reason=f"session ended: {reason}")
                elif tasks[1] in done and tasks[1].result() == TOO_BIG:
                    await ws.close(code=1009, reason=f"a CDP message from the browser was larger than "
                                                     f"{limits.max_message_bytes} bytes")
                elif tasks[1] in done:
                    await ws.close(code=1011, reason="browser connection closed")
                elif tasks[0].result() == TOO_BIG:
                    await ws.close(code=1009, reason=f"a CDP message was larger than {limits.max_message_bytes} bytes")
        finally:
            RELAYS_OPEN.dec()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if not isinstance(upstream, BaseException):
            with contextlib.suppress(Exception):
                for frame in confinement.closing() if confinement is not None else ():
                    await upstream.send(frame)  # the contexts the client created go with its relay
                await upstream.close()
        if counted == "ok":
            async with uow.connect() as tx:
                await tx.repo.client_disconnected(session_id=session_id)


async def _count_in(uow: UnitOfWork, session_id: UUID, max_relays: int) -> str:
    async with uow.connect() as tx:
        return await tx.repo.client_connected(session_id=session_id, max_relays=max_relays)


async def _client_to_browser(ws: WebSocket, upstream, session_id: UUID, relays: Relays, limits: Limits,
                             downloads_path: str | None = None) -> str | None:
    try:
        while True:
            message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                if message.get("code") == 1009:  # the server refused it from the frame header
                    log.info("client message over the cap", extra={"session_id": str(session_id)})
                return None
            data = message.get("text") if message.get("text") is not None else message.get("bytes")
            if data is None:
                continue
            size = len(data)
            if size > limits.max_message_bytes:  # only if served without the cap (see __main__)
                return TOO_BIG
            if downloads_path is not None:
                data, refusal = downloads_guard.guard(data, downloads_path)
                if refusal is not None:
                    await ws.send_text(refusal)
                if data is None:
                    continue
            await upstream.send(data)
            _FRAMES_IN.inc()
            _BYTES_IN.inc(size)
            relays.touch(session_id)
    except (WebSocketDisconnect, ConnectionClosed):
        return None
    except Exception as exc:
        _log_failure("client to browser", session_id, exc)
        return None


async def _browser_to_client(ws: WebSocket, upstream, session_id: UUID, relays: Relays) -> str | None:
    try:
        async for data in upstream:
            if isinstance(data, str):
                await ws.send_text(data)
            else:
                await ws.send_bytes(data)
            _FRAMES_OUT.inc()
            _BYTES_OUT.inc(len(data))
            relays.touch(session_id)
    except ConnectionClosedError as exc:
        return _browser_closed(exc, session_id)
    except (WebSocketDisconnect, ClientDisconnected):
        pass
    except Exception as exc:
        _log_failure("browser to client", session_id, exc)
    return None


async def _end_own(end_session: EndSession, session_id: UUID) -> None:
    try:
        await end_session(session_id)
    except Exception as exc:
        _log_failure("ending the session", session_id, exc)


async def _client_messages(ws: WebSocket, session_id: UUID, relays: Relays, limits: Limits, state: dict):
    while True:
        message = await ws.receive()
        if message["type"] == "websocket.disconnect":
            if message.get("code") == 1009:
                log.info("client message over the cap", extra={"session_id": str(session_id)})
            return
        data = message.get("text") if message.get("text") is not None else message.get("bytes")
        if data is None:
            continue
        size = len(data)
        if size > limits.max_message_bytes:
            state["stopped"] = TOO_BIG
            return
        _FRAMES_IN.inc()
        _BYTES_IN.inc(size)
        relays.touch(session_id)
        yield data


def _client_sender(ws: WebSocket, session_id: UUID, relays: Relays):
    async def send(frame) -> None:
        if isinstance(frame, str):
            await ws.send_text(frame)
        else:
            await ws.send_bytes(frame)
        _FRAMES_OUT.inc()
        _BYTES_OUT.inc(len(frame))
        relays.touch(session_id)
    return send


async def _confined_client_to_browser(ws: WebSocket, upstream, session_id: UUID, relays: Relays, limits: Limits,
                                      confinement: confine.Confinement) -> str | None:
    state: dict = {}
    try:
        why = await confine.client_to_browser(_client_messages(ws, session_id, relays, limits, state),
                                              _client_sender(ws, session_id, relays), upstream, confinement)
        return BROWSER_CLOSE if why == "browser_close" else state.get("stopped")
    except (WebSocketDisconnect, ConnectionClosed, ClientDisconnected):
        return None
    except Exception as exc:
        _log_failure("client to browser", session_id, exc)
        return None


async def _confined_browser_to_client(ws: WebSocket, upstream, session_id: UUID, relays: Relays,
                                      confinement: confine.Confinement) -> str | None:
    try:
        await confine.browser_to_client(upstream, _client_sender(ws, session_id, relays), confinement)
    except ConnectionClosedError as exc:
        return _browser_closed(exc, session_id)
    except (WebSocketDisconnect, ClientDisconnected):
        pass
    except Exception as exc:
        _log_failure("browser to client", session_id, exc)
    return None


def _browser_closed(exc: ConnectionClosedError, session_id: UUID) -> str | None:
    if exc.sent is not None and exc.sent.code == 1009:  # websockets refused it from the frame header
        log.info("browser message over the cap", extra={"session_id": str(session_id)})
        return TOO_BIG
    log.info("browser connection closed", extra={
        "session_id": str(session_id), "code": exc.rcvd.code if exc.rcvd else None})
    return None


def _log_failure(direction: str, session_id: UUID, exc: Exception) -> None:
    # The exception's type and text only: no frame contents, no URL (the CDP token is in the client's).
    log.warning("relay failed", extra={"direction": direction, "session_id": str(session_id),
                                       "error": f"{type(exc).__name__}: {str(exc)[:200]}"})
