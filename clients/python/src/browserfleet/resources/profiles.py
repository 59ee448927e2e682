"""`/v1/profiles`: browser state (cookies, storage, the rest of the profile) that outlives a session."""
from __future__ import annotations

from typing import TYPE_CHECKING, Optional
from uuid import UUID

from browserfleet._base import Call, new_idempotency_key, path
from browserfleet._models import Profile, ProfilePage
from browserfleet._pagination import AsyncCursorPager, SyncCursorPage

if TYPE_CHECKING:
    from browserfleet._client import AsyncBrowserfleet, Browserfleet


def _create(name: str | None, idempotency_key: str | None) -> Call:
    # Retried only where the server refused it (429/503) or a connection was never made: the key is
    # sent in case the server deduplicates, but DESIGN.md does not promise that it does.
    return Call("POST", "/v1/profiles", json={} if name is None else {"name": name},
                idempotency_key=idempotency_key or new_idempotency_key())


def _list(cursor: Optional[str], limit: int | None) -> Call:
    return Call("GET", "/v1/profiles", params={"limit": limit, "cursor": cursor}, safe=True)


def _one(method: str, profile_id: str | UUID) -> Call:
    return Call(method, path("/v1/profiles/{}", profile_id), safe=True)


class Profiles:
    def __init__(self, client: "Browserfleet") -> None:
        self._client = client

    def create(self, *, name: str | None = None, idempotency_key: str | None = None) -> Profile:
        return self._client._request(_create(name, idempotency_key), Profile)

    def list(self, *, limit: int | None = None) -> SyncCursorPage[Profile]:
        return SyncCursorPage(lambda cursor: self._client._request(_list(cursor, limit), ProfilePage))

    def retrieve(self, profile_id: str | UUID) -> Profile:
        return self._client._request(_one("GET", profile_id), Profile)

    def delete(self, profile_id: str | UUID) -> None:
        self._client._request(_one("DELETE", profile_id), None)


class AsyncProfiles:
    def __init__(self, client: "AsyncBrowserfleet") -> None:
        self._client = client

    async def create(self, *, name: str | None = None, idempotency_key: str | None = None) -> Profile:
        return await self._client._request(_create(name, idempotency_key), Profile)

    def list(self, *, limit: int | None = None) -> AsyncCursorPager[Profile]:
        async def fetch(cursor: Optional[str]) -> ProfilePage:
            return await self._client._request(_list(cursor, limit), ProfilePage)
        return AsyncCursorPager(fetch)

    async def retrieve(self, profile_id: str | UUID) -> Profile:
        return await self._client._request(_one("GET", profile_id), Profile)

    async def delete(self, profile_id: str | UUID) -> None:
        await self._client._request(_one("DELETE", profile_id), None)
