"""`/v1/sessions`: create, look up, list, end; the session's downloads; the Playwright helper."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal, Mapping, Optional
from uuid import UUID

from browserfleet._base import Call, new_idempotency_key, path
from browserfleet._connect import AsyncSessionConnection, SessionConnection
from browserfleet._models import Download, DownloadList, Session, SessionCreated, SessionPage, SessionStatus
from browserfleet._pagination import AsyncCursorPager, SyncCursorPage

if TYPE_CHECKING:
    from browserfleet._client import AsyncBrowserfleet, Browserfleet

Isolation = Literal["browser", "context"]


def _create(*, browser: str | None, timeout_s: int | None, idle_timeout_s: int | None, keep_alive: bool | None,
            isolation: str | None, profile: Mapping[str, Any] | None, idempotency_key: str | None) -> Call:
    body = {k: v for k, v in {"browser": browser, "timeout_s": timeout_s, "idle_timeout_s": idle_timeout_s,
                              "keep_alive": keep_alive, "isolation": isolation,
                              "profile": dict(profile) if profile is not None else None}.items()
            if v is not None}
    # The key makes every retry of this create the same create: the server debits once and answers
    # a repeat with the first session (or refuses a different body under the same key, 409).
    return Call("POST", "/v1/sessions", json=body, idempotency_key=idempotency_key or new_idempotency_key(),
                replayable=True)


def _list(cursor: Optional[str], status: str | None, limit: int | None) -> Call:
    return Call("GET", "/v1/sessions", params={"status": status, "limit": limit, "cursor": cursor}, safe=True)


def _retrieve(session_id: str | UUID) -> Call:
    return Call("GET", path("/v1/sessions/{}", session_id), safe=True)


def _end(session_id: str | UUID) -> Call:
    return Call("POST", path("/v1/sessions/{}/end", session_id), safe=True)  # ending twice: the same answer


def _downloads(session_id: str | UUID) -> Call:
    return Call("GET", path("/v1/sessions/{}/downloads", session_id), safe=True)


def _download(session_id: str | UUID, name: str) -> Call:
    return Call("GET", path("/v1/sessions/{}/downloads/{}", session_id, name), safe=True,
                extra_headers={"accept": "*/*"})


class Downloads:
    def __init__(self, client: "Browserfleet") -> None:
        self._client = client

    def list(self, session_id: str | UUID) -> list[Download]:
        """The files the session's browser downloaded (kept 24 h after it ends)."""
        return self._client._request(_downloads(session_id), DownloadList).data

    def get(self, session_id: str | UUID, name: str) -> bytes:
        return self._client._request(_download(session_id, name), None).content


class AsyncDownloads:
    def __init__(self, client: "AsyncBrowserfleet") -> None:
        self._client = client

    async def list(self, session_id: str | UUID) -> list[Download]:
        return (await self._client._request(_downloads(session_id), DownloadList)).data

    async def get(self, session_id: str | UUID, name: str) -> bytes:
        return (await self._client._request(_download(session_id, name), None)).content


class Sessions:
    def __init__(self, client: "Browserfleet") -> None:
        self._client = client
        self.downloads = Downloads(client)

    def create(self, *, browser: str | None = None, timeout_s: int | None = None,
               idle_timeout_s: int | None = None, keep_alive: bool | None = None,
               isolation: Isolation | None = None, profile: Mapping[str, Any] | None = None,
               idempotency_key: str | None = None) -> SessionCreated:
        """Start a browser session (one credit). Unset options take the server's defaults."""
        return self._client._request(_create(browser=browser, timeout_s=timeout_s, idle_timeout_s=idle_timeout_s,
                                             keep_alive=keep_alive, isolation=isolation, profile=profile,
                                             idempotency_key=idempotency_key), SessionCreated)

    def retrieve(self, session_id: str | UUID) -> Session:
        return self._client._request(_retrieve(session_id), Session)

    def list(self, *, status: SessionStatus | None = None, limit: int | None = None) -> SyncCursorPage[Session]:
        """Newest first; iterating follows the cursors. `limit` is the page size, not a total."""
        return SyncCursorPage(lambda cursor: self._client._request(_list(cursor, status, limit), SessionPage))

    def end(self, session_id: str | UUID) -> Session:
        return self._client._request(_end(session_id), Session)

    def connect(self, playwright: Any, **create_options: Any) -> SessionConnection:
        """`with bf.sessions.connect(p, ...) as browser:` creates a session, connects Playwright over CDP,
        and ends the session when the block exits, also on an exception."""
        return SessionConnection(self, playwright, create_options)


class AsyncSessions:
    def __init__(self, client: "AsyncBrowserfleet") -> None:
        self._client = client
        self.downloads = AsyncDownloads(client)

    async def create(self, *, browser: str | None = None, timeout_s: int | None = None,
                     idle_timeout_s: int | None = None, keep_alive: bool | None = None,
                     isolation: Isolation | None = None, profile: Mapping[str, Any] | None = None,
                     idempotency_key: str | None = None) -> SessionCreated:
        return await self._client._request(
            _create(browser=browser, timeout_s=timeout_s, idle_timeout_s=idle_timeout_s, keep_alive=keep_alive,
                    isolation=isolation, profile=profile, idempotency_key=idempotency_key), SessionCreated)

    async def retrieve(self, session_id: str | UUID) -> Session:
        return await self._client._request(_retrieve(session_id), Session)

    def list(self, *, status: SessionStatus | None = None, limit: int | None = None) -> AsyncCursorPager[Session]:
        async def fetch(cursor: Optional[str]) -> SessionPage:
            return await self._client._request(_list(cursor, status, limit), SessionPage)
        return AsyncCursorPager(fetch)

    async def end(self, session_id: str | UUID) -> Session:
        return await self._client._request(_end(session_id), Session)

    def connect(self, playwright: Any, **create_options: Any) -> AsyncSessionConnection:
        """`async with bf.sessions.connect(p, ...) as browser:` (p from `async_playwright()`)."""
        return AsyncSessionConnection(self, playwright, create_options)
