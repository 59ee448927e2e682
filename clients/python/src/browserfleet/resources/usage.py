from __future__ import annotations

from typing import TYPE_CHECKING

from browserfleet._base import Call
from browserfleet._models import Usage

if TYPE_CHECKING:
    from browserfleet._client import AsyncBrowserfleet, Browserfleet

_RETRIEVE = Call("GET", "/v1/usage", safe=True)


class UsageResource:
    def __init__(self, client: "Browserfleet") -> None:
        self._client = client

    def retrieve(self) -> Usage:
        """The tenant's plan and credits for the current period."""
        return self._client._request(_RETRIEVE, Usage)


class AsyncUsageResource:
    def __init__(self, client: "AsyncBrowserfleet") -> None:
        self._client = client

    async def retrieve(self) -> Usage:
        return await self._client._request(_RETRIEVE, Usage)
