"""This replica's relays, by session: when a session ends, `end` closes each of its relays with a
close code that says why. Relay traffic marks the session active; `flush` writes that to the
database about once a second rather than per frame."""
import asyncio
from dataclasses import dataclass
from uuid import UUID

from services.sessions.ports import UnitOfWork


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

    async def flush(self, uow: UnitOfWork) -> None:
        if self._active:
            ids, self._active = list(self._active), set()
            async with uow.connect() as tx:
                await tx.repo.touch_sessions(session_ids=ids)


@dataclass(frozen=True)
class Limits:
    max_message_bytes: int
    max_relays: int
